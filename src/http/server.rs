//! A small blocking HTTP/1.1 server on `std::net` and `httparse`, for the ops
//! port (SPEC §1, §7: metrics, health, ingest, debug, dashboard).
//!
//! Threads:
//! - `http`, the accept thread ([`crate::accept::Acceptor`], shared with the
//!   WebSocket port), blocks in `accept()`. It enforces
//!   [`Limits::max_connections`] and [`Limits::max_connections_per_ip`]
//!   itself: past them it writes a `503` without blocking and closes, so a
//!   flood never costs a thread. Otherwise it spawns the connection's
//!   thread, whose [`Slot`] registers the socket for the stop.
//! - `http-<n>`, one per connection, reads requests one at a time, runs the
//!   [`Handler`] on each and writes the response, with keep-alive. The handler
//!   therefore runs on this thread, and a slow handler only holds up its own
//!   client.
//! - [`HttpServer::stop`] runs on the caller's thread. It stops the accept
//!   thread, gives in-flight requests until the deadline, then shuts the
//!   remaining sockets down and joins the threads.
//!
//! Every blocking read carries a deadline: a request head or body must arrive
//! within [`Limits::read_timeout`], and a keep-alive connection may stay quiet
//! for [`Limits::idle_timeout`]. Before each read the socket timeout is set to
//! the time *left*, so a peer trickling one byte at a time (slowloris) is cut
//! at the deadline instead of resetting it with every byte.
//!
//! [`read_head`], [`write_response`] and [`RequestHead`] are shared with the
//! WebSocket port's handshake, which runs them on its own connection threads.
//!
//! Logging is `debug!` per connection and `warn!` when something misbehaves.
//! Header values and query strings are never logged, and the `Debug` impls of
//! [`Request`] and [`RequestHead`] hide them too: they may carry tokens.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, warn};
use parking_lot::Mutex;
use prometheus::IntCounterVec;

use crate::accept::{Acceptor, Admission, Port, Refusal, Rules, Slot};
use crate::proxy::TrustedProxies;
use crate::thread::spawn_named;

/// Most header lines accepted in one request head. More are answered like an
/// oversized head (`431`).
const MAX_HEADERS: usize = 100;
/// Bytes asked of the kernel per `read` call.
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line (size plus extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Body bytes allocated up front, whatever the declared length: a peer that
/// declares 8 MiB and sends nothing must not make us reserve 8 MiB.
const BODY_PREALLOC: usize = 64 * 1024;
/// How long a closing connection keeps reading (and discarding) what the peer
/// still sends after our last response. Closing a socket with unread input
/// makes the kernel send RST, which can destroy the response we just wrote
/// before the peer reads it (nginx's "lingering close").
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
/// Most bytes discarded during a lingering close.
const LINGER_MAX_BYTES: usize = 1024 * 1024;
/// After the deadline, how long `stop` waits for threads whose sockets it shut
/// down before it gives up on them (a handler stuck outside I/O).
const STRAGGLER_GRACE: Duration = Duration::from_secs(1);
/// The interim response that lets a client send a body it held back.
const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One complete request, as the [`Handler`] sees it.
pub(crate) struct Request {
    /// The method, as sent (`GET`, `POST`, ...). `HEAD` requests reach the
    /// handler as `HEAD`; the server drops the body from the response.
    pub(crate) method: String,
    /// The request target before `?`, percent-decoding NOT applied.
    pub(crate) path: String,
    /// The raw query string after `?`, if any (see [`Request::query_param`]).
    pub(crate) query: Option<String>,
    /// Header fields in arrival order, names as sent, values trimmed.
    pub(crate) headers: Vec<(String, String)>,
    /// The body, chunked encoding already removed.
    pub(crate) body: Vec<u8>,
    /// The peer's address.
    pub(crate) remote: SocketAddr,
}

impl Request {
    /// The first header named `name` (ASCII case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

impl fmt::Debug for Request {
    /// Header values and the query string are left out: they may hold tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query.as_ref().map(|_| "<redacted>"))
            .field("headers", &HeaderNames(&self.headers))
            .field("body_len", &self.body.len())
            .field("remote", &self.remote)
            .finish()
    }
}

/// A response, built by the [`Handler`].
///
/// `Content-Length`, `Transfer-Encoding` and `Connection` are the server's to
/// write and are ignored here, except that `Connection: close` from the
/// handler closes the connection after the response.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Response {
    /// The status code; the reason phrase is the standard one.
    pub(crate) status: u16,
    /// Header fields, written in order.
    pub(crate) headers: Vec<(String, String)>,
    /// The body; not sent for `HEAD` requests, `1xx`, `204` and `304`.
    pub(crate) body: Vec<u8>,
}

impl Response {
    /// An empty response with `status`.
    pub(crate) fn new(status: u16) -> Self {
        Response { status, headers: Vec::new(), body: Vec::new() }
    }

    /// A `text/plain; charset=utf-8` response.
    pub(crate) fn text(status: u16, body: impl Into<String>) -> Self {
        Response::new(status).with_body("text/plain; charset=utf-8", body.into().into_bytes())
    }

    /// An `application/json` response.
    pub(crate) fn json(status: u16, body: &serde_json::Value) -> Self {
        match serde_json::to_vec(body) {
            Ok(bytes) => Response::new(status).with_body("application/json", bytes),
            // A `Value` always serialises (its map keys are strings), so this
            // is a formality; a 500 beats a panic if it ever happens.
            Err(e) => Response::text(500, format!("cannot encode json: {e}\n")),
        }
    }

    /// Adds a header field (duplicates allowed, e.g. for `Set-Cookie`).
    pub(crate) fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets the body and its `Content-Type`, replacing any earlier one.
    pub(crate) fn with_body(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers.retain(|(name, _)| !name.eq_ignore_ascii_case("content-type"));
        self.headers.push(("Content-Type".to_owned(), content_type.to_owned()));
        self.body = body;
        self
    }
}

impl fmt::Debug for Response {
    /// The body is summarised by its length: it can be megabytes of metrics.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &HeaderNames(&self.headers))
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// The application side of the server: turns a request into a response.
///
/// Called on the connection's own `http-<n>` thread, one request at a time per
/// connection but concurrently across connections, hence `Sync`. It may
/// block; only its own client waits. A panic is caught and answered with `500`
/// (and the connection closed), so a bug in one endpoint cannot take the ops
/// port down.
pub(crate) trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(&self, req: Request) -> Response;

    /// Looks at a request head before its body is read, and before any
    /// `100 Continue`: `Some` answers the request with that response at
    /// once (credentials, content type: SPEC §4, §9), and its body is never
    /// read; the connection is then closed unless the request declared no
    /// body. `None` (the default) goes on to read the body and call
    /// [`Handler::handle`]. Same thread and panic rules as `handle`.
    fn check_head(&self, _head: &RequestHead, _remote: SocketAddr) -> Option<Response> {
        None
    }
}

/// Any `Fn(Request) -> Response` is a handler (as tungstenite's `Callback`).
impl<F> Handler for F
where
    F: Fn(Request) -> Response + Send + Sync + 'static,
{
    fn handle(&self, req: Request) -> Response {
        self(req)
    }
}

/// Resource limits of one [`HttpServer`]. Every field bounds what one peer
/// can cost us.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// Largest request body, declared or chunked; more gets `413` and the
    /// connection closed before the body is read. Default 8 MiB (SPEC §4
    /// `INGEST_MAX_BODY_BYTES`).
    pub(crate) max_body_bytes: usize,
    /// Largest request head (request line plus headers, and the trailer
    /// section of a chunked body); more gets `431`. Default 16 KiB, which
    /// fits any browser's cookies.
    pub(crate) max_head_bytes: usize,
    /// Most connections served at once, i.e. connection threads. More are
    /// answered `503` with `Retry-After: 1` by the accept thread. Default 256:
    /// the ops port serves scrapers and operators, not the dashboards.
    pub(crate) max_connections: usize,
    /// Most connections per client IP (IPv6 by /64), past it `503`; 0 means
    /// unlimited. Default 32 (SPEC §9 `HTTP_MAX_CONNECTIONS_PER_IP`), so one
    /// address cannot lock the scrapers and probes out.
    pub(crate) max_connections_per_ip: usize,
    /// Peers exempt from the per-IP limit; for them the client of each
    /// request is the one its `X-Forwarded-For` names, and that client is
    /// held to the limit (SPEC §9 `LIVE_TRUSTED_PROXIES`). Default none.
    pub(crate) trusted_proxies: TrustedProxies,
    /// Time allowed for a request body, counted from the end of its head;
    /// also the per-`write` timeout of responses. Default 10 s; raise it for
    /// large ingest bodies on slow links. Must not be zero.
    pub(crate) read_timeout: Duration,
    /// Time allowed for a whole request head (SPEC §9 `HTTP_HEAD_TIMEOUT_MS`),
    /// counted from the connection's accept for the first request and from
    /// the end of the previous response for the next one on a keep-alive
    /// connection, so the wait between requests counts too. A connection
    /// that sent nothing by then is closed silently (the normal end of a
    /// keep-alive connection); one that sent part of a head gets `408`.
    /// Default 10 s. Must not be zero.
    pub(crate) head_timeout: Duration,
    /// How long a keep-alive connection may sit between requests before it is
    /// closed, when shorter than `head_timeout`. Default 30 s. Must not be
    /// zero.
    pub(crate) idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 8 * 1024 * 1024,
            max_head_bytes: 16 * 1024,
            max_connections: 256,
            max_connections_per_ip: 32,
            trusted_proxies: TrustedProxies::default(),
            read_timeout: Duration::from_secs(10),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// A running server: the `http` accept thread and its connection threads.
///
/// Dropping it stops it at once (as `stop(Instant::now())`).
pub(crate) struct HttpServer {
    /// The address the listener is bound to (the real port when bound to 0).
    local_addr: SocketAddr,
    /// State shared with the accept and connection threads.
    shared: Arc<Shared>,
    /// The `http` accept thread.
    acceptor: Acceptor,
    /// False once stopped.
    running: bool,
}

impl fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpServer")
            .field("local_addr", &self.local_addr)
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Starts serving on `listener`, which is already bound (its port may
    /// have been 0: see [`HttpServer::local_addr`]).
    ///
    /// Spawns the `http` accept thread and returns at once. Refused
    /// connections are counted in `refused` (labelled by `reason`) when
    /// given.
    ///
    /// # Errors
    ///
    /// Reading the listener's address or cloning it fails, the thread cannot
    /// be spawned, or a timeout in `limits` is zero (`InvalidInput`).
    pub(crate) fn start(
        listener: TcpListener,
        limits: Limits,
        handler: Arc<dyn Handler>,
        refused: Option<IntCounterVec>,
    ) -> io::Result<HttpServer> {
        if limits.read_timeout.is_zero()
            || limits.idle_timeout.is_zero()
            || limits.head_timeout.is_zero()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "http limits: read_timeout, head_timeout and idle_timeout must be positive",
            ));
        }
        let rules = Rules {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            max_pending_per_ip: 0,
            trusted: limits.trusted_proxies.clone(),
        };
        let admission = Admission::new("http", rules, refused);
        let shared = Arc::new(Shared {
            limits,
            handler,
            stopping: AtomicBool::new(false),
            admission: Arc::clone(&admission),
            threads: Mutex::new(HashMap::new()),
        });
        let port = HttpPort { shared: Arc::clone(&shared), counter: 0 };
        let acceptor = Acceptor::start("http", listener, admission, port)?;
        let local_addr = acceptor.local_addr();
        Ok(HttpServer { local_addr, shared, acceptor, running: true })
    }

    /// The address the server listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server; blocks until done, about `deadline` at the latest
    /// (plus [`STRAGGLER_GRACE`] when a handler ignores its closed socket).
    ///
    /// In order: stop accepting and wake the blocking `accept()` by
    /// connecting to our own address; close idle keep-alive connections at
    /// once; let requests in flight finish (answered with `Connection:
    /// close`) until `deadline`; shut down the sockets still open; join the
    /// threads. A thread still busy after the grace (stuck in its handler) is
    /// logged by name and left detached rather than blocking shutdown.
    ///
    /// Calling it again, or dropping the server afterwards, does nothing.
    pub(crate) fn stop(&mut self, deadline: Instant) {
        if !std::mem::replace(&mut self.running, false) {
            return;
        }
        let admission = &self.shared.admission;
        // Under the admission's lock, so that a connection thread either sees
        // the flag before it waits for a new request, or is swept here.
        self.shared.stopping.store(true, Ordering::SeqCst);
        admission.begin_stop();
        // Also frees the port before we return.
        self.acceptor.stop();

        admission.wait_empty(deadline);
        admission.shut_all();
        admission.wait_empty(Instant::now() + STRAGGLER_GRACE);
        let threads = std::mem::take(&mut *self.shared.threads.lock());
        let stuck = admission.tracked_ids();

        for (id, handle) in threads {
            let name = handle.thread().name().unwrap_or("http-?").to_owned();
            if stuck.contains(&id) {
                warn!("http: thread {name} still busy after stop; leaving it");
            } else if handle.join().is_err() {
                warn!("http: thread {name} panicked");
            }
        }
        debug!("http: stopped");
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop(Instant::now());
    }
}

/// One request head: what [`read_head`] parsed.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RequestHead {
    /// The method, as sent.
    pub(crate) method: String,
    /// The request target before `?`, percent-decoding NOT applied.
    pub(crate) path: String,
    /// The raw query string after `?`, if any.
    pub(crate) query: Option<String>,
    /// The minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) version: u8,
    /// Header fields in arrival order, names as sent, values trimmed.
    pub(crate) headers: Vec<(String, String)>,
}

impl RequestHead {
    /// The first header named `name` (ASCII case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// The first query parameter named `name`, percent-decoded with `+` read
    /// as a space.
    pub(crate) fn query_param(&self, name: &str) -> Option<String> {
        self.query.as_deref().and_then(|query| find_query_param(query, name))
    }
}

impl fmt::Debug for RequestHead {
    /// Header values and the query string are left out: they may hold tokens.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestHead")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("query", &self.query.as_ref().map(|_| "<redacted>"))
            .field("version", &self.version)
            .field("headers", &HeaderNames(&self.headers))
            .finish()
    }
}

/// Why [`read_head`] returned no head.
#[derive(Debug)]
pub(crate) enum HeadError {
    /// The deadline passed before the head was complete (`408` if any byte
    /// came, else just close).
    Timeout,
    /// The head is larger than allowed, or has too many header lines (`431`).
    TooLarge,
    /// Not an HTTP/1.x request head (`400`); the connection cannot be reused,
    /// as we do not know where the next request would start.
    Malformed(String),
    /// The peer closed the connection before sending any byte: a normal end
    /// of a keep-alive connection, nothing to answer.
    Closed,
    /// The socket failed (reset, ...): nothing can be answered.
    Io(io::Error),
}

impl HeadError {
    /// The status to answer with before closing, `None` when the connection
    /// is gone.
    pub(crate) fn status(&self) -> Option<u16> {
        match self {
            HeadError::Timeout => Some(408),
            HeadError::TooLarge => Some(431),
            HeadError::Malformed(_) => Some(400),
            HeadError::Closed | HeadError::Io(_) => None,
        }
    }
}

impl fmt::Display for HeadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HeadError::Timeout => f.write_str("request head: timed out"),
            HeadError::TooLarge => f.write_str("request head: too large"),
            HeadError::Malformed(detail) => write!(f, "request head: malformed: {detail}"),
            HeadError::Closed => f.write_str("request head: connection closed before any byte"),
            HeadError::Io(e) => write!(f, "request head: i/o error: {e}"),
        }
    }
}

impl std::error::Error for HeadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            HeadError::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads one request head from `stream`, up to and including its empty line.
///
/// Blocks until the head is complete, giving up at `deadline`: before each
/// read the socket's read timeout is set to the time left, so a peer sending
/// one byte per second is cut at the deadline, not reset by each byte. The
/// socket's read timeout is left changed. A head longer than
/// `max_head_bytes` (or with more than 100 header lines) is refused.
///
/// Returns the head and the bytes read past it: the start of the body, or of
/// the next request.
///
/// # Errors
///
/// See [`HeadError`]; [`HeadError::status`] gives the status to answer with.
pub(crate) fn read_head(
    stream: &mut TcpStream,
    deadline: Instant,
    max_head_bytes: usize,
) -> Result<(RequestHead, Vec<u8>), HeadError> {
    let mut buf = Vec::new();
    let head = read_head_buffered(stream, &mut buf, deadline, max_head_bytes)?;
    Ok((head, buf))
}

/// Writes a complete response in one `write_all`: the status line with the
/// standard reason phrase, the headers, `Content-Length`, `Connection: close`
/// when `close` is true, and the body.
///
/// Header fields whose name or value contain CR or LF are dropped rather
/// than let split the response.
///
/// # Errors
///
/// The write fails (peer gone, write timeout).
pub(crate) fn write_response(
    stream: &mut impl Write,
    resp: &Response,
    close: bool,
) -> io::Result<()> {
    let conn = if close { ConnectionHeader::Close } else { ConnectionHeader::Omit };
    stream.write_all(&encode_response(resp, conn, true))
}

/// State shared by the server handle, the accept thread and the connection
/// threads.
struct Shared {
    /// The limits given to `start`.
    limits: Limits,
    /// The application.
    handler: Arc<dyn Handler>,
    /// Set once by `stop`: no new connections, no new requests.
    stopping: AtomicBool,
    /// The connection limits, and every open connection's socket (for the
    /// stop).
    admission: Arc<Admission>,
    /// Connection threads by slot id, joined by `stop`; finished ones are
    /// reaped by the accept thread. Held only for map updates.
    threads: Mutex<HashMap<u64, JoinHandle<()>>>,
}

/// The ops port as the accept thread sees it.
struct HttpPort {
    shared: Arc<Shared>,
    /// Thread names are `http-<u32>`: at most 15 bytes, wrapping after 2^32.
    counter: u32,
}

impl Port for HttpPort {
    fn refusal(&self, why: Refusal) -> Vec<u8> {
        let detail = match why {
            Refusal::PerIp => "too many connections from your address\n",
            _ => "too many connections\n",
        };
        let resp = Response::text(503, detail).with_header("Retry-After", "1");
        encode_response(&resp, ConnectionHeader::Close, true)
    }

    /// Registers the socket with its slot and spawns the connection's thread.
    fn serve(&mut self, stream: TcpStream, remote: SocketAddr, mut slot: Slot) {
        let accepted_at = Instant::now();
        self.counter = self.counter.wrapping_add(1);
        self.shared.threads.lock().retain(|_, handle| !handle.is_finished());
        match stream.try_clone() {
            Ok(clone) => slot.track(clone),
            Err(e) => {
                warn!("http: {remote} dropped: cannot clone its socket: {e}");
                return;
            }
        }
        let id = slot.id();
        let shared = Arc::clone(&self.shared);
        let spawned = spawn_named(format!("http-{}", self.counter), None, move || {
            let mut stream = stream;
            let end = serve_connection(&shared, &mut slot, &mut stream, remote, accepted_at);
            debug!("http: {remote} connection ended: {end}");
        });
        match spawned {
            Ok(handle) => {
                self.shared.threads.lock().insert(id, handle);
            }
            // The closure, and with it the socket and the slot, is dropped:
            // the peer sees the connection close.
            Err(e) => warn!("http: {remote} dropped: cannot spawn its thread: {e}"),
        }
    }
}

/// Serves requests on one connection until it closes; returns why it ended,
/// for the log.
fn serve_connection(
    shared: &Shared,
    slot: &mut Slot,
    stream: &mut TcpStream,
    remote: SocketAddr,
    accepted_at: Instant,
) -> String {
    let limits = &shared.limits;
    if let Err(e) = stream.set_write_timeout(Some(limits.read_timeout)) {
        return format!("set_write_timeout: {e}");
    }
    // Bytes received but not consumed: the start of the next request when
    // the peer pipelines.
    let mut buf = Vec::new();
    // When the head now awaited may start: the accept for the first
    // request, the end of the previous response for the next ones.
    let mut head_start = accepted_at;
    loop {
        if !slot.enter_idle() {
            return "server stopping".to_owned();
        }
        let head_deadline = head_start + limits.head_timeout;
        if buf.is_empty() {
            // Nothing yet: wait for the first byte, at most until the head
            // is due (or the keep-alive idle time is over, if sooner).
            let until = head_deadline.min(head_start + limits.idle_timeout);
            match read_append(stream, &mut buf, READ_CHUNK, until) {
                Ok(0) if shared.stopping.load(Ordering::SeqCst) => {
                    return "server stopping".to_owned();
                }
                Ok(0) => return "closed by peer".to_owned(),
                Ok(_) => {}
                Err(ReadFail::Timeout) => return "idle timeout".to_owned(),
                Err(ReadFail::Io(e)) => return format!("read: {e}"),
            }
        }
        slot.enter_busy();

        let head = match read_head_buffered(stream, &mut buf, head_deadline, limits.max_head_bytes)
        {
            Ok(head) => head,
            Err(e) => {
                if matches!(e, HeadError::Timeout) {
                    shared.admission.refused(Refusal::HeadTimeout, remote.ip());
                }
                if let Some(status) = e.status() {
                    reject(stream, status, &e.to_string());
                }
                return e.to_string();
            }
        };
        // Behind a trusted proxy, each request names its client: it is held
        // to the per-IP limit and is who the log shows.
        let client = match slot.forwarded_client(crate::proxy::forwarded_for(&head.headers)) {
            Ok(ip) => ip,
            Err(why) => {
                shared.admission.refused(why, remote.ip());
                reject(stream, 503, "too many connections from this client");
                return format!("refused: {why}");
            }
        };
        let keep_alive = wants_keep_alive(&head);
        let version = head.version;
        let method = head.method.clone();
        let path = head.path.clone();

        // The head alone may settle the request (credentials, content
        // type): then no `100 Continue` goes out and no body byte is read.
        let early =
            match catch_unwind(AssertUnwindSafe(|| shared.handler.check_head(&head, remote))) {
                Ok(early) => early,
                Err(_) => {
                    warn!("http: {client} head check panicked on {method} {path}");
                    Some(
                        Response::text(500, "internal server error\n")
                            .with_header("Connection", "close"),
                    )
                }
            };
        let (resp, panicked) = match early {
            Some(resp) => {
                // The body is left unread: the connection can go on only
                // when there is none.
                let bodiless = matches!(framing(&head), Ok(Framing::Length(0)));
                let resp = if bodiless { resp } else { resp.with_header("Connection", "close") };
                (resp, false)
            }
            None => {
                let body = match read_body(stream, &mut buf, &head, limits) {
                    Ok(body) => body,
                    Err(e) => {
                        if let Some(status) = e.status() {
                            reject(stream, status, &e.to_string());
                        }
                        return e.to_string();
                    }
                };
                let req = Request {
                    method: head.method,
                    path: head.path,
                    query: head.query,
                    headers: head.headers,
                    body,
                    remote,
                };
                match catch_unwind(AssertUnwindSafe(|| shared.handler.handle(req))) {
                    Ok(resp) => (resp, false),
                    Err(_) => {
                        warn!("http: {client} handler panicked on {method} {path}");
                        (Response::text(500, "internal server error\n"), true)
                    }
                }
            }
        };
        debug!("http: {client} {method} {path} -> {}", resp.status);
        let close = panicked
            || !keep_alive
            || shared.stopping.load(Ordering::SeqCst)
            || has_token(&resp.headers, "connection", "close");
        let conn = match (close, version) {
            (true, _) => ConnectionHeader::Close,
            // An HTTP/1.0 client assumes close unless told otherwise.
            (false, 0) => ConnectionHeader::KeepAlive,
            (false, _) => ConnectionHeader::Omit,
        };
        // Methods are case-sensitive (RFC 9110 §9.1).
        let with_body = method != "HEAD";
        if let Err(e) = stream.write_all(&encode_response(&resp, conn, with_body)) {
            return format!("write: {e}");
        }
        if close {
            linger_close(stream);
            return "closed after response".to_owned();
        }
        head_start = Instant::now();
    }
}

/// Answers an unusable request with `status` and closes the connection.
fn reject(stream: &mut TcpStream, status: u16, detail: &str) {
    let resp = Response::text(status, format!("{detail}\n"));
    if write_response(stream, &resp, true).is_ok() {
        linger_close(stream);
    }
}

/// Half-closes, then discards what the peer still sends for a moment, so the
/// final close does not turn into an RST that destroys our last response.
fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let until = Instant::now() + LINGER_TIMEOUT;
    let mut scratch = [0u8; 4096];
    let mut discarded = 0;
    while discarded < LINGER_MAX_BYTES {
        match read_with_deadline(stream, &mut scratch, until) {
            Ok(n) if n > 0 => discarded += n,
            _ => break,
        }
    }
}

/// Reads a head from `buf` plus `stream`; on success the head's bytes are
/// removed from `buf`, leaving what follows it.
fn read_head_buffered(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    max_head_bytes: usize,
) -> Result<RequestHead, HeadError> {
    let mut scan_from = 0;
    loop {
        // Parse only once an empty line has arrived: re-parsing after every
        // byte of a trickled head would be quadratic.
        if has_empty_line(buf.get(scan_from..).unwrap_or_default())
            && let Some((head, len)) = parse_head(buf)?
        {
            if len > max_head_bytes {
                return Err(HeadError::TooLarge);
            }
            check_framing_rules(&head, buf.get(..len).unwrap_or_default())?;
            buf.drain(..len.min(buf.len()));
            return Ok(head);
        }
        if buf.len() >= max_head_bytes {
            return Err(HeadError::TooLarge);
        }
        // An empty line ("\n\n" or "\n\r\n") may straddle the old end.
        scan_from = buf.len().saturating_sub(2);
        match read_append(stream, buf, READ_CHUNK, deadline) {
            Ok(0) if buf.is_empty() => return Err(HeadError::Closed),
            Ok(0) => return Err(HeadError::Malformed("connection closed inside the head".into())),
            Ok(_) => {}
            Err(ReadFail::Timeout) => return Err(HeadError::Timeout),
            Err(ReadFail::Io(e)) => return Err(HeadError::Io(e)),
        }
    }
}

/// The RFC 9112 rules httparse leaves to us, each a `400` (SPEC §9): a bare
/// CR anywhere in the head (§2.2), an HTTP/1.1 request without `Host` or
/// any request with more than one (§3.2), and `Transfer-Encoding` in an
/// HTTP/1.0 request (§6.1: such a message is faulty, and framing it either
/// way invites request smuggling).
fn check_framing_rules(head: &RequestHead, raw: &[u8]) -> Result<(), HeadError> {
    let bare_cr =
        raw.iter().enumerate().any(|(i, &b)| b == b'\r' && raw.get(i + 1) != Some(&b'\n'));
    if bare_cr {
        return Err(HeadError::Malformed("bare CR in the head".into()));
    }
    let hosts = head.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case("host")).count();
    if hosts > 1 {
        return Err(HeadError::Malformed("more than one Host header".into()));
    }
    if hosts == 0 && head.version >= 1 {
        return Err(HeadError::Malformed("HTTP/1.1 request without a Host header".into()));
    }
    if head.version == 0
        && head.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
    {
        return Err(HeadError::Malformed("Transfer-Encoding in an HTTP/1.0 request".into()));
    }
    Ok(())
}

/// True when `bytes` holds the end of a line followed by an empty line.
fn has_empty_line(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

/// Parses a head at the start of `buf`: `None` while incomplete, else the
/// head and its length in bytes.
fn parse_head(buf: &[u8]) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    // A complete parse always has method, path and version.
    let target = req.path.unwrap_or_default();
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (target, None),
    };
    let head = RequestHead {
        method: req.method.unwrap_or_default().to_owned(),
        path: path.to_owned(),
        query,
        version: req.version.unwrap_or(1),
        headers: req
            .headers
            .iter()
            .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).trim().to_owned()))
            .collect(),
    };
    Ok(Some((head, len)))
}

/// Whether the connection may serve another request after this one
/// (RFC 9112 §9.3): HTTP/1.1 unless `Connection: close`; HTTP/1.0 only with
/// `Connection: keep-alive`.
fn wants_keep_alive(head: &RequestHead) -> bool {
    if has_token(&head.headers, "connection", "close") {
        false
    } else if head.version >= 1 {
        true
    } else {
        has_token(&head.headers, "connection", "keep-alive")
    }
}

/// Whether any `name` header lists `token` (comma-separated, any case).
fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why a request body could not be read.
#[derive(Debug)]
enum BodyError {
    /// Over `max_body_bytes`, declared or counted (`413`).
    TooLarge,
    /// Bad framing: both or conflicting length headers, bad chunk (`400`).
    Malformed(&'static str),
    /// A transfer coding other than plain `chunked` (`501`).
    Unsupported,
    /// Not complete within `read_timeout` (`408`).
    Timeout,
    /// The peer closed mid-body: nobody to answer.
    Closed,
    /// The socket failed: nobody to answer.
    Io(io::Error),
}

impl BodyError {
    /// The status to answer with before closing, `None` when the peer is gone.
    fn status(&self) -> Option<u16> {
        match self {
            BodyError::TooLarge => Some(413),
            BodyError::Malformed(_) => Some(400),
            BodyError::Unsupported => Some(501),
            BodyError::Timeout => Some(408),
            BodyError::Closed | BodyError::Io(_) => None,
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BodyError::TooLarge => f.write_str("request body: too large"),
            BodyError::Malformed(detail) => write!(f, "request body: malformed: {detail}"),
            BodyError::Unsupported => f.write_str("request body: unsupported transfer-encoding"),
            BodyError::Timeout => f.write_str("request body: timed out"),
            BodyError::Closed => f.write_str("request body: connection closed"),
            BodyError::Io(e) => write!(f, "request body: i/o error: {e}"),
        }
    }
}

impl From<ReadFail> for BodyError {
    fn from(fail: ReadFail) -> Self {
        match fail {
            ReadFail::Timeout => BodyError::Timeout,
            ReadFail::Io(e) => BodyError::Io(e),
        }
    }
}

/// How the body of a request is delimited.
enum Framing {
    Length(u64),
    Chunked,
}

/// Decides how the body is delimited (RFC 9112 §6.3), refusing the
/// ambiguous cases that enable request smuggling.
fn framing(head: &RequestHead) -> Result<Framing, BodyError> {
    let codings: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let lengths: Vec<&str> = head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    if !codings.is_empty() {
        if !lengths.is_empty() {
            return Err(BodyError::Malformed("both content-length and transfer-encoding"));
        }
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
            _ => Err(BodyError::Unsupported),
        };
    }
    let mut declared = None;
    for value in lengths {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BodyError::Malformed("bad content-length"));
        }
        let n: u64 = value.parse().map_err(|_| BodyError::Malformed("bad content-length"))?;
        if declared.is_some_and(|d| d != n) {
            return Err(BodyError::Malformed("conflicting content-length"));
        }
        declared = Some(n);
    }
    Ok(Framing::Length(declared.unwrap_or(0)))
}

/// Reads the body of `head`, starting with what is already in `buf`; what
/// follows the body stays in `buf`.
fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    limits: &Limits,
) -> Result<Vec<u8>, BodyError> {
    let framing = framing(head)?;
    let max = u64::try_from(limits.max_body_bytes).unwrap_or(u64::MAX);
    // Check the size before asking for the body: refusing a huge upload must
    // not cost its transfer.
    match framing {
        Framing::Length(0) => return Ok(Vec::new()),
        Framing::Length(n) if n > max => return Err(BodyError::TooLarge),
        Framing::Length(_) | Framing::Chunked => {}
    }
    // curl holds back bodies over 1 KiB until told to go on. An HTTP/1.0
    // client would not understand a 1xx (RFC 9110 §15.2).
    if head.version >= 1
        && head.header("expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"))
    {
        stream.write_all(CONTINUE_100).map_err(BodyError::Io)?;
    }
    let deadline = Instant::now() + limits.read_timeout;
    match framing {
        Framing::Length(n) => {
            // `n <= max_body_bytes`, a usize.
            let n = usize::try_from(n).map_err(|_| BodyError::TooLarge)?;
            let mut body = Vec::with_capacity(n.min(BODY_PREALLOC));
            read_exact_append(stream, buf, &mut body, n, deadline)?;
            Ok(body)
        }
        Framing::Chunked => read_chunked(stream, buf, limits, deadline),
    }
}

/// Decodes a chunked body (RFC 9112 §7.1): extensions are ignored, trailer
/// fields read and dropped (bounded by `max_head_bytes`).
fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &Limits,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, buf, MAX_CHUNK_LINE, deadline)?;
        let size = parse_chunk_size(&line).ok_or(BodyError::Malformed("bad chunk size"))?;
        if size == 0 {
            break;
        }
        let room = limits.max_body_bytes.saturating_sub(body.len());
        let size = match usize::try_from(size) {
            Ok(size) if size <= room => size,
            _ => return Err(BodyError::TooLarge),
        };
        read_exact_append(stream, buf, &mut body, size, deadline)?;
        if !read_line(stream, buf, 0, deadline)?.is_empty() {
            return Err(BodyError::Malformed("chunk data longer than its size"));
        }
    }
    let mut trailer_bytes = 0usize;
    loop {
        let line = read_line(stream, buf, limits.max_head_bytes, deadline)?;
        if line.is_empty() {
            return Ok(body);
        }
        trailer_bytes = trailer_bytes.saturating_add(line.len() + 2);
        if trailer_bytes > limits.max_head_bytes {
            return Err(BodyError::Malformed("trailer section too large"));
        }
    }
}

/// Parses a chunk-size line: hex digits, optional whitespace, optional
/// `;extensions`. `None` when invalid or over 2^64.
fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let size = line.split(|&b| b == b';').next()?.trim_ascii_end();
    if size.is_empty() || size.len() > 16 || !size.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()
}

/// Reads one line (LF or CRLF ended) from `buf` plus `stream`, without its
/// line ending, refusing lines longer than `max_len`.
fn read_line(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    max_len: usize,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    let mut scanned = 0;
    loop {
        let newline = buf.get(scanned..).and_then(|rest| rest.iter().position(|&b| b == b'\n'));
        if let Some(pos) = newline {
            let end = (scanned + pos + 1).min(buf.len());
            let mut line: Vec<u8> = buf.drain(..end).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return if line.len() > max_len {
                Err(BodyError::Malformed("line too long"))
            } else {
                Ok(line)
            };
        }
        scanned = buf.len();
        // + 1 for a CR not yet followed by its LF.
        if scanned > max_len + 1 {
            return Err(BodyError::Malformed("line too long"));
        }
        if read_append(stream, buf, READ_CHUNK, deadline)? == 0 {
            return Err(BodyError::Closed);
        }
    }
}

/// Moves exactly `n` body bytes into `body`: first from `buf`, then straight
/// from the socket.
fn read_exact_append(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    body: &mut Vec<u8>,
    n: usize,
    deadline: Instant,
) -> Result<(), BodyError> {
    let from_buf = n.min(buf.len());
    body.extend(buf.drain(..from_buf));
    let mut missing = n - from_buf;
    while missing > 0 {
        match read_append(stream, body, missing, deadline)? {
            0 => return Err(BodyError::Closed),
            got => missing = missing.saturating_sub(got),
        }
    }
    Ok(())
}

/// Why a read with a deadline returned no bytes.
#[derive(Debug)]
enum ReadFail {
    /// The deadline passed.
    Timeout,
    /// The socket failed.
    Io(io::Error),
}

/// Appends up to `max` (at least 1) bytes from `stream` to `vec`, waiting
/// until `deadline`. `Ok(0)` is end of stream.
fn read_append(
    stream: &mut TcpStream,
    vec: &mut Vec<u8>,
    max: usize,
    deadline: Instant,
) -> Result<usize, ReadFail> {
    let start = vec.len();
    vec.resize(start + max.clamp(1, READ_CHUNK), 0);
    let result = match vec.get_mut(start..) {
        Some(slot) => read_with_deadline(stream, slot, deadline),
        None => Ok(0),
    };
    vec.truncate(start + result.as_ref().map_or(0, |n| *n));
    result
}

/// One `read` that returns by `deadline`: the socket timeout is set to the
/// time left before each attempt, so the deadline holds however the peer
/// trickles its bytes.
fn read_with_deadline(
    stream: &mut TcpStream,
    out: &mut [u8],
    deadline: Instant,
) -> Result<usize, ReadFail> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadFail::Timeout);
        }
        stream.set_read_timeout(Some(left)).map_err(ReadFail::Io)?;
        match stream.read(out) {
            Ok(n) => return Ok(n),
            // A timed-out read is `WouldBlock` on Unix, `TimedOut` elsewhere
            // (as ureq's `normalize_would_block`); the loop checks the clock.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(ReadFail::Io(e)),
        }
    }
}

/// What the server says about the connection in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConnectionHeader {
    /// `Connection: close`: this is the last response.
    Close,
    /// `Connection: keep-alive`, for an HTTP/1.0 client that asked for it.
    KeepAlive,
    /// Nothing: HTTP/1.1 persistence is the default.
    Omit,
}

/// Serialises a response. The framing headers are ours: the handler's
/// `Content-Length`, `Transfer-Encoding` and `Connection` are replaced.
/// `with_body` false (for `HEAD`) keeps `Content-Length` but sends no body.
fn encode_response(resp: &Response, conn: ConnectionHeader, with_body: bool) -> Vec<u8> {
    // RFC 9110 §6.4.1: these never carry content.
    let bodiless = resp.status < 200 || resp.status == 204 || resp.status == 304;
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason_phrase(resp.status));
    for (name, value) in &resp.headers {
        let framing = ["content-length", "transfer-encoding", "connection"]
            .iter()
            .any(|f| name.eq_ignore_ascii_case(f));
        if framing {
            continue;
        }
        let invalid = name.is_empty()
            || name.bytes().any(|b| b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
            || value.bytes().any(|b| b == b'\r' || b == b'\n');
        if invalid {
            debug!("http: dropped response header {:?}: invalid characters", name.escape_debug());
            continue;
        }
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    if !bodiless {
        head.push_str(&format!("Content-Length: {}\r\n", resp.body.len()));
    }
    match conn {
        ConnectionHeader::Close => head.push_str("Connection: close\r\n"),
        ConnectionHeader::KeepAlive => head.push_str("Connection: keep-alive\r\n"),
        ConnectionHeader::Omit => {}
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if with_body && !bodiless {
        out.extend_from_slice(&resp.body);
    }
    out
}

/// The standard reason phrase of `status` (RFC 9110 §15), empty if unknown.
fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// The first header named `name` (ASCII case-insensitive).
fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// The first `name` parameter of an `application/x-www-form-urlencoded`
/// query, decoded.
fn find_query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

/// Decodes `%XX` escapes and `+` (as space); a `%` not followed by two hex
/// digits stays as is, invalid UTF-8 becomes U+FFFD.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = match b {
            b'%' => bytes.get(i + 1).and_then(hex_value).zip(bytes.get(i + 2).and_then(hex_value)),
            _ => None,
        };
        match (b, escaped) {
            (_, Some((high, low))) => {
                out.push(high << 4 | low);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (_, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The value of one hex digit.
fn hex_value(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Formats headers as their names only, for `Debug`: values may be secrets
/// (ureq's `DebugHeaders`).
struct HeaderNames<'a>(&'a [(String, String)]);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter().map(|(name, _)| name)).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::mpsc;

    /// Limits small enough for tests to hit them quickly.
    fn test_limits() -> Limits {
        Limits {
            max_body_bytes: 1024,
            max_head_bytes: 4096,
            max_connections: 8,
            max_connections_per_ip: 0,
            trusted_proxies: TrustedProxies::default(),
            read_timeout: Duration::from_secs(2),
            head_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
        }
    }

    /// `/panic` panics, `/slow` takes 300 ms, anything else echoes
    /// "METHOD path body" and the query in `X-Query`.
    fn echo(req: Request) -> Response {
        let Request { method, path, query, body, .. } = req;
        match path.as_str() {
            "/panic" => panic!("handler bug (expected by the test)"),
            "/slow" => {
                std::thread::sleep(Duration::from_millis(300));
                Response::text(200, "slow")
            }
            _ => Response::text(200, format!("{method} {path} {}", String::from_utf8_lossy(&body)))
                .with_header("X-Query", query.as_deref().unwrap_or("-")),
        }
    }

    fn start(limits: Limits) -> HttpServer {
        start_with(limits, Arc::new(echo))
    }

    /// Binds 127.0.0.1:0 before starting, so the port is ready on return.
    fn start_with(limits: Limits, handler: Arc<dyn Handler>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        HttpServer::start(listener, limits, handler, None).expect("start")
    }

    /// A raw client with its own receive buffer.
    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    #[derive(Debug)]
    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            find_header(&self.headers, name)
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    impl Client {
        fn connect(server: &HttpServer) -> Client {
            let stream = TcpStream::connect(server.local_addr()).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            Client { stream, buf: Vec::new() }
        }

        fn send(&mut self, bytes: &[u8]) {
            self.stream.write_all(bytes).expect("send");
        }

        /// Reads more bytes; false at end of stream (or reset).
        fn fill(&mut self) -> bool {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    true
                }
            }
        }

        /// Reads one response; `head_only` for a reply to HEAD.
        fn reply(&mut self, head_only: bool) -> Reply {
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut resp = httparse::Response::new(&mut headers);
                if let httparse::Status::Complete(len) = resp.parse(&self.buf).expect("parse") {
                    let status = resp.code.expect("code");
                    let headers: Vec<(String, String)> = resp
                        .headers
                        .iter()
                        .map(|h| (h.name.to_owned(), String::from_utf8_lossy(h.value).into_owned()))
                        .collect();
                    let length: usize = find_header(&headers, "content-length")
                        .map_or(0, |v| v.parse().expect("length"));
                    let length = if head_only { 0 } else { length };
                    while self.buf.len() < len + length {
                        assert!(self.fill(), "eof inside body");
                    }
                    let body = self.buf[len..len + length].to_vec();
                    self.buf.drain(..len + length);
                    return Reply { status, headers, body };
                }
                assert!(self.fill(), "eof before a response: {:?}", self.buf);
            }
        }

        /// True when the server closes the connection with nothing more.
        fn at_eof(&mut self) -> bool {
            !self.fill() && self.buf.is_empty()
        }
    }

    /// Polls `condition` until it holds or `deadline` passes.
    fn wait_until(deadline: Instant, mut condition: impl FnMut() -> bool) -> bool {
        loop {
            if condition() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn content_length_body() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        c.send(b"POST /echo?x=1 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
        let r = c.reply(false);
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "POST /echo hello");
        assert_eq!(r.header("x-query"), Some("x=1"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    }

    #[test]
    fn chunked_body_with_extension_and_trailer() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        c.send(
            b"POST /c HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;name=\"a;b\"\r\nhello\r\n6 \r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n",
        );
        let r = c.reply(false);
        assert_eq!((r.status, r.text()), (200, "POST /c hello world".to_owned()));
        // The trailer was consumed: the connection goes on.
        c.send(b"GET /next HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.reply(false).text(), "GET /next ");
    }

    #[test]
    fn declared_body_over_limit_is_413_without_reading_it() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nContent-Length: 1000000\r\n\r\n");
        let r = c.reply(false);
        assert_eq!(r.status, 413);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.at_eof());
    }

    #[test]
    fn chunked_body_over_limit_is_413() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        let chunk = format!("258\r\n{}\r\n", "x".repeat(600)); // 0x258 = 600
        c.send(b"POST /big HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
        c.send(chunk.as_bytes());
        c.send(chunk.as_bytes());
        let r = c.reply(false);
        assert_eq!(r.status, 413);
        assert!(c.at_eof());
    }

    #[test]
    fn expect_100_continue() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        c.send(b"PUT /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
        while c.buf.len() < CONTINUE_100.len() {
            assert!(c.fill(), "eof before 100 Continue");
        }
        assert_eq!(c.buf.drain(..CONTINUE_100.len()).as_slice(), CONTINUE_100);
        c.send(b"12345");
        assert_eq!(c.reply(false).text(), "PUT /e 12345");

        // Too large: the final status comes at once, without 100.
        c.send(
            b"PUT /e HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
        );
        assert_eq!(c.reply(false).status, 413);
    }

    /// Refuses `/guarded` on its head with 401; echoes the rest.
    struct Guarded;

    impl Handler for Guarded {
        fn handle(&self, req: Request) -> Response {
            echo(req)
        }

        fn check_head(&self, head: &RequestHead, _remote: SocketAddr) -> Option<Response> {
            (head.path == "/guarded").then(|| Response::text(401, "no\n"))
        }
    }

    #[test]
    fn a_head_check_answers_before_100_continue_and_any_body_byte() {
        let server =
            start_with(Limits { max_body_bytes: 10_000_000, ..test_limits() }, Arc::new(Guarded));
        let mut c = Client::connect(&server);
        c.send(
            b"POST /guarded HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n\
              Content-Length: 8000000\r\n\r\n",
        );
        // The first bytes are the 401 (no `100 Continue`), then the end: the
        // body was never asked for.
        let r = c.reply(false);
        assert_eq!((r.status, r.header("connection")), (401, Some("close")));
        assert!(c.at_eof());

        // Without a body the connection goes on.
        let mut c = Client::connect(&server);
        c.send(b"GET /guarded HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.reply(false);
        assert_eq!((r.status, r.header("connection")), (401, None));
        c.send(b"GET /open HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.reply(false).text(), "GET /open ");
    }

    #[test]
    fn the_next_head_on_a_keep_alive_connection_is_due_within_the_head_timeout() {
        let limits = Limits {
            head_timeout: Duration::from_millis(400),
            idle_timeout: Duration::from_secs(30),
            ..test_limits()
        };
        let server = start(limits);
        // Silent after a response: closed without a word at the head timeout,
        // not after the (longer) idle timeout.
        let mut c = Client::connect(&server);
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        c.reply(false);
        let started = Instant::now();
        assert!(c.at_eof());
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

        // Part of the next head, then nothing: 408 at the same deadline.
        let mut c = Client::connect(&server);
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        c.reply(false);
        let started = Instant::now();
        c.send(b"GET /late HTTP/1.1\r\n");
        assert_eq!(c.reply(false).status, 408);
        assert!(c.at_eof());
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }

    #[test]
    fn keep_alive_serves_several_requests_and_pipelining() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        c.send(b"GET /one HTTP/1.1\r\nHost: t\r\n\r\n");
        let first = c.reply(false);
        assert_eq!((first.status, first.header("connection")), (200, None));
        c.send(b"GET /two HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.reply(false).text(), "GET /two ");
        // Two requests in one segment.
        c.send(b"GET /3 HTTP/1.1\r\nHost: t\r\n\r\nGET /4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        assert_eq!(c.reply(false).text(), "GET /3 ");
        let last = c.reply(false);
        assert_eq!((last.text().as_str(), last.header("connection")), ("GET /4 ", Some("close")));
        assert!(c.at_eof());
    }

    #[test]
    fn head_request_gets_length_but_no_body() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        c.send(b"HEAD /h HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.reply(true);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("8")); // "HEAD /h "
        // Had a body been sent, it would be parsed as the next response.
        c.send(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.reply(false).text(), "GET /after ");
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        c.send(b"GET /old HTTP/1.0\r\n\r\n");
        let r = c.reply(false);
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.at_eof());

        let mut c = Client::connect(&server);
        c.send(b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert_eq!(c.reply(false).header("connection"), Some("keep-alive"));
        c.send(b"GET /again HTTP/1.0\r\n\r\n");
        assert_eq!(c.reply(false).text(), "GET /again ");
        assert!(c.at_eof());
    }

    #[test]
    fn idle_keep_alive_connection_is_closed() {
        let server = start(Limits { idle_timeout: Duration::from_millis(200), ..test_limits() });
        let mut c = Client::connect(&server);
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        c.reply(false);
        let started = Instant::now();
        assert!(c.at_eof());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn slowloris_head_is_cut_at_the_deadline() {
        let server = start(Limits { head_timeout: Duration::from_secs(1), ..test_limits() });
        let started = Instant::now();
        let mut c = Client::connect(&server);
        let mut writer = c.stream.try_clone().expect("clone");
        let trickle = spawn_named("test-trickle".into(), None, move || {
            // One byte every 200 ms, for at most 4 s, until the server hangs up.
            for &b in b"GET /slowloris HTTP/1.1\r\nHost: t\r\n".iter() {
                if writer.write_all(&[b]).is_err() || started.elapsed() > Duration::from_secs(4) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
        .expect("spawn");
        let r = c.reply(false);
        assert_eq!(r.status, 408);
        assert!(c.at_eof());
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1800),
            "closed after {elapsed:?}"
        );
        trickle.join().expect("trickle thread");
    }

    #[test]
    fn silent_connection_is_closed_without_a_response() {
        let server = start(Limits { head_timeout: Duration::from_millis(300), ..test_limits() });
        let mut c = Client::connect(&server);
        assert!(c.at_eof());
    }

    #[test]
    fn malformed_requests_get_400_and_close() {
        let server = start(test_limits());
        let cases: [&[u8]; 12] = [
            b"NOT A REQUEST\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: t\r\nBad Header\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 12x\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            // RFC 9112 §3.2: Host exactly once in HTTP/1.1, at most once.
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n",
            // §2.2: a bare CR, in a header value or ending a line.
            b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r2\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\r\n\r\n",
            // §6.1: Transfer-Encoding in HTTP/1.0.
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            b"POST / HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\nx",
        ];
        for case in cases {
            let mut c = Client::connect(&server);
            c.send(case);
            assert_eq!(c.reply(false).status, 400, "{}", String::from_utf8_lossy(case));
            assert!(c.at_eof());
        }
        let mut c = Client::connect(&server);
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert_eq!(c.reply(false).status, 400);
        let mut c = Client::connect(&server);
        c.send(b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(c.reply(false).status, 501);
        let mut c = Client::connect(&server);
        c.send(format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000)).as_bytes());
        assert_eq!(c.reply(false).status, 431);
    }

    #[test]
    fn connections_over_the_cap_get_503() {
        let server = start(Limits { max_connections: 1, ..test_limits() });
        let mut first = Client::connect(&server);
        first.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(first.reply(false).status, 200);

        let mut second = Client::connect(&server);
        let r = second.reply(false);
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
        assert!(second.at_eof());

        drop(first);
        let served_again = wait_until(Instant::now() + Duration::from_secs(5), || {
            let mut c = Client::connect(&server);
            c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
            c.reply(false).status == 200
        });
        assert!(served_again);
    }

    #[test]
    fn stop_is_prompt_finishes_in_flight_and_wakes_accept() {
        let (entered_tx, entered_rx) = mpsc::channel();
        let handler = move |req: Request| {
            if req.path == "/slow" {
                let _ = entered_tx.send(());
            }
            echo(req)
        };
        let mut server = start_with(test_limits(), Arc::new(handler));
        let addr = server.local_addr();
        let mut idle = Client::connect(&server);
        idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        idle.reply(false);

        let mut slow = Client::connect(&server);
        slow.send(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
        let in_flight =
            spawn_named("test-client".into(), None, move || slow.reply(false)).expect("spawn");
        // Stop once the request is in the handler: earlier, it would rightly
        // be cut as an idle connection.
        entered_rx.recv_timeout(Duration::from_secs(5)).expect("request reached the handler");

        let started = Instant::now();
        server.stop(Instant::now() + Duration::from_secs(5));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "stop took {took:?}");

        let r = in_flight.join().expect("client thread");
        assert_eq!((r.text().as_str(), r.header("connection")), ("slow", Some("close")));
        assert!(idle.at_eof());
        assert!(TcpStream::connect(addr).is_err(), "still accepting after stop");
        server.stop(Instant::now()); // idempotent
    }

    #[test]
    fn stop_with_no_connections_returns_at_once() {
        let mut server = start(test_limits());
        let started = Instant::now();
        server.stop(Instant::now() + Duration::from_secs(10));
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn handler_panic_is_500_and_server_survives() {
        let server = start(test_limits());
        let mut c = Client::connect(&server);
        c.send(b"GET /panic HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = c.reply(false);
        assert_eq!((r.status, r.header("connection")), (500, Some("close")));
        let mut c = Client::connect(&server);
        c.send(b"GET /fine HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(c.reply(false).status, 200);
    }

    #[test]
    fn query_params_are_decoded() {
        let req = Request {
            method: "GET".into(),
            path: "/a%20b".into(),
            query: Some("a=1&b=hello+world&c=%41%42%c3%a9&d=%zz%4&e&a=2&x%20y=%26".into()),
            headers: vec![("X-Token".into(), "secret".into())],
            body: Vec::new(),
            remote: "127.0.0.1:1".parse().expect("addr"),
        };
        assert_eq!(find_query_param(req.query.as_deref().unwrap_or(""), "a").as_deref(), Some("1"));
        assert_eq!(
            find_query_param(req.query.as_deref().unwrap_or(""), "b").as_deref(),
            Some("hello world")
        );
        assert_eq!(
            find_query_param(req.query.as_deref().unwrap_or(""), "c").as_deref(),
            Some("ABé")
        );
        assert_eq!(
            find_query_param(req.query.as_deref().unwrap_or(""), "d").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(find_query_param(req.query.as_deref().unwrap_or(""), "e").as_deref(), Some(""));
        assert_eq!(
            find_query_param(req.query.as_deref().unwrap_or(""), "x y").as_deref(),
            Some("&")
        );
        assert_eq!(find_query_param(req.query.as_deref().unwrap_or(""), "z"), None);
        assert_eq!(req.path, "/a%20b");
        assert_eq!(req.header("x-TOKEN"), Some("secret"));
        let debug = format!("{req:?}");
        assert!(!debug.contains("secret") && !debug.contains("hello"), "{debug}");
    }

    #[test]
    fn read_head_returns_leftover_bytes() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        client
            .write_all(
                b"GET /ws?token=t%20k HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\nhello",
            )
            .expect("send");
        let (mut server_side, _) = listener.accept().expect("accept");
        let deadline = Instant::now() + Duration::from_secs(5);
        let (head, rest) = read_head(&mut server_side, deadline, 4096).expect("head");
        assert_eq!((head.method.as_str(), head.path.as_str(), head.version), ("GET", "/ws", 1));
        assert_eq!(head.header("upgrade"), Some("websocket"));
        assert_eq!(head.query_param("token").as_deref(), Some("t k"));
        assert_eq!(rest, b"hello");

        drop(client);
        assert!(matches!(
            read_head(&mut server_side, Instant::now() + Duration::from_secs(5), 4096),
            Err(HeadError::Closed)
        ));
    }

    #[test]
    fn read_head_times_out_at_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        client.write_all(b"GET / HTTP/1.1\r\n").expect("send");
        let (mut server_side, _) = listener.accept().expect("accept");
        let started = Instant::now();
        let result = read_head(&mut server_side, started + Duration::from_millis(300), 4096);
        assert!(matches!(result, Err(HeadError::Timeout)), "{result:?}");
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(290) && elapsed < Duration::from_secs(1));
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk_size(b"1a"), Some(26));
        assert_eq!(parse_chunk_size(b"FF;ext=1;x"), Some(255));
        assert_eq!(parse_chunk_size(b"0 \t"), Some(0));
        assert_eq!(parse_chunk_size(b"ffffffffffffffff"), Some(u64::MAX));
        for bad in [&b""[..], b";x", b"+5", b"-1", b" 5", b"5x", b"10000000000000000"] {
            assert_eq!(parse_chunk_size(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn encoded_responses() {
        let resp = Response::json(201, &serde_json::json!({"ok": true}))
            .with_header("X-Bad", "a\r\nInjected: yes")
            .with_header("Content-Length", "999")
            .with_header("Cache-Control", "no-store");
        let mut out = Vec::new();
        write_response(&mut out, &resp, true).expect("write to vec");
        assert_eq!(
            String::from_utf8(out).expect("utf-8"),
            "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\
             Cache-Control: no-store\r\nContent-Length: 11\r\nConnection: close\r\n\r\n\
             {\"ok\":true}"
        );
        let no_content = encode_response(&Response::new(204), ConnectionHeader::Omit, true);
        assert_eq!(no_content, b"HTTP/1.1 204 No Content\r\n\r\n");
        let unknown = encode_response(&Response::new(599), ConnectionHeader::Omit, false);
        assert_eq!(unknown, b"HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n");
    }

    #[test]
    fn server_handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HttpServer>();
    }

    #[test]
    fn head_errors_display_one_lowercase_line() {
        let errors = [
            HeadError::Timeout,
            HeadError::TooLarge,
            HeadError::Malformed("invalid token".into()),
            HeadError::Closed,
            HeadError::Io(io::Error::other("reset")),
        ];
        for e in errors {
            let text = e.to_string();
            assert!(text.starts_with("request head: ") && !text.contains('\n'), "{text}");
        }
    }
}
