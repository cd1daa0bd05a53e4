//! Soak driver for livecast (run by `scripts/soak.sh`).
//!
//! Against a running server (loopback only) it keeps up, for `--seconds`:
//! - `--clients` well-behaved subscribers spread over `--events` events,
//!   each checking that it receives every position of its event, in order,
//!   from the one after its snapshot on (every position carries a per-event
//!   `seq`);
//! - one poster sending `--rate` positions per second to `POST /ingest`, in
//!   ten requests a second, each position with the next `seq` of its event;
//! - connection churn at `--churn` connections per second, cycling through
//!   four kinds: subscribe + clean close, subscribe + abrupt TCP drop,
//!   upgrade + close, and a half-sent upgrade request dropped;
//! - a sampler of the server process (`--pid`) every `--sample` seconds: RSS,
//!   threads, `ws-` threads, open fds and CPU from /proc, connections and
//!   queue depths from `/debug/connections`, counters from `/metrics`.
//!
//! Then it stops the load, waits for every subscriber to have received the
//! last position of its event, closes them, checks that the server returns to
//! its idle thread and fd counts, compares the last third of the samples
//! after warm-up with the first third, and writes the verdict and the figures
//! as Markdown (`--out`) and the samples as CSV (`--csv`). Exit status 0 only
//! when every check passed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

// ---------------------------------------------------------------- options

#[derive(Debug, Clone)]
struct Opts {
    ws: SocketAddr,
    http: SocketAddr,
    pid: u32,
    seconds: u64,
    clients: usize,
    events: usize,
    devices: usize,
    rate: u64,
    churn: u64,
    sample: u64,
    warmup: u64,
    out: PathBuf,
    csv: PathBuf,
    server: String,
}

fn parse_opts() -> Result<Opts, String> {
    // Every option takes a value: collected by lexopt, typed below.
    let mut given = BTreeMap::new();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        const KNOWN: &[&str] = &[
            "ws", "http", "pid", "seconds", "clients", "events", "devices", "rate", "churn",
            "sample", "warmup", "out", "csv", "server",
        ];
        let key = match arg {
            lexopt::Arg::Long(key) if KNOWN.contains(&key) => key.to_owned(),
            other => return Err(other.unexpected().to_string()),
        };
        let value = parser.value().map_err(|e| e.to_string())?;
        let value = value.into_string().map_err(|v| format!("--{key}: not UTF-8: {v:?}"))?;
        given.insert(key, value);
    }
    fn get<T: std::str::FromStr>(
        given: &BTreeMap<String, String>,
        key: &str,
        default: Option<T>,
    ) -> Result<T, String> {
        match given.get(key) {
            Some(v) => v.parse().map_err(|_| format!("--{key}: bad value {v:?}")),
            None => default.ok_or_else(|| format!("--{key} is required")),
        }
    }
    let seconds: u64 = get(&given, "seconds", Some(600))?;
    let opts = Opts {
        ws: get(&given, "ws", None)?,
        http: get(&given, "http", None)?,
        pid: get(&given, "pid", None)?,
        seconds,
        clients: get(&given, "clients", Some(200))?,
        events: get(&given, "events", Some(4))?,
        devices: get(&given, "devices", Some(25))?,
        rate: get(&given, "rate", Some(100))?,
        churn: get(&given, "churn", Some(10))?,
        sample: get(&given, "sample", Some(5))?,
        warmup: get(&given, "warmup", Some((seconds / 10).max(30)))?,
        out: get(&given, "out", Some(PathBuf::from("soak.md")))?,
        csv: get(&given, "csv", Some(PathBuf::from("soak-samples.csv")))?,
        server: get(&given, "server", Some(String::from("livecast")))?,
    };
    for (ip, what) in [(opts.ws.ip(), "--ws"), (opts.http.ip(), "--http")] {
        if !ip.is_loopback() {
            return Err(format!("{what}: loopback addresses only"));
        }
    }
    if opts.events == 0 || opts.devices == 0 || opts.rate < 10 || opts.sample == 0 {
        return Err("need --events, --devices, --sample >= 1 and --rate >= 10".into());
    }
    if opts.warmup + 3 * opts.sample > opts.seconds {
        return Err("--seconds too short for the warm-up and three samples".into());
    }
    Ok(opts)
}

fn event_id(event: usize) -> String {
    format!("soak-{event}")
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn spawn<T: Send + 'static>(
    name: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<T> {
    match thread::Builder::new().name(name).stack_size(256 * 1024).spawn(f) {
        Ok(handle) => handle,
        Err(e) => {
            eprintln!("soak: cannot spawn a thread: {e}");
            std::process::exit(1);
        }
    }
}

// ---------------------------------------------------------------- shared state

#[derive(Debug)]
struct Shared {
    /// The poster runs while true.
    posting: AtomicBool,
    /// Churn runs while true.
    churning: AtomicBool,
    /// Set once the poster has stopped: `final_seq` is then complete.
    draining: AtomicBool,
    /// Per event, the last `seq` the server accepted (202).
    final_seq: Vec<AtomicU64>,
    /// Subscribers that got their `subscribed`.
    subscribed: AtomicUsize,
    posted: AtomicU64,
    post_requests: AtomicU64,
    post_errors: AtomicU64,
    churn_ok: [AtomicU64; 4],
    churn_errors: AtomicU64,
}

const CHURN_KINDS: [&str; 4] =
    ["subscribe + close", "subscribe + TCP drop", "upgrade + close", "half-sent upgrade"];

// ---------------------------------------------------------------- WebSocket

type Ws = WebSocket<TcpStream>;

fn open_ws(addr: SocketAddr) -> Result<Ws, String> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect: {e}"))?;
    let _ = stream.set_nodelay(true);
    stream.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    let (ws, _) = tungstenite::client(format!("ws://{addr}/"), stream)
        .map_err(|e| format!("upgrade: {e}"))?;
    Ok(ws)
}

fn is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if matches!(io.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
}

/// Sends a close and reads until the server's close arrives (bounded).
fn close_ws(ws: &mut Ws) {
    let _ = ws.get_mut().set_read_timeout(Some(Duration::from_millis(500)));
    let _ = ws.close(None);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        match ws.read() {
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(_) => break,
        }
    }
}

fn subscribe(ws: &mut Ws, event: usize) -> Result<(), String> {
    ws.send(Message::text(json!({"type": "subscribe", "eventId": event_id(event)}).to_string()))
        .map_err(|e| format!("send subscribe: {e}"))
}

// ---------------------------------------------------------------- subscriber

#[derive(Debug, Default)]
struct SubResult {
    event: usize,
    snapshot_max: u64,
    received: u64,
    last: u64,
    /// Positions skipped: sum of the gaps in `seq`.
    missing: u64,
    /// Positions at or below one already seen (duplicates, reorders).
    out_of_order: u64,
    error: Option<String>,
}

fn subscriber(ws_addr: SocketAddr, shared: &Shared, event: usize) -> SubResult {
    let mut r = SubResult { event, ..SubResult::default() };
    let mut ws = match open_ws(ws_addr) {
        Ok(ws) => ws,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    let _ = ws.get_mut().set_read_timeout(Some(Duration::from_millis(500)));
    if let Err(e) = subscribe(&mut ws, event) {
        r.error = Some(e);
        return r;
    }
    let want_event = event_id(event);
    let mut expected: Option<u64> = None;
    let mut drain_deadline: Option<Instant> = None;
    let fail = |r: &mut SubResult, why: String| r.error = Some(why);
    loop {
        match ws.read() {
            Ok(Message::Text(text)) => {
                let v: Value = match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(e) => {
                        fail(&mut r, format!("not JSON ({e}): {text}"));
                        break;
                    }
                };
                match v["type"].as_str() {
                    Some("subscribed") if expected.is_none() => {
                        let max = v["positions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|p| p["seq"].as_u64())
                            .max()
                            .unwrap_or(0);
                        r.snapshot_max = max;
                        r.last = max;
                        expected = Some(max + 1);
                        shared.subscribed.fetch_add(1, Ordering::SeqCst);
                    }
                    Some("position") => {
                        let (Some(exp), Some(seq)) = (expected, v["seq"].as_u64()) else {
                            fail(
                                &mut r,
                                format!("position before subscribed or without seq: {text}"),
                            );
                            break;
                        };
                        if v["eventId"] != want_event.as_str() {
                            fail(&mut r, format!("position of another event: {text}"));
                            break;
                        }
                        r.received += 1;
                        if seq >= exp {
                            r.missing += seq - exp;
                            r.last = seq;
                            expected = Some(seq + 1);
                        } else {
                            r.out_of_order += 1;
                        }
                    }
                    _ => {
                        fail(&mut r, format!("unexpected message: {text}"));
                        break;
                    }
                }
            }
            Ok(Message::Close(frame)) => {
                fail(&mut r, format!("closed by the server: {frame:?}"));
                break;
            }
            Ok(_) => {}
            Err(e) if is_timeout(&e) => {}
            Err(e) => {
                fail(&mut r, format!("read: {e}"));
                break;
            }
        }
        if shared.draining.load(Ordering::SeqCst) {
            let target = shared.final_seq[event].load(Ordering::SeqCst);
            let deadline =
                *drain_deadline.get_or_insert_with(|| Instant::now() + Duration::from_secs(20));
            if expected.is_some() && r.last >= target {
                break;
            }
            if Instant::now() > deadline {
                let last = r.last;
                fail(&mut r, format!("got up to seq {last} of {target} within 20 s of the end"));
                break;
            }
        }
    }
    close_ws(&mut ws);
    r
}

// ---------------------------------------------------------------- HTTP

/// The driver's HTTP client (ureq): keep-alive, statuses as values, every
/// phase bounded so that a stalled server fails a request instead of
/// hanging the run. Not a whole-call timeout: with one, ureq resolves the
/// address on a thread of its own for every request.
fn http_agent() -> ureq::Agent {
    let phase = Some(Duration::from_secs(10));
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(5)))
        .timeout_send_request(phase)
        .timeout_send_body(phase)
        .timeout_recv_response(phase)
        .timeout_recv_body(phase)
        .build()
        .new_agent()
}

/// Status and body of a request's answer; a transport failure as an error.
fn answer(
    result: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
) -> io::Result<(u16, Vec<u8>)> {
    let mut response = result.map_err(io::Error::other)?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec().map_err(io::Error::other)?;
    Ok((status, body))
}

fn http_get(agent: &ureq::Agent, base: &str, path: &str) -> io::Result<Vec<u8>> {
    // `Connection: close`: the sampler's connection must not linger as an
    // open fd of the server when the driver checks the idle counts.
    let (status, body) =
        answer(agent.get(format!("{base}{path}")).header("Connection", "close").call())?;
    if status != 200 {
        return Err(io::Error::other(format!("GET {path}: {status}")));
    }
    Ok(body)
}

// ---------------------------------------------------------------- poster

fn poster(opts: &Opts, shared: &Shared) -> Vec<String> {
    let mut errors = Vec::new();
    let tick = Duration::from_millis(100);
    let per_tick = (opts.rate / 10).max(1) as usize;
    let mut seqs = vec![0u64; opts.events];
    let agent = http_agent();
    let url = format!("http://{}/ingest", opts.http);
    let mut k = 0usize;
    let mut next = Instant::now();
    while shared.posting.load(Ordering::SeqCst) {
        let ts = now_ms();
        let mut items = Vec::with_capacity(per_tick);
        for _ in 0..per_tick {
            let event = k % opts.events;
            let device = (k / opts.events) % opts.devices;
            k += 1;
            seqs[event] += 1;
            let seq = seqs[event];
            items.push(json!({
                "eventId": event_id(event),
                "deviceId": format!("soak-{event}-d{device}"),
                "lat": 46.5 + (seq % 1000) as f64 * 1e-4,
                "lon": 6.6 + device as f64 * 1e-3,
                "ts": ts,
                "seq": seq,
                "speed": 12.5,
            }));
        }
        let body = Value::Array(items).to_string();
        let result =
            answer(agent.post(&url).header("Content-Type", "application/json").send(&body));
        shared.post_requests.fetch_add(1, Ordering::SeqCst);
        match result {
            Ok((202, answer)) => {
                let v: Value = serde_json::from_slice(&answer).unwrap_or(Value::Null);
                if v["accepted"].as_u64() == Some(per_tick as u64) {
                    shared.posted.fetch_add(per_tick as u64, Ordering::SeqCst);
                    for (event, seq) in seqs.iter().enumerate() {
                        shared.final_seq[event].store(*seq, Ordering::SeqCst);
                    }
                } else {
                    shared.post_errors.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("ingest answered {}", String::from_utf8_lossy(&answer)));
                }
            }
            Ok((status, answer)) => {
                shared.post_errors.fetch_add(1, Ordering::SeqCst);
                errors.push(format!("ingest: {status} {}", String::from_utf8_lossy(&answer)));
            }
            Err(e) => {
                // The positions may or may not have gone in: a failure either way.
                shared.post_errors.fetch_add(1, Ordering::SeqCst);
                errors.push(format!("ingest: {e}"));
            }
        }
        next += tick;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now; // fell behind: do not burst to catch up
        }
    }
    errors
}

// ---------------------------------------------------------------- churn

fn churn_once(opts: &Opts, kind: usize, n: u64) -> Result<(), String> {
    let event = (n as usize) % opts.events;
    match kind {
        0 | 1 => {
            let mut ws = open_ws(opts.ws)?;
            subscribe(&mut ws, event)?;
            loop {
                match ws.read().map_err(|e| format!("read: {e}"))? {
                    Message::Text(t) if t.contains("\"type\":\"subscribed\"") => break,
                    Message::Text(t) if t.contains("\"type\":\"position\"") => {}
                    Message::Text(t) => return Err(format!("unexpected: {t}")),
                    _ => {}
                }
            }
            if kind == 0 {
                close_ws(&mut ws);
            } // kind 1: dropped without a close frame
            Ok(())
        }
        2 => {
            let mut ws = open_ws(opts.ws)?;
            close_ws(&mut ws);
            Ok(())
        }
        _ => {
            let mut stream = TcpStream::connect_timeout(&opts.ws, Duration::from_secs(5))
                .map_err(|e| format!("connect: {e}"))?;
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
                .map_err(|e| format!("write: {e}"))?;
            Ok(())
        }
    }
}

fn churner(opts: &Opts, shared: &Shared, index: u64, threads: u64) -> Vec<String> {
    let mut errors = Vec::new();
    if opts.churn == 0 {
        return errors;
    }
    let interval = Duration::from_secs_f64(threads as f64 / opts.churn as f64);
    let mut next = Instant::now();
    let mut n = index;
    while shared.churning.load(Ordering::SeqCst) {
        let kind = (n / threads % 4) as usize;
        match churn_once(opts, kind, n) {
            Ok(()) => {
                shared.churn_ok[kind].fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                shared.churn_errors.fetch_add(1, Ordering::SeqCst);
                if errors.len() < 10 {
                    errors.push(format!("{}: {e}", CHURN_KINDS[kind]));
                }
            }
        }
        n += threads;
        next += interval;
        let now = Instant::now();
        if next > now {
            thread::sleep(next - now);
        } else if now - next > Duration::from_secs(1) {
            next = now;
        }
    }
    errors
}

// ---------------------------------------------------------------- sampler

#[derive(Debug, Clone, Default)]
struct Sample {
    t: f64,
    rss_kib: u64,
    threads: u64,
    ws_threads: u64,
    fds: u64,
    cpu_ticks: u64,
    connections: u64,
    queued_sum: u64,
    queued_max: u64,
    queued_bytes_max: u64,
    staleness_max_ms: i64,
    metrics: BTreeMap<String, f64>,
}

impl Sample {
    fn metric(&self, name: &str) -> f64 {
        self.metrics.get(name).copied().unwrap_or(0.0)
    }

    fn metric_sum(&self, prefix: &str) -> f64 {
        self.metrics.iter().filter(|(k, _)| k.starts_with(prefix)).map(|(_, v)| v).sum()
    }
}

fn proc_status(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn sample(opts: &Opts, started: Instant) -> Result<Sample, String> {
    let pid = opts.pid;
    let mut s = Sample { t: started.elapsed().as_secs_f64(), ..Sample::default() };
    s.rss_kib = proc_status(pid, "VmRSS:").ok_or("the server process is gone")?;
    s.threads = proc_status(pid, "Threads:").unwrap_or(0);
    s.fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
            if comm.starts_with("ws-") {
                s.ws_threads += 1;
            }
        }
    }
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        s.cpu_ticks = field(11) + field(12); // utime + stime
    }
    // A fresh agent per sample, as before one connection per GET: the
    // samples are seconds apart.
    let agent = http_agent();
    let base = format!("http://{}", opts.http);
    let debug = http_get(&agent, &base, "/debug/connections").map_err(|e| e.to_string())?;
    let conns: Value = serde_json::from_slice(&debug).map_err(|e| e.to_string())?;
    for c in conns.as_array().into_iter().flatten() {
        let queued = c["queuedMessages"].as_u64().unwrap_or(0);
        s.connections += 1;
        s.queued_sum += queued;
        s.queued_max = s.queued_max.max(queued);
        s.queued_bytes_max = s.queued_bytes_max.max(c["queuedBytes"].as_u64().unwrap_or(0));
        s.staleness_max_ms = s.staleness_max_ms.max(c["stalenessMs"].as_i64().unwrap_or(0));
    }
    let metrics = http_get(&agent, &base, "/metrics").map_err(|e| e.to_string())?;
    for line in String::from_utf8_lossy(&metrics).lines() {
        if line.starts_with('#') {
            continue;
        }
        if let Some((name, value)) = line.rsplit_once(' ')
            && let Ok(v) = value.parse::<f64>()
        {
            s.metrics.insert(name.to_owned(), v);
        }
    }
    Ok(s)
}

// ---------------------------------------------------------------- analysis

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Least-squares slope of `value` over time, per minute.
fn slope_per_min(samples: &[&Sample], value: fn(&Sample) -> f64) -> f64 {
    let mt = mean(samples.iter().map(|s| s.t));
    let mv = mean(samples.iter().map(|s| value(s)));
    let (num, den) = samples.iter().fold((0.0, 0.0), |(num, den), s| {
        (num + (s.t - mt) * (value(s) - mv), den + (s.t - mt) * (s.t - mt))
    });
    if den > 0.0 { num / den * 60.0 } else { 0.0 }
}

struct Check {
    name: String,
    ok: bool,
    detail: String,
}

/// p99 upper bound of a Prometheus histogram between two samples.
fn histogram_quantile(a: &Sample, b: &Sample, name: &str, q: f64) -> Option<String> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, String, f64)> = b
        .metrics
        .iter()
        .filter_map(|(k, v)| {
            let le = k.strip_prefix(&prefix)?.strip_suffix("\"}")?;
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            Some((bound, le.to_owned(), v - a.metrics.get(k).copied().unwrap_or(0.0)))
        })
        .collect();
    buckets.sort_by(|x, y| x.0.total_cmp(&y.0));
    let total = buckets.last()?.2;
    if total <= 0.0 {
        return None;
    }
    let (_, le, _) = buckets.iter().find(|(_, _, count)| *count >= q * total)?;
    Some(format!("≤ {le} s ({total:.0} positions)"))
}

// ---------------------------------------------------------------- main

fn main() -> ExitCode {
    let opts = match parse_opts() {
        Ok(opts) => Arc::new(opts),
        Err(e) => {
            eprintln!("soak: {e}");
            return ExitCode::from(2);
        }
    };
    let shared = Arc::new(Shared {
        posting: AtomicBool::new(true),
        churning: AtomicBool::new(true),
        draining: AtomicBool::new(false),
        final_seq: (0..opts.events).map(|_| AtomicU64::new(0)).collect(),
        subscribed: AtomicUsize::new(0),
        posted: AtomicU64::new(0),
        post_requests: AtomicU64::new(0),
        post_errors: AtomicU64::new(0),
        churn_ok: Default::default(),
        churn_errors: AtomicU64::new(0),
    });
    let started = Instant::now();
    let log = |msg: String| eprintln!("[{:6.1}s] {msg}", started.elapsed().as_secs_f64());

    let baseline = match sample(&opts, started) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("soak: cannot sample the server: {e}");
            return ExitCode::FAILURE;
        }
    };
    log(format!(
        "idle server: rss {} KiB, {} threads, {} fds",
        baseline.rss_kib, baseline.threads, baseline.fds
    ));

    // Subscribers first, all subscribed before the first position.
    let (sub_tx, sub_rx) = mpsc::channel();
    let mut subscribers = Vec::new();
    for i in 0..opts.clients {
        let (shared, tx, ws) = (Arc::clone(&shared), sub_tx.clone(), opts.ws);
        let event = i % opts.events;
        subscribers.push(spawn(format!("sub-{i}"), move || {
            let _ = tx.send(subscriber(ws, &shared, event));
        }));
        thread::sleep(Duration::from_millis(5));
    }
    drop(sub_tx);
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.subscribed.load(Ordering::SeqCst) < opts.clients && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    log(format!(
        "{} of {} subscribers subscribed",
        shared.subscribed.load(Ordering::SeqCst),
        opts.clients
    ));

    let load_started = Instant::now();
    let poster_thread = {
        let (opts, shared) = (Arc::clone(&opts), Arc::clone(&shared));
        spawn("poster".into(), move || poster(&opts, &shared))
    };
    let churn_threads = 2u64;
    let churners: Vec<_> = (0..churn_threads)
        .map(|i| {
            let (opts, shared) = (Arc::clone(&opts), Arc::clone(&shared));
            spawn(format!("churn-{i}"), move || churner(&opts, &shared, i, churn_threads))
        })
        .collect();

    let mut samples: Vec<Sample> = Vec::new();
    let mut sample_errors = Vec::new();
    let load_for = Duration::from_secs(opts.seconds);
    let mut next = load_started;
    while load_started.elapsed() < load_for {
        next += Duration::from_secs(opts.sample);
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            thread::sleep(wait.min(load_for.saturating_sub(load_started.elapsed())));
        }
        if load_started.elapsed() >= load_for {
            break;
        }
        match sample(&opts, started) {
            Ok(s) => {
                if samples.len().is_multiple_of(6) {
                    log(format!(
                        "rss {} KiB, threads {} (ws- {}), fds {}, connections {}, queued sum {} max {}, posted {}, churned {}",
                        s.rss_kib,
                        s.threads,
                        s.ws_threads,
                        s.fds,
                        s.connections,
                        s.queued_sum,
                        s.queued_max,
                        shared.posted.load(Ordering::SeqCst),
                        shared.churn_ok.iter().map(|c| c.load(Ordering::SeqCst)).sum::<u64>()
                    ));
                }
                samples.push(s);
            }
            Err(e) => {
                log(format!("sample failed: {e}"));
                sample_errors.push(e);
                if sample_errors.len() > 3 {
                    break;
                }
            }
        }
    }
    let load_seconds = load_started.elapsed().as_secs_f64();

    // Stop the load: churn, then the poster; then let subscribers catch up.
    shared.churning.store(false, Ordering::SeqCst);
    let churn_errors: Vec<String> =
        churners.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
    shared.posting.store(false, Ordering::SeqCst);
    let post_errors = poster_thread.join().unwrap_or_default();
    let last_loaded = sample(&opts, started).ok();
    shared.draining.store(true, Ordering::SeqCst);
    log("load stopped; waiting for subscribers to get the last positions".into());
    let results: Vec<SubResult> = sub_rx.iter().collect();
    for handle in subscribers {
        let _ = handle.join();
    }

    // The server must come back to idle: no ws- thread, baseline threads/fds.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut idle = sample(&opts, started).ok();
    while Instant::now() < deadline {
        if let Some(s) = &idle
            && s.ws_threads == 0
            && s.connections == 0
            && s.threads <= baseline.threads
        {
            break;
        }
        thread::sleep(Duration::from_millis(500));
        idle = sample(&opts, started).ok();
    }

    // ------------------------------------------------------------ verdict
    let mut checks: Vec<Check> = Vec::new();
    let mut check = |name: &str, ok: bool, detail: String| {
        checks.push(Check { name: name.to_owned(), ok, detail });
    };

    let finals: Vec<u64> = shared.final_seq.iter().map(|a| a.load(Ordering::SeqCst)).collect();
    let posted = shared.posted.load(Ordering::SeqCst);
    let received: u64 = results.iter().map(|r| r.received).sum();
    let missing: u64 = results.iter().map(|r| r.missing).sum();
    let disordered: u64 = results.iter().map(|r| r.out_of_order).sum();
    let failed_subs: Vec<&SubResult> = results.iter().filter(|r| r.error.is_some()).collect();
    let short: Vec<&SubResult> = results.iter().filter(|r| r.last < finals[r.event]).collect();
    check(
        "every subscriber got every position of its event, in order",
        results.len() == opts.clients
            && missing == 0
            && disordered == 0
            && failed_subs.is_empty()
            && short.is_empty(),
        format!(
            "{} subscribers, {received} positions received, {missing} missing, {disordered} duplicated or out of order, {} subscribers with an error, {} short of the last seq{}",
            results.len(),
            failed_subs.len(),
            short.len(),
            failed_subs
                .first()
                .and_then(|r| r.error.as_ref())
                .map(|e| format!(" (first error: {e})"))
                .unwrap_or_default()
        ),
    );
    let post_requests = shared.post_requests.load(Ordering::SeqCst);
    check(
        "every ingest request accepted",
        post_errors.is_empty(),
        format!(
            "{posted} positions in {post_requests} requests, {} failed{}",
            post_errors.len(),
            post_errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
        ),
    );
    let churned: Vec<u64> = shared.churn_ok.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let churn_total: u64 = churned.iter().sum();
    check(
        "every churn connection behaved",
        churn_errors.is_empty(),
        format!(
            "{churn_total} connections ({}), {} errors{}",
            CHURN_KINDS
                .iter()
                .zip(&churned)
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", "),
            shared.churn_errors.load(Ordering::SeqCst),
            churn_errors.first().map(|e| format!(" (first: {e})")).unwrap_or_default()
        ),
    );
    check(
        "sampling worked",
        sample_errors.is_empty() && samples.len() >= 6,
        format!("{} samples, {} failures", samples.len(), sample_errors.len()),
    );

    let steady: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.t - samples[0].t + opts.sample as f64 >= opts.warmup as f64)
        .collect();
    let third = steady.len() / 3;
    let (first, last) = (&steady[..third], &steady[steady.len() - third..]);
    type Get = fn(&Sample) -> f64;
    let series: [(&str, Get, f64, f64); 5] = [
        // name, value, relative tolerance, absolute tolerance
        ("RSS (KiB)", |s| s.rss_kib as f64, 0.10, 4096.0),
        ("threads", |s| s.threads as f64, 0.05, 5.0),
        ("ws- threads", |s| s.ws_threads as f64, 0.05, 5.0),
        ("open fds", |s| s.fds as f64, 0.05, 10.0),
        (
            "queued messages (sum over connections)",
            |s| s.queued_sum as f64,
            0.50,
            opts.clients as f64,
        ),
    ];
    let mut growth_rows = String::new();
    for (name, get, rel, abs) in series {
        let a = mean(first.iter().map(|s| get(s)));
        let b = mean(last.iter().map(|s| get(s)));
        let limit = a * (1.0 + rel) + abs;
        let (lo, hi) = steady
            .iter()
            .map(|s| get(s))
            .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
        let range =
            if steady.is_empty() { "–".to_owned() } else { format!("{lo:.0} – {hi:.0}") };
        let ok = third > 0 && b <= limit;
        let _ = writeln!(
            growth_rows,
            "| {name} | {:.0} | {a:.1} | {b:.1} | {range} | ≤ {limit:.1} | {} |",
            get(&baseline),
            if ok { "ok" } else { "GREW" }
        );
        check(
            &format!("{name} bounded"),
            ok,
            format!("first third mean {a:.1}, last third mean {b:.1}, limit {limit:.1}"),
        );
    }
    // A leak grows at a steady rate; warm-up (allocator caches, buffers
    // reaching their high-water marks) slows down. So RSS must also grow
    // clearly slower in the last third than in the first.
    let rss: fn(&Sample) -> f64 = |s| s.rss_kib as f64;
    let (s1, s3) = (slope_per_min(first, rss), slope_per_min(last, rss));
    let slope_limit = (s1 / 2.0).max(32.0);
    let _ = writeln!(
        growth_rows,
        "\nRSS slope: {s1:.0} KiB/min over the first third, {s3:.0} KiB/min over the last (limit {slope_limit:.0}: half the first, at least 32).",
    );
    check(
        "RSS growth slows down (no steady leak)",
        third > 0 && s3 <= slope_limit,
        format!(
            "slope {s1:.0} KiB/min in the first third, {s3:.0} KiB/min in the last, limit {slope_limit:.0}"
        ),
    );
    let bp = samples.last().map_or(0.0, |s| s.metric("livecast_backpressure_closes_total"));
    check(
        "no back-pressure close",
        bp == 0.0,
        format!("livecast_backpressure_closes_total = {bp}"),
    );
    match &idle {
        Some(s) => check(
            "back to idle after the clients left",
            s.ws_threads == 0
                && s.connections == 0
                && s.threads <= baseline.threads
                && s.fds <= baseline.fds,
            format!(
                "ws- threads {}, connections {}, threads {} (idle before: {}), fds {} (idle before: {}); RSS {} KiB (idle before: {}, last loaded sample: {})",
                s.ws_threads,
                s.connections,
                s.threads,
                baseline.threads,
                s.fds,
                baseline.fds,
                s.rss_kib,
                baseline.rss_kib,
                samples.last().map_or(0, |l| l.rss_kib)
            ),
        ),
        None => {
            check("back to idle after the clients left", false, "cannot sample the server".into())
        }
    }

    // ------------------------------------------------------------ report
    let passed = checks.iter().all(|c| c.ok);
    let mut md = String::new();
    let _ = writeln!(md, "# Soak: last run\n");
    let _ = writeln!(
        md,
        "Verdict: **{}**. `scripts/soak.sh` against `{}`, load for {:.0} s (plus ramp-up and drain), sampled every {} s, the first {} s of load as warm-up.\n",
        if passed { "PASSED" } else { "FAILED" },
        opts.server,
        load_seconds,
        opts.sample,
        opts.warmup
    );
    let _ = writeln!(
        md,
        "Load: {} subscribers over {} events ({} devices each); {} positions/s posted to `POST /ingest` in 10 requests/s, so {:.0} deliveries/s; connection churn at {}/s (kinds in turn: {}). Loopback only.\n",
        opts.clients,
        opts.events,
        opts.devices,
        opts.rate,
        opts.rate as f64 * opts.clients as f64 / opts.events as f64,
        opts.churn,
        CHURN_KINDS.join(", ")
    );
    let _ = writeln!(md, "## Checks\n");
    for c in &checks {
        let _ = writeln!(md, "- {} {}: {}", if c.ok { "✔" } else { "✘ FAILED" }, c.name, c.detail);
    }
    let _ = writeln!(md, "\n## Growth (samples after warm-up, first third against last third)\n");
    let _ = writeln!(md, "| series | idle | first third | last third | range | limit | |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---|");
    md.push_str(&growth_rows);

    let _ = writeln!(md, "\n## Figures\n");
    let (s0, s1) = (steady.first().copied(), samples.last().or(last_loaded.as_ref()));
    if let (Some(a), Some(b)) = (s0, s1) {
        let dt = (b.t - a.t).max(1.0);
        let cpu = (b.cpu_ticks - a.cpu_ticks) as f64 / 100.0 / dt * 100.0;
        let fanout = (b.metric("livecast_fanout_deliveries_total")
            - a.metric("livecast_fanout_deliveries_total"))
            / dt;
        let opened = b.metric("livecast_connections_opened_total");
        let _ = writeln!(md, "- server CPU after warm-up: {cpu:.1} % of one core");
        let _ = writeln!(md, "- fan-out deliveries: {fanout:.0}/s");
        let _ = writeln!(md, "- connections opened in all: {opened:.0}");
        if let Some(p99) = histogram_quantile(a, b, "livecast_broadcast_lag_seconds", 0.99) {
            let _ = writeln!(md, "- broadcast lag p99 after warm-up: {p99}");
        }
        let _ = writeln!(
            md,
            "- max queued messages on one connection: {}, max queued bytes on one connection: {}, max staleness: {} ms",
            samples.iter().map(|s| s.queued_max).max().unwrap_or(0),
            samples.iter().map(|s| s.queued_bytes_max).max().unwrap_or(0),
            samples.iter().map(|s| s.staleness_max_ms).max().unwrap_or(0)
        );
        let closes: Vec<String> = b
            .metrics
            .iter()
            .filter(|(k, v)| k.starts_with("livecast_connections_closed_total{") && **v > 0.0)
            .map(|(k, v)| {
                format!("{} {v:.0}", k.trim_start_matches("livecast_connections_closed_total"))
            })
            .collect();
        let _ = writeln!(md, "- connections closed, by reason: {}", closes.join(", "));
        let rejected = b.metric_sum("livecast_upgrades_rejected_total");
        let _ = writeln!(md, "- upgrades rejected: {rejected:.0}");
    }

    let _ = writeln!(
        md,
        "\n## Samples (every {}th; all in the CSV next to this file)\n",
        (samples.len() / 20).max(1)
    );
    let _ = writeln!(
        md,
        "| t (s) | RSS (MiB) | threads | ws- | fds | connections | queued sum | queued max | CPU % |"
    );
    let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let step = (samples.len() / 20).max(1);
    let mut prev: Option<&Sample> = None;
    let mut csv = String::from(
        "t_s,rss_kib,threads,ws_threads,fds,cpu_ticks,connections,queued_sum,queued_max,queued_bytes_max,staleness_max_ms,connections_open,subscriptions,positions_broadcast,fanout_deliveries\n",
    );
    for (i, s) in samples.iter().enumerate() {
        let _ = writeln!(
            csv,
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            s.t,
            s.rss_kib,
            s.threads,
            s.ws_threads,
            s.fds,
            s.cpu_ticks,
            s.connections,
            s.queued_sum,
            s.queued_max,
            s.queued_bytes_max,
            s.staleness_max_ms,
            s.metric("livecast_connections_open"),
            s.metric("livecast_subscriptions"),
            s.metric("livecast_positions_broadcast_total"),
            s.metric("livecast_fanout_deliveries_total")
        );
        if i % step == 0 || i + 1 == samples.len() {
            let cpu = prev.map_or(String::from("–"), |p| {
                format!("{:.1}", (s.cpu_ticks - p.cpu_ticks) as f64 / (s.t - p.t).max(0.1))
            });
            let _ = writeln!(
                md,
                "| {:.0} | {:.1} | {} | {} | {} | {} | {} | {} | {cpu} |",
                s.t,
                s.rss_kib as f64 / 1024.0,
                s.threads,
                s.ws_threads,
                s.fds,
                s.connections,
                s.queued_sum,
                s.queued_max
            );
        }
        prev = Some(s);
    }
    if let Some(parent) = opts.out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    if let Err(e) = std::fs::write(&opts.out, &md).and_then(|()| std::fs::write(&opts.csv, &csv)) {
        eprintln!("soak: cannot write the results: {e}");
        return ExitCode::FAILURE;
    }
    println!("{md}");
    if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
