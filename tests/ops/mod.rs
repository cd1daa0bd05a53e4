//! Operating it: every refusal says why. A page refused by the Origin rule
//! is told so by `GET /auth/check` (readably, across origins), and the
//! operator by one rate-limited `warn` line naming the variable to change;
//! an ingest answer names a `ts` in seconds and counts the positions no
//! event will receive.

use serde_json::json;

use crate::support::{Binary, DEADLINE, Server, TempDir, now_ms, wait_child, wait_until};

const PAGE: &str = "http://localhost:9090";

#[test]
fn auth_check_tells_a_page_the_origin_rule_refuses_that_it_does() {
    // Mode none: the page's host name must be the WebSocket's.
    let srv = Server::start();
    let r = srv.ws_request("/auth/check", &[("Origin", PAGE)]);
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some(PAGE), "readable by that page");
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let body = r.json();
    assert_eq!(body["error"], "origin-refused");
    let message = body["message"].as_str().expect("message");
    assert!(message.contains("LIVE_WS_ALLOWED_ORIGINS"), "{message}");
    assert_eq!(body.as_object().map(serde_json::Map::len), Some(2), "nothing else: {body}");
    // The upgrade it stands for is refused by the same rule.
    assert_eq!(srv.upgrade("/", &[("Origin", PAGE)]).status, 403);
    // A page on the same host name is fine; so is a script (no Origin).
    let same = srv.ws_request("/auth/check", &[("Origin", "http://127.0.0.1:9090")]);
    assert_eq!(same.status, 204);
    assert_eq!(same.header("access-control-allow-origin"), Some("http://127.0.0.1:9090"));
    assert_eq!(srv.ws_request("/auth/check", &[]).status, 204);
}

#[test]
fn auth_check_says_nothing_about_credentials_to_a_refused_origin() {
    let dir = TempDir::new("ops-origin");
    let file = dir.write("tokens.json", r#"{"tok-a":{"user":"alice","events":["*"]}}"#);
    let srv = Server::with(|c| {
        c.auth_mode = livecast::AuthMode::Tokens;
        c.tokens_file = Some(file);
        c.allowed_origins = vec!["https://app.example".to_owned()];
    });
    let listed = [("Origin", "https://app.example")];
    let good = [("Origin", "https://app.example"), ("Authorization", "Bearer tok-a")];
    assert_eq!(srv.ws_request("/auth/check", &good).status, 204);
    assert_eq!(srv.ws_request("/auth/check", &listed).status, 401, "listed, no token");
    // Another origin: the same answer whether its token is good or not.
    for token in ["Bearer tok-a", "Bearer nope"] {
        let r = srv.ws_request(
            "/auth/check",
            &[("Origin", "https://evil.example"), ("Authorization", token)],
        );
        assert_eq!(r.status, 403, "{token}");
        assert_eq!(r.json()["error"], "origin-refused");
    }
}

#[test]
fn a_refused_upgrade_is_logged_once_a_minute_with_the_rule_and_the_variable() {
    let mut bin = Binary::start(&[("LOG_LEVEL", "info")]);
    let ws = bin.ws;
    let upgrade = |origin: &str| {
        let mut headers = crate::support::upgrade_headers();
        headers.push(("Origin", origin));
        crate::support::http_request(ws, "GET", "/", &headers, b"").status
    };
    assert_eq!(upgrade(PAGE), 403);
    let line = |log: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains("refused by the Origin rule"))
            .map(str::to_owned)
            .collect()
    };
    wait_until(DEADLINE, "the refusal in the log", || !line(&bin.stderr()).is_empty());
    let first = line(&bin.stderr());
    let text = &first[0];
    assert!(text.contains("WARN"), "{text}");
    assert!(text.contains("LIVE_WS_ALLOWED_ORIGINS"), "{text}");
    assert!(text.contains(r#""http://localhost:9090""#), "the Origin, quoted: {text}");
    // A crowd of refused pages: still one line in the minute, and the
    // page on the right host name is let in.
    for n in 0..5 {
        assert_eq!(upgrade(&format!("http://page-{n}.example")), 403);
    }
    assert_eq!(upgrade(&format!("http://127.0.0.1:{}", bin.http.port())), 101);
    // Stopped, the process has written every line it ever will.
    bin.signal("-TERM");
    assert!(wait_child(&mut bin.child, DEADLINE).is_some_and(|s| s.success()));
    wait_until(DEADLINE, "stderr read to its end", || bin.stderr().contains("stopping"));
    assert_eq!(line(&bin.stderr()).len(), 1, "rate-limited:\n{}", bin.stderr());
}

// ---------------------------------------------------------------------------
// Ingest answers that say what happened

#[test]
fn a_ts_in_seconds_is_rejected_with_the_hint() {
    let srv = Server::start();
    let now = now_ms();
    let answer = srv.ingest(&json!([
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": now / 1000},
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": now},
    ]));
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 0);
    let error = answer["rejected"][0]["error"].as_str().expect("error");
    assert!(error.contains("looks like seconds"), "{error}");
    assert!(error.contains(&(now / 1000).to_string()), "names the value: {error}");
    assert!(error.contains("1000"), "says what to do: {error}");
}

#[test]
fn positions_no_event_will_receive_are_counted_in_the_answer() {
    // No map at all: a position without eventId goes nowhere.
    let srv = Server::start();
    let answer = srv.ingest(&json!([
        {"deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": now_ms()},
        crate::support::pos("e-1", "d-2", 0),
    ]));
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["unrouted"], 1, "{answer}");
    let hint = answer["hint"].as_str().expect("hint");
    assert!(hint.contains("eventId") && hint.contains("LIVE_DEVICE_EVENT_FILE"), "{hint}");
    srv.expect_metric("livecast_positions_unrouted_total", &[], 1.0);
    // Everything routed: the answer is the plain one.
    assert_eq!(
        srv.ingest(&json!([crate::support::pos("e-1", "d-2", 1)])),
        json!({"accepted": 1, "rejected": [], "rejectedCount": 0})
    );

    // With a map: only devices it does not hold are unrouted.
    let dir = TempDir::new("ops-unrouted");
    let map = dir.write("map.json", r#"{"d-mapped":"e-9"}"#);
    let srv = Server::with(|c| c.device_event_file = Some(map));
    let mut client = srv.connect();
    client.subscribe("e-9");
    let answer = srv.ingest(&json!([
        {"deviceId": "d-mapped", "lat": 1.0, "lon": 2.0, "ts": now_ms(), "seq": 0},
        {"deviceId": "d-stray", "lat": 1.0, "lon": 2.0, "ts": now_ms()},
        {"deviceId": "d-stray", "lat": 1.0, "lon": 2.0, "ts": now_ms()},
    ]));
    assert_eq!(answer["unrouted"], 2, "{answer}");
    assert_eq!(client.recv_position()["deviceId"], "d-mapped");
}

// ---------------------------------------------------------------------------
// The event list

fn events_of(client: &mut crate::support::Client) -> Vec<serde_json::Value> {
    client.send_json(&json!({"type": "events"}));
    client.recv_type("events")["events"].as_array().expect("events array").clone()
}

/// Asks until the list is `want`: a list may be up to a second old (the
/// server reuses it for every client), so a change shows within a second.
/// Asks four times a second, within the inbound rate limit.
fn events_become(client: &mut crate::support::Client, want: &[serde_json::Value]) {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let list = events_of(client);
        if list == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the event list stays {list:?}, not {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

#[test]
fn the_event_list_has_every_event_with_positions_newest_first() {
    let srv = Server::start();
    let mut client = srv.connect();
    assert_eq!(events_of(&mut client), Vec::<serde_json::Value>::new(), "nothing yet");
    let t = now_ms();
    let at = |event: &str, device: &str, ts: i64| json!({"eventId": event, "deviceId": device, "lat": 1.0, "lon": 2.0, "ts": ts});
    srv.ingest_ok(&json!([
        at("e-old", "d-1", t - 60_000),
        at("e-old", "d-2", t - 30_000),
        at("e-new", "d-3", t),
        at("e-old", "d-1", t - 20_000),
    ]));
    events_become(
        &mut client,
        &[
            json!({"eventId": "e-new", "devices": 1, "lastUpdate": t}),
            json!({"eventId": "e-old", "devices": 2, "lastUpdate": t - 20_000}),
        ],
    );
    // A device that moves leaves its old event; an event without devices
    // is not listed.
    srv.ingest_ok(&json!([at("e-new", "d-1", t + 1), at("e-new", "d-2", t + 2)]));
    events_become(&mut client, &[json!({"eventId": "e-new", "devices": 3, "lastUpdate": t + 2})]);
    assert!(srv.metric("livecast_inbound_messages_total", &[("type", "events")]) >= 3.0);
}

#[test]
fn in_tokens_mode_the_event_list_holds_the_tokens_events() {
    let dir = TempDir::new("ops-events");
    let file = dir.write(
        "tokens.json",
        r#"{"tok-a":{"user":"alice","events":["e-1"]},"tok-all":{"user":"root","events":["*"]}}"#,
    );
    let srv = Server::with(|c| {
        c.auth_mode = livecast::AuthMode::Tokens;
        c.tokens_file = Some(file);
    });
    srv.ingest_ok(&json!([
        crate::support::pos("e-1", "d-1", 0),
        crate::support::pos("e-2", "d-2", 0)
    ]));
    let ids = |client: &mut crate::support::Client| {
        let mut ids: Vec<String> = events_of(client)
            .iter()
            .filter_map(|e| e["eventId"].as_str().map(str::to_owned))
            .collect();
        ids.sort_unstable();
        ids
    };
    let mut alice = srv.connect_with("/", &[("Authorization", "Bearer tok-a")]).expect("tok-a");
    assert_eq!(ids(&mut alice), ["e-1"]);
    let mut root = srv.connect_with("/?access_token=tok-all", &[]).expect("tok-all");
    assert_eq!(ids(&mut root), ["e-1", "e-2"]);
}

// ---------------------------------------------------------------------------
// The README's own commands, run as they are written there (only the port
// changed to the test server's).

/// The README as the repository holds it.
const README: &str = include_str!("../../README.md");

/// The README's command line that starts with `start` (its `\` continuation
/// lines joined), and the line after it (an answer, when it shows one).
fn readme_command(start: &str) -> (String, &'static str) {
    let mut lines = README.lines();
    while let Some(line) = lines.next() {
        if !line.starts_with(start) {
            continue;
        }
        let mut command = line.trim_end().to_owned();
        while let Some(head) = command.strip_suffix('\\') {
            let next = lines.next().expect("a continuation line");
            command = format!("{head}{}", next.trim_start());
        }
        return (command, lines.next().unwrap_or(""));
    }
    panic!("the README has no command line starting with {start:?}");
}

/// Runs `command` with bash; its stdout (panics on failure).
fn run_bash(command: &str) -> String {
    let out = std::process::Command::new("bash")
        .args(["-c", command])
        .output()
        .unwrap_or_else(|e| panic!("bash: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command}\nexit {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn the_readme_curl_examples_work_as_written() {
    let srv = Server::start();
    let mut client = srv.connect();
    client.subscribe("demo");
    let here = |command: &str| command.replace("127.0.0.1:9090", &srv.http.to_string());

    // The quick start's: a position of device d-1 in event demo, now.
    let (post, _) = readme_command(
        "curl -X POST http://127.0.0.1:9090/ingest -H 'Content-Type: application/json'",
    );
    let answer: serde_json::Value = serde_json::from_str(&run_bash(&here(&post))).expect("JSON");
    assert_eq!(answer, json!({"accepted": 1, "rejected": [], "rejectedCount": 0}));
    let p = client.recv_position();
    assert_eq!((p["eventId"].as_str(), p["deviceId"].as_str()), (Some("demo"), Some("d-1")));
    assert!((now_ms() - p["ts"].as_i64().expect("ts")).abs() < 60_000, "ts is now, in ms: {p}");

    // The NDJSON one, with the answer the README prints after it.
    let (post, shown) = readme_command(
        "curl -X POST http://127.0.0.1:9090/ingest -H 'Content-Type: application/x-ndjson'",
    );
    let answer: serde_json::Value = serde_json::from_str(&run_bash(&here(&post))).expect("JSON");
    let shown: serde_json::Value = serde_json::from_str(shown).expect("the README's answer");
    assert_eq!(answer, shown);
    assert_eq!(client.recv_position()["ts"], 1_795_856_400_123_i64, "RFC 3339, in ms");
}

/// A private `redis-server` on a free port, killed on drop.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        wait_until(DEADLINE, "redis-server listening", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        PrivateRedis { port, child }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_readme_xadd_example_works_as_written() {
    let redis = PrivateRedis::start();
    let srv = Server::with(|c| {
        c.redis_url = Some(livecast::Secret::new(format!("redis://127.0.0.1:{}/", redis.port)));
        c.batch_block = std::time::Duration::from_millis(100);
    });
    wait_until(DEADLINE, "/readyz 200", || srv.get("/readyz").status == 200);
    let mut client = srv.connect();
    client.subscribe("demo");
    let (xadd, _) = readme_command("redis-cli XADD positions");
    let xadd = xadd.replacen("redis-cli", &format!("redis-cli -p {}", redis.port), 1);
    let id = run_bash(&xadd);
    assert!(id.trim().contains('-'), "an entry id: {id}");
    let p = client.recv_position();
    assert_eq!((p["eventId"].as_str(), p["deviceId"].as_str()), (Some("demo"), Some("d-1")));
    assert_eq!(p["ts"], 1_764_316_800_123_i64);
}

#[test]
fn the_quick_start_names_the_demo_and_the_one_test_command() {
    // The README's first code block: the demo server (what tests/demo runs
    // as `livecast --demo`) and the test command CI runs.
    let block =
        README.split("```sh\n").nth(1).and_then(|b| b.split("```").next()).expect("a block");
    let commands: Vec<&str> =
        block.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).collect();
    assert_eq!(commands, ["cargo run --release -- --demo", "scripts/test.sh"]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test.sh");
    let mode = std::fs::metadata(script).expect("scripts/test.sh").permissions();
    assert!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o111 != 0, "executable");
    // `cargo run` runs livecast: the only binary besides the echo server
    // is chosen by default-run.
    let manifest = include_str!("../../Cargo.toml");
    assert!(manifest.contains("default-run = \"livecast\""), "Cargo.toml: default-run");
}
