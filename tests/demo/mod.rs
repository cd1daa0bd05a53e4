//! `livecast --demo`: the simulator posts through the real ingest paths
//! (HTTP to the server's own `POST /ingest`, and as Traccar Client and
//! OwnTracks to `/ingest/osmand` and `/ingest/owntracks`, with
//! `INGEST_TOKEN` when one is set), and a subscriber sees its devices move.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::{Client, DEADLINE, spawn, wait_child};

/// The executable started with `--demo`, killed on drop.
struct Demo(Child);

impl Drop for Demo {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn demo_feed_posts_with_the_ingest_token_and_subscribers_see_it_move() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_livecast"))
        .arg("--demo")
        .env_clear()
        .env("LIVE_WS_PORT", "0")
        .env("HTTP_PORT", "0")
        // Without the token the ingest answers 401: positions arriving
        // show that the feed sent it.
        .env("INGEST_TOKEN", "demo-test-token")
        // runner-1 and car-3 through POST /ingest, boat-2 as Traccar
        // Client, runner-4 as OwnTracks (user "demo").
        .env("LIVE_DEMO_DEVICES", "4")
        .env("LIVE_DEMO_INTERVAL_MS", "100")
        .env("LOG_LEVEL", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn livecast --demo");
    let out = child.stdout.take().expect("stdout");
    let err = child.stderr.take().expect("stderr");
    let mut demo = Demo(child);
    let (tx, rx) = mpsc::channel();
    spawn("demo-stdout", move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            let _ = tx.send(line);
        }
    });
    let stderr = spawn("demo-stderr", move || {
        let mut text = String::new();
        for line in BufReader::new(err).lines() {
            let Ok(line) = line else { break };
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    // The banner's WebSocket line, then the demo's list of devices.
    let end = Instant::now() + DEADLINE;
    let (mut ws, mut dashboard, mut seen) = (None::<SocketAddr>, false, String::new());
    while ws.is_none() || !dashboard {
        let line = rx
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no demo banner within {DEADLINE:?}; stdout:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if let Some(url) = line.strip_prefix("  WebSocket: ws://") {
            ws = url.split_whitespace().next().and_then(|u| u.trim_end_matches('/').parse().ok());
        }
        dashboard |= line.contains("demo-marathon: 2 devices (runner-1, demo/runner-4)");
    }

    let ws = ws.expect("ws address");
    let mut client = Client::connect(ws, "/", &[]).expect("connect");
    client.subscribe("demo-marathon");
    // Two fresh reports of each device (the feed posts every 100 ms),
    // moving: runner-1 through POST /ingest, runner-4 as OwnTracks.
    for device in ["runner-1", "demo/runner-4"] {
        let first = wait_device(&mut client, device);
        let second = wait_device(&mut client, device);
        assert!(second["ts"].as_i64() >= first["ts"].as_i64(), "{first} then {second}");
        assert!(second["speed"].as_f64().is_some_and(|mps| mps > 0.0), "{second}");
    }
    client.close();
    // boat-2 as Traccar Client 9: its JSON's fields arrive mapped.
    let mut client = Client::connect(ws, "/", &[]).expect("connect");
    client.subscribe("demo-regatta");
    let boat = wait_device(&mut client, "boat-2");
    assert_eq!(
        (boat["battery"].as_f64(), boat["moving"].as_bool()),
        (Some(80.0), Some(true)),
        "{boat}"
    );
    assert_eq!(boat["activity"], "in_vehicle", "{boat}");
    client.close();

    // SIGTERM stops the feed and the server; the feed never failed.
    let st = Command::new("kill").args(["-TERM", &demo.0.id().to_string()]).status();
    assert!(st.is_ok_and(|s| s.success()), "kill -TERM");
    let status = wait_child(&mut demo.0, DEADLINE).expect("livecast --demo exits after SIGTERM");
    let stderr = stderr.join().expect("stderr reader");
    assert_eq!(status.code(), Some(0), "stderr:\n{stderr}");
    assert!(!stderr.contains("ingest failed"), "the demo feed failed to post:\n{stderr}");
}

/// The next position of `device`.
fn wait_device(client: &mut Client, device: &str) -> serde_json::Value {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < end, "no position of {device}");
        let next = client.recv_position();
        if next["deviceId"] == device {
            return next;
        }
    }
}
