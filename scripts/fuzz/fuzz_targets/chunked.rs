//! The chunked body decoder of both HTTP ports (RFC 9112 §7.1), with chunk
//! extensions and trailers: the decoded body is what a plain reference
//! decoder makes of the same bytes, it never passes `INGEST_MAX_BODY_BYTES`,
//! and its wire bytes (sizes, extensions, line ends, trailers) never pass
//! twice that bound. Linear time is libFuzzer's `-timeout` to catch.
#![no_main]

use libfuzzer_sys::fuzz_target;
use livecast::fuzzing::{Chunked, chunked_body};

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the bounds, so that the fuzzer reaches both
    // sides of each by changing them.
    let [a, b, input @ ..] = data else { return };
    let max_body = 1 + usize::from(*a) * 4;
    let step = 1 + usize::from(*b) % 64;
    match chunked_body(input, max_body, step) {
        Ok(Chunked { body, wire_bytes }) => {
            assert!(body.len() <= max_body, "{} body bytes, bound {max_body}", body.len());
            assert!(wire_bytes <= 2 * max_body, "{wire_bytes} wire bytes, bound {max_body}");
            assert!(wire_bytes <= input.len());
            let reference = reference(&input[..wire_bytes]);
            assert_eq!(reference.as_deref(), Some(body.as_slice()), "differs from the reference");
        }
        Err(status) => assert!(matches!(status, None | Some(400 | 413)), "status {status:?}"),
    }
});

/// A plain chunked decoder over a complete body (`None` when it is not
/// one): sizes in hex before an optional `;extension`, lines ended by LF or
/// CRLF, trailer lines skipped up to the empty one, which must end `bytes`.
fn reference(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    let mut rest = bytes;
    let line = |rest: &mut &[u8]| -> Option<Vec<u8>> {
        let end = rest.iter().position(|&b| b == b'\n')?;
        let mut line = rest[..end].to_vec();
        *rest = &rest[end + 1..];
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(line)
    };
    loop {
        let size_line = line(&mut rest)?;
        let size = size_line.split(|&b| b == b';').next()?.trim_ascii_end();
        let size = usize::from_str_radix(std::str::from_utf8(size).ok()?, 16).ok()?;
        if size == 0 {
            break;
        }
        body.extend_from_slice(rest.get(..size)?);
        rest = &rest[size..];
        if !line(&mut rest)?.is_empty() {
            return None;
        }
    }
    while !line(&mut rest)?.is_empty() {}
    rest.is_empty().then_some(body)
}
