//! The HTTP upgrade (RFC 6455 §4.2), run on the new connection's own
//! `ws-xxxxxxxx` thread, over [`crate::http_codec`].
//!
//! livecast reads and answers the upgrade itself rather than through
//! tungstenite's `accept_hdr`, because the WebSocket port also answers plain
//! HTTP (`GET /auth/check`, 404, 426), which tungstenite's handshake cannot
//! express. Checks run in the order SPEC §2 gives (the connection limits
//! have already been enforced by the acceptor; for a trusted proxy's
//! connection, the per-IP ones are enforced here against the client its
//! `X-Forwarded-For` names): Origin (403), credentials (401, 503 when the
//! authority is unavailable). The whole request must arrive
//! within `LIVE_WS_HANDSHAKE_TIMEOUT_MS`, counted from the accept, so a
//! one-byte-per-second client is cut at the deadline (slowloris).

use std::net::SocketAddr;
use std::time::Instant;

use log::debug;
use tungstenite::handshake::derive_accept_key;

use crate::accept::Slot;
use crate::auth::{self, AuthError, Credentials, Identity};
use crate::config::AuthMode;
use crate::http_codec::{
    Framing, HeadError, RequestHead, Response, framing, lists_token, read_head, write_response,
};
use crate::proxy::host_allowed_on;
use crate::server::Shared;
use crate::transport::Stream;

/// Largest upgrade request head accepted.
const MAX_HEAD_BYTES: usize = 8 * 1024;

/// A completed upgrade.
#[derive(Debug)]
pub(super) struct Upgraded {
    pub(super) identity: Identity,
    /// Bytes the client sent after its request (the first frames).
    pub(super) leftover: Vec<u8>,
    /// Who the client is: the peer, or for a trusted proxy the client its
    /// `X-Forwarded-For` names, with port 0 (not known).
    pub(super) remote: SocketAddr,
}

/// Runs the upgrade. `None` when the request was answered otherwise (or
/// the peer went away): the caller just drops the socket.
pub(super) fn perform(
    shared: &Shared,
    stream: &mut Stream,
    peer: SocketAddr,
    slot: &mut Slot,
) -> Option<Upgraded> {
    let mut remote = peer;
    let deadline = Instant::now() + shared.config.handshake_timeout;
    // Under TLS, the TLS handshake first, within the same deadline.
    if let Err(e) = stream.handshake(deadline) {
        debug!("{remote}: {e}");
        return None;
    }
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(shared.config.handshake_timeout));
    let (head, leftover) = match read_head(stream, deadline, MAX_HEAD_BYTES) {
        Ok(pair) => pair,
        Err(HeadError::Malformed(why)) => {
            debug!("{remote}: malformed request: {why}");
            reply(shared, stream, &Response::text(400, "malformed request\n"));
            return None;
        }
        Err(HeadError::TooLarge) => {
            reply(shared, stream, &Response::text(431, "request head too large\n"));
            return None;
        }
        Err(e) => {
            debug!("{remote}: handshake dropped: {e}");
            return None;
        }
    };

    // Behind a trusted proxy, the client is known only now: count it.
    match slot.forwarded_client(crate::proxy::forwarded_for(&head.headers)) {
        Ok(client) if client != peer.ip() => remote = SocketAddr::new(client, 0),
        Ok(_) => {}
        Err(why) => {
            slot.admission().refused(why, peer.ip());
            reply(
                shared,
                stream,
                &Response::text(503, "too many connections\n").with_header("Retry-After", "5"),
            );
            return None;
        }
    }

    // SPEC §9: a `Host` this port does not answer (DNS rebinding) gets 421,
    // whatever the path.
    let config = &shared.config;
    if !host_allowed_on(&config.public_hosts, config.ws_host, head.header("host")) {
        debug!("{remote}: Host not answered on this port");
        reply(shared, stream, &Response::misdirected());
        return None;
    }
    // The HTTP port's framing rules (SPEC §9): ambiguous or unsupported
    // body framing is refused; and neither an upgrade nor `/auth/check`
    // carries a body, whose bytes would otherwise be read as frames.
    match framing(&head) {
        Ok(Framing::Length(0)) => {}
        Ok(_) => {
            reply(shared, stream, &Response::text(400, "this request carries no body\n"));
            return None;
        }
        Err(e) => {
            debug!("{remote}: {e}");
            let status = e.status().unwrap_or(400);
            reply(shared, stream, &Response::text(status, format!("{e}\n")));
            return None;
        }
    }

    if head.method == "GET" && head.path == "/auth/check" {
        auth_check(shared, stream, &head);
        return None;
    }
    let wants_upgrade = head.header("upgrade").is_some_and(|u| lists_token(u, "websocket"));
    if !wants_upgrade {
        reply(
            shared,
            stream,
            &Response::text(404, "not found: this port serves WebSocket upgrades\n"),
        );
        return None;
    }
    let Some(key) = valid_upgrade(&head) else {
        let resp = Response::text(426, "invalid WebSocket upgrade (RFC 6455 §4.2.1)\n")
            .with_header("Sec-WebSocket-Version", "13")
            .with_header("Upgrade", "websocket");
        reply(shared, stream, &resp);
        return None;
    };

    let credentials = Credentials::from_head(&head);
    let origin = head.header("origin");
    // Ambient credentials, which a browser sends for any page: a cookie,
    // or in mode `none` the mere reachability of the port (SPEC §5).
    let ambient = credentials.uses_cookie() || shared.config.auth_mode == AuthMode::None;
    if !auth::origin_allowed(&shared.config.allowed_origins, origin, head.header("host"), ambient) {
        debug!("{remote}: origin refused");
        super::refusal::origin(shared, remote, &head);
        reply(shared, stream, &Response::text(403, "origin not allowed\n"));
        return None;
    }
    let identity = match auth::authenticate(shared.auth.as_ref(), &shared.metrics, &credentials) {
        Ok(identity) => identity,
        Err(e) => {
            debug!("{remote}: {e}");
            super::refusal::credentials(shared, remote, &e);
            reply(shared, stream, &auth_error_response(&e));
            return None;
        }
    };

    if !shared.accepting.load(std::sync::atomic::Ordering::SeqCst) {
        reply(
            shared,
            stream,
            &Response::text(503, "server stopping\n").with_header("Retry-After", "5"),
        );
        return None;
    }
    let accept = derive_accept_key(key.as_bytes());
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    if let Err(e) = std::io::Write::write_all(stream, response.as_bytes()) {
        debug!("{remote}: handshake write failed: {e}");
        return None;
    }
    Some(Upgraded { identity, leftover, remote })
}

/// The `Sec-WebSocket-Key` of a well-formed upgrade request, or `None`.
fn valid_upgrade(head: &RequestHead) -> Option<&str> {
    let connection_ok = head.header("connection").is_some_and(|c| lists_token(c, "upgrade"));
    let version_ok = head.header("sec-websocket-version").is_some_and(|v| v.trim() == "13");
    let key = head.header("sec-websocket-key").map(str::trim).filter(|k| k.len() == 24)?;
    (head.method == "GET" && head.version >= 1 && connection_ok && version_ok).then_some(key)
}

/// `GET /auth/check`: 204 when the credentials would open a connection,
/// 401 when not, 503 when the authority cannot tell, 403 (readable by the
/// page) when the Origin rule refuses the page. Lets a page whose
/// upgrade was refused (browsers only see 1006) choose between "log in
/// again" and "retry".
fn auth_check(shared: &Shared, stream: &mut Stream, head: &RequestHead) {
    let credentials = Credentials::from_head(head);
    if let Some(resp) = super::refusal::origin_refused(shared, head, &credentials) {
        let _ = write_response(stream, &resp, true);
        return;
    }
    let mut resp = match auth::authenticate(shared.auth.as_ref(), &shared.metrics, &credentials) {
        Ok(_) => Response::new(204),
        Err(e) => auth_error_response(&e),
    };
    // The dashboard on the HTTP port is another origin: let it read the
    // answer, with cookies, when the Origin rule allows it.
    let host = head.header("host");
    if let Some(origin) = head.header("origin")
        && auth::origin_allowed(&shared.config.allowed_origins, Some(origin), host, true)
    {
        resp = resp
            .with_header("Access-Control-Allow-Origin", origin)
            .with_header("Access-Control-Allow-Credentials", "true")
            .with_header("Vary", "Origin");
    }
    let _ = write_response(stream, &resp, true);
}

fn auth_error_response(e: &AuthError) -> Response {
    match e {
        AuthError::Denied => {
            Response::text(401, "unauthorized\n").with_header("WWW-Authenticate", "Bearer")
        }
        AuthError::Unavailable(_) => Response::text(503, "authentication backend unavailable\n")
            .with_header("Retry-After", "5"),
    }
}

/// Writes a refusal and counts it.
fn reply(shared: &Shared, stream: &mut Stream, resp: &Response) {
    shared.metrics.upgrades_rejected.with_label_values(&[&resp.status.to_string()]).inc();
    let _ = write_response(stream, resp, true);
}
