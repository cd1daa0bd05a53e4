//! `loadgen`: the load generator of livecast's benchmark (scripts/bench.sh).
//!
//! It opens C WebSocket clients over K events, waits until every one has its
//! `subscribed`, then posts positions to `POST /ingest` at a paced rate in
//! batches. Every position carries its device's sequence number and its
//! send time in µs; every client checks loss, duplicates and per-device
//! order, and records latency (receive time − `sentUs`). With `--server-pid`
//! it reads the server's CPU time and memory from /proc, so that the
//! server's CPU-µs per delivery is printed for every run.
//!
//! Threads: a few `lg-worker-N` threads each drive hundreds or thousands of
//! non-blocking clients on one epoll instance (one per CPU the load
//! generator may run on), `lg-poster-N` post (`--posters`), `lg-probe` measures subscribe
//! answer times under load; the main thread coordinates and watches the
//! clients that never read. The load generator reports its own CPU use, so
//! that a run where it was the bottleneck shows as such.
//!
//! Output: a human table on stderr, one JSON object on stdout.

mod hist;
mod poster;
mod probe;
mod procfs;
mod report;
mod slow;
mod trackers;
mod wire;
mod worker;

use std::net::ToSocketAddrs;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::poster::{PosterConfig, PosterProgress, PosterReport};
use crate::worker::{ClientSpec, Shared, Target, WorkerConfig, WorkerReport};

const HELP: &str = "\
loadgen: load generator for livecast's benchmark (and for any server of
its protocol: subscribe with snapshot, position fan-out, POST /ingest).

Usage: loadgen [options]

Opens C WebSocket clients over K events (client i subscribes to event
i mod K), waits for every `subscribed`, then posts positions of D devices
(device j belongs to event j mod K) to POST /ingest at R positions/s in
batches, for S seconds. Each position carries its device's `seq` and its
send time `sentUs`; each client checks loss, duplicates and order, and
records latency. Prints a table on stderr and one JSON line on stdout.

Target:
  --ws URL               WebSocket endpoint [ws://127.0.0.1:8080/]
  --http URL             HTTP base URL of POST /ingest [http://127.0.0.1:9090]
  --server-pid PID       read the server's CPU time and RSS from /proc/PID
Load:
  --clients C            normal clients [1000]
  --events K             events the clients are spread over [1]
  --devices D            devices the positions are spread over [100]
  --rate R               positions per second posted [100]
  --duration S           seconds of posting (or of holding, with --idle) [10]
  --posts-per-s N        POSTs per second: each carries R/N positions [50]
  --batch B              positions per POST, instead of --posts-per-s
  --posters N            posting threads, each with its own keep-alive
                         connection and its own share of the devices and
                         of the rate, so that one connection's answer time
                         does not limit the POST rate [1]
  --slow-clients N       extra clients that stop reading once subscribed;
                         reports when the server closes them [0]
  --slow-rcvbuf BYTES    SO_RCVBUF of those clients; 0 = the default [4096]
  --slow-ballast BYTES   bytes per second of big padded positions posted
                         to an extra event that only the slow clients also
                         subscribe to. On loopback a server socket buffers
                         ~4 MB (MSS 64 KiB): at a dashboard's data rate it
                         would take minutes before the server's own queue
                         for a non-reading client even starts to fill [0]
  --trail N              subscribe with \"trail\":N (the snapshot then carries
                         each device's last N older positions) [none]
  --probes N             extra clients that keep subscribing and
                         unsubscribing while the load runs, to time the
                         answer to a subscribe under load [0]
  --idle, --connect-only connect and subscribe, then hold S seconds without
                         posting: the server's RSS per connection and CPU
Run:
  --threads N            worker threads; 0 = one per CPU allowed [0]
  --connect-timeout S    time allowed for every client to subscribe [30]
  --drain S              after the last POST, wait this long without
                         progress for stragglers [2]
  --p99-limit-ms MS      a run is clean when nothing is lost, duplicated,
                         reordered or closed, p99 <= MS and the last
                         POST went out at most MS behind schedule [50]
  --event-prefix P       event ids are P0, P1, ... [lg<pid>-<time>-]
  --scenario NAME        label copied to the JSON output [adhoc]
  --server-name NAME     label copied to the JSON output [server]
  --quiet                no table on stderr
  -h, --help             this text

The load generator raises its open-files limit to the hard limit. It ends
every connection with a reset (no TIME_WAIT piles up between runs).
Exit status: 0 when the run completed (clean or not: see \"clean\" in the
JSON), 1 when it could not run, 2 for bad arguments.
";

#[derive(Debug, Clone)]
struct Args {
    ws: String,
    http: String,
    server_pid: Option<u32>,
    clients: usize,
    events: usize,
    devices: usize,
    rate: f64,
    duration: Duration,
    batch: usize,
    posts_per_s: f64,
    posters: usize,
    slow_clients: usize,
    slow_rcvbuf: usize,
    slow_ballast: u64,
    probes: usize,
    trail: Option<u64>,
    idle: bool,
    threads: usize,
    connect_timeout: Duration,
    drain: Duration,
    p99_limit_ms: f64,
    event_prefix: Option<String>,
    scenario: String,
    server_name: String,
    quiet: bool,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            ws: "ws://127.0.0.1:8080/".to_owned(),
            http: "http://127.0.0.1:9090".to_owned(),
            server_pid: None,
            clients: 1000,
            events: 1,
            devices: 100,
            rate: 100.0,
            duration: Duration::from_secs(10),
            batch: 0,
            posts_per_s: 50.0,
            posters: 1,
            slow_clients: 0,
            slow_rcvbuf: 4096,
            slow_ballast: 0,
            probes: 0,
            trail: None,
            idle: false,
            threads: 0,
            connect_timeout: Duration::from_secs(30),
            drain: Duration::from_secs(2),
            p99_limit_ms: 50.0,
            event_prefix: None,
            scenario: "adhoc".to_owned(),
            server_name: "server".to_owned(),
            quiet: false,
        }
    }
}

/// `Ok(None)`: help was asked for. Errors name the option and the value.
fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, String> {
    use lexopt::prelude::*;

    /// The next value, parsed; the error names the option.
    fn value<T: std::str::FromStr>(p: &mut lexopt::Parser, flag: &str) -> Result<T, String> {
        let raw = p.value().map_err(|e| e.to_string())?;
        let text = raw.to_string_lossy();
        text.parse().map_err(|_| format!("--{flag}: not a valid number: {text:?}"))
    }
    fn text(p: &mut lexopt::Parser) -> Result<String, String> {
        p.value().map_err(|e| e.to_string())?.into_string().map_err(|v| format!("not UTF-8: {v:?}"))
    }
    fn secs(p: &mut lexopt::Parser, flag: &str) -> Result<Duration, String> {
        let s: f64 = value(p, flag)?;
        Duration::try_from_secs_f64(s).map_err(|_| format!("--{flag}: not a duration: {s}"))
    }
    let mut a = Args::default();
    let mut p = lexopt::Parser::from_iter(args);
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("idle" | "connect-only") => a.idle = true,
            Long("quiet") => a.quiet = true,
            Long("ws") => a.ws = text(&mut p)?,
            Long("http") => a.http = text(&mut p)?,
            Long("server-pid") => a.server_pid = Some(value(&mut p, "server-pid")?),
            Long("clients") => a.clients = value(&mut p, "clients")?,
            Long("events") => a.events = value(&mut p, "events")?,
            Long("devices") => a.devices = value(&mut p, "devices")?,
            Long("rate") => a.rate = value(&mut p, "rate")?,
            Long("duration") => a.duration = secs(&mut p, "duration")?,
            Long("batch") => a.batch = value(&mut p, "batch")?,
            Long("posts-per-s") => a.posts_per_s = value(&mut p, "posts-per-s")?,
            Long("posters") => a.posters = value(&mut p, "posters")?,
            Long("slow-clients") => a.slow_clients = value(&mut p, "slow-clients")?,
            Long("slow-rcvbuf") => a.slow_rcvbuf = value(&mut p, "slow-rcvbuf")?,
            Long("slow-ballast") => a.slow_ballast = value(&mut p, "slow-ballast")?,
            Long("probes") => a.probes = value(&mut p, "probes")?,
            Long("trail") => a.trail = Some(value(&mut p, "trail")?),
            Long("threads") => a.threads = value(&mut p, "threads")?,
            Long("connect-timeout") => a.connect_timeout = secs(&mut p, "connect-timeout")?,
            Long("drain") => a.drain = secs(&mut p, "drain")?,
            Long("p99-limit-ms") => a.p99_limit_ms = value(&mut p, "p99-limit-ms")?,
            Long("event-prefix") => a.event_prefix = Some(text(&mut p)?),
            Long("scenario") => a.scenario = text(&mut p)?,
            Long("server-name") => a.server_name = text(&mut p)?,
            other => return Err(other.unexpected().to_string()),
        }
    }
    if a.events == 0 || a.devices == 0 {
        return Err("--events and --devices must be at least 1".to_owned());
    }
    if a.posters == 0 || a.posters > a.devices {
        return Err("--posters must be between 1 and --devices (each owns devices)".to_owned());
    }
    if !a.idle && (a.rate.is_nan() || a.rate <= 0.0 || a.rate.is_infinite()) {
        return Err("--rate must be a positive number".to_owned());
    }
    if a.posts_per_s.is_nan() || a.posts_per_s <= 0.0 || a.posts_per_s.is_infinite() {
        return Err("--posts-per-s must be a positive number".to_owned());
    }
    Ok(Some(a))
}

/// `scheme://host[:port][/path]` → address, `Host` header, path.
fn parse_url(url: &str, scheme: &str) -> Result<Target, String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("{url:?}: expected a {scheme}:// URL"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let with_port = if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .map_err(|e| format!("{url:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{url:?}: no address"))?;
    Ok(Target { addr, host: authority.to_owned(), path: path.to_owned() })
}

/// µs since the Unix epoch (the unit of `sentUs`).
pub(crate) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
pub(crate) fn f2u(v: f64) -> u64 {
    // `as` saturates; negative and NaN become 0.
    v as u64
}

#[allow(clippy::cast_precision_loss)]
pub(crate) fn u2f(v: u64) -> f64 {
    v as f64
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, String> {
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(1 << 20)
        .spawn(f)
        .map_err(|e| format!("cannot start thread {name}: {e}"))
}

fn main() -> ExitCode {
    // `loadgen trackers ...`: the tracker protocols' cost (trackers.rs).
    if std::env::args().nth(1).as_deref() == Some("trackers") {
        return trackers::main(std::env::args().skip(2));
    }
    let args = match parse_args(std::env::args()) {
        Ok(Some(args)) => args,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: {e} (see loadgen --help)");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Server-side /proc readings.
#[derive(Debug, Default, Clone, Copy)]
struct ServerSample {
    cpu_s: Option<f64>,
    mem: Option<procfs::Memory>,
}

fn sample(pid: Option<u32>) -> ServerSample {
    match pid {
        Some(pid) => {
            ServerSample { cpu_s: procfs::cpu_seconds(Some(pid)), mem: procfs::memory(pid) }
        }
        None => ServerSample::default(),
    }
}

#[allow(clippy::too_many_lines)]
fn run(args: &Args) -> Result<(), String> {
    let nofile = procfs::raise_nofile_limit();
    let total_clients = args.clients + args.slow_clients;
    if let Some(limit) = nofile {
        let needed = u64::try_from(total_clients + args.probes + 64).unwrap_or(u64::MAX);
        if limit < needed {
            eprintln!("loadgen: warning: open-files limit {limit} < {needed} needed");
        }
    }
    let threads = if args.threads > 0 { args.threads } else { procfs::allowed_cpus() };
    let threads = threads.min(total_clients.max(1));
    let ws = parse_url(&args.ws, "ws")?;
    let http = parse_url(&args.http, "http")?;
    let prefix = args.event_prefix.clone().unwrap_or_else(|| {
        format!("lg{}-{}-", std::process::id(), now_us() / 1000 % 1_000_000_000)
    });
    let event_names: Vec<String> = (0..args.events).map(|k| format!("{prefix}{k}")).collect();
    let batch = if args.batch > 0 {
        args.batch
    } else {
        usize::try_from(f2u((args.rate / args.posts_per_s).ceil())).unwrap_or(1).max(1)
    };

    let self_cpu_start = procfs::cpu_seconds(None).unwrap_or(0.0);
    let overflows_before = procfs::listen_overflows();
    let before = sample(args.server_pid);

    let ballast = args.slow_ballast > 0 && args.slow_clients > 0 && !args.idle;
    // Connect storm: every client at once.
    let shared = Arc::new(Shared::new(args.events));
    let subscribe_frames: Vec<Vec<u8>> = event_names
        .iter()
        .map(|e| {
            let mut frame = Vec::new();
            let mut subscribe = json!({"type": "subscribe", "eventId": e});
            if let Some(n) = args.trail {
                subscribe["trail"] = n.into();
            }
            wire::client_frame(wire::OP_TEXT, subscribe.to_string().as_bytes(), &mut frame);
            frame
        })
        .collect();
    let wcfg = WorkerConfig {
        target: ws.clone(),
        events: args.events,
        subscribe_frames: Arc::new(subscribe_frames),
        started_us: now_us(),
        slow_rcvbuf: args.slow_rcvbuf,
        slow_extra_frame: ballast.then(|| {
            let mut frame = Vec::new();
            let event = format!("{prefix}{}", poster::BALLAST_EVENT);
            let text = json!({"type": "subscribe", "eventId": event}).to_string();
            wire::client_frame(wire::OP_TEXT, text.as_bytes(), &mut frame);
            frame
        }),
    };
    let mut specs: Vec<Vec<ClientSpec>> = vec![Vec::new(); threads];
    for i in 0..total_clients {
        let slow = i >= args.clients;
        let event = if slow { (i - args.clients) % args.events } else { i % args.events };
        if let Some(list) = specs.get_mut(i % threads) {
            list.push(ClientSpec { event, slow });
        }
    }
    let connect_started_us = wcfg.started_us;
    let connect_started = Instant::now();
    let mut workers = Vec::new();
    for (w, list) in specs.into_iter().enumerate() {
        let (cfg, shared) = (wcfg.clone(), shared.clone());
        workers.push(spawn(&format!("lg-worker-{w}"), move || worker::run(cfg, list, shared))?);
    }
    let probe_go = Arc::new(AtomicBool::new(false));
    let probe_stop = Arc::new(AtomicBool::new(false));
    let prober = if args.probes > 0 && !args.idle {
        let cfg = probe::ProbeConfig {
            target: ws.clone(),
            probes: args.probes,
            event_names: event_names.clone(),
            period: Duration::from_millis(500),
        };
        let (go, stop) = (probe_go.clone(), probe_stop.clone());
        Some(spawn("lg-probe", move || probe::run(&cfg, &go, &stop))?)
    } else {
        None
    };
    while shared.subscribed.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed)
        < total_clients
        && connect_started.elapsed() < args.connect_timeout
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let subscribed = shared.subscribed.load(Ordering::Relaxed);
    let all_subscribed = subscribed == total_clients;
    let last_subscribed_us = shared.last_subscribed_us.load(Ordering::Relaxed);
    let storm_us = last_subscribed_us.saturating_sub(connect_started_us);
    let listen_overflows = match (overflows_before, procfs::listen_overflows()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };

    let mut monitor = slow::SlowMonitor::new(ws.addr.port());
    monitor.adopt(std::mem::take(&mut *shared.slow.lock()));

    // Let the server finish what the storm left behind before measuring.
    std::thread::sleep(Duration::from_millis(300));
    let connected = sample(args.server_pid);

    let window_start = sample(args.server_pid);
    let self_cpu_window_start = procfs::cpu_seconds(None).unwrap_or(0.0);
    let window_started_us = now_us();
    let mut poster_report = PosterReport::default();
    let progress = Arc::new(PosterProgress::new(args.events));
    if args.idle {
        std::thread::sleep(args.duration);
    } else {
        let mut posters = Vec::with_capacity(args.posters);
        for index in 0..args.posters {
            let pcfg = PosterConfig {
                addr: http.addr,
                host: http.host.clone(),
                path: format!("{}/ingest", http.path.trim_end_matches('/')),
                rate: args.rate,
                duration: args.duration,
                batch,
                devices: args.devices,
                events: args.events,
                event_prefix: prefix.clone(),
                index,
                posters: args.posters,
                ballast_bytes_per_s: if ballast { args.slow_ballast } else { 0 },
            };
            let prog = progress.clone();
            posters.push(spawn(&format!("lg-poster-{index}"), move || poster::run(&pcfg, &prog))?);
        }
        probe_go.store(true, Ordering::Relaxed);
        let watch = !monitor.all_closed();
        while !posters.iter().all(JoinHandle::is_finished) {
            std::thread::sleep(Duration::from_millis(if watch { 50 } else { 10 }));
            if watch {
                monitor.poll();
            }
        }
        for poster in posters {
            let r = poster.join().map_err(|_| "a poster thread panicked".to_owned())?;
            poster_report.merge(r);
        }
        probe_stop.store(true, Ordering::Relaxed);
        // Drain: wait for the stragglers while they keep coming.
        let expected: u64 = progress
            .accepted_in_event
            .iter()
            .zip(&shared.subscribed_in_event)
            .map(|(posted, subs)| posted.load(Ordering::Relaxed) * subs.load(Ordering::Relaxed))
            .sum();
        let mut last = shared.unique.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        let hard_deadline = Instant::now() + args.drain * 10;
        loop {
            let unique = shared.unique.load(Ordering::Relaxed);
            if unique >= expected
                || last_progress.elapsed() >= args.drain
                || Instant::now() >= hard_deadline
            {
                break;
            }
            if unique != last {
                last = unique;
                last_progress = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(if watch { 50 } else { 5 }));
            if watch {
                monitor.poll();
            }
        }
    }
    let window_end_us = now_us();
    let window_end = sample(args.server_pid);
    let self_cpu_window_end = procfs::cpu_seconds(None).unwrap_or(0.0);

    probe_stop.store(true, Ordering::Relaxed);
    let _ = shared.final_seqs.set(poster_report.final_seqs.clone());
    shared.stop.store(true, Ordering::Relaxed);
    let mut merged = WorkerReport::default();
    for handle in workers {
        let r = handle.join().map_err(|_| "a worker thread panicked".to_owned())?;
        merge(&mut merged, r);
    }
    let probes = match prober {
        Some(handle) => Some(handle.join().map_err(|_| "the probe thread panicked".to_owned())?),
        None => None,
    };
    let slow_report = monitor.report(poster_report.started_us);
    monitor.release();
    let after = sample(args.server_pid);
    let self_cpu_end = procfs::cpu_seconds(None).unwrap_or(0.0);

    let summary = report::Summary {
        args,
        threads,
        posters: args.posters,
        batch,
        prefix: &prefix,
        total_clients,
        subscribed,
        all_subscribed,
        storm_us,
        listen_overflows,
        before,
        connected,
        window_start,
        window_end,
        after,
        window_us: window_end_us.saturating_sub(window_started_us),
        self_cpu_window: self_cpu_window_end - self_cpu_window_start,
        self_cpu_total: self_cpu_end - self_cpu_start,
        poster: &poster_report,
        workers: &merged,
        slow: &slow_report,
        probes: probes.as_ref(),
    };
    let report = summary.report();
    if !args.quiet {
        eprint!("{}", report.table());
    }
    let line =
        serde_json::to_string(&report).map_err(|e| format!("cannot write the report: {e}"))?;
    println!("{line}");
    Ok(())
}

fn merge(into: &mut WorkerReport, r: WorkerReport) {
    into.latency_us.merge(&r.latency_us);
    into.subscribe_first_byte_us.merge(&r.subscribe_first_byte_us);
    into.subscribe_complete_us.merge(&r.subscribe_complete_us);
    into.ready_us.merge(&r.ready_us);
    into.deliveries += r.deliveries;
    into.unique += r.unique;
    into.duplicates += r.duplicates;
    into.reordered += r.reordered;
    into.foreign += r.foreign;
    into.expected += r.expected;
    into.lost += r.lost;
    into.untimed += r.untimed;
    if r.first_delivery_us > 0 {
        into.first_delivery_us = match into.first_delivery_us {
            0 => r.first_delivery_us,
            t => t.min(r.first_delivery_us),
        };
    }
    into.last_delivery_us = into.last_delivery_us.max(r.last_delivery_us);
    for (k, v) in r.failures {
        *into.failures.entry(k).or_default() += v;
    }
    for (k, v) in r.close_codes {
        *into.close_codes.entry(k).or_default() += v;
    }
    for (k, v) in r.server_errors {
        *into.server_errors.entry(k).or_default() += v;
    }
    into.unparsed += r.unparsed;
    into.open_at_end += r.open_at_end;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Option<Args>, String> {
        parse_args(std::iter::once("loadgen").chain(list.iter().copied()).map(str::to_owned))
    }

    #[test]
    fn flags_parse_in_both_spellings() {
        let a = args(&["--clients", "5", "--rate=2.5", "--idle", "--duration", "0.5"])
            .unwrap()
            .unwrap();
        assert_eq!((a.clients, a.rate, a.idle), (5, 2.5, true));
        assert_eq!(a.duration, Duration::from_millis(500));
        assert!(args(&["--help"]).unwrap().is_none());
        assert!(args(&["-h"]).unwrap().is_none());
        assert!(args(&["--bogus"]).unwrap_err().contains("--bogus"));
        assert!(args(&["stray"]).is_err());
        assert!(args(&["--clients"]).unwrap_err().contains("--clients"));
        assert_eq!(args(&["--clients", "x"]).unwrap_err(), "--clients: not a valid number: \"x\"");
        assert!(args(&["--idle=yes"]).is_err());
        assert!(args(&["--rate", "0"]).is_err());
        assert_eq!(args(&["--posters", "4"]).unwrap().unwrap().posters, 4);
        assert!(args(&["--posters", "0"]).is_err());
        assert!(args(&["--posters", "3", "--devices", "2"]).is_err());
        assert!(args(&["--duration", "-1"]).unwrap_err().contains("--duration"));
    }

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:8080/live", "ws").unwrap();
        assert_eq!(
            (t.addr.port(), t.host.as_str(), t.path.as_str()),
            (8080, "127.0.0.1:8080", "/live")
        );
        let t = parse_url("http://127.0.0.1:9090", "http").unwrap();
        assert_eq!(t.path, "/");
        assert!(parse_url("http://x", "ws").is_err());
    }
}
