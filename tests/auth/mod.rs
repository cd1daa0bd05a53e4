//! SPEC §5 (auth modes `none` and `tokens`, the tokens file re-read on
//! change, `forbidden` subscribes, the Origin check) and §2 (`GET
//! /auth/check` answers 204/401 for the same credentials as an upgrade).

use std::time::Duration;

use serde_json::json;
use tungstenite::Message;

use crate::support::{DEADLINE, Server, TempDir, metric, wait_until};

const TOKENS: &str =
    r#"{"tok1":{"user":"alice","events":["e-1"]},"tok2":{"user":"bob","events":["*"]}}"#;

fn tokens_server(dir: &TempDir) -> Server {
    let file = dir.write("tokens.json", TOKENS);
    Server::with(|c| {
        c.auth_mode = livecast::AuthMode::Tokens;
        c.tokens_file = Some(file);
    })
}

#[test]
fn tokens_mode_refuses_missing_or_unknown_credentials() {
    let dir = TempDir::new("auth-refuse");
    let srv = tokens_server(&dir);
    assert_eq!(srv.upgrade("/", &[]).status, 401, "no credentials");
    assert_eq!(srv.upgrade("/", &[("Authorization", "Bearer nope")]).status, 401, "unknown token");
    assert_eq!(srv.upgrade("/?access_token=nope", &[]).status, 401, "unknown token in the query");
    assert_eq!(
        srv.upgrade("/", &[("Authorization", "Basic dG9rMTo=")]).status,
        401,
        "not a bearer"
    );
    assert!(srv.connect_with("/", &[]).is_err(), "a client library is refused too");
    assert_eq!(srv.metric("livecast_upgrades_rejected_total", &[("status", "401")]), 5.0);
    assert!(
        srv.metric("livecast_auth_duration_seconds_count", &[]) >= 2.0,
        "auth decisions are timed"
    );
}

#[test]
fn tokens_grant_their_events_only() {
    let dir = TempDir::new("auth-events");
    let srv = tokens_server(&dir);

    // Bearer header.
    let mut alice =
        srv.connect_with("/", &[("Authorization", "Bearer tok1")]).expect("tok1 by header");
    assert!(alice.subscribe("e-1").is_empty());
    let err = alice.expect_error(
        Message::text(json!({"type": "subscribe", "eventId": "e-2"}).to_string()),
        "forbidden",
    );
    assert_eq!(err["eventId"], "e-2", "{err}");
    // Still open, still subscribed to e-1 only.
    alice.unsubscribe("e-1");
    assert!(alice.subscribe("e-1").is_empty());

    // Query parameter; "*" allows every event.
    let mut bob = srv.connect_with("/?access_token=tok2", &[]).expect("tok2 by query");
    assert!(bob.subscribe("e-1").is_empty());
    assert!(bob.subscribe("anything-at-all").is_empty());

    let conns = srv.wait_connections(2);
    let mut users: Vec<&str> = conns.iter().map(|c| c["user"].as_str().expect("user")).collect();
    users.sort_unstable();
    assert_eq!(users, ["alice", "bob"]);

    // A forbidden subscribe leaks nothing: only e-1's position reaches alice.
    srv.ingest_ok(&json!([
        crate::support::pos("e-2", "d-1", 0),
        crate::support::pos("e-1", "d-1", 1)
    ]));
    assert_eq!(alice.recv_position()["eventId"], "e-1");
    let text = srv.metrics();
    assert!(metric(&text, "livecast_authz_duration_seconds_count", &[]) >= 4.0);
}

#[test]
fn auth_check_answers_for_the_same_credentials() {
    let dir = TempDir::new("auth-check");
    let srv = tokens_server(&dir);
    assert_eq!(srv.ws_request("/auth/check", &[("Authorization", "Bearer tok1")]).status, 204);
    assert_eq!(srv.ws_request("/auth/check?access_token=tok2", &[]).status, 204);
    assert_eq!(srv.ws_request("/auth/check", &[]).status, 401);
    assert_eq!(srv.ws_request("/auth/check", &[("Authorization", "Bearer nope")]).status, 401);
    assert_eq!(srv.ws_request("/auth/check?access_token=nope", &[]).status, 401);

    // Mode none: everyone is fine.
    let open = Server::start();
    assert_eq!(open.ws_request("/auth/check", &[]).status, 204);
    let mut c = open.connect();
    assert!(c.subscribe("any-event").is_empty());
    assert_eq!(open.wait_connections(1)[0]["user"], "anonymous");
}

#[test]
fn the_tokens_file_is_re_read_when_it_changes() {
    let dir = TempDir::new("auth-reload");
    let srv = tokens_server(&dir);
    assert_eq!(srv.upgrade("/", &[("Authorization", "Bearer tok3")]).status, 401);

    dir.write(
        "tokens.json",
        r#"{"tok2":{"user":"bob","events":["*"]},"tok3":{"user":"carol","events":["e-9"]}}"#,
    );
    wait_until(DEADLINE, "the new token tok3 to be accepted", || {
        srv.upgrade("/", &[("Authorization", "Bearer tok3")]).status == 101
    });
    wait_until(Duration::from_secs(5), "the removed token tok1 to be refused", || {
        srv.upgrade("/", &[("Authorization", "Bearer tok1")]).status == 401
    });
    let mut carol = srv.connect_with("/", &[("Authorization", "Bearer tok3")]).expect("tok3");
    assert!(carol.subscribe("e-9").is_empty());
    carol.expect_error(
        Message::text(json!({"type": "subscribe", "eventId": "e-1"}).to_string()),
        "forbidden",
    );
}

#[test]
fn origins_outside_the_allowed_list_get_403() {
    let srv = Server::with(|c| c.allowed_origins = vec!["http://good.example".into()]);
    assert_eq!(srv.upgrade("/", &[("Origin", "http://evil.example")]).status, 403);
    assert_eq!(srv.upgrade("/", &[("Origin", "http://good.example.evil.example")]).status, 403);
    assert_eq!(srv.upgrade("/", &[("Origin", "http://good.example")]).status, 101);
    assert_eq!(srv.upgrade("/", &[]).status, 101, "no Origin (not a browser)");
    let mut c = srv.connect_with("/", &[("Origin", "http://good.example")]).expect("good origin");
    assert!(c.subscribe("e-1").is_empty());
    assert_eq!(srv.metric("livecast_upgrades_rejected_total", &[("status", "403")]), 2.0);
}

#[test]
fn origin_is_checked_before_credentials() {
    // SPEC §2.1 order: limit, Origin (403), credentials (401).
    let dir = TempDir::new("auth-order");
    let file = dir.write("tokens.json", TOKENS);
    let srv = Server::with(|c| {
        c.auth_mode = livecast::AuthMode::Tokens;
        c.tokens_file = Some(file);
        c.allowed_origins = vec!["http://good.example".into()];
    });
    assert_eq!(srv.upgrade("/", &[("Origin", "http://evil.example")]).status, 403);
    assert_eq!(
        srv.upgrade("/", &[("Origin", "http://evil.example"), ("Authorization", "Bearer tok1")])
            .status,
        403
    );
    assert_eq!(srv.upgrade("/", &[("Origin", "http://good.example")]).status, 401);
    assert_eq!(
        srv.upgrade("/", &[("Origin", "http://good.example"), ("Authorization", "Bearer tok1")])
            .status,
        101
    );
}
