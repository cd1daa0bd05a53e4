//! The one place threads are spawned.
//!
//! Every thread of livecast carries a name of at most 15 bytes (the kernel's
//! limit for `/proc/PID/task/*/comm`), so that `top -H`, `ps -T` and `gdb`
//! show who is who: `acceptor`, `broadcaster`, `http`, `ws-1a2b3c4d`, ...
//! `clippy.toml` forbids `std::thread::spawn` to keep it that way.

use std::io;
use std::thread::{Builder, JoinHandle};

/// Spawns a named thread, with `stack` bytes of stack when given.
///
/// A spawn failure (out of memory, thread limit) is returned, never a panic:
/// the caller decides whether that refuses one client or fails the start.
pub(crate) fn spawn_named<F, T>(
    name: String,
    stack: Option<usize>,
    f: F,
) -> io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    debug_assert!(name.len() <= 15, "thread name {name:?} is longer than 15 bytes");
    let mut builder = Builder::new().name(name);
    if let Some(stack) = stack {
        builder = builder.stack_size(stack);
    }
    builder.spawn(f)
}

/// The kernel id of the calling thread, as `top -H` and `gdb` show it.
pub(crate) fn current_tid() -> i32 {
    rustix::thread::gettid().as_raw_nonzero().get()
}

/// CPU time (user + system) consumed so far by thread `tid` of this process,
/// in seconds, read from `/proc/self/task/<tid>/stat`.
///
/// `None` when the thread has exited or procfs is not mounted.
pub(crate) fn cpu_seconds(tid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the fields
    // we need are counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After ')': state(3) ppid(4) ... utime(14) stime(15), so skip 11.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    #[allow(clippy::cast_precision_loss)] // tick counts stay far below 2^52
    Some((utime + stime) as f64 / ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time() {
        let tid = current_tid();
        let t = cpu_seconds(tid).expect("procfs readable");
        assert!(t >= 0.0);
        assert!(cpu_seconds(i32::MAX).is_none());
    }
}
