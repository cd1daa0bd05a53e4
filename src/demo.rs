//! The demo feed (`livecast --demo`): a simulator that moves devices along
//! smooth, plausible tracks in three events and posts their positions to a
//! server's HTTP port, in the three ways positions arrive there.
//!
//! It talks HTTP (ureq) like real senders would, on purpose: what a
//! newcomer watches in the dashboard then went through the real path
//! (request parsing, validation, `INGEST_TOKEN`, Redis when configured, the
//! broadcaster), so the demo also shows that path works on this machine,
//! and cannot drift from it. Half the devices are a gateway's, posted
//! together to `POST /ingest`; the other half are phones, one request each:
//! every fourth device (`boat-2`, `car-6`, …) posts as Traccar Client 9 does
//! (JSON to `/ingest/osmand?event=…`), and every fourth from the fourth
//! (`runner-4`, `boat-8`, …) as OwnTracks does (`/ingest/owntracks?event=…`
//! with user `demo` and its device name: it shows as `demo/runner-4`).
//!
//! The three events, each with its own kind of motion, devices dealt to them
//! in turn (device `n`, counted from 1, goes to event `(n - 1) % 3`):
//!
//! | event | devices | motion |
//! |---|---|---|
//! | `demo-marathon` | `runner-1`, `runner-4`, ... | a 10 km loop along Lausanne's lakeside, 9–16 km/h |
//! | `demo-regatta` | `boat-2`, `boat-5`, ... | wandering on Lake Geneva, 8–25 km/h |
//! | `demo-rally` | `car-3`, `car-6`, ... | a hilly 25 km loop near Sion, 50–110 km/h |
//!
//! Every position carries `speed` (m/s, the unit the tracker protocols'
//! speeds become) and `heading` (degrees clockwise from north), like the
//! optional fields of a real tracker.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{RecvTimeoutError, Sender};
use log::{debug, info, warn};
use serde_json::{Value, json};

use crate::config::Secret;

/// Metres per degree of latitude (and of longitude at the equator).
const METRES_PER_DEGREE: f64 = 111_320.0;

/// The simulation advances in steps of at most this, whatever the posting
/// interval, so that a slow interval does not make tracks jagged.
const MAX_STEP_SECS: f64 = 0.25;

/// How long one POST may take (connect, write, read the answer) before the
/// feed gives up on it and tries again at the next tick.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// What the simulator runs: how many devices, how often they report.
#[derive(Clone)]
pub struct DemoConfig {
    /// Devices in all, dealt in turn to the three events (1 to 1000).
    pub devices: usize,
    /// Time between two posts; every device reports once per post.
    pub interval: Duration,
    /// Sent when the server requires `INGEST_TOKEN`: as a bearer token, and
    /// as the Basic password of the OwnTracks devices (as the app does).
    pub ingest_token: Option<Secret>,
    /// Seeds the tracks' randomness: the same seed moves the same way.
    pub seed: u64,
    /// The HTTP port speaks TLS (`TLS_CERT_FILE`): post over https. Its
    /// certificate is not verified: the feed connects to the address its
    /// own process has just bound, and a certificate names the public host,
    /// not that address.
    pub https: bool,
}

impl fmt::Debug for DemoConfig {
    /// The token is left out: it is a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoConfig")
            .field("devices", &self.devices)
            .field("interval", &self.interval)
            .field("ingest_token", &self.ingest_token.as_ref().map(|_| "<redacted>"))
            .field("seed", &self.seed)
            .field("https", &self.https)
            .finish()
    }
}

impl Default for DemoConfig {
    fn default() -> DemoConfig {
        DemoConfig {
            devices: crate::Config::default().demo_devices,
            interval: crate::Config::default().demo_interval,
            ingest_token: None,
            seed: 0x5eed_1ace,
            https: false,
        }
    }
}

/// A running simulator. Dropping it stops it, as [`Demo::stop`] does.
#[derive(Debug)]
pub struct Demo {
    devices: Vec<(String, String)>,
    /// Dropped to stop the feed: its thread wakes at once, not at the next
    /// tick.
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the simulator: a `demo-feed` thread that posts every device's
/// position to `http://<ingest>/ingest` right away, then every
/// `config.interval`. A failed post is logged and the feed goes on, so that
/// it survives a server restart.
///
/// `ingest` is the address to connect to: pass [`reachable`] of the
/// server's HTTP address when it listens on all interfaces.
///
/// # Errors
/// When the thread cannot be spawned.
pub fn start(ingest: SocketAddr, config: DemoConfig) -> io::Result<Demo> {
    let mut world = World::new(&config);
    let devices = world.devices.iter().map(|d| (d.event.to_owned(), d.shown_id())).collect();
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let interval = config.interval;
    let poster = Poster::new(ingest, config.ingest_token, config.https);
    let thread = crate::thread::spawn_named("demo-feed".into(), None, move || {
        info!(
            "demo: {} devices report to {}/ingest (and /ingest/osmand, \
             /ingest/owntracks) every {interval:?}",
            world.devices.len(),
            poster.base
        );
        let mut last = Instant::now();
        let mut failing = false;
        loop {
            let now = Instant::now();
            world.advance(now.duration_since(last).as_secs_f64());
            last = now;
            match poster.post_all(&world, now_ms()) {
                Ok(()) if failing => {
                    info!("demo: ingest works again");
                    failing = false;
                }
                Ok(()) => {}
                Err(e) if failing => debug!("demo: ingest still failing: {e}"),
                Err(e) => {
                    warn!("demo: ingest failed (will keep trying every {interval:?}): {e}");
                    failing = true;
                }
            }
            let next = now + interval;
            match stopped.recv_deadline(next) {
                Err(RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        debug!("demo: stopped");
    })?;
    Ok(Demo { devices, stop: Some(stop), thread: Some(thread) })
}

impl Demo {
    /// The events that have devices, in the order of the table above; the
    /// first is the one to open the dashboard on.
    pub fn events(&self) -> Vec<&str> {
        let mut events: Vec<&str> = Vec::new();
        for (event, _) in &self.devices {
            if !events.contains(&event.as_str()) {
                events.push(event);
            }
        }
        events
    }

    /// Every simulated device as `(event, device)`, the device by the id
    /// the dashboard shows.
    pub fn devices(&self) -> &[(String, String)] {
        &self.devices
    }

    /// Stops the feed and waits for its thread (at most one post, bounded
    /// by the I/O timeout).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `addr` with an unspecified IP (`0.0.0.0`, `::`) replaced by the loopback
/// address of the same family: a listener on every interface is reached on
/// loopback, and a URL with `0.0.0.0` works in no browser.
pub fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// The dashboard's URL on the HTTP port `http` (`https` when it speaks
/// TLS), opened on `event`.
pub fn dashboard_url(http: SocketAddr, event: &str, https: bool) -> String {
    let scheme = if https { "https" } else { "http" };
    format!("{scheme}://{}/?event={event}", reachable(http))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Posts position batches to `POST /ingest` through ureq, one short
/// HTTP/1.1 connection per batch: at one batch a second a kept-alive
/// connection saves nothing, and a fresh one never meets a connection the
/// server has just timed out.
struct Poster {
    agent: ureq::Agent,
    /// `http://<addr>` (`https://` when the HTTP port speaks TLS).
    base: String,
    token: Option<Secret>,
}

impl Poster {
    fn new(addr: SocketAddr, token: Option<Secret>, https: bool) -> Poster {
        let phase = Some(IO_TIMEOUT);
        // Our own listener (see `DemoConfig::https`).
        let tls = ureq::tls::TlsConfig::builder().disable_verification(https).build();
        let agent = ureq::Agent::config_builder()
            // A refusal's status and body are what the log should say.
            .http_status_as_error(false)
            .max_redirects(0)
            .max_idle_connections(0)
            .user_agent(concat!("livecast-demo/", env!("CARGO_PKG_VERSION")))
            // Each phase bounded rather than the whole call: a whole-call
            // timeout makes ureq resolve the address on a thread of its own
            // for every request.
            .timeout_connect(phase)
            .timeout_send_request(phase)
            .timeout_send_body(phase)
            .timeout_recv_response(phase)
            .timeout_recv_body(phase)
            .tls_config(tls)
            .build()
            .new_agent();
        let scheme = if https { "https" } else { "http" };
        Poster { agent, base: format!("{scheme}://{addr}"), token }
    }

    /// Posts one tick: the gateway's devices in one `POST /ingest`, then
    /// each phone in its own protocol. Every request is made; the first
    /// failure is the answer.
    fn post_all(&self, world: &World, ts: u64) -> io::Result<()> {
        let mut outcome = self.post(&world.positions(ts, Reporter::Gateway));
        for device in world.devices.iter().filter(|d| d.sender != Reporter::Gateway) {
            let sent = self.post_tracker(device, ts);
            if outcome.is_ok() {
                outcome = sent;
            }
        }
        outcome
    }

    /// Posts one phone's report as its app would.
    fn post_tracker(&self, device: &Device, ts: u64) -> io::Result<()> {
        let event = device.event;
        let (path, body) = match device.sender {
            Reporter::TraccarClient => ("osmand", device.traccar_client_body(ts)),
            Reporter::OwnTracks => ("owntracks", device.owntracks_body(ts)),
            Reporter::Gateway => return Ok(()),
        };
        let url = format!("{}/ingest/{path}?event={event}", self.base);
        let request = self.agent.post(&url).header("Content-Type", "application/json");
        let request = if device.sender == Reporter::OwnTracks {
            let request =
                request.header("X-Limit-U", OWNTRACKS_USER).header("X-Limit-D", &device.id);
            match &self.token {
                Some(token) => request.header(
                    "Authorization",
                    format!("Basic {}", base64(&format!("{OWNTRACKS_USER}:{}", token.expose()))),
                ),
                None => request,
            }
        } else {
            match &self.token {
                Some(token) => {
                    request.header("Authorization", format!("Bearer {}", token.expose()))
                }
                None => request,
            }
        };
        let mut response = request.send(&body.to_string()).map_err(io::Error::other)?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let answer =
            response.body_mut().with_config().limit(64 * 1024).read_to_string().unwrap_or_default();
        Err(io::Error::other(format!("/ingest/{path}: status {status}: {}", answer.trim())))
    }

    fn post(&self, positions: &Value) -> io::Result<()> {
        let body = positions.to_string();
        let url = format!("{}/ingest", self.base);
        let request = self.agent.post(&url).header("Content-Type", "application/json");
        let request = match &self.token {
            Some(token) => request.header("Authorization", format!("Bearer {}", token.expose())),
            None => request,
        };
        let mut response = request.send(&body).map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let answer = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .map_err(io::Error::other)?;
        let answer = answer.trim();
        if status != 202 {
            return Err(io::Error::other(format!("status {status}: {answer}")));
        }
        // A rejected demo position is a bug here or there: say so, go on.
        let rejected = serde_json::from_str::<Value>(answer)
            .ok()
            .and_then(|v| v.get("rejected").and_then(Value::as_array).map(Vec::len))
            .unwrap_or(0);
        if rejected > 0 {
            warn!("demo: the server rejected {rejected} positions: {answer}");
        }
        Ok(())
    }
}

/// How a device reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reporter {
    /// In a batch to `POST /ingest`, as a gateway would.
    Gateway,
    /// Alone, as Traccar Client 9 (OsmAnd protocol, JSON body).
    TraccarClient,
    /// Alone, as OwnTracks in HTTP mode.
    OwnTracks,
}

impl Reporter {
    /// Device `n` (from 1): odd ones are the gateway's, then Traccar Client
    /// and OwnTracks in turn.
    fn of(n: usize) -> Reporter {
        match n % 4 {
            2 => Reporter::TraccarClient,
            0 => Reporter::OwnTracks,
            _ => Reporter::Gateway,
        }
    }
}

/// The user name of the demo's OwnTracks devices.
const OWNTRACKS_USER: &str = "demo";

/// Standard base64 with padding, for a Basic `Authorization`.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = byte(0) << 16 | byte(1) << 8 | byte(2);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            let digit = ALPHABET.get((n >> shift) as usize & 63).copied().unwrap_or(b'=');
            out.push(if i <= chunk.len() { char::from(digit) } else { '=' });
        }
    }
    out
}

/// One of the three demo events: where it is and how its devices move.
struct Scenario {
    event: &'static str,
    prefix: &'static str,
    /// What Traccar Client's activity recognition would say.
    activity: &'static str,
    /// Centre of the area, degrees.
    lat: f64,
    lon: f64,
    /// Typical distance from the centre, metres.
    radius: f64,
    /// Cruise speeds are drawn from this range, km/h.
    speed_kmh: (f64, f64),
    /// Devices follow one shared loop (a race course) rather than wander.
    course: bool,
    /// How far apart devices start, metres: they start together, as in a
    /// race, and spread out as their speeds differ, so that the dashboard
    /// first shows a close group whose trails are easy to see.
    start_spread: f64,
    /// Where on the loop the start is (radians), just before a bend: the
    /// first minute shows curved trails, not straight lines.
    start_angle: f64,
}

const SCENARIOS: [Scenario; 3] = [
    Scenario {
        event: "demo-marathon",
        prefix: "runner",
        activity: "running",
        lat: 46.515,
        lon: 6.605,
        radius: 1_600.0,
        speed_kmh: (9.0, 16.0),
        course: true,
        start_spread: 150.0,
        start_angle: 4.5,
    },
    Scenario {
        event: "demo-regatta",
        prefix: "boat",
        activity: "in_vehicle",
        lat: 46.455,
        lon: 6.56,
        radius: 3_000.0,
        speed_kmh: (8.0, 25.0),
        course: false,
        start_spread: 400.0,
        start_angle: 0.0,
    },
    Scenario {
        event: "demo-rally",
        prefix: "car",
        activity: "in_vehicle",
        lat: 46.235,
        lon: 7.36,
        radius: 4_000.0,
        speed_kmh: (50.0, 110.0),
        course: true,
        start_spread: 250.0,
        start_angle: 1.4,
    },
];

/// One simulated device. Positions are kept in metres north/east of its
/// scenario's centre and turned into degrees when posted.
struct Device {
    id: String,
    /// How it reports.
    sender: Reporter,
    event: &'static str,
    scenario: &'static Scenario,
    north: f64,
    east: f64,
    /// Radians clockwise from north.
    heading: f64,
    /// Metres per second, now and as cruise target.
    speed: f64,
    cruise: f64,
    /// Radians per second, wandering devices only.
    turn_rate: f64,
    /// Course devices: angle along the loop, and their lane offset (m).
    angle: f64,
    lane: f64,
    /// Seconds simulated so far, for the slow speed variations.
    clock: f64,
    phase: f64,
}

/// Every device and the randomness that moves them.
struct World {
    devices: Vec<Device>,
    rng: SplitMix64,
}

impl World {
    fn new(config: &DemoConfig) -> World {
        let mut rng = SplitMix64(config.seed);
        let devices = (1..=config.devices.max(1))
            .zip(SCENARIOS.iter().cycle())
            .map(|(n, scenario)| {
                let (lo, hi) = scenario.speed_kmh;
                let cruise = rng.between(lo, hi) / 3.6;
                let spread = scenario.start_spread;
                // Along the course (radians are about `radius` metres), or
                // around a start area a little off the centre.
                let angle = scenario.start_angle + rng.between(-spread, spread) / scenario.radius;
                let lane = rng.between(-12.0, 12.0);
                let (north, east, heading) = if scenario.course {
                    let (n, e) = course_point(scenario, angle, lane);
                    (n, e, course_heading(scenario, angle))
                } else {
                    let start_east = -0.3 * scenario.radius;
                    let heading = rng.between(-0.7, 0.7) + std::f64::consts::FRAC_PI_2;
                    (
                        rng.between(-spread, spread),
                        start_east + rng.between(-spread, spread),
                        heading,
                    )
                };
                Device {
                    id: format!("{}-{n}", scenario.prefix),
                    sender: Reporter::of(n),
                    event: scenario.event,
                    scenario,
                    north,
                    east,
                    heading,
                    speed: cruise,
                    cruise,
                    turn_rate: 0.0,
                    angle,
                    lane,
                    clock: 0.0,
                    phase: rng.between(0.0, std::f64::consts::TAU),
                }
            })
            .collect();
        World { devices, rng }
    }

    /// Moves every device `secs` seconds forward, in small steps.
    fn advance(&mut self, secs: f64) {
        let mut left = secs.clamp(0.0, 60.0);
        while left > 0.0 {
            let dt = left.min(MAX_STEP_SECS);
            left -= dt;
            for device in &mut self.devices {
                device.step(dt, &mut self.rng);
            }
        }
    }

    /// The JSON array to post to `POST /ingest`: one position per device
    /// of `sender`, stamped `ts`.
    fn positions(&self, ts: u64, sender: Reporter) -> Value {
        Value::Array(
            self.devices.iter().filter(|d| d.sender == sender).map(|d| d.position(ts)).collect(),
        )
    }
}

impl Device {
    fn step(&mut self, dt: f64, rng: &mut SplitMix64) {
        self.clock += dt;
        // Slow swings around the cruise speed (hills, fatigue, gusts), and
        // a little noise on top.
        let swing = 1.0 + 0.15 * (self.clock / 40.0 + self.phase).sin();
        let target = self.cruise * swing;
        self.speed += (target - self.speed) * (dt / 5.0).min(1.0) + rng.normal() * 0.05 * dt.sqrt();
        self.speed = self.speed.max(0.5);
        if self.scenario.course {
            self.step_on_course(dt);
        } else {
            self.step_wandering(dt, rng);
        }
    }

    /// Advances along the loop by the distance covered, so that speed is
    /// true to what the positions show.
    fn step_on_course(&mut self, dt: f64) {
        let scenario = self.scenario;
        let (n0, e0) = course_point(scenario, self.angle, self.lane);
        let (n1, e1) = course_point(scenario, self.angle + 1e-3, self.lane);
        let metres_per_radian = ((n1 - n0).hypot(e1 - e0) / 1e-3).max(1.0);
        self.angle = (self.angle + self.speed * dt / metres_per_radian) % std::f64::consts::TAU;
        let (north, east) = course_point(scenario, self.angle, self.lane);
        self.heading = (east - self.east).atan2(north - self.north);
        self.north = north;
        self.east = east;
    }

    /// A random turn rate that drifts back to straight (an
    /// Ornstein-Uhlenbeck walk), steered home when far from the centre.
    fn step_wandering(&mut self, dt: f64, rng: &mut SplitMix64) {
        self.turn_rate += -self.turn_rate * 0.3 * dt + rng.normal() * 0.04 * dt.sqrt();
        self.turn_rate = self.turn_rate.clamp(-0.15, 0.15);
        let distance = self.north.hypot(self.east);
        let pull = (distance / self.scenario.radius - 0.6).max(0.0);
        if pull > 0.0 {
            let home = (-self.east).atan2(-self.north);
            let off = wrap_angle(home - self.heading);
            self.heading += off * (pull * 0.5 * dt).min(1.0);
        }
        self.heading = wrap_angle(self.heading + self.turn_rate * dt);
        self.north += self.speed * self.heading.cos() * dt;
        self.east += self.speed * self.heading.sin() * dt;
    }

    /// Latitude and longitude (6 decimals), heading (whole degrees), speed
    /// (m/s, 1 decimal), as reported.
    fn fix(&self) -> (f64, f64, f64, f64) {
        let scenario = self.scenario;
        let lat = scenario.lat + self.north / METRES_PER_DEGREE;
        let lon = scenario.lon + self.east / (METRES_PER_DEGREE * scenario.lat.to_radians().cos());
        let heading = self.heading.to_degrees().rem_euclid(360.0);
        (round_to(lat, 6), round_to(lon, 6), heading.round(), round_to(self.speed, 1))
    }

    fn position(&self, ts: u64) -> Value {
        let (lat, lon, heading, speed) = self.fix();
        json!({
            "eventId": self.event,
            "deviceId": self.id,
            "lat": lat,
            "lon": lon,
            "ts": ts,
            "speed": speed,
            "heading": heading,
        })
    }

    /// The id the dashboard shows: OwnTracks devices are `<user>/<device>`.
    fn shown_id(&self) -> String {
        match self.sender {
            Reporter::OwnTracks => format!("{OWNTRACKS_USER}/{}", self.id),
            Reporter::Gateway | Reporter::TraccarClient => self.id.clone(),
        }
    }

    /// What Traccar Client 9 posts: its location SDK's JSON, speed in m/s,
    /// time in ISO 8601.
    fn traccar_client_body(&self, ts: u64) -> Value {
        let (lat, lon, heading, speed) = self.fix();
        json!({
            "location": {
                "timestamp": crate::logging::rfc3339_ms(ts),
                "coords": {
                    "latitude": lat,
                    "longitude": lon,
                    "speed": speed,
                    "heading": heading,
                    "accuracy": 5,
                    "altitude": -1,
                },
                "is_moving": true,
                "battery": {"level": 0.8, "is_charging": false},
                "activity": {"type": self.scenario.activity},
            },
            "device_id": self.id,
        })
    }

    /// What OwnTracks posts: a `location` message, speed in km/h, time in
    /// Unix seconds.
    fn owntracks_body(&self, ts: u64) -> Value {
        let (lat, lon, heading, _) = self.fix();
        let tid: String = self.id.chars().take(1).chain(self.id.chars().last()).collect();
        json!({
            "_type": "location",
            "lat": lat,
            "lon": lon,
            "tst": ts / 1000,
            "vel": (self.speed * 3.6).round(),
            "cog": heading,
            "acc": 5,
            "batt": 80,
            "tid": tid,
            "t": "t",
        })
    }
}

/// A point of a scenario's loop, `lane` metres outside it: a smooth closed
/// curve whose radius wobbles (a course with bends, not a circle).
fn course_point(scenario: &Scenario, angle: f64, lane: f64) -> (f64, f64) {
    let wobble = 1.0 + 0.22 * (3.0 * angle).sin() + 0.08 * (5.0 * angle + 1.0).cos();
    let r = scenario.radius * wobble + lane;
    // Stretched east-west: lakesides and valleys are long and narrow.
    (0.55 * r * angle.cos(), r * angle.sin())
}

fn course_heading(scenario: &Scenario, angle: f64) -> f64 {
    let (n0, e0) = course_point(scenario, angle, 0.0);
    let (n1, e1) = course_point(scenario, angle + 1e-3, 0.0);
    (e1 - e0).atan2(n1 - n0)
}

/// `a` brought into (-π, π].
fn wrap_angle(a: f64) -> f64 {
    let tau = std::f64::consts::TAU;
    let a = a.rem_euclid(tau);
    if a > std::f64::consts::PI { a - tau } else { a }
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// A tiny seeded generator (SplitMix64): tracks only need to look random
/// and be repeatable, not be unpredictable, so no dependency is worth it.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        #[allow(clippy::cast_precision_loss)] // 53 bits fit an f64 exactly
        let x = (self.next_u64() >> 11) as f64;
        x / (1u64 << 53) as f64
    }

    fn between(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Standard normal, by Box-Muller.
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(f64::MIN_POSITIVE);
        let v = self.unit();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Every device's position, whatever its way of reporting.
    fn all_positions(world: &World, ts: u64) -> Value {
        Value::Array(world.devices.iter().map(|d| d.position(ts)).collect())
    }

    fn distance_m(a: &Value, b: &Value) -> f64 {
        let f = |v: &Value, k: &str| v[k].as_f64().expect("number");
        let dn = (f(b, "lat") - f(a, "lat")) * METRES_PER_DEGREE;
        let de = (f(b, "lon") - f(a, "lon")) * METRES_PER_DEGREE * f(a, "lat").to_radians().cos();
        dn.hypot(de)
    }

    #[test]
    fn deals_devices_to_the_three_events_in_turn() {
        let world = World::new(&DemoConfig { devices: 7, ..DemoConfig::default() });
        let ids: Vec<_> = world.devices.iter().map(|d| (d.event, d.id.as_str())).collect();
        assert_eq!(
            ids,
            [
                ("demo-marathon", "runner-1"),
                ("demo-regatta", "boat-2"),
                ("demo-rally", "car-3"),
                ("demo-marathon", "runner-4"),
                ("demo-regatta", "boat-5"),
                ("demo-rally", "car-6"),
                ("demo-marathon", "runner-7"),
            ]
        );
    }

    #[test]
    fn moves_at_plausible_speeds_and_stays_in_its_area() {
        let mut world = World::new(&DemoConfig { devices: 30, ..DemoConfig::default() });
        let mut before = all_positions(&world, 0);
        for second in 1..=600u64 {
            world.advance(1.0);
            let after = all_positions(&world, second * 1000);
            for (a, b) in before.as_array().unwrap().iter().zip(after.as_array().unwrap()) {
                let moved = distance_m(a, b);
                let kmh = b["speed"].as_f64().unwrap() * 3.6;
                let event = b["eventId"].as_str().unwrap();
                let scenario = SCENARIOS.iter().find(|s| s.event == event).unwrap();
                assert!(moved > 0.5, "{} did not move: {moved} m", b["deviceId"]);
                // What the positions show matches the reported speed.
                assert!(
                    (moved * 3.6 - kmh).abs() < kmh * 0.2 + 1.0,
                    "{}: moved {moved} m in 1 s but reports {kmh} km/h",
                    b["deviceId"]
                );
                let (lo, hi) = scenario.speed_kmh;
                assert!(kmh > lo * 0.7 && kmh < hi * 1.3, "{event}: {kmh} km/h");
                let centre = json!({"lat": scenario.lat, "lon": scenario.lon});
                assert!(distance_m(&centre, b) < scenario.radius * 2.0);
                let (lat, lon) = (b["lat"].as_f64().unwrap(), b["lon"].as_f64().unwrap());
                assert!((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon));
            }
            before = after;
        }
    }

    #[test]
    fn same_seed_same_tracks() {
        let run = |seed| {
            let mut world = World::new(&DemoConfig { devices: 5, seed, ..DemoConfig::default() });
            world.advance(30.0);
            all_positions(&world, 1)
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn iso8601_and_base64() {
        assert_eq!(crate::logging::rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(crate::logging::rfc3339_ms(1_749_995_112_862), "2025-06-15T13:45:12.862Z");
        assert_eq!(crate::logging::rfc3339_ms(1_709_208_000_001), "2024-02-29T12:00:00.001Z");
        assert_eq!(base64("demo:s3cret"), "ZGVtbzpzM2NyZXQ=");
        assert_eq!(base64("ab"), "YWI=");
        assert_eq!(base64("abc"), "YWJj");
    }

    #[test]
    fn urls_use_loopback_for_unspecified_addresses() {
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        assert_eq!(
            dashboard_url(any, "demo-rally", false),
            "http://127.0.0.1:9090/?event=demo-rally"
        );
        assert_eq!(
            dashboard_url(any, "demo-rally", true),
            "https://127.0.0.1:9090/?event=demo-rally"
        );
        let any6: SocketAddr = "[::]:1".parse().unwrap();
        assert_eq!(reachable(any6), "[::1]:1".parse::<SocketAddr>().unwrap());
        let host: SocketAddr = "10.1.2.3:80".parse().unwrap();
        assert_eq!(reachable(host), host);
    }

    /// The feed posts real HTTP with the token, right at start, and stops
    /// promptly; a fake ingest endpoint records what it got.
    #[test]
    fn posts_to_ingest_over_http_and_stops() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let config = DemoConfig {
            devices: 4,
            interval: Duration::from_millis(100),
            ingest_token: Some(Secret::new("s3cret")),
            seed: 7,
            https: false,
        };
        let started = Instant::now();
        let demo = start(addr, config).unwrap();
        assert_eq!(demo.events(), ["demo-marathon", "demo-regatta", "demo-rally"]);
        assert_eq!(demo.devices().len(), 4);
        // One tick: the gateway's batch, then boat-2 as Traccar Client and
        // runner-4 as OwnTracks; then the next tick's batch.
        let mut requests = Vec::new();
        for _ in 0..4 {
            let (mut conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = Vec::new();
            loop {
                let n = conn.read(&mut buf).unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(str::to_owned)
                        })
                        .unwrap()
                        .parse()
                        .unwrap();
                    if body.len() >= len {
                        break;
                    }
                }
                assert!(n > 0, "connection closed early");
            }
            conn.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 29\r\nConnection: close\r\n\r\n{\"accepted\":2,\"rejected\":[]}\n").unwrap();
            requests.push(String::from_utf8(got).unwrap());
        }
        assert!(started.elapsed() < Duration::from_secs(2));
        let body = |request: &str| -> Value {
            serde_json::from_str(request.split_once("\r\n\r\n").unwrap().1).unwrap()
        };
        for request in [&requests[0], &requests[3]] {
            assert!(request.starts_with("POST /ingest HTTP/1.1\r\n"), "{request}");
            // Header names are case-insensitive (ureq sends them lower-case).
            assert!(request.to_ascii_lowercase().contains("\r\nauthorization: bearer s3cret\r\n"));
            let ids: Vec<_> =
                body(request).as_array().unwrap().iter().map(|p| p["deviceId"].clone()).collect();
            assert_eq!(ids, [json!("runner-1"), json!("car-3")]);
        }
        let traccar = &requests[1];
        assert!(traccar.starts_with("POST /ingest/osmand?event=demo-regatta HTTP/1.1\r\n"));
        assert!(traccar.to_ascii_lowercase().contains("\r\nauthorization: bearer s3cret\r\n"));
        assert_eq!(body(traccar)["device_id"], "boat-2");
        assert!(body(traccar)["location"]["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
        let owntracks = requests[2].to_ascii_lowercase();
        assert!(owntracks.starts_with("post /ingest/owntracks?event=demo-marathon http/1.1\r\n"));
        // "demo:s3cret"
        assert!(owntracks.contains("\r\nauthorization: basic zgvtbzpzm2nyzxq=\r\n"), "{owntracks}");
        assert!(owntracks.contains("\r\nx-limit-u: demo\r\n"));
        assert!(owntracks.contains("\r\nx-limit-d: runner-4\r\n"));
        assert_eq!(body(&requests[2])["_type"], "location");
        assert_eq!(demo.devices()[3].1, "demo/runner-4");
        // Refused from now on: the feed's next post fails fast.
        drop(listener);
        let stopping = Instant::now();
        demo.stop();
        assert!(stopping.elapsed() < Duration::from_secs(1));
    }
}
