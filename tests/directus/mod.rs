//! SPEC §5 (`LIVE_AUTH_MODE=directus`), §6 (the device→event map from
//! Directus) and §2 (close 4401, `GET /auth/check`), against [`Fake`]: a
//! real HTTP/1.1 server on a free port that answers `/users/me`,
//! `/items/events/<id>` and `/items/devices` the way Directus 10.13 and 11.3
//! do (status codes and error codes as SPEC §5 records them), with
//! sessions, tokens, per-user event grants, per-route delays and failures,
//! revocation, and a record of every request as it arrived on the wire.
//!
//! Directus timeouts are generous (5 s) where an answer is expected, so
//! that a loaded CI machine does not turn a slow answer into a 503, and
//! short (500 ms) where a test waits for one to expire; every wait is a
//! deadline loop, and a hanging route is released when its fake drops.

use std::collections::{HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use livecast::{AuthMode, Config, Secret};
use parking_lot::{Condvar, Mutex};
use serde_json::{Value, json};
use tungstenite::Message;

use crate::support::{
    Client, DEADLINE, Server, http_request, pos, seq_of, spawn, upgrade_headers, wait_until,
};

// ---------------------------------------------------------------------------
// The fake Directus

/// The routes livecast calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Route {
    /// `GET /users/me`
    Me,
    /// `GET /items/events/<id>`
    Events,
    /// `GET /items/devices`
    Devices,
}

/// One request as it reached the fake.
#[derive(Debug, Clone)]
struct Recorded {
    route: Option<Route>,
    /// The raw request target, exactly as sent (path and query).
    target: String,
    authorization: Option<String>,
    cookie: Option<String>,
    /// What the fake answered.
    status: u16,
}

#[derive(Debug, Default)]
struct Data {
    /// `directus_session_token` cookie → user id.
    sessions: HashMap<String, String>,
    /// Bearer (static or access) token → user id.
    tokens: HashMap<String, String>,
    /// User id → the event ids it may read.
    grants: HashMap<String, HashSet<String>>,
    /// Users whose role may read the devices collection.
    device_readers: HashSet<String>,
    /// The devices collection's items.
    devices: Value,
    /// Per route: hold the answer this long.
    delays: HashMap<Route, Duration>,
    /// Per route: answer this status (500) instead.
    failures: HashMap<Route, u16>,
    requests: Vec<Recorded>,
}

#[derive(Debug, Default)]
struct State {
    data: Mutex<Data>,
    /// Wakes delayed answers when the fake stops.
    stopping: AtomicBool,
    wake: Condvar,
    wake_lock: Mutex<()>,
}

/// A Directus stand-in on `127.0.0.1:<free port>`; stops when dropped.
#[derive(Debug)]
struct Fake {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl Fake {
    fn start() -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake directus");
        let addr = listener.local_addr().expect("fake addr");
        let state = Arc::new(State::default());
        let st = Arc::clone(&state);
        let acceptor = spawn("fake-directus", move || {
            for stream in listener.incoming() {
                if st.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let st = Arc::clone(&st);
                spawn("fake-directus-c", move || serve(&st, stream));
            }
        });
        Fake { addr, state, acceptor: Some(acceptor) }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn session(&self, cookie: &str, user: &str) {
        self.state.data.lock().sessions.insert(cookie.into(), user.into());
    }

    fn token(&self, token: &str, user: &str) {
        self.state.data.lock().tokens.insert(token.into(), user.into());
    }

    fn grant(&self, user: &str, events: &[&str]) {
        let mut data = self.state.data.lock();
        let set = data.grants.entry(user.into()).or_default();
        set.extend(events.iter().map(|e| (*e).to_owned()));
    }

    /// Logs a session or token out: Directus answers 401 from now on.
    fn revoke(&self, secret: &str) {
        let mut data = self.state.data.lock();
        data.sessions.remove(secret);
        data.tokens.remove(secret);
    }

    fn set_devices(&self, devices: Value) {
        self.state.data.lock().devices = devices;
    }

    fn device_reader(&self, user: &str) {
        self.state.data.lock().device_readers.insert(user.into());
    }

    fn delay(&self, route: Route, delay: Option<Duration>) {
        let mut data = self.state.data.lock();
        match delay {
            Some(d) => data.delays.insert(route, d),
            None => data.delays.remove(&route),
        };
    }

    fn fail(&self, route: Route, status: Option<u16>) {
        let mut data = self.state.data.lock();
        match status {
            Some(s) => data.failures.insert(route, s),
            None => data.failures.remove(&route),
        };
    }

    /// Requests to `route` that have arrived (answered or still held).
    fn calls(&self, route: Route) -> usize {
        self.requests(route).len()
    }

    fn requests(&self, route: Route) -> Vec<Recorded> {
        let data = self.state.data.lock();
        data.requests.iter().filter(|r| r.route == Some(route)).cloned().collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.state.stopping.store(true, Ordering::SeqCst);
        {
            let _guard = self.state.wake_lock.lock();
            self.state.wake.notify_all();
        }
        // Wake the blocking accept (tiny-http's trick).
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
    }
}

/// One keep-alive connection: requests in, answers out, until the peer
/// hangs up or the fake stops.
fn serve(state: &State, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(50)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let head = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = buf.drain(..i + 4).collect();
                break String::from_utf8_lossy(&head).into_owned();
            }
            if state.stopping.load(Ordering::SeqCst) {
                return;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(_) => return,
            }
        };
        let (status, body, delay) = answer(state, &head);
        if let Some(delay) = delay {
            let end = Instant::now() + delay;
            let mut guard = state.wake_lock.lock();
            while !state.stopping.load(Ordering::SeqCst) && Instant::now() < end {
                state.wake.wait_until(&mut guard, end);
            }
        }
        if state.stopping.load(Ordering::SeqCst) {
            return;
        }
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// Directus's error body.
fn errors(message: &str, code: &str) -> String {
    json!({"errors": [{"message": message, "extensions": {"code": code}}]}).to_string()
}

/// Whether `token` looks like a Directus JWT (three base64url parts, the
/// header starting `eyJ`): Directus answers 403 `INVALID_TOKEN` when such a
/// token's signature does not verify, 401 for anything else it does not know.
fn jwt_shaped(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3 && parts[0].starts_with("eyJ") && parts.iter().all(|p| !p.is_empty())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let hex = b.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if b[i] == b'%'
            && let Some(Ok(v)) = hex.map(|h| u8::from_str_radix(h, 16))
        {
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decides the answer to one request head and records it: (status, body,
/// how long to hold the answer).
fn answer(state: &State, head: &str) -> (u16, String, Option<Duration>) {
    let mut lines = head.split("\r\n");
    let target = lines.next().and_then(|l| l.split(' ').nth(1)).unwrap_or("").to_owned();
    let mut authorization = None;
    let mut cookie = None;
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(v.trim().to_owned()),
                "cookie" => cookie = Some(v.trim().to_owned()),
                _ => {}
            }
        }
    }
    let path = target.split('?').next().unwrap_or("");
    let route = if path == "/users/me" {
        Some(Route::Me)
    } else if path.starts_with("/items/events/") {
        Some(Route::Events)
    } else if path == "/items/devices" {
        Some(Route::Devices)
    } else {
        None
    };

    let mut data = state.data.lock();
    // Directus reads the bearer token first, then the session cookie.
    let bearer = authorization.as_deref().and_then(|a| a.strip_prefix("Bearer "));
    let session = cookie.as_deref().and_then(|c| {
        c.split(';').find_map(|kv| kv.trim().strip_prefix("directus_session_token="))
    });
    let who: Result<Option<String>, (u16, String)> = match (bearer, session) {
        (Some(t), _) | (None, Some(t)) => {
            let known = if bearer.is_some() { data.tokens.get(t) } else { data.sessions.get(t) };
            match known {
                Some(user) => Ok(Some(user.clone())),
                None if jwt_shaped(t) => Err((403, errors("Invalid token", "INVALID_TOKEN"))),
                None => Err((401, errors("Invalid user credentials.", "INVALID_CREDENTIALS"))),
            }
        }
        (None, None) => Ok(None),
    };
    let forbidden = || (403, errors("You don't have permission to access this.", "FORBIDDEN"));
    let (status, body) = match (route, route.and_then(|r| data.failures.get(&r))) {
        (_, Some(&status)) => {
            (status, errors("An unexpected error occurred.", "INTERNAL_SERVER_ERROR"))
        }
        (None, None) => (404, errors("Route doesn't exist.", "ROUTE_NOT_FOUND")),
        (Some(Route::Me), None) => match who {
            Ok(Some(user)) => (200, json!({"data": {"id": user}}).to_string()),
            Ok(None) => (401, errors("Invalid user credentials.", "INVALID_CREDENTIALS")),
            Err(e) => e,
        },
        (Some(Route::Events), None) => {
            let id = percent_decode(&path["/items/events/".len()..]);
            match who {
                Ok(Some(user)) if data.grants.get(&user).is_some_and(|g| g.contains(&id)) => {
                    (200, json!({"data": {"id": id}}).to_string())
                }
                // Not allowed and nonexistent look the same.
                Ok(_) => forbidden(),
                Err(e) => e,
            }
        }
        (Some(Route::Devices), None) => match who {
            Ok(Some(user)) if data.device_readers.contains(&user) => {
                (200, json!({"data": data.devices}).to_string())
            }
            Ok(_) => forbidden(),
            Err(e) => e,
        },
    };
    let delay = route.and_then(|r| data.delays.get(&r).copied());
    data.requests.push(Recorded { route, target, authorization, cookie, status });
    (status, body, delay)
}

/// A base URL where nothing listens: Directus is down.
fn dead_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

// ---------------------------------------------------------------------------
// Helpers

/// The Directus timeout of tests that wait for it to expire.
const SHORT: Duration = Duration::from_millis(500);

/// The Directus timeout of tests that expect answers.
const GENEROUS: Duration = Duration::from_secs(5);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A livecast in mode `directus` against `url`.
fn directus_server(url: &str, f: impl FnOnce(&mut Config)) -> Server {
    let url = url.to_owned();
    Server::with(move |c| {
        c.auth_mode = AuthMode::Directus;
        c.directus_base_url = Some(url);
        c.directus_auth_timeout = GENEROUS;
        c.directus_authz_timeout = GENEROUS;
        f(c);
    })
}

fn cookie(session: &str) -> (&'static str, String) {
    ("Cookie", format!("directus_session_token={session}"))
}

/// The status of an upgrade request with `headers` (from any thread).
fn upgrade_status(ws: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut all = upgrade_headers();
    all.extend_from_slice(headers);
    http_request(ws, "GET", path, &all, b"").status
}

fn subscribe_msg(event: &str) -> Message {
    Message::text(json!({"type": "subscribe", "eventId": event}).to_string())
}

/// A position without `eventId`: routed by the device map.
fn unrouted(device: &str, seq: u64) -> Value {
    let mut p = pos("ignored", device, seq);
    p.as_object_mut().expect("object").remove("eventId");
    p
}

// ---------------------------------------------------------------------------
// 1. Authentication at the upgrade

#[test]
fn cookie_bearer_and_query_credentials_open_as_the_directus_user() {
    let fake = Fake::start();
    fake.session("sess-alice", "u-alice");
    fake.token("tok-bob", "u-bob");
    fake.token("tok-carol", "u-carol");
    let srv = directus_server(&fake.url(), |_| {});

    let _alice = srv
        .connect_with("/", &[("Cookie", "theme=dark; directus_session_token=sess-alice; x=1")])
        .expect("session cookie");
    let _bob = srv.connect_with("/", &[("Authorization", "Bearer tok-bob")]).expect("bearer");
    let _carol = srv.connect_with("/?access_token=tok-carol", &[]).expect("query token");

    let conns = srv.wait_connections(3);
    let mut users: Vec<&str> = conns.iter().map(|c| c["user"].as_str().expect("user")).collect();
    users.sort_unstable();
    assert_eq!(users, ["u-alice", "u-bob", "u-carol"], "the user is the Directus user id");

    let me = fake.requests(Route::Me);
    assert_eq!(me.len(), 3, "{me:?}");
    for r in &me {
        assert_eq!(r.target, "/users/me?fields=id", "the query token never goes in the URL");
    }
    // Only the session cookie is forwarded, as a cookie.
    assert_eq!(me[0].cookie.as_deref(), Some("directus_session_token=sess-alice"));
    assert_eq!(me[0].authorization, None);
    assert_eq!(me[1].authorization.as_deref(), Some("Bearer tok-bob"));
    assert_eq!(me[1].cookie, None);
    // A query token travels as a header.
    assert_eq!(me[2].authorization.as_deref(), Some("Bearer tok-carol"));
    assert_eq!(srv.metric("livecast_auth_duration_seconds_count", &[("outcome", "ok")]), 3.0);
}

#[test]
fn unknown_credentials_get_401_and_an_unreachable_directus_503() {
    let fake = Fake::start();
    fake.session("sess-a", "u-a");
    let srv = directus_server(&fake.url(), |_| {});

    assert_eq!(upgrade_status(srv.ws, "/", &[]), 401, "no credential");
    assert_eq!(fake.calls(Route::Me), 0, "no credential: Directus is not asked");

    let bad_cookie = cookie("sess-unknown");
    assert_eq!(upgrade_status(srv.ws, "/", &[(bad_cookie.0, &bad_cookie.1)]), 401);
    assert_eq!(upgrade_status(srv.ws, "/", &[("Authorization", "Bearer nope")]), 401);
    let forged = "Bearer eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpZCI6InUtYSJ9.forged";
    assert_eq!(upgrade_status(srv.ws, "/", &[("Authorization", forged)]), 401);
    let statuses: Vec<u16> = fake.requests(Route::Me).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 401, 403], "Directus's 401 and 403 both mean not authenticated");

    // A 5xx is an outage, not a denial: 503 with Retry-After.
    fake.fail(Route::Me, Some(500));
    let good = cookie("sess-a");
    let r = srv.upgrade("/", &[(good.0, &good.1)]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("Retry-After").is_some(), "503 says when to retry");
    fake.fail(Route::Me, None);
    assert_eq!(upgrade_status(srv.ws, "/", &[(good.0, &good.1)]), 101, "errors are not cached");

    // Nothing listening at DIRECTUS_BASE_URL.
    let down = directus_server(&dead_url(), |_| {});
    let r = down.upgrade("/", &[(good.0, &good.1)]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("Retry-After").is_some());
    assert_eq!(down.metric("livecast_auth_duration_seconds_count", &[("outcome", "error")]), 1.0);
    assert_eq!(srv.metric("livecast_upgrades_rejected_total", &[("status", "401")]), 4.0);
    assert_eq!(srv.metric("livecast_upgrades_rejected_total", &[("status", "503")]), 1.0);
}

#[test]
fn a_hanging_directus_delays_only_the_connections_waiting_on_it() {
    let fake = Fake::start();
    fake.session("sess-a", "u-a");
    fake.session("sess-b", "u-b");
    fake.grant("u-a", &["e-1"]);
    let timeout = ms(1000);
    let srv = directus_server(&fake.url(), |c| c.directus_auth_timeout = timeout);
    let a_cookie = cookie("sess-a");
    let mut a = srv.connect_with("/", &[(a_cookie.0, &a_cookie.1)]).expect("a connects");
    assert!(a.subscribe("e-1").is_empty());

    // From now on /users/me hangs (until the fake is dropped).
    fake.delay(Route::Me, Some(Duration::from_secs(60)));
    let ws = srv.ws;
    let started = Instant::now();
    let slow = spawn("slow-upgrade", move || {
        let b = cookie("sess-b");
        (upgrade_status(ws, "/", &[(b.0, &b.1)]), started.elapsed())
    });
    wait_until(DEADLINE, "the slow /users/me to reach Directus", || fake.calls(Route::Me) == 2);
    for seq in 0..3 {
        srv.ingest_ok(&pos("e-1", "d-1", seq));
        assert_eq!(seq_of(&a.recv_position()), seq);
    }
    assert!(!slow.is_finished(), "positions flowed while the upgrade was still waiting");

    let (status, took) = slow.join().expect("slow upgrade thread");
    assert_eq!(status, 503, "a timed-out Directus is unavailable, not a denial");
    assert!(took >= timeout, "ended after the timeout ({took:?})");
    assert!(took < timeout + ms(1500), "ended near the timeout ({took:?})");
    assert_eq!(srv.metric("livecast_auth_duration_seconds_count", &[("outcome", "timeout")]), 1.0);
}

// ---------------------------------------------------------------------------
// 2. Authorization per subscribe

#[test]
fn subscribes_are_forbidden_or_authz_unavailable() {
    let fake = Fake::start();
    fake.session("sess-a", "u-a");
    fake.grant("u-a", &["e-1", "e-3"]);
    let srv = directus_server(&fake.url(), |c| c.directus_authz_timeout = SHORT);
    let c = cookie("sess-a");
    let mut a = srv.connect_with("/", &[(c.0, &c.1)]).expect("connect");

    assert!(a.subscribe("e-1").is_empty());
    let err = a.expect_error(subscribe_msg("e-2"), "forbidden");
    assert_eq!(err["eventId"], "e-2");
    a.expect_error(subscribe_msg("no-such-event"), "forbidden");
    let events = fake.requests(Route::Events);
    assert_eq!(events[0].target, "/items/events/e-1?fields=id");
    assert_eq!(events[0].cookie.as_deref(), Some("directus_session_token=sess-a"));
    assert_eq!(events.iter().map(|r| r.status).collect::<Vec<_>>(), [200, 403, 403]);

    // A hanging Directus: authz-unavailable after the authz timeout.
    fake.delay(Route::Events, Some(Duration::from_secs(60)));
    let started = Instant::now();
    a.expect_error(subscribe_msg("e-3"), "authz-unavailable");
    let took = started.elapsed();
    assert!(took >= SHORT && took < SHORT + ms(1500), "{took:?}");
    fake.delay(Route::Events, None);

    // A failing one: authz-unavailable, and not cached.
    fake.fail(Route::Events, Some(503));
    a.expect_error(subscribe_msg("e-3"), "authz-unavailable");
    fake.fail(Route::Events, None);
    assert!(a.subscribe("e-3").is_empty(), "asked again once Directus answers");
    let e3 = fake.requests(Route::Events).iter().filter(|r| r.target.contains("e-3")).count();
    assert_eq!(e3, 3, "failures are not cached");

    // The connection stayed open and subscribed throughout.
    srv.ingest_ok(&pos("e-1", "d-1", 7));
    assert_eq!(seq_of(&a.recv_position()), 7);
    let text = srv.metrics();
    let count = |outcome| {
        crate::support::metric(
            &text,
            "livecast_authz_duration_seconds_count",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(
        (count("ok"), count("denied"), count("timeout"), count("error")),
        (2.0, 2.0, 1.0, 1.0)
    );
}

#[test]
fn event_ids_reach_directus_as_one_encoded_path_segment() {
    let fake = Fake::start();
    fake.token("tok", "u-a");
    let tricky = ["a/b", "x?y#z", "..", "100%", "../../users/me", "@evil.example:80/x", "é t"];
    fake.grant("u-a", &tricky);
    let srv = directus_server(&fake.url(), |_| {});
    let mut a = srv.connect_with("/", &[("Authorization", "Bearer tok")]).expect("connect");
    for id in tricky {
        // Allowed: Directus decoded exactly the id the client sent.
        assert!(a.subscribe(id).is_empty(), "{id}");
    }
    a.expect_error(subscribe_msg("e/../../users/me"), "forbidden");
    let targets: Vec<String> = fake.requests(Route::Events).into_iter().map(|r| r.target).collect();
    assert_eq!(
        targets,
        [
            "/items/events/a%2Fb?fields=id",
            "/items/events/x%3Fy%23z?fields=id",
            "/items/events/%2E%2E?fields=id",
            "/items/events/100%25?fields=id",
            "/items/events/..%2F..%2Fusers%2Fme?fields=id",
            "/items/events/%40evil.example%3A80%2Fx?fields=id",
            "/items/events/%C3%A9%20t?fields=id",
            "/items/events/e%2F..%2F..%2Fusers%2Fme?fields=id",
        ]
    );
    assert_eq!(fake.calls(Route::Me), 1, "no event id reached another route");
}

// ---------------------------------------------------------------------------
// 3. Caching

#[test]
fn a_reconnect_storm_with_one_session_makes_one_directus_call() {
    let fake = Fake::start();
    fake.session("sess-a", "u-a");
    fake.grant("u-a", &["e-1"]);
    // Slow enough that the storm's lookups overlap.
    fake.delay(Route::Me, Some(ms(200)));
    const N: usize = 12;
    // The default TTL (30 s) outlives the test. The storm comes from one
    // address, all in the handshake at once: lift the per-address limit.
    let srv = directus_server(&fake.url(), |c| c.max_pending_per_ip = N);
    let barrier = Arc::new(std::sync::Barrier::new(N));
    let ws = srv.ws;
    let storm: Vec<_> = (0..N)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            spawn("storm", move || {
                barrier.wait();
                let c = cookie("sess-a");
                let mut client = Client::connect(ws, "/", &[(c.0, &c.1)]).expect("storm connect");
                assert!(client.subscribe("e-1").is_empty());
                client
            })
        })
        .collect();
    let clients: Vec<Client> = storm.into_iter().map(|t| t.join().expect("storm")).collect();
    assert_eq!(clients.len(), N);
    assert_eq!(fake.calls(Route::Me), 1, "{N} upgrades, one /users/me");
    assert_eq!(fake.calls(Route::Events), 1, "{N} subscribes, one /items/events/e-1");
    let hits = (N - 1) as f64;
    assert_eq!(srv.metric("livecast_auth_cache_hits_total", &[("kind", "auth")]), hits);
    assert_eq!(srv.metric("livecast_auth_cache_hits_total", &[("kind", "authz")]), hits);
    assert_eq!(srv.metric("livecast_auth_duration_seconds_count", &[("outcome", "cached")]), hits);
    assert_eq!(srv.metric("livecast_authz_duration_seconds_count", &[("outcome", "cached")]), hits);
    fake.delay(Route::Me, None);

    // Denials are cached (briefly) too.
    let bad = cookie("sess-bad");
    assert_eq!(upgrade_status(ws, "/", &[(bad.0, &bad.1)]), 401);
    assert_eq!(upgrade_status(ws, "/", &[(bad.0, &bad.1)]), 401);
    assert_eq!(fake.calls(Route::Me), 2, "one lookup for two denied upgrades");

    // Failures are not.
    fake.fail(Route::Me, Some(500));
    assert_eq!(upgrade_status(ws, "/", &[("Authorization", "Bearer t")]), 503);
    assert_eq!(upgrade_status(ws, "/", &[("Authorization", "Bearer t")]), 503);
    assert_eq!(fake.calls(Route::Me), 4, "each failure is asked again");
}

#[test]
fn a_zero_ttl_asks_directus_every_time() {
    let fake = Fake::start();
    fake.token("tok", "u-a");
    let srv = directus_server(&fake.url(), |c| c.auth_cache_ttl = Duration::ZERO);
    for _ in 0..3 {
        assert_eq!(upgrade_status(srv.ws, "/", &[("Authorization", "Bearer tok")]), 101);
    }
    assert_eq!(fake.calls(Route::Me), 3);
}

// ---------------------------------------------------------------------------
// 4. Revalidation and /auth/check

#[test]
fn revalidation_closes_a_revoked_session_with_4401_and_an_outage_closes_nobody() {
    let fake = Fake::start();
    fake.session("sess-a", "u-a");
    fake.session("sess-b", "u-b");
    fake.grant("u-a", &["e-1"]);
    fake.grant("u-b", &["e-1"]);
    let srv = directus_server(&fake.url(), |c| {
        c.auth_revalidate = ms(150);
        c.auth_cache_ttl = ms(50);
    });
    let (ca, cb) = (cookie("sess-a"), cookie("sess-b"));
    let mut a = srv.connect_with("/", &[(ca.0, &ca.1)]).expect("a");
    let mut b = srv.connect_with("/", &[(cb.0, &cb.1)]).expect("b");
    a.subscribe("e-1");
    b.subscribe("e-1");

    // An outage: every revalidation fails, nobody is closed.
    fake.fail(Route::Me, Some(500));
    let before = fake.calls(Route::Me);
    wait_until(DEADLINE, "two revalidation rounds during the outage", || {
        fake.calls(Route::Me) >= before + 4
    });
    srv.ingest_ok(&pos("e-1", "d-1", 1));
    assert_eq!(seq_of(&a.recv_position()), 1, "a still open");
    assert_eq!(seq_of(&b.recv_position()), 1, "b still open");

    // Directus is back and sess-a was logged out: a gets 4401, b stays.
    fake.fail(Route::Me, None);
    fake.revoke("sess-a");
    let close = a.expect_close(DEADLINE);
    assert_eq!(u16::from(close.code), 4401);
    assert_eq!(close.reason.as_str(), "session no longer valid");
    srv.ingest_ok(&pos("e-1", "d-1", 2));
    assert_eq!(seq_of(&b.recv_position()), 2, "b still open");
    srv.expect_metric("livecast_revalidation_closes_total", &[], 1.0);
    srv.expect_metric("livecast_connections_closed_total", &[("reason", "revoked")], 1.0);
}

#[test]
fn auth_check_answers_204_401_or_503() {
    let fake = Fake::start();
    fake.session("sess-a", "u-a");
    let srv = directus_server(&fake.url(), |_| {});
    let good = cookie("sess-a");
    let bad = cookie("sess-gone");
    assert_eq!(srv.ws_request("/auth/check", &[(good.0, &good.1)]).status, 204);
    assert_eq!(srv.ws_request("/auth/check", &[(bad.0, &bad.1)]).status, 401);
    assert_eq!(srv.ws_request("/auth/check", &[]).status, 401);
    assert_eq!(srv.ws_request("/auth/check?access_token=nope", &[]).status, 401);

    fake.fail(Route::Me, Some(502));
    let other = cookie("sess-other");
    let r = srv.ws_request("/auth/check", &[(other.0, &other.1)]);
    assert_eq!(r.status, 503, "Directus failing: retry, do not log in again");
    assert!(r.header("Retry-After").is_some());

    let down = directus_server(&dead_url(), |_| {});
    assert_eq!(down.ws_request("/auth/check", &[(good.0, &good.1)]).status, 503);
}

// ---------------------------------------------------------------------------
// 5. The Origin rule

#[test]
fn cookie_credentials_need_an_origin_on_the_same_host() {
    let fake = Fake::start();
    fake.session("sess-a", "u-a");
    fake.token("tok", "u-a");
    let srv = directus_server(&fake.url(), |_| {});
    let c = cookie("sess-a");
    let cookie_from =
        |origin: &str| upgrade_status(srv.ws, "/", &[(c.0, &c.1), ("Origin", origin)]);

    assert_eq!(cookie_from("http://evil.example"), 403, "cross-site WebSocket hijacking");
    assert_eq!(cookie_from("http://127.0.0.1.evil.example"), 403);
    assert_eq!(fake.calls(Route::Me), 0, "the Origin is checked before Directus is asked");
    // The dashboard on the HTTP port: same host, another port.
    assert_eq!(cookie_from(&format!("http://127.0.0.1:{}", srv.http.port())), 101);
    // A bearer token is not attached by the browser: no Origin rule.
    let bearer = [("Authorization", "Bearer tok"), ("Origin", "http://evil.example")];
    assert_eq!(upgrade_status(srv.ws, "/", &bearer), 101);
    assert_eq!(srv.metric("livecast_upgrades_rejected_total", &[("status", "403")]), 2.0);

    // With LIVE_WS_ALLOWED_ORIGINS, every credential needs a listed Origin.
    let listed = directus_server(&fake.url(), |c| {
        c.allowed_origins = vec!["http://dash.example".to_owned()];
    });
    assert_eq!(upgrade_status(listed.ws, "/", &bearer), 403);
    let ok = [(c.0, c.1.as_str()), ("Origin", "http://dash.example")];
    assert_eq!(upgrade_status(listed.ws, "/", &ok), 101);
}

// ---------------------------------------------------------------------------
// 6. The device→event map from Directus

#[test]
fn the_device_map_comes_from_directus_and_moves_devices_between_events() {
    let fake = Fake::start();
    fake.token("static-token", "u-map");
    fake.device_reader("u-map");
    fake.token("tok", "u-a");
    fake.grant("u-a", &["e-1", "2"]);
    fake.set_devices(json!([
        {"id": "d-7", "event": "e-1"},
        {"id": 8, "event": {"id": 2, "name": "expanded relation"}},
        {"id": "d-9", "event": null},
    ]));
    let srv = directus_server(&fake.url(), |c| {
        c.directus_token = Some(Secret::new("static-token"));
        c.device_event_refresh = ms(100);
    });
    srv.expect_metric("livecast_device_map_size", &[], 2.0);
    let devices = fake.requests(Route::Devices);
    assert_eq!(devices[0].target, "/items/devices?fields=id,event&limit=-1");
    assert_eq!(devices[0].authorization.as_deref(), Some("Bearer static-token"));

    let bearer = [("Authorization", "Bearer tok")];
    let mut one = srv.connect_with("/", &bearer).expect("connect");
    let mut two = srv.connect_with("/", &bearer).expect("connect");
    assert!(one.subscribe("e-1").is_empty());
    assert!(two.subscribe("2").is_empty());
    srv.ingest_ok(&json!([unrouted("d-7", 0), unrouted("8", 1)]));
    let p = one.recv_position();
    assert_eq!((p["deviceId"].as_str(), p["eventId"].as_str()), (Some("d-7"), Some("e-1")));
    let p = two.recv_position();
    assert_eq!((p["deviceId"].as_str(), p["eventId"].as_str()), (Some("8"), Some("2")));

    // d-7 moves to event 2: its subscribers see it there, e-1 forgets it.
    fake.set_devices(json!([{"id": "d-7", "event": "2"}, {"id": 8, "event": 2}]));
    let p = two.recv_position();
    assert_eq!((p["deviceId"].as_str(), p["eventId"].as_str()), (Some("d-7"), Some("2")));
    assert_eq!(seq_of(&p), 0, "the last known position, re-emitted in its new event");
    assert!(one.subscribe("e-1").is_empty(), "d-7 left e-1's snapshot");

    // A failing refresh keeps the last good map.
    fake.fail(Route::Devices, Some(500));
    let failures = srv.metric("livecast_device_map_refresh_failures_total", &[]);
    wait_until(DEADLINE, "two failed refreshes", || {
        srv.metric("livecast_device_map_refresh_failures_total", &[]) >= failures + 2.0
    });
    srv.ingest_ok(&json!([unrouted("d-7", 1)]));
    let p = two.recv_position();
    assert_eq!((p["deviceId"].as_str(), seq_of(&p)), (Some("d-7"), 1));
    assert_eq!(srv.metric("livecast_device_map_size", &[]), 2.0);
}

#[test]
fn revalidation_ends_a_subscription_directus_no_longer_allows() {
    let fake = Fake::start();
    fake.session("sess-a", "u-a");
    fake.grant("u-a", &["e-1", "e-2"]);
    let srv = directus_server(&fake.url(), |c| {
        c.auth_revalidate = ms(150);
        c.auth_cache_ttl = ms(50);
    });
    let ca = cookie("sess-a");
    let mut a = srv.connect_with("/", &[(ca.0, &ca.1)]).expect("a");
    a.subscribe("e-1");
    a.subscribe("e-2");
    // The user loses e-2 in Directus (403 FORBIDDEN from now on).
    if let Some(grants) = fake.state.data.lock().grants.get_mut("u-a") {
        grants.remove("e-2");
    }
    let v = a.recv_json();
    assert_eq!(v, json!({"type": "unsubscribed", "eventId": "e-2", "reason": "forbidden"}));
    srv.ingest_ok(&json!([pos("e-2", "d-2", 1), pos("e-1", "d-1", 2)]));
    let p = a.recv_position();
    assert_eq!((p["eventId"].as_str(), seq_of(&p)), (Some("e-1"), 2), "nothing of e-2: {p}");
}

/// The event list (`{"type":"events"}`) holds only the events the Directus
/// user may read, each authorized as a subscribe is (and cached alike).
#[test]
fn the_event_list_holds_the_events_the_user_may_read() {
    let fake = Fake::start();
    fake.token("tok-a", "u-a");
    fake.grant("u-a", &["e-1", "e-3"]);
    let srv = directus_server(&fake.url(), |_| {});
    srv.ingest_ok(&json!([pos("e-1", "d-1", 0), pos("e-2", "d-2", 0), pos("e-3", "d-3", 0)]));
    let mut a = srv.connect_with("/", &[("Authorization", "Bearer tok-a")]).expect("connect");
    a.send_json(&json!({"type": "events"}));
    let answer = a.recv_type("events");
    let mut ids: Vec<&str> = answer["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["eventId"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e-1", "e-3"], "{answer}");
    assert_eq!(fake.requests(Route::Events).len(), 3, "one authorization per event");
    a.send_json(&json!({"type": "events"}));
    a.recv_type("events");
    assert_eq!(fake.requests(Route::Events).len(), 3, "decisions are cached");
}
