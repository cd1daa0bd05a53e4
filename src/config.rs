//! Every setting of livecast, read from the environment (SPEC §7).
//!
//! Two stages, as in ripgrep's flags: [`Config::from_vars`] is a pure
//! function from `(name, value)` pairs to a validated [`Config`], reporting
//! every bad variable at once in one [`ConfigError`]; [`Config::from_env`] is
//! the thin wrapper that feeds it `std::env::vars()`. `Config::default()` is
//! the embedded mode: HTTP ingest, no Redis, auth `none`, loopback only.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

/// A secret read from the environment (a token, a URL with a password).
///
/// Its `Debug` prints `***`, so a `{:?}` of the config can never leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself: only for comparing or forwarding, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// How upgrades are authenticated and subscribes authorized (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// Everyone is `anonymous` and may subscribe to anything.
    None,
    /// Bearer tokens from `LIVE_TOKENS_FILE`.
    Tokens,
    /// Credentials checked against a Directus instance.
    Directus,
}

/// Log line format (`LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration. Each field names its variable and default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// `LIVE_WS_HOST` (127.0.0.1): address of the WebSocket listener.
    pub ws_host: IpAddr,
    /// `LIVE_WS_PORT` (8080); 0 picks a free port (tests).
    pub ws_port: u16,
    /// `HTTP_HOST` (127.0.0.1): address of the metrics/ingest listener.
    pub http_host: IpAddr,
    /// `HTTP_PORT` (9090); 0 picks a free port (tests).
    pub http_port: u16,
    /// `LIVE_WS_MAX_CONNECTIONS` (10000): WebSocket connections, handshaking
    /// ones included; past it an upgrade gets 503.
    pub max_connections: usize,
    /// `LIVE_WS_MAX_CONNECTIONS_PER_IP` (0 = unlimited): past it, 503.
    pub max_connections_per_ip: usize,
    /// `LIVE_WS_HANDSHAKE_TIMEOUT_MS` (5000): a client that has not sent its
    /// whole upgrade request by then is dropped (slowloris).
    pub handshake_timeout: Duration,
    /// `LIVE_WS_PING_INTERVAL_MS` (30000): frame-level ping period; a peer
    /// silent for more than two of these is terminated.
    pub ping_interval: Duration,
    /// `LIVE_WS_MAX_INBOUND_PER_SEC` (20): sustained inbound frames per
    /// second past which a client is closed with 1008.
    pub max_inbound_per_sec: u32,
    /// `LIVE_WS_MAX_MESSAGE_BYTES` (4096): larger inbound frames close 1009.
    pub max_message_bytes: usize,
    /// `LIVE_WS_QUEUE_CAPACITY` (64): entries in a client's outbound queue.
    pub queue_capacity: usize,
    /// `LIVE_WS_BACKPRESSURE_THRESHOLD_BYTES` (1048576): queued-unsent bytes
    /// past which a client is closed with 1008.
    pub backpressure_threshold_bytes: usize,
    /// `LIVE_WS_DRAIN_TIMEOUT_MS` (5000): how long a stop waits for clients
    /// to answer the 1001 close before terminating them.
    pub drain_timeout: Duration,
    /// `LIVE_WS_RECONNECT_SPREAD_MS` (10000): the `retry-after-ms` values
    /// handed out at shutdown are spread evenly over this window.
    pub reconnect_spread: Duration,
    /// `LIVE_WS_MAX_SUBSCRIPTIONS` (32): subscriptions per connection.
    pub max_subscriptions: usize,
    /// `LIVE_WS_THREAD_STACK_BYTES` (262144): stack of connection threads.
    pub thread_stack_bytes: usize,
    /// `LIVE_WS_ALLOWED_ORIGINS` (unset): comma list of allowed `Origin`s.
    pub allowed_origins: Vec<String>,
    /// `LIVE_AUTH_MODE` (`none`).
    pub auth_mode: AuthMode,
    /// `LIVE_AUTH_ALLOW_INSECURE` (0): allow mode `none` on a non-loopback
    /// `LIVE_WS_HOST`.
    pub auth_allow_insecure: bool,
    /// `LIVE_TOKENS_FILE`: required in mode `tokens`.
    pub tokens_file: Option<PathBuf>,
    /// `INGEST_MAX_BODY_BYTES` (8388608): larger ingest bodies get 413.
    pub ingest_max_body_bytes: usize,
    /// `INGEST_TOKEN` (unset): bearer token required by `POST /ingest`.
    pub ingest_token: Option<Secret>,
    /// `REDIS_URL` (unset): Redis Stream source.
    pub redis_url: Option<Secret>,
    /// `LIVE_STREAM_KEY` (`positions`).
    pub stream_key: String,
    /// `LIVE_BROADCAST_GROUP_PREFIX` (`livecast:`).
    pub group_prefix: String,
    /// `INSTANCE_ID` (hostname plus a random suffix).
    pub instance_id: String,
    /// Whether `INSTANCE_ID` was set (a random one's group is destroyed on
    /// graceful shutdown).
    pub instance_id_configured: bool,
    /// `LIVE_BROADCAST_BATCH_SIZE` (500): `XREADGROUP COUNT`.
    pub batch_size: usize,
    /// `LIVE_BROADCAST_BATCH_BLOCK_MS` (1000): `XREADGROUP BLOCK`.
    pub batch_block: Duration,
    /// `DIRECTUS_BASE_URL`: required in mode `directus`.
    pub directus_base_url: Option<String>,
    /// `DIRECTUS_AUTH_TIMEOUT_MS` (3000).
    pub directus_auth_timeout: Duration,
    /// `DIRECTUS_AUTHZ_TIMEOUT_MS` (3000).
    pub directus_authz_timeout: Duration,
    /// `DIRECTUS_EVENTS_COLLECTION` (`events`).
    pub directus_events_collection: String,
    /// `DIRECTUS_DEVICES_COLLECTION` (`devices`).
    pub directus_devices_collection: String,
    /// `DIRECTUS_TOKEN` (unset): static token for the device→event map.
    pub directus_token: Option<Secret>,
    /// `LIVE_AUTH_CACHE_TTL_MS` (30000).
    pub auth_cache_ttl: Duration,
    /// `LIVE_AUTH_REVALIDATE_MS` (300000).
    pub auth_revalidate: Duration,
    /// `LIVE_DEVICE_EVENT_FILE` (unset): JSON `{"device":"event"}` map.
    pub device_event_file: Option<PathBuf>,
    /// `LIVE_DEVICE_EVENT_REFRESH_MS` (30000).
    pub device_event_refresh: Duration,
    /// `LOG_LEVEL` (`info`).
    pub log_level: log::LevelFilter,
    /// `LOG_FORMAT` (`text`).
    pub log_format: LogFormat,
}

impl Default for Config {
    fn default() -> Config {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Config {
            ws_host: loopback,
            ws_port: 8080,
            http_host: loopback,
            http_port: 9090,
            max_connections: 10_000,
            max_connections_per_ip: 0,
            handshake_timeout: Duration::from_millis(5000),
            ping_interval: Duration::from_millis(30_000),
            max_inbound_per_sec: 20,
            max_message_bytes: 4096,
            queue_capacity: 64,
            backpressure_threshold_bytes: 1_048_576,
            drain_timeout: Duration::from_millis(5000),
            reconnect_spread: Duration::from_millis(10_000),
            max_subscriptions: 32,
            thread_stack_bytes: 262_144,
            allowed_origins: Vec::new(),
            auth_mode: AuthMode::None,
            auth_allow_insecure: false,
            tokens_file: None,
            ingest_max_body_bytes: 8 * 1024 * 1024,
            ingest_token: None,
            redis_url: None,
            stream_key: "positions".to_owned(),
            group_prefix: "livecast:".to_owned(),
            instance_id: default_instance_id(),
            instance_id_configured: false,
            batch_size: 500,
            batch_block: Duration::from_millis(1000),
            directus_base_url: None,
            directus_auth_timeout: Duration::from_millis(3000),
            directus_authz_timeout: Duration::from_millis(3000),
            directus_events_collection: "events".to_owned(),
            directus_devices_collection: "devices".to_owned(),
            directus_token: None,
            auth_cache_ttl: Duration::from_millis(30_000),
            auth_revalidate: Duration::from_millis(300_000),
            device_event_file: None,
            device_event_refresh: Duration::from_millis(30_000),
            log_level: log::LevelFilter::Info,
            log_format: LogFormat::Text,
        }
    }
}

/// Hostname plus a random suffix, so that two instances on one host differ.
fn default_instance_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    let host = if host.is_empty() { "livecast".to_owned() } else { host };
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", suffix.get(..8).unwrap_or("0"))
}
