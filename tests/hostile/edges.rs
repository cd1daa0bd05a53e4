//! SPEC §9, second round (issue 20), at the edges: the `Host` allowlist
//! (row H), exposure behind a proxy (I), crowds on both ports (O2, G),
//! chunked bodies (F), per-item JSON errors (W), log lines (Q), the
//! whole-response write deadline (V), and the upgrade's framing, ping ids
//! and `/debug` at scale (misc).
//!
//! Every test runs the `livecast` executable with its defaults unless
//! noted, as the probe did, and talks to it over real sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::connect_from;
use crate::support::{
    Binary, DEADLINE, Frame, RawWs, WS_KEY, http_request, pos, run_binary, spawn, wait_until,
};

/// Sends `raw` on a new connection and reads one response head; returns
/// its status, or 0 when the server closed without one.
fn status_of(addr: SocketAddr, raw: &[u8]) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let _ = stream.write_all(raw);
    head_status(&mut stream)
}

/// Reads up to the end of one response head from `stream`; its status, or
/// 0 when the stream ends first.
fn head_status(stream: &mut TcpStream) -> u16 {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            _ => return 0,
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A request with its own `Host` (and `Origin`) header.
fn request(method: &str, path: &str, host: &str, extra: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
        .into_bytes()
}

/// The upgrade headers of a valid handshake, as raw lines.
fn upgrade_lines() -> String {
    format!(
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\n\
         Sec-WebSocket-Version: 13\r\n"
    )
}

/// `utime + stime` of a process, in clock ticks (1/100 s).
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

// ---------------------------------------------------------------------------
// Row H: Host (DNS rebinding)

/// What the probe sent: the attacker's name in `Host` with a matching
/// `Origin`, to a loopback install in mode `none`. Every route of both
/// ports answers 421; loopback names are served.
#[test]
fn h_a_rebinding_host_gets_421_on_every_route_of_both_ports() {
    let bin = Binary::start(&[]);
    let evil = "rebind.attacker.example";
    let origin = format!("Origin: http://{evil}\r\n");
    let upgrade = format!("{origin}{}", upgrade_lines());
    let ingest = format!("{origin}Content-Type: application/json\r\nContent-Length: 2\r\n");
    let cases: [(SocketAddr, Vec<u8>); 7] = [
        (bin.ws, request("GET", "/", &format!("{evil}:{}", bin.ws.port()), &upgrade)),
        (bin.ws, request("GET", "/auth/check", evil, &origin)),
        (bin.ws, request("GET", "/nothing", evil, "")),
        (bin.http, [request("POST", "/ingest", evil, &ingest), b"[]".to_vec()].concat()),
        (bin.http, request("GET", "/debug/connections", evil, &origin)),
        (bin.http, request("GET", "/metrics", evil, "")),
        (bin.http, request("GET", "/", evil, "")),
    ];
    for (addr, raw) in &cases {
        assert_eq!(status_of(*addr, raw), 421, "{}", String::from_utf8_lossy(raw));
    }
    // Loopback names, any port, are this install's own.
    for host in [bin.ws.to_string(), "localhost".to_owned(), "[::1]:1".to_owned()] {
        let raw = request("GET", "/", &host, &upgrade_lines());
        assert_eq!(status_of(bin.ws, &raw), 101, "{host}");
        assert_eq!(status_of(bin.http, &request("GET", "/healthz", &host, "")), 200, "{host}");
    }
}

/// Behind a proxy that passes the public name on: `LIVE_PUBLIC_HOSTS`
/// names it; other names still get 421, loopback ones still pass.
#[test]
fn h_live_public_hosts_names_what_both_ports_answer() {
    let bin = Binary::start(&[("LIVE_PUBLIC_HOSTS", "live.example.org")]);
    let public = "live.example.org";
    let origin = format!("Origin: https://{public}\r\n{}", upgrade_lines());
    assert_eq!(status_of(bin.ws, &request("GET", "/", public, &origin)), 101);
    assert_eq!(status_of(bin.http, &request("GET", "/healthz", "LIVE.example.org:443", "")), 200);
    assert_eq!(status_of(bin.http, &request("GET", "/healthz", "other.example.org", "")), 421);
    assert_eq!(status_of(bin.http, &request("GET", "/healthz", &bin.http.to_string(), "")), 200);
}

// ---------------------------------------------------------------------------
// Row I: behind a proxy is exposed

/// `LIVE_TRUSTED_PROXIES` as the unit file sets it: the loopback ports
/// serve the public, so the start needs `INGEST_TOKEN` (or consent), and
/// mode `none` needs `LIVE_AUTH_ALLOW_INSECURE=1`.
#[test]
fn i_behind_a_proxy_the_start_needs_an_ingest_token() {
    let proxied = ("LIVE_TRUSTED_PROXIES", "127.0.0.1,::1");
    let env =
        [proxied, ("LIVE_AUTH_ALLOW_INSECURE", "1"), ("HTTP_PORT", "0"), ("LIVE_WS_PORT", "0")];
    let (code, _, stderr) = run_binary(&[], &env);
    assert_eq!(code, Some(2), "stderr: {stderr}");
    assert!(stderr.contains("INGEST_TOKEN") && stderr.contains("LIVE_TRUSTED_PROXIES"), "{stderr}");
    let (code, _, stderr) = run_binary(&[], &[proxied, ("INGEST_TOKEN", "tok")]);
    assert_eq!(code, Some(2), "mode none behind a proxy: {stderr}");
    assert!(stderr.contains("LIVE_AUTH_MODE"), "{stderr}");
}

/// The probe's requests through the proxy: ingest without a token is 401,
/// `/debug` without `DEBUG_TOKEN` is 403 (with it, its token is needed).
#[test]
fn i_behind_a_proxy_ingest_and_debug_are_guarded() {
    let xff = "X-Forwarded-For: 203.0.113.5\r\n";
    let common = [
        ("LIVE_TRUSTED_PROXIES", "127.0.0.1"),
        ("LIVE_AUTH_ALLOW_INSECURE", "1"),
        ("INGEST_TOKEN", "tok-ingest"),
    ];
    let bin = Binary::start(&common);
    let host = bin.http.to_string();
    let ingest = format!("{xff}Content-Type: application/json\r\nContent-Length: 2\r\n");
    let raw = [request("POST", "/ingest", &host, &ingest), b"[]".to_vec()].concat();
    assert_eq!(status_of(bin.http, &raw), 401);
    assert_eq!(status_of(bin.http, &request("GET", "/debug/connections", &host, xff)), 403);
    assert_eq!(status_of(bin.http, &request("GET", "/debug/connections", &host, "")), 403);
    assert_eq!(status_of(bin.http, &request("GET", "/healthz", &host, xff)), 200);

    let bin = Binary::start(&[common[0], common[1], common[2], ("DEBUG_TOKEN", "tok-debug")]);
    let host = bin.http.to_string();
    assert_eq!(status_of(bin.http, &request("GET", "/debug/connections", &host, xff)), 401);
    let auth = format!("{xff}Authorization: Bearer tok-debug\r\n");
    assert_eq!(status_of(bin.http, &request("GET", "/debug/connections", &host, &auth)), 200);
}

// ---------------------------------------------------------------------------
// Rows O2 and G: crowds

/// Defaults: one address gets 1000 WebSocket connections, the next is 503,
/// and another address still gets in.
#[test]
fn o2_one_address_holds_at_most_1000_websocket_connections_by_default() {
    let bin = Binary::start(&[("LOG_LEVEL", "warn")]);
    let mut held = Vec::with_capacity(1000);
    for i in 0..1000 {
        let stream = connect_from("127.0.0.1", bin.ws);
        stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut stream = stream;
        stream
            .write_all(&request("GET", "/", &bin.ws.to_string(), &upgrade_lines()))
            .expect("send upgrade");
        assert_eq!(head_status(&mut stream), 101, "connection {i}");
        held.push(stream);
    }
    let raw = request("GET", "/", &bin.ws.to_string(), &upgrade_lines());
    let mut refused = connect_from("127.0.0.1", bin.ws);
    refused.set_read_timeout(Some(DEADLINE)).expect("timeout");
    refused.write_all(&raw).expect("send");
    assert_eq!(head_status(&mut refused), 503, "the 1001st from 127.0.0.1");
    let mut other = connect_from("127.0.0.2", bin.ws);
    other.set_read_timeout(Some(DEADLINE)).expect("timeout");
    other.write_all(&raw).expect("send");
    assert_eq!(head_status(&mut other), 101, "another address");
}

/// The probe's G: 32 kept-alive connections from each of 8 addresses (the
/// whole default `HTTP_MAX_CONNECTIONS` of 256); a probe from a ninth
/// address is still answered, the longest-idle connection making room.
#[test]
fn g_kept_alive_crowds_do_not_lock_probes_out_of_the_http_port() {
    let bin = Binary::start(&[("LOG_LEVEL", "warn")]);
    let mut held = Vec::new();
    for a in 1..=8 {
        for _ in 0..32 {
            let mut s = connect_from(&format!("127.0.0.{a}"), bin.http);
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            let req = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", bin.http);
            s.write_all(req.as_bytes()).expect("send");
            assert_eq!(head_status(&mut s), 200);
            let mut body = [0u8; 3]; // "ok\n"
            s.read_exact(&mut body).expect("body");
            held.push(s);
        }
    }
    for probe in 0..3 {
        let mut s = connect_from("127.0.0.9", bin.http);
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        s.write_all(&request("GET", "/healthz", &bin.http.to_string(), "")).expect("send");
        assert_eq!(head_status(&mut s), 200, "probe {probe} with 256 idle connections held");
    }
}

// ---------------------------------------------------------------------------
// Row F: chunked bodies

/// The probe's body: 10 KB as 1-byte chunks with 4,000-byte extensions,
/// 40 MB on the wire. With the default `INGEST_MAX_BODY_BYTES` (8 MiB) it
/// is refused once past 16 MiB.
#[test]
fn f_chunk_extensions_are_bounded_by_twice_the_body_limit() {
    let bin = Binary::start(&[("LOG_LEVEL", "warn")]);
    let mut stream = TcpStream::connect(bin.http).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let head = format!(
        "POST /ingest HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        bin.http
    );
    let mut writer = stream.try_clone().expect("clone");
    let sender = spawn("chunk-sender", move || {
        let chunk = format!("1;{}\r\n \r\n", "e".repeat(4000));
        let mut sent =
            writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(b"1\r\n[\r\n"));
        for _ in 0..10_000 {
            if sent.is_err() {
                break;
            }
            sent = writer.write_all(chunk.as_bytes());
        }
        let _ = writer.write_all(b"1\r\n]\r\n0\r\n\r\n");
    });
    assert_eq!(head_status(&mut stream), 413);
    drop(stream);
    sender.join().expect("sender");
}

/// A 1 MB body as 1-byte chunks (6 MB on the wire) costs little CPU: the
/// decoding is linear. Measured as the server's CPU time for that request
/// against the same body in one chunk.
#[test]
fn f_one_byte_chunks_of_a_1_mb_body_are_cheap() {
    let bin = Binary::start(&[("LOG_LEVEL", "warn")]);
    let n = 1 << 20;
    let mut one_byte = Vec::with_capacity(6 * n);
    let mut whole = Vec::with_capacity(n + 16);
    let body: Vec<u8> = [b"[".to_vec(), vec![b' '; n - 2], b"]".to_vec()].concat();
    for b in &body {
        one_byte.extend_from_slice(b"1\r\n");
        one_byte.push(*b);
        one_byte.extend_from_slice(b"\r\n");
    }
    one_byte.extend_from_slice(b"0\r\n\r\n");
    whole.extend_from_slice(format!("{:x}\r\n", body.len()).as_bytes());
    whole.extend_from_slice(&body);
    whole.extend_from_slice(b"\r\n0\r\n\r\n");
    let post = |chunked: &[u8]| {
        let head = format!(
            "POST /ingest HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            bin.http
        );
        let before = cpu_ticks(&bin.pid());
        let raw = [head.as_bytes(), chunked].concat();
        assert_eq!(status_of(bin.http, &raw), 202);
        cpu_ticks(&bin.pid()) - before
    };
    let single = post(&whole);
    let chunked = post(&one_byte);
    eprintln!("1-byte chunks: {chunked} ticks; one chunk: {single} ticks");
    // 1-byte chunks carry 6 times the bytes and a million lines: some more
    // work, never the quadratic cost (0.43 s optimised, seconds here).
    assert!(
        chunked <= 10 * single.max(5),
        "1-byte chunks took {chunked} ticks, one chunk {single}"
    );
}

// ---------------------------------------------------------------------------
// Row W: per-item JSON errors

#[test]
fn w_an_item_json_cannot_represent_rejects_that_item_only() {
    let bin = Binary::start(&[]);
    let good = |seq| pos("w", "dev", seq).to_string();
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    for bad in [
        r#"{"deviceId":"x","eventId":"w","lat":1e400,"lon":1,"ts":1}"#.to_owned(),
        r#"{"deviceId":"\ud800","eventId":"w","lat":1,"lon":1,"ts":1}"#.to_owned(),
        format!(r#"{{"deviceId":"x","eventId":"w","lat":1,"lon":1,"ts":1,"n":{deep}}}"#),
    ] {
        let body = format!("[{},{bad},{}]", good(1), good(2));
        let r = http_request(
            bin.http,
            "POST",
            "/ingest",
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        assert_eq!(r.status, 202, "{bad}: {}", r.text());
        let answer: Value = r.json();
        assert_eq!(answer["accepted"], 2, "{bad}: {answer}");
        assert_eq!(answer["rejected"][0]["index"], 1, "{bad}: {answer}");
        assert_eq!(answer["rejectedCount"], 1, "{bad}: {answer}");
    }
}

// ---------------------------------------------------------------------------
// Row Q: logs

/// Peer text with a newline and a fake log line, at `LOG_LEVEL=trace`
/// (where tungstenite logs payloads verbatim): every line of stderr is a
/// real log line.
#[test]
fn q_peer_text_never_forges_a_log_line() {
    let bin = Binary::start(&[("LOG_LEVEL", "trace")]);
    let forged = "2099-01-01T00:00:00.000Z ERROR [forged] livecast: FORGED";
    let mut raw = RawWs::connect(bin.ws, "/");
    let subscribe = json!({"type": "subscribe", "eventId": format!("e\n{forged}")}).to_string();
    raw.send_text(&subscribe).expect("send");
    raw.send_text(&format!("not json\r\n{forged}")).expect("send");
    let path = format!("/x%0A{}", "y");
    let _ = status_of(bin.http, &request("GET", &path, &bin.http.to_string(), ""));
    // The payloads reach the log (escaped) before the check.
    wait_until(DEADLINE, "the payload logged", || bin.stderr().contains("FORGED"));
    let stderr = bin.stderr();
    for line in stderr.lines() {
        assert!(!line.starts_with("2099-"), "a forged log line: {line:?}");
        assert!(line.starts_with("20") || line.trim().is_empty(), "not a log line: {line:?}");
    }
}

// ---------------------------------------------------------------------------
// Row V: a whole-response deadline

/// 400 pipelined requests for the dashboard page and a reader that takes
/// 100 bytes at a time: the connection is closed within
/// `HTTP_WRITE_TIMEOUT_MS` of a response that could not be written, not
/// kept as long as the reader makes any progress.
#[test]
fn v_a_slow_reader_cannot_hold_an_http_thread() {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let bin = Binary::start(&[("HTTP_WRITE_TIMEOUT_MS", "1000"), ("LOG_LEVEL", "warn")]);
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).expect("socket");
    sockopt::set_socket_recv_buffer_size(&fd, 4096).expect("SO_RCVBUF");
    rustix::net::connect(&fd, &bin.http).expect("connect");
    let mut stream = TcpStream::from(fd);
    let one = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", bin.http);
    stream.write_all(one.repeat(400).as_bytes()).expect("send the requests");
    let started = Instant::now();
    let mut buf = [0u8; 100];
    let closed = loop {
        if started.elapsed() > Duration::from_secs(15) {
            break false;
        }
        stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break true,
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(closed, "still writing to a slow reader after {:?}", started.elapsed());
    // The writes that fit the socket buffers, then one second: far from 15.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    wait_until(DEADLINE, "the http thread gone", || {
        bin.thread_names().iter().all(|n| !n.starts_with("http-"))
    });
}

// ---------------------------------------------------------------------------
// misc: framing on upgrades, ping ids, /debug at scale

#[test]
fn misc_an_upgrade_obeys_the_framing_rules() {
    let bin = Binary::start(&[]);
    let host = bin.ws.to_string();
    let smuggle = format!("{}Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", upgrade_lines());
    assert_eq!(status_of(bin.ws, &request("GET", "/", &host, &smuggle)), 400);
    let with_body = format!("{}Content-Length: 5\r\n", upgrade_lines());
    assert_eq!(status_of(bin.ws, &request("GET", "/", &host, &with_body)), 400);
    let lengths = format!("{}Content-Length: 0\r\nContent-Length: 1\r\n", upgrade_lines());
    assert_eq!(status_of(bin.ws, &request("GET", "/", &host, &lengths)), 400);
    assert_eq!(status_of(bin.ws, &request("GET", "/", &host, &upgrade_lines())), 101);
}

#[test]
fn misc_a_ping_id_comes_back_exactly_as_sent() {
    let bin = Binary::start(&[]);
    let mut raw = RawWs::connect(bin.ws, "/");
    for id in ["123456789012345678901234567890", "1.50", "-0", "1E+2", r#""a\u00e9""#] {
        raw.send_text(&format!(r#"{{"type":"ping","id":{id}}}"#)).expect("send");
        let frame = loop {
            let f = raw.read_frame(DEADLINE).expect("a frame").expect("not the end");
            if f.opcode == Frame::TEXT {
                break f;
            }
        };
        let text = String::from_utf8(frame.payload).expect("utf-8");
        assert_eq!(text, format!(r#"{{"type":"pong","id":{id}}}"#));
    }
}

/// `read` system calls of a process so far (`syscr` of `/proc/PID/io`).
fn read_syscalls(pid: &str) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("proc io");
    io.lines()
        .find_map(|l| l.strip_prefix("syscr:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no syscr in {io}"))
}

/// `/debug/connections` at thousands of connections: requests in a burst
/// share one procfs pass for the threads' CPU times instead of reading
/// `/proc` once per connection per request (counted in read syscalls).
#[test]
fn misc_debug_connections_reads_proc_once_per_burst() {
    const PER_ADDRESS: usize = 1000;
    let bin = Binary::start(&[("LOG_LEVEL", "warn")]);
    let mut held = Vec::with_capacity(3 * PER_ADDRESS);
    let raw = request("GET", "/", &bin.ws.to_string(), &upgrade_lines());
    for a in 1..=3 {
        for _ in 0..PER_ADDRESS {
            let mut s = connect_from(&format!("127.0.0.{a}"), bin.ws);
            s.set_read_timeout(Some(DEADLINE)).expect("timeout");
            s.write_all(&raw).expect("send");
            assert_eq!(head_status(&mut s), 101);
            held.push(s);
        }
    }
    let total = held.len();
    let listed = |r: &crate::support::Response| r.json().as_array().map_or(0, Vec::len);
    wait_until(DEADLINE, "every connection listed", || {
        listed(&http_request(bin.http, "GET", "/debug/connections", &[], b"")) == total
    });
    let before = read_syscalls(&bin.pid());
    let started = Instant::now();
    for _ in 0..4 {
        let r = http_request(bin.http, "GET", "/debug/connections", &[], b"");
        assert_eq!(r.status, 200);
        let list = r.json();
        let list = list.as_array().expect("an array");
        assert_eq!(list.len(), total);
        assert!(list[0]["cpuSeconds"].is_number(), "{}", list[0]);
    }
    let reads = read_syscalls(&bin.pid()) - before;
    eprintln!("4 requests at {total} connections: {reads} read calls in {:?}", started.elapsed());
    // One pass reads each connection's file (2 calls: data, end); a burst
    // over two seconds may take three. One pass per request would be four.
    let pass = 2 * total as u64;
    assert!(2 * reads < 7 * pass, "{reads} read calls for 4 requests at {total} connections");
}
