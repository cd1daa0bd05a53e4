//! The ops port's server (SPEC §1, §7: metrics, health, ingest, debug,
//! dashboard): a small blocking HTTP/1.1 server on `std::net`, speaking
//! [`crate::http_codec`].
//!
//! Threads:
//! - `http`, the accept thread ([`crate::accept::Acceptor`], shared with the
//!   WebSocket port), blocks in `accept()`. It enforces
//!   [`PortLimits::max_connections`] and [`PortLimits::max_connections_per_ip`]
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
//! within [`PortLimits::read_timeout`], and a keep-alive connection may stay quiet
//! for [`PortLimits::idle_timeout`]. Before each read the socket timeout is set to
//! the time *left*, so a peer trickling one byte at a time (slowloris) is cut
//! at the deadline instead of resetting it with every byte.
//!
//! Logging is `debug!` per connection and `warn!` when something misbehaves.
//! Header values and query strings are never logged.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Write};
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
use crate::http_codec::{
    BodyLimits, ConnectionHeader, Framing, HeadError, READ_CHUNK, ReadFail, Request, RequestHead,
    Response, encode_response, framing, has_token, is_timeout_or_interrupt, read_append, read_body,
    read_head_buffered, read_with_deadline, wants_keep_alive,
};
use crate::proxy::{HostRule, TrustedProxies};
use crate::thread::spawn_named;
use crate::transport::{HandshakeError, Stream, Tls};

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
pub(crate) struct PortLimits {
    /// Largest request body, declared or chunked; more gets `413` and the
    /// connection closed before the body is read. Default 8 MiB (SPEC §4
    /// `INGEST_MAX_BODY_BYTES`).
    pub(crate) max_body_bytes: usize,
    /// Largest request head (request line plus headers, and the trailer
    /// section of a chunked body); more gets `431`. Default 16 KiB, which
    /// fits any browser's cookies.
    pub(crate) max_head_bytes: usize,
    /// Most connections served at once, i.e. connection threads (SPEC §9
    /// `HTTP_MAX_CONNECTIONS`). When full, the connection idle the longest
    /// is closed to make room; when every one is busy with a request, the
    /// accept thread answers `503` with `Retry-After: 1`. Default 256: the
    /// ops port serves scrapers and operators, not the dashboards.
    pub(crate) max_connections: usize,
    /// Most connections per client IP (IPv6 by /64), past it `503`; 0 means
    /// unlimited. Default 32 (SPEC §9 `HTTP_MAX_CONNECTIONS_PER_IP`), so one
    /// address cannot lock the scrapers and probes out.
    pub(crate) max_connections_per_ip: usize,
    /// Peers exempt from the per-IP limit; for them the client of each
    /// request is the one its `X-Forwarded-For` names, and that client is
    /// held to the limit (SPEC §9 `LIVE_TRUSTED_PROXIES`). Default none.
    pub(crate) trusted_proxies: TrustedProxies,
    /// Time allowed for a request body, counted from the end of its head.
    /// Default 10 s; raise it for large ingest bodies on slow links. Must
    /// not be zero.
    pub(crate) read_timeout: Duration,
    /// Time allowed for writing one whole response, however slowly the
    /// peer reads (SPEC §9 `HTTP_WRITE_TIMEOUT_MS`): a deadline for the
    /// response, not for each `write`, so a reader taking a few bytes now
    /// and then cannot hold the thread for long. Default 30 s. Must not be
    /// zero.
    pub(crate) write_timeout: Duration,
    /// The `Host` names answered; others get `421` (SPEC §9). Default: any.
    pub(crate) hosts: HostRule,
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
    /// Not a limit: the port's TLS (`TLS_CERT_FILE`, `HTTP_TLS`); `None`
    /// serves plain HTTP. The TLS handshake is part of the first head, due
    /// within `head_timeout` of the accept.
    pub(crate) tls: Option<Tls>,
}

impl PortLimits {
    /// The bounds of one request body.
    fn body(&self) -> BodyLimits {
        BodyLimits {
            max_body_bytes: self.max_body_bytes,
            max_trailer_bytes: self.max_head_bytes,
            timeout: self.read_timeout,
        }
    }
}

impl Default for PortLimits {
    fn default() -> Self {
        PortLimits {
            max_body_bytes: 8 * 1024 * 1024,
            max_head_bytes: 16 * 1024,
            max_connections: 256,
            max_connections_per_ip: 32,
            trusted_proxies: TrustedProxies::default(),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            hosts: HostRule::default(),
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            tls: None,
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
    shared: Arc<PortState>,
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
        limits: PortLimits,
        handler: Arc<dyn Handler>,
        refused: Option<IntCounterVec>,
    ) -> io::Result<HttpServer> {
        if limits.read_timeout.is_zero()
            || limits.write_timeout.is_zero()
            || limits.idle_timeout.is_zero()
            || limits.head_timeout.is_zero()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "http limits: read_timeout, write_timeout, head_timeout and idle_timeout must \
                 be positive",
            ));
        }
        let rules = Rules {
            max_connections: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            max_pending_per_ip: 0,
            trusted: limits.trusted_proxies.clone(),
            evict_idle: true,
        };
        let admission = Admission::new("http", rules, refused);
        let shared = Arc::new(PortState {
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

/// State shared by the server handle, the accept thread and the connection
/// threads.
struct PortState {
    /// The limits given to `start`.
    limits: PortLimits,
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
    shared: Arc<PortState>,
    /// Thread names are `http-<u32>`: at most 15 bytes, wrapping after 2^32.
    counter: u32,
}

impl Port for HttpPort {
    fn refusal(&self, why: Refusal) -> Vec<u8> {
        // The accept thread does no TLS handshake: a TLS port's refusal is
        // a close.
        if self.shared.limits.tls.is_some() {
            return Vec::new();
        }
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
            let mut stream = match Stream::new(stream, shared.limits.tls.as_ref()) {
                Ok(stream) => stream,
                Err(e) => {
                    warn!("http: {remote} dropped: cannot set up TLS: {e}");
                    return;
                }
            };
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
    shared: &PortState,
    slot: &mut Slot,
    stream: &mut Stream,
    remote: SocketAddr,
    accepted_at: Instant,
) -> String {
    let limits = &shared.limits;
    // Under TLS, the handshake first: part of the first head's time.
    if let Err(e) = stream.handshake(accepted_at + limits.head_timeout) {
        if matches!(e, HandshakeError::Timeout) {
            shared.admission.refused(Refusal::HeadTimeout, remote.ip());
        }
        return e.to_string();
    }
    // A bound for the writes outside `write_all_by` (a `100 Continue`).
    if let Err(e) = stream.set_write_timeout(Some(limits.write_timeout)) {
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
                    reject(stream, status, &e.to_string(), limits.write_timeout);
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
                reject(stream, 503, "too many connections from this client", limits.write_timeout);
                return format!("refused: {why}");
            }
        };
        let keep_alive = wants_keep_alive(&head);
        let version = head.version;
        let method = head.method.clone();
        let path = head.path.clone();

        // The head alone may settle the request (a `Host` this port does
        // not answer, credentials, content type): then no `100 Continue`
        // goes out and no body byte is read.
        let early = if limits.hosts.allows(head.header("host")) {
            match catch_unwind(AssertUnwindSafe(|| shared.handler.check_head(&head, remote))) {
                Ok(early) => early,
                Err(_) => {
                    warn!("http: {client} head check panicked on {method} {path}");
                    Some(
                        Response::text(500, "internal server error\n")
                            .with_header("Connection", "close"),
                    )
                }
            }
        } else {
            Some(Response::misdirected())
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
                let body = match read_body(stream, &mut buf, &head, &limits.body()) {
                    Ok(body) => body,
                    Err(e) => {
                        if let Some(status) = e.status() {
                            reject(stream, status, &e.to_string(), limits.write_timeout);
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
        let written = write_all_by(
            stream,
            &encode_response(&resp, conn, with_body),
            Instant::now() + limits.write_timeout,
        );
        if let Err(e) = written {
            return format!("write: {e}");
        }
        // `write_all_by` left the time it had left as the socket's timeout:
        // restore the whole bound for the next request's `100 Continue`.
        if let Err(e) = stream.set_write_timeout(Some(limits.write_timeout)) {
            return format!("set_write_timeout: {e}");
        }
        if close {
            linger_close(stream);
            return "closed after response".to_owned();
        }
        head_start = Instant::now();
    }
}

/// Answers an unusable request with `status` and closes the connection.
fn reject(stream: &mut Stream, status: u16, detail: &str, write_timeout: Duration) {
    let resp = Response::text(status, format!("{detail}\n"));
    let bytes = encode_response(&resp, ConnectionHeader::Close, true);
    if write_all_by(stream, &bytes, Instant::now() + write_timeout).is_ok() {
        linger_close(stream);
    }
}

/// Writes all of `bytes` by `deadline`: the socket's write timeout is set to
/// the time left before each `write`, so a peer that reads a few bytes now
/// and then cannot stretch one response past the deadline (SPEC §9
/// `HTTP_WRITE_TIMEOUT_MS`), as a per-write timeout would let it.
///
/// # Errors
/// The deadline passes (`TimedOut`) or the socket fails.
fn write_all_by(stream: &mut Stream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    // Under TLS the records of the last write may still wait in the
    // session: `flush` sends them, under the same deadline.
    let mut flushed = false;
    while !flushed {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "response not taken in time"));
        }
        stream.set_write_timeout(Some(left))?;
        let step = if bytes.is_empty() { stream.flush().map(|()| 0) } else { stream.write(bytes) };
        match step {
            Ok(0) if bytes.is_empty() => flushed = true,
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = bytes.get(n..).unwrap_or_default(),
            // The loop checks the clock.
            Err(e) if is_timeout_or_interrupt(&e) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Half-closes, then discards what the peer still sends for a moment, so the
/// final close does not turn into an RST that destroys our last response.
fn linger_close(stream: &mut Stream) {
    stream.close_notify();
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

#[cfg(test)]
mod tests {
    use super::*;

    use std::io::Read;

    use crate::http_codec::{CONTINUE_100, find_header};

    use std::sync::mpsc;

    /// Limits small enough for tests to hit them quickly.
    fn test_limits() -> PortLimits {
        PortLimits {
            max_body_bytes: 1024,
            max_head_bytes: 4096,
            max_connections: 8,
            max_connections_per_ip: 0,
            trusted_proxies: TrustedProxies::default(),
            read_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            hosts: HostRule::default(),
            head_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(5),
            tls: None,
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

    fn start(limits: PortLimits) -> HttpServer {
        start_with(limits, Arc::new(echo))
    }

    /// Binds 127.0.0.1:0 before starting, so the port is ready on return.
    fn start_with(limits: PortLimits, handler: Arc<dyn Handler>) -> HttpServer {
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
        let server = start_with(
            PortLimits { max_body_bytes: 10_000_000, ..test_limits() },
            Arc::new(Guarded),
        );
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
        let limits = PortLimits {
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
    fn a_host_the_port_does_not_answer_gets_421_before_any_body_byte() {
        let hosts = HostRule::new(&[], "127.0.0.1".parse().expect("ip"));
        let server = start(PortLimits { hosts, ..test_limits() });
        let mut c = Client::connect(&server);
        c.send(b"GET /a HTTP/1.1\r\nHost: rebind.example:80\r\n\r\n");
        let r = c.reply(false);
        assert_eq!((r.status, r.header("connection")), (421, None));
        // Bodiless: the connection goes on, and a loopback name is served.
        c.send(b"GET /b HTTP/1.1\r\nHost: localhost:9090\r\n\r\n");
        assert_eq!(c.reply(false).text(), "GET /b ");
        // With a body announced, that body is never read: close.
        c.send(b"POST /c HTTP/1.1\r\nHost: rebind.example\r\nContent-Length: 5\r\n\r\n");
        let r = c.reply(false);
        assert_eq!((r.status, r.header("connection")), (421, Some("close")));
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
        let server =
            start(PortLimits { idle_timeout: Duration::from_millis(200), ..test_limits() });
        let mut c = Client::connect(&server);
        c.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        c.reply(false);
        let started = Instant::now();
        assert!(c.at_eof());
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn slowloris_head_is_cut_at_the_deadline() {
        let server = start(PortLimits { head_timeout: Duration::from_secs(1), ..test_limits() });
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
        let server =
            start(PortLimits { head_timeout: Duration::from_millis(300), ..test_limits() });
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
    fn a_full_port_closes_its_longest_idle_connection_else_503() {
        // `/hold` stays in the handler until released.
        let (entered_tx, entered_rx) = mpsc::channel();
        let released = Arc::new(AtomicBool::new(false));
        let release = Arc::clone(&released);
        let handler = move |req: Request| {
            if req.path == "/hold" {
                let _ = entered_tx.send(());
                wait_until(Instant::now() + Duration::from_secs(10), || {
                    released.load(Ordering::SeqCst)
                });
            }
            echo(req)
        };
        let limits = PortLimits { max_connections: 3, ..test_limits() };
        let server = start_with(limits, Arc::new(handler));
        let mut idle = Client::connect(&server);
        idle.send(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(idle.reply(false).status, 200);
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut c = Client::connect(&server);
            c.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
            entered_rx.recv_timeout(Duration::from_secs(5)).expect("in the handler");
            held.push(c);
        }

        // Full: the kept-alive connection makes room, the busy ones stay.
        // (Retried: the idle thread marks itself idle an instant after its
        // response, which the client may read first.)
        let mut third = None;
        let served = wait_until(Instant::now() + Duration::from_secs(5), || {
            let mut c = Client::connect(&server);
            c.send(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n");
            let ok = entered_rx.recv_timeout(Duration::from_millis(500)).is_ok();
            third = Some(c);
            ok
        });
        assert!(served, "no room made for a new connection");
        assert!(idle.at_eof(), "the idle connection was closed");

        // Every connection busy: 503.
        let mut refused = Client::connect(&server);
        let r = refused.reply(false);
        assert_eq!((r.status, r.header("retry-after")), (503, Some("1")));
        assert!(refused.at_eof());

        release.store(true, Ordering::SeqCst);
        for mut c in held.into_iter().chain(third) {
            assert_eq!(c.reply(false).text(), "GET /hold ");
        }
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
    fn server_handle_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HttpServer>();
    }
}
