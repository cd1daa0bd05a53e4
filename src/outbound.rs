//! The contract between the broadcaster and the connection threads: a
//! client's outbound queue entry ([`Outbound`]), the handle the broadcaster
//! holds on each client ([`ClientHandle`]) and the frame encoding both
//! sides share ([`push_text_frame`]).
//!
//! A leaf module: `broadcast/` (which fills queues) and `server/` (whose
//! connection threads drain them) both depend on it and not on each other.
//! Its methods run on whichever thread the doc says: `offer` on the
//! broadcaster, `taken`/`prepare_sleep`/`woke` on the connection thread,
//! the rest anywhere.
//!
//! The broadcaster never blocks on a client: it `try_send`s an [`Outbound`]
//! entry into the client's bounded crossbeam queue, adds its bytes to a
//! shared counter, and wakes the connection thread through its eventfd only
//! when that thread has announced it is about to sleep. A full queue or too
//! many queued bytes is bookkeeping: the client is marked for a 1008 close
//! and the broadcaster moves on.

use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicIsize, AtomicU64, AtomicUsize, Ordering,
};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use rustix::event::{EventfdFlags, eventfd};
use uuid::Uuid;

use crate::protocol::CloseReason;

/// What kind of message an entry carries, for `livecast_outbound_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboundKind {
    /// Live positions of one event from one broadcaster cycle.
    Position,
    /// A `subscribed` message with its snapshot.
    Subscribed,
    /// An `unsubscribed` message.
    Unsubscribed,
}

impl OutboundKind {
    pub(crate) fn label(self) -> &'static str {
        match self {
            OutboundKind::Position => "position",
            OutboundKind::Subscribed => "subscribed",
            OutboundKind::Unsubscribed => "unsubscribed",
        }
    }
}

/// One queue entry: every message a client gets from one event in one
/// broadcaster cycle, as ready-to-send WebSocket frames.
///
/// The same `Arc<Outbound>` goes to every subscriber of the event, so a
/// position is serialised and framed once however many clients receive it,
/// a queue slot costs one pointer, and the connection thread writes `wire`
/// as is (see `wire.rs`).
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) kind: OutboundKind,
    /// Number of messages in `wire`.
    pub(crate) messages: usize,
    /// The frames, back to back.
    pub(crate) wire: Vec<u8>,
    /// `ts` of the last position in `wire`, for staleness.
    pub(crate) last_ts: Option<i64>,
    /// How long the subscribers took to take this entry: the measured cost
    /// of one fan-out, from which the broadcaster paces the next.
    pub(crate) drain: Drain,
    /// Bytes that follow `wire`, cut from a buffer other entries share
    /// (a `subscribed` answer: `wire` is then its frame header).
    pub(crate) cut: Option<Cut>,
}

impl Outbound {
    /// An entry holding one message.
    pub(crate) fn single(kind: OutboundKind, message: &str) -> Outbound {
        let mut wire = Vec::with_capacity(message.len() + 10);
        push_text_frame(&mut wire, message.as_bytes());
        Outbound { kind, messages: 1, wire, last_ts: None, drain: Drain::new(), cut: None }
    }

    /// Bytes this entry holds, for the back-pressure byte count.
    pub(crate) fn bytes(&self) -> usize {
        self.wire.len() + self.cut.as_ref().map_or(0, Cut::len)
    }

    /// The entry's bytes, in order: `wire`, then the cut's ranges. Whoever
    /// writes an entry to a socket writes these.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[u8]> {
        std::iter::once(self.wire.as_slice()).chain(self.cut.iter().flat_map(Cut::slices))
    }
}

/// Bytes shared by several entries, and the ranges of them one entry
/// sends: what lets subscribers asking different trail lengths share one
/// built `subscribed` answer (each takes its own ranges of it) instead of
/// each getting a copy.
pub(crate) struct Cut {
    shared: Arc<dyn AsRef<[u8]> + Send + Sync>,
    ranges: Vec<Range<usize>>,
    len: usize,
}

impl std::fmt::Debug for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cut").field("ranges", &self.ranges.len()).field("len", &self.len).finish()
    }
}

impl Cut {
    /// `ranges` of `shared`, in order; ranges outside it are left out.
    pub(crate) fn new(
        shared: Arc<dyn AsRef<[u8]> + Send + Sync>,
        ranges: Vec<Range<usize>>,
    ) -> Cut {
        let size = (*shared).as_ref().len();
        let ranges: Vec<Range<usize>> =
            ranges.into_iter().filter(|r| r.start < r.end && r.end <= size).collect();
        let len = ranges.iter().map(ExactSizeIterator::len).sum();
        Cut { shared, ranges, len }
    }

    /// Bytes in the ranges.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The bytes of the ranges, in order.
    pub(crate) fn slices(&self) -> impl Iterator<Item = &[u8]> {
        let shared = (*self.shared).as_ref();
        self.ranges.iter().map(move |r| shared.get(r.clone()).unwrap_or_default())
    }
}

/// The clock of one fan-out: from the broadcaster's first offer until most
/// subscribers have taken the entry from their queues.
///
/// Wall time, not CPU time, on purpose: it includes waking every sleeping
/// thread and their competing for the cores, which is exactly what a
/// thread-per-connection fan-out costs and what grows when the machine is
/// busy. "Most" is all but one plus one in sixteen (everyone when there is
/// one subscriber), so that a client whose socket is blocked (it takes
/// nothing until it drains) does not make its whole event look expensive.
#[derive(Debug)]
pub(crate) struct Drain {
    started: Instant,
    /// Offered minus taken; takers may run ahead of the count of offers,
    /// which the broadcaster adds once it has offered to everyone.
    left: AtomicIsize,
    /// Takers still missing when the fan-out counts as done.
    slack: AtomicIsize,
    /// Microseconds from `started` to done; `u64::MAX` until then.
    done_us: AtomicU64,
}

impl Drain {
    pub(crate) fn new() -> Drain {
        Drain {
            started: Instant::now(),
            left: AtomicIsize::new(0),
            slack: AtomicIsize::new(0),
            done_us: AtomicU64::new(u64::MAX),
        }
    }

    /// The broadcaster has offered the entry to `n` subscribers.
    pub(crate) fn offered(&self, n: usize) {
        let n = isize::try_from(n).unwrap_or(isize::MAX);
        let slack = if n > 1 { 1 + n / 16 } else { 0 };
        self.slack.store(slack, Ordering::Relaxed);
        // AcqRel: a taker whose decrement follows this add sees `slack`.
        let left = self.left.fetch_add(n, Ordering::AcqRel).saturating_add(n);
        if left <= slack {
            self.finish();
        }
    }

    /// A subscriber took the entry from its queue.
    fn took(&self) {
        let left = self.left.fetch_sub(1, Ordering::AcqRel) - 1;
        // Before `offered`, `left` is negative and never equals the slack.
        if left == self.slack.load(Ordering::Relaxed) {
            self.finish();
        }
    }

    fn finish(&self) {
        let us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX - 1);
        let _ = self.done_us.compare_exchange(u64::MAX, us, Ordering::Release, Ordering::Relaxed);
    }

    /// `Ok(time the fan-out took)` once done, else `Err(time so far)`.
    pub(crate) fn elapsed(&self) -> Result<Duration, Duration> {
        match self.done_us.load(Ordering::Acquire) {
            u64::MAX => Err(self.started.elapsed()),
            us => Ok(Duration::from_micros(us)),
        }
    }
}

/// Appends `payload` as one unmasked, final text frame (RFC 6455 §5.2).
#[allow(clippy::cast_possible_truncation)] // each match arm bounds the length
pub(crate) fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81); // FIN + opcode 1 (text)
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Sentinel for "no position written yet" in `staleness_ms`.
const NO_STALENESS: i64 = i64::MIN;

/// What the broadcaster, the debug endpoint and the stopper share with one
/// connection thread.
#[derive(Debug)]
pub(crate) struct ClientHandle {
    pub(crate) id: Uuid,
    /// `ws-` + the first 8 hex digits of `id`: the thread's name.
    pub(crate) thread_name: String,
    pub(crate) remote: SocketAddr,
    pub(crate) user: String,
    pub(crate) opened_at_ms: i64,
    tx: Sender<Arc<Outbound>>,
    /// Bytes queued but not yet taken by the connection thread.
    queued_bytes: AtomicUsize,
    /// Set by the connection thread just before it blocks in `poll`.
    sleeping: AtomicBool,
    /// Written to wake the connection thread.
    wake_fd: OwnedFd,
    /// The first close asked of this connection by another thread.
    close_request: Mutex<Option<CloseReason>>,
    /// Set to drop the connection now, without a close handshake.
    terminate: AtomicBool,
    pub(crate) tid: AtomicI32,
    pub(crate) last_seen_ms: AtomicI64,
    pub(crate) messages_sent: AtomicU64,
    staleness_ms: AtomicI64,
    pub(crate) subscriptions: Mutex<Vec<String>>,
}

/// Why [`ClientHandle::offer`] did not queue an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OfferError {
    /// The queue or the byte budget is full: close the client with 1008.
    Overflow,
    /// The connection thread is gone: forget the client.
    Gone,
}

impl ClientHandle {
    /// Creates the handle and the receiving end of its queue.
    ///
    /// # Errors
    /// When the eventfd cannot be made (fd exhaustion).
    pub(crate) fn new(
        id: Uuid,
        remote: SocketAddr,
        user: String,
        capacity: usize,
    ) -> std::io::Result<(Arc<ClientHandle>, Receiver<Arc<Outbound>>)> {
        let (tx, rx) = crossbeam_channel::bounded(capacity);
        let wake_fd = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let handle = ClientHandle {
            id,
            thread_name: thread_name(id),
            remote,
            user,
            opened_at_ms: crate::position::now_ms(),
            tx,
            queued_bytes: AtomicUsize::new(0),
            sleeping: AtomicBool::new(false),
            wake_fd,
            close_request: Mutex::new(None),
            terminate: AtomicBool::new(false),
            tid: AtomicI32::new(0),
            last_seen_ms: AtomicI64::new(crate::position::now_ms()),
            messages_sent: AtomicU64::new(0),
            staleness_ms: AtomicI64::new(NO_STALENESS),
            subscriptions: Mutex::new(Vec::new()),
        };
        Ok((Arc::new(handle), rx))
    }

    /// Queues `entry` without blocking; called by the broadcaster only.
    /// Returns whether the connection thread was asleep and had to be woken.
    ///
    /// The first entry of an empty queue always fits, whatever its size
    /// (SPEC §9): a snapshot larger than the byte threshold is delivered,
    /// not refused.
    ///
    /// # Errors
    /// [`OfferError::Overflow`] when the queue is full or the queued bytes
    /// would pass `byte_limit`; [`OfferError::Gone`] when the connection
    /// thread has dropped its end.
    pub(crate) fn offer(
        &self,
        entry: &Arc<Outbound>,
        byte_limit: usize,
    ) -> Result<bool, OfferError> {
        let queued = self.queued_bytes.load(Ordering::Relaxed);
        if queued > 0 && queued.saturating_add(entry.bytes()) > byte_limit {
            return Err(OfferError::Overflow);
        }
        match self.tx.try_send(Arc::clone(entry)) {
            Ok(()) => {
                self.queued_bytes.fetch_add(entry.bytes(), Ordering::Relaxed);
                Ok(self.wake_if_sleeping())
            }
            Err(TrySendError::Full(_)) => Err(OfferError::Overflow),
            Err(TrySendError::Disconnected(_)) => Err(OfferError::Gone),
        }
    }

    /// Called by the connection thread for each entry it takes.
    pub(crate) fn taken(&self, entry: &Outbound) {
        self.queued_bytes.fetch_sub(entry.bytes(), Ordering::Relaxed);
        entry.drain.took();
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    pub(crate) fn queued_messages(&self) -> usize {
        self.tx.len()
    }

    /// Asks the connection to close with `reason` (the first ask wins) and
    /// wakes it.
    pub(crate) fn request_close(&self, reason: CloseReason) {
        self.close_request.lock().get_or_insert(reason);
        self.wake();
    }

    /// Drops the connection at once: no close handshake, the thread ends.
    ///
    /// The eventfd is enough to reach the thread: once registered, it only
    /// ever blocks in its epoll set (its socket is non-blocking). Not
    /// keeping a duplicate of the socket saves one descriptor per client.
    pub(crate) fn terminate(&self) {
        self.terminate.store(true, Ordering::SeqCst);
        self.wake();
    }

    pub(crate) fn take_close_request(&self) -> Option<CloseReason> {
        self.close_request.lock().take()
    }

    pub(crate) fn terminated(&self) -> bool {
        self.terminate.load(Ordering::SeqCst)
    }

    /// The connection thread's side of the sleep protocol: announce the
    /// sleep, then re-check for work. Returns `false` (and stays awake) when
    /// work arrived in between, so that no wake-up is lost.
    pub(crate) fn prepare_sleep(&self, queue_counts: bool) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        let work = (queue_counts && !self.tx.is_empty())
            || self.terminated()
            || self.close_request.lock().is_some();
        if work {
            self.sleeping.store(false, Ordering::SeqCst);
        }
        !work
    }

    /// The connection thread is awake again. The eventfd is edge-triggered
    /// in its epoll set, so its counter is never read back.
    pub(crate) fn woke(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }

    pub(crate) fn wake_fd(&self) -> &OwnedFd {
        &self.wake_fd
    }

    fn wake_if_sleeping(&self) -> bool {
        let asleep = self.sleeping.swap(false, Ordering::SeqCst);
        if asleep {
            self.wake();
        }
        asleep
    }

    fn wake(&self) {
        // A full eventfd counter (2^64-2 wakes) or EAGAIN still leaves it
        // readable, which is all a wake needs.
        let _ = rustix::io::write(&self.wake_fd, &1u64.to_ne_bytes());
    }

    pub(crate) fn set_staleness(&self, ms: i64) {
        self.staleness_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn staleness_ms(&self) -> Option<i64> {
        match self.staleness_ms.load(Ordering::Relaxed) {
            NO_STALENESS => None,
            ms => Some(ms),
        }
    }
}

/// `ws-` + the first 8 hex digits of the id (11 bytes: fits the kernel's
/// 15-byte thread name).
pub(crate) fn thread_name(id: Uuid) -> String {
    let hex = id.simple().to_string();
    format!("ws-{}", hex.get(..8).unwrap_or(&hex))
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    fn handle(capacity: usize) -> (Arc<ClientHandle>, Receiver<Arc<Outbound>>) {
        let remote = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1);
        ClientHandle::new(Uuid::new_v4(), remote, "anonymous".to_owned(), capacity)
            .expect("eventfd")
    }

    fn entry() -> Arc<Outbound> {
        Arc::new(Outbound::single(OutboundKind::Position, "{}"))
    }

    /// How many times the eventfd was written since the last call (0: not
    /// at all). Reading resets the counter.
    fn wakes(handle: &ClientHandle) -> u64 {
        let mut counter = [0u8; 8];
        match rustix::io::read(handle.wake_fd(), &mut counter) {
            Ok(_) => u64::from_ne_bytes(counter),
            Err(rustix::io::Errno::AGAIN) => 0,
            Err(e) => panic!("eventfd read: {e}"),
        }
    }

    #[test]
    fn offer_wakes_only_a_thread_that_announced_its_sleep() {
        let (handle, rx) = handle(8);
        assert_eq!(handle.offer(&entry(), usize::MAX), Ok(false), "awake: not woken");
        assert_eq!(wakes(&handle), 0);
        handle.taken(&rx.try_recv().expect("queued"));

        assert!(handle.prepare_sleep(true), "nothing to do: may sleep");
        assert_eq!(handle.offer(&entry(), usize::MAX), Ok(true), "asleep: woken");
        assert_eq!(handle.offer(&entry(), usize::MAX), Ok(false), "one wake-up per sleep");
        assert_eq!(wakes(&handle), 1);
        handle.woke();
        assert_eq!(handle.offer(&entry(), usize::MAX), Ok(false));
        assert_eq!(wakes(&handle), 0);
        assert_eq!(handle.queued_messages(), 3);
    }

    #[test]
    fn prepare_sleep_refuses_when_work_is_waiting() {
        let (handle, rx) = handle(8);
        handle.offer(&entry(), usize::MAX).expect("room");
        assert!(!handle.prepare_sleep(true), "a queued entry: stay awake");
        assert_eq!(handle.offer(&entry(), usize::MAX), Ok(false), "the announcement is withdrawn");
        // A thread whose socket is full does not take from the queue, so a
        // queued entry is no reason to stay awake; a close request is.
        assert!(handle.prepare_sleep(false));
        handle.woke();
        while let Ok(taken) = rx.try_recv() {
            handle.taken(&taken);
        }
        assert_eq!(handle.queued_bytes(), 0);
        handle.request_close(CloseReason::BackPressure);
        assert!(!handle.prepare_sleep(false), "a close request: stay awake");
        assert_eq!(handle.take_close_request(), Some(CloseReason::BackPressure));
        assert!(handle.prepare_sleep(true));
        handle.woke();
        handle.terminate();
        assert!(!handle.prepare_sleep(false), "terminated: stay awake");
    }

    #[test]
    fn close_requests_and_termination_always_wake() {
        let (handle, _rx) = handle(8);
        handle.request_close(CloseReason::BackPressure);
        handle.request_close(CloseReason::InboundFlood);
        assert_eq!(wakes(&handle), 2);
        assert_eq!(handle.take_close_request(), Some(CloseReason::BackPressure), "first wins");
        handle.terminate();
        assert_eq!(wakes(&handle), 1);
        assert!(handle.terminated());
    }

    #[test]
    fn the_byte_budget_overflows_but_the_first_entry_always_fits() {
        let (handle, rx) = handle(8);
        let big = entry();
        let limit = big.bytes() - 1;
        assert_eq!(handle.offer(&big, limit), Ok(false), "an empty queue takes anything");
        assert_eq!(handle.offer(&big, limit), Err(OfferError::Overflow));
        drop(rx);
        assert_eq!(handle.offer(&big, usize::MAX), Err(OfferError::Gone));
    }

    #[test]
    fn a_drain_is_done_when_all_but_a_few_stragglers_took_it() {
        let d = Drain::new();
        d.offered(1);
        assert!(d.elapsed().is_err(), "a lone subscriber must take it");
        d.took();
        assert!(d.elapsed().is_ok());

        let d = Drain::new();
        d.offered(3);
        d.took();
        assert!(d.elapsed().is_err(), "two of three still missing");
        d.took();
        assert!(d.elapsed().is_ok(), "one straggler may lag");

        let d = Drain::new();
        d.offered(32);
        for _ in 0..28 {
            d.took();
        }
        assert!(d.elapsed().is_err());
        d.took();
        assert!(d.elapsed().is_ok(), "three of 32 may lag");
    }

    #[test]
    fn takers_may_run_ahead_of_the_offer_count() {
        let d = Drain::new();
        d.took();
        d.took();
        assert!(d.elapsed().is_err(), "not done before the broadcaster says how many");
        d.offered(2);
        assert!(d.elapsed().is_ok());
        let none = Drain::new();
        none.offered(0);
        assert!(none.elapsed().is_ok(), "a fan-out to nobody costs nothing");
    }
}
