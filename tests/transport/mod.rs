//! SPEC §1 (the WebSocket port answers plain HTTP with 404/426) and §2.1-§2.2
//! (connection limit incl. handshaking connections → 503, handshake timeout,
//! one named `ws-<8 hex>` thread per connection, gone when the client goes),
//! plus the thread names of SPEC §7.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::{
    Binary, Client, DEADLINE, Server, thread_names, upgrade_headers, wait_for, wait_until,
};

#[test]
fn plain_http_on_the_ws_port_is_404() {
    let srv = Server::start();
    assert_eq!(srv.ws_request("/", &[]).status, 404);
    assert_eq!(srv.ws_request("/metrics", &[]).status, 404);
}

#[test]
fn invalid_upgrade_is_426() {
    let srv = Server::start();
    let no_key: Vec<_> =
        upgrade_headers().into_iter().filter(|(k, _)| *k != "Sec-WebSocket-Key").collect();
    let r = srv.ws_request("/", &no_key);
    assert_eq!(r.status, 426, "upgrade without Sec-WebSocket-Key: {r:?}");
    // The same request with its key is a valid upgrade.
    assert_eq!(srv.upgrade("/", &[]).status, 101);
    assert!(srv.metric("livecast_upgrades_rejected_total", &[("status", "426")]) >= 1.0);
}

#[test]
fn connection_limit_counts_handshaking_connections() {
    let srv = Server::with(|c| c.max_connections = 2);
    let mut c1 = srv.connect();
    assert!(c1.subscribe("e-1").is_empty());
    // A connection that has not sent its request yet holds a slot too.
    let handshaking = TcpStream::connect(srv.ws).expect("tcp connect");
    let r = srv.upgrade("/", &[]);
    assert_eq!(r.status, 503, "third connection with a limit of 2 (one handshaking): {r:?}");

    // The slot comes back when the handshaking client leaves.
    drop(handshaking);
    let mut c2 = wait_for(DEADLINE, "a free slot after the handshaking client left", || {
        srv.connect_with("/", &[]).ok()
    });
    assert!(c2.subscribe("e-1").is_empty());
    assert_eq!(srv.upgrade("/", &[]).status, 503, "third connection with two open");
    assert!(srv.metric("livecast_upgrades_rejected_total", &[("status", "503")]) >= 2.0);
    // Open connections are unaffected by the refusals.
    assert!(c1.subscribe("e-2").is_empty());

    c1.close();
    let mut c3 =
        wait_for(DEADLINE, "a free slot after a client closed", || srv.connect_with("/", &[]).ok());
    assert!(c3.subscribe("e-1").is_empty());
}

/// Sends `prefix`, then waits for the server to drop the connection;
/// returns how long that took.
fn time_until_dropped(srv: &Server, prefix: &[u8]) -> Duration {
    let mut s = TcpStream::connect(srv.ws).expect("tcp connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let t0 = Instant::now();
    s.write_all(prefix).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) if t0.elapsed() < DEADLINE => return t0.elapsed(),
            Ok(0) | Err(_) => panic!("half-sent handshake still open after {DEADLINE:?}"),
            Ok(_) => {} // a 408 or similar answer is fine; the close is what counts
        }
    }
}

#[test]
fn half_sent_handshake_is_dropped_at_the_handshake_timeout() {
    let srv = Server::with(|c| c.handshake_timeout = Duration::from_millis(300));
    // An open connection is not subject to the handshake timeout.
    let mut open = srv.connect();
    assert!(open.subscribe("e-1").is_empty());

    let partial = time_until_dropped(&srv, b"GET / HTTP/1.1\r\n");
    assert!(
        partial >= Duration::from_millis(250) && partial <= Duration::from_secs(3),
        "half-sent handshake dropped after {partial:?} with a 300 ms timeout"
    );
    let silent = time_until_dropped(&srv, b"");
    assert!(
        silent >= Duration::from_millis(250) && silent <= Duration::from_secs(3),
        "silent connection dropped after {silent:?} with a 300 ms timeout"
    );

    // Well past the handshake timeout, the upgraded client is still served.
    assert_eq!(open.count_pings_for(Duration::from_millis(400)), 0);
    assert!(open.subscribe("e-2").is_empty());
}

/// The thread name a connection id must give (SPEC §2.2).
fn expected_thread(id: &str) -> String {
    format!("ws-{}", &id[..8])
}

#[test]
fn each_connection_runs_on_a_named_thread_that_ends_with_it() {
    let srv = Server::start();
    let mut clients: Vec<Client> = (0..3).map(|_| srv.connect()).collect();
    for c in &mut clients {
        assert!(c.subscribe("e-1").is_empty());
    }
    let conns = srv.wait_connections(3);
    let mut names = Vec::new();
    for conn in &conns {
        let id = conn["id"].as_str().expect("id");
        let name = expected_thread(id);
        assert_eq!(conn["thread"], name.as_str(), "{conn}");
        let tid = conn["tid"].as_u64().expect("tid");
        let comm = std::fs::read_to_string(format!("/proc/self/task/{tid}/comm"))
            .unwrap_or_else(|e| panic!("thread {tid} of {conn}: {e}"));
        assert_eq!(comm.trim_end(), name, "comm of tid {tid}");
        names.push(name);
    }
    let all = thread_names("/proc/self/task");
    for n in &names {
        assert_eq!(all.iter().filter(|t| *t == n).count(), 1, "thread {n} among {all:?}");
    }

    // Two leave cleanly, one just disappears: every thread must end.
    let last = clients.pop().unwrap();
    for c in clients {
        c.close();
    }
    drop(last);
    wait_until(DEADLINE, "the connection threads to end", || {
        let all = thread_names("/proc/self/task");
        names.iter().all(|n| !all.contains(n))
    });
    srv.wait_connections(0);
}

/// Waits until the binary's service threads carry their names; `names` is
/// left with the last listing.
fn wait_for_named(bin: &Binary, names: &mut Vec<String>) -> bool {
    let end = Instant::now() + DEADLINE;
    loop {
        *names = bin.thread_names();
        if ["acceptor", "broadcaster", "http"].iter().all(|s| names.iter().any(|n| n == s)) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn binary_threads_are_named_and_ws_threads_match_the_clients() {
    let bin = Binary::start(&[]);
    let ws_threads = |bin: &Binary| {
        bin.thread_names().into_iter().filter(|n| n.starts_with("ws-")).collect::<Vec<_>>()
    };
    // A new thread names itself once it runs: poll, the banner may be first.
    let mut names = Vec::new();
    let named = wait_for_named(&bin, &mut names);
    assert!(named, "no acceptor, broadcaster and http threads among {names:?}");
    assert_eq!(ws_threads(&bin), Vec::<String>::new(), "ws- threads before any client");

    let mut clients: Vec<Client> =
        (0..3).map(|_| Client::connect(bin.ws, "/", &[]).expect("connect")).collect();
    for c in &mut clients {
        assert!(c.subscribe("e-1").is_empty());
    }
    let mut threads = ws_threads(&bin);
    threads.sort();
    let body = crate::support::http_request(bin.http, "GET", "/debug/connections", &[], b"");
    let mut listed: Vec<String> = body
        .json()
        .as_array()
        .expect("array")
        .iter()
        .map(|c| c["thread"].as_str().expect("thread").to_owned())
        .collect();
    listed.sort();
    assert_eq!(threads, listed, "ws- threads vs /debug/connections");
    assert_eq!(threads.len(), 3);

    let last = clients.pop().unwrap();
    for c in clients {
        c.close();
    }
    wait_until(DEADLINE, "one ws- thread left", || ws_threads(&bin).len() == 1);
    drop(last);
    wait_until(DEADLINE, "no ws- thread left", || ws_threads(&bin).is_empty());
}
