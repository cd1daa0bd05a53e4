//! The HTTP/1.1 codec both ports speak (RFC 9110, RFC 9112): request heads,
//! body framing, chunked decoding, responses, query decoding.
//!
//! Pure functions and types over a byte stream ([`TimedRead`], `Write`),
//! depending on nothing else in the crate: the ops port's connection
//! threads (`http-<n>`) run it for every request, and the WebSocket port's
//! connection threads (`ws-xxxxxxxx`) for the upgrade and `GET /auth/check`.
//! It owns no thread: it runs on its caller's, and blocks in it.
//!
//! Every blocking read carries a deadline: before each read the stream's
//! timeout is set to the time *left*, so a peer trickling one byte at a
//! time (slowloris) is cut at the deadline instead of resetting it with
//! every byte.
//!
//! Logging is `debug!` at most. Header values and query strings are never
//! logged, and the `Debug` impls of [`Request`] and [`RequestHead`] hide
//! them too: they may carry tokens.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use log::debug;

/// A byte stream whose reads can be bounded in time: a socket, or a test
/// double. The codec's reads take a deadline and set the time left before
/// each `read`.
pub(crate) trait TimedRead: Read {
    /// Makes the following reads give up after `timeout` with
    /// `WouldBlock` or `TimedOut` (`None`: wait forever), as
    /// [`TcpStream::set_read_timeout`].
    ///
    /// # Errors
    /// The stream cannot take a timeout (a closed socket).
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl TimedRead for TcpStream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, timeout)
    }
}

/// What one request body may cost: [`read_body`]'s bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BodyLimits {
    /// Largest body, declared or chunked; more is [`BodyError::TooLarge`],
    /// found before the body is read when declared.
    pub(crate) max_body_bytes: usize,
    /// Largest trailer section of a chunked body (the head's bound).
    pub(crate) max_trailer_bytes: usize,
    /// Time allowed for the whole body, counted from the call.
    pub(crate) timeout: Duration,
}

/// Most header lines accepted in one request head. More are answered like an
/// oversized head (`431`).
const MAX_HEADERS: usize = 100;
/// Bytes asked of the kernel per `read` call.
pub(crate) const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line (size plus extensions) accepted in a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Body bytes allocated up front, whatever the declared length: a peer that
/// declares 8 MiB and sends nothing must not make us reserve 8 MiB.
const BODY_PREALLOC: usize = 64 * 1024;
/// The interim response that lets a client send a body it held back.
pub(crate) const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// One complete request: its head and its decoded body.
pub(crate) struct Request {
    /// The method, as sent (`GET`, `POST`, ...). `HEAD` requests reach the
    /// handler as `HEAD`; the server drops the body from the response.
    pub(crate) method: String,
    /// The request target before `?`, percent-decoding NOT applied.
    pub(crate) path: String,
    /// The raw query string after `?`, if any (decoded by [`RequestHead::query_param`]).
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

/// A response, built by a route (or by a refusal).
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

    /// The `421` of a `Host` the port does not answer (SPEC §9): a page of
    /// a rebinding domain, or a proxy passing on a name missing from
    /// `LIVE_PUBLIC_HOSTS`. Both ports answer it the same way.
    pub(crate) fn misdirected() -> Self {
        Response::text(
            421,
            "misdirected request: this server does not answer for that Host \
             (LIVE_PUBLIC_HOSTS)\n",
        )
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

    /// The token of an `Authorization: Bearer <token>` header (scheme in
    /// any case, surrounding spaces trimmed).
    pub(crate) fn bearer(&self) -> Option<&str> {
        let (scheme, token) = self.header("authorization")?.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
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
pub(crate) fn read_head<S: TimedRead + ?Sized>(
    stream: &mut S,
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

/// Reads a head from `buf` plus `stream`; on success the head's bytes are
/// removed from `buf`, leaving what follows it.
pub(crate) fn read_head_buffered<S: TimedRead + ?Sized>(
    stream: &mut S,
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
pub(crate) fn wants_keep_alive(head: &RequestHead) -> bool {
    if has_token(&head.headers, "connection", "close") {
        false
    } else if head.version >= 1 {
        true
    } else {
        has_token(&head.headers, "connection", "keep-alive")
    }
}

/// Whether any `name` header lists `token` (comma-separated, any case).
pub(crate) fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).any(|(_, v)| lists_token(v, token))
}

/// Whether one comma-separated header value lists `token` (any case).
pub(crate) fn lists_token(value: &str, token: &str) -> bool {
    value.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Why a request body could not be read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// Over `max_body_bytes`, declared or counted (`413`).
    TooLarge,
    /// Bad framing: both or conflicting length headers, bad chunk (`400`).
    Malformed(&'static str),
    /// A transfer coding other than plain `chunked` (`501`).
    Unsupported,
    /// Not complete within [`BodyLimits::timeout`] (`408`).
    Timeout,
    /// The peer closed mid-body: nobody to answer.
    Closed,
    /// The socket failed: nobody to answer.
    Io(io::Error),
}

impl BodyError {
    /// The status to answer with before closing, `None` when the peer is gone.
    pub(crate) fn status(&self) -> Option<u16> {
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
pub(crate) enum Framing {
    /// `Content-Length` bytes (0 when the head declares none).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// Decides how the body is delimited (RFC 9112 §6.3), refusing the
/// ambiguous cases that enable request smuggling.
pub(crate) fn framing(head: &RequestHead) -> Result<Framing, BodyError> {
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
pub(crate) fn read_body<S: TimedRead + Write + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    head: &RequestHead,
    limits: &BodyLimits,
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
    let deadline = Instant::now() + limits.timeout;
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
/// fields read and dropped (bounded by `max_trailer_bytes`).
///
/// SPEC §9 "Bodies": the bytes on the wire (sizes, extensions, line ends,
/// trailers) may be at most twice `max_body_bytes`, so that 1-byte chunks
/// with long extensions cannot make a small body cost megabytes; and the
/// decoding is linear in them: [`ChunkedWire`] walks `buf` with a cursor
/// instead of removing each line from its front.
fn read_chunked<S: TimedRead + ?Sized>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    limits: &BodyLimits,
    deadline: Instant,
) -> Result<Vec<u8>, BodyError> {
    let mut wire = ChunkedWire {
        stream,
        buf,
        pos: 0,
        consumed: 0,
        max_wire: limits.max_body_bytes.saturating_mul(2),
        deadline,
    };
    let body = wire.decode(limits);
    // What follows the body (the next request) stays in `buf`.
    let pos = wire.pos.min(wire.buf.len());
    wire.buf.drain(..pos);
    body
}

/// The reading side of [`read_chunked`]: `buf[pos..]` holds bytes read but
/// not yet consumed; `consumed` counts the body's wire bytes so far.
struct ChunkedWire<'a, S: TimedRead + ?Sized> {
    stream: &'a mut S,
    buf: &'a mut Vec<u8>,
    pos: usize,
    consumed: usize,
    max_wire: usize,
    deadline: Instant,
}

impl<S: TimedRead + ?Sized> ChunkedWire<'_, S> {
    fn decode(&mut self, limits: &BodyLimits) -> Result<Vec<u8>, BodyError> {
        let mut body = Vec::new();
        loop {
            let size = {
                let line = self.line(MAX_CHUNK_LINE)?;
                parse_chunk_size(line).ok_or(BodyError::Malformed("bad chunk size"))?
            };
            if size == 0 {
                break;
            }
            let room = limits.max_body_bytes.saturating_sub(body.len());
            let size = match usize::try_from(size) {
                Ok(size) if size <= room => size,
                _ => return Err(BodyError::TooLarge),
            };
            self.charge(size)?;
            self.data(&mut body, size)?;
            if !self.line(0)?.is_empty() {
                return Err(BodyError::Malformed("chunk data longer than its size"));
            }
        }
        let mut trailer_bytes = 0usize;
        loop {
            let len = self.line(limits.max_trailer_bytes)?.len();
            if len == 0 {
                return Ok(body);
            }
            trailer_bytes = trailer_bytes.saturating_add(len + 2);
            if trailer_bytes > limits.max_trailer_bytes {
                return Err(BodyError::Malformed("trailer section too large"));
            }
        }
    }

    /// Counts `n` more wire bytes against the bound.
    fn charge(&mut self, n: usize) -> Result<(), BodyError> {
        self.consumed = self.consumed.saturating_add(n);
        if self.consumed > self.max_wire { Err(BodyError::TooLarge) } else { Ok(()) }
    }

    /// Reads more bytes into `buf`, first dropping the consumed ones (at
    /// most one partial line is kept, so this copies little).
    fn fill(&mut self) -> Result<(), BodyError> {
        let pos = self.pos.min(self.buf.len());
        self.buf.drain(..pos);
        self.pos = 0;
        if read_append(self.stream, self.buf, READ_CHUNK, self.deadline)? == 0 {
            return Err(BodyError::Closed);
        }
        Ok(())
    }

    /// The next line (LF or CRLF ended) without its ending, refusing lines
    /// longer than `max_len`; its bytes and ending are charged.
    fn line(&mut self, max_len: usize) -> Result<&[u8], BodyError> {
        let mut scanned = 0;
        let end = loop {
            let rest = self.buf.get(self.pos + scanned..).unwrap_or_default();
            if let Some(i) = rest.iter().position(|&b| b == b'\n') {
                break self.pos + scanned + i;
            }
            scanned += rest.len();
            // + 1 for a CR not yet followed by its LF.
            if scanned > max_len + 1 {
                return Err(BodyError::Malformed("line too long"));
            }
            self.charge_check(scanned)?;
            // Moves the partial line to the front: `scanned` still counts
            // from `pos`.
            self.fill()?;
        };
        let start = self.pos;
        self.charge(end + 1 - start)?;
        self.pos = end + 1;
        let mut line = self.buf.get(start..end).unwrap_or_default();
        if let [head @ .., b'\r'] = line {
            line = head;
        }
        if line.len() > max_len {
            return Err(BodyError::Malformed("line too long"));
        }
        Ok(line)
    }

    /// Whether `pending` more bytes would still fit the bound (checked while
    /// a line is incomplete, so an endless line stops at the bound too).
    fn charge_check(&self, pending: usize) -> Result<(), BodyError> {
        if self.consumed.saturating_add(pending) > self.max_wire {
            Err(BodyError::TooLarge)
        } else {
            Ok(())
        }
    }

    /// Moves exactly `n` data bytes into `body` (already charged): first
    /// from `buf`, then straight from the socket.
    fn data(&mut self, body: &mut Vec<u8>, n: usize) -> Result<(), BodyError> {
        let available = self.buf.get(self.pos..).unwrap_or_default();
        let from_buf = n.min(available.len());
        body.extend_from_slice(available.get(..from_buf).unwrap_or_default());
        self.pos += from_buf;
        let mut missing = n - from_buf;
        while missing > 0 {
            match read_append(self.stream, body, missing, self.deadline)? {
                0 => return Err(BodyError::Closed),
                got => missing = missing.saturating_sub(got),
            }
        }
        Ok(())
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

/// Moves exactly `n` body bytes into `body`: first from `buf`, then straight
/// from the socket.
fn read_exact_append<S: TimedRead + ?Sized>(
    stream: &mut S,
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
pub(crate) enum ReadFail {
    /// The deadline passed.
    Timeout,
    /// The socket failed.
    Io(io::Error),
}

/// Appends up to `max` (at least 1) bytes from `stream` to `vec`, waiting
/// until `deadline`. `Ok(0)` is end of stream.
pub(crate) fn read_append<S: TimedRead + ?Sized>(
    stream: &mut S,
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
pub(crate) fn read_with_deadline<S: TimedRead + ?Sized>(
    stream: &mut S,
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
            Err(e) if is_timeout_or_interrupt(&e) => {}
            Err(e) => return Err(ReadFail::Io(e)),
        }
    }
}

/// What the server says about the connection in a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionHeader {
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
pub(crate) fn encode_response(resp: &Response, conn: ConnectionHeader, with_body: bool) -> Vec<u8> {
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
pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
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

/// Whether a socket call with a timeout just timed out (or was
/// interrupted): the caller checks its deadline and tries again. A timed-out
/// call is `WouldBlock` on Unix, `TimedOut` elsewhere.
pub(crate) fn is_timeout_or_interrupt(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::net::TcpListener;

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
    fn header_token_lists() {
        assert!(lists_token("keep-alive, Upgrade", "upgrade"));
        assert!(!lists_token("upgraded", "upgrade"));
        let headers =
            vec![("Connection".to_owned(), "x".to_owned()), ("connection".into(), "Close".into())];
        assert!(has_token(&headers, "CONNECTION", "close"));
        assert!(!has_token(&headers, "upgrade", "close"));
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

    /// A stream fed from `input` in `step`-byte reads, which records what is
    /// written to it: the codec over no socket.
    struct Scripted {
        input: Vec<u8>,
        step: usize,
        written: Vec<u8>,
    }

    impl Read for Scripted {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.input.len());
            out[..n].copy_from_slice(&self.input[..n]);
            self.input.drain(..n);
            Ok(n)
        }
    }

    impl Write for Scripted {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.written.extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl TimedRead for Scripted {
        fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    const LIMITS: BodyLimits =
        BodyLimits { max_body_bytes: 64, max_trailer_bytes: 64, timeout: Duration::from_secs(5) };

    /// Reads a head then its body from `input`, one byte per read.
    fn head_and_body(input: &[u8]) -> (Result<Vec<u8>, BodyError>, Vec<u8>, Vec<u8>) {
        let mut stream = Scripted { input: input.to_vec(), step: 1, written: Vec::new() };
        let deadline = Instant::now() + Duration::from_secs(5);
        let (head, mut buf) = read_head(&mut stream, deadline, 1024).expect("head");
        let body = read_body(&mut stream, &mut buf, &head, &LIMITS);
        buf.extend_from_slice(&stream.input);
        (body, buf, stream.written)
    }

    #[test]
    fn chunked_bodies_decode_over_any_stream() {
        let (body, rest, written) = head_and_body(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              4;ext=1\r\nabcd\r\n2\r\nef\r\n0\r\nTrailer: t\r\n\r\nNEXT",
        );
        assert_eq!(body.expect("body"), b"abcdef");
        assert_eq!((rest.as_slice(), written.as_slice()), (&b"NEXT"[..], &b""[..]));

        let (body, _, written) = head_and_body(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\
              Expect: 100-continue\r\n\r\nabc",
        );
        assert_eq!(body.expect("body"), b"abc");
        assert_eq!(written, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn chunked_wire_bytes_are_bounded_by_twice_the_body_limit() {
        // 64-byte limit: 128 wire bytes. Ten 1-byte chunks with 20-byte
        // extensions are 10 body bytes but 270 on the wire.
        let ext = format!("1;{}\r\nx\r\n", "e".repeat(18));
        let input = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
            ext.repeat(10)
        );
        let (body, _, _) = head_and_body(input.as_bytes());
        assert_eq!(body.expect_err("too many wire bytes").status(), Some(413));
        // An endless extension stops at the bound, not at the line limit.
        let input = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1;{}",
            "e".repeat(1000)
        );
        let (body, _, _) = head_and_body(input.as_bytes());
        assert_eq!(body.expect_err("endless line").status(), Some(413));
        // Within the bound: fine, the rest left for the next request.
        let input = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
                     1;a=b\r\nx\r\n2\r\nyz\r\n0\r\n\r\nGET";
        let (body, rest, _) = head_and_body(input.as_bytes());
        assert_eq!((body.expect("body").as_slice(), rest.as_slice()), (&b"xyz"[..], &b"GET"[..]));
    }

    #[test]
    fn one_byte_chunks_decode_in_linear_time() {
        // 1 MiB as 1-byte chunks arriving in 16 KiB reads: a decoder that
        // removes each line from the front of its buffer moves up to 16 KiB
        // per line and chunk (2 M lines, 1 M chunks: tens of GB); this one
        // walks the buffer. Measured in this thread's CPU time, which other
        // tests running meanwhile do not inflate.
        const N: usize = 1 << 20;
        let mut input =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..N {
            input.extend_from_slice(b"1\r\nx\r\n");
        }
        input.extend_from_slice(b"0\r\n\r\n");
        let mut stream = SliceStream { rest: &input, step: READ_CHUNK };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (head, mut buf) = read_head(&mut stream, deadline, 1024).expect("head");
        let limits = BodyLimits { max_body_bytes: 8 * N, ..LIMITS };
        let tid = crate::thread::current_tid();
        let cpu = || crate::thread::cpu_seconds(tid).expect("procfs");
        let before = cpu();
        let body = read_body(&mut stream, &mut buf, &head, &limits).expect("body");
        let spent = cpu() - before;
        assert_eq!(body.len(), N);
        // Here: about 0.16 s walking, 0.84 s moving (unoptimised build).
        assert!(spent < 0.45, "{spent} s of CPU");
    }

    /// A slice read `step` bytes at a time (`Scripted` moves its input on
    /// every read, which would dwarf what is measured above).
    struct SliceStream<'a> {
        rest: &'a [u8],
        step: usize,
    }

    impl Read for SliceStream<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.rest.len());
            let (now, later) = self.rest.split_at(n);
            out[..n].copy_from_slice(now);
            self.rest = later;
            Ok(n)
        }
    }

    impl Write for SliceStream<'_> {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl TimedRead for SliceStream<'_> {
        fn set_read_timeout(&mut self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn body_framing_errors_map_to_their_status() {
        let cases: [(&[u8], Option<u16>); 5] = [
            (b"Content-Length: 65\r\n\r\n", Some(413)),
            (b"Transfer-Encoding: chunked\r\n\r\n41\r\n", Some(413)),
            (b"Transfer-Encoding: chunked\r\n\r\nzz\r\n", Some(400)),
            (b"Transfer-Encoding: gzip\r\n\r\n", Some(501)),
            (b"Content-Length: 5\r\n\r\nab", None),
        ];
        for (rest, status) in cases {
            let input = [&b"POST / HTTP/1.1\r\nHost: x\r\n"[..], rest].concat();
            let (body, _, _) = head_and_body(&input);
            let e = body.expect_err("refused");
            assert_eq!(e.status(), status, "{e}");
        }
    }
}
