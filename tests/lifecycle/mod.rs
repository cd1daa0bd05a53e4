//! SPEC §7 (configuration: `--help`, invalid values → exit 2) and §2.6
//! (stop: close 1001 with a spread `retry-after-ms`, drain deadline, exit 0),
//! through the `livecast` executable and the library's `Server::stop`/`Drop`.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    Binary, Client, DEADLINE, Frame, RawWs, Server, retry_after_ms, run_binary, spawn,
    try_http_request, wait_child, wait_for,
};

/// Every variable SPEC §1-§7 names, plus the per-IP limit `Config` documents.
const VARIABLES: &[&str] = &[
    "LIVE_WS_HOST",
    "LIVE_WS_PORT",
    "HTTP_HOST",
    "HTTP_PORT",
    "LIVE_WS_MAX_CONNECTIONS",
    "LIVE_WS_MAX_CONNECTIONS_PER_IP",
    "LIVE_WS_HANDSHAKE_TIMEOUT_MS",
    "LIVE_WS_PING_INTERVAL_MS",
    "LIVE_WS_MAX_INBOUND_PER_SEC",
    "LIVE_WS_MAX_MESSAGE_BYTES",
    "LIVE_WS_QUEUE_CAPACITY",
    "LIVE_WS_BACKPRESSURE_THRESHOLD_BYTES",
    "LIVE_WS_DRAIN_TIMEOUT_MS",
    "LIVE_WS_RECONNECT_SPREAD_MS",
    "LIVE_WS_MAX_SUBSCRIPTIONS",
    "LIVE_WS_THREAD_STACK_BYTES",
    "LIVE_WS_ALLOWED_ORIGINS",
    "LIVE_AUTH_MODE",
    "LIVE_AUTH_ALLOW_INSECURE",
    "LIVE_TOKENS_FILE",
    "INGEST_MAX_BODY_BYTES",
    "INGEST_TOKEN",
    "REDIS_URL",
    "LIVE_STREAM_KEY",
    "LIVE_BROADCAST_GROUP_PREFIX",
    "INSTANCE_ID",
    "LIVE_BROADCAST_BATCH_SIZE",
    "LIVE_BROADCAST_BATCH_BLOCK_MS",
    "DIRECTUS_BASE_URL",
    "DIRECTUS_AUTH_TIMEOUT_MS",
    "DIRECTUS_AUTHZ_TIMEOUT_MS",
    "DIRECTUS_EVENTS_COLLECTION",
    "DIRECTUS_DEVICES_COLLECTION",
    "DIRECTUS_TOKEN",
    "LIVE_AUTH_CACHE_TTL_MS",
    "LIVE_AUTH_REVALIDATE_MS",
    "LIVE_DEVICE_EVENT_FILE",
    "LIVE_DEVICE_EVENT_REFRESH_MS",
    "LOG_LEVEL",
    "LOG_FORMAT",
];

#[test]
fn help_lists_every_variable_and_exits_0() {
    let (code, stdout, stderr) = run_binary(&["--help"], &[]);
    assert_eq!(code, Some(0), "--help exit code; stderr:\n{stderr}");
    let missing: Vec<_> = VARIABLES.iter().filter(|v| !stdout.contains(*v)).collect();
    assert!(missing.is_empty(), "--help does not list {missing:?}; stdout:\n{stdout}");
    // With its default, as SPEC §7 asks ("lists every variable with its default").
    assert!(stdout.contains("10000"), "--help shows no defaults (e.g. 10000):\n{stdout}");
    assert!(!stdout.contains("WebSocket: ws://"), "--help must not start the server:\n{stdout}");
}

#[test]
fn invalid_env_exits_2_naming_each_bad_variable_before_binding() {
    let (code, stdout, stderr) = run_binary(
        &[],
        &[("LIVE_WS_PORT", "abc"), ("LIVE_WS_QUEUE_CAPACITY", "0"), ("HTTP_PORT", "0")],
    );
    assert_eq!(code, Some(2), "exit code for bad env; stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("LIVE_WS_PORT"), "stderr does not name LIVE_WS_PORT:\n{stderr}");
    assert!(
        stderr.contains("LIVE_WS_QUEUE_CAPACITY"),
        "stderr does not name LIVE_WS_QUEUE_CAPACITY:\n{stderr}"
    );
    assert!(
        !stdout.contains("ws://") && !stdout.contains("http://"),
        "a listener was announced despite the bad configuration:\n{stdout}"
    );
}

/// Connects a client to the binary and waits until it is really open.
fn open_client(bin: &Binary) -> Client {
    let mut c = Client::connect(bin.ws, "/", &[]).expect("connect to the binary");
    assert!(c.subscribe("e-1").is_empty());
    c
}

#[test]
fn sigterm_closes_every_client_1001_with_spread_retry_after_and_exits_0() {
    const SPREAD: u64 = 3000;
    let bin = Binary::start(&[
        ("LIVE_WS_RECONNECT_SPREAD_MS", "3000"),
        ("LIVE_WS_DRAIN_TIMEOUT_MS", "5000"),
    ]);
    let clients: Vec<Client> = (0..3).map(|_| open_client(&bin)).collect();

    bin.signal("-TERM");
    // Read the three closes concurrently: each client answers its close.
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut c| spawn("closer", move || c.expect_close(DEADLINE)))
        .collect();
    let mut values = Vec::new();
    for r in readers {
        let frame = r.join().expect("client thread");
        assert_eq!(frame.code, CloseCode::Away, "close code at SIGTERM: {frame:?}");
        values.push(retry_after_ms(frame.reason.as_str()));
    }
    let distinct: BTreeSet<_> = values.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "retry-after-ms values are not distinct: {values:?}");
    assert!(
        values.iter().all(|&n| n <= SPREAD),
        "retry-after-ms outside [0, {SPREAD}]: {values:?}"
    );
    let (min, max) = (distinct.first().unwrap(), distinct.last().unwrap());
    assert!(max - min >= SPREAD / 2, "retry-after-ms not spread over the window: {values:?}");

    let mut bin = bin;
    let status = wait_child(&mut bin.child, DEADLINE)
        .unwrap_or_else(|| panic!("livecast still running {DEADLINE:?} after SIGTERM"));
    assert_eq!(status.code(), Some(0), "exit status after SIGTERM; stderr:\n{}", bin.stderr());
}

#[test]
fn sigint_stops_like_sigterm() {
    let bin = Binary::start(&[("LIVE_WS_RECONNECT_SPREAD_MS", "1000")]);
    let mut c = open_client(&bin);
    bin.signal("-INT");
    let frame = c.expect_close(DEADLINE);
    assert_eq!(frame.code, CloseCode::Away);
    assert!(retry_after_ms(frame.reason.as_str()) <= 1000, "{frame:?}");
    let mut bin = bin;
    let status = wait_child(&mut bin.child, DEADLINE).expect("livecast exits after SIGINT");
    assert_eq!(status.code(), Some(0), "exit status after SIGINT; stderr:\n{}", bin.stderr());
}

#[test]
fn library_stop_closes_1001_and_returns_within_the_drain_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    // cfg.drain_timeout is long: the Duration given to stop() is what counts.
    let srv = Server::with(|c| {
        c.drain_timeout = Duration::from_secs(30);
        c.reconnect_spread = Duration::from_millis(2000);
    });
    let mut good = srv.connect();
    assert!(good.subscribe("e-1").is_empty());
    // A peer that completes the handshake and then never reads nor answers.
    let mut mute = RawWs::connect(srv.ws, "/");
    srv.wait_connections(2);
    let (ws, http) = (srv.ws, srv.http);

    let good_reader = spawn("good-reader", move || good.expect_close(DEADLINE));
    let inner = srv.into_inner();
    let t0 = Instant::now();
    let stopper = spawn("stopper", move || {
        inner.stop(TIMEOUT);
        t0.elapsed()
    });

    // While it drains, the server is not ready (SPEC §1: 200 only when accepting).
    let (status, body) = wait_for(DEADLINE, "/readyz to answer 503 during the drain", || {
        let r = try_http_request(http, "GET", "/readyz", &[], b"").ok()?;
        (r.status == 503).then(|| (r.status, r.json()))
    });
    assert_eq!(status, 503);
    assert_eq!(body["ready"], false, "{body}");
    assert!(body["reason"].as_str().is_some_and(|r| !r.is_empty()), "503 without a reason: {body}");

    let frame = good_reader.join().expect("reader thread");
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    assert!(retry_after_ms(frame.reason.as_str()) <= 2000, "{frame:?}");

    let elapsed = stopper.join().expect("stop thread");
    assert!(
        elapsed >= TIMEOUT.mul_f32(0.8),
        "stop returned after {elapsed:?}, before the drain timeout, although a peer never answered"
    );
    assert!(
        elapsed <= TIMEOUT + Duration::from_secs(3),
        "stop took {elapsed:?} with a {TIMEOUT:?} drain timeout"
    );

    // The mute peer got the 1001 close, then was terminated.
    let (frames, _end) = mute.read_to_end(Duration::from_secs(3));
    let close = frames.iter().find(|f| f.opcode == Frame::CLOSE).expect("close frame to mute peer");
    let (code, reason) = close.close_code_reason();
    assert_eq!(code, 1001);
    retry_after_ms(&reason);
    // Nothing listens any more.
    assert!(TcpStream::connect(ws).is_err(), "WebSocket port still accepting after stop");
    assert!(TcpStream::connect(http).is_err(), "HTTP port still accepting after stop");
}

#[test]
fn dropping_the_server_stops_it() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let ws = srv.ws;
    let reader = spawn("reader", move || c.expect_close(DEADLINE));
    drop(srv);
    let frame = reader.join().expect("reader thread");
    assert_eq!(frame.code, CloseCode::Away, "{frame:?}");
    retry_after_ms(frame.reason.as_str());
    assert!(TcpStream::connect(ws).is_err(), "WebSocket port still accepting after drop");
}
