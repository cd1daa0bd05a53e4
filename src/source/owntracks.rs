//! The OwnTracks protocol in HTTP mode (SPEC §10): `POST /ingest/owntracks`
//! with one JSON message per request, parsed on the `http-N` worker thread
//! that received it.
//!
//! Only `_type: "location"` is a position; every other message (`lwt`,
//! `transition`, `waypoint`, `status`, `encrypted`, …) and an empty body
//! are answered like a location and ignored. The app expects a JSON array
//! back (messages for it, e.g. friends' locations): livecast has none, so
//! the answer is always `[]`.

use serde::Deserialize;
use serde_json::{Number, Value};

use crate::position::Position;
use crate::source::tracker::{self, Context, Fields, Refused, kmh_to_mps};

/// What one request carried.
#[derive(Debug)]
pub(crate) enum Message {
    /// A `location`: one position.
    Location(Position),
    /// Anything else, by its `_type` (a bounded set of label values, for
    /// `livecast_tracker_messages_ignored_total{type}`): `empty` for an
    /// empty body, `none` without `_type`, `other` for a type OwnTracks
    /// does not document.
    Ignored(&'static str),
}

/// Who sent the request, from its headers or URL: `X-Limit-U` and
/// `X-Limit-D` (or `?u=` and `?d=`).
#[derive(Debug, Default, Clone)]
pub(crate) struct Sender {
    pub(crate) user: Option<String>,
    pub(crate) device: Option<String>,
}

/// The message types OwnTracks documents, as label values.
const KNOWN_TYPES: &[&str] = &[
    "beacon",
    "card",
    "cmd",
    "configuration",
    "dump",
    "encrypted",
    "location",
    "lwt",
    "request",
    "status",
    "steps",
    "transition",
    "waypoint",
    "waypoints",
];

/// Parses one OwnTracks message.
///
/// A `location` becomes a position: `deviceId` `<user>/<device>` from
/// `sender`, else `topic`, else `tid`; `lat`, `lon`; `tst` (Unix seconds)
/// → `ts`, the time of receipt without it; `vel` km/h → `speed` m/s; `cog`
/// → `heading`; `alt` → `altitude`; `acc` → `accuracy`; `batt` →
/// `battery`; `tid` kept. Its other fields are dropped.
///
/// # Errors
/// [`Refused::Malformed`] for a body that is not a JSON object, or a
/// location field of the wrong type; [`Refused::Invalid`] for a location
/// without an id or valid coordinates; [`Refused::TooLarge`] past
/// `LIVE_MAX_POSITION_BYTES`.
pub(crate) fn parse(body: &[u8], sender: &Sender, ctx: &Context) -> Result<Message, Refused> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Message::Ignored("empty"));
    }
    let text = tracker::utf8(body)?;
    // A message is an object (serde would also read a struct from an
    // array).
    if text.trim_start().as_bytes().first() != Some(&b'{') {
        return Err(Refused::Malformed("an OwnTracks message is a JSON object".to_owned()));
    }
    // The type first: other messages' fields are not ours to type-check.
    let head: Head = serde_json::from_str(text)
        .map_err(|e| Refused::Malformed(format!("invalid OwnTracks message: {e}")))?;
    match head.kind.as_deref() {
        Some("location") => {}
        None => return Ok(Message::Ignored("none")),
        Some(kind) => {
            let label = KNOWN_TYPES.iter().find(|k| **k == kind).copied().unwrap_or("other");
            return Ok(Message::Ignored(label));
        }
    }
    let location: Location = serde_json::from_str(text)
        .map_err(|e| Refused::Malformed(format!("invalid OwnTracks location: {e}")))?;
    location.into_position(sender, ctx).map(Message::Location)
}

/// The `_type` of a message; every other key is skipped unread.
#[derive(Debug, Deserialize)]
struct Head {
    #[serde(rename = "_type")]
    kind: Option<String>,
}

/// The fields of a `location` that livecast maps.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Location {
    lat: Option<f64>,
    lon: Option<f64>,
    tst: Option<f64>,
    vel: Option<f64>,
    cog: Option<f64>,
    alt: Option<f64>,
    acc: Option<f64>,
    batt: Option<Number>,
    tid: Option<String>,
    topic: Option<String>,
}

impl Location {
    fn into_position(self, sender: &Sender, ctx: &Context) -> Result<Position, Refused> {
        let device = match (&sender.user, &sender.device) {
            (Some(user), Some(device)) => format!("{user}/{device}"),
            _ => self.topic.clone().or_else(|| self.tid.clone()).ok_or_else(|| {
                Refused::Invalid(
                    "no device id: send X-Limit-U and X-Limit-D (or ?u=&d=), topic or tid"
                        .to_owned(),
                )
            })?,
        };
        let (Some(lat), Some(lon)) = (self.lat, self.lon) else {
            return Err(Refused::Invalid("a location needs lat and lon".to_owned()));
        };
        let mut fields = Fields::new();
        fields.set("deviceId", Value::String(device));
        fields.set_f64("lat", lat);
        fields.set_f64("lon", lon);
        if let Some(tst) = self.tst {
            fields.set_f64("ts", tst * 1000.0);
        }
        if let Some(vel) = self.vel {
            fields.set_f64("speed", kmh_to_mps(vel));
        }
        for (name, value) in [("heading", self.cog), ("altitude", self.alt), ("accuracy", self.acc)]
        {
            if let Some(x) = value {
                fields.set_f64(name, x);
            }
        }
        if let Some(batt) = self.batt {
            fields.set("battery", Value::Number(batt));
        }
        if let Some(tid) = self.tid {
            fields.set("tid", Value::String(tid));
        }
        fields.finish(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context {
        Context { event: None, now_ms: 5_000, max_position_bytes: 16_384, max_items: 100 }
    }

    /// The label of an ignored message, `None` for anything else.
    fn ignored(body: &[u8]) -> Option<&'static str> {
        let ctx = Context { event: None, now_ms: 0, max_position_bytes: 16_384, max_items: 1 };
        match parse(body, &Sender::default(), &ctx) {
            Ok(Message::Ignored(kind)) => Some(kind),
            _ => None,
        }
    }

    fn location(body: &Value, sender: &Sender) -> Result<Value, Refused> {
        match parse(body.to_string().as_bytes(), sender, &ctx())? {
            Message::Location(p) => Ok(serde_json::from_str(&p.to_json()).unwrap()),
            Message::Ignored(kind) => panic!("ignored as {kind}"),
        }
    }

    #[test]
    fn a_location_maps_every_field() {
        // The documented example of a location message.
        let body = json!({"_type":"location","acc":13,"alt":54,"batt":83,"bs":1,"conn":"w",
            "cog":271,"lat":48.85833,"lon":2.29513,"tid":"jj","tst":1701357000,"vel":36,
            "topic":"owntracks/jane/phone","inregions":["home"],"t":"u","vac":3});
        let sender = Sender { user: Some("jane".to_owned()), device: Some("phone".to_owned()) };
        assert_eq!(
            location(&body, &sender).unwrap(),
            json!({"deviceId":"jane/phone","lat":48.85833,"lon":2.29513,
                "ts":1_701_357_000_000_i64,"speed":10.0,"heading":271.0,"altitude":54.0,
                "accuracy":13.0,"battery":83,"tid":"jj"})
        );
        // Without the sender: topic, then tid; without tst: receipt time.
        let v = location(&body, &Sender::default()).unwrap();
        assert_eq!(v["deviceId"], "owntracks/jane/phone");
        let half = Sender { user: Some("jane".to_owned()), device: None };
        assert_eq!(location(&body, &half).unwrap()["deviceId"], "owntracks/jane/phone");
        let v = location(&json!({"_type":"location","lat":1,"lon":2,"tid":"jj"}), &half).unwrap();
        assert_eq!((v["deviceId"].clone(), v["ts"].clone()), (json!("jj"), json!(5_000)));
    }

    #[test]
    fn refusals() {
        let none = Sender::default();
        let invalid =
            |v: Value| matches!(location(&v, &Sender::default()), Err(Refused::Invalid(_)));
        assert!(invalid(json!({"_type":"location","lat":1,"lon":2})));
        assert!(invalid(json!({"_type":"location","tid":"a","lat":1})));
        assert!(invalid(json!({"_type":"location","tid":"a","lat":91,"lon":2})));
        assert!(matches!(
            location(&json!({"_type":"location","tid":"a","lat":"1","lon":2}), &none),
            Err(Refused::Malformed(_))
        ));
        assert!(matches!(parse(b"{nope", &none, &ctx()), Err(Refused::Malformed(_))));
        assert!(matches!(parse(b"[]", &none, &ctx()), Err(Refused::Malformed(_))));
        assert!(matches!(parse(b"42", &none, &ctx()), Err(Refused::Malformed(_))));
    }

    #[test]
    fn other_messages_are_ignored_with_a_bounded_label() {
        assert_eq!(ignored(b""), Some("empty"));
        assert_eq!(ignored(b" \r\n"), Some("empty"));
        assert_eq!(ignored(br#"{"_type":"lwt","tst":1}"#), Some("lwt"));
        // Other types' fields are never type-checked as a location's.
        assert_eq!(ignored(br#"{"_type":"waypoint","lat":"x","tst":"y"}"#), Some("waypoint"));
        assert_eq!(ignored(br#"{"_type":"encrypted","data":"abc"}"#), Some("encrypted"));
        assert_eq!(ignored(br#"{"_type":"transition","event":"enter"}"#), Some("transition"));
        assert_eq!(ignored(br#"{"_type":"status"}"#), Some("status"));
        assert_eq!(ignored(br#"{"_type":"a-new-one-every-request"}"#), Some("other"));
        assert_eq!(ignored(br#"{"lat":1}"#), Some("none"));
        // Found by the fuzzer: bytes that are not UTF-8 in a skipped field.
        assert_eq!(ignored(b"{\"_type\":\"lwt\",\"x\":\"\xa1\"}"), None);
    }
}
