//! Inbound frames: every frame, continuation frames included, is a sign of
//! life, and a message of more than 16 fragments closes 1008.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::{DEADLINE, Frame, RawWs, Server};

/// Writes one masked client frame, FIN as given.
fn send_raw(raw: &mut RawWs, fin: bool, opcode: u8, payload: &[u8]) {
    let len = u8::try_from(payload.len()).expect("short payloads only");
    assert!(len < 126);
    let mask = [7u8, 1, 9, 3];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode, 0x80 | len];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    raw.stream.write_all(&f).expect("send frame");
}

/// The next frame other than a server ping, within [`DEADLINE`].
#[track_caller]
fn next_non_ping(raw: &mut RawWs) -> Frame {
    let end = Instant::now() + DEADLINE;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match raw.read_frame(left) {
            Ok(Some(f)) if f.opcode == Frame::PING => {}
            Ok(Some(f)) => return f,
            Ok(None) => panic!("nothing within {DEADLINE:?}"),
            Err(e) => panic!("connection ended: {e:?}"),
        }
    }
}

#[test]
fn a_message_of_more_than_sixteen_fragments_closes_1008() {
    let srv = Server::start();
    let mut raw = RawWs::connect(srv.ws, "/");
    send_raw(&mut raw, false, Frame::TEXT, b"");
    for _ in 0..15 {
        send_raw(&mut raw, false, 0, b"");
    }
    // Sixteen fragments so far: still open (a ping between fragments is
    // answered).
    send_raw(&mut raw, true, Frame::PING, b"alive?");
    let pong = next_non_ping(&mut raw);
    assert_eq!((pong.opcode, pong.payload.as_slice()), (Frame::PONG, &b"alive?"[..]));
    // The seventeenth.
    send_raw(&mut raw, false, 0, b"");
    let close = next_non_ping(&mut raw);
    assert_eq!(close.close_code_reason().0, 1008, "{close:?}");
    // Whatever the peer keeps sending, the connection ends.
    for _ in 0..1000 {
        if raw.stream.write_all(&[0x00, 0x80, 0, 0, 0, 0]).is_err() {
            break;
        }
    }
    let (_, _end) = raw.read_to_end(DEADLINE);
    srv.expect_metric(
        "livecast_connections_closed_total",
        &[("reason", "too-many-fragments")],
        1.0,
    );
}

#[test]
fn a_slowly_fragmenting_peer_is_not_timed_out_while_its_frames_arrive() {
    // Silent for more than two intervals means dead; this peer never
    // answers a ping but sends a fragment every 100 ms for 1.2 s.
    let srv = Server::with(|c| c.ping_interval = Duration::from_millis(300));
    let mut raw = RawWs::connect(srv.ws, "/");
    let message = br#"{"type":"ping","id":"slow-but-alive"}"#;
    let pieces: Vec<&[u8]> = message.chunks(message.len().div_ceil(12)).collect();
    assert!(pieces.len() <= 12);
    for (i, piece) in pieces.iter().enumerate() {
        let opcode = if i == 0 { Frame::TEXT } else { 0 };
        send_raw(&mut raw, i + 1 == pieces.len(), opcode, piece);
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer = next_non_ping(&mut raw);
    assert_eq!(answer.opcode, Frame::TEXT, "{answer:?}");
    assert_eq!(answer.json(), serde_json::json!({"type":"pong","id":"slow-but-alive"}));
}
