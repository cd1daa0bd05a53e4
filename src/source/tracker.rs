//! What the tracker protocols share (SPEC §10): turning a tracker's report
//! into a §4 [`Position`], the refusals and their statuses, timestamps,
//! URL-encoded parameters, and the credentials a phone app can send.
//!
//! Runs on the `http-N` worker thread that received the request. A tracker
//! position is built as the JSON object a producer would have posted to
//! `POST /ingest` and validated by [`Position::from_value`], then held to
//! `LIVE_MAX_POSITION_BYTES` exactly as [`Position::from_source`] does, so
//! it obeys the very rules an ingest position does (ids, coordinates, `ts`,
//! size): only the field names and units are the protocol's.

use std::fmt;

use serde_json::{Map, Number, Value};

use crate::position::Position;

/// Seconds below this are Unix seconds, above it milliseconds (2^31: the
/// rule of Traccar's OsmAnd decoder, SPEC §10).
const SECONDS_BOUND: i64 = 1 << 31;

/// What one request of a tracker protocol is held to.
#[derive(Debug, Clone)]
pub(crate) struct Context {
    /// `?event=` of the URL: the `eventId` of every position of the
    /// request; `None` lets the device→event map decide.
    pub(crate) event: Option<String>,
    /// The time of receipt, for reports without a timestamp (ms).
    pub(crate) now_ms: i64,
    /// `LIVE_MAX_POSITION_BYTES`.
    pub(crate) max_position_bytes: usize,
    /// `INGEST_MAX_ITEMS`: most positions in one request.
    pub(crate) max_items: usize,
}

/// Why a request, or one report of it, was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The body is not what the protocol sends (not JSON, wrong shape):
    /// `400`, no position counted.
    Malformed(String),
    /// A report that is not a valid position (no id, no coordinates, a
    /// field out of range): `400`, counted rejected.
    Invalid(String),
    /// A position whose JSON is over `LIVE_MAX_POSITION_BYTES`: `413`,
    /// counted rejected.
    TooLarge(String),
    /// More reports in one body than `INGEST_MAX_ITEMS`: `413`.
    TooMany {
        /// The bound that was passed.
        max: usize,
    },
}

impl Refused {
    /// The HTTP status of the refusal.
    pub(crate) fn status(&self) -> u16 {
        match self {
            Refused::Malformed(_) | Refused::Invalid(_) => 400,
            Refused::TooLarge(_) | Refused::TooMany { .. } => 413,
        }
    }

    /// Whether the refusal is of a position (counted in
    /// `livecast_positions_rejected_total`) rather than of the body.
    pub(crate) fn is_position(&self) -> bool {
        matches!(self, Refused::Invalid(_) | Refused::TooLarge(_))
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Malformed(why) | Refused::Invalid(why) | Refused::TooLarge(why) => {
                f.write_str(why)
            }
            Refused::TooMany { max } => {
                write!(f, "more than {max} positions in one body (INGEST_MAX_ITEMS)")
            }
        }
    }
}

/// The positions of a request that may carry several (a JSON array of
/// locations): the valid ones, and how many were refused.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) positions: Vec<Position>,
    /// Reports refused as positions.
    pub(crate) rejected: usize,
    /// The first of them, which answers the request when none was valid.
    pub(crate) first_refusal: Option<Refused>,
}

impl Batch {
    /// Adds one report's outcome.
    pub(crate) fn push(&mut self, outcome: Result<Position, Refused>) {
        match outcome {
            Ok(position) => self.positions.push(position),
            Err(refused) => {
                self.rejected += 1;
                self.first_refusal.get_or_insert(refused);
            }
        }
    }
}

/// A position being built in §4's field names, from a tracker's fields.
///
/// Fields are set in the order the protocol maps them; a later field of the
/// same name replaces an earlier one.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    /// An empty position.
    pub(crate) fn new() -> Fields {
        Fields::default()
    }

    /// Sets `name` to `value`.
    pub(crate) fn set(&mut self, name: &str, value: Value) {
        self.map.insert(name.to_owned(), value);
    }

    /// Sets `name` to the number `value`, unless it is not finite.
    pub(crate) fn set_f64(&mut self, name: &str, value: f64) {
        if let Some(n) = Number::from_f64(value) {
            self.map.insert(name.to_owned(), Value::Number(n));
        }
    }

    /// Whether `name` is set.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// Validates the fields as a §4 position with `eventId` from `ctx`,
    /// `ts` the time of receipt when the report had none.
    ///
    /// # Errors
    /// [`Refused::Invalid`] naming the first bad field (§4's own text),
    /// [`Refused::TooLarge`] past `LIVE_MAX_POSITION_BYTES`.
    pub(crate) fn finish(mut self, ctx: &Context) -> Result<Position, Refused> {
        if let Some(event) = &ctx.event {
            self.map.insert("eventId".to_owned(), Value::String(event.clone()));
        }
        if !self.map.contains_key("ts") {
            self.map.insert("ts".to_owned(), Value::from(ctx.now_ms));
        }
        let position =
            Position::from_value(Value::Object(self.map)).map_err(|e| Refused::Invalid(e.0))?;
        // The bound of `Position::from_source`, told apart as a 413.
        let len = position.json_len();
        if len > ctx.max_position_bytes {
            return Err(Refused::TooLarge(format!(
                "position is {len} bytes of JSON, more than the {} allowed",
                ctx.max_position_bytes
            )));
        }
        Ok(position)
    }
}

/// Field names a tracker's own parameters may not set: §4's head, which the
/// protocol mapping and `?event=` decide.
pub(crate) fn is_reserved(name: &str) -> bool {
    matches!(name, "deviceId" | "eventId" | "lat" | "lon" | "ts" | "type")
}

/// Knots to metres per second (1 kn = 1852 m/h), to the millimetre.
pub(crate) fn knots_to_mps(knots: f64) -> f64 {
    round3(knots * 1852.0 / 3600.0)
}

/// Kilometres per hour to metres per second, to the millimetre.
pub(crate) fn kmh_to_mps(kmh: f64) -> f64 {
    round3(kmh / 3.6)
}

/// Rounds to three decimals: a converted speed's float noise
/// (`5.144444444444445`) is not worth a dashboard's bytes.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A finite number, for a numeric field; `None` for text that is not one
/// (Rust's `f64` parser also reads `inf` and `NaN`: not numbers here).
pub(crate) fn parse_f64(text: &str) -> Option<f64> {
    text.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

/// A parameter's value as a field: integers and other finite numbers as
/// numbers, `true` / `false` as booleans, anything else as a string.
pub(crate) fn param_value(text: &str) -> Value {
    match text {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = text.parse::<i64>() {
        return Value::from(i);
    }
    match parse_f64(text).and_then(Number::from_f64) {
        // `parse_f64` trims; a value with spaces around stays text.
        Some(n) if text.trim() == text => Value::Number(n),
        _ => Value::String(text.to_owned()),
    }
}

/// A tracker's timestamp as §4's `ts` (SPEC §10): Unix seconds (below
/// 2^31) or milliseconds; ISO 8601 (`2016-01-27T18:55:47Z`, offsets
/// `±HH:MM` or `±HHMM`, no offset read as UTC); `yyyy-MM-dd HH:mm:ss` in
/// UTC. Text that is none of these is handed on as it is, for §4's check to
/// refuse with its own message.
pub(crate) fn timestamp(text: &str) -> Value {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Value::from(if n < SECONDS_BOUND { n.saturating_mul(1000) } else { n });
    }
    if let Some(x) = parse_f64(text) {
        let ms = if x < SECONDS_BOUND as f64 { x * 1000.0 } else { x };
        // §4 truncates fractional milliseconds and bounds the range.
        return Number::from_f64(ms.trunc()).map_or(Value::Null, Value::Number);
    }
    Value::String(with_offset(text))
}

/// A date-time with its UTC offset written as RFC 3339 wants it: `Z` added
/// when there is none, `±HHMM` turned into `±HH:MM`.
fn with_offset(text: &str) -> String {
    // After `yyyy-MM-ddTHH:mm:ss`: optional fraction, then the offset.
    let Some(rest) = text.get(19..) else {
        return text.to_owned();
    };
    let zone = rest.trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let head = text.strip_suffix(zone).unwrap_or(text);
    match *zone.as_bytes() {
        [] => format!("{head}Z"),
        [sign @ (b'+' | b'-'), h1, h2, m1, m2]
            if [h1, h2, m1, m2].iter().all(u8::is_ascii_digit) =>
        {
            let digit = char::from;
            format!(
                "{head}{}{}{}:{}{}",
                char::from(sign),
                digit(h1),
                digit(h2),
                digit(m1),
                digit(m2)
            )
        }
        _ => text.to_owned(),
    }
}

/// A JSON body as text: JSON is UTF-8 (RFC 8259 §8.1), and serde skips
/// the fields it ignores without checking their bytes, so the whole body is
/// checked here, once.
///
/// # Errors
/// [`Refused::Malformed`] naming the first bad byte's offset.
pub(crate) fn utf8(body: &[u8]) -> Result<&str, Refused> {
    std::str::from_utf8(body).map_err(|e| {
        Refused::Malformed(format!("the body is not UTF-8 (byte {})", e.valid_up_to()))
    })
}

/// The `name=value` pairs of a query string or an
/// `application/x-www-form-urlencoded` body, percent-decoded (`+` is a
/// space), in order; bytes that are not UTF-8 become U+FFFD.
pub(crate) fn form_pairs(input: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    input.split(|b| *b == b'&').filter(|pair| !pair.is_empty()).map(|pair| {
        let mut parts = pair.splitn(2, |b| *b == b'=');
        let name = parts.next().unwrap_or_default();
        let value = parts.next().unwrap_or_default();
        (form_decode(name), form_decode(value))
    })
}

/// The first parameter `name` of a query string, decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_pairs(query?.as_bytes()).find(|(n, _)| n == name).map(|(_, v)| v)
}

/// Percent-decodes one form component; a `%` not followed by two hex digits
/// stays as it is.
fn form_decode(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => match (input.get(i + 1).and_then(hex), input.get(i + 2).and_then(hex)) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            _ => out.push(b),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn hex(b: &u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The password of an `Authorization: Basic` value (RFC 7617), whatever
/// the user name; `None` when the value is not Basic credentials.
pub(crate) fn basic_password(authorization: &str) -> Option<String> {
    let (scheme, encoded) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64_decode(encoded.trim())?;
    let text = String::from_utf8(decoded).ok()?;
    text.split_once(':').map(|(_, password)| password.to_owned())
}

/// Standard base64 (RFC 4648 §4), padding optional.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let digits = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &c in digits {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_of_every_documented_form() {
        assert_eq!(timestamp("1377177267"), json!(1_377_177_267_000_i64));
        assert_eq!(timestamp("1442068686579"), json!(1_442_068_686_579_i64));
        assert_eq!(timestamp("2147483647"), json!(2_147_483_647_000_i64));
        assert_eq!(timestamp("2147483648"), json!(2_147_483_648_i64));
        assert_eq!(timestamp("1377177267.5"), json!(1_377_177_267_500.0));
        assert_eq!(timestamp("2016-01-27T18:55:47Z"), json!("2016-01-27T18:55:47Z"));
        assert_eq!(timestamp("2014-06-04 09:10:11"), json!("2014-06-04 09:10:11Z"));
        assert_eq!(timestamp("2025-06-15T13:45:12.862Z"), json!("2025-06-15T13:45:12.862Z"));
        assert_eq!(timestamp("2016-01-27T18:55:47.5"), json!("2016-01-27T18:55:47.5Z"));
        assert_eq!(timestamp("2016-01-27T20:55:47+0200"), json!("2016-01-27T20:55:47+02:00"));
        assert_eq!(timestamp("2016-01-27T20:55:47+02:00"), json!("2016-01-27T20:55:47+02:00"));
        assert_eq!(timestamp("yesterday"), json!("yesterday"));
        assert_eq!(timestamp("2016-01-27T20:55:4é"), json!("2016-01-27T20:55:4é"));
    }

    #[test]
    fn every_timestamp_form_is_a_valid_ts() {
        let ctx = Context { event: None, now_ms: 7, max_position_bytes: 16_384, max_items: 10 };
        for (text, ms) in [
            ("1377177267", 1_377_177_267_000_i64),
            ("2016-01-27T18:55:47Z", 1_453_920_947_000),
            ("2016-01-27T20:55:47+0200", 1_453_920_947_000),
            ("2014-06-04 09:10:11", 1_401_873_011_000),
        ] {
            let mut f = Fields::new();
            f.set("deviceId", json!("d"));
            f.set("lat", json!(1));
            f.set("lon", json!(2));
            f.set("ts", timestamp(text));
            assert_eq!(f.finish(&ctx).map(|p| p.ts_ms), Ok(ms), "{text}");
        }
    }

    #[test]
    fn params_become_typed_values() {
        assert_eq!(param_value("933"), json!(933));
        assert_eq!(param_value("24.5"), json!(24.5));
        assert_eq!(param_value("true"), json!(true));
        assert_eq!(param_value("false"), json!(false));
        assert_eq!(param_value("257,02,16,2224"), json!("257,02,16,2224"));
        assert_eq!(param_value("NaN"), json!("NaN"));
        assert_eq!(param_value("inf"), json!("inf"));
        assert_eq!(param_value(" 5"), json!(" 5"));
        assert_eq!(param_value(""), json!(""));
    }

    #[test]
    fn form_pairs_are_decoded_in_order() {
        let pairs: Vec<_> =
            form_pairs(b"id=a+b&timestamp=2016-01-27T18%3A55%3A47Z&x&&%zz=%4&k=%c3%a9").collect();
        let want = [
            ("id", "a b"),
            ("timestamp", "2016-01-27T18:55:47Z"),
            ("x", ""),
            ("%zz", "%4"),
            ("k", "é"),
        ];
        let want: Vec<_> = want.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        assert_eq!(pairs, want);
        assert_eq!(form_pairs(b"a=%ff").next(), Some(("a".to_owned(), "\u{fffd}".to_owned())));
        assert_eq!(query_param(Some("event=r%202&token=x"), "event").as_deref(), Some("r 2"));
        assert_eq!(query_param(None, "event"), None);
    }

    #[test]
    fn basic_credentials() {
        // "user:s3cret", "anyone:pa:ss", ":t"
        assert_eq!(basic_password("Basic dXNlcjpzM2NyZXQ=").as_deref(), Some("s3cret"));
        assert_eq!(basic_password("basic YW55b25lOnBhOnNz").as_deref(), Some("pa:ss"));
        assert_eq!(basic_password("Basic OnQ").as_deref(), Some("t"));
        assert_eq!(basic_password("Bearer dXNlcjpzM2NyZXQ="), None);
        assert_eq!(basic_password("Basic !!!"), None);
        assert_eq!(basic_password("Basic dXNlcg=="), None);
    }

    #[test]
    fn unit_conversions() {
        assert_eq!(knots_to_mps(10.0), 5.144);
        assert_eq!(kmh_to_mps(36.0), 10.0);
        assert_eq!(kmh_to_mps(5.0), 1.389);
    }

    #[test]
    fn finish_applies_the_ingest_rules() {
        let ctx = Context { event: None, now_ms: 42, max_position_bytes: 16_384, max_items: 10 };
        let base = |f: &mut Fields| {
            f.set("deviceId", json!("d"));
            f.set("lat", json!(1));
            f.set("lon", json!(2));
        };
        let mut f = Fields::new();
        base(&mut f);
        let p = f.finish(&ctx).unwrap();
        assert_eq!((p.ts_ms, p.event_id), (42, None));
        let mut f = Fields::new();
        base(&mut f);
        f.set("deviceId", json!("x".repeat(129)));
        assert!(matches!(f.finish(&ctx), Err(Refused::Invalid(_))));
        let mut f = Fields::new();
        base(&mut f);
        f.set("lat", json!(91));
        assert!(matches!(f.finish(&ctx), Err(Refused::Invalid(_))));
        let mut f = Fields::new();
        base(&mut f);
        f.set("note", json!("x".repeat(100)));
        let small = Context { max_position_bytes: 100, ..ctx.clone() };
        assert!(matches!(f.finish(&small), Err(Refused::TooLarge(_))));
        let mut f = Fields::new();
        base(&mut f);
        let routed = Context { event: Some("e".repeat(129)), ..ctx };
        assert!(matches!(f.finish(&routed), Err(Refused::Invalid(_))));
    }
}
