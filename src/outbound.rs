//! The contract between the broadcaster and the connection threads: a
//! client's outbound queue entry ([`Outbound`]), the handle the broadcaster
//! holds on each client ([`ClientHandle`]) and the frame encoding both
//! sides share ([`push_text_frame`]).
//!
//! A leaf module: `broadcast/` (which fills queues) and `server/` (whose
//! connection threads drain them) both depend on it and not on each other.
//! Its methods run on whichever thread the doc says: `offer` and
//! `offer_position` on the broadcaster, `taken`/`prepare_sleep`/`woke` on
//! the connection thread, the rest anywhere.
//!
//! The broadcaster never blocks on a client: it `try_send`s an [`Outbound`]
//! entry into the client's bounded crossbeam queue, adds its bytes to a
//! shared counter, and wakes the connection thread through its eventfd only
//! when that thread has announced it is about to sleep. A full queue or too
//! many bytes owed is bookkeeping: the client is marked for a 1008 close
//! and the broadcaster moves on.
//!
//! # Write-through, and who may write the socket when
//!
//! One atomic state word per connection says who owns its socket's output:
//!
//! - `AWAKE`: the connection thread runs; it alone may write the socket.
//! - `ASLEEP`: the thread is in (or entering) `epoll_wait` and touches
//!   nothing until it has moved the state back to `AWAKE`.
//! - `WRITING`: the broadcaster is writing into the socket.
//!
//! The broadcaster may write only after it moved the state from `ASLEEP` to
//! `WRITING` (a compare-and-swap, so the thread cannot be awake), and only a
//! live position entry, only when the connection owes its peer nothing
//! (queue empty, no unsent bytes on the thread's side) and is not closing:
//! then its bytes are the next on the wire and order is kept. It writes the
//! entry's shared bytes once, non-blocking; what the socket does not take is
//! queued as the head of the queue (the entry plus an offset, no copy) and
//! the thread woken to finish it. Then the state goes back to `ASLEEP` (all
//! written) or to `AWAKE` with a wake-up (a rest is queued). The thread,
//! woken by input, a timer or a close request, moves `ASLEEP` to `AWAKE`;
//! if it finds `WRITING` it waits (a write takes microseconds) before it
//! touches the socket. So never two writers on one socket: `writers` counts
//! them and checks it (see [`ClientHandle::writer`]).

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::{Deref, Range};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{
    AtomicBool, AtomicI32, AtomicI64, AtomicIsize, AtomicU8, AtomicU32, AtomicU64, AtomicUsize,
    Ordering,
};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use rustix::event::{EventfdFlags, eventfd};
use rustix::net::SendFlags;
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

/// The connection thread runs and owns its socket (see the module doc).
const AWAKE: u8 = 0;
/// The connection thread sleeps, or is about to: it touches nothing.
const ASLEEP: u8 = 1;
/// The broadcaster writes into the socket.
const WRITING: u8 = 2;

/// Spins of a thread waiting out the broadcaster's write before it yields
/// its core instead: a write takes a few microseconds, unless the
/// broadcaster was preempted in it.
const SPINS_BEFORE_YIELD: u32 = 64;

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
    /// Bytes the connection thread holds but has not written yet (its own
    /// frames included): kept equal to its wire's count by the wire.
    unsent: Arc<AtomicUsize>,
    /// Bytes of the queue's head entry that the broadcaster already wrote
    /// (the socket took part of it); 0 otherwise. Set only into an empty
    /// queue, read by the thread when it takes that entry.
    head_written: AtomicUsize,
    /// `AWAKE`, `ASLEEP` or `WRITING`: who may write the socket.
    state: AtomicU8,
    /// The socket, for the broadcaster's writes; `None` when this
    /// connection takes no write-through (a TLS session belongs to its
    /// thread), and once the thread has ended. Locked only by whoever owns
    /// the socket by `state`, so never contended.
    direct: Mutex<Option<SharedSocket>>,
    /// Set once the connection sends no more data (it began its close, or
    /// the broadcaster gave up on it): nothing is queued or written through
    /// any more, and no subscribe registers it again.
    closing: AtomicBool,
    /// Set by the first back-pressure verdict, so that a connection counts
    /// once in `livecast_backpressure_closes_total`.
    backpressure: AtomicBool,
    /// Threads writing the socket right now (0 or 1), and how many times a
    /// second one was found: the proof that there is never two.
    writers: AtomicU32,
    overlaps: AtomicU64,
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
    /// The connection is closing and sends nothing more: forget it.
    Closing,
}

/// How [`ClientHandle::offer_position`] delivered an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queued; the thread was awake (or has unsent bytes to finish first,
    /// which wakes it by itself): no wake-up.
    Queued,
    /// Queued, and the sleeping thread woken.
    Woken,
    /// Written whole into the socket by the broadcaster.
    Written,
    /// Written in part (or not at all: the socket was full); the rest
    /// queued and the thread woken to finish it.
    WrittenInPart,
}

impl Delivery {
    /// Whether the broadcaster wrote into the socket.
    pub(crate) fn wrote(self) -> bool {
        matches!(self, Delivery::Written | Delivery::WrittenInPart)
    }

    /// Whether a sleeping thread was woken.
    pub(crate) fn woke(self) -> bool {
        matches!(self, Delivery::Woken | Delivery::WrittenInPart)
    }
}

impl ClientHandle {
    /// Creates the handle and the receiving end of its queue. It takes no
    /// write-through until [`ClientHandle::set_direct`] gives it a socket.
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
            unsent: Arc::new(AtomicUsize::new(0)),
            head_written: AtomicUsize::new(0),
            state: AtomicU8::new(AWAKE),
            direct: Mutex::new(None),
            closing: AtomicBool::new(false),
            backpressure: AtomicBool::new(false),
            writers: AtomicU32::new(0),
            overlaps: AtomicU64::new(0),
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

    /// Lets the broadcaster write positions through `socket`, the
    /// connection's non-blocking socket. Called by the connection thread
    /// before it registers the handle anywhere.
    pub(crate) fn set_direct(&self, socket: SharedSocket) {
        *self.direct.lock() = Some(socket);
    }

    /// The counter the thread's wire keeps equal to its unsent bytes.
    pub(crate) fn unsent_meter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.unsent)
    }

    /// Queues `entry` without blocking and never writes it through
    /// (snapshots, `unsubscribed`); called by the broadcaster only.
    /// Returns whether the connection thread was asleep and had to be woken.
    ///
    /// # Errors
    /// As [`ClientHandle::offer_position`].
    pub(crate) fn offer(
        &self,
        entry: &Arc<Outbound>,
        byte_limit: usize,
    ) -> Result<bool, OfferError> {
        self.queue(entry, 0, byte_limit, false).map(Delivery::woke)
    }

    /// Delivers a live position entry without blocking; called by the
    /// broadcaster only. With `may_write`, a sleeping thread that owes its
    /// peer nothing gets the entry written into its socket here (see the
    /// module doc), else it is queued.
    ///
    /// The first entry owed to the peer always fits, whatever its size
    /// (SPEC §9): a snapshot larger than the byte threshold is delivered,
    /// not refused; the write deadline bounds how long it may stay.
    ///
    /// # Errors
    /// [`OfferError::Overflow`] when the queue is full or the bytes owed
    /// would pass `byte_limit`; [`OfferError::Gone`] when the connection
    /// thread has dropped its end; [`OfferError::Closing`] when the
    /// connection sends nothing more.
    pub(crate) fn offer_position(
        &self,
        entry: &Arc<Outbound>,
        byte_limit: usize,
        may_write: bool,
    ) -> Result<Delivery, OfferError> {
        if may_write
            && self
                .state
                .compare_exchange(ASLEEP, WRITING, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            // The thread is asleep and stays away from the socket until
            // the state leaves WRITING; what it did before is visible.
            if self.owed() == 0
                && !self.closing.load(Ordering::Relaxed)
                // `wire` is all of a live batch (a cut answer is not).
                && entry.cut.is_none()
                && let Some(delivery) = self.write_through(entry, byte_limit)
            {
                return delivery;
            }
            self.state.store(ASLEEP, Ordering::SeqCst);
        }
        self.queue(entry, 0, byte_limit, false)
    }

    /// Writes `entry` into the socket; `None` when there is no socket (or it
    /// failed: the thread finds out by itself), so the caller queues it.
    /// Runs in state `WRITING` and leaves it.
    fn write_through(
        &self,
        entry: &Arc<Outbound>,
        byte_limit: usize,
    ) -> Option<Result<Delivery, OfferError>> {
        let direct = self.direct.lock();
        let socket = direct.as_ref()?;
        let bytes = &entry.wire;
        let written = {
            let _writer = self.writer();
            // MSG_DONTWAIT: never block, whatever the descriptor's mode.
            match rustix::net::send(socket, bytes, SendFlags::DONTWAIT | SendFlags::NOSIGNAL) {
                Ok(n) => n,
                Err(rustix::io::Errno::AGAIN) => 0,
                Err(_) => return None,
            }
        };
        drop(direct);
        // Counted here once begun; an entry the socket took none of is
        // counted by the thread, as any queued entry.
        if written > 0 {
            self.messages_sent.fetch_add(entry.messages as u64, Ordering::Relaxed);
            if let Some(ts) = entry.last_ts {
                self.set_staleness(crate::position::now_ms() - ts);
            }
        }
        if written >= bytes.len() {
            entry.drain.took();
            self.state.store(ASLEEP, Ordering::SeqCst);
            return Some(Ok(Delivery::Written));
        }
        // The rest heads the (empty) queue; the thread finishes it.
        Some(self.queue(entry, written, byte_limit, true))
    }

    /// Queues `entry` (its first `written` bytes already sent) and wakes a
    /// thread asleep with nothing unsent. `from_writing`: in state
    /// `WRITING` (a write-through left a rest), which goes to `AWAKE` with a
    /// wake-up for the thread to finish it.
    fn queue(
        &self,
        entry: &Arc<Outbound>,
        written: usize,
        byte_limit: usize,
        from_writing: bool,
    ) -> Result<Delivery, OfferError> {
        let result = self.push(entry, written, byte_limit);
        if from_writing {
            self.state.store(AWAKE, Ordering::SeqCst);
            self.wake();
            return result.map(|_| Delivery::WrittenInPart);
        }
        let queued = result?;
        debug_assert!(queued);
        // A thread asleep with unsent bytes waits for room in its socket
        // and takes nothing before: it needs no wake-up for this.
        if self.unsent.load(Ordering::Relaxed) == 0
            && self
                .state
                .compare_exchange(ASLEEP, AWAKE, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.wake();
            return Ok(Delivery::Woken);
        }
        Ok(Delivery::Queued)
    }

    /// The bookkeeping of queueing: the byte budget, then `try_send`.
    fn push(
        &self,
        entry: &Arc<Outbound>,
        written: usize,
        byte_limit: usize,
    ) -> Result<bool, OfferError> {
        if self.closing.load(Ordering::Relaxed) {
            return Err(OfferError::Closing);
        }
        let rest = entry.bytes() - written;
        let owed = self.owed();
        if owed > 0 && owed.saturating_add(rest) > byte_limit {
            return Err(OfferError::Overflow);
        }
        if written > 0 {
            self.head_written.store(written, Ordering::Relaxed);
        }
        // Counted before the thread can take it (and subtract it).
        self.queued_bytes.fetch_add(rest, Ordering::Relaxed);
        match self.tx.try_send(Arc::clone(entry)) {
            Ok(()) => Ok(true),
            Err(e) => {
                self.queued_bytes.fetch_sub(rest, Ordering::Relaxed);
                // Only this entry's count: the head of a full queue may be
                // the rest of an earlier write-through, still to be taken.
                if written > 0 {
                    self.head_written.store(0, Ordering::Relaxed);
                }
                Err(match e {
                    TrySendError::Full(_) => OfferError::Overflow,
                    TrySendError::Disconnected(_) => OfferError::Gone,
                })
            }
        }
    }

    /// Called by the connection thread for each entry it takes; returns how
    /// many of its bytes the broadcaster already wrote (skip them).
    pub(crate) fn taken(&self, entry: &Outbound) -> usize {
        let written = match self.head_written.load(Ordering::Relaxed) {
            0 => 0,
            _ => self.head_written.swap(0, Ordering::Relaxed),
        };
        self.queued_bytes.fetch_sub(entry.bytes() - written, Ordering::Relaxed);
        entry.drain.took();
        written
    }

    /// Bytes owed to the peer: queued entries plus what the thread has not
    /// written yet (`queuedBytes` of `/debug/connections`).
    pub(crate) fn queued_bytes(&self) -> usize {
        self.owed()
    }

    fn owed(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed) + self.unsent.load(Ordering::Relaxed)
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

    /// Marks the connection as sending nothing more: no queueing, no
    /// write-through, no new subscription.
    pub(crate) fn set_closing(&self) {
        self.closing.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }

    /// Records a back-pressure verdict; `true` for the first one only, so
    /// that the caller counts each connection once.
    pub(crate) fn mark_backpressure(&self) -> bool {
        self.set_closing();
        !self.backpressure.swap(true, Ordering::SeqCst)
    }

    /// Drops the connection at once: no close handshake, the thread ends.
    ///
    /// The eventfd is enough to reach the thread: once registered, it only
    /// ever blocks in its epoll set (its socket is non-blocking).
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
    /// sleep (`ASLEEP`: from here the broadcaster may write the socket),
    /// then re-check for work. Returns `false` (and is awake again) when
    /// work arrived in between, so that no wake-up is lost.
    pub(crate) fn prepare_sleep(&self, queue_counts: bool) -> bool {
        self.state.store(ASLEEP, Ordering::SeqCst);
        let work = (queue_counts && !self.tx.is_empty())
            || self.terminated()
            || self.close_request.lock().is_some();
        if work {
            self.woke();
        }
        !work
    }

    /// The connection thread is awake again and takes its socket back:
    /// `ASLEEP` → `AWAKE`, after waiting out a write by the broadcaster.
    /// The eventfd is edge-triggered in its epoll set, so its counter is
    /// never read back.
    pub(crate) fn woke(&self) {
        let mut spins = 0;
        loop {
            match self.state.compare_exchange_weak(
                ASLEEP,
                AWAKE,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) | Err(AWAKE) => return,
                Err(WRITING) if spins < SPINS_BEFORE_YIELD => {
                    spins += 1;
                    std::hint::spin_loop();
                }
                Err(WRITING) => std::thread::yield_now(),
                Err(_) => {} // a spurious failure of the weak exchange
            }
        }
    }

    /// The thread is ending: no write-through from now on, and the
    /// broadcaster's reference to the socket is dropped, so that dropping
    /// the thread's own closes the connection as before.
    pub(crate) fn retire(&self) {
        self.set_closing();
        self.woke();
        self.direct.lock().take();
    }

    /// Marks one writer of the socket for as long as the guard lives.
    /// Called by whichever thread writes it (the broadcaster in `WRITING`,
    /// the connection thread in `AWAKE`); a second writer at once is a bug,
    /// counted (tests assert the count is 0) and, in debug builds, a panic.
    pub(crate) fn writer(&self) -> WriterGuard<'_> {
        if self.writers.fetch_add(1, Ordering::SeqCst) != 0 {
            self.overlaps.fetch_add(1, Ordering::SeqCst);
            debug_assert!(false, "two writers on the socket of {}", self.thread_name);
        }
        WriterGuard(self)
    }

    /// How many times two writers were found on the socket (always 0).
    #[cfg(test)]
    pub(crate) fn overlaps(&self) -> u64 {
        self.overlaps.load(Ordering::SeqCst)
    }

    pub(crate) fn wake_fd(&self) -> &OwnedFd {
        &self.wake_fd
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

/// A connection's TCP socket, shared by its thread (the stream under its
/// wire) and the broadcaster (write-through) without a second descriptor:
/// a duplicate would cost one more open file per client, and the
/// open-files limit decides how many clients fit. The descriptor closes
/// when both have let go ([`ClientHandle::retire`] lets go of the
/// broadcaster's).
#[derive(Debug, Clone)]
pub(crate) struct SharedSocket(Arc<TcpStream>);

impl SharedSocket {
    pub(crate) fn new(stream: TcpStream) -> SharedSocket {
        SharedSocket(Arc::new(stream))
    }
}

impl Deref for SharedSocket {
    type Target = TcpStream;

    fn deref(&self) -> &TcpStream {
        &self.0
    }
}

impl AsFd for SharedSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl Read for SharedSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

impl Write for SharedSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0).write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One writer of a socket; see [`ClientHandle::writer`].
#[derive(Debug)]
pub(crate) struct WriterGuard<'a>(&'a ClientHandle);

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        self.0.writers.fetch_sub(1, Ordering::SeqCst);
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

    /// A connected loopback pair: (our non-blocking end, the peer's).
    fn socket_pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("non-blocking");
        (ours, peer)
    }

    #[test]
    fn only_a_sleeping_thread_that_owes_nothing_is_written_through() {
        use std::io::Read;
        let (handle, rx) = handle(8);
        let (ours, mut peer) = socket_pair();
        let e = entry();
        // No socket: always the thread's path.
        assert!(handle.prepare_sleep(true));
        assert_eq!(handle.offer_position(&e, usize::MAX, true), Ok(Delivery::Woken));
        handle.taken(&rx.try_recv().expect("queued"));
        handle.woke();

        handle.set_direct(SharedSocket::new(ours.try_clone().expect("dup")));
        assert_eq!(handle.offer_position(&e, usize::MAX, true), Ok(Delivery::Queued), "awake");
        handle.taken(&rx.try_recv().expect("queued"));
        assert!(handle.prepare_sleep(true));
        assert_eq!(
            handle.offer_position(&e, usize::MAX, false),
            Ok(Delivery::Woken),
            "not allowed"
        );
        handle.taken(&rx.try_recv().expect("queued"));
        assert!(handle.prepare_sleep(true));
        assert_eq!(handle.offer_position(&e, usize::MAX, true), Ok(Delivery::Written));
        assert_eq!(
            handle.offer_position(&e, usize::MAX, true),
            Ok(Delivery::Written),
            "still asleep"
        );
        assert_eq!(wakes(&handle), 2, "the two wake-ups above only");
        assert_eq!(handle.messages_sent.load(Ordering::Relaxed), 2);
        let mut got = vec![0u8; 2 * e.bytes()];
        peer.read_exact(&mut got).expect("written through");
        assert_eq!(got, [e.wire.clone(), e.wire.clone()].concat());
        // Something owed (a snapshot, here): queued behind it, no wake-up
        // needed beyond the snapshot's.
        let snapshot = Arc::new(Outbound::single(OutboundKind::Subscribed, "{}"));
        assert_eq!(handle.offer(&snapshot, usize::MAX), Ok(true));
        assert_eq!(handle.offer_position(&e, usize::MAX, true), Ok(Delivery::Queued));
        assert_eq!(handle.queued_messages(), 2);
        assert_eq!(handle.overlaps(), 0);
    }

    #[test]
    fn an_overflow_behind_a_partial_write_keeps_the_rests_count() {
        let (handle, rx) = handle(1);
        let (ours, _peer) = socket_pair();
        handle.set_direct(SharedSocket::new(ours));
        // More than any loopback socket buffers hold: the write goes partial.
        let big = Arc::new(Outbound::single(OutboundKind::Position, &"x".repeat(32 << 20)));
        assert!(handle.prepare_sleep(true));
        assert_eq!(handle.offer_position(&big, usize::MAX, true), Ok(Delivery::WrittenInPart));
        let rest = handle.queued_bytes();
        assert!(rest > 0 && rest < big.bytes());
        // The queue (capacity 1) is full: this one is refused...
        assert_eq!(handle.offer_position(&entry(), usize::MAX, true), Err(OfferError::Overflow));
        // ...and the rest at its head still knows what was written.
        let taken = rx.try_recv().expect("the rest");
        assert_eq!(handle.taken(&taken), big.bytes() - rest);
        assert_eq!(handle.queued_bytes(), 0);
    }

    #[test]
    fn a_closing_connection_takes_nothing_more_and_counts_its_back_pressure_once() {
        let (handle, _rx) = handle(8);
        assert!(handle.mark_backpressure(), "the first verdict counts");
        assert!(!handle.mark_backpressure(), "later ones do not");
        assert!(handle.is_closing());
        assert_eq!(handle.offer(&entry(), usize::MAX), Err(OfferError::Closing));
        assert_eq!(handle.offer_position(&entry(), usize::MAX, true), Err(OfferError::Closing));
    }

    #[test]
    fn a_retired_connection_is_never_written_through() {
        let (handle, _rx) = handle(8);
        let (ours, _peer) = socket_pair();
        handle.set_direct(SharedSocket::new(ours.try_clone().expect("dup")));
        handle.retire();
        assert!(handle.prepare_sleep(true));
        assert_eq!(handle.offer_position(&entry(), usize::MAX, true), Err(OfferError::Closing));
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
