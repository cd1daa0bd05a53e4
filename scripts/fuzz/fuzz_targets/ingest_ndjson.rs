//! The NDJSON body parser of `POST /ingest`: one position per line.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::{ingest_ndjson, position};

fuzz_target!(|data: &[u8]| {
    let parsed = ingest_ndjson(data);
    let mut accepted = parsed.positions.iter();
    let mut rejected = parsed.rejected.iter().peekable();
    for (index, line) in data.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            assert!(
                rejected.peek().is_none_or(|(i, _)| *i != index),
                "blank line {index} rejected"
            );
            continue;
        }
        let alone = position(line);
        if rejected.peek().is_some_and(|(i, _)| *i == index) {
            let (_, why) = rejected.next().unwrap_or_else(|| unreachable!());
            assert!(alone.is_err(), "line {index} rejected in the body, accepted alone: {why}");
        } else {
            let p = accepted.next().unwrap_or_else(|| panic!("line {index} lost"));
            common::check_position(p);
            assert_eq!(alone.as_ref(), Ok(p), "line {index}");
        }
    }
    assert!(accepted.next().is_none(), "more positions than lines");
    assert!(rejected.next().is_none(), "rejection with a bad index");
});
