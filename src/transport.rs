//! What a connection's bytes travel on: plain TCP, or TLS over TCP
//! (`TLS_CERT_FILE`, `TLS_KEY_FILE`; SPEC §11), for both ports.
//!
//! One connection loop runs over [`Stream`], whichever it is, so the
//! WebSocket loop, the upgrade and the ops port's request loop are the same
//! code with or without TLS:
//!
//! - [`Stream`] is `Read + Write + AsFd` (the descriptor is the TCP
//!   socket's, for the connection's epoll set), plus the socket settings the
//!   loops use. Under TLS every connection has its own rustls session, owned
//!   by its thread: the shared pre-framed broadcast bytes are encrypted by
//!   each connection separately.
//! - [`Stream::handshake`] runs the TLS handshake on the connection's own
//!   thread (never the accept thread), bounded by the deadline of the
//!   port's head (`LIVE_WS_HANDSHAKE_TIMEOUT_MS`, `HTTP_HEAD_TIMEOUT_MS`),
//!   counted from the accept. A first byte that cannot start a TLS record
//!   (a plain-HTTP request) ends the connection without a TLS answer.
//! - [`Tls`] is a port's TLS setup: one rustls `ServerConfig` (ring, TLS
//!   1.2 and 1.3 only) whose certificate comes from a [`CertStore`], which
//!   [`Reloader`] replaces when `SIGHUP` arrives or either file changes. New
//!   handshakes take the new pair; open connections keep their session. A
//!   new pair that does not load keeps the old one and is logged.
//!
//! Non-blocking TLS (the WebSocket loop) differs from a socket in one way:
//! a write may be accepted into the session and encrypted while the socket
//! takes only part of the records. Those bytes are the session's backlog
//! ([`Stream::wants_write`]): the loop must wait for POLLOUT while it is
//! not empty, and [`Write::flush`] pushes it (`WouldBlock` while some
//! remain). A write is refused (`WouldBlock`) until the backlog is gone, so
//! it never holds more than one write's records (at most rustls's 64 KiB
//! buffer limit): back-pressure stays in the connection's own queue.
//! Reads return everything the session has decrypted before reading the
//! socket again, so "read until `WouldBlock`" leaves nothing behind the
//! level-triggered socket.
//!
//! Error messages about the files name the file and what is wrong with it,
//! never a byte of its content.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info};
use parking_lot::RwLock;
use prometheus::{IntCounterVec, IntGauge};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};

use crate::http_codec::TimedRead;

/// The first byte of a TLS handshake record (content type 22): anything
/// else as a connection's first byte is not a TLS client.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// How often the reloader looks at the files' stamps.
const WATCH_PERIOD: Duration = Duration::from_secs(1);
/// How long the fatal alert of a failed handshake may take to send.
const ALERT_TIMEOUT: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------------------
// The certificate pair, and its reloading.
// ---------------------------------------------------------------------------

/// Why a certificate pair cannot be used. The text names the file and the
/// problem, never the file's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairError(String);

impl std::fmt::Display for PairError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PairError {}

/// The crypto of every TLS session: rustls's `ring` provider, already in
/// the dependency tree through the HTTP client.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and checks a pair: a PEM chain (end-entity certificate first) and
/// a PEM key (PKCS#8, or PKCS#1 RSA, or SEC1 EC) that matches it.
///
/// # Errors
/// Either file unreadable, no certificate or no key in it, malformed PEM,
/// a key rustls cannot use, or a key that is not the certificate's.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, PairError> {
    let cert_text = read_file(cert, "TLS_CERT_FILE")?;
    let key_text = read_file(key, "TLS_KEY_FILE")?;
    let shown = cert.display();
    let mut chain = Vec::new();
    for item in CertificateDer::pem_slice_iter(&cert_text) {
        chain.push(item.map_err(|e| {
            PairError(format!("TLS_CERT_FILE {shown}: malformed PEM ({})", pem_problem(&e)))
        })?);
    }
    if chain.is_empty() {
        return Err(PairError(format!(
            "TLS_CERT_FILE {shown}: no certificate found (expected PEM \"BEGIN CERTIFICATE\" \
             sections, the server's certificate first)"
        )));
    }
    let shown = key.display();
    let private = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => PairError(format!(
            "TLS_KEY_FILE {shown}: no private key found (expected PEM \"BEGIN PRIVATE KEY\" \
             (PKCS#8), \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\", not encrypted)"
        )),
        e => PairError(format!("TLS_KEY_FILE {shown}: malformed PEM ({})", pem_problem(&e))),
    })?;
    let provider = provider();
    let signing = provider.key_provider.load_private_key(private).map_err(|_| {
        PairError(format!("TLS_KEY_FILE {shown}: not an RSA, ECDSA or Ed25519 key rustls can use"))
    })?;
    let pair = CertifiedKey::new(chain, signing);
    match pair.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(PairError(format!(
                "TLS_KEY_FILE {shown} is not the key of the certificate in TLS_CERT_FILE {}",
                cert.display()
            )));
        }
        Err(_) => {
            return Err(PairError(format!(
                "TLS_CERT_FILE {}: the first certificate is not a valid X.509 certificate",
                cert.display()
            )));
        }
    }
    Ok(Arc::new(pair))
}

/// A file's bytes, or an error naming the variable, the path and the OS
/// reason.
fn read_file(path: &Path, variable: &str) -> Result<Vec<u8>, PairError> {
    std::fs::read(path)
        .map_err(|e| PairError(format!("{variable} {}: cannot read: {e}", path.display())))
}

/// What is wrong with a PEM text, without quoting it (the parser's own
/// messages repeat the offending line).
fn pem_problem(e: &rustls::pki_types::pem::Error) -> &'static str {
    use rustls::pki_types::pem::Error;
    match e {
        Error::MissingSectionEnd { .. } => "a section has no END line",
        Error::IllegalSectionStart { .. } => "a BEGIN line is malformed",
        Error::Base64Decode(_) => "a section is not valid base64",
        Error::SectionTooLarge => "a section is too large",
        _ => "unreadable",
    }
}

/// The pair new handshakes get; replaced whole by a reload.
pub(crate) struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

/// Shows nothing of the pair: a `{:?}` of the server's state (which holds
/// the TLS configuration, and through it this store) must never carry the
/// certificate or anything about the key.
impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read()))
    }
}

/// A port's TLS: the server configuration every new session starts from.
/// Cheap to clone; both ports share one [`CertStore`].
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    config: Arc<ServerConfig>,
}

/// The TLS of a server: the files, the pair in use, and the configuration
/// both ports' sessions start from.
#[derive(Debug)]
pub(crate) struct TlsSetup {
    cert: PathBuf,
    key: PathBuf,
    store: Arc<CertStore>,
    tls: Tls,
}

impl TlsSetup {
    /// Loads the pair and builds the configuration: TLS 1.2 and 1.3 only,
    /// no client certificates, ALPN `http/1.1` (both ports speak HTTP/1.1
    /// first).
    ///
    /// # Errors
    /// The pair does not load ([`load_pair`]).
    pub(crate) fn load(cert: &Path, key: &Path) -> Result<TlsSetup, PairError> {
        let pair = load_pair(cert, key)?;
        let store = Arc::new(CertStore { current: RwLock::new(pair) });
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| PairError(format!("TLS setup: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(&store) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsSetup {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            store,
            tls: Tls { config: Arc::new(config) },
        })
    }

    /// What each port's connections start their sessions from.
    pub(crate) fn tls(&self) -> Tls {
        self.tls.clone()
    }

    /// Reads the pair again; on success new handshakes use it, on failure
    /// the old pair stays.
    ///
    /// # Errors
    /// The new pair does not load.
    pub(crate) fn reload(&self) -> Result<(), PairError> {
        let pair = load_pair(&self.cert, &self.key)?;
        *self.store.current.write() = pair;
        Ok(())
    }

    /// `notAfter` of the certificate served, in seconds since the epoch.
    pub(crate) fn not_after(&self) -> Option<i64> {
        let pair = Arc::clone(&self.store.current.read());
        pair.cert.first().and_then(|cert| not_after(cert.as_ref()))
    }

    /// Logs what is served, and when it expires.
    pub(crate) fn log_serving(&self, why: &str) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        match self.not_after() {
            Some(at) => info!(
                "TLS: serving the certificate of {} ({why}); it expires in {} days",
                self.cert.display(),
                (at - now).div_euclid(86_400)
            ),
            None => info!("TLS: serving the certificate of {} ({why})", self.cert.display()),
        }
    }

    /// The files' stamps, to notice a change.
    fn stamps(&self) -> (Option<Stamp>, Option<Stamp>) {
        (stamp(&self.cert), stamp(&self.key))
    }
}

/// What tells a file changed: an ACME client may rewrite it in place or
/// point a symlink at a new file (certbot's `live/` directory).
type Stamp = (u64, u64, i64, i64, u64);

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// The `tls-reload` thread: reloads the pair on `SIGHUP`, and when either
/// file's stamp changed and then held still for one period (an ACME client
/// writes the two files one after the other: a reload between the two
/// would see a mismatched pair).
#[derive(Debug)]
pub(crate) struct Reloader {
    stop: Arc<AtomicBool>,
    /// Written by `SIGHUP` (signal-hook's self-pipe) and by [`Reloader::stop`].
    wake: UnixStream,
    signal: Option<signal_hook::SigId>,
    thread: Option<JoinHandle<()>>,
}

impl Reloader {
    /// Starts watching `setup`'s files and `SIGHUP`.
    ///
    /// # Errors
    /// The pipe, the signal handler or the thread cannot be made.
    pub(crate) fn start(setup: Arc<TlsSetup>, metrics: TlsMetrics) -> io::Result<Reloader> {
        let (wake_rx, wake) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        wake.set_nonblocking(true)?;
        let signal =
            signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, wake.try_clone()?)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = crate::thread::spawn_named("tls-reload".into(), None, move || {
            watch(&setup, &metrics, &wake_rx, &flag);
        });
        match thread {
            Ok(thread) => Ok(Reloader { stop, wake, signal: Some(signal), thread: Some(thread) }),
            Err(e) => {
                signal_hook::low_level::unregister(signal);
                Err(e)
            }
        }
    }

    /// Stops the thread and gives `SIGHUP` back. Idempotent.
    pub(crate) fn stop(&mut self) {
        if let Some(signal) = self.signal.take() {
            signal_hook::low_level::unregister(signal);
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = (&self.wake).write(&[0]);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Reloader {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the reloader counts: `livecast_tls_reloads_total{result}` and
/// `livecast_tls_certificate_expiry_timestamp_seconds`.
#[derive(Debug, Clone)]
pub(crate) struct TlsMetrics {
    pub(crate) reloads: IntCounterVec,
    pub(crate) expiry: IntGauge,
}

/// The reloader's loop: wakes on `SIGHUP` (or the stop), or every
/// [`WATCH_PERIOD`] to compare the stamps.
fn watch(setup: &TlsSetup, metrics: &TlsMetrics, wake: &UnixStream, stop: &AtomicBool) {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let mut seen = setup.stamps();
    // A change not yet reloaded: the stamps it was seen with.
    let mut settling: Option<(Option<Stamp>, Option<Stamp>)> = None;
    let period = Timespec { tv_sec: 1, tv_nsec: 0 };
    debug_assert_eq!(Duration::from_secs(1), WATCH_PERIOD);
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [PollFd::new(wake, PollFlags::IN)];
        let signalled = matches!(poll(&mut fds, Some(&period)), Ok(n) if n > 0);
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if signalled {
            let mut sink = [0u8; 64];
            while matches!((&*wake).read(&mut sink), Ok(n) if n > 0) {}
        }
        let now = setup.stamps();
        let why = if signalled {
            Some("SIGHUP")
        } else if now != seen && settling.as_ref() == Some(&now) {
            Some("a file changed")
        } else {
            settling = (now != seen).then_some(now);
            None
        };
        let Some(why) = why else { continue };
        settling = None;
        seen = now;
        match setup.reload() {
            Ok(()) => {
                metrics.reloads.with_label_values(&["ok"]).inc();
                metrics.expiry.set(setup.not_after().unwrap_or(0));
                setup.log_serving(&format!("certificate pair reloaded: {why}"));
            }
            Err(e) => {
                metrics.reloads.with_label_values(&["error"]).inc();
                error!("TLS: {e}; still serving the previous certificate pair ({why})");
            }
        }
    }
}

/// The `notAfter` of a DER X.509 certificate, in seconds since the epoch;
/// `None` when the DER is not shaped like a certificate.
///
/// Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
/// OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE {
/// notBefore, notAfter }, ... }, ... } (RFC 5280 §4.1).
fn not_after(der: &[u8]) -> Option<i64> {
    let (_, cert, _) = der_tlv(der).filter(|(tag, _, _)| *tag == 0x30)?;
    let (_, tbs, _) = der_tlv(cert).filter(|(tag, _, _)| *tag == 0x30)?;
    let mut rest = tbs;
    if rest.first() == Some(&0xa0) {
        rest = der_tlv(rest)?.2;
    }
    for _ in 0..3 {
        // serialNumber, signature, issuer
        rest = der_tlv(rest)?.2;
    }
    let (_, validity, _) = der_tlv(rest).filter(|(tag, _, _)| *tag == 0x30)?;
    let (tag, time, _) = der_tlv(der_tlv(validity)?.2)?;
    der_time(tag, time)
}

/// One DER item: (tag, contents, what follows).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        (bytes.iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b)), rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// A UTCTime (`YYMMDDHHMMSSZ`, tag 0x17) or GeneralizedTime
/// (`YYYYMMDDHHMMSSZ`, tag 0x18), in seconds since the epoch.
fn der_time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let digits = |s: &str| -> Option<i64> {
        s.bytes().all(|b| b.is_ascii_digit()).then(|| s.parse().ok()).flatten()
    };
    let (year, rest) = match tag {
        0x17 => {
            let yy = digits(text.get(..2)?)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (digits(text.get(..4)?)?, text.get(4..)?),
        _ => return None,
    };
    if rest.len() != 10 {
        return None;
    }
    let field = |i: usize| digits(rest.get(i..i + 2)?);
    let (month, day) = (field(0)?, field(2)?);
    let (hour, minute, second) = (field(4)?, field(6)?, field(8)?);
    let days = crate::position::days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

// ---------------------------------------------------------------------------
// The stream.
// ---------------------------------------------------------------------------

/// Why a TLS handshake did not complete.
#[derive(Debug)]
pub(crate) enum HandshakeError {
    /// The deadline passed.
    Timeout,
    /// The first byte cannot start a TLS record (e.g. plain HTTP).
    NotTls,
    /// The peer closed the connection.
    Closed,
    /// The handshake failed (no common version or cipher, a bad message).
    Tls(rustls::Error),
    /// A socket error.
    Io(io::Error),
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Timeout => f.write_str("TLS handshake timed out"),
            HandshakeError::NotTls => f.write_str("not a TLS client (plain HTTP on a TLS port?)"),
            HandshakeError::Closed => f.write_str("closed during the TLS handshake"),
            HandshakeError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            HandshakeError::Io(e) => write!(f, "TLS handshake: {e}"),
        }
    }
}

/// A connection's byte stream: the socket itself, or a TLS session over it.
///
/// `P` is the plain socket: a `TcpStream` from the accept to the upgrade;
/// the connection loop may put another handle of the same socket there (one
/// shared with another writer: a TLS session never is, it belongs to its
/// thread).
#[derive(Debug)]
pub(crate) enum Stream<P = TcpStream> {
    /// Plain TCP.
    Plain(P),
    /// TLS over TCP, the session owned by the connection's thread.
    Tls(Box<TlsStream>),
}

/// A rustls server session and its socket.
#[derive(Debug)]
pub(crate) struct TlsStream {
    conn: ServerConnection,
    sock: TcpStream,
    /// Whether the socket is non-blocking: then a `WouldBlock` from the
    /// socket is "later", else it is a timeout.
    nonblocking: bool,
}

impl From<TcpStream> for Stream {
    fn from(sock: TcpStream) -> Stream {
        Stream::Plain(sock)
    }
}

impl Stream {
    /// The stream of an accepted socket: plain, or a TLS session not yet
    /// handshaken when `tls` is given ([`Stream::handshake`] runs it).
    ///
    /// # Errors
    /// rustls refuses to make a session (not expected with our
    /// configuration).
    pub(crate) fn new(sock: TcpStream, tls: Option<&Tls>) -> io::Result<Stream> {
        match tls {
            None => Ok(Stream::Plain(sock)),
            Some(tls) => {
                let conn =
                    ServerConnection::new(Arc::clone(&tls.config)).map_err(io::Error::other)?;
                Ok(Stream::Tls(Box::new(TlsStream { conn, sock, nonblocking: false })))
            }
        }
    }

    /// The TCP socket under the stream.
    pub(crate) fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(sock) => sock,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    /// Runs the TLS handshake to its end, blocking, by `deadline`; nothing
    /// to do on a plain stream. Leaves the socket blocking, its read and
    /// write timeouts set to what was left.
    ///
    /// # Errors
    /// See [`HandshakeError`]. A peer whose first byte cannot start a TLS
    /// record gets no answer; one that fails later gets rustls's alert.
    pub(crate) fn handshake(&mut self, deadline: Instant) -> Result<(), HandshakeError> {
        let Stream::Tls(tls) = self else { return Ok(()) };
        tls.set_nonblocking(false).map_err(HandshakeError::Io)?;
        let mut first = true;
        loop {
            while tls.conn.wants_write() {
                tls.sock.set_write_timeout(Some(left(deadline)?)).map_err(HandshakeError::Io)?;
                match tls.conn.write_tls(&mut tls.sock) {
                    Ok(_) => {}
                    Err(e) if is_timeout(&e) => return Err(HandshakeError::Timeout),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(HandshakeError::Io(e)),
                }
            }
            if !tls.conn.is_handshaking() {
                return Ok(());
            }
            tls.sock.set_read_timeout(Some(left(deadline)?)).map_err(HandshakeError::Io)?;
            if first {
                let mut byte = [0u8; 1];
                match tls.sock.peek(&mut byte) {
                    Ok(0) => return Err(HandshakeError::Closed),
                    Ok(_) if byte[0] != TLS_HANDSHAKE_RECORD => return Err(HandshakeError::NotTls),
                    Ok(_) => first = false,
                    Err(e) if is_timeout(&e) => return Err(HandshakeError::Timeout),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(HandshakeError::Io(e)),
                }
            }
            match tls.conn.read_tls(&mut tls.sock) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => {}
                Err(e) if is_timeout(&e) => return Err(HandshakeError::Timeout),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(HandshakeError::Io(e)),
            }
            if let Err(e) = tls.conn.process_new_packets() {
                tls.send_alert();
                return Err(HandshakeError::Tls(e));
            }
        }
    }

    /// Makes the socket non-blocking or blocking.
    ///
    /// # Errors
    /// As [`TcpStream::set_nonblocking`].
    pub(crate) fn set_nonblocking(&mut self, nonblocking: bool) -> io::Result<()> {
        match self {
            Stream::Plain(sock) => sock.set_nonblocking(nonblocking),
            Stream::Tls(tls) => tls.set_nonblocking(nonblocking),
        }
    }

    /// As [`TcpStream::set_write_timeout`].
    ///
    /// # Errors
    /// As [`TcpStream::set_write_timeout`].
    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_write_timeout(timeout)
    }

    /// As [`TcpStream::set_nodelay`].
    ///
    /// # Errors
    /// As [`TcpStream::set_nodelay`].
    pub(crate) fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        self.socket().set_nodelay(nodelay)
    }
}

impl<P> Stream<P> {
    /// Under TLS, sends `close_notify` (best effort, not waiting for room):
    /// the end of the data, before a response-ending shutdown.
    pub(crate) fn close_notify(&mut self) {
        if let Stream::Tls(tls) = self {
            tls.conn.send_close_notify();
            let _ = tls.push();
        }
    }

    /// Encrypted bytes the socket has not taken yet: the loop must wait for
    /// POLLOUT and [`Write::flush`]. Always false for plain TCP.
    pub(crate) fn wants_write(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(tls) => tls.conn.wants_write(),
        }
    }
}

impl<P: AsFd> Stream<P> {
    /// Shuts the TCP socket down (no `close_notify`: see
    /// [`Stream::close_notify`]).
    ///
    /// # Errors
    /// As [`TcpStream::shutdown`].
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        let how = match how {
            Shutdown::Read => rustix::net::Shutdown::Read,
            Shutdown::Write => rustix::net::Shutdown::Write,
            Shutdown::Both => rustix::net::Shutdown::Both,
        };
        Ok(rustix::net::shutdown(self.as_fd(), how)?)
    }
}

/// The time left until `deadline`, or the timeout.
fn left(deadline: Instant) -> Result<Duration, HandshakeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() { Err(HandshakeError::Timeout) } else { Ok(left) }
}

/// A blocking socket's timeout shows as `WouldBlock` or `TimedOut`.
fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl TlsStream {
    fn set_nonblocking(&mut self, nonblocking: bool) -> io::Result<()> {
        self.sock.set_nonblocking(nonblocking)?;
        self.nonblocking = nonblocking;
        Ok(())
    }

    /// Writes the session's backlog to the socket: `Ok(true)` when all of
    /// it went, `Ok(false)` when a non-blocking socket is full.
    fn push(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) && self.nonblocking => return Ok(false),
                Err(e) if is_timeout(&e) => return Err(io::ErrorKind::TimedOut.into()),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Sends the fatal alert rustls queued for a failed session, bounded
    /// by [`ALERT_TIMEOUT`].
    fn send_alert(&mut self) {
        if self.conn.wants_write() && self.sock.set_write_timeout(Some(ALERT_TIMEOUT)).is_ok() {
            let _ = self.conn.write_tls(&mut self.sock);
        }
    }

    /// Decrypts what the socket holds; a session error sends its alert.
    fn process(&mut self) -> io::Result<()> {
        if let Err(e) = self.conn.process_new_packets() {
            self.send_alert();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // A key update or an alert to answer: best effort, the loop's
        // POLLOUT does the rest (see `Stream::wants_write`).
        if self.conn.wants_write() && self.nonblocking {
            let _ = self.push();
        }
        Ok(())
    }
}

impl<P: Read> Read for Stream<P> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let tls = match self {
            Stream::Plain(sock) => return sock.read(buf),
            Stream::Tls(tls) => tls,
        };
        loop {
            match tls.conn.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The peer closed TCP without `close_notify`: to the
                // protocol above, the same end as a plain socket's.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(0),
                Err(e) => return Err(e),
            }
            match tls.conn.read_tls(&mut tls.sock) {
                Ok(_) => tls.process()?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<P: Write> Write for Stream<P> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(sock) => sock.write(buf),
            Stream::Tls(_) => self.write_vectored(&[IoSlice::new(buf)]),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let tls = match self {
            Stream::Plain(sock) => return sock.write_vectored(bufs),
            Stream::Tls(tls) => tls,
        };
        if !tls.push()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = tls.conn.writer().write_vectored(bufs)?;
        if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        // What the socket does not take now stays in the backlog.
        tls.push()?;
        Ok(n)
    }

    /// Under TLS, writes the backlog: `WouldBlock` while some remains on a
    /// non-blocking socket.
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(tls) => {
                if tls.push()? {
                    Ok(())
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                }
            }
        }
    }
}

impl TimedRead for Stream {
    fn set_read_timeout(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.socket().set_read_timeout(timeout)
    }
}

impl<P: AsFd> AsFd for Stream<P> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Plain(sock) => sock.as_fd(),
            Stream::Tls(tls) => tls.sock.as_fd(),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The non-blocking TLS stream against a real rustls client over
    //! loopback: a full socket leaves a backlog that the loop's POLLOUT and
    //! `flush` must finish, and nothing is lost or reordered.

    use std::net::TcpListener;
    use std::sync::mpsc;

    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

    use super::*;

    /// A self-signed pair for `localhost`, made by `openssl` in a fresh
    /// directory.
    fn pair(tag: &str) -> (PathBuf, PathBuf) {
        let dir = std::env::temp_dir().join(format!("livecast-unit-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        let out = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
            .args(["-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (cert, key)
    }

    fn client_config(cert: &Path) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from_pem_file(cert).unwrap()).unwrap();
        let config = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    /// Waits until `stream`'s socket is writable.
    fn wait_writable(stream: &Stream) {
        let mut fds = [PollFd::new(stream, PollFlags::OUT)];
        poll(&mut fds, Some(&Timespec { tv_sec: 5, tv_nsec: 0 })).unwrap();
    }

    #[test]
    fn a_full_socket_leaves_a_backlog_that_flush_finishes_in_order() {
        let (cert, key) = pair("backlog");
        let setup = TlsSetup::load(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = client_config(&cert);
        let (go, ready) = mpsc::channel::<()>();
        let total = 8 << 20;
        let client = crate::thread::spawn_named("test-client".into(), None, move || {
            let sock = TcpStream::connect(addr).unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let conn = ClientConnection::new(config, name).unwrap();
            let mut stream = StreamOwned::new(conn, sock);
            stream.write_all(b"hello").unwrap();
            stream.flush().unwrap();
            // Reads nothing until the server has filled the socket.
            ready.recv().unwrap();
            let mut got = vec![0u8; total];
            stream.read_exact(&mut got).unwrap();
            got
        })
        .unwrap();
        let (sock, _) = listener.accept().unwrap();
        let mut stream = Stream::new(sock, Some(&setup.tls())).unwrap();
        stream.handshake(Instant::now() + Duration::from_secs(10)).unwrap();
        stream.set_nonblocking(true).unwrap();

        // The client's first bytes, read until WouldBlock.
        let mut hello = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while hello.len() < 5 {
            assert!(Instant::now() < deadline, "no hello");
            let mut buf = [0u8; 64];
            match stream.read(&mut buf) {
                Ok(n) => hello.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut fds = [PollFd::new(&stream, PollFlags::IN)];
                    poll(&mut fds, Some(&Timespec { tv_sec: 1, tv_nsec: 0 })).unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(hello, b"hello");

        // Writes until the socket refuses: a backlog is left.
        let data: Vec<u8> = (0..total).map(|i| u8::try_from(i % 251).unwrap()).collect();
        let mut sent = 0;
        loop {
            match stream.write(&data[sent..(sent + 100_000).min(total)]) {
                Ok(n) => sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
            assert!(sent < total, "8 MiB fit in the socket: the test proves nothing");
        }
        assert!(stream.wants_write(), "a refused write leaves encrypted bytes behind");
        assert!(matches!(stream.flush(), Err(e) if e.kind() == io::ErrorKind::WouldBlock));

        // The reader starts; the rest goes out as room appears.
        go.send(()).unwrap();
        while sent < total || stream.wants_write() {
            assert!(Instant::now() < deadline + Duration::from_secs(10), "stalled at {sent}");
            wait_writable(&stream);
            if sent < total {
                match stream.write(&data[sent..(sent + 100_000).min(total)]) {
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            } else {
                match stream.flush() {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
            }
        }
        assert!(client.join().unwrap() == data, "every byte, in order");
        let _ = std::fs::remove_dir_all(cert.parent().unwrap());
    }

    #[test]
    fn a_plain_first_byte_ends_the_handshake_at_once_and_silence_at_the_deadline() {
        let (cert, key) = pair("plain");
        let setup = TlsSetup::load(&cert, &key).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();

        let mut plain = TcpStream::connect(addr).unwrap();
        plain.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let (sock, _) = listener.accept().unwrap();
        let mut stream = Stream::new(sock, Some(&setup.tls())).unwrap();
        let started = Instant::now();
        let err = stream.handshake(started + Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, HandshakeError::NotTls), "{err}");
        assert!(started.elapsed() < Duration::from_secs(1));

        let _silent = TcpStream::connect(addr).unwrap();
        let (sock, _) = listener.accept().unwrap();
        let mut stream = Stream::new(sock, Some(&setup.tls())).unwrap();
        let started = Instant::now();
        let err = stream.handshake(started + Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, HandshakeError::Timeout), "{err}");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(290) && took < Duration::from_secs(2), "{took:?}");
        let _ = std::fs::remove_dir_all(cert.parent().unwrap());
    }

    #[test]
    fn not_after_reads_the_certificates_validity() {
        assert_eq!(der_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(der_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(der_time(0x18, b"20270306120000Z"), Some(1_804_334_400));
        assert_eq!(der_time(0x18, b"2027030612000Z"), None);
        assert_eq!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None, "no 5-byte lengths");
        assert_eq!(not_after(b"\x30\x03\x02\x01\x01"), None);
        // openssl's "-days 2": two days from now.
        let (cert, key) = pair("expiry");
        let setup = TlsSetup::load(&cert, &key).unwrap();
        let now = i64::try_from(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        )
        .unwrap();
        let left = setup.not_after().unwrap() - now;
        assert!((2 * 86_400 - 120..=2 * 86_400 + 5).contains(&left), "{left}");
        let _ = std::fs::remove_dir_all(cert.parent().unwrap());
    }

    #[test]
    fn a_reload_with_a_bad_pair_keeps_the_old_one() {
        let (cert, key) = pair("reload-a");
        let (other_cert, other_key) = pair("reload-b");
        let setup = TlsSetup::load(&cert, &key).unwrap();
        let before = Arc::clone(&setup.store.current.read());
        std::fs::copy(&other_cert, &cert).unwrap();
        let err = setup.reload().unwrap_err();
        assert!(err.to_string().contains("is not the key of the certificate"), "{err}");
        assert!(Arc::ptr_eq(&before, &setup.store.current.read()), "the old pair stays");
        std::fs::copy(&other_key, &key).unwrap();
        setup.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &setup.store.current.read()), "the new pair is in");
        let _ = std::fs::remove_dir_all(cert.parent().unwrap());
        let _ = std::fs::remove_dir_all(other_cert.parent().unwrap());
    }
}
