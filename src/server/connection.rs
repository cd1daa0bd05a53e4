//! The connection loop of one `ws-xxxxxxxx` thread.
//!
//! One blocking, synchronous thread per client. It sleeps in its own small
//! epoll set (`sleep.rs`) on two descriptors: its socket (input, plus
//! output while unsent bytes remain) and its eventfd, which the broadcaster
//! writes after queueing an entry, but only when this thread announced it
//! was about to sleep. The timeout is the next heartbeat deadline, never a
//! periodic tick: measured on 2 cores with 2,000 idle clients, a 1 s tick
//! costs 9 % of a core and 50 ms saturates both, while sleeping until
//! something happens costs nothing. Awake, the thread writes every queued frame and flushes once,
//! reads until `WouldBlock`, and does heartbeat and revalidation work by
//! elapsed time. The socket is non-blocking; tungstenite keeps unsent bytes
//! and resumes after `WouldBlock`.
//!
//! While the thread sleeps with nothing owed to its peer, the broadcaster
//! may write live positions into the socket itself (write-through, see
//! `outbound.rs`): the thread takes the socket back when it wakes, after
//! any such write has ended, and finishes what the socket did not take.
//! Everything it owes the peer (queued entries, unsent bytes, its own
//! replies) counts against the back-pressure threshold; owed bytes that
//! make no progress for `LIVE_WS_WRITE_TIMEOUT_MS` close the connection
//! with 1008.

use std::io::{self, ErrorKind, Read};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, warn};
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::protocol::frame::CloseFrame;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Message, WebSocket};
use uuid::Uuid;

use super::frames::{Frames, TooManyFragments};
use super::handshake::{self, Upgraded};
use super::sleep::Sleeper;
use super::wire::Wire;
use super::{Service, Shared};
use crate::accept::Slot;
use crate::auth::{self, AuthError, AuthzError, Identity};
use crate::broadcast::Command;
use crate::config::AuthMode;
use crate::outbound::{ClientHandle, Outbound, SharedSocket};
use crate::position::now_ms;
use crate::protocol::{CloseReason, ErrorCode, Inbound, error_frame, named_event, pong_frame};
use crate::transport::Stream;

/// How long a policy close (1008, 1009, ...) waits for the peer to take the
/// close frame before the socket is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// tungstenite's read buffer: clients send only small control messages, and
/// the buffer is allocated eagerly for every connection (default 128 KiB).
const READ_BUFFER_BYTES: usize = 4 * 1024;

/// Entry point of a connection thread, from accept to close.
pub(super) fn run(
    shared: &Arc<Shared>,
    stream: TcpStream,
    remote: SocketAddr,
    id: Uuid,
    mut slot: Slot,
) {
    let mut stream = match Stream::new(stream, shared.tls.as_ref()) {
        Ok(stream) => stream,
        Err(e) => {
            warn!("{remote}: cannot set up TLS: {e}");
            return;
        }
    };
    let Some(Upgraded { identity, mut leftover, remote }) =
        handshake::perform(shared, &mut stream, remote, &mut slot)
    else {
        return;
    };
    // The head was read in 16 KiB chunks, and tungstenite keeps the
    // allocation of what it is given as its read buffer for the life of
    // the connection: 16 KiB of every idle client's 38 (measured with
    // heaptrack). Given back here, tungstenite allocates its own
    // `READ_BUFFER_BYTES`.
    leftover.shrink_to_fit();
    // Held until the thread ends; no longer counted as handshaking.
    slot.handshake_done();
    let (handle, rx) =
        match ClientHandle::new(id, remote, identity.user.clone(), shared.config.queue_capacity) {
            Ok(pair) => pair,
            Err(e) => {
                warn!("{remote}: cannot set up connection: {e}");
                return;
            }
        };
    handle.tid.store(crate::thread::current_tid(), std::sync::atomic::Ordering::Relaxed);
    if let Err(e) = stream.set_nonblocking(true) {
        warn!("{remote}: {e}");
        return;
    }
    // A plain socket is shared with the broadcaster, for write-through; a
    // TLS session belongs to this thread (the broadcaster cannot encrypt
    // into it), so its client always takes the thread's path.
    let stream = match stream {
        Stream::Plain(socket) => {
            let socket = SharedSocket::new(socket);
            handle.set_direct(socket.clone());
            Stream::Plain(socket)
        }
        Stream::Tls(tls) => Stream::Tls(tls),
    };
    let ws_config = ws_config(shared.config.max_message_bytes);
    let sleeper = match Sleeper::new(stream.as_fd(), handle.wake_fd().as_fd()) {
        Ok(sleeper) => sleeper,
        Err(e) => {
            warn!("{remote}: cannot set up connection: {e}");
            return;
        }
    };
    let frames = Frames::new(
        Wire::new(stream, handle.unsent_meter()),
        &leftover,
        shared.service.max_fragments(),
    );
    let ws = WebSocket::from_partially_read(frames, leftover, Role::Server, Some(ws_config));

    let metrics = &shared.metrics;
    metrics.connections_opened.inc();
    metrics.connections_open.inc();
    shared.connections.write().insert(id, Arc::clone(&handle));
    if !shared.accepting.load(std::sync::atomic::Ordering::SeqCst) {
        // A stop began between our 101 and the line above, and may have
        // missed us: close like everyone else.
        handle.request_close(CloseReason::Shutdown { retry_after_ms: 0 });
    }
    debug!("{} {remote} open, user {}", handle.thread_name, identity.user);

    let mut conn =
        Connection::new(shared, Arc::clone(&handle), rx, ws, identity, sleeper, Instant::now);
    let reason = conn.serve();
    // No write-through from here, and the broadcaster lets go of the
    // socket, so that dropping ours ends the connection.
    handle.retire();
    drop(conn);

    let _ = shared.commands.send(Command::Disconnect { id });
    shared.connections.write().remove(&id);
    metrics.connections_open.dec();
    metrics.connections_closed.with_label_values(&[reason.label()]).inc();
    debug!("{} {remote} closed: {}", handle.thread_name, reason.label());
}

/// tungstenite's settings for one connection: frames and messages of at
/// most `max` bytes (`LIVE_WS_MAX_MESSAGE_BYTES`).
fn ws_config(max: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        // Hand every frame to the wire queue at once; the wire decides
        // when to write (one writev per wake-up).
        .write_buffer_size(0)
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Where the connection loop reads the time: `Instant::now` in the server;
/// unit tests pass a clock they move by hand, to reach a deadline without
/// waiting for it.
type Clock = fn() -> Instant;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    /// We sent a close frame and wait for the peer's until `deadline`.
    Closing {
        reason: CloseReason,
        deadline: Instant,
    },
    /// The read side is unusable (oversized or malformed frame): we flush
    /// our close frame, shut down our side, and discard input until EOF or
    /// `deadline`, so that the peer reads the close instead of a reset.
    Lingering {
        reason: CloseReason,
        deadline: Instant,
    },
}

/// Token bucket for inbound frames: bursts of one second's allowance, then
/// the configured rate, sustained.
#[derive(Debug)]
struct RateLimit {
    tokens: f64,
    rate: f64,
    last: Instant,
}

impl RateLimit {
    fn new(per_sec: u32, now: Instant) -> RateLimit {
        let rate = f64::from(per_sec);
        RateLimit { tokens: rate, rate, last: now }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Connection<'a> {
    shared: &'a Shared,
    handle: Arc<ClientHandle>,
    rx: Receiver<Arc<Outbound>>,
    ws: WebSocket<Frames<Wire<Stream<SharedSocket>>>>,
    identity: Identity,
    subscriptions: Vec<String>,
    state: State,
    /// Where the thread blocks between wake-ups.
    sleeper: Sleeper,
    /// The socket may have input: set by epoll, cleared once a read blocks.
    readable: bool,
    last_seen: Instant,
    next_ping: Instant,
    /// When the session is checked again (`LIVE_AUTH_REVALIDATE_MS`);
    /// `None` in mode `none`, where there is no session.
    next_revalidate: Option<Instant>,
    rate: RateLimit,
    /// Since when bytes are owed to the peer without any written: the
    /// write deadline (`LIVE_WS_WRITE_TIMEOUT_MS`) counts from here.
    owed_since: Option<Instant>,
    /// The wire's count of written bytes at the last check of progress.
    last_written: u64,
    /// The time, wherever a deadline is set or checked.
    clock: Clock,
}

/// The end of a connection, with the reason that ends it.
type Ended = Result<(), CloseReason>;

impl<'a> Connection<'a> {
    fn new(
        shared: &'a Shared,
        handle: Arc<ClientHandle>,
        rx: Receiver<Arc<Outbound>>,
        ws: WebSocket<Frames<Wire<Stream<SharedSocket>>>>,
        identity: Identity,
        sleeper: Sleeper,
        clock: Clock,
    ) -> Connection<'a> {
        let now = clock();
        Connection {
            shared,
            handle,
            rx,
            ws,
            identity,
            subscriptions: Vec::new(),
            state: State::Open,
            sleeper,
            readable: true,
            last_seen: now,
            next_ping: now + shared.config.ping_interval,
            next_revalidate: (shared.config.auth_mode != AuthMode::None)
                .then(|| now + shared.config.auth_revalidate),
            rate: RateLimit::new(shared.config.max_inbound_per_sec, now),
            owed_since: None,
            last_written: 0,
            clock,
        }
    }

    /// Runs the loop until the connection ends; returns why.
    fn serve(&mut self) -> CloseReason {
        loop {
            if let Err(reason) = self.step() {
                // A close reply or close frame may still be queued: one
                // last non-blocking attempt. A dead peer is owed nothing.
                if reason != CloseReason::HeartbeatTimeout && !self.handle.terminated() {
                    let _writer = self.handle.writer();
                    let _ = self.ws.get_mut().drain();
                }
                return reason;
            }
            if let Err(e) = self.sleep() {
                warn!("{}: epoll_wait failed: {e}", self.handle.thread_name);
                return CloseReason::Internal;
            }
        }
    }

    /// One wake-up: close requests, writes, reads, heartbeat.
    fn step(&mut self) -> Ended {
        if self.handle.terminated() {
            return Err(self.closing_reason().unwrap_or(CloseReason::Internal));
        }
        // Taken in every state: a request left pending would keep the
        // thread from sleeping (a closing thread would spin).
        if let Some(reason) = self.handle.take_close_request()
            && self.state == State::Open
        {
            self.begin_close(reason, false);
        }
        if self.state == State::Open && !self.write_blocked() {
            self.drain_queue();
        }
        if self.readable {
            match self.state {
                State::Lingering { reason, .. } => self.linger(reason)?,
                _ => self.read_all()?,
            }
        }
        self.timers()?;
        // One flush for everything this wake-up wrote: queued frames,
        // answers to what was read, a ping.
        self.flush()
    }

    fn closing_reason(&self) -> Option<CloseReason> {
        match self.state {
            State::Open => None,
            State::Closing { reason, .. } | State::Lingering { reason, .. } => Some(reason),
        }
    }

    /// Unsent bytes remain: wait for POLLOUT and take nothing more from
    /// the queue, which then fills: that is the back-pressure signal.
    fn write_blocked(&self) -> bool {
        // Under TLS, encrypted bytes the socket has not taken count too.
        self.ws.get_ref().is_blocked() || self.ws.get_ref().socket().wants_write()
    }

    /// Moves every queued entry (all frames of one broadcaster cycle per
    /// entry, already framed and shared with the other subscribers) to the
    /// wire; the flush after it makes one `writev` for all of them.
    fn drain_queue(&mut self) {
        let mut messages = 0;
        let mut last_ts = None;
        while let Ok(entry) = self.rx.try_recv() {
            // The broadcaster counted the messages of an entry it began.
            let written = self.handle.taken(&entry);
            if written == 0 {
                messages += entry.messages as u64;
                last_ts = entry.last_ts.or(last_ts);
            }
            self.ws.get_mut().push_shared(entry, written);
        }
        if messages > 0 {
            self.handle.messages_sent.fetch_add(messages, std::sync::atomic::Ordering::Relaxed);
        }
        if let Some(ts) = last_ts {
            self.handle.set_staleness(now_ms() - ts);
        }
    }

    /// Queues one message made here (errors, pings, pongs) on the wire.
    fn write(&mut self, message: Message) -> Ended {
        let owed = self.handle.queued_bytes();
        self.ws.write(message).map_err(|e| self.write_failed(&e))?;
        self.charge(owed);
        Ok(())
    }

    /// What this thread writes counts against the byte threshold as queued
    /// entries do (SPEC §9, write progress): bytes added while `owed` were
    /// already owed, past the threshold, close the connection with 1008.
    /// (The first bytes owed always fit, as the first queued entry does.)
    fn charge(&mut self, owed: usize) {
        let now_owed = self.handle.queued_bytes();
        if self.state == State::Open
            && owed > 0
            && now_owed > owed
            && now_owed > self.shared.config.backpressure_threshold_bytes
        {
            self.close_for_backpressure();
        }
    }

    /// Closes with 1008 back-pressure, counted once per connection.
    fn close_for_backpressure(&mut self) {
        if self.handle.mark_backpressure() {
            self.shared.metrics.backpressure_closes.inc();
        }
        self.begin_close(CloseReason::BackPressure, false);
    }

    /// Hands tungstenite's pending control frames to the wire, then writes
    /// the wire to the socket.
    fn flush(&mut self) -> Ended {
        let owed = self.handle.queued_bytes();
        if let Err(e) = self.ws.flush() {
            return Err(self.write_failed(&e));
        }
        self.charge(owed);
        let drained = {
            let _writer = self.handle.writer();
            self.ws.get_mut().drain()
        };
        self.track_progress();
        match drained {
            Ok(true) => {
                if let State::Lingering { .. } = self.state {
                    // Our close frame is out: tell the peer we are done.
                    let _ = self.ws.get_ref().socket().shutdown(Shutdown::Write);
                }
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e) => {
                debug!("{}: write failed: {e}", self.handle.thread_name);
                Err(self.closing_reason().unwrap_or(CloseReason::IoError))
            }
        }
    }

    /// Notes whether the bytes owed to the peer moved since the last look:
    /// the write deadline counts from the last progress while bytes are
    /// owed (queued entries included: a thread whose socket is full takes
    /// none).
    fn track_progress(&mut self) {
        let written = self.ws.get_ref().written();
        if self.handle.queued_bytes() == 0 {
            self.owed_since = None;
        } else if written != self.last_written || self.owed_since.is_none() {
            self.owed_since = Some((self.clock)());
        }
        self.last_written = written;
    }

    /// A write error ends the connection; after a close handshake it is the
    /// normal end.
    fn write_failed(&self, e: &WsError) -> CloseReason {
        match (e, self.closing_reason()) {
            (WsError::ConnectionClosed | WsError::AlreadyClosed, Some(reason)) => reason,
            (WsError::ConnectionClosed | WsError::AlreadyClosed, None) => CloseReason::ClientClose,
            (_, Some(reason)) => reason,
            (e, None) => {
                debug!("{}: write failed: {e}", self.handle.thread_name);
                CloseReason::IoError
            }
        }
    }

    /// Reads frames until the socket has no more.
    fn read_all(&mut self) -> Ended {
        loop {
            let read = self.ws.read();
            self.frames_seen();
            match read {
                Ok(message) => self.on_message(message)?,
                Err(WsError::Io(e)) if TooManyFragments::is(&e) => {
                    self.begin_close(CloseReason::TooManyFragments, true);
                    return Ok(());
                }
                Err(WsError::Io(e)) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(());
                }
                Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => {
                    return Err(self.closing_reason().unwrap_or(CloseReason::ClientClose));
                }
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    return Err(self.closing_reason().unwrap_or(CloseReason::ClientClose));
                }
                Err(WsError::Capacity(e)) => {
                    debug!("{}: {e}", self.handle.thread_name);
                    self.begin_close(CloseReason::MessageTooBig, true);
                    return Ok(());
                }
                Err(WsError::Utf8(_)) => {
                    self.begin_close(CloseReason::InvalidPayload, true);
                    return Ok(());
                }
                Err(WsError::Protocol(e)) => {
                    debug!("{}: protocol error: {e}", self.handle.thread_name);
                    self.begin_close(CloseReason::ProtocolError, true);
                    return Ok(());
                }
                Err(e) => {
                    debug!("{}: read failed: {e}", self.handle.thread_name);
                    return Err(self.closing_reason().unwrap_or(CloseReason::IoError));
                }
            }
        }
    }

    /// Any frame is a sign of life, even one that completes no message
    /// (a fragment).
    fn frames_seen(&mut self) {
        if self.ws.get_mut().take_seen() {
            self.last_seen = (self.clock)();
            self.handle.last_seen_ms.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
    }

    fn on_message(&mut self, message: Message) -> Ended {
        let now = (self.clock)();
        self.last_seen = now;
        self.handle.last_seen_ms.store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        let inbound = &self.shared.metrics.inbound_messages;
        if let Message::Close(_) = message {
            // tungstenite has queued the reply; the next read or flush ends
            // the connection.
            if self.state == State::Open {
                self.state = State::Closing {
                    reason: CloseReason::ClientClose,
                    deadline: now + CLOSE_GRACE,
                };
            }
            return Ok(());
        }
        if self.state != State::Open {
            return Ok(());
        }
        if !self.rate.allow(now) {
            self.begin_close(CloseReason::InboundFlood, false);
            return Ok(());
        }
        match (self.shared.service, message) {
            // The conformance handler: the same loop, data echoed back.
            (Service::Echo, message @ (Message::Text(_) | Message::Binary(_))) => {
                self.write(message)
            }
            (Service::Live, Message::Text(text)) => self.on_text(text.as_str()),
            (Service::Live, Message::Binary(_)) => {
                inbound.with_label_values(&["invalid"]).inc();
                self.send_error(
                    ErrorCode::ProtocolViolation,
                    "binary frames are not supported",
                    None,
                )
            }
            (_, Message::Ping(_)) => {
                inbound.with_label_values(&["ping"]).inc();
                Ok(())
            }
            (_, Message::Pong(_)) => {
                inbound.with_label_values(&["pong"]).inc();
                Ok(())
            }
            (_, Message::Close(_) | Message::Frame(_)) => Ok(()),
        }
    }

    fn on_text(&mut self, text: &str) -> Ended {
        let inbound = &self.shared.metrics.inbound_messages;
        match Inbound::parse(text) {
            Err(why) => {
                inbound.with_label_values(&["invalid"]).inc();
                let event = named_event(text);
                self.send_error(ErrorCode::ProtocolViolation, &why, event.as_deref())
            }
            Ok(Inbound::Subscribe { event, trail }) => {
                inbound.with_label_values(&["subscribe"]).inc();
                self.subscribe(event, trail)
            }
            Ok(Inbound::Unsubscribe(event)) => {
                inbound.with_label_values(&["unsubscribe"]).inc();
                if let Some(i) = self.subscriptions.iter().position(|e| *e == event) {
                    self.subscriptions.swap_remove(i);
                    self.handle.subscriptions.lock().retain(|e| *e != event);
                }
                let client = Arc::clone(&self.handle);
                self.command(Command::Unsubscribe { client, event })
            }
            Ok(Inbound::Ping(id)) => {
                // Answered here, not through the broadcaster: it proves the
                // socket and this thread alive, which is what the page asks.
                inbound.with_label_values(&["ping"]).inc();
                self.shared.metrics.outbound_messages.with_label_values(&["pong"]).inc();
                self.write(Message::text(pong_frame(id.as_deref())))
            }
            Ok(Inbound::Events) => {
                inbound.with_label_values(&["events"]).inc();
                match super::events::list(self.shared, &self.identity) {
                    Ok(frame) => {
                        self.shared.metrics.outbound_messages.with_label_values(&["events"]).inc();
                        self.write(Message::text(frame))
                    }
                    Err(why) => self.send_error(ErrorCode::Internal, why, None),
                }
            }
        }
    }

    /// Authorizes here (it may block: it blocks only this client), then lets
    /// the broadcaster register the subscription and queue the snapshot.
    fn subscribe(&mut self, event: String, trail: Option<u64>) -> Ended {
        let most = self.shared.config.trail_length;
        let trail = match trail.map(usize::try_from) {
            None => None,
            Some(Ok(n)) if n <= most => Some(n),
            Some(_) => {
                let msg = format!("trail must be at most {most} (LIVE_TRAIL_LENGTH)");
                return self.send_error(ErrorCode::ProtocolViolation, &msg, Some(&event));
            }
        };
        let known = self.subscriptions.contains(&event);
        if !known && self.subscriptions.len() >= self.shared.config.max_subscriptions {
            let msg = format!(
                "at most {} subscriptions per connection",
                self.shared.config.max_subscriptions
            );
            return self.send_error(ErrorCode::TooManySubscriptions, &msg, Some(&event));
        }
        match auth::authorize(
            self.shared.auth.as_ref(),
            &self.shared.metrics,
            &self.identity,
            &event,
        ) {
            Ok(()) => {}
            Err(AuthzError::Forbidden) => {
                let msg = "not allowed to subscribe to this event";
                return self.send_error(ErrorCode::Forbidden, msg, Some(&event));
            }
            Err(AuthzError::Unavailable) => {
                let msg = "authorization service unavailable, retry later";
                return self.send_error(ErrorCode::AuthzUnavailable, msg, Some(&event));
            }
        }
        if !known {
            self.subscriptions.push(event.clone());
            self.handle.subscriptions.lock().push(event.clone());
        }
        let client = Arc::clone(&self.handle);
        self.command(Command::Subscribe { client, event, trail })
    }

    fn command(&mut self, command: Command) -> Ended {
        if self.shared.commands.send(command).is_err() {
            // The broadcaster is gone: the server is stopping.
            self.send_error(ErrorCode::Internal, "server is stopping", None)?;
        }
        Ok(())
    }

    fn send_error(&mut self, code: ErrorCode, message: &str, event: Option<&str>) -> Ended {
        self.shared.metrics.outbound_messages.with_label_values(&["error"]).inc();
        self.write(Message::text(error_frame(code, message, event)))
    }

    /// Sends a close frame. `fatal`: the read side cannot be trusted any
    /// more, so linger instead of waiting for the peer's close.
    fn begin_close(&mut self, reason: CloseReason, fatal: bool) {
        debug!("{} {}: closing: {reason}", self.handle.thread_name, self.handle.remote);
        let grace = match reason {
            // The stopper terminates stragglers at its own drain deadline.
            CloseReason::Shutdown { .. } => self.shared.config.drain_timeout + CLOSE_GRACE,
            _ => CLOSE_GRACE,
        };
        let deadline = (self.clock)() + grace;
        // Nothing more is queued or written through after the close frame.
        self.handle.set_closing();
        self.state = if fatal {
            State::Lingering { reason, deadline }
        } else {
            State::Closing { reason, deadline }
        };
        let frame =
            CloseFrame { code: CloseCode::from(reason.code()), reason: reason.to_string().into() };
        if let Err(e) = self.ws.close(Some(frame)) {
            debug!("{}: close failed: {e}", self.handle.thread_name);
        }
    }

    /// Discards input until EOF: the peer has our close frame and hung up.
    fn linger(&mut self, reason: CloseReason) -> Ended {
        let mut sink = [0u8; 4096];
        loop {
            match self.ws.get_mut().read(&mut sink) {
                Ok(0) => return Err(reason),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(());
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Err(reason),
            }
        }
    }

    /// Heartbeat, revalidation and close deadlines, by elapsed time.
    fn timers(&mut self) -> Ended {
        let now = (self.clock)();
        match self.state {
            State::Closing { reason, deadline } | State::Lingering { reason, deadline } => {
                if now >= deadline { Err(reason) } else { Ok(()) }
            }
            State::Open => {
                let interval = self.shared.config.ping_interval;
                if now.duration_since(self.last_seen) > interval * 2 {
                    // A dead peer is owed no close handshake: drop it.
                    return Err(CloseReason::HeartbeatTimeout);
                }
                if self
                    .owed_since
                    .is_some_and(|since| now >= since + self.shared.config.write_timeout)
                {
                    // Bytes owed and none taken by the peer for the whole
                    // deadline, whatever the heartbeat says (SPEC §9).
                    debug!(
                        "{} {}: no write progress for {:?}",
                        self.handle.thread_name,
                        self.handle.remote,
                        self.shared.config.write_timeout
                    );
                    self.close_for_backpressure();
                    return Ok(());
                }
                if now >= self.next_ping {
                    self.next_ping = now + interval;
                    self.write(Message::Ping(Vec::new().into()))?;
                }
                if self.next_revalidate.is_some_and(|at| now >= at) {
                    self.revalidate();
                }
                Ok(())
            }
        }
    }

    /// Checks the session again, through the authority's cache, in this
    /// thread: it blocks this client only, for at most the authority's
    /// timeout (queued frames wait meanwhile, written on the next wake-up).
    /// A session that no longer validates is closed with 4401, so that the
    /// client logs in again instead of reconnecting as it is; an
    /// unavailable authority closes nobody (an outage must not log out a
    /// whole installation).
    ///
    /// A session that still validates has each of its subscriptions
    /// authorized again: one no longer allowed ends with `unsubscribed`
    /// (`"reason":"forbidden"`) and nothing more of that event.
    fn revalidate(&mut self) {
        let shared = self.shared;
        let result =
            auth::authenticate(shared.auth.as_ref(), &shared.metrics, &self.identity.credentials);
        match result {
            Ok(_) => {
                for event in self.subscriptions.clone() {
                    let verdict = auth::authorize(
                        shared.auth.as_ref(),
                        &shared.metrics,
                        &self.identity,
                        &event,
                    );
                    match verdict {
                        Ok(()) => {}
                        Err(AuthzError::Forbidden) => {
                            debug!("{}: subscription no longer allowed", self.handle.thread_name);
                            self.subscriptions.retain(|e| *e != event);
                            self.handle.subscriptions.lock().retain(|e| *e != event);
                            let client = Arc::clone(&self.handle);
                            let _ = shared.commands.send(Command::Forbid { client, event });
                        }
                        // An unavailable authority keeps the subscriptions,
                        // as it keeps the session; the others are not asked
                        // (each would wait out the same timeout).
                        Err(AuthzError::Unavailable) => break,
                    }
                }
            }
            Err(AuthError::Denied) => {
                debug!(
                    "{} {}: session of user {} no longer valid",
                    self.handle.thread_name, self.handle.remote, self.identity.user
                );
                shared.metrics.revalidation_closes.inc();
                self.begin_close(CloseReason::Revoked, false);
            }
            Err(e @ AuthError::Unavailable(_)) => {
                debug!("{}: revalidation skipped: {e}", self.handle.thread_name);
            }
        }
        // From the end of the check, so that a slow authority is not asked
        // again at once.
        self.next_revalidate = Some((self.clock)() + shared.config.auth_revalidate);
    }

    /// The next instant something is due without any I/O.
    fn next_deadline(&self) -> Instant {
        match self.state {
            State::Closing { deadline, .. } | State::Lingering { deadline, .. } => deadline,
            State::Open => {
                // Just past the silence limit, so that the check above fires.
                let silence = self.last_seen
                    + self.shared.config.ping_interval * 2
                    + Duration::from_millis(1);
                let mut due = self.next_ping.min(silence);
                if let Some(since) = self.owed_since {
                    due = due.min(since + self.shared.config.write_timeout);
                }
                self.next_revalidate.map_or(due, |at| due.min(at))
            }
        }
    }

    /// Blocks in epoll until the socket or the wake fd is ready, or the
    /// next deadline. Skipped when work arrived meanwhile.
    fn sleep(&mut self) -> io::Result<()> {
        let write_blocked = self.write_blocked();
        let take_queue = self.state == State::Open && !write_blocked;
        if !self.handle.prepare_sleep(take_queue) {
            // Busy: no epoll tells whether input arrived, so look. Without
            // this, a thread that never sleeps would never read pongs.
            self.readable = true;
            return Ok(());
        }
        let timeout = self.next_deadline().saturating_duration_since((self.clock)());
        let socket = self.ws.get_ref().socket().as_fd();
        let result = self.sleeper.wait(socket, write_blocked, timeout);
        self.handle.woke();
        // A wake-up for queued frames only need not try to read: a read
        // that would block is one syscall per delivery saved.
        self.readable = *result.as_ref().unwrap_or(&true);
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    //! The state machine driven step by step, as the loop in `serve` does
    //! between two sleeps, with a clock the test moves by hand.
    //!
    //! The double under the connection is a real loopback TCP pair, not an
    //! in-memory stream: the loop needs a descriptor (its epoll set, the
    //! `shutdown` of a lingering close), and a real socket keeps the types
    //! the server runs with. The far end is a tungstenite client, so frames
    //! are masked and close handshakes answered as a browser would.

    use std::cell::Cell;
    use std::net::{TcpListener, TcpStream};
    use std::sync::OnceLock;

    use rustix::event::{PollFd, PollFlags, Timespec, poll};

    use super::*;
    use crate::auth::{Authenticator, Credentials, NoAuth};
    use crate::config::Config;
    use crate::metrics::Metrics;
    use crate::outbound::{Delivery, OfferError, OutboundKind};

    /// How long the test waits for bytes that are on their way.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// The instant the test clock reads as 0 ms.
    fn epoch() -> Instant {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        *EPOCH.get_or_init(Instant::now)
    }

    thread_local! {
        /// The test clock, past [`epoch`]; each test runs on its own thread.
        static ELAPSED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    }

    /// The [`Clock`] given to the connection under test.
    fn test_now() -> Instant {
        epoch() + ELAPSED.get()
    }

    /// The test clock's reading at `ms`.
    fn at(ms: u64) -> Instant {
        epoch() + Duration::from_millis(ms)
    }

    /// What every connection of a test shares: echo service (the loop
    /// without the live protocol), mode `none`.
    fn shared(configure: impl FnOnce(&mut Config)) -> Shared {
        shared_with(Box::new(NoAuth), configure)
    }

    /// As [`shared`], with `auth` as the authority.
    fn shared_with(auth: Box<dyn Authenticator>, configure: impl FnOnce(&mut Config)) -> Shared {
        let mut config = Config { ping_interval: Duration::from_secs(1), ..Config::default() };
        configure(&mut config);
        let (commands, _) = crossbeam_channel::unbounded();
        let metrics = Metrics::new().expect("metrics");
        Shared::new(config, metrics, Service::Echo, commands, auth)
    }

    /// An authority whose every answer to `authenticate` is set by the test.
    #[derive(Debug)]
    struct Scripted(Arc<parking_lot::Mutex<Result<(), AuthError>>>);

    impl Authenticator for Scripted {
        fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError> {
            self.0
                .lock()
                .clone()
                .map(|()| Identity { user: "u".to_owned(), credentials: credentials.clone() })
        }

        fn authorize(&self, _who: &Identity, _event: &str) -> Result<(), AuthzError> {
            Ok(())
        }
    }

    /// A connection in state `Open` at clock 0 ms, and its peer.
    struct Harness<'a> {
        conn: Connection<'a>,
        handle: Arc<ClientHandle>,
        peer: WebSocket<TcpStream>,
    }

    impl Harness<'_> {
        fn open(shared: &Shared) -> Harness<'_> {
            ELAPSED.set(Duration::ZERO);
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
            let (server, remote) = listener.accept().expect("accept");
            server.set_nonblocking(true).expect("non-blocking");
            client.set_read_timeout(Some(PATIENCE)).expect("timeout");
            let (handle, rx) = ClientHandle::new(
                Uuid::new_v4(),
                remote,
                "anonymous".to_owned(),
                shared.config.queue_capacity,
            )
            .expect("handle");
            let sleeper = Sleeper::new(server.as_fd(), handle.wake_fd().as_fd()).expect("epoll");
            let config = ws_config(shared.config.max_message_bytes);
            let ws = WebSocket::from_partially_read(
                Frames::new(
                    Wire::new(Stream::Plain(SharedSocket::new(server)), handle.unsent_meter()),
                    &[],
                    shared.service.max_fragments(),
                ),
                Vec::new(),
                Role::Server,
                Some(config),
            );
            let identity =
                Identity { user: "anonymous".to_owned(), credentials: Credentials::default() };
            let conn =
                Connection::new(shared, Arc::clone(&handle), rx, ws, identity, sleeper, test_now);
            // No size limit at the peer: a test may send or expect big frames.
            let unlimited = WebSocketConfig::default().max_message_size(None).max_frame_size(None);
            let peer = WebSocket::from_raw_socket(client, Role::Client, Some(unlimited));
            Harness { conn, handle, peer }
        }

        /// One wake-up at clock `ms`, as after an epoll that saw input.
        fn step_at(&mut self, ms: u64) -> Ended {
            ELAPSED.set(Duration::from_millis(ms));
            self.conn.readable = true;
            self.conn.step()
        }

        /// The peer sends `message`; returns once the connection's socket
        /// has input, so that the next step reads it.
        fn send(&mut self, message: Message) {
            self.send_together(vec![message]);
        }

        /// The peer sends `messages` in one write, so that they arrive
        /// together and one step reads them all.
        fn send_together(&mut self, messages: Vec<Message>) {
            for message in messages {
                self.peer.write(message).expect("peer write");
            }
            self.peer.flush().expect("peer flush");
            self.wait_for_input();
        }

        /// Returns once the connection's socket has input.
        fn wait_for_input(&self) {
            wait_for_input(&self.conn);
        }

        /// The next message the peer receives.
        fn receive(&mut self) -> Message {
            self.peer.read().expect("the peer receives a message in time")
        }

        /// The close frame the peer receives next, as (code, reason).
        fn receive_close(&mut self) -> (u16, String) {
            match self.receive() {
                Message::Close(Some(frame)) => (frame.code.into(), frame.reason.to_string()),
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// Returns once `conn`'s socket has input (or hung up).
    fn wait_for_input(conn: &Connection<'_>) {
        let socket = conn.ws.get_ref().socket();
        let mut fds = [PollFd::new(socket, PollFlags::IN)];
        let timeout = Timespec { tv_sec: 5, tv_nsec: 0 };
        let ready = poll(&mut fds, Some(&timeout)).expect("poll");
        assert_eq!(ready, 1, "the peer's bytes did not arrive in time");
    }

    #[test]
    fn rate_limit_allows_a_burst_of_one_seconds_allowance_then_the_rate() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(10, t0);
        for i in 0..10 {
            assert!(rate.allow(t0), "burst frame {i}");
        }
        assert!(!rate.allow(t0), "the 11th frame of the same instant");
        // Sustained: one frame per 100 ms goes through for ever.
        for i in 1..=100 {
            assert!(rate.allow(t0 + Duration::from_millis(100 * i)), "sustained frame {i}");
        }
        // Faster than the rate: one in two is refused.
        let t1 = t0 + Duration::from_millis(10_000);
        let verdicts: Vec<bool> =
            (1..=6).map(|i| rate.allow(t1 + Duration::from_millis(50 * i))).collect();
        assert_eq!(verdicts, [false, true, false, true, false, true]);
    }

    #[test]
    fn rate_limit_saves_up_one_second_at_most() {
        let t0 = Instant::now();
        let mut rate = RateLimit::new(3, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| rate.allow(later)).count(), 3, "an hour idle is no credit");
    }

    #[test]
    fn queued_entries_go_out_at_the_next_step_in_order() {
        let shared = shared(|_| {});
        let mut h = Harness::open(&shared);
        for text in ["{\"n\":1}", "{\"n\":2}"] {
            let entry = Arc::new(Outbound::single(OutboundKind::Position, text));
            assert_eq!(h.handle.offer(&entry, usize::MAX), Ok(false), "awake: no wake-up");
        }
        assert_eq!(h.step_at(10), Ok(()));
        assert_eq!(h.handle.queued_bytes(), 0);
        assert_eq!(h.receive(), Message::text("{\"n\":1}"));
        assert_eq!(h.receive(), Message::text("{\"n\":2}"));
    }

    #[test]
    fn a_full_socket_leaves_the_queue_alone_until_it_drains() {
        let shared = shared(|config| config.ping_interval = Duration::from_secs(60));
        let mut h = Harness::open(&shared);
        // More than any socket buffer holds, and nobody reads yet.
        let big = "x".repeat(32 << 20);
        let big_entry = Arc::new(Outbound::single(OutboundKind::Position, &big));
        h.handle.offer(&big_entry, usize::MAX).expect("the first entry always fits");
        assert_eq!(h.step_at(0), Ok(()));
        assert!(h.conn.write_blocked(), "32 MiB cannot all be written at once");
        let small = Arc::new(Outbound::single(OutboundKind::Position, "{\"n\":1}"));
        h.handle.offer(&small, usize::MAX).expect("room");
        assert_eq!(h.step_at(10), Ok(()));
        assert_eq!(h.handle.queued_messages(), 1, "not taken while unsent bytes remain");

        let Harness { mut conn, handle, mut peer } = h;
        let reader = crate::thread::spawn_named("test-peer".to_owned(), None, move || {
            let first = peer.read().expect("the big message");
            let second = peer.read().expect("the small one");
            (first, second)
        })
        .expect("spawn");
        let deadline = Instant::now() + PATIENCE * 4;
        while conn.write_blocked() || handle.queued_messages() > 0 {
            assert!(Instant::now() < deadline, "the queue was never drained");
            let socket = conn.ws.get_ref().socket();
            let mut fds = [PollFd::new(socket, PollFlags::OUT)];
            poll(&mut fds, Some(&Timespec { tv_sec: 1, tv_nsec: 0 })).expect("poll");
            assert_eq!(conn.step(), Ok(()));
        }
        let (first, second) = reader.join().expect("reader");
        assert_eq!(first, Message::text(big));
        assert_eq!(second, Message::text("{\"n\":1}"));
    }

    /// Issue 19's socket pair whose reader stops reading: the broadcaster
    /// writes through into the sleeping connection until its write goes
    /// partial; the rest, and everything after, goes through the thread,
    /// whole and in order; the back-pressure close still fires at the
    /// threshold, counting the partial rest and the thread's unsent bytes.
    #[test]
    fn a_partial_write_through_is_finished_by_the_thread_in_order() {
        const THRESHOLD: usize = 512 * 1024;
        let shared = shared(|config| {
            config.ping_interval = Duration::from_secs(60);
            config.backpressure_threshold_bytes = THRESHOLD;
            config.queue_capacity = 1024;
        });
        let mut h = Harness::open(&shared);
        let Stream::Plain(socket) = h.conn.ws.get_ref().socket() else { unreachable!("plain") };
        h.handle.set_direct(socket.clone());
        let text = |n: usize| format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(16 * 1024));
        let entry = |n: usize| Arc::new(Outbound::single(OutboundKind::Position, &text(n)));

        // Asleep with nothing owed: written through, until the socket is
        // full and a write goes partial (its rest queued, the thread woken).
        let mut n = 0;
        assert!(h.handle.prepare_sleep(true));
        loop {
            let delivery = h.handle.offer_position(&entry(n), THRESHOLD, true).expect("room");
            n += 1;
            match delivery {
                Delivery::Written => assert_eq!(h.handle.queued_bytes(), 0),
                Delivery::WrittenInPart => break,
                other => panic!("entry {n}: {other:?} while asleep with nothing owed"),
            }
            assert!(n < 10_000, "the socket never filled");
        }
        let rest = h.handle.queued_bytes();
        assert!(rest > 0 && rest <= entry(0).bytes(), "the rest is queued: {rest}");
        // The thread is awake now: nothing more is written through.
        assert_eq!(h.handle.offer_position(&entry(n), THRESHOLD, true), Ok(Delivery::Queued));
        n += 1;
        h.handle.woke();
        assert_eq!(h.step_at(0), Ok(()));
        assert!(h.conn.write_blocked(), "the peer reads nothing: the rest stays unsent");
        assert_eq!(h.handle.queued_messages(), 0, "taken into the wire");

        // More entries, until the bytes owed would pass the threshold.
        let refused = loop {
            let before = h.handle.queued_bytes();
            match h.handle.offer_position(&entry(n), THRESHOLD, true) {
                Ok(Delivery::Queued) => n += 1,
                Ok(other) => panic!("{other:?} while the thread owes bytes"),
                Err(e) => break (e, before),
            }
            assert!(n < 10_000, "no back-pressure");
        };
        let (error, owed) = refused;
        assert_eq!(error, OfferError::Overflow);
        assert!(owed <= THRESHOLD && owed + entry(0).bytes() > THRESHOLD, "at {owed} bytes owed");
        h.handle.request_close(CloseReason::BackPressure);
        assert_eq!(h.step_at(10), Ok(()));
        assert!(matches!(h.conn.state, State::Closing { reason: CloseReason::BackPressure, .. }));

        // The peer reads again: every entry whole and in order, then 1008.
        let Harness { mut conn, handle, mut peer } = h;
        let reader = crate::thread::spawn_named("test-peer".to_owned(), None, move || {
            let mut got = Vec::new();
            loop {
                match peer.read() {
                    Ok(Message::Text(t)) => got.push(t.to_string()),
                    Ok(Message::Close(frame)) => {
                        return (got, frame.map(|f| u16::from(f.code)));
                    }
                    Ok(_) => {}
                    Err(e) => panic!("peer: {e}"),
                }
            }
        })
        .expect("spawn");
        let deadline = Instant::now() + PATIENCE * 4;
        while conn.write_blocked() {
            assert!(Instant::now() < deadline, "the wire never drained");
            let socket = conn.ws.get_ref().socket();
            let mut fds = [PollFd::new(socket, PollFlags::OUT)];
            poll(&mut fds, Some(&Timespec { tv_sec: 1, tv_nsec: 0 })).expect("poll");
            let _ = conn.step();
        }
        let (got, code) = reader.join().expect("reader");
        assert_eq!(code, Some(1008));
        let want: Vec<String> = (0..got.len()).map(text).collect();
        assert!(got.len() >= 2, "only {} entries arrived", got.len());
        assert!(got == want, "entries arrived out of order or cut");
        assert_eq!(handle.overlaps(), 0);
    }

    #[test]
    fn pings_once_per_interval_and_not_before() {
        let shared = shared(|_| {});
        let mut h = Harness::open(&shared);
        assert_eq!(h.conn.next_deadline(), at(1000), "sleeps until the first ping");
        // Markers echoed before and after each step tell when the ping left.
        h.send(Message::text("a"));
        assert_eq!(h.step_at(999), Ok(()));
        h.send(Message::text("b"));
        assert_eq!(h.step_at(1000), Ok(()));
        h.send(Message::text("c"));
        assert_eq!(h.step_at(1999), Ok(()));
        assert_eq!(h.conn.next_deadline(), at(2000));
        let order: Vec<Message> = (0..4).map(|_| h.receive()).collect();
        assert_eq!(
            order,
            [
                Message::text("a"),
                Message::text("b"),
                Message::Ping(Vec::new().into()),
                Message::text("c")
            ]
        );
    }

    #[test]
    fn a_silent_peer_is_dropped_after_two_intervals() {
        let shared = shared(|_| {});
        let mut h = Harness::open(&shared);
        assert_eq!(h.step_at(1000), Ok(()));
        assert_eq!(h.step_at(2000), Ok(()), "two intervals of silence are allowed");
        assert_eq!(h.conn.next_deadline(), at(2001), "wakes just past the limit");
        assert_eq!(h.step_at(2001), Err(CloseReason::HeartbeatTimeout));
    }

    #[test]
    fn a_peer_that_answers_pings_stays() {
        let shared = shared(|_| {});
        let mut h = Harness::open(&shared);
        assert_eq!(h.step_at(1000), Ok(()));
        assert_eq!(h.receive(), Message::Ping(Vec::new().into()));
        // tungstenite queued the pong when it read the ping.
        h.peer.flush().expect("pong");
        h.wait_for_input();
        assert_eq!(h.step_at(1500), Ok(()), "reads the pong");
        assert_eq!(h.step_at(3500), Ok(()), "silent for two intervals since the pong");
        assert_eq!(h.step_at(3501), Err(CloseReason::HeartbeatTimeout));
    }

    #[test]
    fn a_close_request_sends_its_close_frame_and_ends_at_the_peers_reply() {
        let shared = shared(|config| config.drain_timeout = Duration::from_secs(5));
        let mut h = Harness::open(&shared);
        h.handle.request_close(CloseReason::Shutdown { retry_after_ms: 700 });
        assert_eq!(h.step_at(100), Ok(()));
        let reason = CloseReason::Shutdown { retry_after_ms: 700 };
        // A shutdown close waits for the stopper's drain deadline.
        assert_eq!(h.conn.state, State::Closing { reason, deadline: at(100 + 5000 + 1000) });
        let (code, text) = h.receive_close();
        assert_eq!(code, 1001);
        assert_eq!(text, reason.to_string());
        // The peer's tungstenite answers the close; the answer ends it.
        h.peer.flush().expect("close reply");
        h.wait_for_input();
        assert_eq!(h.step_at(200), Err(reason));
    }

    #[test]
    fn back_pressure_closes_1008_without_sending_the_backlog() {
        let shared = shared(|config| config.queue_capacity = 2);
        let mut h = Harness::open(&shared);
        let entry = Arc::new(Outbound::single(OutboundKind::Position, "{\"n\":1}"));
        assert_eq!(h.handle.offer(&entry, usize::MAX), Ok(false));
        assert_eq!(h.handle.offer(&entry, usize::MAX), Ok(false));
        assert_eq!(h.handle.offer(&entry, usize::MAX), Err(OfferError::Overflow));
        // What the broadcaster does on an overflow.
        h.handle.request_close(CloseReason::BackPressure);
        assert_eq!(h.step_at(0), Ok(()));
        let reason = CloseReason::BackPressure;
        assert_eq!(h.conn.state, State::Closing { reason, deadline: at(1000) });
        assert_eq!(h.receive_close().0, 1008, "the close comes first, the backlog never");
        // The peer never answers: the grace period ends it.
        assert_eq!(h.step_at(999), Ok(()));
        assert_eq!(h.conn.next_deadline(), at(1000));
        assert_eq!(h.step_at(1000), Err(reason));
    }

    #[test]
    fn an_inbound_flood_closes_1008_but_the_sustained_rate_does_not() {
        let shared = shared(|config| {
            config.max_inbound_per_sec = 5;
            config.ping_interval = Duration::from_secs(60);
        });
        let mut h = Harness::open(&shared);
        for second in 0..3 {
            h.send_together(vec![Message::text("x"); 5]);
            assert_eq!(h.step_at(second * 1000), Ok(()));
            assert_eq!(h.conn.state, State::Open, "5 a second at second {second}");
        }
        h.send(Message::text("one too many"));
        assert_eq!(h.step_at(2000), Ok(()));
        let reason = CloseReason::InboundFlood;
        assert_eq!(h.conn.state, State::Closing { reason, deadline: at(3000) });
        for _ in 0..15 {
            assert_eq!(h.receive(), Message::text("x"));
        }
        assert_eq!(h.receive_close().0, 1008, "the extra frame is not echoed");
    }

    #[test]
    fn a_too_big_frame_closes_1009_then_lingers_until_the_peer_hangs_up() {
        let shared = shared(|config| config.max_message_bytes = 100);
        let mut h = Harness::open(&shared);
        h.send(Message::text("x".repeat(101)));
        assert_eq!(h.step_at(10), Ok(()));
        let reason = CloseReason::MessageTooBig;
        assert_eq!(h.conn.state, State::Lingering { reason, deadline: at(1010) });
        assert_eq!(h.receive_close().0, 1009);
        // Our side is shut down after the close frame: the peer reads EOF.
        assert!(h.peer.read().is_err(), "nothing after the close frame");
        let Harness { mut conn, peer, .. } = h;
        drop(peer);
        // The rest of the big frame, then EOF, however the bytes arrive.
        let deadline = Instant::now() + PATIENCE;
        loop {
            wait_for_input(&conn);
            conn.readable = true;
            match conn.step() {
                Ok(()) => assert!(Instant::now() < deadline, "no EOF"),
                Err(ended) => {
                    assert_eq!(ended, reason);
                    break;
                }
            }
        }
    }

    #[test]
    fn revalidation_closes_4401_a_revoked_session_but_not_on_an_outage() {
        let answer = Arc::new(parking_lot::Mutex::new(Err(AuthError::Unavailable("down".into()))));
        let shared = shared_with(Box::new(Scripted(Arc::clone(&answer))), |config| {
            config.auth_mode = AuthMode::Tokens;
            config.auth_revalidate = Duration::from_secs(5);
            config.ping_interval = Duration::from_secs(60);
        });
        let mut h = Harness::open(&shared);
        assert_eq!(h.conn.next_deadline(), at(5000), "wakes for the revalidation");
        assert_eq!(h.step_at(5000), Ok(()));
        assert_eq!(h.conn.state, State::Open, "an outage closes nobody");
        assert_eq!(h.conn.next_deadline(), at(10_000), "asks again one period later");
        *answer.lock() = Err(AuthError::Denied);
        assert_eq!(h.step_at(9999), Ok(()));
        assert_eq!(h.conn.state, State::Open, "not asked before its time");
        assert_eq!(h.step_at(10_000), Ok(()));
        let reason = CloseReason::Revoked;
        assert_eq!(h.conn.state, State::Closing { reason, deadline: at(11_000) });
        assert_eq!(h.receive_close().0, 4401);
    }

    #[test]
    fn lingering_ends_at_its_deadline_if_the_peer_stays() {
        let shared = shared(|config| config.max_message_bytes = 100);
        let mut h = Harness::open(&shared);
        h.send(Message::text("x".repeat(101)));
        assert_eq!(h.step_at(0), Ok(()));
        assert_eq!(h.receive_close().0, 1009);
        assert_eq!(h.step_at(999), Ok(()), "the peer holds its end open");
        assert_eq!(h.step_at(1000), Err(CloseReason::MessageTooBig));
    }

    /// An authority that accepts every session and answers each event's
    /// authorization from a table, counting the questions.
    #[derive(Debug)]
    struct PerEvent(Arc<parking_lot::Mutex<Vec<String>>>);

    impl Authenticator for PerEvent {
        fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError> {
            Ok(Identity { user: "u".to_owned(), credentials: credentials.clone() })
        }

        fn authorize(&self, _who: &Identity, event: &str) -> Result<(), AuthzError> {
            self.0.lock().push(event.to_owned());
            match event {
                "gone" => Err(AuthzError::Forbidden),
                "down" => Err(AuthzError::Unavailable),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn revalidation_ends_forbidden_subscriptions_and_stops_at_an_unavailable_authority() {
        let asked = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let shared = shared_with(Box::new(PerEvent(Arc::clone(&asked))), |config| {
            config.auth_mode = AuthMode::Tokens;
            config.auth_revalidate = Duration::from_secs(5);
            config.ping_interval = Duration::from_secs(60);
        });
        let mut h = Harness::open(&shared);
        for event in ["kept", "gone", "down", "later"] {
            h.conn.subscriptions.push(event.to_owned());
            h.handle.subscriptions.lock().push(event.to_owned());
        }
        assert_eq!(h.step_at(5000), Ok(()));
        assert_eq!(h.conn.state, State::Open, "the session itself still validates");
        assert_eq!(*asked.lock(), ["kept", "gone", "down"], "nothing asked after the outage");
        assert_eq!(h.conn.subscriptions, ["kept", "down", "later"]);
        assert_eq!(*h.handle.subscriptions.lock(), ["kept", "down", "later"]);
    }
}
