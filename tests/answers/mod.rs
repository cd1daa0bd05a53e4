//! SPEC §9, second round: revalidation re-authorizes each subscription,
//! every inbound frame counts and a message has at most 16 fragments, the
//! latest-position cache is bounded by bytes and holds each position once,
//! and one `subscribed` answer per event and cache state, freed once no
//! queue holds it.

mod cache;
mod frames;
mod revalidation;
mod snapshots;

use std::net::SocketAddr;

use serde_json::Value;

use crate::support::{Binary, http_request, metric};

/// Posts `positions` to the ingest endpoint at `http`; asserts all taken.
#[track_caller]
fn ingest_to(http: SocketAddr, positions: &Value) {
    let body = serde_json::to_vec(positions).expect("serialise");
    let r = http_request(http, "POST", "/ingest", &[("Content-Type", "application/json")], &body);
    assert_eq!(r.status, 202, "POST /ingest: {}", r.text());
    let answer = r.json();
    let n = positions.as_array().map_or(1, Vec::len);
    assert_eq!(answer["accepted"], Value::from(n), "{answer}");
}

/// One metric of the server whose HTTP port is `http`.
fn metric_of(http: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let r = http_request(http, "GET", "/metrics", &[], b"");
    assert_eq!(r.status, 200);
    metric(&r.text(), name, labels)
}

/// The `livecast` executable, for what only a process of its own shows
/// (its resident memory).
struct Spawned {
    bin: Binary,
    ws: SocketAddr,
    http: SocketAddr,
}

impl Spawned {
    fn start(env: &[(&str, &str)]) -> Spawned {
        let bin = Binary::start(env);
        let (ws, http) = (bin.ws, bin.http);
        Spawned { bin, ws, http }
    }

    /// Resident memory, from `/proc/PID/status`.
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.bin.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}
