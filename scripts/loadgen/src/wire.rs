//! The client side of the wire: the HTTP upgrade, WebSocket framing (RFC
//! 6455: server frames unmasked, client frames masked) and the few fields
//! of livecast's JSON messages that the load generator looks at.
//!
//! Hand-rolled on purpose: every received frame is parsed in place out of
//! the worker's read buffer, with no allocation and no copy, so that one
//! load-generator core keeps up with a server fanning out hundreds of
//! thousands of messages per second.

use std::sync::LazyLock;

use memchr::memmem::Finder;
use serde::Deserialize;

pub(crate) const OP_CONTINUATION: u8 = 0x0;
pub(crate) const OP_TEXT: u8 = 0x1;
pub(crate) const OP_BINARY: u8 = 0x2;
pub(crate) const OP_CLOSE: u8 = 0x8;
pub(crate) const OP_PING: u8 = 0x9;
pub(crate) const OP_PONG: u8 = 0xA;

/// Close code reported when the connection ended without a close frame.
pub(crate) const ABNORMAL_CLOSURE: u16 = 1006;

/// One frame parsed in place.
#[derive(Debug)]
pub(crate) struct Frame<'a> {
    pub(crate) fin: bool,
    pub(crate) opcode: u8,
    pub(crate) payload: &'a [u8],
}

/// Parses the frame at the start of `buf`: `Ok(None)` when it is not all
/// there yet, else the frame and the bytes it took.
pub(crate) fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, &'static str> {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else { return Ok(None) };
    if b1 & 0x80 != 0 {
        return Err("masked frame from the server");
    }
    let (len, header) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).map_err(|_| "frame too large")?;
    let end = header + len;
    match buf.get(header..end) {
        Some(payload) => Ok(Some((Frame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0F, payload }, end))),
        None => Ok(None),
    }
}

/// Appends a masked client frame to `out`.
pub(crate) fn client_frame(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    const MASK: [u8; 4] = [0x5A, 0xC3, 0x17, 0x88];
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | u8::try_from(len).unwrap_or(0));
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
}

/// The code of a close frame's payload (1005 "no status" when empty).
pub(crate) fn close_code(payload: &[u8]) -> u16 {
    match payload.get(..2) {
        Some(b) => u16::from_be_bytes([b[0], b[1]]),
        None => 1005,
    }
}

/// The upgrade request, and the `Sec-WebSocket-Accept` the server must
/// answer with.
pub(crate) fn upgrade_request(host: &str, path: &str) -> (Vec<u8>, String) {
    let key = tungstenite::handshake::client::generate_key();
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         User-Agent: livecast-loadgen\r\n\r\n"
    );
    (request.into_bytes(), accept)
}

/// Outcome of reading the server's answer to the upgrade.
#[derive(Debug)]
pub(crate) enum Upgrade {
    /// Not all of the head has arrived yet.
    Partial,
    /// 101 with the right accept key; the head took this many bytes.
    Done(usize),
    /// Refused or broken: a short label for the report (`http-503`, ...).
    Failed(String),
}

pub(crate) fn parse_upgrade_response(buf: &[u8], expected_accept: &str) -> Upgrade {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    match response.parse(buf) {
        Ok(httparse::Status::Partial) => Upgrade::Partial,
        Err(_) => Upgrade::Failed("bad-http-response".to_owned()),
        Ok(httparse::Status::Complete(n)) => {
            let code = response.code.unwrap_or(0);
            if code != 101 {
                return Upgrade::Failed(format!("http-{code}"));
            }
            let accept_ok = response.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("sec-websocket-accept")
                    && h.value == expected_accept.as_bytes()
            });
            if accept_ok { Upgrade::Done(n) } else { Upgrade::Failed("bad-accept-key".to_owned()) }
        }
    }
}

/// The fields of a server message that the load generator checks. Strings
/// are borrowed from the frame (the ones we look at never need escapes).
#[derive(Debug, Deserialize)]
pub(crate) struct Message<'a> {
    #[serde(rename = "type", borrow)]
    pub(crate) kind: &'a str,
    #[serde(rename = "deviceId", borrow, default)]
    pub(crate) device_id: Option<&'a str>,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
    #[serde(rename = "sentUs", default)]
    pub(crate) sent_us: Option<u64>,
    #[serde(borrow, default)]
    pub(crate) positions: Option<Vec<SnapshotPosition<'a>>>,
    #[serde(borrow, default)]
    pub(crate) code: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct SnapshotPosition<'a> {
    #[serde(rename = "deviceId", borrow)]
    pub(crate) device_id: &'a str,
    #[serde(default)]
    pub(crate) seq: Option<u64>,
}

pub(crate) fn parse_message(payload: &[u8]) -> Option<Message<'_>> {
    serde_json::from_slice(payload).ok()
}

/// Fast path for the hot message: a compact `position` (no whitespace, as
/// every server here writes it) → (device index, seq, sentUs). `None` for
/// anything else, which then goes through serde.
///
/// At three million deliveries a second this is most of the load
/// generator's own time: four `str::find`s per message (each building its
/// own searcher) made the load generator the bottleneck of the ramps, so
/// the searchers are built once and search with SIMD (`memchr::memmem`).
pub(crate) fn fast_position(payload: &[u8]) -> Option<(usize, u64, Option<u64>)> {
    static KEYS: LazyLock<[Finder<'static>; 4]> = LazyLock::new(|| {
        [
            Finder::new(b"\"type\":\"position\""),
            Finder::new(b"\"deviceId\":\"d-"),
            Finder::new(b"\"seq\":"),
            Finder::new(b"\"sentUs\":"),
        ]
    });
    let [position, device, seq, sent_us] = &*KEYS;
    let after = |key: &Finder<'_>| {
        let at = key.find(payload)? + key.needle().len();
        digits(payload.get(at..)?)
    };
    position.find(payload)?;
    let device = usize::try_from(after(device)?).ok()?;
    Some((device, after(seq)?, after(sent_us)))
}

/// The decimal number at the start of `bytes`; `None` when there is none
/// or it does not fit a u64.
fn digits(bytes: &[u8]) -> Option<u64> {
    let end = bytes.iter().position(|b| !b.is_ascii_digit()).unwrap_or(bytes.len());
    std::str::from_utf8(bytes.get(..end)?).ok()?.parse().ok()
}

/// `d-<n>` → n.
pub(crate) fn device_index(device_id: &str) -> Option<usize> {
    device_id.strip_prefix("d-")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser_when_unmasked() {
        // A server frame: unmasked text, 200 bytes (16-bit length).
        let payload = vec![b'x'; 200];
        let mut buf = vec![0x81, 126, 0, 200];
        buf.extend_from_slice(&payload);
        buf.extend_from_slice(&[0x88, 2, 0x03, 0xF0]); // close 1008
        let (frame, used) = parse_frame(&buf).unwrap().unwrap();
        assert_eq!((frame.fin, frame.opcode, frame.payload.len(), used), (true, OP_TEXT, 200, 204));
        let (close, _) = parse_frame(&buf[used..]).unwrap().unwrap();
        assert_eq!((close.opcode, close_code(close.payload)), (OP_CLOSE, 1008));
        assert!(parse_frame(&buf[..100]).unwrap().is_none());
    }

    #[test]
    fn client_frames_are_masked() {
        let mut out = Vec::new();
        client_frame(OP_TEXT, b"hello", &mut out);
        assert_eq!(out.len(), 2 + 4 + 5);
        assert_eq!(out[1], 0x80 | 5);
        let mask = &out[2..6];
        let unmasked: Vec<u8> =
            out[6..].iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m).collect();
        assert_eq!(unmasked, b"hello");
    }

    #[test]
    fn messages() {
        let m = parse_message(
            br#"{"type":"position","eventId":"e","deviceId":"d-7","lat":1.5,"lon":2,"ts":1,"seq":9,"sentUs":123,"speed":{"a":[1]}}"#,
        )
        .unwrap();
        assert_eq!(
            (m.kind, m.device_id, m.seq, m.sent_us),
            ("position", Some("d-7"), Some(9), Some(123))
        );
        let s = parse_message(br#"{"type":"subscribed","eventId":"e","positions":[{"deviceId":"d-1","seq":3,"lat":0}]}"#)
            .unwrap();
        assert_eq!(s.positions.unwrap()[0].seq, Some(3));
        assert_eq!(device_index("d-42"), Some(42));
        let p =
            br#"{"type":"position","eventId":"e","deviceId":"d-7","lat":1.5,"seq":9,"sentUs":123}"#;
        assert_eq!(fast_position(p), Some((7, 9, Some(123))));
        let sorted = br#"{"deviceId":"d-7","eventId":"e","seq":9,"type":"position"}"#;
        assert_eq!(fast_position(sorted), Some((7, 9, None)));
        assert_eq!(fast_position(br#"{"type":"subscribed","positions":[]}"#), None);
        // A key's first occurrence wins.
        let twice = br#"{"type":"position","deviceId":"d-3","seq":1,"seq":2,"sentUs":5}"#;
        assert_eq!(fast_position(twice), Some((3, 1, Some(5))));
        assert_eq!(fast_position(br#"{"type":"position","deviceId":"d-x","seq":1}"#), None);
        assert_eq!(fast_position(br#"{"type":"position","deviceId":"d-1"}"#), None);
        let huge = br#"{"type":"position","deviceId":"d-1","seq":99999999999999999999}"#;
        assert_eq!(fast_position(huge), None);
        assert_eq!(
            fast_position(br#"{"type":"position","deviceId":"d-1","seq":7"#),
            Some((1, 7, None))
        );
        assert_eq!(fast_position(b"\"seq\":"), None);
        assert_eq!(fast_position(b"\xff\xfe\""), None);
    }
}
