//! How a connection (`ws-xxxxxxxx`) thread sleeps: one small epoll
//! instance per connection, watching its socket and its wake eventfd.
//!
//! Measured on the 2-core machine (1,000 clients, one event, 50 broadcaster
//! cycles a second), each wake-up of a connection thread cost four system
//! calls with `poll(2)`: the broadcaster's eventfd write, `ppoll`, the
//! eventfd read that resets it, and the `writev`. With epoll the eventfd is
//! registered edge-triggered: every write by the broadcaster is one new
//! event, so it never needs reading, and `epoll_wait` does not re-register
//! both wait queues on every call as `poll` does. The socket stays
//! level-triggered; POLLOUT is asked for only while unsent bytes remain.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use rustix::buffer::spare_capacity;
use rustix::event::{Timespec, epoll};

/// `epoll` data of the socket.
const SOCKET: u64 = 0;
/// `epoll` data of the wake eventfd.
const WAKE: u64 = 1;

/// One connection's epoll instance.
pub(crate) struct Sleeper {
    epoll: OwnedFd,
    /// Whether the socket is registered for writability too.
    watching_out: bool,
    events: Vec<epoll::Event>,
}

impl Sleeper {
    /// Registers `socket` (input) and `wake` (edge-triggered).
    ///
    /// # Errors
    /// When the epoll instance cannot be made (descriptor exhaustion).
    pub(crate) fn new(socket: BorrowedFd<'_>, wake: BorrowedFd<'_>) -> io::Result<Sleeper> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        epoll::add(&epoll, socket, epoll::EventData::new_u64(SOCKET), socket_flags(false))?;
        let edge = epoll::EventFlags::IN | epoll::EventFlags::ET;
        epoll::add(&epoll, wake, epoll::EventData::new_u64(WAKE), edge)?;
        Ok(Sleeper { epoll, watching_out: false, events: Vec::with_capacity(2) })
    }

    /// Blocks until the socket has input (or, with `want_write`, room), the
    /// eventfd is written, or `timeout` passes. Returns whether the socket
    /// may have input, so that a wake-up for queued frames only skips the
    /// read that would block.
    ///
    /// # Errors
    /// A failed `epoll_ctl`/`epoll_wait` (not an interruption).
    pub(crate) fn wait(
        &mut self,
        socket: BorrowedFd<'_>,
        want_write: bool,
        timeout: Duration,
    ) -> io::Result<bool> {
        if want_write != self.watching_out {
            let data = epoll::EventData::new_u64(SOCKET);
            epoll::modify(&self.epoll, socket, data, socket_flags(want_write))?;
            self.watching_out = want_write;
        }
        let timeout = Timespec {
            tv_sec: i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        self.events.clear();
        match epoll::wait(self.epoll.as_fd(), spare_capacity(&mut self.events), Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        let input = epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR;
        // Copies, not references: the kernel's event struct is packed.
        Ok(self.events.iter().any(|e| {
            let (data, flags) = (e.data, e.flags);
            data.u64() == SOCKET && flags.intersects(input)
        }))
    }
}

impl std::fmt::Debug for Sleeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sleeper").field("watching_out", &self.watching_out).finish_non_exhaustive()
    }
}

fn socket_flags(want_write: bool) -> epoll::EventFlags {
    if want_write { epoll::EventFlags::IN | epoll::EventFlags::OUT } else { epoll::EventFlags::IN }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    use rustix::event::{EventfdFlags, eventfd};

    use super::*;

    /// The sleep/wake protocol between a broadcaster (this thread, offering
    /// entries) and a connection thread (draining them and sleeping in its
    /// epoll set exactly as the connection loop does). A lost wake-up leaves
    /// the connection asleep with work queued; the sleep's timeout, far
    /// longer than any wake-up takes, catches it.
    #[test]
    fn no_wake_up_is_lost_between_the_broadcaster_and_a_sleeping_thread() {
        use std::net::SocketAddr;
        use std::os::unix::net::UnixStream;
        use std::sync::Arc;
        use std::time::Instant;

        use crate::outbound::{ClientHandle, Outbound, OutboundKind};

        const ENTRIES: usize = 100_000;
        const LOST: Duration = Duration::from_secs(10);
        let remote = SocketAddr::from(([127, 0, 0, 1], 1));
        let (handle, rx) =
            ClientHandle::new(uuid::Uuid::new_v4(), remote, "anonymous".to_owned(), 4).unwrap();
        let consumer = {
            let handle = Arc::clone(&handle);
            crate::thread::spawn_named("test-consumer".to_owned(), None, move || {
                // A socket that never has input: only the eventfd wakes.
                let (socket, _other) = UnixStream::pair().unwrap();
                let mut sleeper = Sleeper::new(socket.as_fd(), handle.wake_fd().as_fd()).unwrap();
                // Announced sleeps (each worth at most one wake-up), and
                // sleeps taken.
                let (mut taken, mut announced, mut sleeps) = (0, 0, 0);
                while taken < ENTRIES {
                    while let Ok(entry) = rx.try_recv() {
                        handle.taken(&entry);
                        taken += 1;
                    }
                    if taken == ENTRIES {
                        break;
                    }
                    announced += 1;
                    if handle.prepare_sleep(true) {
                        let started = Instant::now();
                        sleeper.wait(socket.as_fd(), false, LOST).unwrap();
                        handle.woke();
                        if started.elapsed() >= LOST && !rx.is_empty() {
                            return Err(format!("lost wake-up after {taken} entries"));
                        }
                        sleeps += 1;
                    }
                }
                Ok((announced, sleeps))
            })
            .unwrap()
        };
        // One entry at a time, each offered as soon as the previous one is
        // taken: that is when the consumer is about to decide to sleep, and
        // every entry is the last one, which nothing else would wake for.
        let entry = Arc::new(Outbound::single(OutboundKind::Position, "{}"));
        let mut woken = 0;
        for n in 0..ENTRIES {
            let deadline = Instant::now() + LOST;
            while handle.queued_messages() > 0 {
                assert!(Instant::now() < deadline, "entry {n} was never taken: a lost wake-up");
                std::thread::yield_now();
            }
            match handle.offer(&entry, usize::MAX) {
                Ok(was_asleep) => woken += usize::from(was_asleep),
                Err(e) => panic!("offer {n}: {e:?}"),
            }
        }
        let (announced, sleeps) = consumer.join().unwrap().unwrap();
        assert!(sleeps > 0 && woken > 0, "the consumer never slept: the test proves nothing");
        // A wake-up may be spurious (the announcement withdrawn because work
        // came), never more than one per announcement.
        assert!(woken <= announced, "{woken} wake-ups for {announced} announced sleeps");
    }

    #[test]
    fn wakes_on_input_and_on_every_eventfd_write_without_reading_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, _) = listener.accept().unwrap();
        let wake = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK).unwrap();
        let mut sleeper = Sleeper::new(socket.as_fd(), wake.as_fd()).unwrap();
        let short = Duration::from_millis(20);
        assert!(!sleeper.wait(socket.as_fd(), false, short).unwrap(), "nothing yet");
        for _ in 0..3 {
            rustix::io::write(&wake, &1u64.to_ne_bytes()).unwrap();
            let started = std::time::Instant::now();
            assert!(!sleeper.wait(socket.as_fd(), false, Duration::from_secs(5)).unwrap());
            assert!(started.elapsed() < Duration::from_secs(1), "woken by the eventfd");
            // Edge-triggered: the unread counter does not wake again.
            assert!(!sleeper.wait(socket.as_fd(), false, short).unwrap());
        }
        peer.write_all(b"x").unwrap();
        assert!(sleeper.wait(socket.as_fd(), false, Duration::from_secs(5)).unwrap());
        assert!(sleeper.wait(socket.as_fd(), true, short).unwrap(), "level-triggered input");
    }
}
