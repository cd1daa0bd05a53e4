//! The ops port (`HTTP_HOST:HTTP_PORT`): metrics, health, ingest, debug.
//!
//! - `runtime.rs`: a small blocking HTTP/1.1 server (`http` accept thread,
//!   one `http-N` thread per connection) over [`crate::http_codec`];
//! - `assets.rs`: the client library's files (`/livecast.js`, `.d.ts`);
//! - `trackers.rs`: the trackers' own protocols (`/ingest/osmand`,
//!   `/ingest/owntracks`);
//! - this file: the routes, run on the `http-N` threads.

mod assets;
pub(crate) mod runtime;
mod trackers;

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::auth;
use crate::broadcast::Command;
use crate::config::{Config, Secret};
use crate::http_codec::{Request, RequestHead, Response};
use crate::metrics::Metrics;
use crate::outbound::ClientHandle;
use crate::source::ingest;
use crate::source::redis::{SourceStatus, StreamSink};
use runtime::Handler;

/// What the ops routes use of the rest of the server, handed over by
/// `start`; the connection registry and the `accepting` flag are the
/// WebSocket side's, shared.
#[derive(Debug)]
pub(crate) struct OpsState {
    /// The settings the routes read.
    pub(crate) settings: RouteSettings,
    pub(crate) metrics: Metrics,
    /// The broadcaster's inbox: ingested positions go there without Redis.
    pub(crate) commands: Sender<Command>,
    /// Where ingested positions go when Redis is configured.
    pub(crate) sink: Option<StreamSink>,
    /// The Redis source's state, for `/readyz`, when Redis is configured.
    pub(crate) source: Option<Arc<SourceStatus>>,
    /// Open (post-upgrade) WebSocket connections, for `/debug/connections`.
    pub(crate) connections: Arc<RwLock<HashMap<Uuid, Arc<ClientHandle>>>>,
    /// False once a stop has begun: `/readyz` turns 503.
    pub(crate) accepting: Arc<AtomicBool>,
    /// The device→event map in force, for the ingest answer's `unrouted`.
    pub(crate) device_map: crate::source::device_map::SharedMap,
}

/// The configuration the routes read, taken from [`Config`] at start.
#[derive(Debug, Clone)]
pub(crate) struct RouteSettings {
    /// Whether the port is reachable from the network (`HTTP_HOST` off
    /// loopback, or `LIVE_TRUSTED_PROXIES` set): without `DEBUG_TOKEN`,
    /// `/debug/*` answers only when it is not.
    pub(crate) exposed: bool,
    /// `DEBUG_TOKEN`.
    pub(crate) debug_token: Option<Secret>,
    /// `INGEST_TOKEN`.
    pub(crate) ingest_token: Option<Secret>,
    /// `LIVE_WS_ALLOWED_ORIGINS`, which `POST /ingest` accepts too.
    pub(crate) allowed_origins: Vec<String>,
    /// `INGEST_MAX_ITEMS`.
    pub(crate) ingest_max_items: usize,
    /// `LIVE_MAX_POSITION_BYTES`.
    pub(crate) max_position_bytes: usize,
    /// `LIVE_TRAIL_LENGTH`: the dashboard asks for at most that many trail
    /// positions.
    pub(crate) trail_length: usize,
}

impl RouteSettings {
    /// The routes' part of `config`.
    pub(crate) fn from_config(config: &Config) -> RouteSettings {
        RouteSettings {
            exposed: config.http_exposed(),
            debug_token: config.debug_token.clone(),
            ingest_token: config.ingest_token.clone(),
            allowed_origins: config.allowed_origins.clone(),
            ingest_max_items: config.ingest_max_items,
            max_position_bytes: config.max_position_bytes,
            trail_length: config.trail_length,
        }
    }
}

/// The routes of the ops port.
#[derive(Debug)]
pub(crate) struct Routes {
    state: OpsState,
    /// The dashboard page, its WebSocket port filled in once at start.
    index: Vec<u8>,
    /// `/livecast.js` and `/livecast.d.ts`, likewise.
    library: assets::ClientLibrary,
    /// The connection threads' CPU times, for `/debug/connections`.
    cpu: Mutex<CpuTimes>,
}

/// How long `/debug/connections` reuses the CPU times it read: a burst of
/// requests (or a page polling it) at thousands of connections reads
/// `/proc` once per period, not once per connection per request.
const CPU_TIMES_TTL: Duration = Duration::from_secs(1);

/// The CPU seconds of threads by OS thread id, read from procfs at most
/// once per [`CPU_TIMES_TTL`] for the threads already known (a thread new
/// since the last read is read at once).
#[derive(Debug, Default)]
struct CpuTimes {
    /// When the cached times were read; `None` before the first read.
    read_at: Option<Instant>,
    by_tid: HashMap<i32, Option<f64>>,
}

impl CpuTimes {
    /// The CPU seconds of each of `tids` (0: not started yet, no time).
    fn of(&mut self, tids: &[i32]) -> HashMap<i32, Option<f64>> {
        let stale = self.read_at.is_none_or(|at| at.elapsed() >= CPU_TIMES_TTL);
        if stale {
            self.by_tid.clear();
            self.read_at = Some(Instant::now());
        }
        let mut buf = Vec::with_capacity(64);
        let mut out = HashMap::with_capacity(tids.len());
        for &tid in tids {
            let cpu = *self.by_tid.entry(tid).or_insert_with(|| thread_cpu_seconds(tid, &mut buf));
            out.insert(tid, cpu);
        }
        out
    }
}

/// A thread's CPU time from `/proc/self/task/<tid>/schedstat` (its first
/// field, nanoseconds on the CPU: a three-number file, cheaper for the
/// kernel to produce than `stat`), else from `stat`.
fn thread_cpu_seconds(tid: i32, buf: &mut Vec<u8>) -> Option<f64> {
    if tid <= 0 {
        return None;
    }
    buf.clear();
    let read = std::fs::File::open(format!("/proc/self/task/{tid}/schedstat"))
        .and_then(|mut f| f.read_to_end(buf));
    let ns = read.ok().and_then(|_| {
        let text = std::str::from_utf8(buf).ok()?;
        text.split_ascii_whitespace().next()?.parse::<u64>().ok()
    });
    match ns {
        #[allow(clippy::cast_precision_loss)] // nanoseconds stay far below 2^52 for years
        Some(ns) => Some(ns as f64 / 1e9),
        None => crate::thread::cpu_seconds(tid),
    }
}

impl Handler for Routes {
    /// The checks made on the head alone, before any body byte is read or
    /// any `100 Continue` sent (SPEC §4, §9, §10): `/debug/*` credentials,
    /// for `POST /ingest` in this order its token (401), the `Origin` (403)
    /// and the `Content-Type` (415), and for the tracker endpoints the
    /// cross-site marks (403), then their token (401).
    fn check_head(&self, head: &RequestHead, _remote: SocketAddr) -> Option<Response> {
        if head.path == "/debug" || head.path.starts_with("/debug/") {
            return self.debug_guard(head);
        }
        if head.method == "POST" && head.path == "/ingest" {
            return self.ingest_guard(head);
        }
        if head.path == trackers::OSMAND || head.path == trackers::OWNTRACKS {
            return self.tracker_guard(head);
        }
        None
    }

    fn handle(&self, req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/metrics") => Response::new(200)
                .with_body("text/plain; version=0.0.4; charset=utf-8", self.state.metrics.render()),
            ("GET" | "HEAD", "/healthz") => Response::text(200, "ok\n"),
            ("GET" | "HEAD", "/readyz") => self.readyz(),
            ("GET" | "HEAD", "/livecast.js") => self.library.js(&req),
            ("GET" | "HEAD", "/livecast.d.ts") => self.library.dts(&req),
            (_, "/livecast.js" | "/livecast.d.ts") => {
                Response::text(405, "method not allowed\n").with_header("Allow", "GET, HEAD")
            }
            ("POST", "/ingest") => self.ingest(&req),
            ("GET" | "POST", trackers::OSMAND) => self.osmand(&req),
            ("POST", trackers::OWNTRACKS) => self.owntracks(&req),
            ("GET" | "HEAD", "/debug/connections") => self.connections(),
            ("GET" | "HEAD", "/") => Response::new(200)
                .with_body("text/html; charset=utf-8", self.index.clone())
                // The page is built per server (its port): never cache it.
                .with_header("Cache-Control", "no-store")
                // Enforces "no CDN": the page may load nothing from
                // elsewhere, and may only talk to WebSocket and HTTP
                // endpoints (the WS port is another origin).
                .with_header("Content-Security-Policy", DASHBOARD_CSP)
                // The page URL may hold `?token=`: never send it on.
                .with_header("Referrer-Policy", "no-referrer")
                .with_header("X-Content-Type-Options", "nosniff"),
            (_, path) => match allowed_methods(path) {
                // RFC 9110 §15.5.6: a 405 lists what the resource allows.
                Some(allow) => {
                    Response::text(405, "method not allowed\n").with_header("Allow", allow)
                }
                None => Response::text(404, "not found\n"),
            },
        }
    }
}

/// The methods a known path answers, for the `Allow` header of a `405`;
/// `None` for an unknown path (`404`).
fn allowed_methods(path: &str) -> Option<&'static str> {
    match path {
        "/ingest" | trackers::OWNTRACKS => Some("POST"),
        trackers::OSMAND => Some("GET, POST"),
        "/metrics" | "/healthz" | "/readyz" | "/debug/connections" | "/" => Some("GET, HEAD"),
        _ => None,
    }
}

/// The built-in dashboard (SPEC §8): one self-contained page (inline CSS
/// and JS, no CDN, no tiles), embedded so that the binary alone serves it,
/// offline.
const DASHBOARD: &str = include_str!("../dashboard/index.html");

/// Where the page reads the WebSocket port from. Filled in per server
/// rather than at build time: the port is known only once bound (0 asks for
/// any).
const WS_PORT_PLACEHOLDER: &str = "{{WS_PORT}}";
/// Where the dashboard page expects `LIVE_TRAIL_LENGTH`.
const TRAIL_LENGTH_PLACEHOLDER: &str = "{{TRAIL_LENGTH}}";
/// Where the page reads the HTTP port it is served on: a page loaded on
/// another port came through a reverse proxy, and connects through it.
const HTTP_PORT_PLACEHOLDER: &str = "{{HTTP_PORT}}";

/// The dashboard's Content-Security-Policy: inline code and this server's
/// own scripts (`/livecast.js`) only, connections
/// to any WebSocket or HTTP endpoint (the WS port and `/auth/check` are
/// another origin, and `?ws=` may point behind a proxy).
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src data:; connect-src ws: wss: http: https:; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

impl Routes {
    /// The routes, with the dashboard pointing at WebSocket port `ws_port`
    /// and knowing it is served on `http_port` (the bound ones).
    pub(crate) fn new(state: OpsState, ws_port: u16, http_port: u16) -> Routes {
        let index = DASHBOARD
            .replace(WS_PORT_PLACEHOLDER, &ws_port.to_string())
            .replace(HTTP_PORT_PLACEHOLDER, &http_port.to_string())
            .replace(TRAIL_LENGTH_PLACEHOLDER, &state.settings.trail_length.to_string())
            .into_bytes();
        Routes {
            state,
            index,
            library: assets::ClientLibrary::new(ws_port, http_port),
            cpu: Mutex::new(CpuTimes::default()),
        }
    }

    fn readyz(&self) -> Response {
        if !self.state.accepting.load(Ordering::SeqCst) {
            return Response::json(503, &json!({"ready": false, "reason": "shutting down"}));
        }
        match self.state.source.as_ref().map(|s| s.check()) {
            Some(Err(reason)) => Response::json(503, &json!({"ready": false, "reason": reason})),
            None | Some(Ok(())) => Response::json(200, &json!({"ready": true})),
        }
    }

    /// `/debug/*` (SPEC §9): with `DEBUG_TOKEN` set, its bearer token is
    /// required (401); without it, the routes answer only on a port that is
    /// not exposed (403 off loopback or behind a proxy), as they list
    /// users, client addresses and events.
    fn debug_guard(&self, head: &RequestHead) -> Option<Response> {
        let config = &self.state.settings;
        match &config.debug_token {
            Some(token) if !bearer_matches(head, token) => Some(unauthorized()),
            Some(_) => None,
            None if config.exposed => Some(Response::json(
                403,
                &json!({"error": "/debug is refused off loopback or behind a proxy unless \
                                  DEBUG_TOKEN is set"}),
            )),
            None => None,
        }
    }

    /// `POST /ingest` on its head (SPEC §4, §9): token, then a cross-site
    /// `Origin`, then the `Content-Type`.
    fn ingest_guard(&self, head: &RequestHead) -> Option<Response> {
        let config = &self.state.settings;
        if let Some(token) = &config.ingest_token
            && !bearer_matches(head, token)
        {
            return Some(unauthorized());
        }
        if let Some(origin) = head.header("origin")
            && !same_site_or_listed(&config.allowed_origins, origin, head.header("host"))
        {
            return Some(Response::json(
                403,
                &json!({"error": "cross-site ingest refused: Origin is not this host nor in \
                                  LIVE_WS_ALLOWED_ORIGINS"}),
            ));
        }
        if !ingest::content_type_accepted(head.header("content-type")) {
            return Some(Response::json(
                415,
                &json!({"error": "Content-Type must be application/json or application/x-ndjson"}),
            ));
        }
        None
    }

    /// `POST /ingest` once [`Routes::ingest_guard`] passed its head (the
    /// server runs `check_head` before reading any body).
    fn ingest(&self, req: &Request) -> Response {
        let config = &self.state.settings;
        let limits = ingest::Limits {
            max_items: config.ingest_max_items,
            max_position_bytes: config.max_position_bytes,
        };
        let parsed = if ingest::is_ndjson(req.header("content-type")) {
            ingest::parse_ndjson(&req.body, &limits)
        } else {
            ingest::parse_json(&req.body, &limits)
        };
        let parsed = match parsed {
            Ok(parsed) => parsed,
            Err(e @ ingest::Refused::TooManyItems { .. }) => {
                return Response::json(413, &json!({"error": e.to_string()}));
            }
            Err(e @ ingest::Refused::Malformed(_)) => {
                return Response::json(400, &json!({"error": e.to_string()}));
            }
        };
        let metrics = &self.state.metrics;
        let accepted = parsed.positions.len();
        metrics.positions_received.with_label_values(&["ingest"]).inc_by(accepted as u64);
        metrics
            .positions_rejected
            .with_label_values(&["ingest"])
            .inc_by(parsed.rejected_count as u64);
        // Without Redis this instance is the only router: say what no
        // event will receive (with Redis, another instance may route it).
        let unrouted = match &self.state.sink {
            None => crate::source::device_map::unrouted(&self.state.device_map, &parsed.positions),
            Some(_) => 0,
        };
        if accepted > 0 {
            // With Redis, the stream is the one path to every instance,
            // this one included.
            if let Some(sink) = &self.state.sink {
                if let Err(e) = sink.append(&parsed.positions) {
                    return Response::json(503, &json!({"error": format!("redis: {e}")}))
                        .with_header("Retry-After", "1");
                }
            } else if self.state.commands.send(Command::Positions(parsed.positions)).is_err() {
                return Response::json(503, &json!({"error": "server is stopping"}));
            }
        }
        let mut answer = serde_json::Map::new();
        answer.insert("accepted".into(), json!(accepted));
        answer.insert("rejected".into(), json!(parsed.rejected));
        answer.insert("rejectedCount".into(), json!(parsed.rejected_count));
        if unrouted > 0 {
            answer.insert("unrouted".into(), json!(unrouted));
            answer.insert("hint".into(), json!(UNROUTED_HINT));
        }
        Response::json(202, &Value::Object(answer))
    }

    /// `GET /debug/connections` (SPEC §7). The registry's lock is held only
    /// to copy the handles (new connections register meanwhile), and the
    /// threads' CPU times come from [`CpuTimes`], so that thousands of
    /// connections cost one procfs pass a second, not one per request.
    fn connections(&self) -> Response {
        let handles: Vec<Arc<ClientHandle>> =
            self.state.connections.read().values().cloned().collect();
        let tids: Vec<i32> = handles.iter().map(|c| c.tid.load(Ordering::Relaxed)).collect();
        let cpu = self.cpu.lock().of(&tids);
        let list: Vec<Value> = handles
            .iter()
            .zip(&tids)
            .map(|(c, &tid)| {
                json!({
                    "id": c.id.to_string(),
                    "thread": c.thread_name,
                    "tid": tid,
                    "cpuSeconds": cpu.get(&tid).copied().flatten(),
                    // A client behind a trusted proxy has no known port.
                    "remoteAddr": if c.remote.port() == 0 {
                        c.remote.ip().to_string()
                    } else {
                        c.remote.to_string()
                    },
                    "user": c.user,
                    "openedAt": c.opened_at_ms,
                    "lastSeenAt": c.last_seen_ms.load(Ordering::Relaxed),
                    "subscriptions": *c.subscriptions.lock(),
                    "queuedMessages": c.queued_messages(),
                    "queuedBytes": c.queued_bytes(),
                    "messagesSent": c.messages_sent.load(Ordering::Relaxed),
                    "stalenessMs": c.staleness_ms(),
                })
            })
            .collect();
        Response::json(200, &Value::Array(list))
    }
}

/// Said with `unrouted` in an ingest answer.
const UNROUTED_HINT: &str = "unrouted positions have no eventId and their device is not in the \
     device→event map (LIVE_DEVICE_EVENT_FILE, or the devices of Directus): no event receives \
     them; add eventId, or map the device";

/// Whether the head carries `Authorization: Bearer <token>` for `token`.
fn bearer_matches(head: &RequestHead, token: &Secret) -> bool {
    head.bearer().is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes()))
}

/// The `401` of a missing or wrong bearer token. It says nothing about
/// which: the token is never echoed nor logged.
fn unauthorized() -> Response {
    Response::json(401, &json!({"error": "a valid bearer token is required"}))
        .with_header("WWW-Authenticate", "Bearer")
}

/// The cross-site rule of `POST /ingest` (SPEC §9): an `Origin` passes when
/// its hostname is the `Host` header's (ports may differ: the built-in
/// dashboard is another port of the same host), or when it is in
/// `LIVE_WS_ALLOWED_ORIGINS`.
fn same_site_or_listed(allowed: &[String], origin: &str, host: Option<&str>) -> bool {
    let origin = origin.trim().trim_end_matches('/');
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    // `null` (sandboxed frames, files) and other opaque origins have no
    // `scheme://`: never the same site.
    let Some((_, authority)) = origin.split_once("://") else {
        return false;
    };
    host.is_some_and(|host| auth::hostname(authority).eq_ignore_ascii_case(auth::hostname(host)))
}

/// Compares secrets without an early exit, so timing does not reveal how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_origin_rule() {
        let list = vec!["https://tracker.example".to_owned()];
        assert!(same_site_or_listed(&[], "http://127.0.0.1:9090", Some("127.0.0.1:9090")));
        // The dashboard: same host, other port.
        assert!(same_site_or_listed(&[], "http://localhost:9090", Some("LOCALHOST:8080")));
        assert!(same_site_or_listed(&[], "http://[::1]:9090", Some("[::1]:9090")));
        assert!(!same_site_or_listed(&[], "https://evil.example", Some("127.0.0.1:9090")));
        assert!(!same_site_or_listed(&[], "null", Some("127.0.0.1:9090")));
        assert!(!same_site_or_listed(&[], "http://127.0.0.1:9090", None));
        assert!(same_site_or_listed(&list, "https://tracker.example/", Some("127.0.0.1:9090")));
        assert!(!same_site_or_listed(&list, "https://evil.example", Some("127.0.0.1:9090")));
    }

    #[test]
    fn every_known_path_lists_its_methods() {
        for path in ["/metrics", "/healthz", "/readyz", "/debug/connections", "/"] {
            assert_eq!(allowed_methods(path), Some("GET, HEAD"), "{path}");
        }
        assert_eq!(allowed_methods("/ingest"), Some("POST"));
        assert_eq!(allowed_methods("/ingest/owntracks"), Some("POST"));
        assert_eq!(allowed_methods("/ingest/osmand"), Some("GET, POST"));
        assert_eq!(allowed_methods("/nope"), None);
    }
}
