//! Memory by bytes: the latest-position cache holds each position once and
//! is bounded by `LIVE_CACHE_MAX_BYTES` as well as by devices.

use serde_json::{Value, json};

use super::{Spawned, ingest_to, metric_of};
use crate::support::{Server, now_ms};

/// A position with a 16,000-byte field (just under the 16 KiB limit).
fn big(event: &str, device: usize, seq: u64) -> Value {
    json!({
        "eventId": event,
        "deviceId": format!("d-{device:05}"),
        "lat": 1.0, "lon": 2.0, "ts": now_ms(), "seq": seq,
        "note": "x".repeat(16_000),
    })
}

/// Posts `devices` (a range) one big position each, 100 per request.
fn post_big(http: std::net::SocketAddr, event: &str, devices: std::ops::Range<usize>, seq: u64) {
    let all: Vec<Value> = devices.map(|d| big(event, d, seq)).collect();
    for chunk in all.chunks(100) {
        ingest_to(http, &Value::Array(chunk.to_vec()));
    }
}

#[test]
fn the_cache_is_bounded_by_bytes_evicting_the_stalest_devices() {
    let srv = Server::with(|c| c.cache_max_bytes = 4 << 20);
    post_big(srv.http, "e", 0..1_000, 1);
    let devices = srv.metric("livecast_cache_devices", &[]);
    let bytes = srv.metric("livecast_cache_bytes", &[]);
    assert!(bytes <= f64::from(4 << 20), "cache bytes {bytes}");
    assert!((200.0..=256.0).contains(&devices), "{devices} devices of 16 KB in 4 MiB");
    assert_eq!(srv.metric("livecast_cache_evictions_total", &[]), 1_000.0 - devices);
    // The newest stayed.
    let mut c = srv.connect();
    let snapshot = c.subscribe("e");
    assert!(snapshot.iter().any(|p| p["deviceId"] == "d-00999"));
    assert!(!snapshot.iter().any(|p| p["deviceId"] == "d-00000"));
}

#[test]
fn a_big_position_is_held_once_latest_and_trail_alike() {
    let bin = Spawned::start(&[]);
    // Warm-up: the ingest path's buffers and the cache's tables exist.
    post_big(bin.http, "warm", 5_000..5_200, 1);
    let before = bin.rss_kb();
    post_big(bin.http, "e", 0..1_000, 1);
    let one = bin.rss_kb();
    let bytes = metric_of(bin.http, "livecast_cache_bytes", &[]);
    // 16 KB per position: about 16 MB for 1,000 devices (the probe found
    // 38 KB per device when the parsed position was kept beside its frame).
    let per_device = (one.saturating_sub(before)) * 1024 / 1_000;
    assert!(per_device < 26_000, "{per_device} bytes of RSS per device after one position");
    // 1,200 positions of about 16.1 KB, each counted once.
    assert!((1_200.0 * 16_000.0..1_200.0 * 16_700.0).contains(&bytes), "cache counts {bytes}");
    // Two more each: the latest moves into the trail without a copy.
    post_big(bin.http, "e", 0..1_000, 2);
    post_big(bin.http, "e", 0..1_000, 3);
    let three = bin.rss_kb();
    let per_device = (three.saturating_sub(before)) * 1024 / 1_000;
    assert!(per_device < 66_000, "{per_device} bytes of RSS per device after three positions");
}
