//! The `device-map` thread: keeps the device→event map fresh (SPEC §6).
//!
//! Reads `LIVE_DEVICE_EVENT_FILE` (JSON `{"d-7":"e-42"}`) every
//! `LIVE_DEVICE_EVENT_REFRESH_MS` and hands a changed map to the
//! broadcaster, which owns routing. A failed refresh keeps the previous map
//! and is counted; it is logged once per failure streak, not every period.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{info, warn};

use crate::broadcast::Command;
use crate::metrics::Metrics;
use crate::thread::spawn_named;

/// A device→event map.
pub(crate) type DeviceMap = HashMap<String, String>;

/// Reads and validates a map file.
pub(crate) fn load(path: &Path) -> Result<DeviceMap, String> {
    let shown = path.display();
    let text = std::fs::read(path).map_err(|e| format!("device map {shown}: {e}"))?;
    let map: DeviceMap = serde_json::from_slice(&text)
        .map_err(|e| format!("device map {shown}: expected {{\"device\":\"event\"}}: {e}"))?;
    if let Some((device, _)) = map.iter().find(|(d, e)| d.is_empty() || e.is_empty()) {
        return Err(format!("device map {shown}: empty device or event id near {device:?}"));
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
    /// Loads the map once (so routing is right from the first position),
    /// sends it to the broadcaster, and starts the `device-map` thread.
    pub(crate) fn start(
        path: PathBuf,
        period: Duration,
        commands: Sender<Command>,
        metrics: Metrics,
    ) -> std::io::Result<Refresher> {
        let mut current = refresh(&path, &commands, &metrics, None, false);
        let (stop_tx, stop_rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(0);
        let thread = spawn_named("device-map".into(), None, move || {
            let mut failing = current.is_none();
            loop {
                match stop_rx.recv_timeout(period) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                let next = refresh(&path, &commands, &metrics, current.as_ref(), failing);
                failing = next.is_none();
                if next.is_some() {
                    current = next;
                }
            }
        })?;
        Ok(Refresher { stop: Some(stop_tx), thread: Some(thread) })
    }

    pub(crate) fn stop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One refresh: returns the map now in force, or `None` on failure.
fn refresh(
    path: &Path,
    commands: &Sender<Command>,
    metrics: &Metrics,
    current: Option<&Arc<DeviceMap>>,
    already_failing: bool,
) -> Option<Arc<DeviceMap>> {
    match load(path) {
        Ok(map) => {
            if already_failing {
                info!("device map {} readable again", path.display());
            }
            if current.is_some_and(|c| **c == map) {
                return current.cloned();
            }
            info!("device map {}: {} devices", path.display(), map.len());
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
