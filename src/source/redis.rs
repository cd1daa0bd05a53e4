//! The Redis Stream source (SPEC §4): the `redis-source` thread, and the
//! sink that appends ingested positions to the stream.
//!
//! Each instance reads `LIVE_STREAM_KEY` with its own consumer group
//! (`LIVE_BROADCAST_GROUP_PREFIX` + `INSTANCE_ID`), so every instance sees
//! every position. Entries are acknowledged once handed to the broadcaster.
//! On (re)connect the thread first re-reads the entries its group delivered
//! to this consumer but never acknowledged (a crash of the same instance
//! id), then new ones. Redis going away never ends the process: the thread
//! reconnects with capped exponential backoff while `/readyz` says why it
//! is not ready.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use log::{debug, info, warn};
use parking_lot::Mutex;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{Client, Connection, RedisError, Value};

use crate::broadcast::Command;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::position::Position;
use crate::thread::spawn_named;

/// Longest wait for a TCP connection to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Slack over `BLOCK` for a read, and the timeout of every other command.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const INITIAL_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the pending count of the group is sampled.
const PENDING_PERIOD: Duration = Duration::from_secs(5);

/// Whether the position source is connected, for `/readyz`.
#[derive(Debug)]
pub(crate) struct SourceStatus {
    connected: AtomicBool,
    reason: Mutex<String>,
}

impl SourceStatus {
    pub(crate) fn new() -> SourceStatus {
        SourceStatus {
            connected: AtomicBool::new(false),
            reason: Mutex::new("redis: connecting".into()),
        }
    }

    /// `Ok` when connected, else why not.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.connected.load(Ordering::SeqCst) { Ok(()) } else { Err(self.reason.lock().clone()) }
    }

    fn up(&self, metrics: &Metrics) {
        self.connected.store(true, Ordering::SeqCst);
        metrics.redis_connected.set(1);
    }

    fn down(&self, metrics: &Metrics, reason: String) {
        *self.reason.lock() = reason;
        self.connected.store(false, Ordering::SeqCst);
        metrics.redis_connected.set(0);
    }
}

/// Stream names of one instance.
#[derive(Debug, Clone)]
struct Names {
    key: String,
    group: String,
    consumer: String,
}

/// The running `redis-source` thread.
#[derive(Debug)]
pub(crate) struct RedisSource {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Opens the client of `REDIS_URL` (no I/O yet).
pub(crate) fn client(config: &Config) -> Result<Client, String> {
    let url = config.redis_url.as_ref().ok_or("REDIS_URL is not set")?;
    // The URL may carry a password: the error names the variable only.
    Client::open(url.expose()).map_err(|e| format!("REDIS_URL: {:?}", e.kind()))
}

impl RedisSource {
    /// Starts the thread. It connects, creates the group (and the stream)
    /// when missing, warms the latest-position cache from the stream's
    /// tail, then reads the group until stopped.
    pub(crate) fn start(
        config: &Config,
        client: Client,
        commands: Sender<Command>,
        metrics: Metrics,
        status: Arc<SourceStatus>,
    ) -> std::io::Result<RedisSource> {
        let names = Names {
            key: config.stream_key.clone(),
            group: format!("{}{}", config.group_prefix, config.instance_id),
            consumer: config.instance_id.clone(),
        };
        let reader = Reader {
            client,
            names,
            commands,
            metrics,
            status,
            batch: config.batch_size,
            block: config.batch_block,
            warm_count: config.warm_count,
            max_position_bytes: config.max_position_bytes,
            destroy_group: !config.instance_id_configured,
        };
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(0);
        let thread = spawn_named("redis-source".into(), None, move || reader.run(&stop_rx))?;
        Ok(RedisSource { stop: Some(stop_tx), thread: Some(thread) })
    }

    /// Stops reading (after the batch in hand is acknowledged) and joins.
    /// Blocks for up to one `BLOCK` period.
    pub(crate) fn stop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How a session with Redis ended.
enum SessionEnd {
    /// A stop was asked.
    Stopped,
    /// Redis failed; reconnect.
    Failed(RedisError),
}

impl From<RedisError> for SessionEnd {
    fn from(e: RedisError) -> SessionEnd {
        SessionEnd::Failed(e)
    }
}

struct Reader {
    client: Client,
    names: Names,
    commands: Sender<Command>,
    metrics: Metrics,
    status: Arc<SourceStatus>,
    batch: usize,
    block: Duration,
    warm_count: usize,
    /// `LIVE_MAX_POSITION_BYTES`: larger entries are skipped and counted.
    max_position_bytes: usize,
    destroy_group: bool,
}

impl Reader {
    fn run(&self, stop: &Receiver<()>) {
        let mut backoff = INITIAL_BACKOFF;
        let mut warmed = false;
        let mut was_up = false;
        loop {
            match self.session(stop, &mut warmed, &mut backoff, &mut was_up) {
                SessionEnd::Stopped => break,
                SessionEnd::Failed(e) => {
                    let reason = format!("redis: {}", describe(&e));
                    if was_up {
                        warn!("{reason}; reconnecting");
                    } else {
                        debug!("{reason}; retrying in {backoff:?}");
                    }
                    was_up = false;
                    self.status.down(&self.metrics, reason);
                    match stop.recv_timeout(backoff) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    self.metrics.redis_reconnects.inc();
                }
            }
        }
        self.status.down(&self.metrics, "redis: stopped".into());
        if self.destroy_group {
            self.destroy_group();
        }
        info!("redis source stopped");
    }

    /// One connection's life: set up, then read until stop or failure.
    fn session(
        &self,
        stop: &Receiver<()>,
        warmed: &mut bool,
        backoff: &mut Duration,
        was_up: &mut bool,
    ) -> SessionEnd {
        let Names { key, group, consumer } = &self.names;
        let mut conn = match self.connect() {
            Ok(conn) => conn,
            Err(e) => return SessionEnd::Failed(e),
        };
        if let Err(e) = ensure_group(&mut conn, key, group) {
            return SessionEnd::Failed(e);
        }
        if !*warmed {
            if let Err(e) = self.warm(&mut conn) {
                return SessionEnd::Failed(e);
            }
            *warmed = true;
        }
        info!("redis source reading {key} as group {group}");
        self.status.up(&self.metrics);
        *backoff = INITIAL_BACKOFF;
        *was_up = true;

        // "0" re-reads what this consumer was given and never acknowledged;
        // once that is empty, ">" asks for new entries.
        let mut cursor = "0".to_owned();
        let mut next_pending_check = Instant::now();
        loop {
            match stop.try_recv() {
                Err(TryRecvError::Empty) => {}
                Ok(()) | Err(TryRecvError::Disconnected) => return SessionEnd::Stopped,
            }
            if Instant::now() >= next_pending_check {
                next_pending_check = Instant::now() + PENDING_PERIOD;
                self.sample_pending(&mut conn);
            }
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP").arg(group).arg(consumer).arg("COUNT").arg(self.batch);
            if cursor == ">" {
                cmd.arg("BLOCK").arg(u64::try_from(self.block.as_millis()).unwrap_or(u64::MAX));
            }
            cmd.arg("STREAMS").arg(key).arg(&cursor);
            let reply: Option<StreamReadReply> = match cmd.query(&mut conn) {
                Ok(reply) => reply,
                Err(e) if e.code() == Some("NOGROUP") => {
                    // The stream or group was deleted under us.
                    warn!("redis: group {group} vanished; recreating it");
                    if let Err(e) = ensure_group(&mut conn, key, group) {
                        return SessionEnd::Failed(e);
                    }
                    continue;
                }
                Err(e) => {
                    self.metrics.redis_read_errors.inc();
                    return SessionEnd::Failed(e);
                }
            };
            let entries: Vec<StreamId> =
                reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            let Some(last) = entries.last() else {
                cursor = ">".to_owned();
                continue;
            };
            if cursor != ">" {
                cursor = last.id.clone();
            }
            if let Err(e) = self.deliver(&mut conn, entries) {
                return e;
            }
        }
    }

    fn connect(&self) -> Result<Connection, RedisError> {
        let conn = self.client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
        conn.set_read_timeout(Some(self.block + IO_TIMEOUT))?;
        conn.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(conn)
    }

    /// Hands a batch to the broadcaster, then acknowledges every entry of
    /// it, bad ones included (they would fail again).
    fn deliver(&self, conn: &mut Connection, entries: Vec<StreamId>) -> Result<(), SessionEnd> {
        let mut ids = Vec::with_capacity(entries.len());
        let mut positions = Vec::with_capacity(entries.len());
        for entry in entries {
            match parse_entry(&entry, self.max_position_bytes) {
                Ok(p) => positions.push(p),
                Err(why) => {
                    warn!("redis: entry {} of {} skipped: {why}", entry.id, self.names.key);
                    self.metrics.positions_rejected.with_label_values(&["redis"]).inc();
                }
            }
            ids.push(entry.id);
        }
        self.metrics.redis_batches.inc();
        let n = positions.len() as u64;
        if !positions.is_empty() && self.commands.send(Command::Positions(positions)).is_err() {
            // The broadcaster is gone: stopping. Unacknowledged entries are
            // read again by the next start with this instance id.
            return Err(SessionEnd::Stopped);
        }
        self.metrics.positions_received.with_label_values(&["redis"]).inc_by(n);
        let Names { key, group, .. } = &self.names;
        redis::cmd("XACK").arg(key).arg(group).arg(&ids).query::<u64>(conn).map_err(|e| {
            self.metrics.redis_read_errors.inc();
            SessionEnd::Failed(e)
        })?;
        Ok(())
    }

    /// Reads the stream's tail so that snapshots are right after a restart.
    /// The broadcaster only fills devices it has not seen live.
    fn warm(&self, conn: &mut Connection) -> Result<(), RedisError> {
        if self.warm_count == 0 {
            return Ok(());
        }
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(&self.names.key)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(self.warm_count)
            .query(conn)?;
        // Oldest first, so that the newest of each device wins.
        let positions: Vec<Position> = reply
            .ids
            .iter()
            .rev()
            .filter_map(|entry| parse_entry(entry, self.max_position_bytes).ok())
            .collect();
        info!("redis: warmed the cache with {} positions from {}", positions.len(), self.names.key);
        if !positions.is_empty() {
            let _ = self.commands.send(Command::Warm(positions));
        }
        Ok(())
    }

    fn sample_pending(&self, conn: &mut Connection) {
        let Names { key, group, .. } = &self.names;
        // XPENDING key group → [count, min, max, consumers]
        match redis::cmd("XPENDING").arg(key).arg(group).query::<Vec<Value>>(conn) {
            Ok(reply) => {
                if let Some(Value::Int(n)) = reply.first() {
                    self.metrics.redis_pending.set(*n);
                }
            }
            Err(e) => debug!("redis: XPENDING failed: {}", describe(&e)),
        }
    }

    /// Deletes a group named after a random instance id, which no later
    /// instance would ever read again.
    fn destroy_group(&self) {
        let Names { key, group, .. } = &self.names;
        let result = self.connect().and_then(|mut conn| {
            redis::cmd("XGROUP").arg("DESTROY").arg(key).arg(group).query::<u64>(&mut conn)
        });
        match result {
            Ok(_) => info!("redis: destroyed group {group}"),
            Err(e) => warn!("redis: cannot destroy group {group}: {}", describe(&e)),
        }
    }
}

/// Creates the group (and the stream) when missing; new groups start at
/// the end of the stream: the tail is read separately, for the cache only.
fn ensure_group(conn: &mut Connection, key: &str, group: &str) -> Result<(), RedisError> {
    let created = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(group)
        .arg("$")
        .arg("MKSTREAM")
        .query::<()>(conn);
    match created {
        Ok(()) => {
            info!("redis: created group {group} on {key}");
            Ok(())
        }
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(e),
    }
}

/// The position in an entry's `data` field, at most `max_bytes` of JSON
/// (`LIVE_MAX_POSITION_BYTES`) like an ingested one.
fn parse_entry(entry: &StreamId, max_bytes: usize) -> Result<Position, String> {
    let data = match entry.map.get("data") {
        Some(Value::BulkString(bytes)) => bytes.as_slice(),
        Some(Value::SimpleString(s)) => s.as_bytes(),
        Some(_) => return Err("field data is not a string".into()),
        None => return Err("no field data".into()),
    };
    let value: serde_json::Value =
        serde_json::from_slice(data).map_err(|e| format!("invalid JSON in data: {e}"))?;
    Position::from_source(value, max_bytes).map_err(|e| e.0)
}

/// A Redis error without anything that could carry a secret.
fn describe(e: &RedisError) -> String {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
        format!("connection failed ({:?})", e.kind())
    } else {
        e.to_string()
    }
}

/// Appends ingested positions to the stream (`XADD`), so that every
/// instance's group sees them once; used by `POST /ingest` when Redis is
/// configured.
pub(crate) struct StreamSink {
    client: Client,
    key: String,
    maxlen: usize,
    /// One connection shared by the HTTP workers: an append is one pipelined
    /// round trip, so serialising them costs little.
    conn: Mutex<Option<Connection>>,
}

impl std::fmt::Debug for StreamSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamSink").field("key", &self.key).finish_non_exhaustive()
    }
}

impl StreamSink {
    pub(crate) fn new(config: &Config, client: Client) -> StreamSink {
        StreamSink {
            client,
            key: config.stream_key.clone(),
            maxlen: config.stream_maxlen,
            conn: Mutex::new(None),
        }
    }

    /// Appends every position, in order, in one pipeline.
    ///
    /// # Errors
    /// A description when Redis cannot be reached; the connection is then
    /// dropped and re-made on the next call.
    pub(crate) fn append(&self, positions: &[Position]) -> Result<(), String> {
        let mut guard = self.conn.lock();
        if guard.is_none() {
            let conn = self
                .client
                .get_connection_with_timeout(CONNECT_TIMEOUT)
                .and_then(|c| {
                    c.set_read_timeout(Some(IO_TIMEOUT))?;
                    c.set_write_timeout(Some(IO_TIMEOUT))?;
                    Ok(c)
                })
                .map_err(|e| describe(&e))?;
            *guard = Some(conn);
        }
        let Some(conn) = guard.as_mut() else { return Err("no connection".into()) };
        let mut pipe = redis::pipe();
        for p in positions {
            let cmd = pipe.cmd("XADD").arg(&self.key);
            if self.maxlen > 0 {
                cmd.arg("MAXLEN").arg("~").arg(self.maxlen);
            }
            cmd.arg("*").arg("data").arg(p.to_json()).ignore();
        }
        if let Err(e) = pipe.query::<()>(conn) {
            *guard = None;
            return Err(describe(&e));
        }
        Ok(())
    }
}
