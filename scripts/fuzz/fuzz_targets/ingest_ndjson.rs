//! The NDJSON body parser of `POST /ingest`: one position per line, with
//! its bounds (`INGEST_MAX_ITEMS`, `LIVE_MAX_POSITION_BYTES`, at most 100
//! listed rejections).
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::{IngestRefused, MAX_LISTED_REJECTIONS, ingest_ndjson, position};

fuzz_target!(|data: &[u8]| {
    let limits = common::limits_for(data);
    let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
    let items = lines
        .iter()
        .filter(|l| !l.strip_suffix(b"\r").unwrap_or(l).iter().all(u8::is_ascii_whitespace))
        .count();
    let parsed = match ingest_ndjson(data, limits) {
        Ok(parsed) => parsed,
        Err(IngestRefused::TooManyItems) => {
            assert!(items > limits.max_items, "413 for {items} lines");
            return;
        }
        Err(IngestRefused::Malformed(why)) => panic!("an NDJSON body is never a 400: {why}"),
    };
    assert!(items <= limits.max_items, "{items} lines accepted");
    assert_eq!(parsed.positions.len() + parsed.rejected_count, items);
    assert_eq!(parsed.rejected.len(), parsed.rejected_count.min(MAX_LISTED_REJECTIONS));
    let mut accepted = parsed.positions.iter();
    let mut rejected = parsed.rejected.iter().peekable();
    for (index, line) in lines.iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            assert!(
                rejected.peek().is_none_or(|(i, _)| *i != index),
                "blank line {index} rejected"
            );
            continue;
        }
        let alone = position(line, limits.max_position_bytes);
        if rejected.peek().is_some_and(|(i, _)| *i == index) {
            let (_, why) = rejected.next().unwrap_or_else(|| unreachable!());
            assert!(alone.is_err(), "line {index} rejected in the body, accepted alone: {why}");
        } else if alone.is_err() {
            assert!(parsed.rejected.len() == MAX_LISTED_REJECTIONS, "line {index} lost");
        } else {
            let p = accepted.next().unwrap_or_else(|| panic!("line {index} lost"));
            common::check_position(p, limits.max_position_bytes);
            assert_eq!(alone.as_ref(), Ok(p), "line {index}");
        }
    }
    assert!(accepted.next().is_none(), "more positions than lines");
    assert!(rejected.next().is_none(), "rejection with a bad index");
});
