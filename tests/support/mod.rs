//! Test harness shared by every integration module.
//!
//! - [`Server`]: an in-process livecast on free ports (`127.0.0.1:0`), built
//!   from `Config::default()` plus a closure; stopped when dropped.
//! - [`Client`]: a tungstenite client whose reads poll against a deadline
//!   and skip Ping/Pong, so a silent server fails the test with a message
//!   instead of hanging it.
//! - [`RawWs`]: a hand-rolled WebSocket peer over a bare `TcpStream`, for
//!   what a well-behaved client library will not do (never answer pings,
//!   stop reading, look at the exact frames on the wire).
//! - [`http_request`] and friends: a raw HTTP/1.1 client (no dependency).
//! - [`Binary`]: the `livecast` executable, with its banner parsed.
//! - [`wait_until`]/[`wait_for`]: polling against a deadline; the only way
//!   tests wait for the server (no bare sleeps as synchronisation).
//! - [`metric`]: a Prometheus text-format sample parser.
//! - [`TempDir`]: a directory unique per test (pid + counter).

#![allow(dead_code)] // each test module uses a different subset

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tungstenite::client::IntoClientRequest;
use tungstenite::protocol::CloseFrame;
use tungstenite::{HandshakeError, Message, WebSocket};

/// How long a test waits for something that should happen "promptly".
/// Generous on purpose: the CI machine has 2 cores and runs tests in
/// parallel; a passing run never waits this long.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polling period inside deadline loops.
const POLL: Duration = Duration::from_millis(10);

/// Read timeout of client sockets: the granularity of deadline checks.
const READ_TICK: Duration = Duration::from_millis(50);

// ---------------------------------------------------------------------------
// Waiting

/// Polls `cond` every few milliseconds until it holds; panics naming `what`
/// once `timeout` has passed.
#[track_caller]
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(timeout, what, || cond().then_some(()));
}

/// Polls `f` until it returns `Some`, and returns that value; panics naming
/// `what` once `timeout` has passed.
#[track_caller]
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= end {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(POLL);
    }
}

/// Spawns a named test thread (the project bans bare `thread::spawn`;
/// names also make a hung test readable in `top -H` or `gdb`).
pub fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    thread::Builder::new().name(name.to_owned()).spawn(f).expect("spawn test thread")
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    i64::try_from(d.as_millis()).expect("ms fit in i64")
}

/// A valid position of `device` in `event`, with a `seq` field that passes
/// through untouched, so tests can check order and completeness.
pub fn pos(event: &str, device: &str, seq: u64) -> Value {
    json!({
        "eventId": event,
        "deviceId": device,
        "lat": 46.52,
        "lon": 6.63,
        "ts": now_ms(),
        "seq": seq,
    })
}

/// The `seq` field of a position frame.
#[track_caller]
pub fn seq_of(position: &Value) -> u64 {
    position["seq"].as_u64().unwrap_or_else(|| panic!("position without a seq: {position}"))
}

// ---------------------------------------------------------------------------
// Temp dirs

static TEMP_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory unique to one test, removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `livecast-tests-<pid>-<n>-<tag>` under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        let n = TEMP_COUNTER.fetch_add(1, Ordering::SeqCst);
        let path =
            std::env::temp_dir().join(format!("livecast-tests-{}-{n}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `contents` to `name` in this directory; returns the path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

// ---------------------------------------------------------------------------
// In-process server

/// A livecast started in this process on free ports.
#[derive(Debug)]
pub struct Server {
    inner: Option<livecast::Server>,
    /// The WebSocket listener.
    pub ws: SocketAddr,
    /// The HTTP (metrics, ingest, debug) listener.
    pub http: SocketAddr,
}

impl Server {
    /// A server with the harness defaults.
    pub fn start() -> Server {
        Server::with(|_| {})
    }

    /// A server with the harness defaults (free ports, short drain) and
    /// then whatever `f` changes.
    pub fn with(f: impl FnOnce(&mut livecast::Config)) -> Server {
        let mut cfg = livecast::Config::default();
        cfg.ws_port = 0;
        cfg.http_port = 0;
        cfg.drain_timeout = Duration::from_secs(2);
        f(&mut cfg);
        let inner = livecast::start(cfg).unwrap_or_else(|e| panic!("livecast::start: {e:?}"));
        let ws = inner.ws_addr();
        let http = inner.http_addr();
        assert_ne!(ws.port(), 0, "ws_addr() must report the bound port");
        assert_ne!(http.port(), 0, "http_addr() must report the bound port");
        Server { inner: Some(inner), ws, http }
    }

    /// Graceful stop (consumes the server).
    pub fn stop(mut self, timeout: Duration) {
        let inner = self.inner.take().expect("server not stopped yet");
        inner.stop(timeout);
    }

    /// Takes the library handle out (for tests that call `stop` themselves
    /// on another thread).
    pub fn into_inner(mut self) -> livecast::Server {
        self.inner.take().expect("server not stopped yet")
    }

    /// A WebSocket client on `/`, no credentials.
    #[track_caller]
    pub fn connect(&self) -> Client {
        Client::connect(self.ws, "/", &[]).unwrap_or_else(|e| panic!("ws connect: {e}"))
    }

    /// A WebSocket client on `path` with extra request headers.
    pub fn connect_with(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        Client::connect(self.ws, path, headers)
    }

    /// `GET path` on the HTTP port.
    #[track_caller]
    pub fn get(&self, path: &str) -> Response {
        http_request(self.http, "GET", path, &[], b"")
    }

    /// `GET path` on the HTTP port, parsed as JSON (status must be 200).
    #[track_caller]
    pub fn get_json(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// A plain HTTP request to the WebSocket port.
    #[track_caller]
    pub fn ws_request(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        http_request(self.ws, "GET", path, headers, b"")
    }

    /// A well-formed upgrade request to the WebSocket port plus `headers`;
    /// returns the response head (the connection is then dropped).
    #[track_caller]
    pub fn upgrade(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut all = upgrade_headers();
        all.extend_from_slice(headers);
        http_request(self.ws, "GET", path, &all, b"")
    }

    /// `POST /ingest` with `body`, `Content-Type: content_type` and `headers`.
    #[track_caller]
    pub fn post_ingest(
        &self,
        body: &[u8],
        content_type: &str,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut all = vec![("Content-Type", content_type)];
        all.extend_from_slice(headers);
        http_request(self.http, "POST", "/ingest", &all, body)
    }

    /// Posts `positions` (an array or one object) as JSON; asserts 202 and
    /// returns the answer.
    #[track_caller]
    pub fn ingest(&self, positions: &Value) -> Value {
        let body = serde_json::to_vec(positions).expect("serialise");
        let r = self.post_ingest(&body, "application/json", &[]);
        assert_eq!(r.status, 202, "POST /ingest: {}", r.text());
        r.json()
    }

    /// Posts `positions` and asserts every one was accepted.
    #[track_caller]
    pub fn ingest_ok(&self, positions: &Value) {
        let n = positions.as_array().map_or(1, Vec::len);
        let answer = self.ingest(positions);
        assert_eq!(answer["accepted"], json!(n), "ingest answer: {answer}");
        assert_eq!(answer["rejected"], json!([]), "ingest answer: {answer}");
    }

    /// The `/metrics` text.
    #[track_caller]
    pub fn metrics(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics");
        r.text()
    }

    /// One metric's value (sum of the samples matching `labels`; 0 if none).
    #[track_caller]
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.metrics(), name, labels)
    }

    /// Waits until a metric equals `want` (counters may move just after
    /// the frame a client saw); panics with the last value otherwise.
    #[track_caller]
    pub fn expect_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        let end = Instant::now() + DEADLINE;
        loop {
            let last = self.metric(name, labels);
            if last == want {
                return;
            }
            if Instant::now() >= end {
                panic!("metric {name}{labels:?} is {last}, expected {want}");
            }
            thread::sleep(POLL);
        }
    }

    /// `GET /debug/connections`, as a vector of objects.
    #[track_caller]
    pub fn connections(&self) -> Vec<Value> {
        let v = self.get_json("/debug/connections");
        v.as_array().unwrap_or_else(|| panic!("/debug/connections is not an array: {v}")).clone()
    }

    /// Waits until `/debug/connections` lists `n` connections; returns them.
    #[track_caller]
    pub fn wait_connections(&self, n: usize) -> Vec<Value> {
        wait_for(DEADLINE, &format!("{n} connections in /debug/connections"), || {
            let c = self.connections();
            (c.len() == n).then_some(c)
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.stop(Duration::from_secs(2));
        }
    }
}

// ---------------------------------------------------------------------------
// WebSocket client (tungstenite)

/// Why a read did not produce a message.
#[derive(Debug)]
pub enum RecvError {
    /// Nothing arrived before the deadline.
    Timeout,
    /// The connection is gone (after or without a close frame).
    Closed(String),
}

/// A tungstenite client with deadline-bounded reads.
#[derive(Debug)]
pub struct Client {
    ws: WebSocket<TcpStream>,
    /// The client's own address (what the server sees as `remoteAddr`).
    pub local_addr: SocketAddr,
}

impl Client {
    /// Connects to `ws://addr{path}` with extra `headers`.
    pub fn connect(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<Client, tungstenite::Error> {
        let mut req = format!("ws://{addr}{path}").into_client_request()?;
        for (k, v) in headers {
            req.headers_mut().append(
                tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("header name"),
                tungstenite::http::HeaderValue::from_str(v).expect("header value"),
            );
        }
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(DEADLINE))?;
        let local_addr = stream.local_addr()?;
        let (ws, _resp) = tungstenite::client(req, stream).map_err(|e| match e {
            HandshakeError::Failure(e) => e,
            HandshakeError::Interrupted(_) => tungstenite::Error::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake timed out",
            )),
        })?;
        ws.get_ref().set_read_timeout(Some(READ_TICK))?;
        Ok(Client { ws, local_addr })
    }

    /// Sends a message (write + flush).
    pub fn try_send(&mut self, msg: Message) -> Result<(), tungstenite::Error> {
        self.ws.send(msg)
    }

    /// Sends a message; panics on failure.
    #[track_caller]
    pub fn send(&mut self, msg: Message) {
        self.try_send(msg).unwrap_or_else(|e| panic!("ws send: {e}"));
    }

    /// Sends a text frame.
    #[track_caller]
    pub fn send_text(&mut self, text: &str) {
        self.send(Message::text(text));
    }

    /// Sends a JSON value as a text frame.
    #[track_caller]
    pub fn send_json(&mut self, v: &Value) {
        self.send_text(&v.to_string());
    }

    /// The next message of any kind (Ping/Pong included) before `timeout`.
    /// Keeps calling `read`, so tungstenite answers pings and closes.
    pub fn next_message(&mut self, timeout: Duration) -> Result<Message, RecvError> {
        let end = Instant::now() + timeout;
        loop {
            match self.ws.read() {
                Ok(m) => return Ok(m),
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
                {
                    if Instant::now() >= end {
                        return Err(RecvError::Timeout);
                    }
                }
                Err(e) => return Err(RecvError::Closed(e.to_string())),
            }
        }
    }

    /// The next data or close message (Ping/Pong skipped) before `timeout`.
    pub fn next_data(&mut self, timeout: Duration) -> Result<Message, RecvError> {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_message(left)? {
                Message::Ping(_) | Message::Pong(_) => {}
                m => return Ok(m),
            }
        }
    }

    /// The next JSON text message within [`DEADLINE`]; panics clearly on
    /// a timeout, a close or a non-JSON frame.
    #[track_caller]
    pub fn recv_json(&mut self) -> Value {
        self.recv_json_within(DEADLINE)
    }

    /// [`Client::recv_json`] with its own timeout.
    #[track_caller]
    pub fn recv_json_within(&mut self, timeout: Duration) -> Value {
        match self.next_data(timeout) {
            Ok(Message::Text(t)) => serde_json::from_str(t.as_str())
                .unwrap_or_else(|e| panic!("server sent invalid JSON ({e}): {}", t.as_str())),
            Ok(other) => panic!("expected a JSON text frame, got {other:?}"),
            Err(RecvError::Timeout) => panic!("no message from the server within {timeout:?}"),
            Err(RecvError::Closed(e)) => {
                panic!("connection closed while waiting for a message: {e}")
            }
        }
    }

    /// The next message, which must be of `type` `ty`.
    #[track_caller]
    pub fn recv_type(&mut self, ty: &str) -> Value {
        let v = self.recv_json();
        assert_eq!(v["type"], ty, "expected a {ty:?} message, got {v}");
        v
    }

    /// The next message, which must be a `position`.
    #[track_caller]
    pub fn recv_position(&mut self) -> Value {
        self.recv_type("position")
    }

    /// Subscribes to `event`; returns the snapshot (`positions`).
    #[track_caller]
    pub fn subscribe(&mut self, event: &str) -> Vec<Value> {
        self.send_json(&json!({"type": "subscribe", "eventId": event}));
        let v = self.recv_json();
        assert_eq!(v["type"], "subscribed", "answer to subscribe {event:?}: {v}");
        assert_eq!(v["eventId"], event, "answer to subscribe {event:?}: {v}");
        v["positions"]
            .as_array()
            .unwrap_or_else(|| panic!("subscribed without a positions array: {v}"))
            .clone()
    }

    /// Unsubscribes from `event` and checks the answer.
    #[track_caller]
    pub fn unsubscribe(&mut self, event: &str) {
        self.send_json(&json!({"type": "unsubscribe", "eventId": event}));
        let v = self.recv_json();
        assert_eq!(v, json!({"type": "unsubscribed", "eventId": event}));
    }

    /// Sends `msg` and expects an `error` answer with `code`; returns it.
    #[track_caller]
    pub fn expect_error(&mut self, msg: Message, code: &str) -> Value {
        let shown = format!("{msg:?}");
        self.send(msg);
        let v = self.recv_json();
        assert_eq!(v["type"], "error", "answer to {shown}: {v}");
        assert_eq!(v["code"], code, "answer to {shown}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {v}"
        );
        v
    }

    /// Reads (skipping data and pings) until the server's close frame;
    /// panics if the connection ends without one or nothing comes in time.
    #[track_caller]
    pub fn expect_close(&mut self, timeout: Duration) -> CloseFrame {
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_message(left) {
                Ok(Message::Close(Some(f))) => return f,
                Ok(Message::Close(None)) => panic!("close frame without a code"),
                Ok(_) => {}
                Err(RecvError::Timeout) => panic!("no close frame within {timeout:?}"),
                Err(RecvError::Closed(e)) => panic!("connection ended without a close frame: {e}"),
            }
        }
    }

    /// Reads pings for `d` (panics on close or on a data frame); returns how
    /// many pings arrived. tungstenite answers each with a pong.
    #[track_caller]
    pub fn count_pings_for(&mut self, d: Duration) -> usize {
        let end = Instant::now() + d;
        let mut pings = 0;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return pings;
            }
            match self.next_message(left) {
                Ok(Message::Ping(_)) => pings += 1,
                Ok(Message::Pong(_)) => {}
                Ok(other) => panic!("unexpected message while idle: {other:?}"),
                Err(RecvError::Timeout) => return pings,
                Err(RecvError::Closed(e)) => panic!("idle connection was closed: {e}"),
            }
        }
    }

    /// Closes from the client side (close 1000) and waits for the server's
    /// reply, so that the server sees a clean `client-close`.
    pub fn close(mut self) {
        let _ = self.ws.close(None);
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            match self.ws.read() {
                Ok(_) => {}
                Err(tungstenite::Error::Io(e))
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        }
    }

    /// The raw socket (for socket options).
    pub fn stream(&self) -> &TcpStream {
        self.ws.get_ref()
    }
}

/// The `retry-after-ms` of a shutdown close reason.
#[track_caller]
pub fn retry_after_ms(reason: &str) -> u64 {
    let n = reason
        .strip_prefix("server shutting down; retry-after-ms=")
        .unwrap_or_else(|| panic!("unexpected shutdown close reason {reason:?}"));
    n.parse().unwrap_or_else(|_| panic!("retry-after-ms is not a number in {reason:?}"))
}

// ---------------------------------------------------------------------------
// Raw WebSocket peer

/// One frame as read off the wire (server frames are unmasked).
#[derive(Debug, Clone)]
pub struct Frame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;

    /// The (code, reason) of a close frame.
    #[track_caller]
    pub fn close_code_reason(&self) -> (u16, String) {
        assert_eq!(self.opcode, Frame::CLOSE, "not a close frame: {self:?}");
        assert!(self.payload.len() >= 2, "close frame without a code");
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        (code, String::from_utf8_lossy(&self.payload[2..]).into_owned())
    }

    /// The payload of a text frame as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        assert_eq!(self.opcode, Frame::TEXT, "not a text frame: opcode {}", self.opcode);
        serde_json::from_slice(&self.payload).expect("text frame is JSON")
    }
}

/// What ended a raw read.
#[derive(Debug)]
pub enum RawEnd {
    /// Orderly EOF (FIN).
    Eof,
    /// Reset or another socket error.
    Error(io::ErrorKind),
}

/// A WebSocket peer written by hand: it answers nothing by itself.
#[derive(Debug)]
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// The key of every raw handshake (RFC 6455 §1.3's example).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Headers of a valid upgrade request (Host is added by [`http_request`]).
pub fn upgrade_headers() -> Vec<(&'static str, &'static str)> {
    vec![
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", WS_KEY),
        ("Sec-WebSocket-Version", "13"),
    ]
}

impl RawWs {
    /// Connects and completes the handshake on `path`; panics unless 101.
    #[track_caller]
    pub fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        RawWs::handshake(stream, addr, path)
    }

    /// Connects with a receive buffer of about `rcvbuf` bytes, set before
    /// `connect` so that the TCP window is small from the first segment
    /// (shrinking it afterwards makes the kernel drop in-flight data and
    /// stall on retransmission timers). Panics unless 101.
    #[track_caller]
    pub fn connect_small_rcvbuf(addr: SocketAddr, path: &str, rcvbuf: usize) -> RawWs {
        use rustix::net::{AddressFamily, SocketType, sockopt};
        let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
        let fd = rustix::net::socket(family, SocketType::STREAM, None).expect("socket");
        sockopt::set_socket_recv_buffer_size(&fd, rcvbuf).expect("SO_RCVBUF");
        rustix::net::connect(&fd, &addr).expect("connect");
        RawWs::handshake(TcpStream::from(fd), addr, path)
    }

    /// Completes the handshake over an already connected `stream`.
    #[track_caller]
    pub fn handshake(mut stream: TcpStream, addr: SocketAddr, path: &str) -> RawWs {
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        let mut req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n");
        for (k, v) in upgrade_headers() {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).expect("send upgrade");
        let (head, rest) = read_head(&mut stream).expect("read upgrade response");
        let status = parse_status(&head);
        assert_eq!(status, 101, "raw upgrade refused: {head}");
        RawWs { stream, buf: rest }
    }

    /// Sends a masked text frame.
    pub fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(Frame::TEXT, text.as_bytes())
    }

    /// Sends one masked frame with FIN set.
    pub fn send_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut f = vec![0x80 | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | u8::try_from(len).expect("small"));
        } else if len <= 0xFFFF {
            f.push(0x80 | 126);
            f.extend_from_slice(&u16::try_from(len).expect("fits").to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [0x12u8, 0x34, 0x56, 0x78];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&f)
    }

    /// Parses one complete frame from the buffer, if there is one.
    fn parse_frame(&mut self) -> Option<Frame> {
        let b = &self.buf;
        if b.len() < 2 {
            return None;
        }
        let fin = b[0] & 0x80 != 0;
        let opcode = b[0] & 0x0F;
        let masked = b[1] & 0x80 != 0;
        let mut len = u64::from(b[1] & 0x7F);
        let mut at = 2;
        if len == 126 {
            if b.len() < 4 {
                return None;
            }
            len = u64::from(u16::from_be_bytes([b[2], b[3]]));
            at = 4;
        } else if len == 127 {
            if b.len() < 10 {
                return None;
            }
            len = u64::from_be_bytes(b[2..10].try_into().expect("8 bytes"));
            at = 10;
        }
        let mask = if masked {
            if b.len() < at + 4 {
                return None;
            }
            let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
            at += 4;
            Some(m)
        } else {
            None
        };
        let len = usize::try_from(len).expect("frame length fits usize");
        if b.len() < at + len {
            return None;
        }
        let mut payload = b[at..at + len].to_vec();
        if let Some(m) = mask {
            for (i, x) in payload.iter_mut().enumerate() {
                *x ^= m[i % 4];
            }
        }
        self.buf.drain(..at + len);
        Some(Frame { fin, opcode, payload })
    }

    /// The next frame, `Err(RawEnd)` if the connection ended, or
    /// `Ok(None)` if nothing complete arrived before `timeout`.
    pub fn read_frame(&mut self, timeout: Duration) -> Result<Option<Frame>, RawEnd> {
        let end = Instant::now() + timeout;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            if let Some(f) = self.parse_frame() {
                return Ok(Some(f));
            }
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.stream.set_read_timeout(Some(left.min(READ_TICK))).expect("read timeout");
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(RawEnd::Eof),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(RawEnd::Error(e.kind())),
            }
        }
    }

    /// The next text frame as JSON (pings skipped; no pong is sent).
    #[track_caller]
    pub fn recv_json(&mut self) -> Value {
        let end = Instant::now() + DEADLINE;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(Some(f)) if f.opcode == Frame::TEXT => return f.json(),
                Ok(Some(f)) if f.opcode == Frame::PING || f.opcode == Frame::PONG => {}
                Ok(Some(f)) => panic!("expected a text frame, got {f:?}"),
                Ok(None) => panic!("no frame within {DEADLINE:?}"),
                Err(e) => panic!("connection ended: {e:?}"),
            }
        }
    }

    /// Reads every frame until the connection ends; returns the frames and
    /// how it ended. Panics if it is still open after `timeout`.
    #[track_caller]
    pub fn read_to_end(&mut self, timeout: Duration) -> (Vec<Frame>, RawEnd) {
        let (frames, end) = self.read_until_end(timeout);
        let Some(end) = end else {
            let last = frames.last().map(|f| (f.opcode, String::from_utf8_lossy(&f.payload)));
            panic!(
                "connection still open after {timeout:?} ({} frames read, the last {last:?})",
                frames.len()
            )
        };
        (frames, end)
    }

    /// Reads every frame until the connection ends (`Some(how)`) or
    /// `timeout` passes (`None`).
    pub fn read_until_end(&mut self, timeout: Duration) -> (Vec<Frame>, Option<RawEnd>) {
        let end = Instant::now() + timeout;
        let mut frames = Vec::new();
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => return (frames, None),
                Err(e) => return (frames, Some(e)),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1 client

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics showing the body otherwise.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("body of the {} response is not JSON ({e}): {:?}", self.status, self.text())
        })
    }
}

/// Sends one request (`Connection: close`, `Content-Length` when there is a
/// body) and reads the response.
#[track_caller]
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_http_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http_request`] returning I/O errors instead of panicking.
pub fn try_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n");
    let mut has_connection = false;
    let mut has_length = false;
    for (k, v) in headers {
        has_connection |= k.eq_ignore_ascii_case("connection");
        has_length |=
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_connection {
        req.push_str("Connection: close\r\n");
    }
    if !has_length && (!body.is_empty() || method == "POST") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    let mut raw = req.into_bytes();
    raw.extend_from_slice(body);
    try_http_raw(addr, &raw)
}

/// Sends `raw` bytes as they are and reads one response.
#[track_caller]
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> Response {
    try_http_raw(addr, raw).unwrap_or_else(|e| panic!("raw request to {addr}: {e}"))
}

/// [`http_raw`] returning I/O errors.
pub fn try_http_raw(addr: SocketAddr, raw: &[u8]) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(DEADLINE))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    // A server may answer (413, 401) and close before reading all of a
    // body: a failed write is not an error as long as a response comes.
    let write_result = stream.write_all(raw);
    let (head, rest) = match read_head(&mut stream) {
        Ok(x) => x,
        Err(e) => {
            write_result?;
            return Err(e);
        }
    };
    read_response(&mut stream, &head, rest)
}

/// Reads up to the end of an HTTP head; returns it and the bytes after it.
fn read_head(stream: &mut TcpStream) -> io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).into_owned();
            return Ok((head, buf[i + 4..].to_vec()));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "connection closed before a full response head: {:?}",
                    String::from_utf8_lossy(&buf)
                ),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[track_caller]
fn parse_status(head: &str) -> u16 {
    let line = head.lines().next().unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"))
}

fn read_response(stream: &mut TcpStream, head: &str, mut rest: Vec<u8>) -> io::Result<Response> {
    let status = parse_status(head);
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let get = |name: &str| {
        headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
    };
    let body = if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        read_chunked(stream, rest)?
    } else if let Some(len) = get("content-length") {
        let len: usize = len.parse().map_err(|_| io::Error::other("bad content-length"))?;
        while rest.len() < len {
            let mut chunk = vec![0u8; len - rest.len()];
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short"));
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        rest.truncate(len);
        rest
    } else {
        stream.read_to_end(&mut rest)?;
        rest
    };
    Ok(Response { status, headers, body })
}

fn read_chunked(stream: &mut TcpStream, mut buf: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    let mut fill = |buf: &mut Vec<u8>| -> io::Result<()> {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "chunked body cut short"));
        }
        buf.extend_from_slice(&chunk[..n]);
        Ok(())
    };
    loop {
        let line_end = loop {
            if let Some(i) = find(&buf, b"\r\n") {
                break i;
            }
            fill(&mut buf)?;
        };
        let size_line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size_line:?}")))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            return Ok(body);
        }
        while buf.len() < size + 2 {
            fill(&mut buf)?;
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

// ---------------------------------------------------------------------------
// Prometheus text

/// One sample line: name, labels, value.
fn parse_sample(line: &str) -> Option<(&str, HashMap<String, String>, f64)> {
    if line.starts_with('#') || line.trim().is_empty() {
        return None;
    }
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    let mut labels = HashMap::new();
    let mut rest = &line[name_end..];
    if rest.starts_with('{') {
        let mut chars = rest[1..].char_indices();
        let mut key = String::new();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '}' => {
                    end = Some(i + 2);
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    // value in quotes, with \" \\ \n escapes
                    let (_, q) = chars.next()?;
                    if q != '"' {
                        return None;
                    }
                    let mut val = String::new();
                    loop {
                        let (_, c) = chars.next()?;
                        match c {
                            '\\' => match chars.next()?.1 {
                                'n' => val.push('\n'),
                                o => val.push(o),
                            },
                            '"' => break,
                            o => val.push(o),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), val);
                }
                o => key.push(o),
            }
        }
        rest = &rest[end?..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some((name, labels, value))
}

/// The sum of the samples of `name` whose labels include `labels` (0 when
/// there is none: an unlabelled vector child is not printed until used).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_opt(text, name, labels).unwrap_or(0.0)
}

/// Like [`metric`], but `None` when no sample matches.
pub fn metric_opt(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if let Some((n, l, v)) = parse_sample(line)
            && n == name
            && labels.iter().all(|(k, want)| l.get(*k).is_some_and(|got| got == want))
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Whether a metric family `name` appears (a sample of `name`, or of
/// `name_bucket`/`_sum`/`_count` for a histogram).
pub fn metric_present(text: &str, name: &str) -> bool {
    text.lines().filter_map(parse_sample).any(|(n, _, _)| {
        n == name
            || n.strip_prefix(name).is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count"))
    })
}

// ---------------------------------------------------------------------------
// The livecast binary

/// A running `livecast` executable; killed on drop if still running.
#[derive(Debug)]
pub struct Binary {
    pub child: Child,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    stdout: mpsc::Receiver<String>,
    stderr: std::sync::Arc<parking_lot::Mutex<String>>,
}

/// Runs the binary to completion with `env` (and nothing else inherited
/// from the livecast variables); returns (exit code, stdout, stderr).
/// Panics if it runs longer than [`DEADLINE`].
pub fn run_binary(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_livecast"));
    cmd.args(args).env_clear().stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn livecast");
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let t_out = spawn("bin-stdout", move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let t_err = spawn("bin-stderr", move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let Some(status) = wait_child(&mut child, DEADLINE) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("livecast {args:?} still running after {DEADLINE:?}");
    };
    (status.code(), t_out.join().expect("stdout reader"), t_err.join().expect("stderr reader"))
}

/// Waits for `child` to exit, up to `timeout`.
pub fn wait_child(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= end {
            return None;
        }
        thread::sleep(POLL);
    }
}

impl Binary {
    /// Starts the binary on free ports (`LIVE_WS_PORT=0`, `HTTP_PORT=0`)
    /// plus `env`, and parses the two listener lines of its banner.
    pub fn start(env: &[(&str, &str)]) -> Binary {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_livecast"));
        cmd.env_clear()
            .env("LIVE_WS_PORT", "0")
            .env("HTTP_PORT", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn livecast");
        let out = child.stdout.take().expect("stdout");
        let err = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        spawn("bin-stdout", move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining the pipe.
                }
            }
        });
        let stderr = std::sync::Arc::new(parking_lot::Mutex::new(String::new()));
        let stderr2 = stderr.clone();
        spawn("bin-stderr", move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { return };
                let mut s = stderr2.lock();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let end = Instant::now() + DEADLINE;
        let (mut ws, mut http) = (None, None);
        let mut seen = String::new();
        while ws.is_none() || http.is_none() {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    seen.push_str(&line);
                    seen.push('\n');
                    // With TLS the schemes are wss:// and https://.
                    if let Some(a) = banner_addr(&line, "  WebSocket: ws://")
                        .or_else(|| banner_addr(&line, "  WebSocket: wss://"))
                    {
                        ws = Some(a);
                    }
                    if let Some(a) = banner_addr(&line, "  HTTP:      http://")
                        .or_else(|| banner_addr(&line, "  HTTP:      https://"))
                    {
                        http = Some(a);
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "no banner with both listener lines within {DEADLINE:?}; stdout:\n{seen}\nstderr:\n{}",
                        stderr.lock()
                    );
                }
            }
        }
        Binary { child, ws: ws.expect("ws"), http: http.expect("http"), stdout: rx, stderr }
    }

    /// The process id, as a string for `kill`.
    pub fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// Sends `signal` (e.g. `-TERM`) with the `kill` command.
    pub fn signal(&self, signal: &str) {
        let st = Command::new("kill").args([signal, &self.pid()]).status().expect("run kill");
        assert!(st.success(), "kill {signal} {} failed", self.pid());
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().clone()
    }

    /// The names of the process's threads (`/proc/PID/task/*/comm`).
    pub fn thread_names(&self) -> Vec<String> {
        thread_names(&format!("/proc/{}/task", self.child.id()))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses `  WebSocket: ws://IP:PORT/`-style banner lines.
fn banner_addr(line: &str, prefix: &str) -> Option<SocketAddr> {
    let rest = line.strip_prefix(prefix)?;
    let url = rest.split_whitespace().next()?;
    url.trim_end_matches('/').parse().ok()
}

/// The `comm` of every thread under a `/proc/.../task` directory.
pub fn thread_names(task_dir: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(task_dir) else { return Vec::new() };
    dir.filter_map(|e| {
        let e = e.ok()?;
        std::fs::read_to_string(e.path().join("comm")).ok().map(|s| s.trim_end().to_owned())
    })
    .collect()
}
