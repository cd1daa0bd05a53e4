//! SPEC §10: the trackers' own protocols on the HTTP port, over real
//! sockets. `/ingest/osmand` (query, form and Traccar Client 9 JSON bodies,
//! with the request forms of Traccar's own decoder tests) and
//! `/ingest/owntracks` (HTTP mode): every mapping and unit, every refusal
//! (400, 401 with its Basic challenge, 403 for pages, 405, 413), ignored
//! OwnTracks messages, routing by `?event=` and by the device map, positions
//! through a real Redis, and the token never in a log line.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Binary, Client, DEADLINE, Response, Server, TempDir, http_request, now_ms, wait_until,
};

const OSMAND: &str = "/ingest/osmand";
const OWNTRACKS: &str = "/ingest/owntracks";

/// `method path` on the HTTP port with `headers` and `body`.
#[track_caller]
fn request(
    srv: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    http_request(srv.http, method, path, headers, body)
}

/// `GET /ingest/osmand?query`; asserts `200` with an empty body.
#[track_caller]
fn osmand_ok(srv: &Server, query: &str) {
    let r = request(srv, "GET", &format!("{OSMAND}?{query}"), &[], b"");
    assert_eq!((r.status, r.text()), (200, String::new()), "GET {OSMAND}?{query}");
}

/// `POST /ingest/owntracks` with `body`; asserts `200 []` as JSON.
#[track_caller]
fn owntracks_ok(srv: &Server, query: &str, headers: &[(&str, &str)], body: &Value) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let path = format!("{OWNTRACKS}{query}");
    let r = request(srv, "POST", &path, &all, body.to_string().as_bytes());
    assert_eq!(r.status, 200, "POST {path}: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "[]");
}

/// A client subscribed to `event`, with its (empty) snapshot taken.
fn subscriber(srv: &Server, event: &str) -> Client {
    let mut c = srv.connect();
    c.subscribe(event);
    c
}

/// The position as a subscriber sees it, minus the frame's `type`.
fn received(c: &mut Client) -> Value {
    let mut p = c.recv_position();
    if let Some(o) = p.as_object_mut() {
        o.remove("type");
    }
    p
}

#[test]
fn osmand_query_forms_of_traccars_decoder_tests() {
    let srv = Server::start();
    let mut c = subscriber(&srv, "rally-2027");
    let e = "event=rally-2027";

    osmand_ok(
        &srv,
        &format!(
            "id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0\
             &altitude=224.0&speed=0.0&{e}"
        ),
    );
    assert_eq!(
        received(&mut c),
        json!({"eventId":"rally-2027","deviceId":"902064","lat":42.06288,"lon":-88.23412,
            "ts":1_453_920_947_000_i64,"hdop":6.0,"altitude":224.0,"speed":0.0})
    );

    // Milliseconds.
    osmand_ok(&srv, &format!("id=902064&lat=42.06288&lon=-88.23412&timestamp=1442068686579&{e}"));
    assert_eq!(received(&mut c)["ts"], 1_442_068_686_579_i64);

    // `yyyy-MM-dd HH:mm:ss`, in UTC, with its space as `+`.
    osmand_ok(
        &srv,
        &format!(
            "lat=49.60688&lon=6.15788&timestamp=2014-06-04+09%3A10%3A11&altitude=384.7\
             &speed=0.0&id=353861053849681&{e}"
        ),
    );
    let p = received(&mut c);
    assert_eq!(
        (p["deviceId"].clone(), p["ts"].clone()),
        (json!("353861053849681"), json!(1_401_873_011_000_i64))
    );

    // Unix seconds, `bearing` → heading, speed in knots → m/s.
    osmand_ok(
        &srv,
        &format!(
            "id=123456&timestamp=1377177267&lat=60.0&lon=30.0&speed=10.0&bearing=45.5&altitude=0&hdop=0.0&{e}"
        ),
    );
    let p = received(&mut c);
    assert_eq!(p["ts"], 1_377_177_267_000_i64);
    assert_eq!((p["speed"].clone(), p["heading"].clone()), (json!(5.144), json!(45.5)));

    // `deviceid`, `heading`, no timestamp: the time of receipt.
    let before = now_ms();
    osmand_ok(
        &srv,
        &format!(
            "lat=60.0&lon=30.0&speed=0.0&heading=90&vacc=0&hacc=0&altitude=0&deviceid=123456&{e}"
        ),
    );
    let p = received(&mut c);
    let after = now_ms();
    assert_eq!(
        (p["deviceId"].clone(), p["heading"].clone(), p["vacc"].clone()),
        (json!("123456"), json!(90.0), json!(0))
    );
    assert!(p["ts"].as_i64().is_some_and(|ts| (before..=after).contains(&ts)), "{p}");

    // `batt` → battery (percent), `valid=0`.
    osmand_ok(
        &srv,
        &format!(
            "id=861001000719969&lat=41.666667&lon=-0.883333&altitude=350.059479&speed=0.000000&batt=87&valid=0&accuracy=12.5&{e}"
        ),
    );
    let p = received(&mut c);
    assert_eq!(
        (p["battery"].clone(), p["valid"].clone(), p.get("batt")),
        (json!(87.0), json!(false), None)
    );
    assert_eq!((p["accuracy"].clone(), p["altitude"].clone()), (json!(12.5), json!(350.059479)));

    // `location=<lat>,<lon>`.
    osmand_ok(&srv, &format!("id=123456&timestamp=1377177267&location=60.5,30.25&{e}"));
    let p = received(&mut c);
    assert_eq!((p["lat"].clone(), p["lon"].clone()), (json!(60.5), json!(30.25)));

    // Other parameters: numbers, booleans, strings; never token nor event.
    osmand_ok(
        &srv,
        &format!(
            "id=123456789012345&timestamp=1504763810&lat=40.7232948571&lon=-74.0061408571\
             &bearing=7.19889788244&speed=40&ignition=true&charge=false&rpm=933&fuel=24.5\
             &driverUniqueId=ab+c&valid=false&token=not-a-field&{e}"
        ),
    );
    let p = received(&mut c);
    assert_eq!(
        p,
        json!({"eventId":"rally-2027","deviceId":"123456789012345","lat":40.7232948571,
            "lon":-74.0061408571,"ts":1_504_763_810_000_i64,"ignition":true,"charge":false,
            "rpm":933,"fuel":24.5,"driverUniqueId":"ab c","heading":7.19889788244,
            "speed":20.578,"valid":false})
    );

    // Traccar Client up to 8: POST with the query and an empty body.
    let r = request(&srv, "POST", &format!("{OSMAND}?id=old-client&lat=1&lon=2&{e}"), &[], b"");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(received(&mut c)["deviceId"], "old-client");
    srv.expect_metric("livecast_positions_received_total", &[("source", "osmand")], 9.0);
}

#[test]
fn osmand_form_body_with_event_and_token_on_the_url() {
    let srv = Server::with(|c| c.ingest_token = Some(livecast::Secret::new("s3cret")));
    let mut c = subscriber(&srv, "regatta");
    let form = b"id=boat-7&lat=46.5&lon=6.6&timestamp=2016-01-27T18%3A55%3A47Z&speed=2&batt=55";
    let r = request(
        &srv,
        "POST",
        &format!("{OSMAND}?event=regatta&token=s3cret"),
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form,
    );
    assert_eq!((r.status, r.text()), (200, String::new()));
    assert_eq!(
        received(&mut c),
        json!({"eventId":"regatta","deviceId":"boat-7","lat":46.5,"lon":6.6,
            "ts":1_453_920_947_000_i64,"speed":1.029,"battery":55.0})
    );
}

#[test]
fn osmand_json_bodies_of_traccar_client_9() {
    let srv = Server::start();
    let mut c = subscriber(&srv, "e");
    let post = |body: &str| {
        request(
            &srv,
            "POST",
            &format!("{OSMAND}?event=e"),
            &[("Content-Type", "application/json; charset=utf-8")],
            body.as_bytes(),
        )
    };
    // One location, from Traccar's decoder test (heading -1 is "unknown").
    let r = post(
        r#"{"location":{"timestamp":"2025-06-15T13:45:12.862Z","coords":{"latitude":37.4219983,"longitude":-122.084,"accuracy":5,"speed":0,"heading":-1,"altitude":5},"is_moving":false,"odometer":0,"event":"motionchange","battery":{"level":1,"is_charging":false},"activity":{"type":"still"},"extras":{},"_":"&id=48241179&lat=37.4219983&lon=-122.084&timestamp=2025-06-15T13:45:12.862Z&"},"device_id":"48241179"}"#,
    );
    assert_eq!((r.status, r.body.len()), (200, 0), "{}", r.text());
    assert_eq!(
        received(&mut c),
        json!({"eventId":"e","deviceId":"48241179","lat":37.4219983,"lon":-122.084,
            "ts":1_749_995_112_862_i64,"speed":0.0,"altitude":5.0,"accuracy":5.0,
            "battery":100.0,"moving":false,"odometer":0,"activity":"still"})
    );
    // Every "unknown" negative is dropped: speed, heading, battery level.
    let r = post(
        r#"{"location":{"extras":{},"mock":true,"coords":{"speed_accuracy":-1,"speed":-1,"longitude":-122.406417,"ellipsoidal_altitude":0,"floor":null,"heading_accuracy":-1,"latitude":37.785834000000001,"accuracy":5,"altitude_accuracy":-1,"altitude":0,"heading":-1},"is_moving":false,"age":188,"odometer":0,"uuid":"2FB04C65-99CF-42AB-8DD3-EBCB4B108BF8","event":"motionchange","battery":{"level":-1,"is_charging":false},"activity":{"type":"unknown","confidence":100},"timestamp":"2025-05-09T04:11:30.579Z"},"device_id":"658765"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let p = received(&mut c);
    assert_eq!((p.get("speed"), p.get("heading"), p.get("battery")), (None, None, None), "{p}");
    assert_eq!(p["altitude"], 0.0);
    // An array of locations (buffered reports), in order.
    let r = post(
        r#"{"location":[{"timestamp":"2021-07-21T08:06:34.444Z","coords":{"latitude":-6.1148096,"longitude":106.6837015,"accuracy":3.8,"speed":18.67,"heading":63,"altitude":35.7},"battery":{"is_charging":false,"level":0.79}},{"timestamp":"2021-07-21T08:06:35.444Z","coords":{"latitude":-6.1149,"longitude":106.6838}}],"device_id":"8737767034"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let (first, second) = (received(&mut c), received(&mut c));
    assert_eq!(
        first,
        json!({"eventId":"e","deviceId":"8737767034","lat":-6.1148096,"lon":106.6837015,
            "ts":1_626_854_794_444_i64,"speed":18.67,"heading":63.0,"altitude":35.7,
            "accuracy":3.8,"battery":79.0})
    );
    assert_eq!(second["ts"], 1_626_854_795_444_i64);
    // An array with one bad location: the good one passes, the bad one is
    // counted.
    let r = post(
        r#"{"location":[{"coords":{"latitude":95,"longitude":0}},{"coords":{"latitude":1,"longitude":2}}],"device_id":"x"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(received(&mut c)["deviceId"], "x");
    srv.expect_metric("livecast_positions_received_total", &[("source", "osmand")], 5.0);
    srv.expect_metric("livecast_positions_rejected_total", &[("source", "osmand")], 1.0);
}

#[test]
fn owntracks_locations_and_their_device_ids() {
    let srv = Server::start();
    let mut c = subscriber(&srv, "e");
    let location = json!({"_type":"location","acc":13,"alt":54,"batt":83,"bs":1,"conn":"w",
        "cog":271,"lat":48.85833,"lon":2.29513,"tid":"jj","tst":1701357000,"vel":36,
        "topic":"owntracks/jane/phone","t":"u","vac":3});
    // The app's headers (user and device of its settings).
    owntracks_ok(&srv, "?event=e", &[("X-Limit-U", "jane"), ("X-Limit-D", "phone")], &location);
    assert_eq!(
        received(&mut c),
        json!({"eventId":"e","deviceId":"jane/phone","lat":48.85833,"lon":2.29513,
            "ts":1_701_357_000_000_i64,"speed":10.0,"heading":271.0,"altitude":54.0,
            "accuracy":13.0,"battery":83,"tid":"jj"})
    );
    // `?u=&d=` on the URL.
    owntracks_ok(&srv, "?event=e&u=joe&d=watch", &[], &location);
    assert_eq!(received(&mut c)["deviceId"], "joe/watch");
    // Neither: the topic, then the tracker id; no `tst`: time of receipt.
    owntracks_ok(&srv, "?event=e", &[], &location);
    assert_eq!(received(&mut c)["deviceId"], "owntracks/jane/phone");
    let before = now_ms();
    owntracks_ok(&srv, "?event=e", &[], &json!({"_type":"location","lat":1,"lon":2,"tid":"jj"}));
    let p = received(&mut c);
    assert_eq!(p["deviceId"], "jj");
    assert!(p["ts"].as_i64().is_some_and(|ts| ts >= before), "{p}");
    srv.expect_metric("livecast_positions_received_total", &[("source", "owntracks")], 4.0);
}

#[test]
fn owntracks_other_messages_and_empty_bodies_are_answered_and_counted() {
    let srv = Server::start();
    let mut c = subscriber(&srv, "e");
    for (body, kind) in [
        (json!({"_type":"lwt","tst":1701357000}), "lwt"),
        (
            json!({"_type":"transition","event":"enter","lat":1,"lon":2,"tid":"jj","tst":1}),
            "transition",
        ),
        (json!({"_type":"waypoint","desc":"home","lat":"x","tst":1}), "waypoint"),
        (json!({"_type":"status","android":{}}), "status"),
        (json!({"_type":"encrypted","data":"c2VjcmV0"}), "encrypted"),
    ] {
        owntracks_ok(&srv, "?event=e&u=jane&d=phone", &[], &body);
        srv.expect_metric(
            "livecast_tracker_messages_ignored_total",
            &[("protocol", "owntracks"), ("type", kind)],
            1.0,
        );
    }
    let r = request(&srv, "POST", &format!("{OWNTRACKS}?event=e"), &[], b"");
    assert_eq!((r.status, r.text()), (200, "[]".to_owned()));
    srv.expect_metric(
        "livecast_tracker_messages_ignored_total",
        &[("protocol", "owntracks"), ("type", "empty")],
        1.0,
    );
    // None of them was a position: the next one seen is the location.
    owntracks_ok(
        &srv,
        "?event=e&u=jane&d=phone",
        &[],
        &json!({"_type":"location","lat":1,"lon":2}),
    );
    assert_eq!(received(&mut c)["deviceId"], "jane/phone");
    assert_eq!(srv.metric("livecast_positions_received_total", &[("source", "owntracks")]), 1.0);
}

#[test]
fn refusals_of_bad_reports() {
    let srv = Server::with(|c| {
        c.max_position_bytes = 300;
        c.ingest_max_items = 3;
        c.ingest_max_body_bytes = 4096;
    });
    let get = |q: &str| request(&srv, "GET", &format!("{OSMAND}?{q}"), &[], b"");
    let json_post = |path: &str, body: &str| {
        request(&srv, "POST", path, &[("Content-Type", "application/json")], body.as_bytes())
    };
    // 400: no id, no coordinates (a cell-only report), bad values.
    for q in [
        "timestamp=1377177267&lat=60.0&lon=30.0",
        "id=123456&timestamp=1377177267&cell=257,02,16,2224&wifi=00-14-22-01-23-45,-80",
        "id=a&lat=91&lon=0",
        "id=a&lat=1&lon=2&timestamp=yesterday",
        "id=a&lat=1&lon=2&event=",
    ] {
        let r = get(q);
        assert_eq!(r.status, 400, "{q}: {}", r.text());
    }
    let long = "x".repeat(129);
    assert_eq!(get(&format!("id={long}&lat=1&lon=2")).status, 400);
    assert_eq!(get(&format!("id=a&lat=1&lon=2&event={long}")).status, 400);
    srv.expect_metric("livecast_positions_rejected_total", &[("source", "osmand")], 7.0);
    // 413: one position past LIVE_MAX_POSITION_BYTES, a body past
    // INGEST_MAX_BODY_BYTES, more locations than INGEST_MAX_ITEMS.
    let r = get(&format!("id=a&lat=1&lon=2&note={}", "x".repeat(300)));
    assert_eq!(r.status, 413, "{}", r.text());
    let r = request(
        &srv,
        "POST",
        OSMAND,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("id=a&lat=1&lon=2&note={}", "x".repeat(5000)).as_bytes(),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    let loc = r#"{"coords":{"latitude":1,"longitude":2}}"#;
    let r =
        json_post(OSMAND, &format!(r#"{{"device_id":"a","location":[{loc},{loc},{loc},{loc}]}}"#));
    assert_eq!(r.status, 413, "{}", r.text());
    // 400: bodies that are not the protocol's JSON.
    for body in ["id=a&lat=1", r#"{"location":{"coords":{"latitude":1,"longitude":2}}}"#, "[]", "{"]
    {
        assert_eq!(json_post(OSMAND, body).status, 400, "{body}");
    }
    for body in [
        "not json",
        "[]",
        r#"{"_type":"location","lat":1,"lon":2}"#,
        r#"{"_type":"location","tid":"a","lat":"1","lon":2}"#,
    ] {
        let r = json_post(OWNTRACKS, body);
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.json()["error"].is_string());
    }
    let r = json_post(
        OWNTRACKS,
        &format!(
            r#"{{"_type":"location","topic":"a","lat":1,"lon":2,"tid":"{}"}}"#,
            "t".repeat(300)
        ),
    );
    assert_eq!(r.status, 413, "{}", r.text());
    // 405 with Allow.
    let r = request(&srv, "GET", OWNTRACKS, &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    let r = request(&srv, "PUT", OSMAND, &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, POST")));
    assert_eq!(srv.metric("livecast_positions_received_total", &[("source", "osmand")]), 0.0);
}

#[test]
fn credentials_bearer_basic_password_or_token_parameter() {
    let srv = Server::with(|c| c.ingest_token = Some(livecast::Secret::new("s3cret")));
    let mut c = subscriber(&srv, "e");
    let q = "?id=d&lat=1&lon=2&event=e";
    let body = json!({"_type":"location","lat":1,"lon":2,"tid":"t"}).to_string();
    for (path, headers, body) in [
        (format!("{OSMAND}{q}"), vec![], ""),
        (format!("{OSMAND}{q}&token=wrong"), vec![], ""),
        (format!("{OSMAND}{q}"), vec![("Authorization", "Bearer wrong")], ""),
        // "user:wrong"
        (format!("{OSMAND}{q}"), vec![("Authorization", "Basic dXNlcjp3cm9uZw==")], ""),
        (format!("{OWNTRACKS}?event=e"), vec![], body.as_str()),
    ] {
        let r = request(
            &srv,
            if body.is_empty() { "GET" } else { "POST" },
            &path,
            &headers,
            body.as_bytes(),
        );
        assert_eq!(r.status, 401, "{headers:?}: {}", r.text());
        assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"livecast\""));
    }
    // "anyone:s3cret", "jane:s3cret"
    for (path, headers, body) in [
        (format!("{OSMAND}{q}&token=s3cret"), vec![], ""),
        (format!("{OSMAND}{q}"), vec![("Authorization", "Bearer s3cret")], ""),
        (format!("{OSMAND}{q}"), vec![("Authorization", "Basic YW55b25lOnMzY3JldA==")], ""),
        (
            format!("{OWNTRACKS}?event=e"),
            vec![("Authorization", "Basic amFuZTpzM2NyZXQ=")],
            body.as_str(),
        ),
    ] {
        let r = request(
            &srv,
            if body.is_empty() { "GET" } else { "POST" },
            &path,
            &headers,
            body.as_bytes(),
        );
        assert_eq!(r.status, 200, "{headers:?}: {}", r.text());
        received(&mut c);
    }
}

#[test]
fn requests_from_web_pages_are_refused() {
    let open = Server::start();
    let locked = Server::with(|c| c.ingest_token = Some(livecast::Secret::new("s3cret")));
    for srv in [&open, &locked] {
        let host = format!("http://{}", srv.http);
        for headers in [
            vec![("Origin", host.as_str())],
            vec![("Origin", "https://evil.example")],
            vec![("Origin", "null")],
            vec![("Sec-Fetch-Site", "cross-site")],
            vec![("Sec-Fetch-Site", "same-origin")],
            vec![("Sec-Fetch-Site", "same-site")],
        ] {
            for (method, path) in [("GET", OSMAND), ("POST", OSMAND), ("POST", OWNTRACKS)] {
                let path = format!("{path}?id=d&lat=1&lon=2&token=s3cret");
                let r = request(srv, method, &path, &headers, b"");
                // Never a Basic challenge: a browser would show its login.
                assert_eq!(
                    (r.status, r.header("www-authenticate")),
                    (403, None),
                    "{method} {path} {headers:?}"
                );
            }
        }
        // Typed in the address bar: `Sec-Fetch-Site: none` is no page.
        let r = request(
            srv,
            "GET",
            &format!("{OSMAND}?id=d&lat=1&lon=2&token=s3cret"),
            &[("Sec-Fetch-Site", "none")],
            b"",
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

#[test]
fn routing_by_the_device_map_and_unmapped_devices_counted() {
    let dir = TempDir::new("trackers-map");
    let file = dir.write("devices.json", r#"{"902064":"e-42","jane/phone":"e-42"}"#);
    let srv = Server::with(|c| c.device_event_file = Some(file));
    wait_until(DEADLINE, "the map to be loaded", || {
        srv.metric("livecast_device_map_size", &[]) == 2.0
    });
    let mut c = subscriber(&srv, "e-42");
    osmand_ok(&srv, "id=902064&lat=1&lon=2");
    let p = c.recv_position();
    assert_eq!((p["eventId"].as_str(), p["deviceId"].as_str()), (Some("e-42"), Some("902064")));
    owntracks_ok(
        &srv,
        "",
        &[("X-Limit-U", "jane"), ("X-Limit-D", "phone")],
        &json!({"_type":"location","lat":1,"lon":2}),
    );
    let p = c.recv_position();
    assert_eq!((p["eventId"].as_str(), p["deviceId"].as_str()), (Some("e-42"), Some("jane/phone")));
    // `?event=` wins over the map.
    let mut other = subscriber(&srv, "elsewhere");
    osmand_ok(&srv, "id=902064&lat=1&lon=2&event=elsewhere");
    assert_eq!(other.recv_position()["eventId"], "elsewhere");
    let before = srv.metric("livecast_positions_unrouted_total", &[]);
    osmand_ok(&srv, "id=nobody&lat=1&lon=2");
    srv.expect_metric("livecast_positions_unrouted_total", &[], before + 1.0);
}

/// A private `redis-server` on a free port, killed on drop (as in the
/// `redis` module).
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start() -> Redis {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let bin = std::env::var("LIVECAST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {bin} ({e}): install redis-server"));
        let redis = Redis { port, child };
        wait_until(DEADLINE, "redis-server answers PING", || {
            redis.conn().is_some_and(|mut c| redis::cmd("PING").query::<String>(&mut c).is_ok())
        });
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn conn(&self) -> Option<redis::Connection> {
        let client = redis::Client::open(self.url()).ok()?;
        client.get_connection_with_timeout(Duration::from_millis(500)).ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tracker_positions_go_through_the_redis_stream() {
    let redis = Redis::start();
    let key = format!("test:trackers:{}", std::process::id());
    let srv = Server::with(|c| {
        c.redis_url = Some(livecast::Secret::new(redis.url()));
        c.stream_key = key.clone();
        c.batch_block = Duration::from_millis(100);
    });
    wait_until(DEADLINE, "/readyz answers 200", || srv.get("/readyz").status == 200);
    let mut c = subscriber(&srv, "e");
    osmand_ok(&srv, "id=car-3&lat=46.2&lon=7.3&timestamp=1377177267&event=e");
    owntracks_ok(
        &srv,
        "?event=e&u=jane&d=phone",
        &[],
        &json!({"_type":"location","lat":1,"lon":2,"tst":1377177268}),
    );
    assert_eq!(received(&mut c)["deviceId"], "car-3");
    assert_eq!(received(&mut c)["deviceId"], "jane/phone");
    let mut conn = redis.conn().expect("redis connection");
    let entries: Vec<(String, Vec<(String, String)>)> =
        redis::cmd("XRANGE").arg(&key).arg("-").arg("+").query(&mut conn).expect("XRANGE");
    let data: Vec<Value> = entries
        .iter()
        .map(|(_, fields)| {
            assert_eq!(fields.len(), 1, "one field per entry: {fields:?}");
            assert_eq!(fields[0].0, "data");
            serde_json::from_str(&fields[0].1).expect("data is JSON")
        })
        .collect();
    assert_eq!(
        data,
        vec![
            json!({"eventId":"e","deviceId":"car-3","lat":46.2,"lon":7.3,"ts":1_377_177_267_000_i64}),
            json!({"eventId":"e","deviceId":"jane/phone","lat":1.0,"lon":2.0,"ts":1_377_177_268_000_i64}),
        ]
    );
}

#[test]
fn the_token_never_reaches_a_log_line() {
    let token = "tok-3f9a1c77e2";
    let wrong = "wrong-7d41b0a9";
    let bin = Binary::start(&[("INGEST_TOKEN", token), ("LOG_LEVEL", "trace")]);
    let get =
        |path: &str, headers: &[(&str, &str)]| http_request(bin.http, "GET", path, headers, b"");
    for t in [token, wrong] {
        // Good and bad, valid and invalid reports, every way a token comes.
        for q in [
            format!("id=d&lat=1&lon=2&token={t}"),
            format!("id=d&lat=95&lon=2&token={t}"),
            format!("token={t}&cell=1"),
        ] {
            get(&format!("{OSMAND}?{q}"), &[]);
        }
        get(&format!("{OSMAND}?id=d&lat=1&lon=2"), &[("Authorization", &format!("Bearer {t}"))]);
        let r = http_request(
            bin.http,
            "POST",
            &format!("{OWNTRACKS}?u=a&d=b&token={t}"),
            &[("Content-Type", "application/json")],
            b"{\"_type\":\"location\",\"lat\":1,\"lon\":2}",
        );
        assert!(r.status == 200 || r.status == 401, "{}", r.status);
    }
    // Something was logged: the requests themselves, at debug.
    wait_until(DEADLINE, "request lines in the log", || bin.stderr().contains(OSMAND));
    let log = bin.stderr();
    for secret in [token, wrong, "token="] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
    drop(bin);
}
