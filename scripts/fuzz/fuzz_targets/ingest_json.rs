//! The JSON body parser of `POST /ingest`: an array of positions or one,
//! with its bounds (`INGEST_MAX_ITEMS`, `LIVE_MAX_POSITION_BYTES`, at most
//! 100 listed rejections). An item that is valid JSON syntax but that JSON
//! cannot represent in memory (a number out of range, a lone surrogate,
//! nesting past the parser's depth) is that item's rejection only.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::{IngestRefused, MAX_LISTED_REJECTIONS, ingest_json, position};
use serde_json::Value;
use serde_json::value::RawValue;

fuzz_target!(|data: &[u8]| {
    let limits = common::limits_for(data);
    // The body's shape, checked for syntax only (items as raw text), and
    // each item parsed on its own below, as the server does.
    let whole = match serde_json::from_slice::<&RawValue>(data) {
        Ok(raw) if raw.get().starts_with('[') => {
            serde_json::from_str::<Vec<&RawValue>>(raw.get()).map(Shape::Array)
        }
        Ok(raw) if raw.get().starts_with('{') => Ok(Shape::Object(raw)),
        Ok(raw) => Ok(Shape::Other(raw)),
        Err(e) => Err(e),
    };
    let parsed = match ingest_json(data, limits) {
        Ok(parsed) => parsed,
        Err(IngestRefused::TooManyItems) => {
            // Only an array (or a broken one cut after its item too many).
            match whole {
                Ok(Shape::Array(items)) => assert!(items.len() > limits.max_items),
                Ok(Shape::Object(other) | Shape::Other(other)) => {
                    panic!("413 for a body that is not an array: {other}")
                }
                Err(_) => {}
            }
            return;
        }
        Err(IngestRefused::Malformed(why)) => {
            assert!(!why.is_empty(), "empty 400 text");
            // An object is parsed whole: one JSON cannot represent is a 400.
            let object_ok = match &whole {
                Ok(Shape::Object(raw)) => serde_json::from_str::<Value>(raw.get()).is_ok(),
                _ => false,
            };
            assert!(
                !matches!(whole, Ok(Shape::Array(_))) && !object_ok,
                "400 ({why}) for a JSON array or object"
            );
            return;
        }
    };
    let items: Vec<&RawValue> = match whole {
        Ok(Shape::Array(items)) => items,
        Ok(Shape::Object(object)) => vec![object],
        Ok(Shape::Other(other)) => {
            panic!("accepted a body that is neither an array nor an object: {other}")
        }
        Err(e) => panic!("accepted a body that is not JSON: {e}"),
    };
    assert!(items.len() <= limits.max_items, "{} items accepted", items.len());
    // Every item is either a position or a rejection, in body order; the
    // first rejections are listed, all are counted.
    assert_eq!(parsed.positions.len() + parsed.rejected_count, items.len());
    assert_eq!(parsed.rejected.len(), parsed.rejected_count.min(MAX_LISTED_REJECTIONS));
    let mut accepted = parsed.positions.iter();
    let mut rejected = parsed.rejected.iter().peekable();
    let mut rejections = 0;
    for (index, item) in items.iter().enumerate() {
        let alone = position(item.get().as_bytes(), limits.max_position_bytes);
        let listed = rejected.peek().is_some_and(|(i, _)| *i == index);
        if listed {
            let (_, why) = rejected.next().unwrap_or_else(|| unreachable!());
            assert_eq!(alone.err().as_ref(), Some(why), "item {index}");
            rejections += 1;
        } else if alone.is_err() {
            // A rejection past the listed ones.
            assert!(rejections >= MAX_LISTED_REJECTIONS, "item {index} rejected alone only");
            rejections += 1;
        } else {
            let p = accepted.next().unwrap_or_else(|| panic!("item {index} lost"));
            common::check_position(p, limits.max_position_bytes);
            assert_eq!(alone.as_ref(), Ok(p), "item {index}");
        }
    }
    assert_eq!(rejections, parsed.rejected_count);
    assert!(rejected.next().is_none(), "rejection with a bad index");
});

/// A body's top level, its items unparsed.
enum Shape<'a> {
    Array(Vec<&'a RawValue>),
    Object(&'a RawValue),
    Other(&'a RawValue),
}
