//! The latest position of every device, by event, and each device's recent
//! path (its trail): what a snapshot shows. Owned by the broadcaster thread.
//!
//! Bounded (SPEC §9): at most `LIVE_CACHE_MAX_DEVICES` devices; past it the
//! device whose last update is the oldest is evicted, trail and all, so
//! that a stream of fresh `deviceId`s costs a fixed amount of memory.
//!
//! Positions are kept as the frames the broadcaster already built for the
//! live stream (`Utf8Bytes` share their bytes), so a trail costs no second
//! serialisation: only a reference-counted pointer per retained position.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tungstenite::Utf8Bytes;

use crate::position::Position;

/// Most bytes of frames one device's trail holds: the oldest leave first
/// past it, so a device posting 16 KiB positions keeps a shorter (still
/// gapless) trail instead of 30 x 16 KiB. Ordinary positions (~100-300
/// bytes) never reach it at the default trail length.
pub(crate) const MAX_TRAIL_BYTES_PER_DEVICE: usize = 32 * 1024;

/// A device's cached state in the event it is in now.
#[derive(Debug)]
struct Device {
    /// Its latest position (kept whole so that a map change can re-route it).
    position: Position,
    /// The frame of `position` for this event.
    frame: Utf8Bytes,
    /// Older frames in this event, oldest first, at most the trail length
    /// and [`MAX_TRAIL_BYTES_PER_DEVICE`]; the latest is not repeated here.
    trail: VecDeque<Utf8Bytes>,
    /// Bytes of the frames in `trail`.
    trail_bytes: usize,
    /// Routed by the device→event map rather than by its own `eventId`, so
    /// a map change may move it.
    via_map: bool,
    /// Key of this device in [`Cache::by_age`].
    updated: u64,
}

/// What [`Cache::put`] did besides storing the position.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PutOutcome {
    /// Devices evicted to stay within the device cap.
    pub(crate) evicted: u64,
}

/// One event with positions, for the event list (a client's `events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EventSummary {
    pub(crate) event: String,
    /// Devices whose latest position is in this event.
    pub(crate) devices: usize,
    /// The newest `ts` among them (ms since the epoch).
    pub(crate) last_ts: i64,
}

/// Latest positions and trails, owned by the broadcaster thread.
#[derive(Debug)]
pub(crate) struct Cache {
    events: HashMap<String, HashMap<String, Device>>,
    /// Which event each device is in now.
    device_event: HashMap<String, String>,
    /// Devices by the order of their last update, oldest first: the
    /// eviction order.
    by_age: BTreeMap<u64, String>,
    next_update: u64,
    max_devices: usize,
    trail_length: usize,
    /// Frames held in trails, for `livecast_trail_positions`.
    trail_positions: usize,
}

impl Cache {
    /// An empty cache holding at most `max_devices` devices (at least one)
    /// and `trail_length` older positions per device.
    pub(crate) fn new(max_devices: usize, trail_length: usize) -> Cache {
        Cache {
            events: HashMap::new(),
            device_event: HashMap::new(),
            by_age: BTreeMap::new(),
            next_update: 0,
            max_devices: max_devices.max(1),
            trail_length,
            trail_positions: 0,
        }
    }

    /// Records `position` as the latest of its device, in `event`; the
    /// previous latest joins the device's trail. A device seen in another
    /// event before leaves that event's snapshot, trail included: its path
    /// in the new event starts here.
    pub(crate) fn put(
        &mut self,
        event: &str,
        position: Position,
        frame: Utf8Bytes,
        via_map: bool,
    ) -> PutOutcome {
        let device = position.device_id.clone();
        let updated = self.next_update;
        self.next_update += 1;
        let mut trail = VecDeque::new();
        let mut trail_bytes = 0;
        match self.device_event.get(&device) {
            Some(old) if old == event => {
                if let Some(previous) = self.events.get_mut(event).and_then(|d| d.remove(&device)) {
                    self.by_age.remove(&previous.updated);
                    trail = previous.trail;
                    trail_bytes = previous.trail_bytes;
                    if self.trail_length > 0 {
                        trail_bytes += previous.frame.len();
                        trail.push_back(previous.frame);
                        self.trail_positions += 1;
                        while trail.len() > self.trail_length
                            || trail_bytes > MAX_TRAIL_BYTES_PER_DEVICE
                        {
                            let Some(oldest) = trail.pop_front() else { break };
                            trail_bytes -= oldest.len();
                            self.trail_positions -= 1;
                        }
                    }
                }
            }
            Some(old) => {
                let old = old.clone();
                self.forget(&old, &device);
            }
            None => {}
        }
        self.device_event.insert(device.clone(), event.to_owned());
        self.by_age.insert(updated, device.clone());
        self.events
            .entry(event.to_owned())
            .or_default()
            .insert(device, Device { position, frame, trail, trail_bytes, via_map, updated });
        let mut outcome = PutOutcome::default();
        while self.device_event.len() > self.max_devices {
            let Some((_, stalest)) = self.by_age.pop_first() else { break };
            if let Some(event) = self.device_event.get(&stalest).cloned() {
                self.forget(&event, &stalest);
                outcome.evicted += 1;
            }
        }
        outcome
    }

    /// Changes whenever the cache does (a put, an eviction, a remap): an
    /// answer built from it is still exact while this stays the same.
    pub(crate) fn generation(&self) -> u64 {
        self.next_update
    }

    /// Whether `device` has a cached position.
    pub(crate) fn has_device(&self, device: &str) -> bool {
        self.device_event.contains_key(device)
    }

    /// The frames of `event`'s snapshot: the latest position of each device.
    pub(crate) fn snapshot(&self, event: &str) -> impl Iterator<Item = &str> {
        self.devices(event).map(|(_, d)| d.frame.as_str())
    }

    /// Each device of `event` with its `n` most recent older frames, oldest
    /// first (devices without any are left out), for a subscribe's `trails`.
    pub(crate) fn trails(
        &self,
        event: &str,
        n: usize,
    ) -> impl Iterator<Item = (&str, impl Iterator<Item = &str>)> {
        self.devices(event).filter(move |(_, d)| n > 0 && !d.trail.is_empty()).map(
            move |(id, d)| {
                let skip = d.trail.len().saturating_sub(n);
                (id, d.trail.iter().skip(skip).map(Utf8Bytes::as_str))
            },
        )
    }

    /// Every event with positions, newest update first. Walks every cached
    /// device: asked only by a client's `events`, never on the hot path.
    pub(crate) fn event_summaries(&self) -> Vec<EventSummary> {
        let mut list: Vec<EventSummary> = self
            .events
            .iter()
            .map(|(event, devices)| EventSummary {
                event: event.clone(),
                devices: devices.len(),
                last_ts: devices.values().map(|d| d.position.ts_ms).max().unwrap_or(0),
            })
            .collect();
        list.sort_unstable_by(|a, b| b.last_ts.cmp(&a.last_ts).then_with(|| a.event.cmp(&b.event)));
        list
    }

    /// Devices currently cached.
    pub(crate) fn devices_len(&self) -> usize {
        self.device_event.len()
    }

    /// Frames held in trails.
    pub(crate) fn trail_positions(&self) -> usize {
        self.trail_positions
    }

    fn devices(&self, event: &str) -> impl Iterator<Item = (&str, &Device)> {
        self.events.get(event).into_iter().flat_map(|d| d.iter().map(|(id, d)| (id.as_str(), d)))
    }

    /// Applies a new device→event map to the devices it routed: each one
    /// whose event changed moves (or, when unmapped now, leaves the cache).
    /// Returns the moved positions, to be shown to the new event.
    pub(crate) fn remap(&mut self, map: &HashMap<String, String>) -> Vec<(String, Position)> {
        let mut moved = Vec::new();
        let stale: Vec<(String, String)> = self
            .events
            .iter()
            .flat_map(|(event, devices)| {
                devices
                    .iter()
                    .filter(|(device, d)| d.via_map && map.get(*device) != Some(event))
                    .map(|(device, _)| (event.clone(), device.clone()))
            })
            .collect();
        if !stale.is_empty() {
            self.next_update += 1;
        }
        for (event, device) in stale {
            if let Some(gone) = self.forget(&event, &device)
                && let Some(new_event) = map.get(&device)
            {
                moved.push((new_event.clone(), gone.position));
            }
        }
        moved
    }

    /// Removes `device` from `event` and from the cache's indexes.
    fn forget(&mut self, event: &str, device: &str) -> Option<Device> {
        let devices = self.events.get_mut(event)?;
        let gone = devices.remove(device)?;
        if devices.is_empty() {
            self.events.remove(event);
        }
        self.device_event.remove(device);
        self.by_age.remove(&gone.updated);
        self.trail_positions -= gone.trail.len();
        Some(gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pos(device: &str, ts: i64) -> Position {
        Position::from_value(json!({"deviceId":device,"lat":1,"lon":2,"ts":ts})).unwrap()
    }

    fn put(cache: &mut Cache, event: &str, p: Position, via_map: bool) -> PutOutcome {
        let frame = Utf8Bytes::from(p.frame(event));
        cache.put(event, p, frame, via_map)
    }

    fn trail_ts(cache: &Cache, event: &str, device: &str, n: usize) -> Vec<i64> {
        cache
            .trails(event, n)
            .filter(|(id, _)| *id == device)
            .flat_map(|(_, frames)| {
                frames.map(|f| {
                    serde_json::from_str::<serde_json::Value>(f).unwrap()["ts"].as_i64().unwrap()
                })
            })
            .collect()
    }

    #[test]
    fn latest_wins_and_moves_between_events() {
        let mut c = Cache::new(100, 0);
        put(&mut c, "a", pos("d1", 1), false);
        put(&mut c, "a", pos("d1", 2), false);
        put(&mut c, "a", pos("d2", 3), false);
        assert_eq!(c.snapshot("a").count(), 2);
        assert!(c.snapshot("a").any(|f| f.contains("\"ts\":2")));
        put(&mut c, "b", pos("d1", 4), false);
        assert_eq!(c.snapshot("a").count(), 1);
        assert_eq!(c.snapshot("b").count(), 1);
        assert_eq!(c.devices_len(), 2);
    }

    #[test]
    fn remap_moves_only_map_routed_devices() {
        let mut c = Cache::new(100, 0);
        put(&mut c, "a", pos("d1", 1), true);
        put(&mut c, "a", pos("d2", 1), false);
        put(&mut c, "a", pos("d3", 1), true);
        let map = HashMap::from([("d1".to_owned(), "b".to_owned())]);
        let moved = c.remap(&map);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].0, "b");
        // d1 moved out, d3 unmapped and gone, d2 explicit and kept.
        assert_eq!(c.snapshot("a").count(), 1);
        assert!(!c.has_device("d1") && !c.has_device("d3") && c.has_device("d2"));
    }

    #[test]
    fn past_the_cap_the_stalest_device_is_evicted() {
        let mut c = Cache::new(3, 2);
        for (i, d) in ["d1", "d2", "d3"].into_iter().enumerate() {
            assert_eq!(put(&mut c, "a", pos(d, i as i64), false).evicted, 0);
        }
        // d1 updated again: d2 is now the stalest.
        put(&mut c, "a", pos("d1", 10), false);
        assert_eq!(put(&mut c, "b", pos("d4", 11), false).evicted, 1);
        assert!(!c.has_device("d2"));
        assert!(c.has_device("d1") && c.has_device("d3") && c.has_device("d4"));
        assert_eq!(c.devices_len(), 3);
        assert_eq!(c.trail_positions(), 1, "d1's one older position");
        // Evicting a device with a trail releases the trail.
        put(&mut c, "b", pos("d5", 12), false); // evicts d3
        put(&mut c, "b", pos("d6", 13), false); // evicts d1 and its trail
        assert_eq!(c.trail_positions(), 0);
        assert_eq!(c.devices_len(), 3);
    }

    #[test]
    fn trails_keep_the_last_positions_oldest_first_without_the_latest() {
        let mut c = Cache::new(10, 3);
        for ts in 1..=5 {
            put(&mut c, "a", pos("d1", ts), false);
        }
        put(&mut c, "a", pos("d2", 1), false);
        assert_eq!(trail_ts(&c, "a", "d1", 3), [2, 3, 4]);
        assert_eq!(trail_ts(&c, "a", "d1", 2), [3, 4]);
        assert_eq!(trail_ts(&c, "a", "d1", 10), [2, 3, 4]);
        assert!(trail_ts(&c, "a", "d1", 0).is_empty());
        assert_eq!(c.trails("a", 3).count(), 1, "a device without history has no trail entry");
        assert_eq!(c.trail_positions(), 3);
    }

    #[test]
    fn a_device_that_changes_event_starts_a_new_trail() {
        let mut c = Cache::new(10, 5);
        for ts in 1..=3 {
            put(&mut c, "a", pos("d1", ts), false);
        }
        put(&mut c, "b", pos("d1", 4), false);
        assert_eq!(c.trails("a", 5).count(), 0);
        assert!(trail_ts(&c, "b", "d1", 5).is_empty());
        put(&mut c, "b", pos("d1", 5), false);
        assert_eq!(trail_ts(&c, "b", "d1", 5), [4]);
        assert_eq!(c.trail_positions(), 1);
    }

    #[test]
    fn a_trail_of_big_positions_is_shortened_from_its_oldest_end() {
        let mut c = Cache::new(10, 30);
        for ts in 1..=30 {
            let p = Position::from_value(
                json!({"deviceId":"d1","lat":1,"lon":2,"ts":ts,"pad":"x".repeat(8000)}),
            )
            .unwrap();
            put(&mut c, "a", p, false);
        }
        let kept = trail_ts(&c, "a", "d1", 30);
        assert!(kept.len() < 5 && !kept.is_empty(), "{kept:?}");
        let newest_first: Vec<i64> = (30 - kept.len() as i64..30).collect();
        assert_eq!(kept, newest_first, "the newest older positions, without a gap");
        assert_eq!(c.trail_positions(), kept.len());
    }

    #[test]
    fn trail_length_zero_keeps_no_history() {
        let mut c = Cache::new(10, 0);
        for ts in 1..=3 {
            put(&mut c, "a", pos("d1", ts), false);
        }
        assert_eq!(c.trail_positions(), 0);
        assert_eq!(c.trails("a", 5).count(), 0);
    }
}
