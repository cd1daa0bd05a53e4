//! Refused upgrades, said where people look, run on the refused
//! connection's `ws-xxxxxxxx` thread.
//!
//! A browser sees a refused upgrade as a bare 1006 and retries forever;
//! the operator sees only a counter move. So each refusal is logged at
//! `warn`, at most once a minute per rule (a crowd of refused pages must
//! not flood the log), naming the rule and the variable that would change
//! it; and `GET /auth/check` answers a page that the Origin rule refuses
//! in a way that page can read ([`origin_refused`]), so the client library
//! can say so instead of "server down".

use std::net::SocketAddr;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use log::warn;
use serde_json::json;

use crate::accept::WarnEvery;
use crate::auth::{self, AuthError, Credentials};
use crate::config::AuthMode;
use crate::http_codec::{RequestHead, Response};
use crate::server::Shared;

/// At most one line per rule in this period.
const PERIOD: Duration = Duration::from_secs(60);

/// Longest peer-controlled value (an `Origin`, a `Host`) quoted in a line.
const QUOTED_CHARS: usize = 100;

/// What a page refused by the Origin rule is told, by `/auth/check` and
/// (as its own words) by the client library.
const ORIGIN_HINT: &str = "serve the page from the same host name as the WebSocket URL, or \
                           list its origin in LIVE_WS_ALLOWED_ORIGINS";

/// One rate limit per rule: a flood of one kind does not hide the others.
static ORIGIN: LazyLock<WarnEvery> = LazyLock::new(|| WarnEvery::new(PERIOD));
static CREDENTIALS: LazyLock<WarnEvery> = LazyLock::new(|| WarnEvery::new(PERIOD));
static AUTHORITY: LazyLock<WarnEvery> = LazyLock::new(|| WarnEvery::new(PERIOD));

/// Logs an upgrade refused by the Origin rule (`403`).
pub(super) fn origin(shared: &Shared, remote: SocketAddr, head: &RequestHead) {
    let Some(more) = ORIGIN.check(Instant::now()) else { return };
    let origin = quoted(head.header("origin"));
    let why = if shared.config.allowed_origins.is_empty() {
        format!(
            "Origin {origin} is not on the host name of Host {} ({ORIGIN_HINT})",
            quoted(head.header("host"))
        )
    } else {
        format!("Origin {origin} is not in LIVE_WS_ALLOWED_ORIGINS (add it there)")
    };
    warn!("websocket: upgrade from {remote} refused by the Origin rule: {why}{}", held(more));
}

/// Logs an upgrade refused by authentication (`401`, or `503` when the
/// authority could not be asked).
pub(super) fn credentials(shared: &Shared, remote: SocketAddr, error: &AuthError) {
    let (limit, why) = match error {
        AuthError::Denied => (
            &*CREDENTIALS,
            match shared.config.auth_mode {
                AuthMode::Tokens => "no token, or one LIVE_TOKENS_FILE does not hold (401; a page \
                                     passes it as ?access_token=, a script as Authorization: \
                                     Bearer)"
                    .to_owned(),
                AuthMode::Directus => "Directus (DIRECTUS_BASE_URL) did not accept the session \
                                       (401: log in again)"
                    .to_owned(),
                AuthMode::None => "credentials refused (401)".to_owned(),
            },
        ),
        AuthError::Unavailable(e) => (
            &*AUTHORITY,
            format!(
                "the authority could not be asked: {e} (503; check DIRECTUS_BASE_URL and \
                 DIRECTUS_AUTH_TIMEOUT_MS)"
            ),
        ),
    };
    if let Some(more) = limit.check(Instant::now()) {
        warn!("websocket: upgrade from {remote} refused: {why}{}", held(more));
    }
}

/// `GET /auth/check` from a page that the Origin rule refuses: `403` with
/// `{"error":"origin-refused","message":...}`, readable by that page (CORS,
/// with credentials) so that it can tell this from "log in again" and from
/// "server down". Nothing about its credentials is looked at or said.
/// `None` when the rule lets the page in.
pub(super) fn origin_refused(
    shared: &Shared,
    head: &RequestHead,
    credentials: &Credentials,
) -> Option<Response> {
    let origin = head.header("origin")?;
    // The rule the upgrade applies (handshake.rs): ambient credentials are
    // a cookie, or in mode `none` the reachability of the port itself.
    let ambient = credentials.uses_cookie() || shared.config.auth_mode == AuthMode::None;
    if auth::origin_allowed(
        &shared.config.allowed_origins,
        Some(origin),
        head.header("host"),
        ambient,
    ) {
        return None;
    }
    let body = json!({
        "error": "origin-refused",
        "message": format!("refused by the Origin rule ({ORIGIN_HINT})"),
    });
    Some(
        Response::json(403, &body)
            .with_header("Access-Control-Allow-Origin", origin)
            .with_header("Access-Control-Allow-Credentials", "true")
            .with_header("Vary", "Origin")
            .with_header("Cache-Control", "no-store"),
    )
}

/// A peer's header value for a log line: escaped, cut, or `(none)`.
fn quoted(value: Option<&str>) -> String {
    match value {
        Some(v) => format!("{:?}", v.chars().take(QUOTED_CHARS).collect::<String>()),
        None => "(none)".to_owned(),
    }
}

/// `; N more refused by this rule since the last report`, when N > 0.
fn held(more: u64) -> String {
    if more == 0 { String::new() } else { format!("; {more} more since the last report") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_escaped_and_cut() {
        assert_eq!(quoted(Some("http://a\n\u{1b}[31m")), r#""http://a\n\u{1b}[31m""#);
        assert_eq!(quoted(Some(&"x".repeat(500))).len(), QUOTED_CHARS + 2);
        assert_eq!(quoted(None), "(none)");
    }
}
