//! SPEC §6 (and the routing rule of §4): positions without `eventId` go to
//! their device's event from `LIVE_DEVICE_EVENT_FILE`, refreshed every
//! `LIVE_DEVICE_EVENT_REFRESH_MS`; a device that moves leaves the old
//! event's snapshot; a failed refresh keeps the previous map and is counted.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{DEADLINE, Server, TempDir, now_ms, seq_of, wait_until};

/// A position of `d-7` without an `eventId`.
fn unrouted(seq: u64) -> Value {
    json!({"deviceId": "d-7", "lat": 46.0, "lon": 6.0, "ts": now_ms(), "seq": seq})
}

#[test]
fn positions_without_event_follow_the_device_map_and_its_changes() {
    let dir = TempDir::new("device-map");
    let file = dir.write("devices.json", r#"{"d-7":"e-42"}"#);
    let srv = Server::with(|c| {
        c.device_event_file = Some(file);
        c.device_event_refresh = Duration::from_millis(200);
    });
    wait_until(DEADLINE, "the map to be loaded", || {
        srv.metric("livecast_device_map_size", &[]) == 1.0
    });
    let mut old = srv.connect();
    assert!(old.subscribe("e-42").is_empty());
    let mut new = srv.connect();
    assert!(new.subscribe("e-43").is_empty());

    srv.ingest_ok(&unrouted(0));
    let p = old.recv_position();
    assert_eq!((p["eventId"].as_str(), seq_of(&p)), (Some("e-42"), 0), "{p}");
    assert_eq!(p["deviceId"], "d-7");

    // d-7 moves to e-43.
    dir.write("devices.json", r#"{"d-7":"e-43","d-8":"e-43"}"#);
    wait_until(DEADLINE, "the refreshed map", || {
        srv.metric("livecast_device_map_size", &[]) == 2.0
    });
    srv.ingest_ok(&unrouted(1));
    let mut p = new.recv_position();
    if seq_of(&p) == 0 {
        // The server may announce a moved device's last known position to
        // its new event (livecast does, at the refresh); nothing older.
        assert_eq!(p["eventId"], "e-43", "{p}");
        p = new.recv_position();
    }
    assert_eq!((p["eventId"].as_str(), seq_of(&p)), (Some("e-43"), 1), "{p}");

    // It left e-42's snapshot and is in e-43's.
    assert_eq!(
        srv.connect().subscribe("e-42"),
        Vec::<Value>::new(),
        "d-7 still in e-42's snapshot"
    );
    let snap = srv.connect().subscribe("e-43");
    assert_eq!(snap.len(), 1, "{snap:?}");
    assert_eq!((snap[0]["deviceId"].as_str(), seq_of(&snap[0])), (Some("d-7"), 1));

    // The e-42 subscriber did not get seq 1: with an explicit eventId, the
    // same device's next position reaches it first (per-device order).
    srv.ingest_ok(&json!({"deviceId": "d-7", "eventId": "e-42", "lat": 1.0, "lon": 1.0, "ts": now_ms(), "seq": 2}));
    let p = old.recv_position();
    assert_eq!(seq_of(&p), 2, "the e-42 subscriber got a position routed to e-43: {p}");
}

#[test]
fn a_failed_refresh_keeps_the_previous_map_and_is_counted() {
    let dir = TempDir::new("device-map-fail");
    let file = dir.write("devices.json", r#"{"d-7":"e-42"}"#);
    let srv = Server::with(|c| {
        c.device_event_file = Some(file);
        c.device_event_refresh = Duration::from_millis(200);
    });
    wait_until(DEADLINE, "the map to be loaded", || {
        srv.metric("livecast_device_map_size", &[]) == 1.0
    });
    let before = srv.metric("livecast_device_map_refresh_failures_total", &[]);
    dir.write("devices.json", "{ this is not json");
    wait_until(DEADLINE, "a refresh failure to be counted", || {
        srv.metric("livecast_device_map_refresh_failures_total", &[]) > before
    });
    assert_eq!(srv.metric("livecast_device_map_size", &[]), 1.0);
    let mut c = srv.connect();
    assert!(c.subscribe("e-42").is_empty());
    srv.ingest_ok(&unrouted(5));
    let p = c.recv_position();
    assert_eq!((p["eventId"].as_str(), seq_of(&p)), (Some("e-42"), 5), "{p}");
}
