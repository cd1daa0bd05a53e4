//! The JSON body parser of `POST /ingest`: an array of positions or one.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::{ingest_json, position};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(parsed) = ingest_json(data) else { return };
    let items: Vec<Value> = match serde_json::from_slice(data) {
        Ok(Value::Array(items)) => items,
        Ok(object @ Value::Object(_)) => vec![object],
        Ok(other) => panic!("accepted a body that is neither an array nor an object: {other}"),
        Err(e) => panic!("accepted a body that is not JSON: {e}"),
    };
    // Every item is either a position or a rejection, in body order.
    assert_eq!(parsed.positions.len() + parsed.rejected.len(), items.len());
    let mut accepted = parsed.positions.iter();
    let mut rejected = parsed.rejected.iter().peekable();
    for (index, item) in items.iter().enumerate() {
        let alone = position(item.to_string().as_bytes());
        if rejected.peek().is_some_and(|(i, _)| *i == index) {
            let (_, why) = rejected.next().unwrap_or_else(|| unreachable!());
            assert_eq!(alone.err().as_ref(), Some(why), "item {index}");
        } else {
            let p = accepted.next().unwrap_or_else(|| panic!("item {index} lost"));
            common::check_position(p);
            assert_eq!(alone.as_ref(), Ok(p), "item {index}");
        }
    }
    assert!(rejected.next().is_none(), "rejection with a bad index");
});
