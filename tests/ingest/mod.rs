//! SPEC §1 (the HTTP port: /healthz, /readyz, GET / dashboard of §8) and §4
//! (positions and `POST /ingest`: JSON array or object, NDJSON, chunked
//! bodies, per-item rejection, `ts` normalisation, 400/401/413).

use serde_json::{Value, json};

use crate::support::{Server, http_raw, metric, now_ms, pos, seq_of};

#[test]
fn health_and_readiness() {
    let srv = Server::start();
    assert_eq!(srv.get("/healthz").status, 200);
    let r = srv.get("/readyz");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), json!({"ready": true}));
    assert_eq!(srv.get("/no-such-page").status, 404);
}

#[test]
fn dashboard_page_is_served_and_self_contained() {
    let srv = Server::start();
    let r = srv.get("/");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").is_some_and(|t| t.starts_with("text/html")),
        "content type {:?}",
        r.header("content-type")
    );
    let page = r.text();
    assert!(page.contains("<canvas"), "SPEC §8: the dashboard draws on a canvas");
    assert!(page.contains("WebSocket"), "SPEC §8: the dashboard connects to the WebSocket port");
    for external in ["src=\"http", "src='http", "href=\"http", "href='http", "@import"] {
        assert!(!page.contains(external), "dashboard loads an external resource ({external})");
    }
}

#[test]
fn ingest_accepts_an_array_or_one_object() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let answer = srv.ingest(&json!([pos("e-1", "d-1", 0), pos("e-1", "d-1", 1)]));
    assert_eq!(answer, json!({"accepted": 2, "rejected": [], "rejectedCount": 0}));
    let answer = srv.ingest(&pos("e-1", "d-1", 2));
    assert_eq!(answer, json!({"accepted": 1, "rejected": [], "rejectedCount": 0}));
    for seq in 0..3 {
        assert_eq!(seq_of(&c.recv_position()), seq);
    }
}

#[test]
fn invalid_positions_are_rejected_one_by_one_and_the_others_delivered() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let ts = now_ms();
    let body = json!([
        pos("e-1", "d-1", 0),                                                   // 0 ok
        {"eventId": "e-1", "lat": 1.0, "lon": 2.0, "ts": ts, "seq": 90},         // 1 no deviceId
        pos("e-1", "d-1", 1),                                                   // 2 ok
        {"eventId": "e-1", "deviceId": "d-1", "lat": 91.0, "lon": 2.0, "ts": ts},  // 3 lat
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": -181.0, "ts": ts}, // 4 lon
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0},           // 5 no ts
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": "yesterday"}, // 6
        {"eventId": "e-1", "deviceId": "", "lat": 1.0, "lon": 2.0, "ts": ts},    // 7 empty id
        42,                                                                     // 8 not an object
        {"eventId": "e-1", "deviceId": "d-1", "lat": "1.0", "lon": 2.0, "ts": ts}, // 9 lat string
        pos("e-1", "d-1", 2),                                                   // 10 ok
    ]);
    let answer = srv.ingest(&body);
    assert_eq!(answer["accepted"], 3, "{answer}");
    let rejected = answer["rejected"].as_array().expect("rejected array");
    let indices: Vec<u64> = rejected.iter().map(|r| r["index"].as_u64().expect("index")).collect();
    assert_eq!(indices, vec![1, 3, 4, 5, 6, 7, 8, 9], "{answer}");
    for r in rejected {
        assert!(
            r["error"].as_str().is_some_and(|e| !e.is_empty()),
            "rejection without a reason: {r}"
        );
    }
    for seq in 0..3 {
        let p = c.recv_position();
        assert_eq!(seq_of(&p), seq, "good positions around bad ones: {p}");
    }
    let text = srv.metrics();
    assert_eq!(metric(&text, "livecast_positions_rejected_total", &[("source", "ingest")]), 8.0);
    assert!(metric(&text, "livecast_positions_received_total", &[("source", "ingest")]) >= 3.0);

    // The server is still fine.
    srv.ingest_ok(&json!([pos("e-1", "d-1", 3)]));
    assert_eq!(seq_of(&c.recv_position()), 3);
}

#[test]
fn rfc3339_timestamps_are_normalised_to_milliseconds() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let answer = srv.ingest(&json!([
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": "2025-11-28T10:00:00.123+01:00", "seq": 0},
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": "2025-11-28T09:00:01Z", "seq": 1},
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": "2025-11-28T10:00:00", "seq": 2},
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": 1764320402000_i64, "seq": 3},
    ]));
    assert_eq!(answer["accepted"], 3, "{answer}");
    assert_eq!(answer["rejected"][0]["index"], 2, "an RFC 3339 string needs an offset: {answer}");
    let p = c.recv_position();
    assert_eq!((seq_of(&p), p["ts"].clone()), (0, json!(1_764_320_400_123_i64)), "{p}");
    let p = c.recv_position();
    assert_eq!((seq_of(&p), p["ts"].clone()), (1, json!(1_764_320_401_000_i64)), "{p}");
    let p = c.recv_position();
    assert_eq!((seq_of(&p), p["ts"].clone()), (3, json!(1_764_320_402_000_i64)), "{p}");
}

#[test]
fn optional_and_unknown_fields_pass_through_unchanged() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let sent = json!({
        "eventId": "e-1", "deviceId": "d-7", "lat": 46.52, "lon": 6.63, "ts": 1_764_316_800_123_i64,
        "speed": 12.5, "heading": 270, "alt": 372.4, "accuracy": 3, "battery": 0.87,
        "driver": "Zoë", "tags": ["a", "b"], "meta": {"k": null, "n": -1}
    });
    srv.ingest_ok(&sent);
    let mut expected = sent.clone();
    expected["type"] = json!("position");
    assert_eq!(c.recv_position(), expected);
}

#[test]
fn a_body_that_is_not_json_is_400() {
    let srv = Server::start();
    let r = srv.post_ingest(b"this is { not json", "application/json", &[]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", r.text());
}

#[test]
fn ndjson_is_accepted_with_line_numbers_as_indices() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let ts = now_ms();
    let lines = [
        pos("e-1", "d-1", 0).to_string(), // 0
        String::new(),                    // 1 blank
        json!({"eventId": "e-1", "deviceId": "d-1", "lat": 91, "lon": 0, "ts": ts}).to_string(), // 2
        "not json at all".to_owned(),     // 3
        pos("e-1", "d-1", 1).to_string(), // 4
    ];
    let body = lines.join("\n") + "\n";
    let r = srv.post_ingest(body.as_bytes(), "application/x-ndjson", &[]);
    assert_eq!(r.status, 202, "{}", r.text());
    let answer = r.json();
    assert_eq!(answer["accepted"], 2, "{answer}");
    let indices: Vec<Value> =
        answer["rejected"].as_array().expect("array").iter().map(|r| r["index"].clone()).collect();
    assert_eq!(indices, vec![json!(2), json!(3)], "{answer}");
    assert_eq!(seq_of(&c.recv_position()), 0);
    assert_eq!(seq_of(&c.recv_position()), 1);
}

/// A `POST /ingest` with a chunked body split into `chunks`.
fn chunked_request(srv: &Server, chunks: &[&[u8]], extra: &str) -> Vec<u8> {
    let mut raw = format!(
        "POST /ingest HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n{extra}\r\n",
        srv.http
    )
    .into_bytes();
    for c in chunks {
        raw.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        raw.extend_from_slice(c);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    raw
}

#[test]
fn chunked_bodies_are_accepted() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let body =
        json!([pos("e-1", "d-1", 0), pos("e-1", "d-1", 1), pos("e-1", "d-1", 2)]).to_string();
    let b = body.as_bytes();
    let (x, y) = (b.len() / 3, 2 * b.len() / 3);
    let r = http_raw(srv.http, &chunked_request(&srv, &[&b[..x], &b[x..y], &b[y..]], ""));
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.json(), json!({"accepted": 3, "rejected": [], "rejectedCount": 0}));
    for seq in 0..3 {
        assert_eq!(seq_of(&c.recv_position()), seq);
    }
}

#[test]
fn a_body_over_the_limit_is_413() {
    let srv = Server::with(|c| c.ingest_max_body_bytes = 1024);
    let mut small = vec![pos("e-1", "d-1", 0)];
    while serde_json::to_vec(&small).unwrap().len() < 900 {
        small.push(pos("e-1", "d-1", small.len() as u64));
    }
    small.pop();
    let n = small.len();
    assert_eq!(srv.ingest(&Value::Array(small))["accepted"], n);

    let big: Vec<Value> = (0..80).map(|i| pos("e-1", "d-1", i)).collect();
    let body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() > 4096);
    let r = srv.post_ingest(&body, "application/json", &[]);
    assert_eq!(r.status, 413, "{} bytes with a 1024-byte limit", body.len());

    let (x, y) = (600, 1200);
    let r = http_raw(srv.http, &chunked_request(&srv, &[&body[..x], &body[x..y], &body[y..]], ""));
    assert_eq!(r.status, 413, "chunked {} bytes with a 1024-byte limit", body.len());
}

#[test]
fn an_ingest_token_is_required_when_configured() {
    let srv = Server::with(|c| c.ingest_token = Some(livecast::Secret::new("t")));
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let body = json!([pos("e-1", "d-1", 0)]).to_string();
    let r = srv.post_ingest(body.as_bytes(), "application/json", &[]);
    assert_eq!(r.status, 401, "no credentials");
    let r =
        srv.post_ingest(body.as_bytes(), "application/json", &[("Authorization", "Bearer wrong")]);
    assert_eq!(r.status, 401, "wrong token");
    let r = srv.post_ingest(body.as_bytes(), "application/json", &[("Authorization", "t")]);
    assert_eq!(r.status, 401, "token without the Bearer scheme");

    let body = json!([pos("e-1", "d-1", 1)]).to_string();
    let r = srv.post_ingest(body.as_bytes(), "application/json", &[("Authorization", "Bearer t")]);
    assert_eq!(r.status, 202, "{}", r.text());
    // The refused position (seq 0) was not broadcast: seq 1 comes first.
    assert_eq!(seq_of(&c.recv_position()), 1);
}
