//! SPEC §3 (snapshot = latest position of every device in the event; exact
//! snapshot/live handover; per-device order to every subscriber; fields pass
//! through) and §2.5 (back-pressure: a slow client is closed with 1008
//! `back-pressure threshold exceeded`, the others are unaffected).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::Message;

use crate::support::{
    Client, DEADLINE, Frame, RawWs, Server, http_request, metric, now_ms, pos, seq_of, spawn,
    wait_until,
};

#[test]
fn snapshot_holds_the_latest_position_of_each_device_of_the_event() {
    let srv = Server::start();
    // A witness subscribed beforehand tells when the broadcaster is done.
    let mut witness = srv.connect();
    assert!(witness.subscribe("e-1").is_empty());
    assert!(witness.subscribe("e-2").is_empty());

    let ts = now_ms() - 1000;
    let latest = json!({
        "eventId": "e-1", "deviceId": "d-1", "lat": -33.8688, "lon": 151.2093, "ts": ts + 2,
        "seq": 1, "speed": 12.5, "heading": 270, "alt": 372.4, "accuracy": 3, "battery": 0.87,
        "custom": {"nested": [1, "two", null]}
    });
    srv.ingest_ok(&json!([
        {"eventId": "e-1", "deviceId": "d-1", "lat": 1.0, "lon": 2.0, "ts": ts, "seq": 0},
        {"eventId": "e-1", "deviceId": "d-2", "lat": 3.0, "lon": 4.0, "ts": ts + 1, "seq": 0},
        {"eventId": "e-2", "deviceId": "d-3", "lat": 5.0, "lon": 6.0, "ts": ts + 1, "seq": 0},
        latest,
    ]));
    for _ in 0..4 {
        witness.recv_position();
    }

    let mut c = srv.connect();
    let snapshot = c.subscribe("e-1");
    let by_device: BTreeMap<String, Value> = snapshot
        .iter()
        .map(|p| (p["deviceId"].as_str().expect("deviceId").to_owned(), p.clone()))
        .collect();
    assert_eq!(snapshot.len(), 2, "snapshot of e-1: {snapshot:?}");
    let mut expected = latest.clone();
    expected["type"] = json!("position");
    assert_eq!(by_device["d-1"], expected, "snapshot entry = latest position, fields unchanged");
    assert_eq!(by_device["d-2"]["seq"], 0);
    assert_eq!(by_device["d-2"]["type"], "position");
    assert_eq!(by_device["d-2"]["eventId"], "e-1");

    let other = srv.connect().subscribe("e-2");
    assert_eq!(other.len(), 1, "snapshot of e-2: {other:?}");
    assert_eq!(other[0]["deviceId"], "d-3");
    assert!(srv.connect().subscribe("e-empty").is_empty());
}

#[test]
fn per_device_order_reaches_every_subscriber() {
    const DEVICES: u64 = 4;
    const PER_DEVICE: u64 = 50;
    let srv = Server::start();
    let mut subs: Vec<_> = (0..3).map(|_| srv.connect()).collect();
    for s in &mut subs {
        assert!(s.subscribe("e-1").is_empty());
    }
    let mut other = srv.connect();
    assert!(other.subscribe("e-2").is_empty());

    // Devices interleaved, over several requests, with e-2 noise between.
    let mut all = Vec::new();
    for seq in 0..PER_DEVICE {
        for d in 0..DEVICES {
            all.push(pos("e-1", &format!("d-{d}"), seq));
        }
        all.push(pos("e-2", "d-x", seq));
    }
    for chunk in all.chunks(37) {
        srv.ingest_ok(&Value::Array(chunk.to_vec()));
    }

    for (i, s) in subs.iter_mut().enumerate() {
        let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for _ in 0..DEVICES * PER_DEVICE {
            let p = s.recv_position();
            assert_eq!(p["eventId"], "e-1", "subscriber {i} got another event's position: {p}");
            seen.entry(p["deviceId"].as_str().expect("deviceId").to_owned())
                .or_default()
                .push(seq_of(&p));
        }
        assert_eq!(seen.len() as u64, DEVICES, "subscriber {i}: devices {:?}", seen.keys());
        for (device, seqs) in &seen {
            let want: Vec<u64> = (0..PER_DEVICE).collect();
            assert_eq!(seqs, &want, "subscriber {i}, device {device}: order or completeness");
        }
    }
    for seq in 0..PER_DEVICE {
        let p = other.recv_position();
        assert_eq!((p["deviceId"].as_str(), seq_of(&p)), (Some("d-x"), seq));
    }
    assert_eq!(
        srv.metric("livecast_fanout_deliveries_total", &[]),
        (3 * DEVICES * PER_DEVICE + PER_DEVICE) as f64
    );
}

#[test]
fn snapshot_and_live_stream_hand_over_exactly() {
    let srv = Server::start();
    let http = srv.http;
    let posted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // One device, seq 0, 1, 2, ... posted continuously, two per request.
    let poster = {
        let (posted, stop) = (posted.clone(), stop.clone());
        spawn("poster", move || {
            let mut seq = 0;
            while !stop.load(Ordering::SeqCst) && seq < 20_000 {
                // Two positions per request: a cycle may carry several.
                let body = json!([pos("e-h", "d-1", seq), pos("e-h", "d-1", seq + 1)]).to_string();
                let r = http_request(
                    http,
                    "POST",
                    "/ingest",
                    &[("Content-Type", "application/json")],
                    body.as_bytes(),
                );
                assert_eq!(r.status, 202, "{}", r.text());
                seq += 2;
                posted.store(seq, Ordering::SeqCst);
            }
            seq
        })
    };

    // Eight subscribers join at different points of the stream.
    let mut subs = Vec::new();
    for threshold in (1..=8).map(|k| k * 30) {
        wait_until(DEADLINE, &format!("{threshold} positions posted"), || {
            posted.load(Ordering::SeqCst) >= threshold
        });
        let mut c = srv.connect();
        let snapshot = c.subscribe("e-h");
        assert!(snapshot.len() <= 1, "one device, so at most one snapshot entry: {snapshot:?}");
        let first_live = snapshot.first().map_or(0, |p| {
            assert_eq!(p["deviceId"], "d-1");
            seq_of(p) + 1
        });
        subs.push((c, first_live));
    }
    let last_join = posted.load(Ordering::SeqCst);
    wait_until(DEADLINE, "50 more positions after the last subscribe", || {
        posted.load(Ordering::SeqCst) >= last_join + 50
    });
    stop.store(true, Ordering::SeqCst);
    let total = poster.join().expect("poster thread");

    for (i, (c, first_live)) in subs.iter_mut().enumerate() {
        assert!(*first_live < total, "subscriber {i} subscribed after the stream ended");
        let mut got = Vec::new();
        for _ in *first_live..total {
            let p = c.recv_position();
            assert_eq!(p["eventId"], "e-h");
            got.push(seq_of(&p));
        }
        let want: Vec<u64> = (*first_live..total).collect();
        if got != want {
            let gap = got.iter().zip(&want).position(|(g, w)| g != w).unwrap_or(got.len());
            let from = gap.saturating_sub(3);
            panic!(
                "subscriber {i}: snapshot ended at seq {}, the live stream is not exactly the \
                 rest: at index {gap}, got {:?}, want {:?}",
                first_live.wrapping_sub(1),
                &got[from..(gap + 5).min(got.len())],
                &want[from..(gap + 5).min(want.len())],
            );
        }
    }
}

#[test]
fn a_slow_client_is_closed_1008_and_the_others_get_everything() {
    const BATCH: u64 = 50;
    let srv = Server::with(|c| {
        c.queue_capacity = 4;
        c.backpressure_threshold_bytes = 256 * 1024;
    });
    let pad = "x".repeat(2000);
    let position = |seq: u64| {
        let mut p = pos("e-bp", "d-1", seq);
        p["pad"] = json!(pad);
        p
    };

    // The normal client reads everything on its own thread.
    let mut normal = srv.connect();
    assert!(normal.subscribe("e-bp").is_empty());
    let received = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(u64::MAX));
    let reader = {
        let (received, total) = (received.clone(), total.clone());
        spawn("normal-reader", move || -> (Client, Result<(), String>) {
            let mut next = 0;
            while next < total.load(Ordering::SeqCst) {
                let p = match normal.next_data(Duration::from_secs(30)) {
                    Ok(Message::Text(t)) => match serde_json::from_str::<Value>(t.as_str()) {
                        Ok(p) => p,
                        Err(e) => return (normal, Err(format!("invalid JSON: {e}"))),
                    },
                    other => {
                        let why = format!("{other:?} while waiting for seq {next}");
                        return (normal, Err(why));
                    }
                };
                if p["type"] != "position" || seq_of(&p) != next {
                    return (normal, Err(format!("got {p} while waiting for seq {next}")));
                }
                next += 1;
                received.store(next, Ordering::SeqCst);
            }
            (normal, Ok(()))
        })
    };
    // What the normal client's failure looked like from the server side.
    let diagnose = |srv: &Server, why: String| -> ! {
        let text = srv.metrics();
        let closed: Vec<&str> =
            text.lines().filter(|l| l.starts_with("livecast_connections_closed_total")).collect();
        let threads: Vec<String> = srv
            .connections()
            .iter()
            .map(|c| {
                let tid = c["tid"].as_u64().unwrap_or(0);
                let f = |n: &str| std::fs::read_to_string(format!("/proc/self/task/{tid}/{n}"));
                format!("{tid}: wchan {:?} syscall {:?}", f("wchan"), f("syscall"))
            })
            .collect();
        panic!(
            "normal client: {why}; backpressure closes {}, closed {closed:?}, threads {threads:?}, \
             /debug/connections {:?}",
            metric(&text, "livecast_backpressure_closes_total", &[]),
            srv.connections()
        )
    };

    // The slow client subscribes, then stops reading; a tiny receive
    // buffer makes its socket fill up after a few frames.
    let mut slow = RawWs::connect_small_rcvbuf(srv.ws, "/", 4096);
    slow.send_text(&json!({"type": "subscribe", "eventId": "e-bp"}).to_string()).unwrap();
    assert_eq!(slow.recv_json()["type"], "subscribed");

    let mut seq = 0;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        // Pace on the normal client: at most one batch in flight to it.
        wait_until(Duration::from_secs(30), "the normal client to keep up", || {
            received.load(Ordering::SeqCst) >= seq || reader.is_finished()
        });
        if reader.is_finished() {
            let (_normal, result) = reader.join().expect("reader thread");
            diagnose(&srv, result.err().unwrap_or_default());
        }
        if srv.metric("livecast_backpressure_closes_total", &[]) >= 1.0 {
            break;
        }
        assert!(Instant::now() < end, "no back-pressure close after {seq} positions");
        srv.ingest_ok(&Value::Array((seq..seq + BATCH).map(position).collect()));
        seq += BATCH;
    }

    // The slow client resumes reading: queued data, then the 1008 close.
    let (frames, end) = slow.read_until_end(DEADLINE);
    if end.is_none() {
        let last = frames.last().map(|f| (f.opcode, String::from_utf8_lossy(&f.payload)));
        panic!(
            "slow client still open {DEADLINE:?} after its back-pressure close ({} frames, \
             the last {last:?}); /debug/connections: {:?}",
            frames.len(),
            srv.connections()
        );
    }
    let close_at = frames
        .iter()
        .position(|f| f.opcode == Frame::CLOSE)
        .unwrap_or_else(|| panic!("no close frame among {} frames read", frames.len()));
    let (code, reason) = frames[close_at].close_code_reason();
    assert_eq!((code, reason.as_str()), (1008, "back-pressure threshold exceeded"));
    let data: Vec<u64> = frames[..close_at]
        .iter()
        .filter(|f| f.opcode == Frame::TEXT)
        .map(|f| seq_of(&f.json()))
        .collect();
    let want: Vec<u64> = (0..data.len() as u64).collect();
    assert_eq!(data, want, "what the slow client got before its close is not in order");
    assert!(
        frames[close_at + 1..].iter().all(|f| f.opcode != Frame::TEXT),
        "data after the close frame"
    );

    // Positions keep flowing to the normal client. (The total is known
    // before posting, so the reader never waits for a position past it.)
    total.store(seq + 2 * BATCH, Ordering::SeqCst);
    for _ in 0..2 {
        srv.ingest_ok(&Value::Array((seq..seq + BATCH).map(position).collect()));
        seq += BATCH;
    }
    let (mut normal, result) = reader.join().expect("reader thread");
    if let Err(why) = result {
        diagnose(&srv, why);
    }
    assert_eq!(received.load(Ordering::SeqCst), seq);

    let text = srv.metrics();
    assert_eq!(metric(&text, "livecast_backpressure_closes_total", &[]), 1.0);
    wait_until(DEADLINE, "back-pressure close counted by reason", || {
        srv.metric("livecast_connections_closed_total", &[("reason", "back-pressure")]) == 1.0
    });
    assert_eq!(srv.wait_connections(1).len(), 1);
    assert!(normal.subscribe("e-other").is_empty(), "the normal client is still served");
}

/// SPEC §9 (queues): the first entry of an empty client queue always fits,
/// so a snapshot larger than `LIVE_WS_BACKPRESSURE_THRESHOLD_BYTES` is
/// delivered, not answered with 1008.
#[test]
fn a_snapshot_larger_than_the_byte_threshold_is_delivered() {
    const DEVICES: usize = 1000;
    let srv = Server::with(|c| c.backpressure_threshold_bytes = 64 * 1024);
    let positions: Vec<Value> = (0..DEVICES)
        .map(|i| {
            let mut p = pos("e-big", &format!("d-{i}"), 0);
            p["note"] = json!("x".repeat(100));
            p
        })
        .collect();
    srv.ingest_ok(&Value::Array(positions));
    wait_until(DEADLINE, "every device cached", || {
        srv.metric("livecast_cache_devices", &[]) == DEVICES as f64
    });
    let mut c = srv.connect();
    let snapshot = c.subscribe("e-big");
    assert_eq!(snapshot.len(), DEVICES, "the whole snapshot (> 100 KB) arrived");
    // Still open and live afterwards.
    srv.ingest_ok(&pos("e-big", "d-0", 1));
    assert_eq!(seq_of(&c.recv_position()), 1);
    assert_eq!(srv.metric("livecast_backpressure_closes_total", &[]), 0.0);
}

/// SPEC §9 (positions): the latest-position cache holds at most
/// `LIVE_CACHE_MAX_DEVICES` devices; past it the device with the oldest
/// update is evicted and counted.
#[test]
fn the_cache_evicts_the_stalest_device_past_its_cap() {
    let srv = Server::with(|c| c.cache_max_devices = 5);
    for i in 0..8 {
        srv.ingest_ok(&pos("e-1", &format!("d-{i}"), 0));
    }
    // d-3 updated again: d-4 becomes the stalest.
    srv.ingest_ok(&pos("e-1", "d-3", 1));
    srv.ingest_ok(&pos("e-2", "d-8", 0));
    srv.expect_metric("livecast_cache_evictions_total", &[], 4.0);
    assert_eq!(srv.metric("livecast_cache_devices", &[]), 5.0);
    let snapshot = srv.connect().subscribe("e-1");
    let mut devices: Vec<String> =
        snapshot.iter().map(|p| p["deviceId"].as_str().expect("deviceId").to_owned()).collect();
    devices.sort();
    assert_eq!(devices, ["d-3", "d-5", "d-6", "d-7"]);
}

/// SPEC §2.5 (fan-out cadence): positions held for an event's flush
/// interval still reach every subscriber complete and in per-device order,
/// and the cadence is visible in the metrics.
#[test]
fn paced_fan_out_keeps_every_position_in_order() {
    const CLIENTS: usize = 60;
    const DEVICES: usize = 4;
    const PER_DEVICE: u64 = 60;
    let srv = Arc::new(Server::start());
    let mut subs: Vec<Client> = (0..CLIENTS).map(|_| srv.connect()).collect();
    for s in &mut subs {
        assert!(s.subscribe("e-1").is_empty());
    }
    let posters: Vec<_> = (0..DEVICES)
        .map(|d| {
            let srv = Arc::clone(&srv);
            spawn(&format!("poster-{d}"), move || {
                for seq in 0..PER_DEVICE {
                    srv.ingest_ok(&pos("e-1", &format!("d-{d}"), seq));
                }
            })
        })
        .collect();
    for p in posters {
        p.join().expect("poster");
    }
    for s in &mut subs {
        let mut next = [0u64; DEVICES];
        for _ in 0..DEVICES as u64 * PER_DEVICE {
            let p = s.recv_position();
            let device: usize =
                p["deviceId"].as_str().and_then(|d| d[2..].parse().ok()).expect("device");
            assert_eq!(seq_of(&p), next[device], "per-device order");
            next[device] += 1;
        }
    }
    let text = srv.metrics();
    let flushes = metric(&text, "livecast_broadcast_flushes_total", &[]);
    assert!(flushes >= 1.0 && flushes <= (DEVICES as u64 * PER_DEVICE) as f64, "{flushes}");
    assert_eq!(metric(&text, "livecast_broadcast_flush_interval_seconds_count", &[]), flushes);
    let wakeups = metric(&text, "livecast_broadcast_wakeups_total", &[]);
    assert!(wakeups >= 1.0, "sleeping subscribers were woken: {wakeups}");
}
