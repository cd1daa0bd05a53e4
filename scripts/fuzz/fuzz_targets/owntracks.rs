//! The OwnTracks message parser of `/ingest/owntracks` (SPEC §10), with
//! and without the `X-Limit-U`/`X-Limit-D` sender, under
//! `LIVE_MAX_POSITION_BYTES`.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::owntracks;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let limits = common::limits_for(data);
    let whole = serde_json::from_slice::<Value>(data);
    let typed = |v: &Value| v.get("_type").and_then(Value::as_str).map(str::to_owned);
    // serde skips the fields it ignores without building them: a lone
    // surrogate escape there passes, and `whole` cannot be read then. The
    // body must still be UTF-8 JSON by serde's own reading.
    let json_by_serde = std::str::from_utf8(data).is_ok()
        && serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok();
    for (user, device) in [(None, None), (Some("jane"), Some("phone"))] {
        match owntracks(data, user, device, limits) {
            Ok(Ok(p)) => {
                common::check_position(&p, limits.max_position_bytes);
                assert!(json_by_serde, "accepted a body that is not JSON");
                if let Ok(body) = &whole {
                    assert_eq!(typed(body).as_deref(), Some("location"));
                }
                if user.is_some() {
                    assert_eq!(p.device_id(), "jane/phone");
                }
            }
            Ok(Err(kind)) => {
                assert_ne!(kind, "location");
                if kind == "empty" {
                    assert!(data.iter().all(u8::is_ascii_whitespace));
                } else {
                    assert!(json_by_serde, "ignored a body that is not JSON");
                    if let Ok(body) = &whole {
                        assert!(body.is_object());
                        assert_ne!(typed(body).as_deref(), Some("location"));
                    }
                }
            }
            Err(refused) => {
                assert!(!refused.message.is_empty(), "empty refusal text");
                assert!(matches!(refused.status, 400 | 413), "{refused:?}");
                if refused.position {
                    assert!(json_by_serde, "position refusal of a body that is not JSON");
                    if let Ok(body) = &whole {
                        assert_eq!(typed(body).as_deref(), Some("location"));
                    }
                }
            }
        }
    }
});
