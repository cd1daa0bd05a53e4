//! `Position::from_source` over JSON text: a Redis Stream entry's payload.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::position;

fuzz_target!(|data: &[u8]| {
    let max_bytes = common::limits_for(data).max_position_bytes;
    match position(data, max_bytes) {
        Ok(p) => common::check_position(&p, max_bytes),
        Err(why) => assert!(!why.is_empty(), "empty error"),
    }
});
