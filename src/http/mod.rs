//! The ops port (`HTTP_HOST:HTTP_PORT`): metrics, health, ingest, debug.
//!
//! - `server.rs`: a small blocking HTTP/1.1 server (`http` accept thread,
//!   one `http-N` thread per connection), also used to read the WebSocket
//!   port's upgrade requests;
//! - `assets.rs`: the client library's files (`/livecast.js`, `.d.ts`);
//! - this file: the routes.

mod assets;
pub(crate) mod server;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::broadcast::Command;
use crate::server::Shared;
use crate::source::ingest;
use server::{Handler, Request, Response};

/// The routes of the ops port.
#[derive(Debug)]
pub(crate) struct Routes {
    pub(crate) shared: Arc<Shared>,
    /// The dashboard page, its WebSocket port filled in once at start.
    index: Vec<u8>,
    /// `/livecast.js` and `/livecast.d.ts`, likewise.
    library: assets::ClientLibrary,
}

impl Handler for Routes {
    fn handle(&self, req: Request) -> Response {
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/metrics") => Response::new(200).with_body(
                "text/plain; version=0.0.4; charset=utf-8",
                self.shared.metrics.render(),
            ),
            ("GET" | "HEAD", "/healthz") => Response::text(200, "ok\n"),
            ("GET" | "HEAD", "/readyz") => self.readyz(),
            ("GET" | "HEAD", "/livecast.js") => self.library.js(&req),
            ("GET" | "HEAD", "/livecast.d.ts") => self.library.dts(&req),
            (_, "/livecast.js" | "/livecast.d.ts") => {
                Response::text(405, "method not allowed\n").with_header("Allow", "GET, HEAD")
            }
            ("POST", "/ingest") => self.ingest(&req),
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
            (_, "/metrics" | "/healthz" | "/readyz" | "/ingest" | "/debug/connections" | "/") => {
                Response::text(405, "method not allowed\n")
            }
            _ => Response::text(404, "not found\n"),
        }
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

/// The dashboard's Content-Security-Policy: inline code and this server's
/// own scripts (`/livecast.js`) only, connections
/// to any WebSocket or HTTP endpoint (the WS port and `/auth/check` are
/// another origin, and `?ws=` may point behind a proxy).
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
style-src 'unsafe-inline'; img-src data:; connect-src ws: wss: http: https:; \
base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

impl Routes {
    /// The routes, with the dashboard pointing at WebSocket port `ws_port`
    /// (the bound one).
    pub(crate) fn new(shared: Arc<Shared>, ws_port: u16) -> Routes {
        let index = DASHBOARD.replace(WS_PORT_PLACEHOLDER, &ws_port.to_string()).into_bytes();
        Routes { shared, index, library: assets::ClientLibrary::new(ws_port) }
    }

    fn readyz(&self) -> Response {
        if !self.shared.accepting.load(Ordering::SeqCst) {
            return Response::json(503, &json!({"ready": false, "reason": "shutting down"}));
        }
        match self.shared.source.as_ref().map(|s| s.check()) {
            Some(Err(reason)) => Response::json(503, &json!({"ready": false, "reason": reason})),
            None | Some(Ok(())) => Response::json(200, &json!({"ready": true})),
        }
    }

    fn ingest(&self, req: &Request) -> Response {
        if let Some(token) = &self.shared.config.ingest_token {
            let given = req.header("authorization").and_then(|v| {
                let (scheme, t) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(t.trim())
            });
            if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes())) {
                return Response::json(401, &json!({"error": "a valid bearer token is required"}))
                    .with_header("WWW-Authenticate", "Bearer");
            }
        }
        let parsed = if ingest::is_ndjson(req.header("content-type")) {
            ingest::parse_ndjson(&req.body)
        } else {
            match ingest::parse_json(&req.body) {
                Ok(parsed) => parsed,
                Err(e) => return Response::json(400, &json!({"error": e})),
            }
        };
        let metrics = &self.shared.metrics;
        let accepted = parsed.positions.len();
        metrics.positions_received.with_label_values(&["ingest"]).inc_by(accepted as u64);
        metrics
            .positions_rejected
            .with_label_values(&["ingest"])
            .inc_by(parsed.rejected.len() as u64);
        if accepted > 0 {
            // With Redis, the stream is the one path to every instance,
            // this one included.
            if let Some(sink) = &self.shared.sink {
                if let Err(e) = sink.append(&parsed.positions) {
                    return Response::json(503, &json!({"error": format!("redis: {e}")}))
                        .with_header("Retry-After", "1");
                }
            } else if self.shared.commands.send(Command::Positions(parsed.positions)).is_err() {
                return Response::json(503, &json!({"error": "server is stopping"}));
            }
        }
        Response::json(202, &json!({"accepted": accepted, "rejected": parsed.rejected}))
    }

    fn connections(&self) -> Response {
        let list: Vec<Value> = self
            .shared
            .connections
            .read()
            .values()
            .map(|c| {
                let tid = c.tid.load(Ordering::Relaxed);
                json!({
                    "id": c.id.to_string(),
                    "thread": c.thread_name,
                    "tid": tid,
                    "cpuSeconds": crate::thread::cpu_seconds(tid),
                    "remoteAddr": c.remote.to_string(),
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

/// Compares secrets without an early exit, so timing does not reveal how
/// much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
