//! The JSON protocol spoken over the WebSocket (SPEC §3) and the close
//! codes livecast uses (SPEC §2, RFC 6455 §7.4).
//!
//! Outbound messages are built as strings by hand: they are few, fixed in
//! shape, and the position frames inside a snapshot are already serialised.

use std::fmt;

use std::collections::BTreeMap;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::position::{check_event_id, push_json_str};

/// A message a client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// `{"type":"subscribe","eventId":..,"trail":N}` (`trail` optional)
    Subscribe {
        /// The event.
        event: String,
        /// How many older positions per device the answer's `trails` should
        /// hold; `None` leaves `trails` out. Checked against
        /// `LIVE_TRAIL_LENGTH` by the connection, which knows it.
        trail: Option<u64>,
    },
    /// `{"type":"unsubscribe","eventId":..}`
    Unsubscribe(String),
    /// `{"type":"ping","id":..}`: liveness a page can see (browsers cannot
    /// observe WebSocket ping frames). Holds the `id` as the JSON text to
    /// echo in the `pong`, `None` when the ping had no `id`.
    Ping(Option<String>),
    /// `{"type":"events"}`: the events with positions this client may
    /// read, answered `{"type":"events","events":[..]}`.
    Events,
}

impl Inbound {
    /// Parses one text frame; the error text goes back in a
    /// `protocol-violation` error.
    pub(crate) fn parse(text: &str) -> Result<Inbound, String> {
        let value: Value = serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
        let Value::Object(mut obj) = value else {
            return Err("a message must be a JSON object".to_owned());
        };
        let kind = match obj.get("type") {
            Some(Value::String(t)) => t.clone(),
            Some(_) => return Err("type must be a string".to_owned()),
            None => return Err("type is required".to_owned()),
        };
        if kind == "ping" {
            return ping_id(text).map(Inbound::Ping);
        }
        if kind == "events" {
            return Ok(Inbound::Events);
        }
        let event = |obj: &mut serde_json::Map<String, Value>| match obj.remove("eventId") {
            Some(Value::String(s)) => check_event_id(s).map_err(str::to_owned),
            Some(_) => Err("eventId must be a string".to_owned()),
            None => Err("eventId is required".to_owned()),
        };
        match kind.as_str() {
            "subscribe" => {
                let event = event(&mut obj)?;
                let trail = match obj.get("trail") {
                    None => None,
                    Some(value) => Some(value.as_u64().ok_or_else(|| {
                        "trail must be a whole number of positions (0 or more)".to_owned()
                    })?),
                };
                Ok(Inbound::Subscribe { event, trail })
            }
            "unsubscribe" => Ok(Inbound::Unsubscribe(event(&mut obj)?)),
            _ => Err("unknown type: expected subscribe, unsubscribe, ping or events".to_owned()),
        }
    }
}

/// The `eventId` a refused message named, when it is a string (over-long
/// or empty included): the `protocol-violation` answer names it too, so that
/// a client can hand the error to the subscription that caused it. Parses
/// the frame again, which only the error path pays.
pub(crate) fn named_event(text: &str) -> Option<String> {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut obj)) => match obj.remove("eventId") {
            Some(Value::String(event)) => Some(event),
            _ => None,
        },
        _ => None,
    }
}

/// A ping's `id`: any JSON scalar, kept as the exact JSON text it was sent
/// as (SPEC §9 "Echoes": a 30-digit integer stays 30 digits, `1.50`
/// stays `1.50`), read from the frame as a raw value rather than through
/// a `Value`, whose numbers are `f64`. An object or array is refused, so
/// that an echo costs no more than a scalar's worth of bytes and a client
/// cannot make the server build structures. Of two `id` fields, the last
/// counts (as everywhere else in the message).
fn ping_id(text: &str) -> Result<Option<String>, String> {
    let fields: BTreeMap<String, &RawValue> =
        serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
    match fields.get("id").map(|raw| raw.get()) {
        None => Ok(None),
        Some(id) if id.starts_with(['{', '[']) => {
            Err("id must be a JSON scalar (string, number, boolean or null)".to_owned())
        }
        Some(id) => Ok(Some(id.to_owned())),
    }
}

/// `{"type":"pong","id":..}` answering a `ping`; without an `id` in the
/// ping, none in the pong (`{"type":"pong"}`). `id` is the JSON text kept
/// by [`Inbound::parse`].
pub(crate) fn pong_frame(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{{\"type\":\"pong\",\"id\":{id}}}"),
        None => "{\"type\":\"pong\"}".to_owned(),
    }
}

/// The `code` of an `error` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorCode {
    /// The client sent something that is not a valid inbound message.
    ProtocolViolation,
    /// Not authorized, or no such event: indistinguishable on purpose.
    Forbidden,
    /// The authority did not answer in time.
    AuthzUnavailable,
    /// `LIVE_WS_MAX_SUBSCRIPTIONS` reached.
    TooManySubscriptions,
    /// A bug or resource exhaustion on our side.
    Internal,
}

impl ErrorCode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ProtocolViolation => "protocol-violation",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::AuthzUnavailable => "authz-unavailable",
            ErrorCode::TooManySubscriptions => "too-many-subscriptions",
            ErrorCode::Internal => "internal",
        }
    }
}

/// `{"type":"error",...}`.
pub(crate) fn error_frame(code: ErrorCode, message: &str, event_id: Option<&str>) -> String {
    let mut out = String::with_capacity(64 + message.len());
    out.push_str("{\"type\":\"error\",\"code\":\"");
    out.push_str(code.as_str());
    out.push_str("\",\"message\":");
    push_json_str(&mut out, message);
    if let Some(event) = event_id {
        out.push_str(",\"eventId\":");
        push_json_str(&mut out, event);
    }
    out.push('}');
    out
}

/// `,"trails":{"<deviceId>":[<frame>,..],..}` appended to a `subscribed`
/// answer under construction ([`open_subscribed_frame`]).
#[cfg(test)] // answers are cut from one built message (broadcast/answer.rs); kept as their reference
pub(crate) fn push_trails<'a, F>(out: &mut String, trails: impl Iterator<Item = (&'a str, F)>)
where
    F: Iterator<Item = &'a str>,
{
    out.push_str(",\"trails\":{");
    for (i, (device, frames)) in trails.enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(out, device);
        out.push_str(":[");
        for (j, frame) in frames.enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push_str(frame);
        }
        out.push(']');
    }
    out.push('}');
}

/// `{"type":"subscribed","eventId":..,"positions":[..]` from the already
/// serialised position frames of the snapshot, without its closing brace,
/// so that `trails` can follow (`broadcast/answer.rs`).
pub(crate) fn open_subscribed_frame<'a>(
    event_id: &str,
    positions: impl Iterator<Item = &'a str>,
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"type\":\"subscribed\",\"eventId\":");
    push_json_str(&mut out, event_id);
    out.push_str(",\"positions\":[");
    for (i, p) in positions.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(p);
    }
    out.push(']');
    out
}

/// `{"type":"unsubscribed","eventId":..}`.
pub(crate) fn unsubscribed_frame(event_id: &str) -> String {
    let mut out = String::with_capacity(48 + event_id.len());
    out.push_str("{\"type\":\"unsubscribed\",\"eventId\":");
    push_json_str(&mut out, event_id);
    out.push('}');
    out
}

/// Why a connection ended: its close code, reason text and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    /// The client closed (or went away cleanly).
    ClientClose,
    /// No frame from the peer for more than two ping intervals; dropped
    /// without a close handshake.
    HeartbeatTimeout,
    /// Its queue or queued bytes overflowed: 1008.
    BackPressure,
    /// Too many inbound messages per second: 1008.
    InboundFlood,
    /// An inbound frame over `LIVE_WS_MAX_MESSAGE_BYTES`: 1009.
    MessageTooBig,
    /// An inbound message of more than 16 frames: 1008.
    TooManyFragments,
    /// The WebSocket layer found a protocol error: 1002 (1007 for bad UTF-8).
    ProtocolError,
    /// Invalid UTF-8 in a text frame: 1007.
    InvalidPayload,
    /// Server stopping: 1001 with a `retry-after-ms` hint.
    Shutdown {
        /// When this client should come back.
        retry_after_ms: u64,
    },
    /// The session stopped validating on revalidation (revoked, expired,
    /// logged out): 4401, so that the client logs in again instead of
    /// reconnecting with the same credentials (SPEC §2).
    Revoked,
    /// The socket failed.
    IoError,
    /// Internal failure: 1011.
    Internal,
}

impl CloseReason {
    /// The close code sent to the peer (RFC 6455 §7.4.1).
    pub(crate) fn code(self) -> u16 {
        match self {
            CloseReason::ClientClose => 1000,
            CloseReason::Shutdown { .. } => 1001,
            CloseReason::ProtocolError => 1002,
            CloseReason::InvalidPayload => 1007,
            CloseReason::BackPressure
            | CloseReason::InboundFlood
            | CloseReason::TooManyFragments => 1008,
            CloseReason::MessageTooBig => 1009,
            CloseReason::HeartbeatTimeout | CloseReason::IoError | CloseReason::Internal => 1011,
            // The private-use range (RFC 6455 §7.4.2), after HTTP's 401.
            CloseReason::Revoked => 4401,
        }
    }

    /// The label of `livecast_connections_closed_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            CloseReason::ClientClose => "client-close",
            CloseReason::HeartbeatTimeout => "heartbeat-timeout",
            CloseReason::BackPressure => "back-pressure",
            CloseReason::InboundFlood => "inbound-flood",
            CloseReason::MessageTooBig => "message-too-big",
            CloseReason::TooManyFragments => "too-many-fragments",
            CloseReason::ProtocolError | CloseReason::InvalidPayload => "protocol-error",
            CloseReason::Shutdown { .. } => "shutdown",
            CloseReason::Revoked => "revoked",
            CloseReason::IoError => "io-error",
            CloseReason::Internal => "internal",
        }
    }
}

impl fmt::Display for CloseReason {
    /// The close frame's reason text.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::ClientClose => f.write_str("bye"),
            CloseReason::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            CloseReason::BackPressure => f.write_str("back-pressure threshold exceeded"),
            CloseReason::InboundFlood => f.write_str("inbound message rate exceeded"),
            CloseReason::MessageTooBig => f.write_str("message too big"),
            CloseReason::TooManyFragments => f.write_str("too many fragments in one message"),
            CloseReason::ProtocolError => f.write_str("protocol error"),
            CloseReason::InvalidPayload => f.write_str("invalid UTF-8 in text frame"),
            CloseReason::Shutdown { retry_after_ms } => {
                write!(f, "server shutting down; retry-after-ms={retry_after_ms}")
            }
            CloseReason::Revoked => f.write_str("session no longer valid"),
            CloseReason::IoError => f.write_str("i/o error"),
            CloseReason::Internal => f.write_str("internal error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_inbound() {
        assert_eq!(
            Inbound::parse(r#"{"type":"subscribe","eventId":"e-42","x":1}"#),
            Ok(Inbound::Subscribe { event: "e-42".into(), trail: None })
        );
        assert_eq!(
            Inbound::parse(r#"{"type":"subscribe","eventId":"e","trail":30}"#),
            Ok(Inbound::Subscribe { event: "e".into(), trail: Some(30) })
        );
        assert_eq!(
            Inbound::parse(r#"{"type":"unsubscribe","eventId":"e"}"#),
            Ok(Inbound::Unsubscribe("e".into()))
        );
        for bad in [
            "nope",
            "[]",
            r#"{"eventId":"e"}"#,
            r#"{"type":"ping","id":{"a":1}}"#,
            r#"{"type":"ping","id":[1]}"#,
            r#"{"type":"subscribe"}"#,
            r#"{"type":"subscribe","eventId":""}"#,
            r#"{"type":"subscribe","eventId":7}"#,
            r#"{"type":"subscribe","eventId":"e","trail":-1}"#,
            r#"{"type":"subscribe","eventId":"e","trail":1.5}"#,
            r#"{"type":"subscribe","eventId":"e","trail":"3"}"#,
        ] {
            assert!(Inbound::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_refused_message_names_its_event_when_it_has_one() {
        let long = "x".repeat(200);
        let text = format!(r#"{{"type":"subscribe","eventId":"{long}"}}"#);
        assert_eq!(named_event(&text), Some(long));
        assert_eq!(named_event(r#"{"type":"dance","eventId":""}"#), Some(String::new()));
        for none in ["nope", "[]", r#"{"type":"subscribe","eventId":7}"#, r#"{"type":"x"}"#] {
            assert_eq!(named_event(none), None, "{none}");
        }
    }

    #[test]
    fn pings_keep_their_id_and_pongs_echo_it() {
        for (ping, pong) in [
            (r#"{"type":"ping"}"#, json!({"type": "pong"})),
            (r#"{"type":"ping","id":7}"#, json!({"type": "pong", "id": 7})),
            (r#"{"type":"ping","id":-1.5e3}"#, json!({"type": "pong", "id": -1500.0})),
            (r#"{"type":"ping","id":"a\"b\u00e9"}"#, json!({"type": "pong", "id": "a\"b\u{e9}"})),
            (r#"{"type":"ping","id":true,"x":[1]}"#, json!({"type": "pong", "id": true})),
            (r#"{"type":"ping","id":null}"#, json!({"type": "pong", "id": null})),
            (r#"{"type":"ping","id":1,"id":2}"#, json!({"type": "pong", "id": 2})),
        ] {
            let Ok(Inbound::Ping(id)) = Inbound::parse(ping) else {
                panic!("{ping} is a ping");
            };
            let frame: Value = serde_json::from_str(&pong_frame(id.as_deref())).unwrap();
            assert_eq!(frame, pong, "{ping}");
        }
    }

    #[test]
    fn ping_ids_come_back_as_the_same_json_text() {
        for id in ["123456789012345678901234567890", "1.50", "-0", "1E+2", r#""\ud83d\ude00""#] {
            let ping = format!(r#"{{"type":"ping", "id": {id} }}"#);
            let Ok(Inbound::Ping(Some(got))) = Inbound::parse(&ping) else {
                panic!("{ping} is a ping with an id");
            };
            assert_eq!(got, id);
            assert_eq!(pong_frame(Some(&got)), format!(r#"{{"type":"pong","id":{id}}}"#));
        }
    }

    #[test]
    fn outbound_frames_are_valid_json() {
        let mut s = open_subscribed_frame("e\"1", [r#"{"a":1}"#, r#"{"b":2}"#].into_iter());
        s.push('}');
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["eventId"], "e\"1");
        assert_eq!(v["positions"].as_array().unwrap().len(), 2);
        assert!(v.get("trails").is_none());
        let mut s = open_subscribed_frame("e", [r#"{"c":3}"#].into_iter());
        let frames = [r#"{"a":1}"#, r#"{"b":2}"#];
        let trails = [("d\"1", frames.to_vec()), ("d2", Vec::new())];
        push_trails(&mut s, trails.iter().map(|(d, f)| (*d, f.iter().copied())));
        s.push('}');
        let v: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["trails"]["d\"1"], serde_json::json!([{"a":1},{"b":2}]));
        assert_eq!(v["trails"]["d2"], serde_json::json!([]));
        let e: Value =
            serde_json::from_str(&error_frame(ErrorCode::Forbidden, "no", Some("e"))).unwrap();
        assert_eq!(e["code"], "forbidden");
        let u: Value = serde_json::from_str(&unsubscribed_frame("e")).unwrap();
        assert_eq!(u["type"], "unsubscribed");
        assert_eq!(
            CloseReason::Shutdown { retry_after_ms: 5 }.to_string(),
            "server shutting down; retry-after-ms=5"
        );
        assert_eq!(CloseReason::Revoked.code(), 4401);
        assert_eq!(CloseReason::Revoked.label(), "revoked");
    }
}
