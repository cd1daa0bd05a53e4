//! SPEC §4 (Redis part): the stream source, multi-instance fan-out, ingest
//! through the stream, warm-up, pending replay, outages and bad entries.
//!
//! Every test runs its own `redis-server` (no persistence) on a free port,
//! so a test may kill and restart it. `scripts/test.sh` installs the
//! package when it is missing.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{DEADLINE, Server, pos, seq_of, wait_until};

/// A private `redis-server`, killed on drop.
struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut redis = Redis { port, child: None };
        redis.spawn();
        redis
    }

    /// Starts (again) on the same port.
    fn spawn(&mut self) {
        let bin = std::env::var("LIVECAST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {bin} ({e}): install redis-server (scripts/test.sh does)")
            });
        self.child = Some(child);
        wait_until(DEADLINE, "redis-server answers PING", || {
            self.conn_opt().is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
        });
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn conn_opt(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        client.get_connection_with_timeout(Duration::from_millis(500)).ok()
    }

    fn conn(&self) -> redis::Connection {
        self.conn_opt().expect("connect to the test redis")
    }

    fn xadd(&self, key: &str, data: &str) -> String {
        redis::cmd("XADD").arg(key).arg("*").arg("data").arg(data).query(&mut self.conn()).unwrap()
    }

    fn xadd_fields(&self, key: &str, fields: &[(&str, &str)]) {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(key).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(*v);
        }
        cmd.query::<String>(&mut self.conn()).unwrap();
    }

    fn groups(&self, key: &str) -> Vec<String> {
        let reply: Vec<redis::Value> =
            redis::cmd("XINFO").arg("GROUPS").arg(key).query(&mut self.conn()).unwrap_or_default();
        reply
            .iter()
            .filter_map(|g| match g {
                redis::Value::Array(fields) | redis::Value::Set(fields) => {
                    fields.chunks(2).find_map(|kv| match kv {
                        [redis::Value::BulkString(k), redis::Value::BulkString(v)]
                            if k == b"name" =>
                        {
                            Some(String::from_utf8_lossy(v).into_owned())
                        }
                        _ => None,
                    })
                }
                redis::Value::Map(pairs) => pairs.iter().find_map(|(k, v)| match (k, v) {
                    (redis::Value::BulkString(k), redis::Value::BulkString(v)) if k == b"name" => {
                        Some(String::from_utf8_lossy(v).into_owned())
                    }
                    _ => None,
                }),
                _ => None,
            })
            .collect()
    }

    fn pending(&self, key: &str, group: &str) -> i64 {
        let reply: Vec<redis::Value> =
            redis::cmd("XPENDING").arg(key).arg(group).query(&mut self.conn()).unwrap();
        match reply.first() {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("unexpected XPENDING reply {other:?}"),
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

static KEYS: AtomicUsize = AtomicUsize::new(0);

/// A stream key unique to this test run.
fn unique_key(tag: &str) -> String {
    format!("test:{tag}:{}:{}", std::process::id(), KEYS.fetch_add(1, Ordering::SeqCst))
}

/// A livecast reading `key` from `redis`, ready (source connected).
fn livecast(redis: &Redis, key: &str, instance: Option<&str>) -> Server {
    let server = Server::with(|c| {
        c.redis_url = Some(livecast::Secret::new(redis.url()));
        c.stream_key = key.to_owned();
        c.batch_block = Duration::from_millis(100);
        if let Some(id) = instance {
            c.instance_id = id.to_owned();
            c.instance_id_configured = true;
        }
    });
    wait_ready(&server);
    server
}

fn wait_ready(server: &Server) {
    wait_until(DEADLINE, "/readyz answers 200", || server.get("/readyz").status == 200);
}

fn data(v: &Value) -> String {
    v.to_string()
}

#[test]
fn stream_positions_reach_subscribers_in_order() {
    let redis = Redis::start();
    let key = unique_key("order");
    let server = livecast(&redis, &key, None);
    let mut client = server.connect();
    assert!(client.subscribe("e").is_empty());
    for seq in 0..50 {
        redis.xadd(&key, &data(&pos("e", &format!("d-{}", seq % 3), seq)));
    }
    let seqs: Vec<u64> = (0..50).map(|_| seq_of(&client.recv_position())).collect();
    assert_eq!(seqs, (0..50).collect::<Vec<_>>());
    server.expect_metric("livecast_positions_received_total", &[("source", "redis")], 50.0);
}

#[test]
fn two_instances_each_deliver_every_position_once() {
    let redis = Redis::start();
    let key = unique_key("fanout");
    let a = livecast(&redis, &key, None);
    let b = livecast(&redis, &key, None);
    let mut ca = a.connect();
    let mut cb = b.connect();
    ca.subscribe("e");
    cb.subscribe("e");
    for seq in 0..20 {
        redis.xadd(&key, &data(&pos("e", "d", seq)));
    }
    // A sentinel last: whatever arrives before it must be exactly 0..20.
    redis.xadd(&key, &data(&pos("e", "sentinel", 999)));
    for client in [&mut ca, &mut cb] {
        let mut seqs = Vec::new();
        loop {
            let p = client.recv_position();
            if p["deviceId"] == "sentinel" {
                break;
            }
            seqs.push(seq_of(&p));
        }
        assert_eq!(seqs, (0..20).collect::<Vec<_>>());
    }
}

#[test]
fn ingest_goes_through_the_stream_to_every_instance() {
    let redis = Redis::start();
    let key = unique_key("ingest");
    let a = livecast(&redis, &key, None);
    let b = livecast(&redis, &key, None);
    let mut ca = a.connect();
    let mut cb = b.connect();
    ca.subscribe("e");
    cb.subscribe("e");
    let positions: Vec<Value> = (0..5).map(|s| pos("e", "d", s)).collect();
    let answer = a.ingest(&json!(positions));
    assert_eq!(answer["accepted"], 5, "{answer}");
    let len: u64 = redis::cmd("XLEN").arg(&key).query(&mut redis.conn()).unwrap();
    assert_eq!(len, 5, "ingested positions are appended to the stream");
    for client in [&mut ca, &mut cb] {
        let seqs: Vec<u64> = (0..5).map(|_| seq_of(&client.recv_position())).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3, 4]);
    }
}

#[test]
fn restart_warms_the_snapshot_from_the_stream_tail() {
    let redis = Redis::start();
    let key = unique_key("warm");
    let first = livecast(&redis, &key, None);
    for seq in 0..3 {
        redis.xadd(&key, &data(&pos("e", "d-1", seq)));
    }
    redis.xadd(&key, &data(&pos("e", "d-2", 7)));
    redis.xadd(&key, &data(&pos("other", "d-3", 1)));
    first.stop(Duration::from_secs(2));

    let second = livecast(&redis, &key, None);
    let mut client = second.connect();
    let snapshot = client.subscribe("e");
    let mut got: Vec<(String, u64)> =
        snapshot.iter().map(|p| (p["deviceId"].as_str().unwrap().to_owned(), seq_of(p))).collect();
    got.sort();
    assert_eq!(got, vec![("d-1".to_owned(), 2), ("d-2".to_owned(), 7)]);
}

#[test]
fn pending_entries_of_a_crashed_instance_are_processed_on_restart() {
    let redis = Redis::start();
    let key = unique_key("pending");
    let group = "livecast:crashed-1";
    let mut conn = redis.conn();
    redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(group)
        .arg("$")
        .arg("MKSTREAM")
        .query::<()>(&mut conn)
        .unwrap();
    for seq in 0..4 {
        redis.xadd(&key, &data(&pos("e", "d", seq)));
    }
    // The previous life of this instance read them and died before acking.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("crashed-1")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&key)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    assert_eq!(redis.pending(&key, group), 4);

    let server = Server::with(|c| {
        c.redis_url = Some(livecast::Secret::new(redis.url()));
        c.stream_key = key.clone();
        c.warm_count = 0; // only the replay can fill the snapshot
        c.instance_id = "crashed-1".into();
        c.instance_id_configured = true;
    });
    wait_ready(&server);
    wait_until(DEADLINE, "pending entries acknowledged", || redis.pending(&key, group) == 0);
    let mut client = server.connect();
    let snapshot = client.subscribe("e");
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(seq_of(&snapshot[0]), 3, "the replayed entries were broadcast in order");
    server.stop(Duration::from_secs(2));
    assert_eq!(redis.groups(&key), vec![group.to_owned()], "a configured group is kept");
}

#[test]
fn a_random_instance_group_is_destroyed_on_graceful_stop() {
    let redis = Redis::start();
    let key = unique_key("destroy");
    let server = livecast(&redis, &key, None);
    assert_eq!(redis.groups(&key).len(), 1);
    server.stop(Duration::from_secs(2));
    assert!(redis.groups(&key).is_empty(), "groups left: {:?}", redis.groups(&key));
}

#[test]
fn bad_entries_are_skipped_and_acknowledged_around_good_ones() {
    let redis = Redis::start();
    let key = unique_key("bad");
    let server = livecast(&redis, &key, Some("bad-entries"));
    let mut client = server.connect();
    client.subscribe("e");
    redis.xadd(&key, &data(&pos("e", "d", 1)));
    redis.xadd_fields(&key, &[("nodata", "x")]);
    redis.xadd(&key, "{not json");
    redis.xadd(&key, r#"{"eventId":"e","deviceId":"d","lat":123,"lon":0,"ts":1}"#);
    redis.xadd(&key, &data(&pos("e", "d", 2)));
    assert_eq!(seq_of(&client.recv_position()), 1);
    assert_eq!(seq_of(&client.recv_position()), 2);
    server.expect_metric("livecast_positions_rejected_total", &[("source", "redis")], 3.0);
    let group = "livecast:bad-entries";
    wait_until(DEADLINE, "every entry acknowledged", || redis.pending(&key, group) == 0);
}

/// SPEC §9: a stream entry is bounded like an ingested position.
#[test]
fn oversized_entries_and_long_ids_are_skipped_never_cached() {
    let redis = Redis::start();
    let key = unique_key("big");
    let server = livecast(&redis, &key, Some("big-entries"));
    let mut client = server.connect();
    client.subscribe("e");
    let mut big = pos("e", "d-big", 90);
    big["note"] = json!("x".repeat(20_000));
    redis.xadd(&key, &data(&pos("e", "d", 1)));
    redis.xadd(&key, &data(&big));
    redis.xadd(&key, &data(&pos("e", &"d".repeat(129), 91)));
    redis.xadd(&key, &data(&pos("e", "d", 2)));
    assert_eq!(seq_of(&client.recv_position()), 1);
    assert_eq!(seq_of(&client.recv_position()), 2);
    server.expect_metric("livecast_positions_rejected_total", &[("source", "redis")], 2.0);
    let snapshot = server.connect().subscribe("e");
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    assert_eq!(snapshot[0]["deviceId"], "d");
}

#[test]
fn redis_outage_keeps_clients_and_delivery_resumes() {
    let mut redis = Redis::start();
    let key = unique_key("outage");
    let server = livecast(&redis, &key, None);
    let mut client = server.connect();
    client.subscribe("e");
    redis.xadd(&key, &data(&pos("e", "d", 1)));
    assert_eq!(seq_of(&client.recv_position()), 1);

    redis.kill();
    wait_until(DEADLINE, "/readyz turns 503 while Redis is gone", || {
        let r = server.get("/readyz");
        r.status == 503 && r.json()["reason"].as_str().is_some_and(|s| s.contains("redis"))
    });
    // The process and the client are alive: the connection still answers.
    assert_eq!(server.get("/healthz").status, 200);
    client.subscribe("e");
    let body = json!([pos("e", "d", 5)]).to_string();
    let answer = server.post_ingest(body.as_bytes(), "application/json", &[]);
    assert_eq!(answer.status, 503, "ingest cannot reach the stream: {}", answer.text());

    let down_since = Instant::now();
    redis.spawn();
    wait_ready(&server);
    assert!(down_since.elapsed() < DEADLINE);
    redis.xadd(&key, &data(&pos("e", "d", 2)));
    assert_eq!(seq_of(&client.recv_position()), 2);
    assert!(server.metric("livecast_redis_reconnects_total", &[]) >= 1.0);
}

/// SPEC §3 + §4: trails are warmed from the stream's tail like the latest
/// positions, so a restarted instance serves the same trails as one that
/// never stopped.
#[test]
fn a_restarted_instance_serves_the_same_trails_as_a_running_one() {
    let redis = Redis::start();
    let key = unique_key("trails");
    let running = livecast(&redis, &key, None);
    let restarted = livecast(&redis, &key, None);
    for seq in 0..7 {
        redis.xadd(&key, &data(&pos("e", "d-1", seq)));
    }
    for seq in 0..2 {
        redis.xadd(&key, &data(&pos("e", "d-2", seq)));
    }
    redis.xadd(&key, &data(&pos("other", "d-3", 0)));
    restarted.stop(Duration::from_secs(2));
    let restarted = livecast(&redis, &key, None);
    let answer = |server: &Server| {
        let mut c = server.connect();
        c.send_json(&serde_json::json!({"type": "subscribe", "eventId": "e", "trail": 5}));
        let v = c.recv_type("subscribed");
        let trails = v["trails"].clone();
        let mut latest: Vec<(String, u64)> = v["positions"]
            .as_array()
            .expect("positions")
            .iter()
            .map(|p| (p["deviceId"].as_str().expect("deviceId").to_owned(), seq_of(p)))
            .collect();
        latest.sort();
        (latest, trails)
    };
    wait_until(DEADLINE, "the running instance has read every entry", || {
        answer(&running).0 == [("d-1".to_owned(), 6), ("d-2".to_owned(), 1)]
    });
    let (latest, trails) = answer(&running);
    let seqs = |device: &str| -> Vec<u64> {
        trails[device].as_array().expect("trail").iter().map(seq_of).collect()
    };
    assert_eq!(seqs("d-1"), [1, 2, 3, 4, 5]);
    assert_eq!(seqs("d-2"), [0]);
    assert_eq!(answer(&restarted), (latest, trails), "identical after a restart");
}

/// Reads `MONITOR` output from `redis` until a line contains `needle`;
/// returns that line. A raw socket: the client library has no MONITOR
/// mode on a blocking connection.
fn monitor_until(
    monitor: &mut std::net::TcpStream,
    needle: &str,
    mut poke: impl FnMut(),
) -> String {
    use std::io::Read;
    monitor.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut seen = String::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(line) = seen.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no {needle} in MONITOR output: {seen}");
        poke();
        let mut buf = [0u8; 4096];
        match monitor.read(&mut buf) {
            Ok(0) => panic!("MONITOR connection closed"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("MONITOR read: {e}"),
        }
    }
}

#[test]
fn ingest_trims_the_stream_by_default() {
    use std::io::Write;
    let redis = Redis::start();
    let key = unique_key("trim-default");
    // The defaults, LIVE_STREAM_MAXLEN unset.
    let server = livecast(&redis, &key, None);
    let mut monitor = std::net::TcpStream::connect(("127.0.0.1", redis.port)).unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    let mut seq = 0;
    let line = monitor_until(&mut monitor, "\"XADD\"", || {
        seq += 1;
        server.ingest_ok(&json!([pos("e", "d-1", seq)]));
    });
    assert!(line.contains("\"MAXLEN\" \"~\" \"1000000\""), "{line}");
}

#[test]
fn a_set_stream_maxlen_keeps_the_stream_near_it_and_zero_keeps_everything() {
    let redis = Redis::start();
    // Small nodes, so that the approximate trim is close to the bound.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg("10")
        .query(&mut redis.conn())
        .unwrap();
    for (maxlen, most) in [(50usize, 60i64), (0, 300)] {
        let key = unique_key("trim");
        let server = Server::with(|c| {
            c.redis_url = Some(livecast::Secret::new(redis.url()));
            c.stream_key = key.clone();
            c.batch_block = Duration::from_millis(100);
            c.stream_maxlen = maxlen;
        });
        wait_ready(&server);
        for chunk in 0..10 {
            let batch: Vec<Value> = (0..30).map(|i| pos("e", "d-1", chunk * 30 + i)).collect();
            server.ingest_ok(&Value::Array(batch));
        }
        let len: i64 = redis::cmd("XLEN").arg(&key).query(&mut redis.conn()).unwrap();
        if maxlen == 0 {
            assert_eq!(len, 300, "LIVE_STREAM_MAXLEN=0: nothing trimmed");
        } else {
            assert!((maxlen as i64..=most).contains(&len), "XLEN {len} for MAXLEN ~ {maxlen}");
        }
    }
}
