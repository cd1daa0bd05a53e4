//! The tracker endpoints of the ops port (SPEC §10): `GET`/`POST
//! /ingest/osmand` and `POST /ingest/owntracks`, run on the `http-N` threads.
//!
//! Their positions go where `POST /ingest`'s go (the Redis Stream when
//! configured, else the broadcaster). What differs is the door: phone apps
//! can send a token only as a Basic password or in the URL, and they post
//! forms and `GET`s, which any web page can send too; so these routes
//! refuse every request that carries a browser's cross-site marks, before
//! the credentials and before any body byte is read.

use serde_json::json;

use super::{Routes, constant_time_eq};
use crate::broadcast::Command;
use crate::http_codec::{Request, RequestHead, Response};
use crate::position::{Position, now_ms};
use crate::source::osmand;
use crate::source::owntracks::{self, Message, Sender};
use crate::source::tracker::{self, Batch, Context, Refused};

/// `/ingest/osmand`.
pub(super) const OSMAND: &str = "/ingest/osmand";
/// `/ingest/owntracks`.
pub(super) const OWNTRACKS: &str = "/ingest/owntracks";

/// The `source` label of each protocol's position counters.
const OSMAND_SOURCE: &str = "osmand";
const OWNTRACKS_SOURCE: &str = "owntracks";

impl Routes {
    /// The head checks of the tracker endpoints (SPEC §10): a request a
    /// web page sent (`Origin`, or `Sec-Fetch-Site` other than `none`) gets
    /// `403`, whatever its credentials; then, with `INGEST_TOKEN` set, the
    /// token must come as a bearer token, a Basic password (any user) or
    /// `?token=` (`401` with a Basic challenge otherwise).
    ///
    /// The cross-site check comes first so that a page's request never
    /// meets a Basic challenge (a browser would show its login dialog).
    pub(super) fn tracker_guard(&self, head: &RequestHead) -> Option<Response> {
        let cross_site = head.header("origin").is_some()
            || head
                .header("sec-fetch-site")
                .is_some_and(|v| !v.trim().eq_ignore_ascii_case("none"));
        if cross_site {
            return Some(Response::json(
                403,
                &json!({"error": "tracker endpoints serve apps, not web pages: \
                                  requests with Origin or Sec-Fetch-Site are refused"}),
            ));
        }
        let token = self.state.settings.ingest_token.as_ref()?;
        let expected = token.expose().as_bytes();
        let matches = |given: &str| constant_time_eq(given.as_bytes(), expected);
        let authorization = head.header("authorization");
        let granted = head.bearer().is_some_and(matches)
            || authorization.and_then(tracker::basic_password).is_some_and(|p| matches(&p))
            || head.query_param("token").is_some_and(|t| matches(&t));
        if granted {
            return None;
        }
        Some(
            Response::json(
                401,
                &json!({"error": "INGEST_TOKEN is required: as a Bearer token, a Basic \
                                  password or ?token= on the URL"}),
            )
            .with_header("WWW-Authenticate", "Basic realm=\"livecast\""),
        )
    }

    /// `GET`/`POST /ingest/osmand`: the query, a form body or a JSON body.
    /// `200` with an empty body once the positions are on their way.
    pub(super) fn osmand(&self, req: &Request) -> Response {
        let ctx = self.tracker_context(req);
        let query = req.query.as_deref().unwrap_or("").as_bytes();
        let is_json = req.method == "POST"
            && req.header("content-type").is_some_and(|ct| {
                ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json")
            });
        let batch = if is_json {
            match osmand::from_json(&req.body, &ctx) {
                Ok(batch) => batch,
                Err(refused) => return self.refuse(OSMAND_SOURCE, &refused, text_refusal),
            }
        } else {
            // Traccar Client up to 8 posts its query with an empty body; a
            // form body's parameters follow the URL's.
            let body: &[u8] = if req.method == "POST" { &req.body } else { b"" };
            let params = tracker::form_pairs(query).chain(tracker::form_pairs(body));
            let mut batch = Batch::default();
            batch.push(osmand::from_params(params, &ctx));
            batch
        };
        self.deliver(OSMAND_SOURCE, batch, Response::new(200), text_refusal)
    }

    /// `POST /ingest/owntracks`: one OwnTracks message; `200 []` as JSON.
    pub(super) fn owntracks(&self, req: &Request) -> Response {
        let ctx = self.tracker_context(req);
        let from_url = |name: &str| tracker::query_param(req.query.as_deref(), name);
        let sender = Sender {
            user: req.header("x-limit-u").map(str::to_owned).or_else(|| from_url("u")),
            device: req.header("x-limit-d").map(str::to_owned).or_else(|| from_url("d")),
        };
        let mut batch = Batch::default();
        match owntracks::parse(&req.body, &sender, &ctx) {
            Ok(Message::Location(position)) => batch.push(Ok(position)),
            Ok(Message::Ignored(kind)) => {
                self.state
                    .metrics
                    .tracker_messages_ignored
                    .with_label_values(&[OWNTRACKS_SOURCE, kind])
                    .inc();
            }
            Err(refused) => batch.push(Err(refused)),
        }
        let ok = Response::new(200).with_body("application/json", b"[]".to_vec());
        self.deliver(OWNTRACKS_SOURCE, batch, ok, json_refusal)
    }

    /// The request's context: `?event=`, the time of receipt, the limits.
    fn tracker_context(&self, req: &Request) -> Context {
        let settings = &self.state.settings;
        Context {
            event: tracker::query_param(req.query.as_deref(), "event"),
            now_ms: now_ms(),
            max_position_bytes: settings.max_position_bytes,
            max_items: settings.ingest_max_items,
        }
    }

    /// Counts a batch and sends its positions the way `POST /ingest` does;
    /// answers `ok`, or the first refusal when no position was valid.
    fn deliver(
        &self,
        source: &str,
        batch: Batch,
        ok: Response,
        refusal: fn(&Refused) -> Response,
    ) -> Response {
        let metrics = &self.state.metrics;
        metrics
            .positions_received
            .with_label_values(&[source])
            .inc_by(batch.positions.len() as u64);
        metrics.positions_rejected.with_label_values(&[source]).inc_by(batch.rejected as u64);
        if batch.positions.is_empty() {
            return match &batch.first_refusal {
                Some(refused) => refusal(refused),
                None => ok,
            };
        }
        match self.send_positions(batch.positions) {
            Ok(()) => ok,
            Err(resp) => resp,
        }
    }

    /// A refusal of the whole request, counted when it is a position's.
    fn refuse(
        &self,
        source: &str,
        refused: &Refused,
        refusal: fn(&Refused) -> Response,
    ) -> Response {
        if refused.is_position() {
            self.state.metrics.positions_rejected.with_label_values(&[source]).inc();
        }
        refusal(refused)
    }

    /// Sends positions to the Redis Stream when configured, else to the
    /// broadcaster; `503` when neither takes them.
    fn send_positions(&self, positions: Vec<Position>) -> Result<(), Response> {
        if let Some(sink) = &self.state.sink {
            sink.append(&positions).map_err(|e| {
                Response::text(503, format!("redis: {e}\n")).with_header("Retry-After", "1")
            })
        } else {
            self.state
                .commands
                .send(Command::Positions(positions))
                .map_err(|_| Response::text(503, "server is stopping\n"))
        }
    }
}

/// An OsmAnd refusal: its status and a line of text (the apps show or log
/// nothing of it; a person testing with `curl` reads it).
fn text_refusal(refused: &Refused) -> Response {
    Response::text(refused.status(), format!("{refused}\n"))
}

/// An OwnTracks refusal, as JSON.
fn json_refusal(refused: &Refused) -> Response {
    Response::json(refused.status(), &json!({"error": refused.to_string()}))
}
