//! SPEC §3 (subscribe/unsubscribe, the outbound messages, error codes) and
//! §2.4 (invalid inbound → `protocol-violation` and the connection stays
//! open; inbound flood → 1008; oversized frame → 1009).

use serde_json::json;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Bytes, Message};

use crate::support::{DEADLINE, Server, pos, seq_of, wait_until};

#[test]
fn subscribe_and_unsubscribe_are_answered() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert_eq!(c.subscribe("e-1"), Vec::<serde_json::Value>::new());
    c.unsubscribe("e-1");
    // Unsubscribing from an event never subscribed to answers the same.
    c.unsubscribe("e-never");
    // Unknown extra fields are ignored.
    c.send_json(&json!({"type": "subscribe", "eventId": "e-2", "extra": {"a": [1, 2]}, "n": 3}));
    let v = c.recv_json();
    assert_eq!(v, json!({"type": "subscribed", "eventId": "e-2", "positions": []}));

    // Nothing more comes from e-1: the same device reports to e-1 and then
    // to e-2, and per-device order means an e-1 frame would come first.
    srv.ingest_ok(&json!([pos("e-1", "d-1", 0)]));
    srv.ingest_ok(&json!([pos("e-2", "d-1", 1)]));
    let p = c.recv_position();
    assert_eq!(p["eventId"], "e-2", "a position of an unsubscribed event arrived: {p}");
    assert_eq!(seq_of(&p), 1);
}

#[test]
fn subscribing_twice_gives_a_fresh_snapshot_and_one_stream() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    srv.ingest_ok(&json!([pos("e-1", "d-1", 0)]));
    assert_eq!(seq_of(&c.recv_position()), 0);

    let snapshot = c.subscribe("e-1");
    assert_eq!(snapshot.len(), 1, "second snapshot: {snapshot:?}");
    assert_eq!(snapshot[0]["deviceId"], "d-1");
    assert_eq!(seq_of(&snapshot[0]), 0);

    // Still one subscription: each position arrives once.
    srv.ingest_ok(&json!([pos("e-1", "d-1", 1)]));
    srv.ingest_ok(&json!([pos("e-1", "d-1", 2)]));
    assert_eq!(seq_of(&c.recv_position()), 1);
    assert_eq!(seq_of(&c.recv_position()), 2, "a position was delivered twice");
    assert_eq!(srv.metric("livecast_subscriptions", &[]), 1.0);
}

#[test]
fn invalid_inbound_gets_protocol_violation_and_the_connection_stays_open() {
    let srv = Server::start();
    let mut c = srv.connect();
    let long = "x".repeat(129);
    let cases: Vec<Message> = vec![
        Message::text("not json"),
        Message::text("{\"type\":\"subscribe\","),
        Message::Binary(Bytes::from_static(b"{\"type\":\"subscribe\",\"eventId\":\"e-1\"}")),
        Message::text(json!({"type": "dance", "eventId": "e-1"}).to_string()),
        Message::text(json!({"eventId": "e-1"}).to_string()),
        Message::text(json!({"type": "subscribe"}).to_string()),
        Message::text(json!({"type": "unsubscribe"}).to_string()),
        Message::text(json!({"type": "subscribe", "eventId": ""}).to_string()),
        Message::text(json!({"type": "subscribe", "eventId": long}).to_string()),
        Message::text(json!({"type": "subscribe", "eventId": 42}).to_string()),
        Message::text(json!(["subscribe", "e-1"]).to_string()),
    ];
    let n = cases.len();
    for msg in cases {
        c.expect_error(msg, "protocol-violation");
    }
    // 128 characters is the longest valid eventId; the connection still works.
    let max = "y".repeat(128);
    assert!(c.subscribe(&max).is_empty());
    assert_eq!(srv.metric("livecast_subscriptions", &[]), 1.0);
    let text = srv.metrics();
    assert_eq!(
        crate::support::metric(&text, "livecast_inbound_messages_total", &[("type", "invalid")]),
        n as f64
    );
    assert_eq!(
        crate::support::metric(&text, "livecast_outbound_messages_total", &[("type", "error")]),
        n as f64
    );
    assert_eq!(
        crate::support::metric(
            &text,
            "livecast_connections_closed_total",
            &[("reason", "protocol-error")]
        ),
        0.0
    );
}

#[test]
fn client_pings_are_answered_with_pongs() {
    let srv = Server::start();
    let mut c = srv.connect();
    c.send(Message::Ping(Bytes::from_static(b"hello")));
    let end = std::time::Instant::now() + DEADLINE;
    loop {
        match c.next_message(end.saturating_duration_since(std::time::Instant::now())) {
            Ok(Message::Pong(p)) => {
                assert_eq!(&p[..], b"hello");
                break;
            }
            Ok(Message::Ping(_)) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    assert!(c.subscribe("e-1").is_empty());
}

#[test]
fn subscriptions_are_limited_per_connection() {
    let srv = Server::with(|c| c.max_subscriptions = 2);
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    assert!(c.subscribe("e-2").is_empty());
    let err = c.expect_error(
        Message::text(json!({"type": "subscribe", "eventId": "e-3"}).to_string()),
        "too-many-subscriptions",
    );
    assert_eq!(err["type"], "error");
    // Subscribing again to a held event adds nothing, so it is allowed.
    assert!(c.subscribe("e-1").is_empty());
    assert_eq!(srv.metric("livecast_subscriptions", &[]), 2.0);
    // Freeing a slot makes room.
    c.unsubscribe("e-2");
    assert!(c.subscribe("e-3").is_empty());
    // e-3 is really subscribed: its positions arrive.
    srv.ingest_ok(&json!([pos("e-3", "d-1", 7)]));
    assert_eq!(seq_of(&c.recv_position()), 7);
}

#[test]
fn an_oversized_frame_closes_1009() {
    let srv = Server::with(|c| c.max_message_bytes = 256);
    let mut c = srv.connect();
    // Just under the limit is fine.
    let pad = "p".repeat(150);
    c.send_json(&json!({"type": "subscribe", "eventId": "e-1", "pad": pad}));
    assert_eq!(c.recv_type("subscribed")["eventId"], "e-1");

    let pad = "p".repeat(1000);
    let _ = c.try_send(Message::text(
        json!({"type": "subscribe", "eventId": "e-2", "pad": pad}).to_string(),
    ));
    let frame = c.expect_close(DEADLINE);
    assert_eq!(frame.code, CloseCode::Size, "{frame:?}");
    wait_until(DEADLINE, "message-too-big counted", || {
        srv.metric("livecast_connections_closed_total", &[("reason", "message-too-big")]) == 1.0
    });
}

#[test]
fn an_inbound_flood_closes_1008() {
    const LIMIT: u32 = 5;
    let srv = Server::with(|c| c.max_inbound_per_sec = LIMIT);
    let mut c = srv.connect();
    // Under the limit, every message is answered.
    for i in 0..3 {
        c.send_json(&json!({"type": "unsubscribe", "eventId": format!("e-{i}")}));
        assert_eq!(c.recv_type("unsubscribed")["eventId"], format!("e-{i}"));
    }
    // Ten times the limit, as fast as possible.
    for i in 0..LIMIT * 10 {
        if c.try_send(Message::text(
            json!({"type": "unsubscribe", "eventId": format!("f-{i}")}).to_string(),
        ))
        .is_err()
        {
            break; // already closed by the server
        }
    }
    let frame = c.expect_close(DEADLINE);
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
    wait_until(DEADLINE, "inbound-flood counted", || {
        srv.metric("livecast_connections_closed_total", &[("reason", "inbound-flood")]) == 1.0
    });
    // Other connections are unaffected.
    let mut other = srv.connect();
    assert!(other.subscribe("e-1").is_empty());
}

/// Issue 14: the application-level `ping` a page can see, answered with a
/// `pong` echoing its `id` (any JSON scalar, as sent); no `id`, no `id`.
#[test]
fn application_pings_are_answered_with_pongs_echoing_the_id() {
    let srv = Server::start();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    let ids = [json!(7), json!("abc-\u{e9}\"x"), json!(null), json!(true), json!(-2.5)];
    for id in &ids {
        c.send_json(&json!({"type": "ping", "id": id, "extra": {"ignored": [1]}}));
        assert_eq!(c.recv_json(), json!({"type": "pong", "id": id}));
    }
    c.send_json(&json!({"type": "ping"}));
    assert_eq!(c.recv_json(), json!({"type": "pong"}), "no id in the ping: none in the pong");

    // A structured id is refused, and the connection stays open.
    let n_invalid = 2;
    c.expect_error(
        Message::text(json!({"type": "ping", "id": {"a": 1}}).to_string()),
        "protocol-violation",
    );
    c.expect_error(
        Message::text(json!({"type": "ping", "id": [1]}).to_string()),
        "protocol-violation",
    );

    // Pongs go out in order with the live stream, on the same connection.
    srv.ingest_ok(&json!([pos("e-1", "d-1", 3)]));
    assert_eq!(seq_of(&c.recv_position()), 3);
    c.send_json(&json!({"type": "ping", "id": 99}));
    assert_eq!(c.recv_json(), json!({"type": "pong", "id": 99}));

    let text = srv.metrics();
    let count = |name: &str, ty: &str| crate::support::metric(&text, name, &[("type", ty)]);
    let pings = ids.len() + 2;
    assert_eq!(count("livecast_inbound_messages_total", "ping"), pings as f64);
    assert_eq!(count("livecast_outbound_messages_total", "pong"), pings as f64);
    assert_eq!(count("livecast_inbound_messages_total", "invalid"), n_invalid as f64);
}

/// Issue 14: pings count against `LIVE_WS_MAX_INBOUND_PER_SEC` like any
/// other inbound message: a ping flood is closed 1008.
#[test]
fn a_ping_flood_closes_1008() {
    const LIMIT: u32 = 5;
    let srv = Server::with(|c| c.max_inbound_per_sec = LIMIT);
    let mut c = srv.connect();
    c.send_json(&json!({"type": "ping", "id": 0}));
    assert_eq!(c.recv_json(), json!({"type": "pong", "id": 0}));
    for i in 0..LIMIT * 10 {
        if c.try_send(Message::text(json!({"type": "ping", "id": i}).to_string())).is_err() {
            break; // already closed by the server
        }
    }
    let frame = c.expect_close(DEADLINE);
    assert_eq!(frame.code, CloseCode::Policy, "{frame:?}");
    wait_until(DEADLINE, "inbound-flood counted", || {
        srv.metric("livecast_connections_closed_total", &[("reason", "inbound-flood")]) == 1.0
    });
    // Fewer pongs than pings: the rest were over the limit.
    let pongs = srv.metric("livecast_outbound_messages_total", &[("type", "pong")]);
    assert!(pongs < f64::from(LIMIT * 10), "{pongs} pongs");
}

/// Issue 14: a refused message that named an event (a string `eventId`,
/// even an invalid one) gets an error naming it, so that a client library
/// can hand the error to that subscription.
#[test]
fn a_protocol_violation_names_the_event_of_the_refused_message() {
    let srv = Server::start();
    let mut c = srv.connect();
    let long = "x".repeat(200);
    let err = c.expect_error(
        Message::text(json!({"type": "subscribe", "eventId": long}).to_string()),
        "protocol-violation",
    );
    assert_eq!(err["eventId"], long.as_str());
    let err = c.expect_error(Message::text("not json"), "protocol-violation");
    assert!(err.get("eventId").is_none(), "{err}");
}
