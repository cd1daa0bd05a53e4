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

    /// A small deterministic generator for the test's random pace.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// Entry `n` of the stress test: `n` as 8 big-endian bytes, repeated
    /// 1 to 64 times, so that the byte stream tells where each entry went.
    fn stress_entry(n: u64) -> Vec<u8> {
        let mut wire = Vec::new();
        for _ in 0..=(n * 7919) % 64 {
            wire.extend_from_slice(&n.to_be_bytes());
        }
        wire
    }

    /// Write-through and the sleep/wake protocol, three parties at once: a
    /// broadcaster (this thread) offering entries, written through into the
    /// socket when the connection thread sleeps with nothing owed and
    /// queued otherwise; a connection thread woken by its eventfd, by
    /// input from the peer and by close requests, finishing partial writes
    /// through its wire and sleeping in its epoll set as the connection loop
    /// does; and a peer reading at a random pace (the socket fills, writes
    /// go partial) and sometimes sending a byte.
    ///
    /// Every byte must arrive in order (an entry written through while the
    /// thread still owed bytes, or the rest of a partial write taken in the
    /// wrong place, breaks it); a lost wake-up leaves the thread asleep with
    /// work queued past the sleep's long timeout; and no two writers are
    /// ever found on the socket.
    #[test]
    fn write_through_sleep_and_wake_keep_every_byte_in_order() {
        use std::io::Read;
        use std::net::SocketAddr;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::time::Instant;

        use crate::outbound::{
            ClientHandle, Delivery, Drain, OfferError, Outbound, OutboundKind, SharedSocket,
        };
        use crate::protocol::CloseReason;
        use crate::server::wire::Wire;

        const ENTRIES: u64 = 100_000;
        const LOST: Duration = Duration::from_secs(10);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (socket, _) = listener.accept().unwrap();
        socket.set_nonblocking(true).unwrap();
        let remote = SocketAddr::from(([127, 0, 0, 1], 1));
        let (handle, rx) =
            ClientHandle::new(uuid::Uuid::new_v4(), remote, "anonymous".to_owned(), 8).unwrap();
        let socket = SharedSocket::new(socket);
        handle.set_direct(socket.clone());
        let done = Arc::new(AtomicBool::new(false));

        let thread = {
            let (handle, done) = (Arc::clone(&handle), Arc::clone(&done));
            crate::thread::spawn_named("test-conn".to_owned(), None, move || {
                let mut sleeper = Sleeper::new(socket.as_fd(), handle.wake_fd().as_fd()).unwrap();
                let mut wire = Wire::new(socket, handle.unsent_meter());
                let (mut sleeps, mut inputs, mut closes) = (0u64, 0u64, 0u64);
                let mut readable = true;
                while !done.load(Ordering::SeqCst) {
                    if handle.take_close_request().is_some() {
                        closes += 1;
                    }
                    if !wire.is_blocked() {
                        while let Ok(entry) = rx.try_recv() {
                            let written = handle.taken(&entry);
                            wire.push_shared(entry, written);
                        }
                    }
                    if readable {
                        let mut buf = [0u8; 64];
                        loop {
                            match wire.read(&mut buf) {
                                Ok(0) => return Err("the peer hung up".to_owned()),
                                Ok(n) => inputs += n as u64,
                                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                                Err(e) => return Err(format!("read: {e}")),
                            }
                        }
                    }
                    {
                        let _writer = handle.writer();
                        wire.drain().map_err(|e| format!("write: {e}"))?;
                    }
                    let blocked = wire.is_blocked();
                    if handle.prepare_sleep(!blocked) {
                        let started = Instant::now();
                        readable = sleeper.wait(wire.socket().as_fd(), blocked, LOST).unwrap();
                        handle.woke();
                        if started.elapsed() >= LOST && !done.load(Ordering::SeqCst) {
                            return Err(format!(
                                "asleep for {LOST:?}: a lost wake-up ({} queued, blocked {blocked})",
                                rx.len()
                            ));
                        }
                        sleeps += 1;
                    } else {
                        readable = true;
                    }
                }
                Ok((sleeps, inputs, closes))
            })
            .unwrap()
        };

        let reader = crate::thread::spawn_named("test-peer".to_owned(), None, move || {
            let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
            let mut expected = Vec::new();
            let (mut next, mut at) = (0u64, 0usize);
            let mut buf = vec![0u8; 4096];
            peer.set_read_timeout(Some(LOST)).unwrap();
            while next < ENTRIES || at < expected.len() {
                match rng.below(100) {
                    0 => std::thread::sleep(Duration::from_millis(2)),
                    1..=9 => std::thread::yield_now(),
                    10 => peer.write_all(b"i").unwrap(),
                    _ => {}
                }
                let want = 1 + usize::try_from(rng.below(buf.len() as u64)).unwrap();
                let n = match peer.read(&mut buf[..want]) {
                    Ok(0) => return Err("EOF".to_owned()),
                    Ok(n) => n,
                    Err(e) => return Err(format!("read after entry {next}: {e}")),
                };
                for &byte in &buf[..n] {
                    while at == expected.len() {
                        if next == ENTRIES {
                            return Err("more bytes than were sent".to_owned());
                        }
                        expected = stress_entry(next);
                        next += 1;
                        at = 0;
                    }
                    if byte != expected[at] {
                        return Err(format!("entry {}: byte {at} out of order", next - 1));
                    }
                    at += 1;
                }
            }
            // Kept open until the connection thread is done.
            Ok(peer)
        })
        .unwrap();

        let mut rng = XorShift(0x2545_F491_4F6C_DD1D);
        let mut counts = [0u64; 4];
        for n in 0..ENTRIES {
            let entry = Arc::new(Outbound {
                kind: OutboundKind::Position,
                messages: 1,
                wire: stress_entry(n),
                last_ts: None,
                drain: Drain::new(),
                cut: None,
            });
            let deadline = Instant::now() + LOST;
            let delivery = loop {
                match handle.offer_position(&entry, usize::MAX, rng.below(8) != 0) {
                    Ok(delivery) => break delivery,
                    Err(OfferError::Overflow) => {
                        assert!(Instant::now() < deadline, "entry {n}: the queue never drained");
                        std::thread::yield_now();
                    }
                    Err(e) => panic!("offer {n}: {e:?}"),
                }
            };
            counts[match delivery {
                Delivery::Queued => 0,
                Delivery::Woken => 1,
                Delivery::Written => 2,
                Delivery::WrittenInPart => 3,
            }] += 1;
            if rng.below(1000) == 0 {
                handle.request_close(CloseReason::BackPressure);
            }
            if rng.below(50) == 0 {
                // Now and then, wait for the thread to go idle, so that
                // it sleeps with nothing owed and is written through.
                while handle.queued_bytes() > 0 {
                    assert!(Instant::now() < deadline, "entry {n} never went out");
                    std::thread::yield_now();
                }
            }
        }
        let _peer = reader.join().unwrap().unwrap();
        done.store(true, Ordering::SeqCst);
        handle.terminate();
        let (sleeps, inputs, closes) = thread.join().unwrap().unwrap();
        let [queued, woken, written, in_part] = counts;
        assert_eq!(handle.overlaps(), 0, "two writers on one socket");
        assert_eq!(handle.queued_bytes(), 0);
        assert!(
            sleeps > 0 && woken > 0 && written > 0 && in_part > 0 && inputs > 0 && closes > 0,
            "a path was never taken, the test proves less than it says: sleeps {sleeps}, \
             queued {queued}, woken {woken}, written {written}, in part {in_part}, \
             input bytes {inputs}, close requests {closes}"
        );
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
