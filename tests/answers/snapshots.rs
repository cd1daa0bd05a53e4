//! Snapshots and their cache: one `subscribed` answer per event and cache
//! state whatever the trail lengths asked, each subscriber's cut from it,
//! and freed once no queue holds it.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Spawned, ingest_to, metric_of};
use crate::support::{Client, DEADLINE, Frame, RawWs, Server, pos, seq_of, wait_until};

/// `devices` devices in `event`, each with `depth` positions (seq 0 to
/// depth - 1), posted a seq at a time.
fn fill(http: SocketAddr, event: &str, devices: usize, depth: u64) {
    for seq in 0..depth {
        let batch: Vec<Value> =
            (0..devices).map(|d| pos(event, &format!("d-{d:05}"), seq)).collect();
        for chunk in batch.chunks(5_000) {
            ingest_to(http, &Value::Array(chunk.to_vec()));
        }
    }
}

/// Checks one `subscribed` answer of `event` whose devices all have
/// positions 0..=latest: the snapshot holds `latest`, each trail the
/// `trail` positions before it.
#[track_caller]
fn check_answer(v: &Value, devices: usize, latest: u64, trail: Option<u64>) {
    assert_eq!(v["type"], "subscribed");
    let positions = v["positions"].as_array().expect("positions");
    assert_eq!(positions.len(), devices);
    assert!(positions.iter().all(|p| seq_of(p) == latest));
    match trail {
        None => assert!(v.get("trails").is_none(), "no trails asked"),
        Some(n) => {
            let trails = v["trails"].as_object().expect("trails");
            assert_eq!(trails.len(), if n == 0 { 0 } else { devices }, "trail {n}");
            let want: Vec<u64> = (latest.saturating_sub(n)..latest).collect();
            for (device, t) in trails {
                let seqs: Vec<u64> = t.as_array().expect("trail").iter().map(seq_of).collect();
                assert_eq!(seqs, want, "{device}, trail {n}");
            }
        }
    }
}

#[test]
fn subscribes_with_twenty_trail_lengths_build_one_answer_per_cache_state() {
    // Twenty answers of 2 to 6 MB wait in one queue.
    let srv = Server::with(|c| c.backpressure_threshold_bytes = 256 << 20);
    // The first answer (trail 30) is larger than any socket buffers
    // (4 MiB at most for sending): it stays in the connection's hands
    // until the client reads, so the shared answer is held meanwhile.
    let devices = 1_500;
    fill(srv.http, "big", devices, 31);
    // Another event keeps flowing meanwhile.
    let mut watcher = srv.connect();
    assert!(watcher.subscribe("other").is_empty());
    let builds = || srv.metric("livecast_snapshot_builds_total", &[]);
    let before = builds();
    let rounds = 2u32;
    for round in 0..rounds {
        // A new connection asks trails 30 down to 11, in one write, and
        // reads only once all are answered. (A reader that takes each
        // answer whole before its next subscribe frees it, and the next
        // subscriber builds it again: that is the rule too.)
        let mut c = RawWs::connect_small_rcvbuf(srv.ws, "/", 4096);
        let mut asks = Vec::new();
        for n in (11..=30u64).rev() {
            let ask = json!({"type": "subscribe", "eventId": "big", "trail": n}).to_string();
            asks.extend(frame(ask.as_bytes()));
        }
        c.stream.write_all(&asks).expect("send the subscribes");
        let answered = 20.0 * f64::from(round + 1);
        wait_until(DEADLINE, "twenty answers queued", || {
            srv.metric("livecast_outbound_messages_total", &[("type", "subscribed")]) >= answered
        });
        for n in (11..=30u64).rev() {
            let text = next_text(&mut c);
            // Each checked whole would take long in a debug build; the
            // cuts themselves are unit-tested against building each.
            if [30, 20, 11].contains(&n) {
                let v = serde_json::from_slice(&text).expect("JSON");
                check_answer(&v, devices, 30 + u64::from(round), Some(n));
            } else {
                assert!(text.starts_with(br#"{"type":"subscribed","eventId":"big""#));
            }
        }
        // The big event's cache changes: every device moves once more.
        fill_next(&srv, devices, 31 + u64::from(round));
        srv.ingest_ok(&json!([pos("other", "o-1", u64::from(round))]));
        assert_eq!(seq_of(&watcher.recv_position()), u64::from(round));
    }
    // One build per state of the big event, not one per trail length.
    assert_eq!(builds() - before, f64::from(rounds));
}

/// The next text frame's payload (server pings skipped).
#[track_caller]
fn next_text(raw: &mut RawWs) -> Vec<u8> {
    loop {
        match raw.read_frame(DEADLINE) {
            Ok(Some(f)) if f.opcode == Frame::TEXT => return f.payload,
            Ok(Some(f)) if f.opcode == Frame::PING => {}
            other => panic!("expected an answer, got {other:?}"),
        }
    }
}

/// A masked client text frame.
fn frame(payload: &[u8]) -> Vec<u8> {
    let len = u8::try_from(payload.len()).expect("a short message");
    assert!(len < 126);
    let mask = [3u8, 1, 4, 1];
    let mut f = vec![0x81, 0x80 | len];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Every device of `big` gets position `seq`.
fn fill_next(srv: &Server, devices: usize, seq: u64) {
    let batch: Vec<Value> = (0..devices).map(|d| pos("big", &format!("d-{d:05}"), seq)).collect();
    srv.ingest_ok(&Value::Array(batch));
}

#[test]
fn answers_for_thirty_two_trail_lengths_are_freed_when_their_clients_leave() {
    let bin = Spawned::start(&[]);
    let devices = 1_500;
    fill(bin.http, "big", devices, 31);
    let subscribe = |trail: Option<u64>| {
        let mut c = Client::connect(bin.ws, "/", &[]).expect("connect");
        let mut msg = json!({"type": "subscribe", "eventId": "big"});
        if let Some(n) = trail {
            msg["trail"] = json!(n);
        }
        c.send_json(&msg);
        (c, trail)
    };
    // One round first, so that what a first subscriber allocates once
    // (a thread stack, buffers) is in the baseline.
    let (mut c, trail) = subscribe(Some(30));
    check_answer(&c.recv_json(), devices, 30, trail);
    c.close();
    wait_until(DEADLINE, "the warm-up client gone", || {
        metric_of(bin.http, "livecast_connections_open", &[]) == 0.0
    });
    let baseline = bin.rss_kb();

    // 32 clients at once, 32 different answers: none, 0 and 1..=30.
    let mut trails: Vec<Option<u64>> = (0..=30).map(Some).collect();
    trails.push(None);
    let mut clients: Vec<(Client, Option<u64>)> = trails.into_iter().map(subscribe).collect();
    for (c, trail) in &mut clients {
        check_answer(&c.recv_json(), devices, 30, *trail);
    }
    let peak = bin.rss_kb();
    for (c, _) in clients {
        c.close();
    }
    wait_until(DEADLINE, "every client gone", || {
        metric_of(bin.http, "livecast_connections_open", &[]) == 0.0
    });
    // Given back: the 32 answers as separate copies would hold over 60 MB
    // here. (How many times it was built depends on timing: an answer a
    // socket took whole is freed at once, and the next subscriber builds
    // it again.)
    let end = Instant::now() + DEADLINE;
    loop {
        let now = bin.rss_kb();
        if now <= baseline + 16 * 1024 {
            break;
        }
        assert!(
            Instant::now() < end,
            "RSS {now} kB with no client, {baseline} kB before the 32 (peak {peak} kB)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
