//! SPEC §2.3: frame-level Ping every `ping_interval`; any inbound frame
//! (Pong included) updates `lastSeenAt`; a peer silent for more than two
//! intervals is dropped and counted as `heartbeat-timeout`.

use std::time::{Duration, Instant};

use crate::support::{DEADLINE, Frame, RawEnd, RawWs, Server, wait_until};

const INTERVAL: Duration = Duration::from_millis(200);

#[test]
fn a_client_that_answers_pings_stays_connected() {
    let srv = Server::with(|c| c.ping_interval = INTERVAL);
    let mut c = srv.connect();
    let opened = srv.wait_connections(1)[0]["openedAt"].as_i64().expect("openedAt");

    // Six intervals of reading: tungstenite answers every ping with a pong.
    let pings = c.count_pings_for(INTERVAL * 6);
    assert!(pings >= 2, "only {pings} pings in {:?} with a {INTERVAL:?} interval", INTERVAL * 6);
    assert!(c.subscribe("e-1").is_empty(), "connection unusable after idling");

    let conn = &srv.wait_connections(1)[0];
    let last_seen = conn["lastSeenAt"].as_i64().expect("lastSeenAt");
    assert!(
        last_seen >= opened + 150,
        "pongs did not move lastSeenAt (openedAt {opened}, lastSeenAt {last_seen})"
    );
    assert_eq!(
        srv.metric("livecast_connections_closed_total", &[("reason", "heartbeat-timeout")]),
        0.0
    );
}

#[test]
fn a_peer_that_never_answers_is_dropped_after_two_intervals() {
    let srv = Server::with(|c| c.ping_interval = INTERVAL);
    // A healthy client alongside, which must survive.
    let mut healthy = srv.connect();
    assert!(healthy.subscribe("e-1").is_empty());

    // It reads (and so answers pings) on its own thread meanwhile.
    let pinger = crate::support::spawn("pinger", move || {
        let pings = healthy.count_pings_for(INTERVAL * 8);
        (healthy, pings)
    });

    let mut mute = RawWs::connect(srv.ws, "/");
    let t0 = Instant::now();
    let (frames, end) = mute.read_to_end(DEADLINE);
    let elapsed = t0.elapsed();
    assert!(
        matches!(end, RawEnd::Eof | RawEnd::Error(_)),
        "mute peer connection ended oddly: {end:?}"
    );
    assert!(
        frames.iter().any(|f| f.opcode == Frame::PING),
        "the mute peer was never pinged: {frames:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(300),
        "mute peer dropped after {elapsed:?}, before two {INTERVAL:?} intervals"
    );
    assert!(elapsed <= Duration::from_secs(5), "mute peer dropped only after {elapsed:?}");

    wait_until(DEADLINE, "heartbeat-timeout counted", || {
        srv.metric("livecast_connections_closed_total", &[("reason", "heartbeat-timeout")]) == 1.0
    });
    // The healthy client kept answering and is still served.
    let (mut healthy, pings) = pinger.join().expect("pinger thread");
    assert!(pings >= 3, "healthy client got {pings} pings in {:?}", INTERVAL * 8);
    assert!(healthy.subscribe("e-2").is_empty());
    assert_eq!(srv.wait_connections(1).len(), 1);
}
