//! The `device-map` thread: keeps the device→event map fresh (SPEC §6).
//!
//! Loads the map from its [`MapSource`] (the JSON file
//! `LIVE_DEVICE_EVENT_FILE`, `{"d-7":"e-42"}`, or in mode `directus` with
//! `DIRECTUS_TOKEN` set, the devices collection of Directus) every
//! `LIVE_DEVICE_EVENT_REFRESH_MS`, and hands a changed map to the
//! broadcaster, which owns routing. A failed refresh keeps the previous map
//! and is counted; it is logged once per failure streak, not every period.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};
use parking_lot::RwLock;
use serde_json::Value;

use crate::broadcast::Command;
use crate::config::{AuthMode, Config, Secret};
use crate::directus::{Client, Credential, encode_segment};
use crate::logging::json_error_at;
use crate::metrics::Metrics;
use crate::position::Position;
use crate::thread::spawn_named;

/// A device→event map.
pub(crate) type DeviceMap = HashMap<String, String>;

/// The map in force, for readers other than the broadcaster (the ingest
/// answer's `unrouted`): replaced whole by each changed refresh.
pub(crate) type SharedMap = Arc<RwLock<Arc<DeviceMap>>>;

/// How many of `positions` no event will receive: without an `eventId`,
/// and their device not in `map`.
pub(crate) fn unrouted(map: &SharedMap, positions: &[Position]) -> usize {
    let map = Arc::clone(&map.read());
    positions.iter().filter(|p| p.event_id.is_none() && !map.contains_key(&p.device_id)).count()
}

/// Where the map comes from.
#[derive(Debug)]
pub(crate) enum MapSource {
    /// `LIVE_DEVICE_EVENT_FILE`.
    File(PathBuf),
    /// The devices collection of Directus, read with `DIRECTUS_TOKEN`.
    Directus(DirectusDevices),
}

impl MapSource {
    /// The source `config` asks for, if any. In mode `directus` with
    /// `DIRECTUS_TOKEN` set, Directus is the source of truth for devices,
    /// as it is for users and events, and a map file is ignored (warned).
    pub(crate) fn from_config(config: &Config) -> Option<MapSource> {
        let directus = match (&config.auth_mode, &config.directus_base_url, &config.directus_token)
        {
            (AuthMode::Directus, Some(base), Some(token)) => Some(DirectusDevices::new(
                base,
                &config.directus_devices_collection,
                token.clone(),
                // A whole collection may take longer than one item, and
                // only this thread waits for it.
                config.directus_auth_timeout.max(config.directus_authz_timeout).max(MAP_TIMEOUT),
            )),
            _ => None,
        };
        match (directus, &config.device_event_file) {
            (Some(directus), file) => {
                if let Some(file) = file {
                    warn!(
                        "LIVE_DEVICE_EVENT_FILE={} is ignored: the device map comes from \
                         Directus (DIRECTUS_TOKEN is set)",
                        file.display()
                    );
                }
                Some(MapSource::Directus(directus))
            }
            (None, Some(file)) => Some(MapSource::File(file.clone())),
            (None, None) => None,
        }
    }

    fn load(&self) -> Result<DeviceMap, String> {
        match self {
            MapSource::File(path) => load(path),
            MapSource::Directus(directus) => directus.load(),
        }
    }
}

impl fmt::Display for MapSource {
    /// For log lines: `device map <path>` or `device map from Directus …`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MapSource::File(path) => write!(f, "device map {}", path.display()),
            MapSource::Directus(d) => {
                write!(f, "device map from Directus collection {}", d.collection)
            }
        }
    }
}

/// Least time a Directus map request may take.
const MAP_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest devices answer read: about 200k devices.
const MAP_ANSWER_BYTES: u64 = 32 * 1024 * 1024;

/// `GET /items/<devices>?fields=id,event&limit=-1` with `DIRECTUS_TOKEN`.
#[derive(Debug)]
pub(crate) struct DirectusDevices {
    client: Client,
    collection: String,
    /// The request path (`limit=-1`: every item, not Directus's default 100).
    path: String,
    token: Secret,
    timeout: Duration,
}

impl DirectusDevices {
    pub(crate) fn new(
        base: &str,
        collection: &str,
        token: Secret,
        timeout: Duration,
    ) -> DirectusDevices {
        DirectusDevices {
            client: Client::new(base),
            collection: collection.to_owned(),
            path: format!("/items/{}?fields=id,event&limit=-1", encode_segment(collection)),
            token,
            timeout,
        }
    }

    fn load(&self) -> Result<DeviceMap, String> {
        let credential = Credential::Bearer(self.token.expose());
        let (status, body) = self
            .client
            .get(&self.path, credential, self.timeout, MAP_ANSWER_BYTES)
            .map_err(|f| format!("device map from Directus: {f}"))?;
        match status {
            200 => {}
            401 | 403 => {
                return Err(format!(
                    "device map from Directus: answered {status}: is DIRECTUS_TOKEN valid, \
                     and may its role read the {} collection (fields id, event)?",
                    self.collection
                ));
            }
            _ => return Err(format!("device map from Directus: answered {status}")),
        }
        let (map, skipped) = parse_devices(&body)?;
        if skipped > 0 {
            debug!("device map from Directus: {skipped} devices without a usable id skipped");
        }
        Ok(map)
    }
}

/// `{"data":[{"id":"d-7","event":"e-42"}, ...]}` → map. `event` may be a
/// string or number id, an expanded object `{"id":..}`, or null (a device
/// in no event, left out). Returns the map and how many items had no
/// usable id: those are skipped, so one odd row does not cost the map.
fn parse_devices(body: &[u8]) -> Result<(DeviceMap, usize), String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("device map from Directus: invalid JSON: {e}"))?;
    let Some(items) = value.get("data").and_then(Value::as_array) else {
        return Err("device map from Directus: expected {\"data\":[...]}".to_owned());
    };
    let mut map = DeviceMap::with_capacity(items.len());
    let mut skipped = 0;
    for item in items {
        let event = match item.get("event") {
            None | Some(Value::Null) => continue,
            Some(Value::Object(expanded)) => expanded.get("id").and_then(id_string),
            Some(other) => id_string(other),
        };
        match (item.get("id").and_then(id_string), event) {
            (Some(device), Some(event)) => {
                map.insert(device, event);
            }
            _ => skipped += 1,
        }
    }
    Ok((map, skipped))
}

/// A Directus primary key (string or number) as a non-empty string.
fn id_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Reads and validates a map file.
pub(crate) fn load(path: &Path) -> Result<DeviceMap, String> {
    let shown = path.display();
    let text = std::fs::read(path).map_err(|e| format!("device map {shown}: {e}"))?;
    // Line and column only: serde's message would quote file contents into
    // the log, as it would for a secrets file.
    let map: DeviceMap = serde_json::from_slice(&text).map_err(|e| {
        format!("device map {shown}: {}; expected {{\"device\":\"event\"}}", json_error_at(&e))
    })?;
    if map.iter().any(|(d, e)| d.is_empty() || e.is_empty()) {
        return Err(format!("device map {shown}: an empty device or event id"));
    }
    Ok(map)
}

/// The running refresher; dropping the stop sender ends it.
#[derive(Debug)]
pub(crate) struct Refresher {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Refresher {
    /// Loads the map once (so routing is right from the first position;
    /// from Directus this blocks the start for at most the request's
    /// timeout), sends it to the broadcaster (and into `shared`), and
    /// starts the `device-map` thread.
    pub(crate) fn start(
        source: MapSource,
        period: Duration,
        commands: Sender<Command>,
        metrics: Metrics,
        shared: SharedMap,
    ) -> std::io::Result<Refresher> {
        let publish = move |map: &Option<Arc<DeviceMap>>| {
            if let Some(map) = map {
                *shared.write() = Arc::clone(map);
            }
        };
        let mut current = refresh(&source, &commands, &metrics, None, false);
        publish(&current);
        let (stop_tx, stop_rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(0);
        let thread = spawn_named("device-map".into(), None, move || {
            let mut failing = current.is_none();
            loop {
                match stop_rx.recv_timeout(period) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                let next = refresh(&source, &commands, &metrics, current.as_ref(), failing);
                failing = next.is_none();
                if next.is_some() {
                    publish(&next);
                    current = next;
                }
            }
        })?;
        Ok(Refresher { stop: Some(stop_tx), thread: Some(thread) })
    }

    /// Stops the thread. A refresh in flight (a hanging Directus) is not
    /// waited for beyond [`STOP_WAIT`]: the thread is left to end on its
    /// own timeout, so that a stop is never held by the map.
    pub(crate) fn stop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let deadline = std::time::Instant::now() + STOP_WAIT;
            while !thread.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if thread.is_finished() {
                let _ = thread.join();
            } else {
                warn!("device-map: a refresh is still in flight; not waiting for it");
            }
        }
    }
}

/// Longest a stop waits for the `device-map` thread.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// One refresh: returns the map now in force, or `None` on failure.
fn refresh(
    source: &MapSource,
    commands: &Sender<Command>,
    metrics: &Metrics,
    current: Option<&Arc<DeviceMap>>,
    already_failing: bool,
) -> Option<Arc<DeviceMap>> {
    match source.load() {
        Ok(map) => {
            if already_failing {
                info!("{source} readable again");
            }
            if current.is_some_and(|c| **c == map) {
                return current.cloned();
            }
            info!("{source}: {} devices", map.len());
            metrics.device_map_size.set(i64::try_from(map.len()).unwrap_or(i64::MAX));
            let map = Arc::new(map);
            let _ = commands.send(Command::DeviceMap(Arc::clone(&map)));
            Some(map)
        }
        Err(e) => {
            metrics.device_map_refresh_failures.inc();
            if !already_failing {
                warn!("{e}; keeping the previous map");
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_directus_devices_in_every_shape() {
        let body = br#"{"data":[
            {"id":"d-7","event":"e-42"},
            {"id":8,"event":3},
            {"id":"d-9","event":{"id":"e-1","name":"Rally"}},
            {"id":"d-10","event":null},
            {"id":"d-11"},
            {"id":"","event":"e-1"},
            {"id":"d-12","event":{"name":"no id"}},
            {"id":"d-13","event":true}
        ]}"#;
        let (map, skipped) = parse_devices(body).unwrap();
        let want: DeviceMap = [("d-7", "e-42"), ("8", "3"), ("d-9", "e-1")]
            .into_iter()
            .map(|(d, e)| (d.to_owned(), e.to_owned()))
            .collect();
        assert_eq!(map, want);
        assert_eq!(skipped, 3, "empty id, event object without id, boolean event");
        assert!(parse_devices(br#"{"errors":[]}"#).is_err());
        assert!(parse_devices(b"<html>").is_err());
    }
}
