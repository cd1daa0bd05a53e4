//! Hostile and broken peers (hardening): each offender is closed with the
//! right code or dropped, the server keeps serving a well-behaved client
//! meanwhile, and no connection thread outlives its connection.
//!
//! Each test runs the `livecast` executable, so that `/proc/PID/task`
//! counts the `ws-` threads of that server alone.

mod edges; // SPEC §9, second round at the edges: Host, proxies, crowds, bodies, logs
mod http; // SPEC §9 on the HTTP port: the request rules of issue 12

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{
    Binary, Client, DEADLINE, Frame, RawEnd, RawWs, http_request, pos, seq_of, wait_until,
};

/// A server with short timeouts so that each test stays short. The ping
/// interval is long enough for a witness that reads only now and then.
fn server(extra: &[(&str, &str)]) -> Binary {
    let mut env = vec![
        ("LIVE_WS_HANDSHAKE_TIMEOUT_MS", "500"),
        ("LIVE_WS_PING_INTERVAL_MS", "3000"),
        ("LIVE_WS_DRAIN_TIMEOUT_MS", "500"),
        ("LOG_LEVEL", "warn"),
    ];
    // Later entries win: the test's own values override the defaults.
    env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    env.extend_from_slice(extra);
    Binary::start(&env)
}

fn ws_threads(bin: &Binary) -> usize {
    bin.thread_names().iter().filter(|n| n.starts_with("ws-")).count()
}

/// Waits until the `ws-` threads are exactly the live connections.
#[track_caller]
fn expect_ws_threads(bin: &Binary, live: usize) {
    wait_until(DEADLINE, &format!("{live} ws- threads"), || ws_threads(bin) == live);
}

/// A subscribed well-behaved client, and a check that it still gets a
/// fresh position.
struct Witness {
    client: Client,
    http: SocketAddr,
    seq: u64,
}

impl Witness {
    fn new(bin: &Binary) -> Witness {
        let mut client = Client::connect(bin.ws, "/", &[]).expect("witness connects");
        client.subscribe("w");
        Witness { client, http: bin.http, seq: 0 }
    }

    #[track_caller]
    fn still_served(&mut self) {
        self.seq += 1;
        let body = json!([pos("w", "witness", self.seq)]).to_string();
        let r = http_request(
            self.http,
            "POST",
            "/ingest",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        let p = self.client.recv_position();
        assert_eq!(seq_of(&p), self.seq);
    }
}

/// Sends one masked frame with explicit FIN, opcode and declared length
/// (which may lie about the payload that follows).
fn raw_frame(fin: bool, opcode: u8, declared: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![if fin { 0x80 | opcode } else { opcode }];
    if declared < 126 {
        f.push(0x80 | u8::try_from(declared).expect("< 126"));
    } else if declared <= 0xFFFF {
        f.push(0x80 | 126);
        f.extend_from_slice(&u16::try_from(declared).expect("<= 0xFFFF").to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&declared.to_be_bytes());
    }
    let mask = [1u8, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads frames until the close frame or the end; returns the close code
/// when one came.
fn close_code(raw: &mut RawWs) -> Option<u16> {
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        match raw.read_frame(Duration::from_millis(200)) {
            Ok(Some(f)) if f.opcode == Frame::CLOSE => return Some(f.close_code_reason().0),
            Ok(_) => {}
            Err(RawEnd::Eof | RawEnd::Error(_)) => return None,
        }
    }
    panic!("the server neither closed nor dropped the connection");
}

#[test]
fn slowloris_handshake_is_cut_at_the_deadline() {
    let bin = server(&[]);
    let mut w = Witness::new(&bin);
    let mut slow = TcpStream::connect(bin.ws).unwrap();
    let started = Instant::now();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    let mut dropped = false;
    for byte in request {
        if slow.write_all(&[*byte]).is_err() {
            dropped = true;
            break;
        }
        w.still_served();
        std::thread::sleep(Duration::from_millis(100)); // the attack's own pace
        if started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    // The server gave up at the 500 ms deadline: reads see the end.
    slow.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    let ended = dropped || matches!(std::io::Read::read(&mut slow, &mut buf), Ok(0) | Err(_));
    assert!(ended, "slowloris connection still open");
    assert!(started.elapsed() < Duration::from_secs(4));
    expect_ws_threads(&bin, 1);
}

#[test]
fn half_open_connections_up_to_the_limit_then_503_and_recovery() {
    // The global cap, not the per-address handshake limit, is under test.
    let bin = server(&[("LIVE_WS_MAX_CONNECTIONS", "20"), ("LIVE_WS_MAX_PENDING_PER_IP", "100")]);
    let mut w = Witness::new(&bin);
    let idle: Vec<TcpStream> = (0..19).map(|_| TcpStream::connect(bin.ws).unwrap()).collect();
    expect_ws_threads(&bin, 20);
    let refused = http_request(bin.ws, "GET", "/", &crate::support::upgrade_headers(), b"");
    assert_eq!(refused.status, 503);
    w.still_served();
    // The half-open ones are dropped at the handshake deadline.
    expect_ws_threads(&bin, 1);
    drop(idle);
    let mut again = Client::connect(bin.ws, "/", &[]).expect("room again after the deadline");
    again.subscribe("w");
    w.still_served();
}

#[test]
fn ping_flood_is_closed_1008_and_others_unaffected() {
    let bin = server(&[]);
    let mut w = Witness::new(&bin);
    let mut raw = RawWs::connect(bin.ws, "/");
    let ping = raw_frame(true, Frame::PING, 0, b"");
    let flood: Vec<u8> = ping.iter().copied().cycle().take(ping.len() * 200).collect();
    let _ = raw.stream.write_all(&flood);
    assert_eq!(close_code(&mut raw), Some(1008));
    w.still_served();
    expect_ws_threads(&bin, 1);
}

#[test]
fn fragments_that_never_complete_hit_the_message_limit() {
    let bin = server(&[("LIVE_WS_MAX_MESSAGE_BYTES", "4096")]);
    let mut w = Witness::new(&bin);
    let mut raw = RawWs::connect(bin.ws, "/");
    let mut data = raw_frame(false, Frame::TEXT, 1000, &[b'a'; 1000]);
    for _ in 0..10 {
        data.extend(raw_frame(false, 0x0, 1000, &[b'a'; 1000]));
    }
    let _ = raw.stream.write_all(&data);
    assert_eq!(close_code(&mut raw), Some(1009));
    w.still_served();
    expect_ws_threads(&bin, 1);
}

#[test]
fn a_fragment_then_silence_is_dropped_by_the_heartbeat() {
    let bin = server(&[("LIVE_WS_PING_INTERVAL_MS", "300")]);
    let mut w = Witness::new(&bin);
    let mut raw = RawWs::connect(bin.ws, "/");
    raw.stream.write_all(&raw_frame(false, Frame::TEXT, 10, b"{\"type\":\"s")).unwrap();
    // It never answers pings: gone after about two 300 ms intervals. The
    // witness keeps reading (and so answering pings) meanwhile.
    let started = Instant::now();
    loop {
        match raw.read_frame(Duration::from_millis(100)) {
            Err(_) => break,
            Ok(_) => assert!(started.elapsed() < Duration::from_secs(5), "still connected"),
        }
        w.still_served();
    }
    w.still_served();
    expect_ws_threads(&bin, 1);
}

#[test]
fn a_1_gib_declared_frame_is_refused_with_1009() {
    let bin = server(&[]);
    let mut w = Witness::new(&bin);
    let mut raw = RawWs::connect(bin.ws, "/");
    raw.stream.write_all(&raw_frame(true, Frame::TEXT, 1 << 30, b"{}")).unwrap();
    assert_eq!(close_code(&mut raw), Some(1009));
    w.still_served();
    expect_ws_threads(&bin, 1);
}

#[test]
fn invalid_utf8_in_a_text_frame_is_closed_1007() {
    let bin = server(&[]);
    let mut w = Witness::new(&bin);
    let mut raw = RawWs::connect(bin.ws, "/");
    raw.stream.write_all(&raw_frame(true, Frame::TEXT, 4, &[0xff, 0xfe, 0x80, 0x41])).unwrap();
    assert_eq!(close_code(&mut raw), Some(1007));
    w.still_served();
    expect_ws_threads(&bin, 1);
}

#[test]
fn subscribe_unsubscribe_tight_loop_is_closed_1008() {
    let bin = server(&[]);
    let mut w = Witness::new(&bin);
    let mut raw = RawWs::connect(bin.ws, "/");
    let mut burst = Vec::new();
    for _ in 0..200 {
        burst.extend(raw_frame(true, Frame::TEXT, 36, br#"{"type":"subscribe","eventId":"w-1"}"#));
        burst.extend(raw_frame(
            true,
            Frame::TEXT,
            38,
            br#"{"type":"unsubscribe","eventId":"w-1"}"#,
        ));
    }
    let _ = raw.stream.write_all(&burst);
    assert_eq!(close_code(&mut raw), Some(1008));
    w.still_served();
    expect_ws_threads(&bin, 1);
    let subs: f64 = {
        let text = http_request(bin.http, "GET", "/metrics", &[], b"").text();
        crate::support::metric(&text, "livecast_subscriptions", &[])
    };
    assert_eq!(subs, 1.0, "only the witness's subscription is left");
}

#[test]
fn connection_churn_leaks_no_thread() {
    // Sockets that vanish unread are still "in the handshake" until their
    // thread sees the end: from one address, they would otherwise crowd out
    // the handshakes this test makes (the per-address limit is not its
    // subject).
    let bin = server(&[("LIVE_WS_MAX_PENDING_PER_IP", "1000")]);
    let mut w = Witness::new(&bin);
    for round in 0..10 {
        // Half complete the upgrade and subscribe, half just vanish.
        for i in 0..200 {
            let s = TcpStream::connect(bin.ws).unwrap();
            if i % 2 == 0 {
                let mut raw = RawWs::handshake(s, bin.ws, "/");
                let _ = raw.send_text(&json!({"type":"subscribe","eventId":"churn"}).to_string());
            }
        }
        if round % 5 == 4 {
            w.still_served();
        }
    }
    expect_ws_threads(&bin, 1);
    w.still_served();
}

/// A TCP connection to `to` from the local address `from` (another
/// loopback address counts as another client IP).
fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    rustix::net::bind(&fd, &local).unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    TcpStream::from(fd)
}

#[test]
fn the_per_ip_limit_refuses_past_it_and_counts_per_address() {
    let bin = server(&[("LIVE_WS_MAX_CONNECTIONS_PER_IP", "2")]);
    let mut w = Witness::new(&bin); // 127.0.0.1: one of two
    let second = RawWs::handshake(connect_from("127.0.0.1", bin.ws), bin.ws, "/");
    let refused = http_request(bin.ws, "GET", "/", &crate::support::upgrade_headers(), b"");
    assert_eq!(refused.status, 503, "a third connection from 127.0.0.1");
    // Another address has its own allowance.
    let other = RawWs::handshake(connect_from("127.0.0.2", bin.ws), bin.ws, "/");
    w.still_served();
    drop(second);
    drop(other);
    expect_ws_threads(&bin, 1);
    let again = RawWs::handshake(connect_from("127.0.0.1", bin.ws), bin.ws, "/");
    drop(again);
    w.still_served();
}

/// A `GET path` over an already connected, kept-alive socket; `None` when
/// the connection ends before a whole response head (a refusal may be an
/// abrupt close).
fn keepalive_get(stream: &mut TcpStream, path: &str, headers: &[(&str, &str)]) -> Option<u16> {
    use std::io::Read;
    let mut req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream.write_all(req.as_bytes()).ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_string();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while got.len() < head_end + length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    Some(status)
}

/// The `warn` lines that report refusals (at most one a minute per port).
fn refusal_warnings(bin: &Binary) -> usize {
    bin.stderr().lines().filter(|l| l.contains("refusing connections")).count()
}

/// A metric's value, 0 when absent, read from 127.0.0.3 so that the limits
/// a test puts on 127.0.0.1 do not refuse the scrape.
fn metric_of(bin: &Binary, name: &str, labels: &[(&str, &str)]) -> f64 {
    use std::io::Read;
    let mut s = connect_from("127.0.0.3", bin.http);
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "GET /metrics: {text}");
    crate::support::metric_opt(&text, name, labels).unwrap_or(0.0)
}

/// Issue 12 row 7: keep-alive connections from one address cannot take
/// every HTTP connection: past `HTTP_MAX_CONNECTIONS_PER_IP` (default 32)
/// that address gets 503, others are still served, and the refusals are
/// counted and logged at warn once.
#[test]
fn row7_one_address_cannot_hold_every_http_connection() {
    let bin = server(&[]);
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        let mut s = connect_from("127.0.0.1", bin.http);
        match keepalive_get(&mut s, "/healthz", &[]) {
            Some(200) => held.push(s),
            Some(503) | None => refused += 1,
            Some(other) => panic!("GET /healthz: {other}"),
        }
    }
    assert_eq!((held.len(), refused), (32, 8), "32 kept-alive connections per address");
    let mut other = connect_from("127.0.0.2", bin.http);
    assert_eq!(keepalive_get(&mut other, "/healthz", &[]), Some(200), "another address");
    // The held connections still work.
    assert_eq!(keepalive_get(&mut held[0], "/healthz", &[]), Some(200));
    let mut probe = connect_from("127.0.0.2", bin.http);
    assert_eq!(keepalive_get(&mut probe, "/metrics", &[]), Some(200));
    assert_eq!(metric_of(&bin, "livecast_http_refused_total", &[("reason", "per-ip")]), 8.0);
    wait_until(DEADLINE, "the refusal warning", || refusal_warnings(&bin) >= 1);
    assert_eq!(refusal_warnings(&bin), 1, "at most one warn a minute:\n{}", bin.stderr());
    // A freed connection gives its place back.
    drop(held.pop());
    wait_until(DEADLINE, "a place for 127.0.0.1 again", || {
        let mut s = connect_from("127.0.0.1", bin.http);
        keepalive_get(&mut s, "/healthz", &[]) == Some(200)
    });
}

/// Issue 12 row 8: silent sockets from one address cannot fill
/// `LIVE_WS_MAX_CONNECTIONS`: past `LIVE_WS_MAX_PENDING_PER_IP` (default 8)
/// handshakes from one address get 503 at once, and a real client from
/// another address gets its 101.
#[test]
fn row8_silent_sockets_from_one_address_leave_room_for_others() {
    let bin =
        server(&[("LIVE_WS_MAX_CONNECTIONS", "20"), ("LIVE_WS_HANDSHAKE_TIMEOUT_MS", "20000")]);
    let silent: Vec<TcpStream> = (0..20).map(|_| connect_from("127.0.0.1", bin.ws)).collect();
    let refused_pending = || metric_of(&bin, "livecast_ws_refused_total", &[("reason", "pending")]);
    wait_until(DEADLINE, "the acceptor took all 20 sockets", || {
        ws_threads(&bin) as f64 + refused_pending() == 20.0
    });
    let mut real = RawWs::handshake(connect_from("127.0.0.2", bin.ws), bin.ws, "/");
    real.send_text(&json!({"type":"subscribe","eventId":"e"}).to_string()).unwrap();
    assert_eq!(real.recv_json()["type"], "subscribed");
    assert_eq!((ws_threads(&bin), refused_pending()), (9, 12.0));
    // The refused ones were told so.
    let mut answered = 0;
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut buf = [0u8; 64];
        if matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if buf[..n].starts_with(b"HTTP/1.1 503"))
        {
            answered += 1;
        }
    }
    assert_eq!(answered, 12);
    wait_until(DEADLINE, "the refusal warning", || refusal_warnings(&bin) >= 1);
    assert_eq!(refusal_warnings(&bin), 1, "at most one warn a minute:\n{}", bin.stderr());
}

/// Issue 12 row 12: a refused peer that keeps sending cannot hold the
/// acceptor: the 503 path reads a bounded amount, so the next client is
/// answered at once. (Over loopback a reader outpaces one writer, so the old
/// unbounded drain ended quickly here too: the bound itself is proved by
/// the unit test `accept::tests::the_refusal_drain_is_bounded_…`.)
#[test]
fn row12_a_refused_peer_that_keeps_sending_does_not_stall_the_acceptor() {
    let bin =
        server(&[("LIVE_WS_MAX_CONNECTIONS", "1"), ("LIVE_WS_HANDSHAKE_TIMEOUT_MS", "20000")]);
    let _holder = TcpStream::connect(bin.ws).unwrap();
    expect_ws_threads(&bin, 1);
    let rejected = || metric_of(&bin, "livecast_upgrades_rejected_total", &[("status", "503")]);
    let mut flood = TcpStream::connect(bin.ws).unwrap();
    let flooder = crate::support::spawn("flooder", move || {
        let chunk = vec![b'x'; 64 * 1024];
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(8) {
            if flood.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    wait_until(DEADLINE, "the flooder refused", || rejected() >= 1.0);
    let started = Instant::now();
    let probe = http_request(bin.ws, "GET", "/", &crate::support::upgrade_headers(), b"");
    let took = started.elapsed();
    assert_eq!(probe.status, 503);
    assert!(took < Duration::from_secs(3), "the acceptor answered after {took:?}");
    flooder.join().unwrap();
}

/// Issue 12 row 3, WebSocket half: in mode `none` a page on another site
/// cannot read the events (SPEC §5), while the built-in dashboard (same
/// host, the HTTP port) and non-browser clients (no Origin) can.
#[test]
fn row3_a_foreign_origin_is_refused_in_mode_none() {
    let srv = crate::support::Server::start();
    assert_eq!(srv.upgrade("/", &[("Origin", "https://evil.example")]).status, 403);
    let dashboard = format!("http://127.0.0.1:{}", srv.http.port());
    let mut c = srv.connect_with("/", &[("Origin", &dashboard)]).expect("the dashboard's origin");
    assert!(c.subscribe("e").is_empty());
    assert_eq!(srv.upgrade("/", &[]).status, 101, "no Origin: not a browser");
    let metrics = srv.metrics();
    assert_eq!(
        crate::support::metric(&metrics, "livecast_upgrades_rejected_total", &[("status", "403")]),
        1.0
    );
}

/// A server trusting 127.0.0.1 as its reverse proxy, with per-IP limits of
/// one WebSocket connection and two HTTP connections.
fn behind_proxy() -> crate::support::Server {
    crate::support::Server::with(|c| {
        c.trusted_proxies = livecast::TrustedProxies::parse("127.0.0.1").unwrap();
        c.max_connections_per_ip = 1;
        c.http_max_connections_per_ip = 2;
    })
}

/// Issue 12 row 13: behind a trusted proxy, each forwarded client has its
/// own allowance on the WebSocket port, and the proxy itself is exempt.
#[test]
fn row13_ws_per_ip_limits_apply_to_the_forwarded_client() {
    let srv = behind_proxy();
    let xff = |ip| [("X-Forwarded-For", ip)];
    let _a = srv.connect_with("/", &xff("203.0.113.7")).expect("first from 203.0.113.7");
    assert_eq!(srv.upgrade("/", &xff("203.0.113.7")).status, 503, "second from 203.0.113.7");
    // The client cannot pick its address: only the right-most entry counts.
    assert_eq!(srv.upgrade("/", &xff("10.9.9.9, 203.0.113.7")).status, 503);
    let _b = srv.connect_with("/", &xff("203.0.113.8")).expect("another client");
    // The proxy's own connections (no forwarded client) are not limited.
    let _c = srv.connect();
    let _d = srv.connect();
    assert_eq!(srv.metric("livecast_ws_refused_total", &[("reason", "per-ip")]), 2.0);
}

/// Issue 12 row 13, HTTP port: the same, per request.
#[test]
fn row13_http_per_ip_limit_applies_to_the_forwarded_client() {
    let srv = behind_proxy();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(srv.http).unwrap();
        assert_eq!(
            keepalive_get(&mut s, "/healthz", &[("X-Forwarded-For", "203.0.113.7")]),
            Some(200)
        );
        held.push(s);
    }
    let mut third = TcpStream::connect(srv.http).unwrap();
    assert_eq!(
        keepalive_get(&mut third, "/healthz", &[("X-Forwarded-For", "203.0.113.7")]),
        Some(503)
    );
    let mut other = TcpStream::connect(srv.http).unwrap();
    assert_eq!(
        keepalive_get(&mut other, "/healthz", &[("X-Forwarded-For", "203.0.113.8")]),
        Some(200)
    );
    // The proxy itself is exempt: more than two connections of its own.
    for _ in 0..3 {
        let mut s = TcpStream::connect(srv.http).unwrap();
        assert_eq!(keepalive_get(&mut s, "/healthz", &[]), Some(200));
        held.push(s);
    }
    assert_eq!(srv.metric("livecast_http_refused_total", &[("reason", "per-ip")]), 1.0);
}
