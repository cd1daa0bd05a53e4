//! livecast: a self-hosted WebSocket server that pushes live GPS positions
//! of tracked devices to dashboard clients.
//!
//! # Architecture: one blocking thread per client
//!
//! ```text
//!  trackers ─XADD─> Redis Stream ─XREADGROUP─> [redis-source] ──┐
//!  POST /ingest ─> [http-N] ─ validate; no Redis: direct, Redis: XADD
//!                                                               v  bounded channel of commands
//!                                                       [broadcaster]  owns event -> subscribers,
//!                                                         │            latest positions, device map
//!                                                         │ try_send(Arc<batch>) never blocks
//!                                                         v
//!  [acceptor] ─spawn─> [ws-1a2b3c4d] one per client: handshake (limit, Origin, auth) -> 101,
//!                        then epoll(socket, eventfd; timeout = next heartbeat deadline)
//!                        -> write every queued frame, flush once -> read until WouldBlock
//!  [device-map] refreshes the device->event map; [http] serves /metrics /healthz /readyz ...
//! ```
//!
//! Four decisions carry the design:
//! - **One owner of the registry.** Subscribes travel to the broadcaster as
//!   commands; it registers the client and queues the snapshot in the same
//!   step, so the snapshot/live handover is exact without locks.
//! - **Serialise once.** A position becomes JSON once; the same
//!   reference-counted batch goes to every subscriber of its event.
//! - **Coalesce writes.** A connection thread that wakes to k frames writes
//!   them all and flushes once.
//! - **Back-pressure is bookkeeping.** A full bounded queue (or too many
//!   queued bytes) marks the client for a 1008 close; nobody waits.
//!
//! # Modules
//!
//! No import cycle between the modules of `src/`: `server` (the WebSocket
//! side) and `http` (the ops port) do not import each other; both, and
//! `auth`, speak HTTP through `http_codec`, a leaf. `start` builds each
//! side's state and hands it its parts: `server::Shared` for the
//! connection threads, `http::OpsState` for the routes (the connection
//! registry and the `accepting` flag are shared between the two). `auth`
//! and `source` (the device map) reach Directus through `directus`. Both
//! ports' connection threads read and write through `transport`, plain TCP
//! or TLS (`TLS_CERT_FILE`), another leaf: one connection loop either way.
//!
//! Use [`start`] to run a server and [`Server::stop`] to stop it.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)
)]

mod accept;
mod auth;
mod broadcast;
mod config;
pub mod demo;
mod directus;
#[doc(hidden)]
pub mod fuzzing;
mod http;
mod http_codec;
pub mod logging;
mod metrics;
mod outbound;
mod position;
mod protocol;
mod proxy;
mod server;
mod source;
mod thread;
mod transport;

use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{info, warn};

pub use config::{AuthMode, Config, ConfigError, LogFormat, Secret};
pub use proxy::TrustedProxies;

use accept::Acceptor;
use broadcast::{Broadcaster, Command};
use http::runtime::{HttpServer, PortLimits};
use protocol::CloseReason;
pub use server::Service;
use server::{Shared, WsPort};
use source::device_map::{MapSource, Refresher};
use source::redis::RedisSource;

/// Why [`start`] failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A listener could not be bound (port in use, no permission).
    Bind {
        /// Which listener: `websocket` or `http`.
        what: &'static str,
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A thread could not be spawned.
    Spawn(std::io::Error),
    /// The configuration cannot run (e.g. an unreadable tokens file, a mode
    /// this build does not offer).
    Setup(String),
    /// The TLS certificate pair cannot be used (unreadable, malformed, or
    /// a key that is not the certificate's): a configuration error, found
    /// before any port is bound. The text never holds a byte of the files.
    Tls(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { what, addr, source } => {
                write!(f, "start: cannot listen for {what} on {addr}: {source}")
            }
            StartError::Spawn(e) => write!(f, "start: cannot spawn a thread: {e}"),
            StartError::Setup(why) => write!(f, "start: {why}"),
            StartError::Tls(why) => write!(f, "start: {why}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Bind { source, .. } | StartError::Spawn(source) => Some(source),
            StartError::Setup(_) | StartError::Tls(_) => None,
        }
    }
}

/// A running server. Dropping it stops it (with the configured drain
/// timeout); [`Server::stop`] does so with a timeout of your choice.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    acceptor: Acceptor,
    http: HttpServer,
    broadcaster: Option<JoinHandle<()>>,
    device_map: Option<Refresher>,
    redis_source: Option<RedisSource>,
    /// Reloads the TLS pair (`SIGHUP`, file changes) when TLS is on.
    tls_reloader: Option<transport::Reloader>,
    /// Which ports speak TLS: (WebSocket, HTTP).
    tls_ports: (bool, bool),
    stopped: bool,
}

/// Capacity of the broadcaster's inbox. Producers block when it is full,
/// which slows ingest down rather than growing memory.
const COMMAND_CAPACITY: usize = 4096;

/// Starts every thread and returns once both ports are listening.
///
/// # Errors
/// [`StartError`] when a port cannot be bound, a thread cannot be spawned,
/// or the auth mode cannot start.
pub fn start(config: Config) -> Result<Server, StartError> {
    start_with(config, Service::Live)
}

/// [`start`] with another message handler on every connection: used by
/// the `livecast-echo` conformance target.
///
/// # Errors
/// As [`start`].
pub fn start_with(mut config: Config, service: Service) -> Result<Server, StartError> {
    config.max_connections = fit_open_files_limit(config.max_connections);
    let metrics =
        metrics::Metrics::new().map_err(|e| StartError::Setup(format!("metrics: {e}")))?;
    let auth = auth::from_config(&config, &metrics).map_err(StartError::Setup)?;
    if config.auth_mode == AuthMode::None {
        warn!("LIVE_AUTH_MODE=none: every client may subscribe to every event");
    }
    // Read before any port is bound: a bad pair is a configuration error.
    let tls = match (&config.tls_cert_file, &config.tls_key_file) {
        (Some(cert), Some(key)) => Some(Arc::new(
            transport::TlsSetup::load(cert, key).map_err(|e| StartError::Tls(e.to_string()))?,
        )),
        _ => None,
    };
    let ws_tls = tls.as_ref().map(|setup| setup.tls());
    let http_tls = tls.as_ref().filter(|_| config.http_tls).map(|setup| setup.tls());
    let tls_ports = (ws_tls.is_some(), http_tls.is_some());

    let ws_addr = SocketAddr::new(config.ws_host, config.ws_port);
    let ws_listener = bind_listener(ws_addr).map_err(|source| StartError::Bind {
        what: "websocket",
        addr: ws_addr,
        source,
    })?;
    let http_addr = SocketAddr::new(config.http_host, config.http_port);
    let http_listener = bind_listener(http_addr).map_err(|source| StartError::Bind {
        what: "http",
        addr: http_addr,
        source,
    })?;

    let (commands, inbox) = crossbeam_channel::bounded(COMMAND_CAPACITY);
    let broadcaster = Broadcaster::new(metrics.clone(), &config);
    let broadcaster =
        thread::spawn_named("broadcaster".into(), None, move || broadcaster.run(&inbox))
            .map_err(StartError::Spawn)?;

    let routing = source::device_map::SharedMap::default();
    let device_map = match MapSource::from_config(&config) {
        Some(source) => Some(
            Refresher::start(
                source,
                config.device_event_refresh,
                commands.clone(),
                metrics.clone(),
                Arc::clone(&routing),
            )
            .map_err(StartError::Spawn)?,
        ),
        None => None,
    };

    let limits = PortLimits {
        max_body_bytes: config.ingest_max_body_bytes,
        max_head_bytes: 16 * 1024,
        max_connections: config.http_max_connections,
        max_connections_per_ip: config.http_max_connections_per_ip,
        trusted_proxies: config.trusted_proxies.clone(),
        read_timeout: Duration::from_secs(30),
        write_timeout: config.http_write_timeout,
        hosts: proxy::HostRule::new(&config.public_hosts, config.http_host),
        head_timeout: config.http_head_timeout,
        idle_timeout: Duration::from_secs(60),
        tls: http_tls,
    };
    let redis = match config.redis_url {
        Some(_) => Some(source::redis::client(&config).map_err(StartError::Setup)?),
        None => None,
    };
    let status = redis.as_ref().map(|_| Arc::new(source::redis::SourceStatus::new()));
    let sink = redis.clone().map(|client| source::redis::StreamSink::new(&config, client));
    let redis_source = match (redis, &status) {
        (Some(client), Some(status)) => Some(
            RedisSource::start(
                &config,
                client,
                commands.clone(),
                metrics.clone(),
                Arc::clone(status),
            )
            .map_err(StartError::Spawn)?,
        ),
        _ => None,
    };
    // The dashboard needs the port clients can reach, the real one when 0
    // was asked for.
    let ws_port = ws_listener.local_addr().map_or(config.ws_port, |a| a.port());
    let http_port = http_listener.local_addr().map_or(config.http_port, |a| a.port());
    let settings = http::RouteSettings::from_config(&config);
    let mut shared = Shared::new(config, metrics.clone(), service, commands.clone(), auth);
    shared.tls = ws_tls;
    let shared = Arc::new(shared);
    let ops = http::OpsState {
        settings,
        metrics,
        commands,
        sink,
        source: status,
        connections: Arc::clone(&shared.connections),
        accepting: Arc::clone(&shared.accepting),
        device_map: routing,
    };
    let routes = Arc::new(http::Routes::new(ops, ws_port, http_port));
    let refused = Some(shared.metrics.http_refused.clone());
    let http =
        HttpServer::start(http_listener, limits, routes, refused).map_err(StartError::Spawn)?;
    let ws_port = WsPort { shared: Arc::clone(&shared) };
    let acceptor = Acceptor::start("acceptor", ws_listener, Arc::clone(&shared.admission), ws_port)
        .map_err(StartError::Spawn)?;
    let tls_reloader = match tls {
        Some(setup) => {
            let metrics = transport::TlsMetrics {
                reloads: shared.metrics.tls_reloads.clone(),
                expiry: shared.metrics.tls_certificate_expiry.clone(),
            };
            metrics.expiry.set(setup.not_after().unwrap_or(0));
            setup.log_serving("loaded at start");
            Some(transport::Reloader::start(setup, metrics).map_err(StartError::Spawn)?)
        }
        None => None,
    };
    let (ws_scheme, http_scheme) = schemes(tls_ports);
    info!(
        "livecast {} instance {} ready: {ws_scheme}://{} {http_scheme}://{}",
        env!("CARGO_PKG_VERSION"),
        shared.config.instance_id,
        acceptor.local_addr(),
        http.local_addr()
    );
    Ok(Server {
        shared,
        acceptor,
        http,
        broadcaster: Some(broadcaster),
        device_map,
        redis_source,
        tls_reloader,
        tls_ports,
        stopped: false,
    })
}

impl Server {
    /// The WebSocket listener's address (with the real port when 0 was
    /// asked for).
    pub fn ws_addr(&self) -> SocketAddr {
        self.acceptor.local_addr()
    }

    /// The HTTP (ops) listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// The URL schemes of the two ports, `("ws", "http")` or with TLS
    /// `("wss", "https")` (the HTTP port stays `http` with `HTTP_TLS=off`).
    pub fn schemes(&self) -> (&'static str, &'static str) {
        schemes(self.tls_ports)
    }

    /// Stops gracefully, in the order SPEC §2 gives: stop accepting, send
    /// every client close 1001 with its own `retry-after-ms`, wait up to
    /// `drain` for them to close, terminate the rest, then stop the
    /// position sources and the HTTP server. Blocks until done.
    pub fn stop(mut self, drain: Duration) {
        self.shutdown(drain);
    }

    fn shutdown(&mut self, drain: Duration) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        let shared = &self.shared;
        shared.accepting.store(false, Ordering::SeqCst);
        self.acceptor.stop();

        let clients: Vec<_> = shared.connections.read().values().cloned().collect();
        info!("stopping: closing {} connections (drain up to {drain:?})", clients.len());
        let spread = u64::try_from(shared.config.reconnect_spread.as_millis()).unwrap_or(u64::MAX);
        let n = clients.len() as u64;
        for (i, client) in (0u64..).zip(&clients) {
            let retry_after_ms = spread.saturating_mul(i) / n.max(1);
            client.request_close(CloseReason::Shutdown { retry_after_ms });
        }
        let deadline = Instant::now() + drain;
        wait_until(deadline, || shared.connections.read().is_empty());
        let stragglers: Vec<_> = shared.connections.read().values().cloned().collect();
        for client in &stragglers {
            warn!("{} {}: did not close in time, terminating", client.thread_name, client.remote);
            client.terminate();
        }
        // Handshaking threads end at their own handshake deadline.
        shared.admission.wait_empty(Instant::now() + Duration::from_secs(1));

        // The source acknowledges what it handed over, then stops.
        if let Some(mut source) = self.redis_source.take() {
            source.stop();
        }
        if let Some(mut refresher) = self.device_map.take() {
            refresher.stop();
        }
        let _ = shared.commands.send(Command::Shutdown);
        if let Some(thread) = self.broadcaster.take() {
            let _ = thread.join();
        }
        self.http.stop(Instant::now() + Duration::from_secs(1));
        if let Some(mut reloader) = self.tls_reloader.take() {
            reloader.stop();
        }
        info!("stopped");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let drain = self.shared.config.drain_timeout;
        self.shutdown(drain);
    }
}

/// The URL schemes of the ports, from whether each speaks TLS.
fn schemes((ws, http): (bool, bool)) -> (&'static str, &'static str) {
    (if ws { "wss" } else { "ws" }, if http { "https" } else { "http" })
}

/// Waits for `done` with short polls; used only on the stop path.
fn wait_until(deadline: Instant, done: impl Fn() -> bool) {
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Backlog of pending connections asked of `listen(2)` (the kernel caps it
/// at `net.core.somaxconn`, 4096 on current kernels). std's `bind` asks for
/// 128: a connect storm of a few thousand dashboards overflows that, and
/// every overflowed client waits a full SYN retry (1 s) before it is seen.
const LISTEN_BACKLOG: i32 = 4096;

/// Binds a listener like `TcpListener::bind`, with [`LISTEN_BACKLOG`].
fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, sockopt};
    let family = if addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    // As std does: a restarted server may bind while old connections linger
    // in TIME_WAIT.
    sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, LISTEN_BACKLOG)?;
    Ok(TcpListener::from(fd))
}

/// Raises the open-files soft limit to the hard limit (every client is a
/// socket, an eventfd and an epoll instance) and returns the connection
/// cap that fits in it.
///
/// Past the limit `accept` would fail with `EMFILE` and clients would see
/// resets, so the cap is lowered to what fits and they get a clean 503
/// instead. The default cap (10,000) does not fit a common 20,000-file
/// limit: that is said at `info` with the figure, while an explicit
/// `LIVE_WS_MAX_CONNECTIONS` that does not fit is a `warn`.
fn fit_open_files_limit(max_connections: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            warn!("cannot raise the open-files limit: {e}");
        }
    }
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let (fits, needed) = connections_that_fit(soft, max_connections);
    if fits < max_connections {
        let default = Config::default().max_connections;
        let message = format!(
            "serving at most {fits} WebSocket connections: the open-files limit is {soft} and \
             LIVE_WS_MAX_CONNECTIONS={max_connections} needs about {needed}; raise the hard \
             limit (ulimit -Hn, LimitNOFILE=) to serve more"
        );
        if max_connections == default {
            info!("{message}");
        } else {
            warn!("{message}");
        }
    }
    fits
}

/// Three descriptors per connection (socket, eventfd, epoll) plus headroom
/// for the HTTP port, Redis and Directus: how many connections `soft` open
/// files fit (at least one, at most `wanted`), and how many files `wanted`
/// needs.
fn connections_that_fit(soft: u64, wanted: usize) -> (usize, u64) {
    const PER_CONNECTION: u64 = 3;
    const HEADROOM: u64 = 64 + 2 * 256; // HTTP connections, Redis, Directus
    let needed = (wanted as u64).saturating_mul(PER_CONNECTION).saturating_add(HEADROOM);
    let fits = soft.saturating_sub(HEADROOM) / PER_CONNECTION;
    (usize::try_from(fits).unwrap_or(usize::MAX).clamp(1, wanted), needed)
}

#[cfg(test)]
mod tests {
    use super::connections_that_fit;

    #[test]
    fn the_connection_cap_fits_the_open_files_limit() {
        assert_eq!(connections_that_fit(20_000, 10_000), (6_474, 30_576));
        assert_eq!(connections_that_fit(1_048_576, 10_000).0, 10_000);
        assert_eq!(connections_that_fit(100, 10_000).0, 1);
        assert_eq!(connections_that_fit(u64::MAX, 5).0, 5);
    }
}
