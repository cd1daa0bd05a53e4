//! `Inbound::parse`: every text frame a client sends goes through it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::{Inbound, MAX_EVENT_ID_CHARS, inbound};

fuzz_target!(|data: &[u8]| {
    // tungstenite hands the loop only valid UTF-8 text (1007 otherwise).
    let Ok(text) = std::str::from_utf8(data) else { return };
    match inbound(text) {
        Ok(message) => {
            let (kind, event_id, trail) = match &message {
                Inbound::Subscribe { event, trail } => ("subscribe", event, *trail),
                Inbound::Unsubscribe(e) => ("unsubscribe", e, None),
                Inbound::Ping(id) => {
                    // The pong echoes the id's JSON text: a scalar only.
                    if let Some(id) = id {
                        let v: serde_json::Value = serde_json::from_str(id).expect("id is JSON");
                        assert!(!v.is_object() && !v.is_array(), "structured id accepted");
                    }
                    return;
                }
                Inbound::Events => return,
            };
            assert!(!event_id.is_empty(), "empty eventId accepted");
            assert!(event_id.chars().count() <= MAX_EVENT_ID_CHARS, "long eventId accepted");
            // The canonical form of the message parses to the same message.
            let mut canonical = serde_json::json!({ "type": kind, "eventId": event_id });
            if let Some(trail) = trail {
                canonical["trail"] = trail.into();
            }
            let canonical = canonical.to_string();
            assert_eq!(inbound(&canonical), Ok(message), "{canonical}");
        }
        Err(why) => assert!(!why.is_empty(), "empty error for {text:?}"),
    }
});
