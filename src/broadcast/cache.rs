//! The latest position of every device, by event: what a snapshot shows.

use std::collections::HashMap;

use tungstenite::Utf8Bytes;

use crate::position::Position;

/// A cached position and its frame for the event it is in.
#[derive(Debug)]
struct Latest {
    position: Position,
    frame: Utf8Bytes,
    /// Routed by the device→event map rather than by its own `eventId`, so
    /// a map change may move it.
    via_map: bool,
}

/// Latest positions, owned by the broadcaster thread.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    events: HashMap<String, HashMap<String, Latest>>,
    /// Which event each device is in now.
    device_event: HashMap<String, String>,
}

impl Cache {
    /// Records `position` as the latest of its device, in `event`. A device
    /// seen in another event before leaves that event's snapshot.
    pub(crate) fn put(&mut self, event: &str, position: Position, frame: Utf8Bytes, via_map: bool) {
        let device = position.device_id.clone();
        match self.device_event.get(&device) {
            Some(old) if old != event => {
                let old = old.clone();
                self.forget(&old, &device);
                self.device_event.insert(device.clone(), event.to_owned());
            }
            Some(_) => {}
            None => {
                self.device_event.insert(device.clone(), event.to_owned());
            }
        }
        self.events
            .entry(event.to_owned())
            .or_default()
            .insert(device, Latest { position, frame, via_map });
    }

    /// Whether `device` has a cached position.
    pub(crate) fn has_device(&self, device: &str) -> bool {
        self.device_event.contains_key(device)
    }

    /// The frames of `event`'s snapshot.
    pub(crate) fn snapshot(&self, event: &str) -> impl Iterator<Item = &str> {
        self.events.get(event).into_iter().flat_map(|d| d.values().map(|l| l.frame.as_str()))
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
                    .filter(|(device, l)| l.via_map && map.get(*device) != Some(event))
                    .map(|(device, _)| (event.clone(), device.clone()))
            })
            .collect();
        for (event, device) in stale {
            if let Some(latest) = self.forget(&event, &device) {
                self.device_event.remove(&device);
                if let Some(new_event) = map.get(&device) {
                    moved.push((new_event.clone(), latest.position));
                }
            }
        }
        moved
    }

    fn forget(&mut self, event: &str, device: &str) -> Option<Latest> {
        let devices = self.events.get_mut(event)?;
        let latest = devices.remove(device);
        if devices.is_empty() {
            self.events.remove(event);
        }
        latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pos(device: &str, ts: i64) -> Position {
        Position::from_value(json!({"deviceId":device,"lat":1,"lon":2,"ts":ts})).unwrap()
    }

    fn put(cache: &mut Cache, event: &str, p: Position, via_map: bool) {
        let frame = Utf8Bytes::from(p.frame(event));
        cache.put(event, p, frame, via_map);
    }

    #[test]
    fn latest_wins_and_moves_between_events() {
        let mut c = Cache::default();
        put(&mut c, "a", pos("d1", 1), false);
        put(&mut c, "a", pos("d1", 2), false);
        put(&mut c, "a", pos("d2", 3), false);
        assert_eq!(c.snapshot("a").count(), 2);
        assert!(c.snapshot("a").any(|f| f.contains("\"ts\":2")));
        put(&mut c, "b", pos("d1", 4), false);
        assert_eq!(c.snapshot("a").count(), 1);
        assert_eq!(c.snapshot("b").count(), 1);
    }

    #[test]
    fn remap_moves_only_map_routed_devices() {
        let mut c = Cache::default();
        put(&mut c, "a", pos("d1", 1), true);
        put(&mut c, "a", pos("d2", 1), false);
        put(&mut c, "a", pos("d3", 1), true);
        let map = HashMap::from([("d1".to_owned(), "b".to_owned())]);
        let moved = c.remap(&map);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].0, "b");
        // d1 moved out, d3 unmapped and gone, d2 explicit and kept.
        assert_eq!(c.snapshot("a").count(), 1);
    }
}
