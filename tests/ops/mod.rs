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
    assert_eq!(
        events_of(&mut client),
        [
            json!({"eventId": "e-new", "devices": 1, "lastUpdate": t}),
            json!({"eventId": "e-old", "devices": 2, "lastUpdate": t - 20_000}),
        ]
    );
    // A device that moves leaves its old event; an event without devices
    // is not listed.
    srv.ingest_ok(&json!([at("e-new", "d-1", t + 1), at("e-new", "d-2", t + 2)]));
    assert_eq!(
        events_of(&mut client),
        [json!({"eventId": "e-new", "devices": 3, "lastUpdate": t + 2})]
    );
    srv.expect_metric("livecast_inbound_messages_total", &[("type", "events")], 3.0);
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
