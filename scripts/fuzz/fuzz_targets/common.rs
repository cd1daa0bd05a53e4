//! Checks shared by the position targets: what every accepted position must
//! satisfy, whatever the input.

use livecast::fuzzing::{IngestLimits, MAX_EVENT_ID_CHARS, MAX_ID_BYTES, ParsedPosition, position};
use serde_json::Value;

/// An `eventId` the server accepted is non-empty and at most 128 characters.
pub fn check_event_id(event_id: &str) {
    assert!(!event_id.is_empty(), "empty eventId accepted");
    assert!(event_id.chars().count() <= MAX_EVENT_ID_CHARS, "long eventId accepted");
}

/// Ingest bounds picked from the input's length, so that the fuzzer reaches
/// both sides of each (few items, small positions) by growing or shrinking
/// an input.
pub fn limits_for(data: &[u8]) -> IngestLimits {
    IngestLimits {
        max_items: 1 + data.len() % 16,
        max_position_bytes: 64 + (data.len() * 31) % 512,
    }
}

/// An accepted position: valid fields, ids of at most 128 bytes, a stream
/// form of at most `max_bytes` that parses back to the same position, and a
/// `position` frame that is JSON with the right head.
pub fn check_position(p: &ParsedPosition, max_bytes: usize) {
    assert!(!p.device_id().is_empty(), "empty deviceId accepted");
    assert!(p.device_id().len() <= MAX_ID_BYTES, "long deviceId accepted");
    assert!(p.ts_ms() >= 0, "negative ts accepted");
    if let Some(event_id) = p.event_id() {
        check_event_id(event_id);
        assert!(event_id.len() <= MAX_ID_BYTES, "long eventId accepted");
    }

    let stream = p.to_json();
    assert!(stream.len() <= max_bytes, "{} bytes accepted, limit {max_bytes}", stream.len());
    match position(stream.as_bytes(), max_bytes) {
        Ok(again) => assert_eq!(&again, p, "stream form does not round-trip: {stream}"),
        Err(e) => panic!("stream form rejected ({e}): {stream}"),
    }

    let event_id = p.event_id().unwrap_or("e-fuzz");
    let frame = p.frame(event_id);
    let value: Value = match serde_json::from_str(&frame) {
        Ok(value) => value,
        Err(e) => panic!("position frame is not JSON ({e}): {frame}"),
    };
    assert!(value.is_object(), "{frame}");
    assert_eq!(value["type"], "position", "{frame}");
    assert_eq!(value["eventId"], event_id, "{frame}");
    assert_eq!(value["deviceId"], p.device_id(), "{frame}");
    assert_eq!(value["ts"], p.ts_ms(), "{frame}");
    assert!(value["lat"].is_number() && value["lon"].is_number(), "{frame}");
}
