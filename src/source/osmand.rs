//! The OsmAnd protocol (SPEC §10): `GET`/`POST /ingest/osmand`, as sent by
//! Traccar Client, OsmAnd, GPSLogger and units set up for Traccar's OsmAnd
//! port.
//!
//! Two forms, parsed on the `http-N` worker thread that received them:
//! - parameters (a query string, or an `application/x-www-form-urlencoded`
//!   body): one position per request, [`from_params`];
//! - a JSON body (Traccar Client 9 and later, its background-geolocation
//!   SDK's `{"location": {...} | [...], "device_id": "..."}`):
//!   [`from_json`], read into typed structs, so that no `Value` is built for
//!   the fields the mapping drops.
//!
//! The field mapping follows Traccar's own decoder (`OsmAndProtocolDecoder`),
//! whose test requests are the forms the tests replay.

use std::cell::Cell;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value};

use crate::position::Position;
use crate::source::tracker::{
    self, Batch, Context, Fields, Refused, is_reserved, knots_to_mps, param_value, parse_f64,
};

/// One position from the parameters of a request, in order (the URL's
/// query, then a form body's; a later parameter of the same name wins).
///
/// `id` or `deviceid` → `deviceId`; `lat`, `lon` or `location=<lat>,<lon>`;
/// `timestamp` (see [`tracker::timestamp`]); `speed` knots → m/s;
/// `bearing`/`heading` → `heading`; `altitude`, `accuracy`, `hdop` as they
/// are; `batt` → `battery`; `valid=false|0` → `"valid":false`; `event`
/// (when the URL has none) → `eventId`; `token` dropped; anything else kept
/// as a typed field.
///
/// # Errors
/// [`Refused::Invalid`] without an id or coordinates, or when a mapped
/// number is not one, or when §4 refuses the result;
/// [`Refused::TooLarge`] past `LIVE_MAX_POSITION_BYTES`.
pub(crate) fn from_params(
    params: impl IntoIterator<Item = (String, String)>,
    ctx: &Context,
) -> Result<Position, Refused> {
    let mut fields = Fields::new();
    // The protocol's fields, set after the others so that they win.
    let mut device: Option<String> = None;
    let (mut lat, mut lon) = (None, None);
    let mut mapped: Vec<(&'static str, Value)> = Vec::new();
    let mut event = None;
    for (name, value) in params {
        match name.as_str() {
            "id" | "deviceid" => device = Some(value),
            "lat" => lat = Some(number("lat", &value)?),
            "lon" => lon = Some(number("lon", &value)?),
            "location" => {
                let (la, lo) = value
                    .split_once(',')
                    .ok_or_else(|| Refused::Invalid("location must be <lat>,<lon>".to_owned()))?;
                lat = Some(number("lat", la)?);
                lon = Some(number("lon", lo)?);
            }
            "timestamp" if !value.is_empty() => mapped.push(("ts", tracker::timestamp(&value))),
            "speed" => push_number(&mut mapped, "speed", &value, knots_to_mps)?,
            "bearing" | "heading" => push_number(&mut mapped, "heading", &value, |x| x)?,
            "altitude" => push_number(&mut mapped, "altitude", &value, |x| x)?,
            "accuracy" => push_number(&mut mapped, "accuracy", &value, |x| x)?,
            "hdop" => push_number(&mut mapped, "hdop", &value, |x| x)?,
            "batt" => push_number(&mut mapped, "battery", &value, |x| x)?,
            "valid" if value == "false" || value == "0" => {
                mapped.push(("valid", Value::Bool(false)));
            }
            "valid" | "token" | "timestamp" => {}
            "event" => event = Some(value),
            other if is_reserved(other) => {}
            _ => fields.set(&name, param_value(&value)),
        }
    }
    let device =
        device.ok_or_else(|| Refused::Invalid("id (or deviceid) is required".to_owned()))?;
    let (Some(lat), Some(lon)) = (lat, lon) else {
        return Err(Refused::Invalid(
            "lat and lon (or location=<lat>,<lon>) are required: a cell or Wi-Fi report is \
             not a position"
                .to_owned(),
        ));
    };
    fields.set("deviceId", Value::String(device));
    fields.set("lat", lat);
    fields.set("lon", lon);
    for (name, value) in mapped {
        fields.set(name, value);
    }
    if ctx.event.is_none()
        && let Some(event) = event
    {
        let ctx = Context { event: Some(event), ..ctx.clone() };
        return fields.finish(&ctx);
    }
    fields.finish(ctx)
}

/// A parameter that must be a number, as one.
fn number(name: &str, text: &str) -> Result<Value, Refused> {
    parse_f64(text)
        .and_then(Number::from_f64)
        .map(Value::Number)
        .ok_or_else(|| Refused::Invalid(format!("{name} must be a number")))
}

/// Maps a numeric parameter through `convert`; an empty value (an app's
/// "unknown") is left out.
fn push_number(
    mapped: &mut Vec<(&'static str, Value)>,
    name: &'static str,
    text: &str,
    convert: impl Fn(f64) -> f64,
) -> Result<(), Refused> {
    if text.is_empty() {
        return Ok(());
    }
    let x = parse_f64(text).ok_or_else(|| Refused::Invalid(format!("{name} must be a number")))?;
    if let Some(n) = Number::from_f64(convert(x)) {
        mapped.push((name, Value::Number(n)));
    }
    Ok(())
}

/// The positions of a JSON body: `{"location": {...} | [{...}, ...],
/// "device_id": "..."}`. Each location is a position on its own: an invalid
/// one is counted in the batch and never stops the others.
///
/// Per location: `timestamp` (ISO 8601) → `ts`; `coords.latitude` /
/// `longitude` → `lat` / `lon`; `coords.speed` (m/s), `heading`,
/// `altitude`, `accuracy` as they are, each left out when negative (the
/// SDK's "unknown"); `battery.level` (0..1) → `battery` in percent, left
/// out when negative; `is_moving` → `moving`; `odometer`; `activity.type`
/// → `activity`. The rest is dropped.
///
/// # Errors
/// [`Refused::Malformed`] for a body that is not such JSON or has no
/// `device_id`; [`Refused::TooMany`] for more than `max_items` locations.
pub(crate) fn from_json(body: &[u8], ctx: &Context) -> Result<Batch, Refused> {
    let text = tracker::utf8(body)?;
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_str(text);
    let walked = de
        .deserialize_map(BodyVisitor { max_items: ctx.max_items, too_many: &too_many })
        .and_then(|parsed| de.end().map(|()| parsed));
    let (locations, device) = match walked {
        Ok(parsed) => parsed,
        Err(_) if too_many.get() => return Err(Refused::TooMany { max: ctx.max_items }),
        Err(e) => return Err(Refused::Malformed(format!("invalid OsmAnd JSON body: {e}"))),
    };
    let device = device.ok_or_else(|| Refused::Malformed("device_id is required".to_owned()))?;
    let locations =
        locations.ok_or_else(|| Refused::Malformed("location is required".to_owned()))?;
    let mut batch = Batch::default();
    for location in locations {
        batch.push(location.into_position(&device, ctx));
    }
    Ok(batch)
}

/// Walks a Traccar Client 9 body: `location` (one object or an array of
/// them, a client's buffered reports) and `device_id`; other keys are
/// skipped unread. An array is refused at its item past `max_items`,
/// before the rest is read.
struct BodyVisitor<'a> {
    max_items: usize,
    /// Set when the walk stopped past `max_items`.
    too_many: &'a Cell<bool>,
}

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = (Option<Vec<Location>>, Option<String>);

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with location and device_id")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut locations, mut device) = (None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                // Twice the same key is refused, as serde's derived
                // structs do: which one counts would be a guess.
                Key::Location if locations.is_some() => {
                    return Err(de::Error::duplicate_field("location"));
                }
                Key::DeviceId if device.is_some() => {
                    return Err(de::Error::duplicate_field("device_id"));
                }
                Key::Location => {
                    locations = Some(map.next_value_seed(LocationsSeed {
                        max_items: self.max_items,
                        too_many: self.too_many,
                    })?);
                }
                Key::DeviceId => device = Some(map.next_value::<DeviceId>()?.0),
                Key::Other => {
                    map.next_value::<de::IgnoredAny>()?;
                }
            }
        }
        Ok((locations, device))
    }
}

/// The keys of a body that matter.
#[derive(Debug, Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Key {
    Location,
    DeviceId,
    #[serde(other)]
    Other,
}

/// `device_id`: a string, or a number some units send.
#[derive(Debug)]
struct DeviceId(String);

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<DeviceId, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DeviceId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a device id (string or integer)")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<DeviceId, E> {
                Ok(DeviceId(s.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, n: u64) -> Result<DeviceId, E> {
                Ok(DeviceId(n.to_string()))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<DeviceId, E> {
                Ok(DeviceId(n.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// `location`: one object or an array of at most `max_items`.
struct LocationsSeed<'a> {
    max_items: usize,
    too_many: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for LocationsSeed<'_> {
    type Value = Vec<Location>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Vec<Location>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LocationsSeed<'_> {
    type Value = Vec<Location>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a location object or an array of them")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<Location>, A::Error> {
        Location::deserialize(de::value::MapAccessDeserializer::new(map)).map(|l| vec![l])
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Location>, A::Error> {
        let mut all = Vec::new();
        while let Some(l) = seq.next_element::<Location>()? {
            if all.len() >= self.max_items {
                self.too_many.set(true);
                return Err(de::Error::custom("too many locations"));
            }
            all.push(l);
        }
        Ok(all)
    }
}

/// One location of the SDK; unknown fields are skipped unread.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Location {
    timestamp: Option<String>,
    coords: Option<Coords>,
    is_moving: Option<bool>,
    odometer: Option<Number>,
    activity: Option<Activity>,
    battery: Option<Battery>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Coords {
    latitude: Option<f64>,
    longitude: Option<f64>,
    speed: Option<f64>,
    heading: Option<f64>,
    altitude: Option<f64>,
    accuracy: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Activity {
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Battery {
    level: Option<f64>,
}

impl Location {
    fn into_position(self, device: &str, ctx: &Context) -> Result<Position, Refused> {
        let coords = self.coords.unwrap_or_default();
        let (Some(lat), Some(lon)) = (coords.latitude, coords.longitude) else {
            return Err(Refused::Invalid(
                "location.coords.latitude and longitude are required".to_owned(),
            ));
        };
        let mut fields = Fields::new();
        fields.set("deviceId", Value::String(device.to_owned()));
        fields.set_f64("lat", lat);
        fields.set_f64("lon", lon);
        if let Some(ts) = self.timestamp {
            fields.set("ts", tracker::timestamp(&ts));
        }
        for (name, value) in [
            ("speed", coords.speed),
            ("heading", coords.heading),
            ("altitude", coords.altitude),
            ("accuracy", coords.accuracy),
        ] {
            if let Some(x) = value.filter(|x| *x >= 0.0) {
                fields.set_f64(name, x);
            }
        }
        if let Some(level) = self.battery.and_then(|b| b.level).filter(|l| *l >= 0.0) {
            fields.set_f64("battery", (level * 100.0).round());
        }
        if let Some(moving) = self.is_moving {
            fields.set("moving", Value::Bool(moving));
        }
        if let Some(odometer) = self.odometer {
            fields.set("odometer", Value::Number(odometer));
        }
        if let Some(kind) = self.activity.and_then(|a| a.kind) {
            fields.set("activity", Value::String(kind));
        }
        if !fields.has("lat") || !fields.has("lon") {
            return Err(Refused::Invalid("coordinates must be finite numbers".to_owned()));
        }
        fields.finish(ctx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> Context {
        Context { event: None, now_ms: 1_000, max_position_bytes: 16_384, max_items: 100 }
    }

    fn query(q: &str) -> Result<Position, Refused> {
        from_params(tracker::form_pairs(q.as_bytes()), &ctx())
    }

    fn json_of(p: &Position) -> Value {
        serde_json::from_str(&p.to_json()).unwrap()
    }

    #[test]
    fn traccar_query_forms() {
        let p = query(
            "id=902064&lat=42.06288&lon=-88.23412&timestamp=2016-01-27T18%3A55%3A47Z&hdop=6.0\
             &altitude=224.0&speed=10.0",
        )
        .unwrap();
        assert_eq!(
            json_of(&p),
            json!({"deviceId":"902064","lat":42.06288,"lon":-88.23412,"ts":1_453_920_947_000_i64,
                "hdop":6.0,"altitude":224.0,"speed":5.144})
        );
        let p =
            query("lat=60.0&lon=30.0&speed=0.0&heading=90&vacc=0&hacc=0&deviceid=123456").unwrap();
        assert_eq!(p.device_id, "123456");
        assert_eq!(p.ts_ms, 1_000);
        let v = json_of(&p);
        assert_eq!((v["heading"].clone(), v["vacc"].clone()), (json!(90.0), json!(0)));
        let p = query("id=123456&timestamp=1377177267&location=60.0,30.0").unwrap();
        assert_eq!((json_of(&p)["lat"].clone(), p.ts_ms), (json!(60.0), 1_377_177_267_000));
        let p = query(
            "id=123456789012345&timestamp=1504763810&lat=40.7232948571&lon=-74.0061408571\
             &bearing=7.19889788244&speed=40&ignition=true&rpm=933&fuel=24&batt=87&valid=0\
             &token=secret&driverUniqueId=abc",
        )
        .unwrap();
        let v = json_of(&p);
        assert_eq!(v["ignition"], json!(true));
        assert_eq!(v["rpm"], json!(933));
        assert_eq!(v["battery"], json!(87.0));
        assert_eq!(v["valid"], json!(false));
        assert_eq!(v["driverUniqueId"], json!("abc"));
        assert_eq!(v.get("token"), None);
        assert_eq!(v.get("batt"), None);
    }

    #[test]
    fn refusals() {
        let invalid = |q: &str| matches!(query(q), Err(Refused::Invalid(_)));
        // Traccar's own cell-only report, and one without an id.
        assert!(invalid("id=123456&timestamp=1377177267&cell=257,02,16,2224"));
        assert!(invalid("timestamp=1377177267&lat=60.0&lon=30.0"));
        assert!(invalid("id=a&lat=91&lon=0"));
        assert!(invalid("id=a&lat=x&lon=0"));
        assert!(invalid("id=a&location=1"));
        assert!(invalid("id=a&lat=1&lon=2&speed=fast"));
        assert!(invalid("id=a&lat=1&lon=2&timestamp=yesterday"));
        assert!(invalid(&format!("id={}&lat=1&lon=2", "x".repeat(129))));
        // Reserved names cannot be smuggled in as extra fields.
        let p = query("id=a&lat=1&lon=2&eventId=x&ts=5&deviceId=z&type=q").unwrap();
        assert_eq!((p.event_id, p.device_id, p.ts_ms), (None, "a".to_owned(), 1_000));
    }

    #[test]
    fn event_from_the_url_wins_over_a_parameter() {
        let p = query("id=a&lat=1&lon=2&event=from-form").unwrap();
        assert_eq!(p.event_id.as_deref(), Some("from-form"));
        let ctx = Context { event: Some("from-url".to_owned()), ..ctx() };
        let p =
            from_params(tracker::form_pairs(b"id=a&lat=1&lon=2&event=from-form"), &ctx).unwrap();
        assert_eq!(p.event_id.as_deref(), Some("from-url"));
    }

    #[test]
    fn traccar_json_bodies() {
        // From Traccar's decoder test: heading -1 and battery level 1.
        let body = br#"{"location":{"timestamp":"2025-06-15T13:45:12.862Z","coords":{"latitude":37.4219983,"longitude":-122.084,"accuracy":5,"speed":0,"heading":-1,"altitude":5},"is_moving":false,"odometer":0,"event":"motionchange","battery":{"level":1,"is_charging":false},"activity":{"type":"still"},"extras":{},"_":"&id=48241179&lat=37.4219983&lon=-122.084&timestamp=2025-06-15T13:45:12.862Z&"},"device_id":"48241179"}"#;
        let batch = from_json(body, &ctx()).unwrap();
        assert_eq!(batch.positions.len(), 1);
        assert_eq!(
            json_of(&batch.positions[0]),
            json!({"deviceId":"48241179","lat":37.4219983,"lon":-122.084,
                "ts":1_749_995_112_862_i64,"speed":0.0,"altitude":5.0,"accuracy":5.0,
                "battery":100.0,"moving":false,"odometer":0,"activity":"still"})
        );
        // Every "unknown" negative, "floor": null.
        let body = br#"{"location":{"extras":{},"mock":true,"coords":{"speed_accuracy":-1,"speed":-1,"longitude":-122.406417,"ellipsoidal_altitude":0,"floor":null,"heading_accuracy":-1,"latitude":37.785834000000001,"accuracy":5,"altitude_accuracy":-1,"altitude":0,"heading":-1},"is_moving":false,"age":188,"odometer":0,"uuid":"2FB04C65","event":"motionchange","battery":{"level":-1,"is_charging":false},"activity":{"type":"unknown","confidence":100},"timestamp":"2025-05-09T04:11:30.579Z"},"device_id":"658765"}"#;
        let v = json_of(&from_json(body, &ctx()).unwrap().positions[0]);
        assert_eq!((v.get("speed"), v.get("heading"), v.get("battery")), (None, None, None));
        let body = br#"{"location":[{"timestamp":"2021-07-21T08:06:34.444Z","coords":{"latitude":-6.1148096,"longitude":106.6837015,"speed":18.67,"heading":63},"battery":{"level":0.29}},{"coords":{"latitude":91,"longitude":0}},{"coords":{"latitude":1,"longitude":1}}],"device_id":8737767034}"#;
        let batch = from_json(body, &ctx()).unwrap();
        assert_eq!((batch.positions.len(), batch.rejected), (2, 1));
        let v = json_of(&batch.positions[0]);
        assert_eq!((v["speed"].clone(), v["battery"].clone()), (json!(18.67), json!(29.0)));
        assert_eq!(batch.positions[1].ts_ms, 1_000);
        assert_eq!(batch.positions[1].device_id, "8737767034");
    }

    #[test]
    fn json_refusals() {
        let malformed = |b: &[u8]| matches!(from_json(b, &ctx()), Err(Refused::Malformed(_)));
        assert!(malformed(b"id=1&lat=2"));
        assert!(malformed(b"[]"));
        assert!(malformed(br#"{"location":{"coords":{"latitude":1,"longitude":1}}}"#));
        assert!(malformed(br#"{"device_id":"a"}"#));
        assert!(malformed(br#"{"device_id":"a","location":5}"#));
        // Found by the fuzzer: bytes that are not UTF-8 in a skipped key.
        assert!(malformed(b"{\"device_id\":\"a\",\"location\":{\"x\x9d\":1}}"));
        assert!(malformed(br#"{"device_id":"a","device_id":"b","location":{}}"#));
        assert!(malformed(br#"{"device_id":"a","location":[],"location":{}}"#));
        assert!(malformed(br#"{"device_id":"a","location":{"coords":{"latitude":"1"}}}"#));
        let batch = from_json(br#"{"device_id":"a","location":{"coords":{}}}"#, &ctx()).unwrap();
        assert_eq!(batch.rejected, 1);
        assert!(matches!(batch.first_refusal, Some(Refused::Invalid(_))));
        let ctx = Context { max_items: 2, ..ctx() };
        let three = br#"{"device_id":"a","location":[{},{},{}]}"#;
        assert_eq!(from_json(three, &ctx).unwrap_err(), Refused::TooMany { max: 2 });
    }
}
