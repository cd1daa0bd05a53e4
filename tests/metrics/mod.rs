//! SPEC §7 (metrics): every `livecast_*` family is exported on `GET
//! /metrics` with its Prometheus type, and the counters, gauges and
//! histograms follow what the server did.

use serde_json::json;
use tungstenite::Message;

use crate::support::{DEADLINE, Server, TempDir, metric, metric_present, now_ms, pos, wait_until};

/// Every family named by the SPEC and the brief, with its type.
const FAMILIES: &[(&str, &str)] = &[
    ("livecast_connections_open", "gauge"),
    ("livecast_connections_opened_total", "counter"),
    ("livecast_connections_closed_total", "counter"),
    ("livecast_backpressure_closes_total", "counter"),
    ("livecast_inbound_messages_total", "counter"),
    ("livecast_outbound_messages_total", "counter"),
    ("livecast_subscriptions", "gauge"),
    ("livecast_positions_received_total", "counter"),
    ("livecast_positions_rejected_total", "counter"),
    ("livecast_positions_broadcast_total", "counter"),
    ("livecast_fanout_deliveries_total", "counter"),
    ("livecast_broadcast_lag_seconds", "histogram"),
    ("livecast_snapshot_duration_seconds", "histogram"),
    ("livecast_snapshot_positions", "histogram"),
    ("livecast_device_map_size", "gauge"),
    ("livecast_device_map_refresh_failures_total", "counter"),
    ("livecast_upgrades_rejected_total", "counter"),
    ("livecast_auth_duration_seconds", "histogram"),
    ("livecast_authz_duration_seconds", "histogram"),
];

#[test]
fn every_metric_family_is_exported_with_its_type() {
    let dir = TempDir::new("metrics-families");
    let file = dir.write("tokens.json", r#"{"tok":{"user":"u","events":["*"]}}"#);
    let srv = Server::with(|c| {
        c.auth_mode = livecast::AuthMode::Tokens;
        c.tokens_file = Some(file);
    });
    // Touch every labelled family at least once.
    assert_eq!(srv.upgrade("/", &[]).status, 401);
    let mut c = srv.connect_with("/", &[("Authorization", "Bearer tok")]).expect("tok");
    assert!(c.subscribe("e-1").is_empty());
    c.expect_error(Message::text("nope"), "protocol-violation");
    c.unsubscribe("e-1");
    assert!(c.subscribe("e-1").is_empty());
    let answer = srv.ingest(&json!([pos("e-1", "d-1", 0), {"deviceId": "bad"}]));
    assert_eq!(answer["accepted"], 1);
    c.recv_position();
    c.close();
    wait_until(DEADLINE, "the close to be counted", || {
        srv.metric("livecast_connections_closed_total", &[("reason", "client-close")]) == 1.0
    });

    let text = srv.metrics();
    let missing: Vec<_> =
        FAMILIES.iter().filter(|(n, _)| !metric_present(&text, n)).map(|(n, _)| *n).collect();
    assert!(missing.is_empty(), "families missing from /metrics: {missing:?}\n{text}");
    for (name, kind) in FAMILIES {
        let line = format!("# TYPE {name} {kind}");
        assert!(text.lines().any(|l| l == line), "no {line:?} in /metrics");
    }
    for outcome_family in
        ["livecast_auth_duration_seconds_count", "livecast_authz_duration_seconds_count"]
    {
        assert!(
            text.lines().any(|l| l.starts_with(outcome_family) && l.contains("outcome=\"")),
            "{outcome_family} has no outcome label"
        );
    }
}

#[test]
fn counters_follow_the_traffic() {
    let srv = Server::start();
    let eq = |name: &str, labels: &[(&str, &str)], want: f64| srv.expect_metric(name, labels, want);
    eq("livecast_connections_open", &[], 0.0);

    let mut c1 = srv.connect();
    let mut c2 = srv.connect();
    assert!(c1.subscribe("e-1").is_empty());
    assert!(c2.subscribe("e-1").is_empty());
    eq("livecast_connections_open", &[], 2.0);
    eq("livecast_connections_opened_total", &[], 2.0);
    eq("livecast_subscriptions", &[], 2.0);
    eq("livecast_inbound_messages_total", &[("type", "subscribe")], 2.0);
    eq("livecast_outbound_messages_total", &[("type", "subscribed")], 2.0);
    eq("livecast_snapshot_duration_seconds_count", &[], 2.0);
    eq("livecast_snapshot_positions_count", &[], 2.0);
    eq("livecast_snapshot_positions_sum", &[], 0.0);

    // Three devices, one position each, one request each; one bad position.
    for d in 0..3 {
        srv.ingest_ok(&json!([pos("e-1", &format!("d-{d}"), 0)]));
    }
    assert_eq!(srv.ingest(&json!([{"deviceId": "d-9", "lat": 0, "lon": 0}]))["accepted"], 0);
    for _ in 0..3 {
        c1.recv_position();
        c2.recv_position();
    }
    eq("livecast_fanout_deliveries_total", &[], 6.0);
    eq("livecast_outbound_messages_total", &[("type", "position")], 6.0);
    eq("livecast_positions_broadcast_total", &[], 3.0);
    eq("livecast_positions_rejected_total", &[("source", "ingest")], 1.0);
    let text = srv.metrics();
    assert!(metric(&text, "livecast_positions_received_total", &[("source", "ingest")]) >= 3.0);
    assert!(metric(&text, "livecast_broadcast_lag_seconds_count", &[]) >= 3.0);

    // Broadcast lag is now − ts: a position 2 s old adds at least 2 s.
    let lag_before = metric(&text, "livecast_broadcast_lag_seconds_sum", &[]);
    let mut old = pos("e-1", "d-0", 1);
    old["ts"] = json!(now_ms() - 2000);
    srv.ingest_ok(&old);
    c1.recv_position();
    c2.recv_position();
    wait_until(DEADLINE, "the lag of a 2 s old position", || {
        srv.metric("livecast_broadcast_lag_seconds_sum", &[]) - lag_before >= 1.99 // float sums
    });

    // A snapshot of three devices.
    let mut c3 = srv.connect();
    assert_eq!(c3.subscribe("e-1").len(), 3);
    eq("livecast_snapshot_positions_sum", &[], 3.0);
    eq("livecast_connections_opened_total", &[], 3.0);

    c1.unsubscribe("e-1");
    c1.expect_error(Message::text("{"), "protocol-violation");
    eq("livecast_subscriptions", &[], 2.0);
    eq("livecast_inbound_messages_total", &[("type", "unsubscribe")], 1.0);
    eq("livecast_outbound_messages_total", &[("type", "unsubscribed")], 1.0);
    eq("livecast_inbound_messages_total", &[("type", "invalid")], 1.0);
    eq("livecast_outbound_messages_total", &[("type", "error")], 1.0);

    // Closing: cleanly, then abruptly.
    c1.close();
    eq("livecast_connections_closed_total", &[("reason", "client-close")], 1.0);
    eq("livecast_connections_open", &[], 2.0);
    drop(c2);
    drop(c3);
    eq("livecast_connections_open", &[], 0.0);
    eq("livecast_connections_closed_total", &[], 3.0);
    eq("livecast_subscriptions", &[], 0.0);
}
