//! SPEC §11: TLS on both ports (`TLS_CERT_FILE`, `TLS_KEY_FILE`,
//! `HTTP_TLS`), reloads on `SIGHUP` and file changes, bad pairs refused
//! at start, plain clients refused, handshakes bounded in time.
//!
//! Certificates are made by each test with the `openssl` command
//! (self-signed, for `localhost` and 127.0.0.1). The client side is rustls
//! (the server's own TLS library, ring provider) trusting exactly the
//! test's certificates, with tungstenite over it for WebSocket.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use crate::support::{Binary, DEADLINE, TempDir, pos, run_binary, wait_until};

/// A TLS client stream, blocking, with read timeouts.
type TlsClient = StreamOwned<ClientConnection, TcpStream>;

/// A certificate pair written by `openssl` into a test directory.
#[derive(Debug, Clone)]
struct Pair {
    cert: PathBuf,
    key: PathBuf,
}

impl Pair {
    /// A new self-signed pair `name` in `dir`: `kind` is `ec` (P-256) or
    /// `rsa` (2048 bits); both keys come out as PKCS#8.
    fn make(dir: &Path, name: &str, kind: &str) -> Pair {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        let newkey = if kind == "rsa" { "rsa:2048" } else { "ec" };
        let mut cmd = Command::new("openssl");
        cmd.args(["req", "-x509", "-newkey", newkey]);
        if kind != "rsa" {
            cmd.args(["-pkeyopt", "ec_paramgen_curve:prime256v1"]);
        }
        let out = cmd
            .args(["-nodes", "-days", "2", "-subj", &format!("/CN=livecast-test-{name}")])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            // A server certificate, not a CA (which webpki refuses as one).
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "keyUsage=digitalSignature,keyEncipherment"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("run openssl (the TLS tests need the openssl command)");
        assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
        Pair { cert, key }
    }

    /// The DER of the (only) certificate.
    fn der(&self) -> Vec<u8> {
        cert_der(&self.cert)
    }

    /// Copies this pair over `to`'s files (the key first, as a renewal
    /// might; each file replaced by a rename, as ACME clients do).
    fn install_as(&self, to: &Pair) {
        replace(&self.key, &to.key);
        replace(&self.cert, &to.cert);
    }
}

/// Replaces `to` with a copy of `from` through a rename.
fn replace(from: &Path, to: &Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).expect("copy");
    std::fs::rename(&tmp, to).expect("rename");
}

fn cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).expect("a certificate").as_ref().to_vec()
}

/// The base64 lines of a PEM key: none of them may ever be printed.
fn key_lines(key: &Path) -> Vec<String> {
    std::fs::read_to_string(key)
        .expect("key")
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 16)
        .map(str::to_owned)
        .collect()
}

#[track_caller]
fn assert_no_key_material(output: &str, pairs: &[&Pair]) {
    for pair in pairs {
        for line in key_lines(&pair.key) {
            assert!(!output.contains(&line), "key material in the output:\n{output}");
            assert!(!output.contains(&line[..16]), "key material in the output:\n{output}");
        }
    }
}

/// A client configuration trusting exactly `trusted`.
fn client_config(trusted: &[&Pair]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for pair in trusted {
        roots.add(CertificateDer::from(pair.der())).expect("a trust anchor");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// Connects and completes the TLS handshake.
fn tls_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> io::Result<TlsClient> {
    let sock = TcpStream::connect(addr)?;
    sock.set_read_timeout(Some(DEADLINE))?;
    sock.set_write_timeout(Some(DEADLINE))?;
    let name = ServerName::try_from("localhost").expect("name");
    let conn = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
    let mut stream = StreamOwned::new(conn, sock);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock)?;
    }
    Ok(stream)
}

/// The certificate a new handshake on `addr` is given.
fn presented(addr: SocketAddr, config: &Arc<ClientConfig>) -> Vec<u8> {
    let stream = tls_connect(addr, config).expect("TLS handshake");
    let chain = stream.conn.peer_certificates().expect("a certificate");
    chain[0].as_ref().to_vec()
}

/// A WebSocket client over TLS on `addr`.
fn wss_connect(addr: SocketAddr, config: &Arc<ClientConfig>) -> WebSocket<TlsClient> {
    let stream = tls_connect(addr, config).expect("TLS handshake");
    let url = format!("wss://localhost:{}/", addr.port());
    let (ws, response) = tungstenite::client::client(url, stream).expect("WebSocket upgrade");
    assert_eq!(response.status(), 101);
    ws
}

/// The next text message, as JSON (pings skipped).
fn recv_json(ws: &mut WebSocket<TlsClient>) -> Value {
    let end = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < end, "no message in time");
        match ws.read().expect("a message") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The next `position` message.
fn recv_position(ws: &mut WebSocket<TlsClient>) -> Value {
    loop {
        let v = recv_json(ws);
        if v["type"] == "position" {
            return v;
        }
    }
}

fn subscribe(ws: &mut WebSocket<TlsClient>, event: &str) -> Vec<Value> {
    let text = json!({"type": "subscribe", "eventId": event}).to_string();
    ws.send(Message::text(text)).expect("send");
    let v = recv_json(ws);
    assert_eq!(v["type"], "subscribed", "{v}");
    v["positions"].as_array().expect("positions").clone()
}

/// One HTTP/1.1 request over TLS; returns (status, headers and body).
fn https(
    addr: SocketAddr,
    config: &Arc<ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = tls_connect(addr, config).expect("TLS handshake");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        addr.port(),
        body.len()
    );
    stream.write_all(request.as_bytes()).expect("write");
    stream.flush().expect("flush");
    let mut raw = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&chunk[..n]),
            // A close without close_notify after a complete response.
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, text)
}

/// A sample of `/metrics` (over https), 0 when absent.
fn metric(addr: SocketAddr, config: &Arc<ClientConfig>, name: &str, labels: &str) -> f64 {
    let (status, page) = https(addr, config, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let prefix = format!("{name}{labels} ");
    page.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// `livecast_tls_reloads_total{result}`.
fn reloads(addr: SocketAddr, config: &Arc<ClientConfig>, result: &str) -> f64 {
    metric(addr, config, "livecast_tls_reloads_total", &format!("{{result=\"{result}\"}}"))
}

/// `POST /ingest` over https, expecting 202.
#[track_caller]
fn ingest(addr: SocketAddr, config: &Arc<ClientConfig>, positions: &Value) {
    let (status, answer) = https(addr, config, "POST", "/ingest", &positions.to_string());
    assert_eq!(status, 202, "{answer}");
}

/// Sends a plain-HTTP request to a TLS port: the connection must close
/// without a byte of answer (no TLS alert, no HTTP), and promptly.
#[track_caller]
fn assert_refused_plain(addr: SocketAddr) {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let started = Instant::now();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("write");
    let mut got = Vec::new();
    // A reset is a close too; what matters is that nothing came back.
    let _ = sock.read_to_end(&mut got);
    assert!(got.is_empty(), "a plain client on {addr} got an answer: {got:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed only after {:?}",
        started.elapsed()
    );
}

/// An in-process server with `pair` on both ports.
fn server(pair: &Pair, f: impl FnOnce(&mut livecast::Config)) -> crate::support::Server {
    crate::support::Server::with(|config| {
        config.tls_cert_file = Some(pair.cert.clone());
        config.tls_key_file = Some(pair.key.clone());
        f(config);
    })
}

#[test]
fn websocket_over_tls_end_to_end_with_ingest_over_https() {
    let dir = TempDir::new("tls-e2e");
    let pair = Pair::make(dir.path(), "a", "ec");
    let srv = server(&pair, |_| {});
    let trust = client_config(&[&pair]);

    // A big snapshot first: more than one write's worth of TLS records,
    // so the non-blocking loop must wait for room and flush the rest.
    let fleet: Vec<Value> = (0..2000)
        .map(|i| pos("tls-e2e", &format!("device-{i:04}-{}", "x".repeat(60)), 1))
        .collect();
    let (status, answer) =
        https(srv.http, &trust, "POST", "/ingest", &Value::from(fleet).to_string());
    assert_eq!(status, 202, "{answer}");

    let mut ws = wss_connect(srv.ws, &trust);
    assert_eq!(subscribe(&mut ws, "tls-e2e").len(), 2000);
    let mut idle = wss_connect(srv.ws, &trust);
    subscribe(&mut idle, "tls-e2e");

    for seq in 2..=20 {
        let body = json!([pos("tls-e2e", "runner", seq)]).to_string();
        let (status, answer) = https(srv.http, &trust, "POST", "/ingest", &body);
        assert_eq!(status, 202, "{answer}");
        let got = recv_position(&mut ws);
        assert_eq!(got["deviceId"], "runner", "{got}");
        assert_eq!(got["seq"], seq, "{got}");
    }
    // The second client read nothing meanwhile: its positions waited in
    // order, whatever the TLS session buffered.
    for seq in 2..=20 {
        assert_eq!(recv_position(&mut idle)["seq"], seq);
    }
    // The protocol's own ping, through the same session.
    ws.send(Message::text(json!({"type": "ping", "id": 7}).to_string())).expect("send");
    let pong = recv_json(&mut ws);
    assert_eq!((pong["type"].as_str(), pong["id"].as_i64()), (Some("pong"), Some(7)), "{pong}");

    // The rest of the ports' pages, over https.
    let (status, page) = https(srv.ws, &trust, "GET", "/auth/check", "");
    assert_eq!(status, 204, "{page}");
    let (status, page) = https(srv.http, &trust, "GET", "/", "");
    assert_eq!(status, 200, "{page}");
    let (status, page) = https(srv.http, &trust, "GET", "/livecast.js", "");
    assert_eq!(status, 200);
    assert!(page.contains("export"), "the client library (an ES module): {page}");
    let (status, page) = https(srv.http, &trust, "GET", "/metrics", "");
    assert_eq!(status, 200, "{page}");

    ws.close(None).expect("close");
    srv.stop(Duration::from_secs(2));
}

#[test]
fn an_rsa_key_works_too() {
    let dir = TempDir::new("tls-rsa");
    let pair = Pair::make(dir.path(), "rsa", "rsa");
    let srv = server(&pair, |_| {});
    let trust = client_config(&[&pair]);
    assert_eq!(presented(srv.ws, &trust), pair.der());
    let (status, _) = https(srv.http, &trust, "GET", "/healthz", "");
    assert_eq!(status, 200);
}

#[test]
fn plain_clients_get_no_answer_on_both_ports() {
    let dir = TempDir::new("tls-plain");
    let pair = Pair::make(dir.path(), "a", "ec");
    let srv = server(&pair, |_| {});
    assert_refused_plain(srv.ws);
    assert_refused_plain(srv.http);
    // A plain WebSocket client fails to upgrade.
    assert!(tungstenite::connect(format!("ws://{}/", srv.ws)).is_err());
    // The ports still serve TLS clients.
    let trust = client_config(&[&pair]);
    let (status, _) = https(srv.http, &trust, "GET", "/healthz", "");
    assert_eq!(status, 200);
    drop(wss_connect(srv.ws, &trust));
}

#[test]
fn http_tls_off_keeps_the_http_port_plain() {
    let dir = TempDir::new("tls-off");
    let pair = Pair::make(dir.path(), "a", "ec");
    let srv = server(&pair, |config| config.http_tls = false);
    let trust = client_config(&[&pair]);
    let plain = crate::support::http_request(srv.http, "GET", "/healthz", &[], b"");
    assert_eq!(plain.status, 200);
    // Positions posted over plain HTTP reach a wss:// client.
    let mut ws = wss_connect(srv.ws, &trust);
    subscribe(&mut ws, "tls-off");
    srv.ingest_ok(&json!([pos("tls-off", "d", 1)]));
    assert_eq!(recv_position(&mut ws)["deviceId"], "d");
    assert!(tls_connect(srv.http, &trust).is_err(), "the HTTP port does not speak TLS");
    assert_refused_plain(srv.ws);
}

/// (what, environment, a word of the reason printed).
type BadCase<'a> = (&'a str, Vec<(&'a str, &'a str)>, &'a str);

#[test]
fn every_bad_configuration_exits_2_without_key_material() {
    let dir = TempDir::new("tls-bad");
    let a = Pair::make(dir.path(), "a", "ec");
    let b = Pair::make(dir.path(), "b", "ec");
    let missing = dir.path().join("missing.pem");
    let (cert, key) = (a.cert.to_str().unwrap(), a.key.to_str().unwrap());
    let dir_path = dir.path().to_str().unwrap();
    let cases: Vec<BadCase<'_>> = vec![
        ("certificate alone", vec![("TLS_CERT_FILE", cert)], "set without TLS_KEY_FILE"),
        ("key alone", vec![("TLS_KEY_FILE", key)], "set without TLS_CERT_FILE"),
        (
            "missing key file",
            vec![("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", missing.to_str().unwrap())],
            "cannot read",
        ),
        (
            "unreadable certificate (a directory)",
            vec![("TLS_CERT_FILE", dir_path), ("TLS_KEY_FILE", key)],
            "cannot read",
        ),
        (
            "mismatched pair",
            vec![("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", b.key.to_str().unwrap())],
            "is not the key of the certificate",
        ),
        (
            "key given as certificate",
            vec![("TLS_CERT_FILE", key), ("TLS_KEY_FILE", key)],
            "no certificate found",
        ),
        (
            "certificate given as key",
            vec![("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", cert)],
            "no private key found",
        ),
    ];
    for (what, mut env, reason) in cases {
        env.extend([("LIVE_WS_PORT", "0"), ("HTTP_PORT", "0")]);
        let (code, out, err) = run_binary(&[], &env);
        let all = format!("{out}{err}");
        assert_eq!(code, Some(2), "{what}: exit code; output:\n{all}");
        assert!(all.contains(reason), "{what}: the reason ({reason:?}) in:\n{all}");
        assert!(!all.contains("ready"), "{what}: started anyway:\n{all}");
        assert_no_key_material(&all, &[&a, &b]);
    }
}

#[test]
fn sighup_switches_new_handshakes_while_an_open_connection_keeps_working() {
    let dir = TempDir::new("tls-hup");
    let live = Pair::make(dir.path(), "live", "ec");
    let a = Pair::make(dir.path(), "a", "ec");
    let b = Pair::make(dir.path(), "b", "ec");
    a.install_as(&live);
    let env = [
        ("TLS_CERT_FILE", live.cert.to_str().unwrap()),
        ("TLS_KEY_FILE", live.key.to_str().unwrap()),
    ];
    let bin = Binary::start(&env);
    let trust = client_config(&[&a, &b]);
    assert_eq!(presented(bin.ws, &trust), a.der());
    let mut open = wss_connect(bin.ws, &trust);
    subscribe(&mut open, "hup");

    // A bad pair first (b's certificate, a's key): SIGHUP keeps a.
    replace(&b.cert, &live.cert);
    bin.signal("-HUP");
    wait_until(DEADLINE, "the reload error in the log", || {
        bin.stderr().contains("still serving the previous certificate pair")
    });
    assert_eq!(presented(bin.ws, &trust), a.der(), "a bad pair keeps the old one");

    b.install_as(&live);
    bin.signal("-HUP");
    wait_until(DEADLINE, "new handshakes get b", || presented(bin.ws, &trust) == b.der());
    assert_eq!(presented(bin.http, &trust), b.der(), "both ports");

    let body = json!([pos("hup", "d", 1)]).to_string();
    let (status, answer) = https(bin.http, &trust, "POST", "/ingest", &body);
    assert_eq!(status, 202, "{answer}");
    assert_eq!(recv_position(&mut open)["deviceId"], "d", "the open connection");
    assert!(bin.stderr().contains("certificate pair reloaded: SIGHUP"), "{}", bin.stderr());
    assert_no_key_material(&bin.stderr(), &[&a, &b]);
    bin.signal("-TERM");
}

#[test]
fn a_file_change_switches_new_handshakes_and_a_bad_one_keeps_the_old_pair() {
    let dir = TempDir::new("tls-watch");
    let live = Pair::make(dir.path(), "live", "ec");
    let a = Pair::make(dir.path(), "a", "ec");
    let b = Pair::make(dir.path(), "b", "ec");
    let c = Pair::make(dir.path(), "c", "ec");
    a.install_as(&live);
    let srv = server(&live, |_| {});
    let trust = client_config(&[&a, &b, &c]);
    let mut open = wss_connect(srv.ws, &trust);
    subscribe(&mut open, "watch");

    b.install_as(&live);
    wait_until(DEADLINE, "new handshakes get b", || presented(srv.ws, &trust) == b.der());
    wait_until(DEADLINE, "the HTTP port too", || presented(srv.http, &trust) == b.der());
    ingest(srv.http, &trust, &json!([pos("watch", "d", 1)]));
    assert_eq!(recv_position(&mut open)["deviceId"], "d", "the open connection");

    assert_eq!(reloads(srv.http, &trust, "ok"), 1.0);
    let expiry = metric(srv.http, &trust, "livecast_tls_certificate_expiry_timestamp_seconds", "");
    let now = crate::support::now_ms() as f64 / 1000.0;
    assert!((now + 86_400.0..now + 3.0 * 86_400.0).contains(&expiry), "{expiry} at {now}");

    // A mismatched change (c's certificate, b's key) is tried, and not
    // taken: b is still served.
    replace(&c.cert, &live.cert);
    wait_until(DEADLINE, "a failed reload", || reloads(srv.http, &trust, "error") >= 1.0);
    assert_eq!(presented(srv.ws, &trust), b.der(), "a bad pair keeps the old one");
    // Its key arrives: now the pair is whole and taken.
    replace(&c.key, &live.key);
    wait_until(DEADLINE, "new handshakes get c", || presented(srv.ws, &trust) == c.der());
    ingest(srv.http, &trust, &json!([pos("watch", "d", 2)]));
    assert_eq!(recv_position(&mut open)["seq"], 2, "the open connection");
}

#[test]
fn silent_sockets_neither_delay_a_handshake_nor_outlive_the_timeout() {
    let dir = TempDir::new("tls-silent");
    let pair = Pair::make(dir.path(), "a", "ec");
    let timeout = Duration::from_secs(5);
    let srv = server(&pair, |config| {
        config.handshake_timeout = timeout;
        config.http_head_timeout = timeout;
        config.max_pending_per_ip = 64;
    });
    let trust = client_config(&[&pair]);
    // Twenty silent sockets on each port, then a real client on each.
    let opened = Instant::now();
    let mut silent: Vec<(SocketAddr, TcpStream)> = [srv.ws, srv.http]
        .into_iter()
        .flat_map(|port| (0..20).map(move |_| port))
        .map(|port| {
            let s = TcpStream::connect(port).expect("connect");
            s.set_nonblocking(true).expect("non-blocking");
            (port, s)
        })
        .collect();
    let started = Instant::now();
    drop(wss_connect(srv.ws, &trust));
    assert_eq!(https(srv.http, &trust, "GET", "/healthz", "").0, 200);
    let took = started.elapsed();
    assert!(took < timeout / 2, "the real clients waited {took:?} behind silent sockets");
    // Each silent socket is closed at its handshake deadline, not before.
    let mut closed_at = Vec::new();
    wait_until(timeout + DEADLINE, "every silent socket closed", || {
        silent.retain(|(port, s)| {
            let mut byte = [0u8; 1];
            match (&*s).read(&mut byte) {
                Ok(0) => {}
                Ok(_) => panic!("a silent socket on {port} got bytes"),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => {}
            }
            closed_at.push((*port, opened.elapsed()));
            false
        });
        silent.is_empty()
    });
    for (port, at) in closed_at {
        assert!(at >= timeout - Duration::from_millis(100), "closed early on {port}: {at:?}");
        assert!(at < timeout + Duration::from_secs(3), "outlived the timeout on {port}: {at:?}");
    }
}

#[test]
fn the_demo_posts_over_https_and_a_wss_client_sees_it() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let dir = TempDir::new("tls-demo");
    let pair = Pair::make(dir.path(), "a", "ec");
    let mut child = Command::new(env!("CARGO_BIN_EXE_livecast"))
        .arg("--demo")
        .env_clear()
        .env("LIVE_WS_PORT", "0")
        .env("HTTP_PORT", "0")
        .env("TLS_CERT_FILE", &pair.cert)
        .env("TLS_KEY_FILE", &pair.key)
        .env("LIVE_DEMO_DEVICES", "3")
        .env("LIVE_DEMO_INTERVAL_MS", "100")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn livecast --demo");
    let out = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    crate::support::spawn("demo-stdout", move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let (mut ws_addr, mut dashboard) = (None, None);
    let end = Instant::now() + DEADLINE;
    while ws_addr.is_none() || dashboard.is_none() {
        let line = rx.recv_timeout(end.saturating_duration_since(Instant::now()));
        let line = line.unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("no banner with wss:// and the https dashboard");
        });
        if let Some(rest) = line.strip_prefix("  WebSocket: wss://") {
            ws_addr = rest.trim_end_matches('/').parse::<SocketAddr>().ok();
        }
        if let Some(rest) = line.strip_prefix("  Demo dashboard: https://") {
            dashboard = Some(rest.to_owned());
        }
    }
    let trust = client_config(&[&pair]);
    let dashboard = dashboard.expect("dashboard");
    let (host, path) = dashboard.split_once('/').expect("a path");
    let http: SocketAddr = host.parse().expect("the dashboard's address");
    let (status, page) = https(http, &trust, "GET", &format!("/{path}"), "");
    assert_eq!(status, 200, "{page}");

    let mut ws = wss_connect(ws_addr.expect("ws"), &trust);
    subscribe(&mut ws, "demo-marathon");
    let got = recv_position(&mut ws);
    assert!(got["deviceId"].as_str().is_some_and(|d| d.starts_with("runner-")), "{got}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn sighup_without_tls_is_logged_and_does_not_stop_the_server() {
    let bin = Binary::start(&[]);
    bin.signal("-HUP");
    wait_until(DEADLINE, "the SIGHUP log line", || bin.stderr().contains("nothing to reload"));
    let health = crate::support::http_request(bin.http, "GET", "/healthz", &[], b"");
    assert_eq!(health.status, 200);
    bin.signal("-TERM");
}

#[test]
fn a_refusal_by_a_limit_on_a_tls_port_is_a_close_without_a_plain_503() {
    let dir = TempDir::new("tls-refuse");
    let pair = Pair::make(dir.path(), "a", "ec");
    let srv = server(&pair, |config| {
        config.max_pending_per_ip = 1;
        config.http_max_connections_per_ip = 1;
        config.handshake_timeout = Duration::from_secs(10);
        config.http_head_timeout = Duration::from_secs(10);
    });
    let trust = client_config(&[&pair]);
    for port in [srv.ws, srv.http] {
        // One silent connection holds the address's only place (accepted
        // first: the backlog is FIFO).
        let _held = TcpStream::connect(port).expect("connect");
        let refused = TcpStream::connect(port).expect("connect");
        refused.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let started = Instant::now();
        let mut got = Vec::new();
        let _ = (&refused).read_to_end(&mut got);
        assert!(got.is_empty(), "a refusal on TLS port {port} answered {got:?}");
        let took = started.elapsed();
        assert!(took < Duration::from_secs(3), "closed after {took:?}: not refused at accept");
        assert!(tls_connect(port, &trust).is_err(), "refused: no handshake on {port}");
    }
}

#[test]
fn a_tls_client_that_stops_reading_is_closed_for_back_pressure_and_the_others_get_everything() {
    let dir = TempDir::new("tls-bp");
    let pair = Pair::make(dir.path(), "a", "ec");
    let srv = server(&pair, |c| {
        c.queue_capacity = 4;
        c.backpressure_threshold_bytes = 256 * 1024;
    });
    let trust = client_config(&[&pair]);
    let mut slow = wss_connect(srv.ws, &trust);
    rustix::net::sockopt::set_socket_recv_buffer_size(&slow.get_ref().sock, 4096).expect("rcvbuf");
    subscribe(&mut slow, "tls-bp");
    let mut normal = wss_connect(srv.ws, &trust);
    subscribe(&mut normal, "tls-bp");

    // 8 MB of positions, more than any socket buffers hold; the normal
    // client reads each batch before the next is posted.
    let pad = "x".repeat(8000);
    let mut seq = 0;
    for _ in 0..10 {
        let batch: Vec<Value> = (0..100)
            .map(|_| {
                seq += 1;
                let mut p = pos("tls-bp", "d", seq);
                p["pad"] = json!(pad);
                p
            })
            .collect();
        ingest(srv.http, &trust, &Value::from(batch));
        for want in seq - 99..=seq {
            assert_eq!(recv_position(&mut normal)["seq"], want, "the normal client, in order");
        }
    }
    wait_until(DEADLINE, "the slow TLS client closed for back-pressure", || {
        metric(srv.http, &trust, "livecast_backpressure_closes_total", "") >= 1.0
    });
    // Its close frame cannot reach it: it is dropped at the close's grace.
    wait_until(DEADLINE, "the slow client gone", || {
        metric(srv.http, &trust, "livecast_connections_open", "") == 1.0
    });
    let frame = json!([pos("tls-bp", "d", seq + 1)]);
    ingest(srv.http, &trust, &frame);
    assert_eq!(recv_position(&mut normal)["seq"], seq + 1, "the normal client goes on");
}

#[test]
fn https_keeps_a_connection_alive_across_requests_pipelined_or_not() {
    let dir = TempDir::new("tls-keepalive");
    let pair = Pair::make(dir.path(), "a", "ec");
    let srv = server(&pair, |_| {});
    let trust = client_config(&[&pair]);
    let mut stream = tls_connect(srv.http, &trust).expect("TLS handshake");
    let get = |path: &str, close: bool| {
        let connection = if close { "Connection: close\r\n" } else { "" };
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{connection}\r\n")
    };
    // One request, its answer, then two in one write (one TLS record).
    stream.write_all(get("/healthz", false).as_bytes()).expect("write");
    stream.flush().expect("flush");
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = stream.read(&mut chunk).expect("the first answer");
        assert!(n > 0, "closed after one request");
        seen.extend_from_slice(&chunk[..n]);
    }
    let pipelined = format!("{}{}", get("/healthz", false), get("/readyz", true));
    stream.write_all(pipelined.as_bytes()).expect("write");
    stream.flush().expect("flush");
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => seen.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("{e}"),
        }
    }
    let text = String::from_utf8_lossy(&seen);
    assert_eq!(text.matches("HTTP/1.1 ").count(), 3, "three answers on one connection: {text}");
}
