//! SPEC §7 (`GET /debug/connections`): id, thread name and OS thread id,
//! CPU time, remote address, user, opened/last seen, subscriptions, queued
//! messages/bytes, messages sent, staleness of the last position written.

use serde_json::{Value, json};

use crate::support::{DEADLINE, Server, now_ms, pos, wait_for};

#[test]
fn debug_connections_describes_each_connection() {
    let srv = Server::start();
    assert_eq!(srv.connections(), Vec::<Value>::new());

    let before = now_ms();
    let mut c = srv.connect();
    assert!(c.subscribe("e-1").is_empty());
    assert!(c.subscribe("e-2").is_empty());

    // Counters move right after the write the client saw: poll for them.
    let conn = wait_for(DEADLINE, "messagesSent = 2", || {
        srv.wait_connections(1).pop().filter(|c| c["messagesSent"] == 2)
    });
    let id = conn["id"].as_str().unwrap_or_else(|| panic!("id: {conn}"));
    let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("id {id:?} is not a UUID: {e}"));
    assert_eq!(uuid.hyphenated().to_string(), id, "id in the usual hyphenated form");
    assert_eq!(conn["thread"], format!("ws-{}", &id[..8]));
    let tid = conn["tid"].as_u64().unwrap_or_else(|| panic!("tid: {conn}"));
    let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
        .expect("tid is a thread of this process");
    assert_eq!(comm.trim_end(), format!("ws-{}", &id[..8]));
    let cpu = conn["cpuSeconds"].as_f64().unwrap_or_else(|| panic!("cpuSeconds: {conn}"));
    assert!((0.0..60.0).contains(&cpu), "cpuSeconds {cpu}");
    assert_eq!(conn["remoteAddr"], c.local_addr.to_string());
    assert_eq!(conn["user"], "anonymous");
    let opened = conn["openedAt"].as_i64().unwrap_or_else(|| panic!("openedAt: {conn}"));
    let last_seen = conn["lastSeenAt"].as_i64().unwrap_or_else(|| panic!("lastSeenAt: {conn}"));
    let after = now_ms();
    assert!(
        before - 1000 <= opened && opened <= after,
        "openedAt {opened} not in [{before}, {after}]"
    );
    assert!(opened <= last_seen && last_seen <= after, "lastSeenAt {last_seen} (opened {opened})");
    let mut subs: Vec<&str> = conn["subscriptions"]
        .as_array()
        .expect("subscriptions")
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    subs.sort_unstable();
    assert_eq!(subs, ["e-1", "e-2"]);
    assert!(conn["queuedMessages"].as_u64().is_some(), "queuedMessages: {conn}");
    assert!(conn["queuedBytes"].as_u64().is_some(), "queuedBytes: {conn}");
    assert_eq!(conn["stalenessMs"], Value::Null, "no position written yet: {conn}");

    // A position stamped 5 s ago: staleness = write time − ts ≥ 5000 ms.
    let mut p = pos("e-1", "d-1", 0);
    p["ts"] = json!(now_ms() - 5000);
    srv.ingest_ok(&p);
    c.recv_position();
    let conn = wait_for(DEADLINE, "messagesSent = 3", || {
        srv.wait_connections(1).pop().filter(|c| c["messagesSent"] == 3)
    });
    let stale = conn["stalenessMs"].as_f64().unwrap_or_else(|| panic!("stalenessMs: {conn}"));
    assert!((4900.0..60_000.0).contains(&stale), "stalenessMs {stale} for a 5 s old position");
    assert_eq!(conn["queuedMessages"], 0, "everything was read: {conn}");
    assert_eq!(conn["queuedBytes"], 0, "everything was read: {conn}");

    // Unsubscribing shows; a second client is listed on its own.
    c.unsubscribe("e-2");
    let mut c2 = srv.connect();
    assert!(c2.subscribe("e-3").is_empty());
    let conns = srv.wait_connections(2);
    let mine = conns.iter().find(|x| x["id"] == id).expect("first connection still listed");
    assert_eq!(mine["subscriptions"], json!(["e-1"]));
    let other = conns.iter().find(|x| x["id"] != id).expect("second connection");
    assert_eq!(other["subscriptions"], json!(["e-3"]));
    assert_eq!(other["remoteAddr"], c2.local_addr.to_string());
    assert_ne!(other["tid"], mine["tid"]);
}

/// Issue 12 row 13: behind a trusted proxy, the client is the one its
/// `X-Forwarded-For` names; anyone else's `X-Forwarded-For` is ignored.
#[test]
fn debug_connections_shows_the_forwarded_client_of_a_trusted_proxy_only() {
    use crate::support::Client;
    let forwarded = [("X-Forwarded-For", "198.51.100.4, 203.0.113.7")];

    // Behind a proxy the port is exposed: /debug needs DEBUG_TOKEN.
    let srv = Server::with(|c| {
        c.trusted_proxies = livecast::TrustedProxies::parse("127.0.0.1").unwrap();
        c.debug_token = Some(livecast::Secret::new("dbg"));
    });
    let _c = Client::connect(srv.ws, "/", &forwarded).expect("connect through the proxy");
    let auth = [("Authorization", "Bearer dbg")];
    let conns = crate::support::wait_for(crate::support::DEADLINE, "the connection listed", || {
        let r = crate::support::http_request(srv.http, "GET", "/debug/connections", &auth, b"");
        let list = r.json().as_array().cloned().unwrap_or_default();
        (list.len() == 1).then_some(list)
    });
    assert_eq!(conns[0]["remoteAddr"], "203.0.113.7", "{conns:?}");

    let untrusting = Server::start();
    let c = Client::connect(untrusting.ws, "/", &forwarded).expect("connect directly");
    let conns = untrusting.wait_connections(1);
    assert_eq!(conns[0]["remoteAddr"], c.local_addr.to_string(), "{conns:?}");
}
