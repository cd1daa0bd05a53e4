//! `loadgen trackers`: the cost of a tracker's report on the HTTP port.
//!
//! N trackers each report once a second for S seconds, as phones do: a new
//! connection per report, one position each. The same load runs three
//! times, one protocol after the other, against one server: `POST /ingest`
//! (livecast's JSON, the baseline), `GET /ingest/osmand?…` (Traccar Client
//! up to 8, OsmAnd, GPSLogger) and `POST /ingest/owntracks`. For each it
//! reads the server's CPU time from /proc before and after, and reports the
//! server's CPU-µs per report: the HTTP port's accept and connection
//! threads plus the broadcaster taking the position (no subscribers), so
//! the difference between the rows is what the protocol costs.
//!
//! Threads: `lg-tracker-N` (`--threads`), each posting for its share of the
//! trackers on a common schedule (tracker `i` reports at `i/N` s past each
//! second).
//!
//! Output: a Markdown table on stderr, one JSON line per protocol on stdout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::hist::Histogram;
use crate::procfs;

const HELP: &str = "\
loadgen trackers: N trackers each report one position a second over a new
connection, for S seconds, first to POST /ingest, then as OsmAnd
(GET /ingest/osmand?id=..&lat=..), then as OwnTracks (POST
/ingest/owntracks); prints the server's CPU-µs per report for each.

Usage: loadgen trackers [options]
  --http URL          the server's HTTP port [http://127.0.0.1:9090]
  --server-pid PID    read the server's CPU time from /proc/PID
  --trackers N        trackers, each reporting once a second [500]
  --duration S        seconds per protocol [10]
  --threads T         posting threads [4]
  --token T           INGEST_TOKEN, sent as a bearer token
  --protocols LIST    comma list of ingest,osmand,owntracks [all three]
  --server-name NAME  label copied to the JSON output [server]
";

struct Options {
    addr: SocketAddr,
    host: String,
    server_pid: Option<u32>,
    trackers: usize,
    duration: u64,
    threads: usize,
    token: Option<String>,
    protocols: Vec<Protocol>,
    server_name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Ingest,
    OsmAnd,
    OwnTracks,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Ingest => "ingest",
            Protocol::OsmAnd => "osmand",
            Protocol::OwnTracks => "owntracks",
        }
    }

    /// One report of tracker `i` (its `seq`-th) as the raw HTTP request.
    fn request(self, host: &str, token: Option<&str>, i: usize, seq: u64) -> Vec<u8> {
        let lat = 46.0 + (i % 1000) as f64 * 1e-4 + seq as f64 * 1e-6;
        let lon = 6.0 + (i / 1000) as f64 * 1e-4;
        let ms = crate::now_us() / 1000;
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        let (method, path, body) = match self {
            Protocol::Ingest => (
                "POST",
                "/ingest".to_owned(),
                json!({"eventId":"lg-trackers","deviceId":format!("trk-{i}"),"lat":lat,
                    "lon":lon,"ts":ms,"speed":3.5,"heading":90,"seq":seq})
                .to_string(),
            ),
            Protocol::OsmAnd => (
                "GET",
                format!(
                    "/ingest/osmand?id=trk-{i}&lat={lat}&lon={lon}&timestamp={ms}&speed=6.8\
                     &bearing=90&seq={seq}&event=lg-trackers"
                ),
                String::new(),
            ),
            Protocol::OwnTracks => (
                "POST",
                "/ingest/owntracks?event=lg-trackers".to_owned(),
                json!({"_type":"location","lat":lat,"lon":lon,"tst":ms / 1000,"vel":13,
                    "cog":90,"tid":"lg","topic":format!("owntracks/lg/trk-{i}")})
                .to_string(),
            ),
        };
        let mut out = format!(
            "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: loadgen\r\n{auth}\
             Connection: close\r\n"
        );
        if method == "POST" {
            out.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        out.into_bytes()
    }
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Option<Options>, String> {
    let mut http = "http://127.0.0.1:9090".to_owned();
    let mut o = Options {
        addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
        host: String::new(),
        server_pid: None,
        trackers: 500,
        duration: 10,
        threads: 4,
        token: None,
        protocols: vec![Protocol::Ingest, Protocol::OsmAnd, Protocol::OwnTracks],
        server_name: "server".to_owned(),
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = args.next().ok_or_else(|| format!("{flag}: a value is needed"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag}: not a number: {v:?}"));
        match flag.as_str() {
            "--http" => http = value,
            "--server-pid" => o.server_pid = Some(u32::try_from(number(&value)?).unwrap_or(0)),
            "--trackers" => o.trackers = usize::try_from(number(&value)?).unwrap_or(0),
            "--duration" => o.duration = number(&value)?,
            "--threads" => o.threads = usize::try_from(number(&value)?).unwrap_or(0),
            "--token" => o.token = Some(value),
            "--server-name" => o.server_name = value,
            "--protocols" => {
                o.protocols = value
                    .split(',')
                    .map(|p| match p {
                        "ingest" => Ok(Protocol::Ingest),
                        "osmand" => Ok(Protocol::OsmAnd),
                        "owntracks" => Ok(Protocol::OwnTracks),
                        other => Err(format!("--protocols: unknown {other:?}")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    if o.trackers == 0 || o.threads == 0 || o.duration == 0 {
        return Err("--trackers, --threads and --duration must be at least 1".to_owned());
    }
    let authority = http
        .strip_prefix("http://")
        .ok_or_else(|| format!("--http {http:?}: expected http://host:port"))?
        .trim_end_matches('/');
    o.addr = authority
        .to_socket_addrs()
        .map_err(|e| format!("--http {http:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("--http {http:?}: no address"))?;
    o.host = authority.to_owned();
    Ok(Some(o))
}

/// What one protocol's run measured.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    /// Status or error of the first failure, to say why.
    first_error: Option<String>,
    latency_us: Histogram,
    /// Worst lag behind the schedule.
    max_lag_us: u64,
}

/// `loadgen trackers ...`.
pub(crate) fn main(args: impl IntoIterator<Item = String>) -> ExitCode {
    let options = match parse(args) {
        Ok(Some(o)) => o,
        Ok(None) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen trackers: {e} (see loadgen trackers --help)");
            return ExitCode::from(2);
        }
    };
    procfs::raise_nofile_limit();
    eprintln!(
        "| protocol | reports/s | answered | failed | server CPU % | server CPU-µs / report | \
         p50 ms | p99 ms | loadgen CPU % |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for &protocol in &options.protocols {
        let server_before = procfs::cpu_seconds(options.server_pid);
        let own_before = procfs::cpu_seconds(None);
        let started = Instant::now();
        let tally = run(&options, protocol);
        let elapsed = started.elapsed().as_secs_f64();
        let server_s =
            server_before.zip(procfs::cpu_seconds(options.server_pid)).map(|(a, b)| b - a);
        let own_s = own_before.zip(procfs::cpu_seconds(None)).map(|(a, b)| b - a);
        let reports = tally.ok + tally.errors;
        let per_report = server_s.map(|s| s * 1e6 / crate::u2f(reports.max(1)));
        let p50 = tally.latency_us.quantile(0.5) as f64 / 1000.0;
        let p99 = tally.latency_us.quantile(0.99) as f64 / 1000.0;
        let pct =
            |s: Option<f64>| s.map_or("–".to_owned(), |s| format!("{:.1}", s / elapsed * 100.0));
        eprintln!(
            "| {} | {:.0} | {} | {}{} | {} | {} | {p50:.2} | {p99:.2} | {} |",
            protocol.name(),
            crate::u2f(reports) / elapsed,
            tally.ok,
            tally.errors,
            tally.first_error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default(),
            pct(server_s),
            per_report.map_or("–".to_owned(), |v| format!("{v:.0}")),
            pct(own_s),
        );
        println!(
            "{}",
            json!({
                "scenario": "trackers",
                "server": options.server_name,
                "protocol": protocol.name(),
                "trackers": options.trackers,
                "seconds": elapsed,
                "answered": tally.ok,
                "failed": tally.errors,
                "firstError": tally.first_error,
                "serverCpuSeconds": server_s,
                "serverCpuUsPerReport": per_report,
                "loadgenCpuSeconds": own_s,
                "p50Ms": p50,
                "p99Ms": p99,
                "maxLagMs": tally.max_lag_us as f64 / 1000.0,
            })
        );
    }
    ExitCode::SUCCESS
}

/// Runs one protocol for `duration` seconds over every tracker.
fn run(options: &Options, protocol: Protocol) -> Tally {
    let start = Instant::now() + Duration::from_millis(100);
    let threads: Vec<_> = (0..options.threads)
        .map(|t| {
            let mine: Vec<usize> = (t..options.trackers).step_by(options.threads).collect();
            let (addr, host, token) = (options.addr, options.host.clone(), options.token.clone());
            let (n, seconds) = (options.trackers, options.duration);
            std::thread::Builder::new()
                .name(format!("lg-tracker-{t}"))
                .spawn(move || {
                    let mut tally = Tally::default();
                    for second in 0..seconds {
                        for &i in &mine {
                            let offset = Duration::from_secs_f64(
                                crate::u2f(i as u64) / crate::u2f(n as u64),
                            );
                            let due = start + Duration::from_secs(second) + offset;
                            let now = Instant::now();
                            if due > now {
                                std::thread::sleep(due - now);
                            } else {
                                let lag =
                                    u64::try_from((now - due).as_micros()).unwrap_or(u64::MAX);
                                tally.max_lag_us = tally.max_lag_us.max(lag);
                            }
                            let request = protocol.request(&host, token.as_deref(), i, second);
                            let sent = Instant::now();
                            match report(addr, &request) {
                                Ok(status) if (200..300).contains(&status) => {
                                    tally.ok += 1;
                                    let us = u64::try_from(sent.elapsed().as_micros())
                                        .unwrap_or(u64::MAX);
                                    tally.latency_us.record(us);
                                }
                                Ok(status) => fail(&mut tally, format!("status {status}")),
                                Err(e) => fail(&mut tally, e.to_string()),
                            }
                        }
                    }
                    tally
                })
                .expect("spawn a tracker thread")
        })
        .collect();
    let mut all = Tally::default();
    for thread in threads {
        let Ok(t) = thread.join() else { continue };
        all.ok += t.ok;
        all.errors += t.errors;
        all.first_error = all.first_error.or(t.first_error);
        all.latency_us.merge(&t.latency_us);
        all.max_lag_us = all.max_lag_us.max(t.max_lag_us);
    }
    all
}

fn fail(tally: &mut Tally, why: String) {
    tally.errors += 1;
    tally.first_error.get_or_insert(why);
}

/// One report over a new connection; the answer's status. The connection
/// ends with a reset once the answer is read, so no TIME_WAIT piles up.
fn report(addr: SocketAddr, request: &[u8]) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let _ = stream.set_nodelay(true);
    stream.write_all(request)?;
    let mut answer = Vec::with_capacity(256);
    stream.read_to_end(&mut answer)?;
    let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
    let line = answer.split(|b| *b == b'\r').next().unwrap_or_default();
    let status = std::str::from_utf8(line)
        .ok()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status in the answer"))?;
    Ok(status)
}
