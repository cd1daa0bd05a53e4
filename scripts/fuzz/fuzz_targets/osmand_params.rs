//! The OsmAnd parameter parser of `/ingest/osmand` (SPEC §10): a query
//! string and a form body (the input split at its first `\n`), with its
//! bounds (`LIVE_MAX_POSITION_BYTES`).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::{form_pairs, osmand_params};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let limits = common::limits_for(data);
    let (query, form) = match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let pairs: Vec<(String, String)> = form_pairs(query).into_iter().chain(form_pairs(form)).collect();
    let last = |names: &[&str]| {
        pairs.iter().rev().find(|(n, _)| names.contains(&n.as_str())).map(|(_, v)| v.clone())
    };
    match osmand_params(query, form, limits) {
        Ok(p) => {
            common::check_position(&p, limits.max_position_bytes);
            // The id is the last `id`/`deviceid` parameter, as sent.
            assert_eq!(Some(p.device_id().to_owned()), last(&["id", "deviceid"]));
            // The event is the last `event` parameter.
            assert_eq!(p.event_id().map(str::to_owned), last(&["event"]));
            let stream: Value = serde_json::from_str(&p.to_json()).expect("stream form is JSON");
            for name in ["token", "event", "id", "deviceid", "batt", "bearing", "location", "timestamp", "type"] {
                assert!(stream.get(name).is_none(), "{name} kept: {stream}");
            }
            // Coordinates came from `lat`/`lon` or `location`.
            assert!(last(&["lat", "location"]).is_some() && last(&["lon", "location"]).is_some());
        }
        Err(refused) => {
            assert!(!refused.message.is_empty(), "empty refusal text");
            assert!(refused.position, "a parameter request is one position");
            assert!(matches!(refused.status, 400 | 413), "{refused:?}");
        }
    }
});
