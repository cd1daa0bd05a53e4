//! The latest position of every device, by event, and each device's recent
//! path (its trail): what a snapshot shows. Owned by the broadcaster thread.
//!
//! Bounded (SPEC §9): at most `LIVE_CACHE_MAX_DEVICES` devices and about
//! `LIVE_CACHE_MAX_BYTES` bytes; past either the device whose last update
//! is the oldest is evicted, trail and all, so that a stream of fresh
//! `deviceId`s, or of big positions, costs a fixed amount of memory.
//!
//! Each position is held once: as the frame the broadcaster already built
//! for the live stream (`Utf8Bytes` share their bytes). The latest frame
//! moves into the trail when a newer one arrives, so a trail costs no
//! second serialisation and no copy, only a reference-counted pointer per
//! retained position. The parsed position is not kept beside it: the rare
//! device that a map change moves is parsed back from its frame.

use std::collections::{BTreeMap, HashMap, VecDeque};

use tungstenite::Utf8Bytes;

use crate::position::Position;

/// What a device costs the cache besides its frames: its id in three
/// indexes, its event's name, the hash-map slots and the struct.
const DEVICE_OVERHEAD: usize = 192;

/// What one held frame costs besides its bytes (the shared buffer's header
/// and the pointer to it).
const FRAME_OVERHEAD: usize = 48;

/// Most bytes of frames one device's trail holds: the oldest leave first
/// past it, so a device posting 16 KiB positions keeps a shorter (still
/// gapless) trail instead of 30 x 16 KiB. Ordinary positions (~100-300
/// bytes) never reach it at the default trail length.
pub(crate) const MAX_TRAIL_BYTES_PER_DEVICE: usize = 32 * 1024;

/// A device's cached state in the event it is in now.
#[derive(Debug)]
struct Device {
    /// The frame of its latest position, for this event.
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
    /// The latest position's `ts` (ms since the epoch), for the event list.
    ts_ms: i64,
}

/// What [`Cache::put`] did besides storing the position.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct PutOutcome {
    /// Devices evicted to stay within the device cap.
    pub(crate) evicted: u64,
}

/// The devices of one event, and when they last changed.
#[derive(Debug, Default)]
struct Event {
    devices: HashMap<String, Device>,
    /// The cache's change count at this event's last change: an answer
    /// built from the event is exact while this stays the same.
    changed: u64,
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
    events: HashMap<String, Event>,
    /// Which event each device is in now.
    device_event: HashMap<String, String>,
    /// Devices by the order of their last update, oldest first: the
    /// eviction order.
    by_age: BTreeMap<u64, String>,
    next_update: u64,
    /// Changes to any event so far: the source of [`Event::changed`].
    changes: u64,
    max_devices: usize,
    max_bytes: usize,
    trail_length: usize,
    /// Frames held in trails, for `livecast_trail_positions`.
    trail_positions: usize,
    /// What the held frames and devices cost, as counted against
    /// `max_bytes` (frames' bytes plus fixed overheads).
    bytes: usize,
}

impl Cache {
    /// An empty cache holding at most `max_devices` devices (at least one)
    /// and about `max_bytes` bytes, and `trail_length` older positions per
    /// device.
    pub(crate) fn new(max_devices: usize, max_bytes: usize, trail_length: usize) -> Cache {
        Cache {
            events: HashMap::new(),
            device_event: HashMap::new(),
            by_age: BTreeMap::new(),
            next_update: 0,
            changes: 0,
            max_devices: max_devices.max(1),
            max_bytes,
            trail_length,
            trail_positions: 0,
            bytes: 0,
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
        // The frame is all that is kept of the position, but for its time.
        let (device, ts_ms) = (position.device_id, position.ts_ms);
        let updated = self.next_update;
        self.next_update += 1;
        let mut trail = VecDeque::new();
        let mut trail_bytes = 0;
        match self.device_event.get(&device) {
            Some(old) if old == event => {
                if let Some(previous) = self.take(event, &device) {
                    self.by_age.remove(&previous.updated);
                    trail = previous.trail;
                    trail_bytes = previous.trail_bytes;
                    if self.trail_length > 0 {
                        // The latest becomes the newest of the trail: the
                        // same shared bytes, not a copy.
                        trail_bytes += previous.frame.len();
                        self.bytes += previous.frame.len() + FRAME_OVERHEAD;
                        trail.push_back(previous.frame);
                        self.trail_positions += 1;
                        while trail.len() > self.trail_length
                            || trail_bytes > MAX_TRAIL_BYTES_PER_DEVICE
                        {
                            let Some(oldest) = trail.pop_front() else { break };
                            trail_bytes -= oldest.len();
                            self.bytes -= oldest.len() + FRAME_OVERHEAD;
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
        self.bytes += device_cost(&device, event) + frame.len();
        self.device_event.insert(device.clone(), event.to_owned());
        self.by_age.insert(updated, device.clone());
        let changed = self.touch();
        let entry = self.events.entry(event.to_owned()).or_default();
        entry.changed = changed;
        entry.devices.insert(device, Device { frame, trail, trail_bytes, via_map, updated, ts_ms });
        let mut outcome = PutOutcome::default();
        while self.device_event.len() > self.max_devices
            || (self.bytes > self.max_bytes && self.device_event.len() > 1)
        {
            let Some((_, stalest)) = self.by_age.pop_first() else { break };
            if let Some(event) = self.device_event.get(&stalest).cloned() {
                self.forget(&event, &stalest);
                outcome.evicted += 1;
            }
        }
        outcome
    }

    /// When `event`'s cached devices last changed (a put, an eviction, a
    /// move), as a count that only grows: an answer built from the event is
    /// exact while this stays the same. `None` when the event has no
    /// cached device.
    pub(crate) fn changed(&self, event: &str) -> Option<u64> {
        self.events.get(event).map(|e| e.changed)
    }

    /// A new value of [`Event::changed`].
    fn touch(&mut self) -> u64 {
        self.changes += 1;
        self.changes
    }

    /// What the cache holds, as counted against `LIVE_CACHE_MAX_BYTES`.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
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
            .map(|(event, entry)| EventSummary {
                event: event.clone(),
                devices: entry.devices.len(),
                last_ts: entry.devices.values().map(|d| d.ts_ms).max().unwrap_or(0),
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
        self.events
            .get(event)
            .into_iter()
            .flat_map(|e| e.devices.iter().map(|(id, d)| (id.as_str(), d)))
    }

    /// Applies a new device→event map to the devices it routed: each one
    /// whose event changed moves (or, when unmapped now, leaves the cache).
    /// Returns the moved positions, to be shown to the new event.
    pub(crate) fn remap(&mut self, map: &HashMap<String, String>) -> Vec<(String, Position)> {
        let mut moved = Vec::new();
        let stale: Vec<(String, String)> = self
            .events
            .iter()
            .flat_map(|(event, e)| {
                e.devices
                    .iter()
                    .filter(|(device, d)| d.via_map && map.get(*device) != Some(event))
                    .map(|(device, _)| (event.clone(), device.clone()))
            })
            .collect();
        for (event, device) in stale {
            if let Some(gone) = self.forget(&event, &device)
                && let Some(new_event) = map.get(&device)
                && let Some(position) = parse_frame(&gone.frame)
            {
                moved.push((new_event.clone(), position));
            }
        }
        moved
    }

    /// Takes `device` out of `event`'s devices (the event changes), leaving
    /// the indexes and the byte count to the caller; drops the event when
    /// it has no device left.
    fn take(&mut self, event: &str, device: &str) -> Option<Device> {
        let changed = self.touch();
        let e = self.events.get_mut(event)?;
        let gone = e.devices.remove(device)?;
        e.changed = changed;
        if e.devices.is_empty() {
            self.events.remove(event);
        }
        self.bytes -= device_cost(device, event) + gone.frame.len();
        Some(gone)
    }

    /// Removes `device` from `event` and from the cache's indexes.
    fn forget(&mut self, event: &str, device: &str) -> Option<Device> {
        let gone = self.take(event, device)?;
        self.device_event.remove(device);
        self.by_age.remove(&gone.updated);
        self.trail_positions -= gone.trail.len();
        self.bytes -= gone.trail_bytes + gone.trail.len() * FRAME_OVERHEAD;
        Some(gone)
    }
}

/// What a device costs besides its frames.
fn device_cost(device: &str, event: &str) -> usize {
    DEVICE_OVERHEAD + 3 * device.len() + event.len()
}

/// The position a cached frame was built from, for a device routed by the
/// device→event map (whose position had no `eventId` of its own). `None`
/// only if the frame is not ours, which cannot happen.
fn parse_frame(frame: &str) -> Option<Position> {
    let value = serde_json::from_str(frame).ok()?;
    let mut position = Position::from_value(value).ok()?;
    position.event_id = None;
    Some(position)
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
        let mut c = Cache::new(100, usize::MAX, 0);
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
        let mut c = Cache::new(100, usize::MAX, 0);
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
        let mut c = Cache::new(3, usize::MAX, 2);
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
        let mut c = Cache::new(10, usize::MAX, 3);
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
        let mut c = Cache::new(10, usize::MAX, 5);
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
        let mut c = Cache::new(10, usize::MAX, 30);
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

    fn big(device: &str, ts: i64) -> Position {
        Position::from_value(
            json!({"deviceId":device,"lat":1,"lon":2,"ts":ts,"pad":"x".repeat(16_000)}),
        )
        .unwrap()
    }

    #[test]
    fn each_position_is_counted_once_latest_and_trail_alike() {
        let mut c = Cache::new(10, usize::MAX, 30);
        put(&mut c, "a", big("d1", 1), false);
        let one = c.bytes();
        assert!((16_000..17_000).contains(&one), "{one}");
        put(&mut c, "a", big("d1", 2), false);
        let two = c.bytes();
        assert!((32_000..34_000).contains(&two), "{two}");
        // The trail holds the very bytes the latest frame had.
        let latest = c.snapshot("a").next().unwrap().as_ptr();
        put(&mut c, "a", big("d1", 3), false);
        let trail_newest = c.trails("a", 1).next().unwrap().1.next().unwrap().as_ptr();
        assert_eq!(latest, trail_newest, "shared, not copied");
        // Moving away and evicting give every byte back.
        put(&mut c, "b", pos("d1", 4), false);
        assert!(c.bytes() < 1_000, "{}", c.bytes());
        c.remap(&HashMap::new());
        put(&mut c, "b", pos("d2", 5), false);
        let c2 = Cache::new(1, usize::MAX, 30);
        assert_eq!(c2.bytes(), 0);
    }

    #[test]
    fn past_the_byte_bound_the_stalest_devices_are_evicted() {
        let mut c = Cache::new(1000, 100_000, 30);
        let mut evicted = 0;
        for i in 0..20 {
            evicted += put(&mut c, "a", big(&format!("d{i}"), i), false).evicted;
            assert!(c.bytes() <= 100_000, "{} after {i}", c.bytes());
        }
        assert_eq!(c.devices_len(), 6, "six 16 KB positions fit in 100 KB");
        assert_eq!(evicted, 14);
        assert!(c.has_device("d19") && !c.has_device("d13"), "the newest stay");
        // Trails count too: one device's history pushes others out.
        for ts in 100..104 {
            put(&mut c, "a", big("d19", ts), false);
        }
        assert!(c.bytes() <= 100_000);
        assert!(c.devices_len() < 6);
    }

    #[test]
    fn an_event_changes_stamp_on_every_change_to_it_only() {
        let mut c = Cache::new(2, usize::MAX, 5);
        assert_eq!(c.changed("a"), None);
        put(&mut c, "a", pos("d1", 1), true);
        let a1 = c.changed("a").unwrap();
        put(&mut c, "b", pos("d2", 1), false);
        assert_eq!(c.changed("a"), Some(a1), "another event's put");
        put(&mut c, "a", pos("d3", 1), false); // evicts d1 (a) itself
        let a2 = c.changed("a").unwrap();
        assert_ne!(a1, a2);
        // A map change that moves a device out changes the event; the put
        // that follows changes it again.
        put(&mut c, "a", pos("d4", 1), true); // evicts d2
        let a3 = c.changed("a").unwrap();
        let moved = c.remap(&HashMap::from([("d4".to_owned(), "b".to_owned())]));
        let a4 = c.changed("a").unwrap();
        assert_ne!(a3, a4);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].1.device_id, "d4");
        assert_eq!(moved[0].1.event_id, None, "still routed by the map");
        assert_eq!(moved[0].1.frame("b"), pos("d4", 1).frame("b"), "parsed back exactly");
        put(&mut c, "a", pos("d3", 2), false);
        assert_ne!(c.changed("a").unwrap(), a4);
    }

    #[test]
    fn trail_length_zero_keeps_no_history() {
        let mut c = Cache::new(10, usize::MAX, 0);
        for ts in 1..=3 {
            put(&mut c, "a", pos("d1", ts), false);
        }
        assert_eq!(c.trail_positions(), 0);
        assert_eq!(c.trails("a", 5).count(), 0);
    }
}
