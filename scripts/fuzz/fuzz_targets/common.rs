//! Checks shared by the position targets: what every accepted position must
//! satisfy, whatever the input.

use livecast::fuzzing::{MAX_EVENT_ID_CHARS, ParsedPosition, position};
use serde_json::Value;

/// An `eventId` the server accepted is non-empty and at most 128 characters.
pub fn check_event_id(event_id: &str) {
    assert!(!event_id.is_empty(), "empty eventId accepted");
    assert!(event_id.chars().count() <= MAX_EVENT_ID_CHARS, "long eventId accepted");
}

/// An accepted position: valid fields, a stream form that parses back to the
/// same position, and a `position` frame that is JSON with the right head.
pub fn check_position(p: &ParsedPosition) {
    assert!(!p.device_id().is_empty(), "empty deviceId accepted");
    assert!(p.ts_ms() >= 0, "negative ts accepted");
    if let Some(event_id) = p.event_id() {
        check_event_id(event_id);
    }

    let stream = p.to_json();
    match position(stream.as_bytes()) {
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
