//! Accepting connections, the same way on both ports (SPEC §2 step 1, §9).
//!
//! Runs on each port's accept thread (`acceptor` for WebSocket, `http` for
//! the ops port); [`Slot`]s then travel with their connection's thread.
//!
//! - [`Acceptor`]: the thread that blocks in `accept()`. It takes a
//!   [`Slot`] from the port's [`Admission`] *before* any thread exists, so a
//!   flood of sockets costs at most the configured number of threads. A
//!   socket that gets no slot is refused on the spot with a `503` that can
//!   neither block nor stall the accept thread ([`refuse`]). Stopping wakes
//!   the blocked `accept()` by connecting to our own address (tiny-http's
//!   trick), and falls back to shutting the listener down when that connect
//!   fails.
//! - [`Admission`]: the counts behind the limits: connections open, and per
//!   client IP (IPv6 by /64, [`crate::proxy::limit_key`]) those open and
//!   those still in their handshake. Peers in `LIVE_TRUSTED_PROXIES` are
//!   exempt at accept time; once a request head names the client behind
//!   them ([`Slot::forwarded_client`]), that client is counted instead.
//!   Refusals are counted by reason and logged at `warn` at most once a
//!   minute ([`WarnEvery`]).
//! - [`Slot`]: one connection's place in those counts, released on drop
//!   however its thread ends (tiny-http's `Registration`), so no count can
//!   drift. A port that must close its connections at stop (the ops port)
//!   also registers the socket with the slot ([`Slot::track`]).
//! - Idle eviction ([`Rules::evict_idle`], the ops port, SPEC §9
//!   "Crowds"): when the port is full, the tracked connection idle the
//!   longest (kept alive between requests, or silent since its accept) is
//!   shut down to make room, so that clients merely holding connections
//!   cannot keep probes and scrapes out. Its slot is released when its
//!   thread sees the end, an instant later; meanwhile it no longer counts
//!   against the cap.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use parking_lot::{Condvar, Mutex};
use prometheus::IntCounterVec;

use crate::proxy::{TrustedProxies, limit_key};
use crate::thread::spawn_named;

/// Pause after a failed `accept()`: on EMFILE the pending connection stays
/// in the backlog and `accept()` fails again at once, so without a pause
/// the accept thread would spin a CPU.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// How long `stop` tries to connect to its own address to wake `accept()`.
const WAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long `stop` waits for the accept thread to leave its loop once woken.
const JOIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Reads of a refused socket before and after the `503`, each of at most
/// [`REFUSE_READ_BYTES`]: enough to take in any request head already there
/// (so closing sends FIN, not an RST that could destroy the `503`), never
/// enough for a peer that keeps sending to hold the accept thread.
const REFUSE_READS: usize = 4;
/// Bytes asked of the kernel per read of a refused socket.
const REFUSE_READ_BYTES: usize = 4096;
/// How often a port logs its refusals at `warn` (SPEC §9: at most once a
/// minute); the refusals in between are counted and reported with the next.
const WARN_PERIOD: Duration = Duration::from_secs(60);

/// Why a connection was refused: the `reason` label of
/// `livecast_http_refused_total` and `livecast_ws_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub(crate) enum Refusal {
    /// The port's connection cap (`LIVE_WS_MAX_CONNECTIONS`, the ops port's
    /// 256) is reached.
    Capacity,
    /// The client IP holds its allowance of open connections
    /// (`HTTP_MAX_CONNECTIONS_PER_IP`, `LIVE_WS_MAX_CONNECTIONS_PER_IP`).
    PerIp,
    /// The client IP holds its allowance of connections in the WebSocket
    /// handshake (`LIVE_WS_MAX_PENDING_PER_IP`).
    Pending,
    /// A request head did not arrive in time (`HTTP_HEAD_TIMEOUT_MS`):
    /// counted by the request side through [`Admission::refused`].
    HeadTimeout,
}

impl Refusal {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Capacity => "capacity",
            Refusal::PerIp => "per-ip",
            Refusal::Pending => "pending",
            Refusal::HeadTimeout => "head-timeout",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Capacity => "connection limit reached",
            Refusal::PerIp => "per-IP connection limit reached",
            Refusal::Pending => "per-IP handshake limit reached",
            Refusal::HeadTimeout => "request head timed out",
        })
    }
}

/// The limits one port enforces at accept time.
#[derive(Debug, Clone, Default)]
pub(crate) struct Rules {
    /// Connections at once, handshaking ones included.
    pub(crate) max_connections: usize,
    /// Open connections per client IP; 0 means unlimited.
    pub(crate) max_per_ip: usize,
    /// Connections per client IP still in their handshake (until
    /// [`Slot::handshake_done`]); 0 means the port has no handshake limit.
    pub(crate) max_pending_per_ip: usize,
    /// Peers exempt from the per-IP limits, whose `X-Forwarded-For` names
    /// the client.
    pub(crate) trusted: TrustedProxies,
    /// When the port is full, close the longest-idle tracked connection to
    /// make room instead of refusing (ports that track their sockets).
    pub(crate) evict_idle: bool,
}

/// Counts of one client IP.
#[derive(Debug, Default, Clone, Copy)]
struct PerIp {
    open: usize,
    pending: usize,
}

/// A socket registered by [`Slot::track`], for the stop.
#[derive(Debug)]
struct Tracked {
    /// A clone of the connection's socket, to shut it down at stop and so
    /// wake its thread from a blocking read or write.
    stream: TcpStream,
    /// True while a request is being served; `stop` closes idle (not busy)
    /// connections without waiting.
    busy: bool,
    /// Since when the connection has been idle (its accept, or the end of
    /// its last response): the longest idle is evicted first.
    idle_since: Instant,
    /// Shut down to make room; its slot is still held until its thread
    /// ends, but no longer counts against the cap.
    evicted: bool,
}

/// Everything under [`Admission`]'s lock. Held only for map updates, never
/// across I/O (shutting a socket down does not block).
#[derive(Debug, Default)]
struct Counts {
    open: usize,
    /// Evicted connections whose slot is not released yet (counted in
    /// `open`, not against the cap).
    evicting: usize,
    next_id: u64,
    per_ip: HashMap<IpAddr, PerIp>,
    tracked: HashMap<u64, Tracked>,
    /// Set once by [`Admission::begin_stop`].
    stopping: bool,
}

/// The limits of one port and what counts against them.
///
/// Shared (in an `Arc`) by the accept thread, which takes slots, the
/// connection threads, whose slots give back on drop, and the stop, which
/// waits for the count to reach zero. Every method takes one short lock.
pub(crate) struct Admission {
    /// The port's name in logs (`websocket`, `http`).
    port: &'static str,
    rules: Rules,
    counts: Mutex<Counts>,
    /// Notified whenever a slot is released.
    released: Condvar,
    /// `livecast_*_refused_total{reason}`, when the port has one.
    refused: Option<IntCounterVec>,
    warn: WarnEvery,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("port", &self.port)
            .field("rules", &self.rules)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The admission of port `port` (for logs), counting refusals into
    /// `refused` (a counter vec labelled by `reason`) when given.
    pub(crate) fn new(
        port: &'static str,
        rules: Rules,
        refused: Option<IntCounterVec>,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            port,
            rules,
            counts: Mutex::new(Counts::default()),
            released: Condvar::new(),
            refused,
            warn: WarnEvery::new(WARN_PERIOD),
        })
    }

    /// Connections holding a slot (handshaking ones included).
    pub(crate) fn open(&self) -> usize {
        self.counts.lock().open
    }

    /// Takes a slot for a connection from `peer`, or says which limit
    /// refuses it. Called on the accept thread, before any thread exists.
    ///
    /// # Errors
    /// The [`Refusal`] of the first limit that is reached.
    pub(crate) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refusal> {
        let key = self.key_of(peer);
        let pending = self.rules.max_pending_per_ip > 0;
        let mut counts = self.counts.lock();
        if let Some(key) = key {
            self.check_ip(&counts, key, pending)?;
        }
        if counts.open.saturating_sub(counts.evicting) >= self.rules.max_connections
            && !(self.rules.evict_idle && evict_longest_idle(&mut counts, self.port))
        {
            return Err(Refusal::Capacity);
        }
        if let Some(key) = key {
            let entry = counts.per_ip.entry(key).or_default();
            entry.open += 1;
            entry.pending += usize::from(pending);
        }
        counts.open += 1;
        let id = counts.next_id;
        counts.next_id = counts.next_id.wrapping_add(1);
        drop(counts);
        Ok(Slot { admission: Arc::clone(self), id, peer, key, pending })
    }

    /// Counts a refusal and logs it at `warn`, at most once a minute per
    /// port, with the number of refusals the quiet minute held. For the
    /// request side's own refusals (e.g. [`Refusal::HeadTimeout`]) too.
    pub(crate) fn refused(&self, why: Refusal, client: IpAddr) {
        if let Some(counter) = &self.refused {
            counter.with_label_values(&[why.label()]).inc();
        }
        debug!("{}: {client} refused: {why}", self.port);
        if let Some(more) = self.warn.check(Instant::now()) {
            warn!(
                "{}: refusing connections: {why} (e.g. {client}); {more} more refusals since \
                 the last report",
                self.port
            );
        }
    }

    /// Marks the port stopping and shuts down every tracked connection that
    /// is idle (not serving a request): their threads see the end at once.
    pub(crate) fn begin_stop(&self) {
        let mut counts = self.counts.lock();
        counts.stopping = true;
        for tracked in counts.tracked.values().filter(|t| !t.busy) {
            let _ = tracked.stream.shutdown(Shutdown::Both);
        }
    }

    /// Shuts down every tracked connection, busy or not.
    pub(crate) fn shut_all(&self) {
        for tracked in self.counts.lock().tracked.values() {
            let _ = tracked.stream.shutdown(Shutdown::Both);
        }
    }

    /// Blocks until no slot is held or `deadline` passes; true when none is.
    pub(crate) fn wait_empty(&self, deadline: Instant) -> bool {
        let mut counts = self.counts.lock();
        self.released.wait_while_until(&mut counts, |c| c.open > 0, deadline);
        counts.open == 0
    }

    /// Ids of the tracked connections still open.
    pub(crate) fn tracked_ids(&self) -> Vec<u64> {
        self.counts.lock().tracked.keys().copied().collect()
    }

    /// The per-IP key of a peer: `None` for a trusted proxy (exempt).
    fn key_of(&self, ip: IpAddr) -> Option<IpAddr> {
        (!self.rules.trusted.is_trusted(ip)).then(|| limit_key(ip))
    }

    /// Whether `key` may hold one more connection (and one more handshake
    /// when `pending`).
    fn check_ip(&self, counts: &Counts, key: IpAddr, pending: bool) -> Result<(), Refusal> {
        let now = counts.per_ip.get(&key).copied().unwrap_or_default();
        if self.rules.max_per_ip > 0 && now.open >= self.rules.max_per_ip {
            return Err(Refusal::PerIp);
        }
        if pending
            && self.rules.max_pending_per_ip > 0
            && now.pending >= self.rules.max_pending_per_ip
        {
            return Err(Refusal::Pending);
        }
        Ok(())
    }
}

/// Shuts down the tracked connection idle the longest (not serving a
/// request, not already evicted) and counts it as leaving; false when every
/// tracked connection is busy.
fn evict_longest_idle(counts: &mut Counts, port: &str) -> bool {
    let oldest =
        counts.tracked.values_mut().filter(|t| !t.busy && !t.evicted).min_by_key(|t| t.idle_since);
    let Some(tracked) = oldest else { return false };
    tracked.evicted = true;
    let _ = tracked.stream.shutdown(Shutdown::Both);
    debug!(
        "{port}: full: closed a connection idle for {:?} to make room",
        tracked.idle_since.elapsed()
    );
    counts.evicting += 1;
    true
}

/// Gives back `open` (and `pending`) of `key`, dropping empty entries so the
/// map holds only addresses with connections.
fn release_ip(counts: &mut Counts, key: IpAddr, pending: bool) {
    if let Some(entry) = counts.per_ip.get_mut(&key) {
        entry.open = entry.open.saturating_sub(1);
        if pending {
            entry.pending = entry.pending.saturating_sub(1);
        }
        if entry.open == 0 {
            counts.per_ip.remove(&key);
        }
    }
}

/// One connection's place in its port's limits (see [`Admission`]).
///
/// Taken by the accept thread, moved into the connection's thread, released
/// when dropped on any path.
pub(crate) struct Slot {
    admission: Arc<Admission>,
    /// Unique per port; names the tracked socket.
    id: u64,
    /// The TCP peer.
    peer: IpAddr,
    /// Whom the connection counts against: `None` while exempt (a trusted
    /// proxy speaking for no untrusted client).
    key: Option<IpAddr>,
    /// Still in the handshake (counted against `max_pending_per_ip`).
    pending: bool,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("port", &self.admission.port)
            .field("id", &self.id)
            .field("key", &self.key)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Slot {
    /// The slot's id, unique on its port.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// The port's admission (to count a refusal of the request side).
    pub(crate) fn admission(&self) -> &Admission {
        &self.admission
    }

    /// The handshake is over (101 sent): the connection no longer counts
    /// against `max_pending_per_ip`.
    pub(crate) fn handshake_done(&mut self) {
        if std::mem::replace(&mut self.pending, false)
            && let Some(key) = self.key
        {
            let mut counts = self.admission.counts.lock();
            if let Some(entry) = counts.per_ip.get_mut(&key) {
                entry.pending = entry.pending.saturating_sub(1);
            }
        }
    }

    /// The client this connection speaks for, given the `X-Forwarded-For`
    /// values of a request head: the peer itself unless the peer is a
    /// trusted proxy, else the right-most untrusted forwarded address
    /// ([`TrustedProxies::client_ip`]). From then on the connection counts
    /// against that client's per-IP limits (a trusted proxy's kept-alive
    /// connection may carry several clients in turn: it moves to each).
    ///
    /// # Errors
    /// The forwarded client already holds its allowance; the slot still
    /// counts as before, and the caller refuses the request (`503`).
    pub(crate) fn forwarded_client<'a>(
        &mut self,
        forwarded_for: impl IntoIterator<Item = &'a str>,
    ) -> Result<IpAddr, Refusal> {
        let trusted = &self.admission.rules.trusted;
        if !trusted.is_trusted(self.peer) {
            return Ok(self.peer);
        }
        let client = trusted.client_ip(self.peer, forwarded_for);
        let key = self.admission.key_of(client);
        if key == self.key {
            return Ok(client);
        }
        let mut counts = self.admission.counts.lock();
        if let Some(key) = key {
            self.admission.check_ip(&counts, key, self.pending)?;
            let entry = counts.per_ip.entry(key).or_default();
            entry.open += 1;
            entry.pending += usize::from(self.pending);
        }
        if let Some(old) = self.key {
            release_ip(&mut counts, old, self.pending);
        }
        drop(counts);
        self.key = key;
        Ok(client)
    }

    /// Registers a clone of the connection's socket so that the port's stop
    /// can shut it down ([`Admission::begin_stop`], [`Admission::shut_all`]).
    pub(crate) fn track(&self, stream: TcpStream) {
        let tracked = Tracked { stream, busy: false, idle_since: Instant::now(), evicted: false };
        self.admission.counts.lock().tracked.insert(self.id, tracked);
    }

    /// Marks the connection idle, between requests. False when the port is
    /// stopping: the connection must then close instead of waiting.
    pub(crate) fn enter_idle(&self) -> bool {
        let mut counts = self.admission.counts.lock();
        if counts.stopping {
            return false;
        }
        if let Some(tracked) = counts.tracked.get_mut(&self.id) {
            tracked.busy = false;
            tracked.idle_since = Instant::now();
        }
        true
    }

    /// Marks the connection busy: a request has started to arrive.
    pub(crate) fn enter_busy(&self) {
        if let Some(tracked) = self.admission.counts.lock().tracked.get_mut(&self.id) {
            tracked.busy = true;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts.lock();
        if let Some(key) = self.key {
            release_ip(&mut counts, key, self.pending);
        }
        if counts.tracked.remove(&self.id).is_some_and(|t| t.evicted) {
            counts.evicting = counts.evicting.saturating_sub(1);
        }
        counts.open = counts.open.saturating_sub(1);
        drop(counts);
        self.admission.released.notify_all();
    }
}

/// What a port does with the sockets its [`Acceptor`] admits or refuses.
/// Called on the accept thread: nothing here may block on a peer.
pub(crate) trait Port: Send + 'static {
    /// The complete `503` response written to a refused socket.
    fn refusal(&self, why: Refusal) -> Vec<u8>;

    /// Hands an admitted socket to its own thread (spawned here). A spawn
    /// failure drops the socket and the slot with it.
    fn serve(&mut self, stream: TcpStream, remote: SocketAddr, slot: Slot);
}

/// A running accept thread (see the module doc).
#[derive(Debug)]
pub(crate) struct Acceptor {
    /// The thread's name, for logs.
    name: &'static str,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// A clone of the listening socket: shut down to wake `accept()` when
    /// connecting to ourselves fails; dropped by `stop` to free the port.
    listener: Option<TcpListener>,
}

impl Acceptor {
    /// Starts the accept thread `name` on an already bound listener.
    ///
    /// # Errors
    /// Reading the listener's address, cloning it or spawning fails.
    pub(crate) fn start(
        name: &'static str,
        listener: TcpListener,
        admission: Arc<Admission>,
        port: impl Port,
    ) -> io::Result<Acceptor> {
        let addr = listener.local_addr()?;
        // The design is blocking I/O: undo a non-blocking listener.
        listener.set_nonblocking(false)?;
        let wake = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = spawn_named(name.to_owned(), None, move || {
            accept_loop(&listener, &admission, port, &flag);
        })?;
        Ok(Acceptor { name, addr, stop, thread: Some(thread), listener: Some(wake) })
    }

    /// The address the listener is bound to (the real port when bound to 0).
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and joins the thread; the port is free on return.
    /// Idempotent.
    ///
    /// Sets the flag, then wakes the blocking `accept()` by connecting to our
    /// own address; when that fails (a firewall, no route to a wildcard
    /// address), shuts the listener down, which on Linux makes `accept()`
    /// return an error. A thread that still does not stop within
    /// [`JOIN_TIMEOUT`] is logged and left behind rather than block the stop.
    pub(crate) fn stop(&mut self) {
        let Some(thread) = self.thread.take() else { return };
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                Ipv4Addr::LOCALHOST.into()
            } else {
                Ipv6Addr::LOCALHOST.into()
            });
        }
        if let Err(e) = TcpStream::connect_timeout(&wake, WAKE_TIMEOUT) {
            debug!("{}: cannot connect to {wake} to wake accept ({e}); shutting it", self.name);
            self.shut_listener();
        }
        let deadline = Instant::now() + JOIN_TIMEOUT;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if thread.is_finished() {
            let _ = thread.join();
        } else {
            // Last resort, in case the wake-up connection was taken by
            // something else: the thread ends at its next accept.
            self.shut_listener();
            warn!("{}: accept thread did not stop; leaving it", self.name);
        }
        self.listener = None;
    }

    fn shut_listener(&self) {
        if let Some(listener) = &self.listener
            && let Err(e) = rustix::net::shutdown(listener, rustix::net::Shutdown::Read)
        {
            warn!("{}: cannot wake the accept thread: {e}", self.name);
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The accept thread: accepts until the stop flag is set.
fn accept_loop(
    listener: &TcpListener,
    admission: &Arc<Admission>,
    mut port: impl Port,
    stop: &AtomicBool,
) {
    let name = admission.port;
    info!("{name}: listening on {}", listener.local_addr().map_or("?".into(), |a| a.to_string()));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            // The peer gave up before we accepted, or a signal: not our fault.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionAborted | io::ErrorKind::Interrupted
                ) =>
            {
                debug!("{name}: accept: {e}");
                continue;
            }
            Err(e) => {
                warn!("{name}: accept failed: {e}; retrying in {ACCEPT_ERROR_PAUSE:?}");
                std::thread::sleep(ACCEPT_ERROR_PAUSE);
                continue;
            }
        };
        if let Err(e) = stream.set_nodelay(true) {
            debug!("{name}: {remote}: set_nodelay: {e}");
        }
        match admission.admit(remote.ip()) {
            Ok(slot) => port.serve(stream, remote, slot),
            Err(why) => {
                admission.refused(why, remote.ip());
                refuse(&stream, &port.refusal(why));
            }
        }
    }
    info!("{name}: accept loop stopped");
}

/// Writes `response` to a refused socket and closes it, without ever
/// blocking: the socket is made non-blocking, and it is read at most
/// [`REFUSE_READS`] times before and after the write (what the client
/// already sent must be read first: closing a socket with unread input
/// makes the kernel send a reset, which can destroy the `503` before the
/// client reads it). A response this small fits in any fresh socket's send
/// buffer; if it does not, the peer gets a close instead. Best effort.
pub(crate) fn refuse(stream: &TcpStream, response: &[u8]) {
    let mut stream = stream;
    if let Err(e) = stream.set_nonblocking(true) {
        warn!("cannot make a refused socket non-blocking: {e}");
        return;
    }
    drain_bounded(&mut stream);
    let _ = stream.write_all(response);
    let _ = stream.shutdown(Shutdown::Write);
    drain_bounded(&mut stream);
}

/// Reads and discards at most [`REFUSE_READS`] × [`REFUSE_READ_BYTES`] bytes
/// from a non-blocking socket; stops at the first empty, failed or
/// would-block read.
fn drain_bounded(stream: &mut impl Read) {
    let mut scratch = [0u8; REFUSE_READ_BYTES];
    for _ in 0..REFUSE_READS {
        if !matches!(stream.read(&mut scratch), Ok(n) if n > 0) {
            break;
        }
    }
}

/// A rate limit for one log line: lets one through per period, and counts
/// those held back so the next one can say how many there were.
#[derive(Debug)]
pub(crate) struct WarnEvery {
    period: Duration,
    /// When the last line went out; `None` before the first.
    last: Mutex<Option<Instant>>,
    /// Lines held back since the last one that went out.
    held: AtomicU64,
}

impl WarnEvery {
    /// At most one line per `period`.
    pub(crate) fn new(period: Duration) -> WarnEvery {
        WarnEvery { period, last: Mutex::new(None), held: AtomicU64::new(0) }
    }

    /// Whether a line may go out at `now`: `Some(n)` with the number of
    /// lines held back since the last one, or `None` (counted as held).
    pub(crate) fn check(&self, now: Instant) -> Option<u64> {
        let mut last = self.last.lock();
        match *last {
            Some(at) if now.saturating_duration_since(at) < self.period => {
                self.held.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.held.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn admission(rules: Rules) -> Arc<Admission> {
        Admission::new("test", rules, None)
    }

    #[test]
    fn warn_every_lets_one_line_through_per_period_and_counts_the_rest() {
        let w = WarnEvery::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(w.check(t0), Some(0));
        assert_eq!(w.check(t0 + Duration::from_secs(1)), None);
        assert_eq!(w.check(t0 + Duration::from_secs(59)), None);
        assert_eq!(w.check(t0 + Duration::from_secs(60)), Some(2));
        assert_eq!(w.check(t0 + Duration::from_secs(61)), None);
        assert_eq!(w.check(t0 + Duration::from_secs(200)), Some(1));
        // A clock that goes back (another thread's older `now`) holds.
        assert_eq!(w.check(t0), None);
    }

    #[test]
    fn capacity_then_per_ip_then_release_on_drop() {
        let a = admission(Rules { max_connections: 3, max_per_ip: 2, ..Rules::default() });
        let one = a.admit(ip("10.0.0.1")).unwrap();
        let two = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::PerIp);
        let three = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Capacity);
        assert_eq!(a.open(), 3);
        drop(one);
        assert_eq!(a.open(), 2);
        let again = a.admit(ip("10.0.0.1")).unwrap();
        drop((two, three, again));
        assert_eq!(a.open(), 0);
        assert!(a.counts.lock().per_ip.is_empty(), "no entry outlives its connections");
        assert!(a.wait_empty(Instant::now()));
    }

    #[test]
    fn ipv6_counts_by_64() {
        let a = admission(Rules { max_connections: 10, max_per_ip: 1, ..Rules::default() });
        let _one = a.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(a.admit(ip("2001:db8:1:2::ffff")).unwrap_err(), Refusal::PerIp);
        let _other = a.admit(ip("2001:db8:1:3::1")).unwrap();
    }

    #[test]
    fn pending_counts_until_the_handshake_is_done() {
        let a = admission(Rules { max_connections: 10, max_pending_per_ip: 2, ..Rules::default() });
        let mut one = a.admit(ip("10.0.0.1")).unwrap();
        let _two = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Pending);
        let _elsewhere = a.admit(ip("10.0.0.2")).unwrap();
        one.handshake_done();
        one.handshake_done(); // idempotent
        let _three = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Pending);
        drop(one); // open, not pending: frees no handshake place
        assert_eq!(a.admit(ip("10.0.0.1")).unwrap_err(), Refusal::Pending);
    }

    #[test]
    fn trusted_peers_are_exempt_until_a_head_names_the_client() {
        let trusted = TrustedProxies::parse("127.0.0.1").unwrap();
        let a =
            admission(Rules { max_connections: 10, max_per_ip: 1, trusted, ..Rules::default() });
        let mut p1 = a.admit(ip("127.0.0.1")).unwrap();
        let mut p2 = a.admit(ip("127.0.0.1")).unwrap();
        let mut p3 = a.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(p1.forwarded_client(["203.0.113.7"]).unwrap(), ip("203.0.113.7"));
        assert_eq!(p2.forwarded_client(["203.0.113.7"]).unwrap_err(), Refusal::PerIp);
        assert_eq!(p2.forwarded_client(["203.0.113.8"]).unwrap(), ip("203.0.113.8"));
        // No forwarded client: the proxy itself, exempt.
        assert_eq!(p3.forwarded_client([]).unwrap(), ip("127.0.0.1"));
        // A kept-alive proxy connection moves to its next client.
        assert_eq!(p1.forwarded_client(["198.51.100.1"]).unwrap(), ip("198.51.100.1"));
        let mut p4 = a.admit(ip("127.0.0.1")).unwrap();
        assert_eq!(p4.forwarded_client(["203.0.113.7"]).unwrap(), ip("203.0.113.7"));
        // An untrusted peer's header is ignored.
        let mut direct = a.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(direct.forwarded_client(["203.0.113.9"]).unwrap(), ip("192.0.2.1"));
        drop((p1, p2, p3, p4, direct));
        assert!(a.counts.lock().per_ip.is_empty());
    }

    #[test]
    fn a_full_port_evicts_its_longest_idle_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let a = admission(Rules { max_connections: 2, evict_idle: true, ..Rules::default() });
        let mut peers = Vec::new();
        let mut slot = || {
            let client = TcpStream::connect(addr).unwrap();
            let (server_side, _) = listener.accept().unwrap();
            let slot = a.admit(ip("10.0.0.1")).unwrap();
            slot.track(server_side.try_clone().unwrap());
            peers.push((client, server_side));
            slot
        };
        let older = slot();
        std::thread::sleep(Duration::from_millis(5));
        let busy = slot();
        busy.enter_busy();
        std::thread::sleep(Duration::from_millis(5));
        // Full: the idle one goes, the busy one stays.
        let third = a.admit(ip("10.0.0.2")).expect("room made");
        let (older_client, _) = &mut peers[0];
        older_client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert_eq!(older_client.read(&mut [0u8; 8]).unwrap(), 0, "evicted: EOF");
        assert_eq!(a.open(), 3, "the evicted slot is held until its thread ends");
        // Nothing idle left to evict (the new slot tracks no socket).
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Capacity);
        drop(older);
        assert_eq!(a.admit(ip("10.0.0.3")).unwrap_err(), Refusal::Capacity);
        drop((busy, third));
        assert_eq!(a.counts.lock().evicting, 0);
        assert_eq!(a.open(), 0);
    }

    /// A peer that always has more to send, counting the reads it serves.
    struct Endless {
        reads: usize,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.reads += 1;
            // A safety stop, so that an unbounded drain fails the test
            // instead of hanging it.
            if self.reads > 10_000 {
                return Ok(0);
            }
            buf.fill(b'x');
            Ok(buf.len())
        }
    }

    #[test]
    fn the_refusal_drain_is_bounded_against_a_peer_that_keeps_sending() {
        let mut peer = Endless { reads: 0 };
        drain_bounded(&mut peer);
        assert_eq!(peer.reads, REFUSE_READS);
    }

    #[test]
    fn refuse_answers_without_blocking_a_peer_that_sent_a_request() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        client.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let (server_side, _) = listener.accept().unwrap();
        let started = Instant::now();
        refuse(&server_side, b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        assert!(started.elapsed() < Duration::from_millis(500), "{:?}", started.elapsed());
        drop(server_side);
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = String::new();
        client.read_to_string(&mut got).unwrap();
        assert_eq!(got, "HTTP/1.1 503 Service Unavailable\r\n\r\n");
    }

    /// A port that answers every admitted socket with one line, for the
    /// acceptor's tests.
    struct Hello;

    impl Port for Hello {
        fn refusal(&self, _why: Refusal) -> Vec<u8> {
            b"503\n".to_vec()
        }
        fn serve(&mut self, mut stream: TcpStream, _remote: SocketAddr, slot: Slot) {
            let _ = stream.write_all(b"hello\n");
            drop(slot);
        }
    }

    #[test]
    fn acceptor_serves_refuses_and_stops_promptly() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = admission(Rules { max_connections: 1, ..Rules::default() });
        let held = a.admit(ip("10.9.9.9")).unwrap();
        let mut acceptor = Acceptor::start("test-acc", listener, Arc::clone(&a), Hello).unwrap();
        let addr = acceptor.local_addr();
        let read = |addr| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            out
        };
        assert_eq!(read(addr), "503\n");
        drop(held);
        assert_eq!(read(addr), "hello\n");
        let started = Instant::now();
        acceptor.stop();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(TcpStream::connect(addr).is_err(), "still listening after stop");
        acceptor.stop(); // idempotent
    }

    #[test]
    fn acceptor_stop_falls_back_to_shutting_the_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = admission(Rules { max_connections: 1, ..Rules::default() });
        let mut acceptor = Acceptor::start("test-acc2", listener, a, Hello).unwrap();
        // An address nobody listens on: the wake-up connect fails.
        let unused = TcpListener::bind("127.0.0.1:0").unwrap();
        acceptor.addr = unused.local_addr().unwrap();
        drop(unused);
        let started = Instant::now();
        acceptor.stop();
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
        assert!(acceptor.thread.is_none());
    }
}
