//! Every Prometheus handle of one server instance (SPEC §7).
//!
//! Each [`crate::Server`] owns its own registry, so that several servers in
//! one process (the integration tests) never mix their counts. Handles are
//! cheap to clone and lock-free to update from any thread.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// Buckets for latencies that should sit in the millisecond range.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets for counts of positions in a snapshot.
const SIZE_BUCKETS: &[f64] = &[0.0, 1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0];

/// Buckets for the flush interval: 0 (small fan-outs) up to the 20 ms
/// default cap and beyond.
const INTERVAL_BUCKETS: &[f64] =
    &[0.0, 0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05, 0.1];

/// All metrics, registered in a private [`Registry`].
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) connections_open: IntGauge,
    pub(crate) connections_opened: IntCounter,
    pub(crate) connections_closed: IntCounterVec,
    pub(crate) upgrades_rejected: IntCounterVec,
    /// WebSocket connections refused by the acceptor, by reason
    /// (`capacity`, `per-ip`, `pending`).
    pub(crate) ws_refused: IntCounterVec,
    /// HTTP connections or requests refused, by reason (`capacity`,
    /// `per-ip`, `head-timeout`).
    pub(crate) http_refused: IntCounterVec,
    pub(crate) backpressure_closes: IntCounter,
    pub(crate) inbound_messages: IntCounterVec,
    pub(crate) outbound_messages: IntCounterVec,
    pub(crate) auth_duration: HistogramVec,
    pub(crate) authz_duration: HistogramVec,
    pub(crate) auth_cache_hits: IntCounterVec,
    pub(crate) revalidation_closes: IntCounter,
    pub(crate) subscriptions: IntGauge,
    pub(crate) positions_received: IntCounterVec,
    pub(crate) positions_rejected: IntCounterVec,
    pub(crate) positions_broadcast: IntCounter,
    pub(crate) positions_unrouted: IntCounter,
    pub(crate) fanout_deliveries: IntCounter,
    pub(crate) broadcast_lag: Histogram,
    pub(crate) snapshot_duration: Histogram,
    pub(crate) snapshot_positions: Histogram,
    pub(crate) cache_devices: IntGauge,
    pub(crate) cache_evictions: IntCounter,
    pub(crate) trail_positions: IntGauge,
    pub(crate) cache_bytes: IntGauge,
    pub(crate) snapshot_builds: IntCounter,
    pub(crate) broadcast_flushes: IntCounter,
    pub(crate) broadcast_wakeups: IntCounter,
    /// Deliveries the broadcaster wrote into a sleeping client's socket
    /// itself (write-through) instead of waking its thread.
    pub(crate) fanout_direct_writes: IntCounter,
    pub(crate) broadcast_flush_interval: Histogram,
    pub(crate) device_map_size: IntGauge,
    pub(crate) device_map_refresh_failures: IntCounter,
    pub(crate) redis_connected: IntGauge,
    pub(crate) redis_batches: IntCounter,
    pub(crate) redis_read_errors: IntCounter,
    pub(crate) redis_reconnects: IntCounter,
    pub(crate) redis_pending: IntGauge,
    /// Tracker messages answered but not positions (SPEC §10), by
    /// `protocol` and `type` (OwnTracks `lwt`, `empty`, …).
    pub(crate) tracker_messages_ignored: IntCounterVec,
    /// Reloads of the TLS pair, by result (`ok`, `error`).
    pub(crate) tls_reloads: IntCounterVec,
    /// `notAfter` of the certificate served, in seconds since the epoch.
    pub(crate) tls_certificate_expiry: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// Only on a programming error (two metrics with one name).
    pub(crate) fn new() -> prometheus::Result<Metrics> {
        let registry = Registry::new_custom(Some("livecast".to_owned()), None)?;
        let r = &registry;
        Ok(Metrics {
            connections_open: reg(
                r,
                IntGauge::new("connections_open", "Open WebSocket connections")?,
            )?,
            connections_opened: reg(
                r,
                IntCounter::new("connections_opened_total", "WebSocket connections opened")?,
            )?,
            connections_closed: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "connections_closed_total",
                        "WebSocket connections closed, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            upgrades_rejected: reg(
                r,
                IntCounterVec::new(
                    Opts::new("upgrades_rejected_total", "Refused upgrades, by HTTP status"),
                    &["status"],
                )?,
            )?,
            ws_refused: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ws_refused_total",
                        "WebSocket connections refused before their handshake, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            http_refused: reg(
                r,
                IntCounterVec::new(
                    Opts::new("http_refused_total", "HTTP connections refused, by reason"),
                    &["reason"],
                )?,
            )?,
            backpressure_closes: reg(
                r,
                IntCounter::new(
                    "backpressure_closes_total",
                    "Clients closed because their queue or queued bytes overflowed",
                )?,
            )?,
            inbound_messages: reg(
                r,
                IntCounterVec::new(
                    Opts::new("inbound_messages_total", "Frames received from clients, by type"),
                    &["type"],
                )?,
            )?,
            outbound_messages: reg(
                r,
                IntCounterVec::new(
                    Opts::new("outbound_messages_total", "Messages sent to clients, by type"),
                    &["type"],
                )?,
            )?,
            auth_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new("auth_duration_seconds", "Upgrade authentication time")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["outcome"],
                )?,
            )?,
            authz_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new("authz_duration_seconds", "Subscribe authorization time")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                    &["outcome"],
                )?,
            )?,
            auth_cache_hits: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "auth_cache_hits_total",
                        "Auth (kind=auth) and authz (kind=authz) decisions answered from the \
                         cache or from a concurrent identical lookup, without a Directus call",
                    ),
                    &["kind"],
                )?,
            )?,
            revalidation_closes: reg(
                r,
                IntCounter::new(
                    "revalidation_closes_total",
                    "Connections closed with 4401 because their session stopped validating",
                )?,
            )?,
            subscriptions: reg(r, IntGauge::new("subscriptions", "Active subscriptions")?)?,
            positions_received: reg(
                r,
                IntCounterVec::new(
                    Opts::new("positions_received_total", "Valid positions received, by source"),
                    &["source"],
                )?,
            )?,
            positions_rejected: reg(
                r,
                IntCounterVec::new(
                    Opts::new("positions_rejected_total", "Invalid positions rejected, by source"),
                    &["source"],
                )?,
            )?,
            positions_broadcast: reg(
                r,
                IntCounter::new("positions_broadcast_total", "Positions routed to an event")?,
            )?,
            positions_unrouted: reg(
                r,
                IntCounter::new(
                    "positions_unrouted_total",
                    "Positions without eventId whose device is not in the device map",
                )?,
            )?,
            fanout_deliveries: reg(
                r,
                IntCounter::new(
                    "fanout_deliveries_total",
                    "Position messages queued to subscribers (one per subscriber)",
                )?,
            )?,
            broadcast_lag: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "broadcast_lag_seconds",
                        "Time from a position's ts to its broadcast",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            snapshot_duration: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("snapshot_duration_seconds", "Time to build a snapshot")
                        .buckets(LATENCY_BUCKETS.to_vec()),
                )?,
            )?,
            snapshot_positions: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new("snapshot_positions", "Positions per snapshot")
                        .buckets(SIZE_BUCKETS.to_vec()),
                )?,
            )?,
            cache_devices: reg(
                r,
                IntGauge::new("cache_devices", "Devices in the latest-position cache")?,
            )?,
            cache_evictions: reg(
                r,
                IntCounter::new(
                    "cache_evictions_total",
                    "Devices evicted from the cache (the stalest) to stay within \
                     LIVE_CACHE_MAX_DEVICES",
                )?,
            )?,
            trail_positions: reg(
                r,
                IntGauge::new("trail_positions", "Older positions held in device trails")?,
            )?,
            cache_bytes: reg(
                r,
                IntGauge::new(
                    "cache_bytes",
                    "Bytes held by the latest-position cache, as counted against \
                     LIVE_CACHE_MAX_BYTES",
                )?,
            )?,
            snapshot_builds: reg(
                r,
                IntCounter::new(
                    "snapshot_builds_total",
                    "subscribed answers built from the cache (one per event and cache \
                     state, whatever the trail lengths asked)",
                )?,
            )?,
            broadcast_flushes: reg(
                r,
                IntCounter::new(
                    "broadcast_flushes_total",
                    "Batches of one event's positions handed to its subscribers",
                )?,
            )?,
            broadcast_wakeups: reg(
                r,
                IntCounter::new(
                    "broadcast_wakeups_total",
                    "Sleeping connection threads woken by the broadcaster",
                )?,
            )?,
            fanout_direct_writes: reg(
                r,
                IntCounter::new(
                    "fanout_direct_writes_total",
                    "Position batches the broadcaster wrote into a sleeping client's socket itself",
                )?,
            )?,
            broadcast_flush_interval: reg(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "broadcast_flush_interval_seconds",
                        "Per event, the shortest time between two flushes in force at each \
                         flush (adapted to the measured fan-out cost)",
                    )
                    .buckets(INTERVAL_BUCKETS.to_vec()),
                )?,
            )?,
            device_map_size: reg(
                r,
                IntGauge::new("device_map_size", "Devices in the device->event map")?,
            )?,
            device_map_refresh_failures: reg(
                r,
                IntCounter::new(
                    "device_map_refresh_failures_total",
                    "Failed device->event map refreshes (the previous map is kept)",
                )?,
            )?,
            redis_connected: reg(
                r,
                IntGauge::new("redis_connected", "1 while the Redis stream source is connected")?,
            )?,
            redis_batches: reg(
                r,
                IntCounter::new("redis_batches_total", "Non-empty XREADGROUP batches read")?,
            )?,
            redis_read_errors: reg(
                r,
                IntCounter::new("redis_read_errors_total", "Failed Redis reads and acks")?,
            )?,
            redis_reconnects: reg(
                r,
                IntCounter::new(
                    "redis_reconnects_total",
                    "Reconnections to Redis after a failure",
                )?,
            )?,
            redis_pending: reg(
                r,
                IntGauge::new(
                    "redis_pending",
                    "Entries delivered to this instance's group but not yet acknowledged",
                )?,
            )?,
            tracker_messages_ignored: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tracker_messages_ignored_total",
                        "Tracker messages answered and ignored (not positions), by protocol \
                         and type",
                    ),
                    &["protocol", "type"],
                )?,
            )?,
            tls_reloads: reg(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tls_reloads_total",
                        "Reloads of the TLS certificate pair, by result",
                    ),
                    &["result"],
                )?,
            )?,
            tls_certificate_expiry: reg(
                r,
                IntGauge::new(
                    "tls_certificate_expiry_timestamp_seconds",
                    "notAfter of the TLS certificate served (0: TLS off or unknown)",
                )?,
            )?,
            registry,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec only fails on a malformed metric family,
        // which our fixed set cannot produce; an empty page is the fallback.
        if TextEncoder::new().encode(&self.registry.gather(), &mut out).is_err() {
            out.clear();
        }
        out
    }
}

/// Registers `metric` and hands it back.
fn reg<M>(registry: &Registry, metric: M) -> prometheus::Result<M>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}
