//! `Position::from_value` over JSON text: a Redis Stream entry's payload.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::position;

fuzz_target!(|data: &[u8]| {
    match position(data) {
        Ok(p) => common::check_position(&p),
        Err(why) => assert!(!why.is_empty(), "empty error"),
    }
});
