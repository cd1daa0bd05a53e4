//! Revalidation covers subscriptions: an event taken off a token's list
//! ends that subscription with `unsubscribed` (`"reason":"forbidden"`),
//! and nothing more of that event follows.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{DEADLINE, RecvError, Server, TempDir, pos, spawn};

#[test]
fn a_revalidated_session_loses_the_subscriptions_it_no_longer_may_see() {
    let dir = TempDir::new("answers-revalidate");
    let file = dir.write(
        "tokens.json",
        r#"{"tok1":{"user":"alice","events":["e-1","e-2"]},"tok2":{"user":"bob","events":["*"]}}"#,
    );
    let srv = Arc::new(Server::with(|c| {
        c.auth_mode = livecast::AuthMode::Tokens;
        c.tokens_file = Some(file);
        c.auth_revalidate = Duration::from_millis(200);
    }));
    let mut alice = srv.connect_with("/", &[("Authorization", "Bearer tok1")]).expect("tok1");
    assert!(alice.subscribe("e-1").is_empty());
    assert!(alice.subscribe("e-2").is_empty());
    let mut bob = srv.connect_with("/", &[("Authorization", "Bearer tok2")]).expect("tok2");
    assert!(bob.subscribe("e-2").is_empty());

    // e-2 keeps moving while its grant is withdrawn.
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (srv, stop) = (Arc::clone(&srv), Arc::clone(&stop));
        spawn("feed-e2", move || {
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                srv.ingest_ok(&json!([pos("e-2", "d-2", seq), pos("e-1", "d-1", seq)]));
                seq += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            seq
        })
    };
    // Alice sees e-2 before the change.
    let first = alice.recv_json();
    assert_eq!(first["type"], "position", "{first}");
    dir.write(
        "tokens.json",
        r#"{"tok1":{"user":"alice","events":["e-1"]},"tok2":{"user":"bob","events":["*"]}}"#,
    );
    let end = Instant::now() + DEADLINE;
    let unsubscribed = loop {
        assert!(Instant::now() < end, "no unsubscribed for e-2 after revalidation");
        let v = alice.recv_json();
        if v["type"] == "unsubscribed" {
            break v;
        }
        assert_eq!(v["type"], "position", "{v}");
    };
    assert_eq!(unsubscribed, json!({"type":"unsubscribed","eventId":"e-2","reason":"forbidden"}));
    // Afterwards: e-1 still flows, e-2 never again, for several more
    // revalidation periods.
    let mut e1 = 0;
    let quiet = Instant::now() + Duration::from_secs(1);
    while Instant::now() < quiet {
        match alice.next_data(Duration::from_millis(100)) {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                assert_eq!(v["eventId"], "e-1", "after its unsubscribed: {v}");
                assert_eq!(v["type"], "position", "{v}");
                e1 += 1;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(RecvError::Timeout) => {}
            Err(RecvError::Closed(e)) => panic!("alice was closed: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    feeder.join().expect("feeder");
    assert!(e1 > 0, "e-1 kept flowing");
    // Bob (everything allowed) was not touched; alice's connection shows
    // e-1 only.
    let v = bob.recv_json();
    assert_eq!((v["type"].as_str(), v["eventId"].as_str()), (Some("position"), Some("e-2")));
    let conns = srv.connections();
    let alice_conn = conns.iter().find(|c| c["user"] == "alice").expect("alice");
    assert_eq!(alice_conn["subscriptions"], json!(["e-1"]), "{alice_conn}");
    // She may not subscribe again either.
    alice.expect_error(
        tungstenite::Message::text(json!({"type":"subscribe","eventId":"e-2"}).to_string()),
        "forbidden",
    );
}
