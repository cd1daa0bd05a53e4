//! Hostile and broken peers (hardening): each offender is closed with the
//! right code or dropped, the server keeps serving a well-behaved client
//! meanwhile, and no connection thread outlives its connection.
//!
//! Each test runs the `livecast` executable, so that `/proc/PID/task`
//! counts the `ws-` threads of that server alone.

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
    let bin = server(&[("LIVE_WS_MAX_CONNECTIONS", "20")]);
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
    let bin = server(&[]);
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
