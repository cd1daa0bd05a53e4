//! SPEC §9 on the HTTP port, one test per row of issue 12's table that the
//! request half covers: exposure off loopback (row 1), ingest amplification
//! (2), cross-site ingest (3), position bounds (4), credentials before the
//! body (9), secrets in log lines (10), RFC 9112 framing (11), and the
//! request-head deadline (`HTTP_HEAD_TIMEOUT_MS`).
//!
//! Tests that measure the process (memory, log lines, exit codes) run the
//! `livecast` executable; the others an in-process server.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{
    Binary, DEADLINE, Server, TempDir, http_raw, http_request, pos, run_binary, seq_of,
    upgrade_headers, wait_until,
};

/// Sends `raw` on a new connection to `addr` and reads everything the
/// server sends until it closes (or `timeout` passes); returns the bytes
/// and whether the server closed.
fn exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> (Vec<u8>, bool) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(raw).expect("send");
    read_until_closed(&mut stream, timeout)
}

fn read_until_closed(stream: &mut TcpStream, timeout: Duration) -> (Vec<u8>, bool) {
    let end = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return (got, false);
        }
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut chunk) {
            Ok(0) => return (got, true),
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, false);
            }
            // A reset after the answer counts as closed.
            Err(_) => return (got, true),
        }
    }
}

/// The status code of the first response in `bytes`.
#[track_caller]
fn first_status(bytes: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(bytes);
    let line = text.lines().next().unwrap_or_default();
    line.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"))
}

/// `VmHWM` (peak resident memory) of a process, in KiB.
fn peak_rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in {status}"))
}

// ---------------------------------------------------------------------------
// Row 1: off loopback

#[test]
fn off_loopback_without_ingest_token_refuses_to_start_unless_told() {
    let env = [("HTTP_HOST", "0.0.0.0"), ("HTTP_PORT", "0"), ("LIVE_WS_PORT", "0")];
    let (code, _, stderr) = run_binary(&[], &env);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("INGEST_TOKEN"), "the message names INGEST_TOKEN: {stderr}");
    assert!(!stderr.contains("    "), "one clean sentence: {stderr}");

    for extra in [("INGEST_ALLOW_ANONYMOUS", "1"), ("INGEST_TOKEN", "tok-ingest")] {
        let bin = Binary::start(&[("HTTP_HOST", "0.0.0.0"), extra]);
        let local = SocketAddr::from((Ipv4Addr::LOCALHOST, bin.http.port()));
        assert_eq!(http_request(local, "GET", "/healthz", &[], b"").status, 200, "{extra:?}");
    }
}

#[test]
fn debug_routes_need_debug_token_and_are_refused_off_loopback_without_one() {
    // Off loopback, no DEBUG_TOKEN: 403, while the data-free routes stay open.
    let srv = Server::with(|c| {
        c.http_host = Ipv4Addr::UNSPECIFIED.into();
        c.ingest_token = Some(livecast::Secret::new("tok-ingest"));
    });
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, srv.http.port()));
    assert_eq!(http_request(http, "GET", "/debug/connections", &[], b"").status, 403);
    assert_eq!(http_request(http, "GET", "/debug/other", &[], b"").status, 403);
    for open in ["/metrics", "/healthz", "/readyz", "/"] {
        assert_eq!(http_request(http, "GET", open, &[], b"").status, 200, "{open}");
    }

    // DEBUG_TOKEN set (here on loopback): the bearer token is required.
    let srv = Server::with(|c| c.debug_token = Some(livecast::Secret::new("tok-debug")));
    let get = |headers: &[(&str, &str)]| {
        http_request(srv.http, "GET", "/debug/connections", headers, b"").status
    };
    assert_eq!(get(&[]), 401);
    assert_eq!(get(&[("Authorization", "Bearer wrong")]), 401);
    assert_eq!(get(&[("Authorization", "tok-debug")]), 401);
    assert_eq!(get(&[("Authorization", "Bearer tok-debug")]), 200);
    assert_eq!(srv.get("/metrics").status, 200);

    // And off loopback with DEBUG_TOKEN: the token opens it.
    let srv = Server::with(|c| {
        c.http_host = Ipv4Addr::UNSPECIFIED.into();
        c.ingest_allow_anonymous = true;
        c.debug_token = Some(livecast::Secret::new("tok-debug"));
    });
    let http = SocketAddr::from((Ipv4Addr::LOCALHOST, srv.http.port()));
    let auth = [("Authorization", "Bearer tok-debug")];
    assert_eq!(http_request(http, "GET", "/debug/connections", &auth, b"").status, 200);
    assert_eq!(http_request(http, "GET", "/debug/connections", &[], b"").status, 401);
}

// ---------------------------------------------------------------------------
// Row 2: ingest amplification

/// `[0,0,…,0]` of exactly 1 MiB minus one byte: 524,287 items.
fn zeros_body() -> Vec<u8> {
    let mut body = b"[".to_vec();
    body.extend(b"0,".repeat(524_286));
    body.extend_from_slice(b"0]");
    body
}

#[test]
fn a_1_mib_body_of_zeros_gets_a_small_answer_and_costs_little_memory() {
    let bin = Binary::start(&[("INGEST_MAX_ITEMS", "1000000"), ("LOG_LEVEL", "warn")]);
    // Warm the HTTP path first, so the peak measures the body alone.
    let warm = http_request(bin.http, "POST", "/ingest", &[], b"[0]");
    assert_eq!(warm.status, 202, "{}", warm.text());
    let before = peak_rss_kib(&bin.pid());

    let body = zeros_body();
    let r =
        http_request(bin.http, "POST", "/ingest", &[("Content-Type", "application/json")], &body);
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.body.len() < 16 * 1024, "answer of {} bytes", r.body.len());
    let answer = r.json();
    assert_eq!(answer["accepted"], 0);
    assert_eq!(answer["rejectedCount"], 524_287);
    let listed = answer["rejected"].as_array().expect("rejected");
    assert_eq!(listed.len(), 100, "only the first 100 are listed");
    assert_eq!((listed[0]["index"].clone(), listed[99]["index"].clone()), (json!(0), json!(99)));

    // The same as NDJSON, in chunks.
    let ndjson = b"0\n".repeat(524_287);
    let mut raw = format!(
        "POST /ingest HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        bin.http
    )
    .into_bytes();
    for chunk in ndjson.chunks(64 * 1024) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = http_raw(bin.http, &raw);
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(r.body.len() < 16 * 1024, "answer of {} bytes", r.body.len());
    assert_eq!(r.json()["rejectedCount"], 524_287);

    let grown_mib = peak_rss_kib(&bin.pid()).saturating_sub(before) / 1024;
    assert!(grown_mib < 40, "peak RSS grew by {grown_mib} MiB for two 1 MiB bodies");
}

#[test]
fn more_items_than_ingest_max_items_is_413() {
    // The default (10,000) refuses the 1 MiB body of zeros outright.
    let srv = Server::start();
    let r = srv.post_ingest(&zeros_body(), "application/json", &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.body.len() < 1024, "{}", r.text());

    let srv = Server::with(|c| c.ingest_max_items = 3);
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let four: Vec<Value> = (0..4).map(|i| pos("e-1", "d-1", i)).collect();
    let r = srv.post_ingest(json!(four).to_string().as_bytes(), "application/json", &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    let lines: Vec<String> = four.iter().map(Value::to_string).collect();
    let r = srv.post_ingest(lines.join("\n").as_bytes(), "application/x-ndjson", &[]);
    assert_eq!(r.status, 413, "{}", r.text());
    // Blank lines are not items.
    let r = srv.post_ingest(lines[..3].join("\n\n").as_bytes(), "application/x-ndjson", &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    // Nothing of the refused bodies was broadcast.
    for seq in 0..3 {
        assert_eq!(seq_of(&c.recv_position()), seq);
    }
}

// ---------------------------------------------------------------------------
// Row 3: cross-site ingest

#[test]
fn ingest_refuses_content_types_a_page_sends_without_preflight() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let body = json!([pos("e-1", "d-1", 99)]).to_string();
    for ct in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/ndjson",
    ] {
        let r = srv.post_ingest(body.as_bytes(), ct, &[]);
        assert_eq!(r.status, 415, "{ct}: {}", r.text());
    }
    for (seq, ct) in [(0, Some("application/json; charset=utf-8")), (1, None)] {
        let body = json!([pos("e-1", "d-1", seq)]).to_string();
        let headers: Vec<(&str, &str)> = ct.map(|ct| ("Content-Type", ct)).into_iter().collect();
        let r = http_request(srv.http, "POST", "/ingest", &headers, body.as_bytes());
        assert_eq!(r.status, 202, "{ct:?}: {}", r.text());
    }
    // The refused position (seq 99) was never broadcast.
    assert_eq!(seq_of(&c.recv_position()), 0);
    assert_eq!(seq_of(&c.recv_position()), 1);
}

#[test]
fn ingest_refuses_a_foreign_origin() {
    let srv = Server::with(|c| c.allowed_origins = vec!["https://tracker.example".to_owned()]);
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let post = |seq: u64, origin: &str| {
        let body = json!([pos("e-1", "d-1", seq)]).to_string();
        srv.post_ingest(body.as_bytes(), "application/json", &[("Origin", origin)]).status
    };
    assert_eq!(post(99, "https://evil.example"), 403);
    assert_eq!(post(99, "null"), 403);
    // The dashboard's origin: this host, another port.
    assert_eq!(post(0, &format!("http://127.0.0.1:{}", srv.ws.port())), 202);
    assert_eq!(post(1, &format!("http://{}", srv.http)), 202);
    assert_eq!(post(2, "https://tracker.example"), 202);
    for seq in 0..3 {
        assert_eq!(seq_of(&c.recv_position()), seq);
    }
}

// ---------------------------------------------------------------------------
// Row 4: position bounds

#[test]
fn long_ids_and_oversized_positions_are_rejected_never_broadcast_nor_cached() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let mut big = pos("e-1", "d-big", 90);
    big["note"] = json!("x".repeat(1_100_000));
    let mut long_device = pos("e-1", &"d".repeat(300), 91);
    long_device["x"] = json!(1);
    let just_over = pos("e-1", &"é".repeat(65), 92); // 130 bytes
    let long_event = pos(&"e".repeat(129), "d-1", 93);
    let body = json!([
        big,
        pos("e-1", &"d".repeat(128), 0),
        long_device,
        just_over,
        long_event,
        pos("e-1", "d-1", 1),
    ]);
    let answer = srv.ingest(&body);
    assert_eq!(answer["accepted"], 2, "{answer}");
    let indices: Vec<Value> = answer["rejected"]
        .as_array()
        .expect("rejected")
        .iter()
        .map(|r| r["index"].clone())
        .collect();
    assert_eq!(indices, [json!(0), json!(2), json!(3), json!(4)], "{answer}");

    // NDJSON too.
    let mut big_line = pos("e-1", "d-big", 94);
    big_line["note"] = json!("y".repeat(20_000));
    let ndjson = format!("{big_line}\n{}\n", pos("e-1", "d-1", 2));
    let r = srv.post_ingest(ndjson.as_bytes(), "application/x-ndjson", &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json()["rejected"][0]["index"], 0, "{}", r.text());

    // Only the valid ones reached the subscriber, which is still open...
    for seq in 0..3 {
        assert_eq!(seq_of(&c.recv_position()), seq);
    }
    // ...and a new subscriber's snapshot holds no oversized device.
    let mut late = srv.connect();
    let snapshot = late.subscribe("e-1");
    let devices: Vec<&str> = snapshot.iter().filter_map(|p| p["deviceId"].as_str()).collect();
    assert_eq!(devices.len(), 2, "{devices:?}");
    assert!(!devices.contains(&"d-big"), "{devices:?}");
}

#[test]
fn the_position_bound_follows_live_max_position_bytes() {
    let srv = Server::with(|c| c.max_position_bytes = 200);
    let mut fits = pos("e-1", "d-1", 0);
    let mut over = pos("e-1", "d-1", 1);
    over["note"] = json!("z".repeat(200));
    fits["note"] = json!("z".repeat(20));
    let answer = srv.ingest(&json!([fits, over]));
    assert_eq!((answer["accepted"].clone(), answer["rejectedCount"].clone()), (json!(1), json!(1)));
    assert!(answer["rejected"][0]["error"].as_str().is_some_and(|e| e.contains("200")), "{answer}");
}

// ---------------------------------------------------------------------------
// Row 9: credentials before the body

#[test]
fn a_missing_ingest_token_is_401_before_100_continue_and_any_body_byte() {
    let srv = Server::with(|c| c.ingest_token = Some(livecast::Secret::new("tok-ingest")));
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: 8000000\r\nExpect: 100-continue\r\n\r\n",
        srv.http
    );
    // No body is sent: the answer must come anyway, and be the 401 itself.
    let (got, closed) = exchange(srv.http, head.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert_eq!(first_status(&got), 401, "{text}");
    assert!(!text.contains("100 Continue"), "{text}");
    assert!(closed, "the connection is closed after the 401: {text}");

    // The same without `Expect`: the 401 comes without waiting for the body.
    let head = head.replace("Expect: 100-continue\r\n", "");
    let (got, _) = exchange(srv.http, head.as_bytes(), Duration::from_secs(5));
    assert_eq!(first_status(&got), 401, "{}", String::from_utf8_lossy(&got));

    // The right token still gets its 100.
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer tok-ingest\r\n\
         Content-Length: 2\r\nExpect: 100-continue\r\n\r\n",
        srv.http
    );
    let mut stream = TcpStream::connect(srv.http).expect("connect");
    stream.write_all(head.as_bytes()).expect("send");
    let mut interim = [0u8; 25];
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.read_exact(&mut interim).expect("100 Continue");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"[]").expect("body");
    let (got, _) = read_until_closed(&mut stream, Duration::from_secs(5));
    assert_eq!(first_status(&got), 202, "{}", String::from_utf8_lossy(&got));
}

// ---------------------------------------------------------------------------
// Row 10: secrets in log lines

#[test]
fn a_malformed_tokens_file_is_logged_by_place_and_keeps_the_previous_tokens() {
    let dir = TempDir::new("tokens-malformed");
    let file = dir.write("tokens.json", r#"{"tok-good-1":{"user":"alice","events":["*"]}}"#);
    let file = file.to_str().expect("utf-8 path").to_owned();
    let bin = Binary::start(&[("LIVE_AUTH_MODE", "tokens"), ("LIVE_TOKENS_FILE", &file)]);
    let upgrade = |token: &str| {
        let auth = format!("Bearer {token}");
        let mut headers = upgrade_headers();
        headers.push(("Authorization", &auth));
        http_request(bin.ws, "GET", "/", &headers, b"").status
    };
    assert_eq!(upgrade("tok-good-1"), 101);

    // The wrong shape: serde's message would quote the value.
    dir.write("tokens.json", r#"{"alice":"tok-leaked-7"}"#);
    wait_until(DEADLINE, "the reload to be refused and logged", || {
        upgrade("tok-good-1") == 101 && bin.stderr().contains("keeping the previous tokens")
    });
    let log = bin.stderr();
    assert!(!log.contains("tok-leaked-7"), "a token value reached the log:\n{log}");
    let line = log.lines().find(|l| l.contains("keeping the previous tokens")).unwrap_or_default();
    assert!(line.contains("line 1 column"), "{line}");
    assert_eq!(upgrade("tok-leaked-7"), 401);

    // At start, the same file is refused with the same care.
    let (code, out, err) = run_binary(
        &[],
        &[
            ("LIVE_WS_PORT", "0"),
            ("HTTP_PORT", "0"),
            ("LIVE_AUTH_MODE", "tokens"),
            ("LIVE_TOKENS_FILE", &file),
        ],
    );
    assert_ne!(code, Some(0), "{err}");
    assert!(!out.contains("tok-leaked-7") && !err.contains("tok-leaked-7"), "{out}{err}");
    assert!(err.contains("line 1 column"), "{err}");
}

// ---------------------------------------------------------------------------
// Row 11: RFC 9112 framing

#[test]
fn framing_errors_are_400_and_every_405_has_allow() {
    let srv = Server::start();
    let host = format!("Host: {}\r\n", srv.http);
    let cases = [
        "GET /healthz HTTP/1.1\r\n\r\n".to_owned(),
        format!("GET /healthz HTTP/1.1\r\n{host}{host}\r\n"),
        format!("GET /healthz HTTP/1.1\r\n{host}X-A: 1\r2\r\n\r\n"),
        format!(
            "POST /ingest HTTP/1.0\r\n{host}Transfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n"
        ),
    ];
    for (addr, port) in [(srv.http, "http"), (srv.ws, "ws")] {
        for raw in &cases {
            let (got, closed) = exchange(addr, raw.as_bytes(), Duration::from_secs(5));
            assert_eq!(first_status(&got), 400, "{port}: {raw:?}");
            assert!(closed, "{port}: {raw:?}");
        }
    }
    // HTTP/1.0 needs no Host.
    let (got, _) = exchange(srv.http, b"GET /healthz HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert_eq!(first_status(&got), 200);

    for (method, path, allow) in [
        ("DELETE", "/ingest", "POST"),
        ("GET", "/ingest", "POST"),
        ("PUT", "/metrics", "GET, HEAD"),
        ("POST", "/healthz", "GET, HEAD"),
        ("POST", "/readyz", "GET, HEAD"),
        ("DELETE", "/debug/connections", "GET, HEAD"),
        ("POST", "/", "GET, HEAD"),
    ] {
        let r = http_request(srv.http, method, path, &[], b"");
        assert_eq!((r.status, r.header("allow")), (405, Some(allow)), "{method} {path}");
    }
}

// ---------------------------------------------------------------------------
// HTTP_HEAD_TIMEOUT_MS

#[test]
fn a_request_head_must_arrive_within_http_head_timeout() {
    let srv = Server::with(|c| c.http_head_timeout = Duration::from_millis(500));
    // Part of a head, then nothing: 408 at the deadline.
    let started = Instant::now();
    let (got, closed) = exchange(srv.http, b"GET /healthz HTTP/1.1\r\n", Duration::from_secs(5));
    assert_eq!(first_status(&got), 408);
    assert!(closed);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(4), "{took:?}");

    // Nothing at all: closed without a word.
    let (got, closed) = exchange(srv.http, b"", Duration::from_secs(5));
    assert!(got.is_empty() && closed, "{}", String::from_utf8_lossy(&got));

    // The next head of a keep-alive connection is due as well.
    let mut stream = TcpStream::connect(srv.http).expect("connect");
    let first = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", srv.http);
    stream.write_all(first.as_bytes()).expect("send");
    let mut answer = [0u8; 12];
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream.read_exact(&mut answer).expect("first answer");
    assert_eq!(&answer, b"HTTP/1.1 200");
    let started = Instant::now();
    stream.write_all(b"GET /healthz HTTP/1.1\r\n").expect("send part");
    let (got, closed) = read_until_closed(&mut stream, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("408 Request Timeout") && closed, "{text}");
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}
