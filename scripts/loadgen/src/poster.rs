//! The producer: posts positions to `POST /ingest` at a paced rate, in
//! batches, over one keep-alive HTTP/1.1 connection per poster thread
//! (`--posters N`). Every position carries its device's next sequence
//! number and its send time in µs (`sentUs`).
//!
//! With several posters, poster `k` of `N` owns the devices `d` with
//! `d % N == k` (so every device's positions still leave in order, over one
//! connection) and posts `1/N` of the rate on the common schedule shifted
//! by `k/N` of a POST interval: together they post as one poster would, but
//! no single connection's answer time limits the POST rate.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::hist::Histogram;

#[derive(Clone, Debug)]
pub(crate) struct PosterConfig {
    pub(crate) addr: SocketAddr,
    /// `Host` header value.
    pub(crate) host: String,
    pub(crate) path: String,
    /// Positions per second.
    pub(crate) rate: f64,
    pub(crate) duration: Duration,
    /// Positions per POST.
    pub(crate) batch: usize,
    pub(crate) devices: usize,
    pub(crate) events: usize,
    pub(crate) event_prefix: String,
    /// This poster's index and the number of posters.
    pub(crate) index: usize,
    pub(crate) posters: usize,
    /// Bytes per second of padded positions for the ballast event (only
    /// the slow clients subscribe to it); 0 for none.
    pub(crate) ballast_bytes_per_s: u64,
}

/// Event of the ballast positions, after the prefix.
pub(crate) const BALLAST_EVENT: &str = "ballast";
const BALLAST_PAD: usize = 4000;

/// Progress the coordinator watches while the poster runs.
#[derive(Debug)]
pub(crate) struct PosterProgress {
    pub(crate) stop: AtomicBool,
    /// Positions accepted by the server, per event.
    pub(crate) accepted_in_event: Vec<AtomicU64>,
}

impl PosterProgress {
    pub(crate) fn new(events: usize) -> PosterProgress {
        PosterProgress {
            stop: AtomicBool::new(false),
            accepted_in_event: (0..events).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct PosterReport {
    pub(crate) posts: u64,
    pub(crate) positions: u64,
    pub(crate) accepted: u64,
    pub(crate) rejected: u64,
    /// Failed POSTs by reason (their positions count as lost downstream).
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) post_latency_us: Histogram,
    /// How far the poster fell behind its schedule at worst.
    pub(crate) max_lag_us: u64,
    /// How far behind its schedule the last POST went out: large when the
    /// server could not take POSTs at the offered rate, near zero after a
    /// passing hiccup.
    pub(crate) end_lag_us: u64,
    /// Per device, the last sequence number sent.
    pub(crate) final_seqs: Vec<u64>,
    pub(crate) started_us: u64,
    pub(crate) finished_us: u64,
}

#[derive(Deserialize)]
struct IngestAnswer {
    accepted: u64,
    #[serde(default)]
    rejected: Vec<serde::de::IgnoredAny>,
}

pub(crate) fn run(cfg: &PosterConfig, progress: &Arc<PosterProgress>) -> PosterReport {
    let mut report = PosterReport {
        final_seqs: vec![0; cfg.devices],
        started_us: crate::now_us(),
        ..PosterReport::default()
    };
    let posters = cfg.posters.max(1);
    let all = crate::f2u((cfg.rate * cfg.duration.as_secs_f64()).round()).max(1);
    let total = share(all, cfg.index, posters);
    let own = own_devices(cfg.devices, cfg.index, posters);
    let batch = cfg.batch.max(1);
    // Each poster's own POST interval; the shift spreads the posters' POSTs
    // evenly over the common one.
    let interval = Duration::from_secs_f64(batch as f64 / cfg.rate * crate::u2f(posters as u64));
    let shift = interval.mul_f64(crate::u2f(cfg.index as u64) / crate::u2f(posters as u64));
    let mut conn: Option<HttpConn> = None;
    let mut body = String::with_capacity(batch * 200);
    let mut request = Vec::with_capacity(batch * 200 + 200);
    let mut per_event = vec![0u64; cfg.events];
    let ballast_per_post = if cfg.ballast_bytes_per_s > 0 && cfg.index == 0 {
        let per_post = crate::u2f(cfg.ballast_bytes_per_s) * interval.as_secs_f64();
        crate::f2u((per_post / crate::u2f(BALLAST_PAD as u64)).ceil()).max(1)
    } else {
        0
    };
    let pad = "x".repeat(BALLAST_PAD);
    let mut ballast_seq = 0u64;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut post: u32 = 0;
    // A server that stalls cannot hold the run hostage: posting ends this
    // long after it should have ended, whatever is left.
    let give_up = cfg.duration + Duration::from_secs(10);
    while sent < total && !own.is_empty() && !progress.stop.load(Ordering::Relaxed) {
        if start.elapsed() > give_up {
            *report.errors.entry("gave-up-behind-schedule".to_owned()).or_default() += 1;
            break;
        }
        let due = start + shift + interval * post;
        let now = Instant::now();
        let lag = u64::try_from(now.saturating_duration_since(due).as_micros()).unwrap_or(u64::MAX);
        report.max_lag_us = report.max_lag_us.max(lag);
        report.end_lag_us = lag;
        if due > now {
            std::thread::sleep(due - now);
        }
        post += 1;
        let count = (total - sent).min(batch as u64);
        let sent_us = crate::now_us();
        body.clear();
        body.push('[');
        per_event.iter_mut().for_each(|c| *c = 0);
        for m in sent..sent + count {
            let Some(&device) = own.get(usize::try_from(m).unwrap_or(0) % own.len()) else {
                continue;
            };
            let event = device % cfg.events;
            let Some(seq) = report.final_seqs.get_mut(device) else { continue };
            *seq += 1;
            if let Some(c) = per_event.get_mut(event) {
                *c += 1;
            }
            if m > sent {
                body.push(',');
            }
            let wiggle = crate::u2f(*seq % 1000) * 1e-5;
            let _ = write!(
                body,
                "{{\"eventId\":\"{prefix}{event}\",\"deviceId\":\"d-{device}\",\
                 \"lat\":{lat:.6},\"lon\":{lon:.6},\"ts\":{ts},\"seq\":{seq},\
                 \"sentUs\":{sent_us},\"speed\":{speed:.1},\"heading\":{heading}}}",
                prefix = cfg.event_prefix,
                lat = 46.5 + crate::u2f(device as u64 % 100) * 1e-3 + wiggle,
                lon = 6.6 + crate::u2f(device as u64 / 100 % 100) * 1e-3 - wiggle,
                ts = sent_us / 1000,
                speed = crate::u2f(*seq % 50),
                heading = (device * 7 + usize::try_from(*seq).unwrap_or(0)) % 360,
            );
        }
        for _ in 0..ballast_per_post {
            ballast_seq += 1;
            let _ = write!(
                body,
                ",{{\"eventId\":\"{}{BALLAST_EVENT}\",\"deviceId\":\"b-0\",\"lat\":0,\"lon\":0,\
                 \"ts\":{},\"seq\":{ballast_seq},\"pad\":\"{pad}\"}}",
                cfg.event_prefix,
                sent_us / 1000,
            );
        }
        body.push(']');
        sent += count;
        report.posts += 1;
        report.positions += count;

        request.clear();
        let _ = write!(
            request,
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n",
            cfg.path,
            cfg.host,
            body.len()
        );
        request.extend_from_slice(body.as_bytes());

        let outcome = match &mut conn {
            Some(c) => c.post(&request),
            None => match HttpConn::open(cfg.addr) {
                Ok(c) => conn.insert(c).post(&request),
                Err(e) => Err(format!("connect-{}", e.kind())),
            },
        };
        let done_us = crate::now_us();
        report.post_latency_us.record(done_us.saturating_sub(sent_us));
        match outcome {
            Ok((status, keep_alive, answer)) => {
                if !keep_alive {
                    conn = None;
                }
                if status != 202 {
                    *report.errors.entry(format!("http-{status}")).or_default() += 1;
                    continue;
                }
                match serde_json::from_slice::<IngestAnswer>(&answer) {
                    Ok(a) => {
                        report.accepted += a.accepted;
                        report.rejected += a.rejected.len() as u64;
                        if a.accepted == count + ballast_per_post {
                            for (k, n) in per_event.iter().enumerate() {
                                if let Some(total) = progress.accepted_in_event.get(k) {
                                    total.fetch_add(*n, Ordering::Relaxed);
                                }
                            }
                        }
                    }
                    Err(_) => *report.errors.entry("bad-answer".to_owned()).or_default() += 1,
                }
            }
            Err(reason) => {
                conn = None;
                *report.errors.entry(reason).or_default() += 1;
            }
        }
    }
    report.finished_us = crate::now_us();
    report
}

/// Poster `index`'s part of `total` positions: an even share, the first
/// `total % posters` posters taking one more.
pub(crate) fn share(total: u64, index: usize, posters: usize) -> u64 {
    let (n, k) = (posters.max(1) as u64, index as u64);
    total / n + u64::from(k < total % n)
}

/// The devices poster `index` posts for: `index`, `index + posters`, ...
pub(crate) fn own_devices(devices: usize, index: usize, posters: usize) -> Vec<usize> {
    (index..devices).step_by(posters.max(1)).collect()
}

impl PosterReport {
    /// Adds another poster's report to this one.
    pub(crate) fn merge(&mut self, other: PosterReport) {
        self.posts += other.posts;
        self.positions += other.positions;
        self.accepted += other.accepted;
        self.rejected += other.rejected;
        for (k, v) in other.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.post_latency_us.merge(&other.post_latency_us);
        self.max_lag_us = self.max_lag_us.max(other.max_lag_us);
        self.end_lag_us = self.end_lag_us.max(other.end_lag_us);
        if self.final_seqs.len() < other.final_seqs.len() {
            self.final_seqs.resize(other.final_seqs.len(), 0);
        }
        for (mine, theirs) in self.final_seqs.iter_mut().zip(other.final_seqs) {
            *mine = (*mine).max(theirs);
        }
        self.started_us = match (self.started_us, other.started_us) {
            (0, t) | (t, 0) => t,
            (a, b) => a.min(b),
        };
        self.finished_us = self.finished_us.max(other.finished_us);
    }
}

/// One keep-alive HTTP/1.1 client connection.
///
/// Written by hand, not with ureq, for measured speed: the poster's loop is
/// the load generator's own limit on the one-position-per-POST ramps, and
/// on the same core as the clients it reads for. Posting 32,000
/// one-position POSTs at 8,000/s to livecast, ureq 3.5 (one pooled
/// connection, per-phase timeouts) took 2.0–2.2 s of CPU and answered in
/// 0.10–0.11 ms (p50) where this takes 1.4–1.5 s and 0.06–0.08 ms. strace
/// counts about twelve system calls per POST for ureq (head and body in two
/// writes, a non-blocking liveness check of the pooled socket with its
/// `ioctl`s, socket timeouts set per phase) where this makes two (one
/// write, one read).
struct HttpConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    fn open(addr: SocketAddr) -> io::Result<HttpConn> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(HttpConn { stream, buf: Vec::with_capacity(4096) })
    }

    /// Sends one request; returns status, whether the connection may be
    /// reused, and the body.
    fn post(&mut self, request: &[u8]) -> Result<(u16, bool, Vec<u8>), String> {
        self.stream.write_all(request).map_err(|e| format!("write-{}", e.kind()))?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            let n = self.stream.read(&mut chunk).map_err(|e| format!("read-{}", e.kind()))?;
            if n == 0 {
                return Err("eof".to_owned());
            }
            self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            let head = match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head)) => head,
                Ok(httparse::Status::Partial) => continue,
                Err(e) => return Err(format!("bad-response-{e}")),
            };
            let status = response.code.unwrap_or(0);
            let header = |name: &str| {
                response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .map(str::to_ascii_lowercase)
            };
            let keep_alive = header("connection").is_none_or(|v| !v.contains("close"));
            let chunked = header("transfer-encoding").is_some_and(|v| v.contains("chunked"));
            let length: Option<usize> = header("content-length").and_then(|v| v.parse().ok());
            let head_len = head;
            let body = if chunked {
                self.read_chunked(head_len)?
            } else {
                let length = length.unwrap_or(0);
                while self.buf.len() < head_len + length {
                    let n =
                        self.stream.read(&mut chunk).map_err(|e| format!("read-{}", e.kind()))?;
                    if n == 0 {
                        return Err("eof-in-body".to_owned());
                    }
                    self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
                }
                self.buf.get(head_len..head_len + length).unwrap_or_default().to_vec()
            };
            return Ok((status, keep_alive, body));
        }
    }

    fn read_chunked(&mut self, mut pos: usize) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            // Need a full size line, then the chunk and its CRLF.
            let line_end =
                self.buf.get(pos..).and_then(|b| b.windows(2).position(|w| w == b"\r\n"));
            if let Some(line_end) = line_end {
                let line = self.buf.get(pos..pos + line_end).unwrap_or_default();
                let size_text = std::str::from_utf8(line).unwrap_or("").split(';').next();
                let size = usize::from_str_radix(size_text.unwrap_or("").trim(), 16)
                    .map_err(|_| "bad-chunk".to_owned())?;
                let start = pos + line_end + 2;
                if size == 0 {
                    return Ok(body);
                }
                if self.buf.len() >= start + size + 2 {
                    body.extend_from_slice(self.buf.get(start..start + size).unwrap_or_default());
                    pos = start + size + 2;
                    continue;
                }
            }
            let n = self.stream.read(&mut chunk).map_err(|e| format!("read-{}", e.kind()))?;
            if n == 0 {
                return Err("eof-in-chunked-body".to_owned());
            }
            self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn posters_share_positions_and_devices_without_overlap() {
        for (total, posters) in [(10, 1), (10, 3), (2, 4), (1_000_001, 7)] {
            let shares: Vec<u64> = (0..posters).map(|k| share(total, k, posters)).collect();
            assert_eq!(shares.iter().sum::<u64>(), total);
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
        let mut seen: Vec<usize> = (0..3).flat_map(|k| own_devices(10, k, 3)).collect();
        assert_eq!(own_devices(10, 1, 3), [1, 4, 7]);
        seen.sort_unstable();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!(own_devices(2, 3, 4).is_empty());
    }

    /// The hand-written client against a scripted server: a Content-Length
    /// answer, a chunked one over the same connection, then `close`.
    #[test]
    fn keep_alive_client_reads_both_framings() {
        use std::io::{BufRead, BufReader};
        use std::net::TcpListener;

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = crate::spawn("fake-ingest", move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut out = stream;
            let answers: [&[u8]; 3] = [
                b"HTTP/1.1 202 Accepted\r\nContent-Length: 14\r\n\r\n{\"accepted\":1}",
                b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n\
                  a\r\n{\"accepted\r\n4;ext=1\r\n\":2}\r\n0\r\n\r\n",
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 2\r\n\r\nno",
            ];
            for answer in answers {
                // Read one request: head, then its Content-Length body.
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.strip_prefix("Content-Length: ") {
                        length = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                out.write_all(answer).unwrap();
            }
        })
        .unwrap();
        let mut conn = HttpConn::open(addr).unwrap();
        let request = b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n[]";
        assert_eq!(conn.post(request).unwrap(), (202, true, br#"{"accepted":1}"#.to_vec()));
        assert_eq!(conn.post(request).unwrap(), (202, true, br#"{"accepted":2}"#.to_vec()));
        assert_eq!(conn.post(request).unwrap(), (400, false, b"no".to_vec()));
        server.join().unwrap();
    }

    #[test]
    fn merged_reports_add_up() {
        let mut a = PosterReport {
            posts: 2,
            final_seqs: vec![3, 0, 5],
            started_us: 10,
            end_lag_us: 1,
            ..PosterReport::default()
        };
        let mut errors = BTreeMap::new();
        errors.insert("eof".to_owned(), 1);
        a.merge(PosterReport {
            posts: 3,
            final_seqs: vec![0, 4, 0],
            started_us: 7,
            end_lag_us: 9,
            errors,
            ..PosterReport::default()
        });
        assert_eq!((a.posts, a.final_seqs, a.started_us, a.end_lag_us), (5, vec![3, 4, 5], 7, 9));
        assert_eq!(a.errors.get("eof"), Some(&1));
    }
}
