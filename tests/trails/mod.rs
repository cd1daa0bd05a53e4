//! SPEC §3 (`trail` on subscribe, `subscribed.trails`): each device's recent
//! path in the snapshot; the handover trail → latest → live has no gap,
//! duplicate or reorder; bounds; eviction with the device cap (§9).

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};
use tungstenite::Message;

use crate::support::{Client, DEADLINE, Server, pos, seq_of, spawn, wait_until};

/// Subscribes with `trail` and returns the whole `subscribed` answer.
#[track_caller]
fn subscribe_with_trail(c: &mut Client, event: &str, trail: u64) -> Value {
    c.send_json(&json!({"type": "subscribe", "eventId": event, "trail": trail}));
    let v = c.recv_type("subscribed");
    assert_eq!(v["eventId"], event);
    v
}

/// `trails` as device → seqs.
fn trail_seqs(answer: &Value) -> BTreeMap<String, Vec<u64>> {
    answer["trails"]
        .as_object()
        .unwrap_or_else(|| panic!("no trails object: {answer}"))
        .iter()
        .map(|(device, frames)| {
            let frames = frames.as_array().expect("trail array");
            for f in frames {
                assert_eq!(f["type"], "position", "trail entries are position frames: {f}");
                assert_eq!(f["deviceId"].as_str(), Some(device.as_str()));
            }
            (device.clone(), frames.iter().map(seq_of).collect())
        })
        .collect()
}

#[test]
fn trail_latest_and_live_stream_hand_over_exactly_under_concurrent_ingest() {
    const DEVICES: usize = 3;
    const PER_DEVICE: u64 = 300;
    const TRAIL: u64 = 10;
    let srv = Arc::new(Server::with(|c| c.trail_length = usize::try_from(TRAIL).expect("small")));
    // A witness subscribed from the start tells when positions are flowing.
    let mut witness = srv.connect();
    assert!(witness.subscribe("e-t").is_empty());
    let posters: Vec<_> = (0..DEVICES)
        .map(|d| {
            let srv = Arc::clone(&srv);
            spawn(&format!("poster-{d}"), move || {
                for seq in 0..PER_DEVICE {
                    srv.ingest_ok(&pos("e-t", &format!("d-{d}"), seq));
                }
            })
        })
        .collect();
    // Subscribe in the middle of the stream.
    for _ in 0..(DEVICES as u64 * PER_DEVICE / 3) {
        witness.recv_position();
    }
    let mut c = srv.connect();
    let answer = subscribe_with_trail(&mut c, "e-t", TRAIL);
    let trails = trail_seqs(&answer);
    let mut next: BTreeMap<String, u64> = BTreeMap::new();
    for latest in answer["positions"].as_array().expect("positions") {
        let device = latest["deviceId"].as_str().expect("deviceId").to_owned();
        let latest_seq = seq_of(latest);
        let trail = trails.get(&device).cloned().unwrap_or_default();
        // The trail is the TRAIL (or fewer, early on) positions just before
        // the latest, oldest first.
        let want_len = TRAIL.min(latest_seq);
        let want: Vec<u64> = (latest_seq - want_len..latest_seq).collect();
        assert_eq!(trail, want, "{device}: trail before latest {latest_seq}");
        next.insert(device, latest_seq + 1);
    }
    for p in posters {
        p.join().expect("poster");
    }
    // Live: every device continues right after its latest (or from 0 when
    // it had posted nothing before the subscribe).
    let total_live: u64 =
        (0..DEVICES).map(|d| PER_DEVICE - next.get(&format!("d-{d}")).copied().unwrap_or(0)).sum();
    for _ in 0..total_live {
        let p = c.recv_position();
        let device = p["deviceId"].as_str().expect("deviceId").to_owned();
        let want = next.entry(device.clone()).or_insert(0);
        assert_eq!(seq_of(&p), *want, "{device}: no gap, duplicate or reorder after the trail");
        *want += 1;
    }
    assert!(next.values().all(|n| *n == PER_DEVICE), "{next:?}");
    // Gauge: every device holds a full trail now.
    wait_until(DEADLINE, "trail gauge", || {
        srv.metric("livecast_trail_positions", &[]) == (DEVICES as u64 * TRAIL) as f64
    });
}

#[test]
fn trail_bounds_and_the_answer_without_trail() {
    let srv = Server::with(|c| c.trail_length = 5);
    for seq in 0..8 {
        srv.ingest_ok(&pos("e-b", "d-1", seq));
    }
    let mut c = srv.connect();
    // Over the limit, negative, not a whole number: protocol-violation and
    // no subscription.
    for bad in [json!(6), json!(-1), json!(2.5), json!("3"), json!(null)] {
        let msg = json!({"type": "subscribe", "eventId": "e-b", "trail": bad});
        c.expect_error(Message::text(msg.to_string()), "protocol-violation");
    }
    srv.ingest_ok(&pos("e-b", "d-1", 8));
    // Not subscribed: the next message is the answer to this subscribe,
    // not the position above.
    let none = c.subscribe("e-b");
    assert_eq!(none.len(), 1);
    assert_eq!(seq_of(&none[0]), 8);
    // Without `trail` the answer has no `trails` at all.
    c.send_json(&json!({"type": "subscribe", "eventId": "e-b"}));
    let plain = c.recv_type("subscribed");
    assert!(plain.get("trails").is_none(), "{plain}");
    // trail 0: an empty object; trail 5 (the limit): the five before the latest.
    assert_eq!(subscribe_with_trail(&mut c, "e-b", 0)["trails"], json!({}));
    let full = subscribe_with_trail(&mut c, "e-b", 5);
    assert_eq!(trail_seqs(&full)["d-1"], [3, 4, 5, 6, 7]);
    assert_eq!(trail_seqs(&subscribe_with_trail(&mut c, "e-b", 2))["d-1"], [6, 7]);
}

#[test]
fn trails_off_keeps_no_history() {
    let srv = Server::with(|c| c.trail_length = 0);
    for seq in 0..3 {
        srv.ingest_ok(&pos("e-o", "d-1", seq));
    }
    let mut c = srv.connect();
    let msg = json!({"type": "subscribe", "eventId": "e-o", "trail": 1});
    c.expect_error(Message::text(msg.to_string()), "protocol-violation");
    assert_eq!(subscribe_with_trail(&mut c, "e-o", 0)["trails"], json!({}));
    assert_eq!(srv.metric("livecast_trail_positions", &[]), 0.0);
}

#[test]
fn an_evicted_device_takes_its_trail_with_it() {
    let srv = Server::with(|c| {
        c.trail_length = 5;
        c.cache_max_devices = 2;
    });
    for seq in 0..4 {
        srv.ingest_ok(&pos("e-v", "d-1", seq));
    }
    srv.ingest_ok(&pos("e-v", "d-2", 0));
    wait_until(DEADLINE, "d-1's trail held", || srv.metric("livecast_trail_positions", &[]) == 3.0);
    srv.ingest_ok(&pos("e-v", "d-3", 0)); // evicts d-1, the stalest
    wait_until(DEADLINE, "trail released", || srv.metric("livecast_trail_positions", &[]) == 0.0);
    let answer = subscribe_with_trail(&mut srv.connect(), "e-v", 5);
    assert_eq!(answer["trails"], json!({}));
    let mut devices: Vec<&str> = answer["positions"]
        .as_array()
        .expect("positions")
        .iter()
        .map(|p| p["deviceId"].as_str().expect("deviceId"))
        .collect();
    devices.sort_unstable();
    assert_eq!(devices, ["d-2", "d-3"]);
}

#[test]
fn a_device_that_changes_event_starts_its_trail_there() {
    let srv = Server::with(|c| c.trail_length = 5);
    for seq in 0..3 {
        srv.ingest_ok(&pos("e-1", "d-1", seq));
    }
    for seq in 3..5 {
        srv.ingest_ok(&pos("e-2", "d-1", seq));
    }
    let mut c = srv.connect();
    let old = subscribe_with_trail(&mut c, "e-1", 5);
    assert_eq!(old["positions"], json!([]));
    assert_eq!(old["trails"], json!({}));
    let new = subscribe_with_trail(&mut c, "e-2", 5);
    assert_eq!(trail_seqs(&new)["d-1"], [3]);
    // The snapshot size histogram counts trail positions too: 0, then 1 + 1.
    assert_eq!(srv.metric("livecast_snapshot_positions_sum", &[]), 2.0);
}
