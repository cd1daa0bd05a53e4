//! The Traccar Client 9 JSON parser of `/ingest/osmand` (SPEC §10):
//! `{"location": {...} | [...], "device_id": ...}`, with its bounds
//! (`INGEST_MAX_ITEMS`, `LIVE_MAX_POSITION_BYTES`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::osmand_json;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let limits = common::limits_for(data);
    let whole = serde_json::from_slice::<Value>(data);
    match osmand_json(data, limits) {
        Ok(batch) => {
            for p in &batch.positions {
                common::check_position(p, limits.max_position_bytes);
            }
            let Ok(Value::Object(body)) = whole else {
                // serde skips the fields it ignores without building them:
                // a lone surrogate escape there passes. The body must still
                // be UTF-8 JSON by serde's own reading.
                assert!(std::str::from_utf8(data).is_ok(), "accepted a body that is not UTF-8");
                let skipped = serde_json::from_slice::<serde::de::IgnoredAny>(data);
                assert!(skipped.is_ok(), "accepted a body that is not JSON: {whole:?}");
                return;
            };
            let device = match body.get("device_id") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Number(n)) => n.to_string(),
                other => panic!("accepted device_id {other:?}"),
            };
            let locations = match body.get("location") {
                Some(Value::Array(items)) => items.len(),
                Some(Value::Object(_)) => 1,
                other => panic!("accepted location {other:?}"),
            };
            assert!(locations <= limits.max_items, "{locations} locations accepted");
            assert_eq!(batch.positions.len() + batch.rejected, locations);
            for p in &batch.positions {
                common::check_position(p, limits.max_position_bytes);
                assert_eq!(p.device_id(), device);
                assert_eq!(p.event_id(), None);
                let stream: Value = serde_json::from_str(&p.to_json()).expect("stream form is JSON");
                // Negative "unknown" values never pass.
                for name in ["speed", "heading", "altitude", "accuracy", "battery"] {
                    if let Some(x) = stream.get(name) {
                        assert!(x.as_f64().is_some_and(|x| x >= 0.0), "{name}: {stream}");
                    }
                }
            }
        }
        Err(refused) => {
            assert!(!refused.message.is_empty(), "empty refusal text");
            assert!(!refused.position, "a body refusal: {refused:?}");
            if refused.status == 413 {
                // Only an array of locations past the bound (or a broken
                // body cut after its item too many).
                if let Ok(Value::Object(body)) = &whole {
                    let n = body.get("location").and_then(Value::as_array).map_or(0, Vec::len);
                    assert!(n > limits.max_items, "413 for {n} locations");
                }
            } else {
                assert_eq!(refused.status, 400, "{refused:?}");
            }
        }
    }
});
