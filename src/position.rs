//! Positions: parsing, validation and the one serialisation (SPEC §4).
//!
//! A position is validated and turned into JSON once, by the thread that
//! received it (an HTTP worker or the Redis source), so that the broadcaster
//! only prefixes the event and fans the same bytes out to every subscriber.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Longest accepted `eventId`, in characters (SPEC §3).
pub(crate) const MAX_EVENT_ID_CHARS: usize = 128;

/// Longest `deviceId` and `eventId` of a position, in bytes (SPEC §9): ids
/// are keys of the cache and the registry, and part of every frame.
pub(crate) const MAX_ID_BYTES: usize = 128;

/// A validated position.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Position {
    /// The tracked device.
    pub(crate) device_id: String,
    /// The event given by the source, if any; otherwise the device→event map
    /// decides.
    pub(crate) event_id: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub(crate) ts_ms: i64,
    /// The serialised message minus its head: `,"deviceId":..,"ts":..,...}`.
    /// [`Position::frame`] prefixes `{"type":"position","eventId":..`.
    tail: String,
}

/// Why a position was rejected; the text goes back to the producer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid(pub(crate) String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn invalid(msg: impl Into<String>) -> Invalid {
    Invalid(msg.into())
}

impl Position {
    /// Validates one JSON value as a position from a source: as
    /// [`Position::from_value`], its JSON (the stream form,
    /// [`Position::to_json`]) must fit in `max_bytes`
    /// (`LIVE_MAX_POSITION_BYTES`, SPEC §9), and a numeric `ts` must not
    /// look like seconds ([`MIN_TS_MS`]). Every source (ingest, Redis)
    /// goes through here, so an oversized position is never cached nor
    /// broadcast, and a producer sending seconds is told at once.
    ///
    /// # Errors
    /// [`Invalid`] naming the first bad field, or the size.
    pub(crate) fn from_source(value: Value, max_bytes: usize) -> Result<Position, Invalid> {
        if let Some(Value::Number(ts)) = value.get("ts") {
            check_not_seconds(ts)?;
        }
        let position = Position::from_value(value)?;
        let len = position.json_len();
        if len > max_bytes {
            return Err(invalid(format!(
                "position is {len} bytes of JSON, more than the {max_bytes} allowed"
            )));
        }
        Ok(position)
    }

    /// Validates one JSON value as a position, without a size bound (see
    /// [`Position::from_source`]).
    ///
    /// # Errors
    /// [`Invalid`] naming the first bad field.
    pub(crate) fn from_value(value: Value) -> Result<Position, Invalid> {
        let Value::Object(mut obj) = value else {
            return Err(invalid("a position must be a JSON object"));
        };
        let device_id = match obj.remove("deviceId") {
            Some(Value::String(s)) if s.len() > MAX_ID_BYTES => {
                return Err(invalid("deviceId must be at most 128 bytes"));
            }
            Some(Value::String(s)) if !s.is_empty() => s,
            Some(Value::String(_)) => return Err(invalid("deviceId must not be empty")),
            Some(_) => return Err(invalid("deviceId must be a string")),
            None => return Err(invalid("deviceId is required")),
        };
        let event_id = match obj.remove("eventId") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.len() > MAX_ID_BYTES => {
                return Err(invalid("eventId must be at most 128 bytes"));
            }
            Some(Value::String(s)) => Some(check_event_id(s).map_err(invalid)?),
            Some(_) => return Err(invalid("eventId must be a string")),
        };
        let lat = coordinate(&mut obj, "lat", 90.0)?;
        let lon = coordinate(&mut obj, "lon", 180.0)?;
        let ts_ms = match obj.remove("ts") {
            Some(Value::Number(n)) => millis_from_number(&n)?,
            Some(Value::String(s)) => parse_rfc3339_ms(&s).ok_or_else(|| {
                invalid("ts must be milliseconds since the epoch or an RFC 3339 time with offset")
            })?,
            Some(_) => return Err(invalid("ts must be a number or an RFC 3339 string")),
            None => return Err(invalid("ts is required")),
        };
        // The outbound `type` is ours; a producer's own is dropped.
        obj.remove("type");

        let mut tail = String::with_capacity(96);
        tail.push_str(",\"deviceId\":");
        push_json_str(&mut tail, &device_id);
        tail.push_str(",\"lat\":");
        tail.push_str(&lat.to_string());
        tail.push_str(",\"lon\":");
        tail.push_str(&lon.to_string());
        tail.push_str(",\"ts\":");
        tail.push_str(&ts_ms.to_string());
        for (key, value) in &obj {
            tail.push(',');
            push_json_str(&mut tail, key);
            tail.push(':');
            tail.push_str(&value.to_string());
        }
        tail.push('}');
        Ok(Position { device_id, event_id, ts_ms, tail })
    }

    /// The position as a producer would send it (no `type`), for appending
    /// to the Redis Stream.
    pub(crate) fn to_json(&self) -> String {
        let mut out = String::with_capacity(24 + self.tail.len());
        out.push('{');
        if let Some(event) = &self.event_id {
            out.push_str("\"eventId\":");
            push_json_str(&mut out, event);
            out.push_str(&self.tail);
        } else {
            // `tail` starts with the comma that follows the head.
            out.push_str(self.tail.get(1..).unwrap_or_default());
        }
        out
    }

    /// The length of [`Position::to_json`], without building it.
    pub(crate) fn json_len(&self) -> usize {
        match &self.event_id {
            // `{"eventId":` + the literal + the tail (which opens with `,`).
            Some(event) => {
                let mut literal = String::new();
                push_json_str(&mut literal, event);
                11 + literal.len() + self.tail.len()
            }
            // The tail's leading comma becomes the `{`.
            None => self.tail.len(),
        }
    }

    /// The `position` message for `event_id`, as sent to every subscriber.
    pub(crate) fn frame(&self, event_id: &str) -> String {
        let mut out = String::with_capacity(40 + event_id.len() + self.tail.len());
        out.push_str("{\"type\":\"position\",\"eventId\":");
        push_json_str(&mut out, event_id);
        out.push_str(&self.tail);
        out
    }
}

/// Checks an `eventId` against SPEC §3: non-empty, at most 128 characters.
pub(crate) fn check_event_id(id: String) -> Result<String, &'static str> {
    if id.is_empty() {
        Err("eventId must not be empty")
    } else if id.chars().count() > MAX_EVENT_ID_CHARS {
        Err("eventId must be at most 128 characters")
    } else {
        Ok(id)
    }
}

/// Removes and checks a coordinate; keeps the producer's number as written.
fn coordinate(obj: &mut Map<String, Value>, name: &str, limit: f64) -> Result<Value, Invalid> {
    match obj.remove(name) {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() && (-limit..=limit).contains(&v) => Ok(Value::Number(n)),
            _ => Err(invalid(format!("{name} must be between -{limit} and {limit}"))),
        },
        Some(_) => Err(invalid(format!("{name} must be a number"))),
        None => Err(invalid(format!("{name} is required"))),
    }
}

/// Smallest numeric `ts` a source may send: 10^12 ms is 2001-09-09T01:46:40Z. A number
/// below it is before any live position in milliseconds, and is what a
/// Unix time in *seconds* looks like until the year 33658: the most common
/// mistake of a producer, which would otherwise show as an age of decades.
pub(crate) const MIN_TS_MS: i64 = 1_000_000_000_000;

/// A numeric `ts` below [`MIN_TS_MS`] (a negative or out-of-range one is
/// left to [`millis_from_number`] to name).
fn check_not_seconds(n: &serde_json::Number) -> Result<(), Invalid> {
    match millis_from_number(n) {
        Ok(ms) if ms < MIN_TS_MS => Err(invalid(format!(
            "ts {n} is before 2001-09-09 in milliseconds: looks like seconds; ts must be \
             milliseconds since the epoch (seconds × 1000) or an RFC 3339 string"
        ))),
        _ => Ok(()),
    }
}

fn millis_from_number(n: &serde_json::Number) -> Result<i64, Invalid> {
    if let Some(ms) = n.as_i64() {
        return if ms >= 0 { Ok(ms) } else { Err(invalid("ts must not be negative")) };
    }
    match n.as_f64() {
        // Fractional milliseconds are truncated; 2^53 ms is year 287396.
        #[allow(clippy::cast_possible_truncation)]
        Some(f) if f.is_finite() && (0.0..9.0e15).contains(&f) => Ok(f as i64),
        _ => Err(invalid("ts is out of range")),
    }
}

/// Appends `s` as a JSON string literal.
pub(crate) fn push_json_str(out: &mut String, s: &str) {
    // Serialising a &str into a String cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned()));
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> i64 {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` into epoch milliseconds.
///
/// RFC 3339 requires the offset; a time without one is ambiguous and is
/// rejected. Lower-case `t`/`z` and a space separator are accepted (§5.6
/// NOTE).
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let sep = |i: usize, c: &[u8]| b.get(i).is_some_and(|x| c.contains(x));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        // Keep milliseconds, pad or truncate the rest.
        let digits = b.get(start..i)?;
        for k in 0..3 {
            millis = millis * 10 + digits.get(k).map_or(0, |d| i64::from(d - b'0'));
        }
    }
    let offset_min = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let off = oh * 60 + om;
            if *sign == b'-' { -off } else { off }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    let ms = secs.checked_mul(1000)?.checked_add(millis)?;
    (ms >= 0).then_some(ms)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// `days_from_civil`).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Position, Invalid> {
        Position::from_value(v)
    }

    #[test]
    fn serialises_once_with_extras_passed_through() {
        let p = parse(json!({"deviceId":"d-7","lat":46.52,"lon":6.63,"ts":1764316800123_i64,
            "speed":12.5,"type":"junk","eventId":"e-42"}))
        .unwrap();
        assert_eq!(p.event_id.as_deref(), Some("e-42"));
        let v: Value = serde_json::from_str(&p.frame("e-42")).unwrap();
        assert_eq!(
            v,
            json!({"type":"position","eventId":"e-42","deviceId":"d-7","lat":46.52,
                "lon":6.63,"ts":1764316800123_i64,"speed":12.5})
        );
        // Round trip through the stream form.
        let again = parse(serde_json::from_str(&p.to_json()).unwrap()).unwrap();
        assert_eq!(again, p);
        let mut no_event = p;
        no_event.event_id = None;
        let again = parse(serde_json::from_str(&no_event.to_json()).unwrap()).unwrap();
        assert_eq!(again, no_event);
    }

    #[test]
    fn rejects_each_bad_field() {
        let base = json!({"deviceId":"d","lat":1,"lon":2,"ts":1_700_000_000_003_i64});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert!(parse(base.clone()).is_ok());
        assert!(parse(with("deviceId", json!(""))).is_err());
        assert!(parse(with("deviceId", json!(5))).is_err());
        assert!(parse(with("lat", json!(90.01))).is_err());
        assert!(parse(with("lon", json!(-180.5))).is_err());
        assert!(parse(with("lat", json!("1"))).is_err());
        assert!(parse(with("ts", json!(-1))).is_err());
        assert!(parse(with("ts", json!("yesterday"))).is_err());
        assert!(parse(with("eventId", json!(""))).is_err());
        assert!(parse(with("eventId", json!("x".repeat(129)))).is_err());
        assert!(parse(json!([1])).is_err());
        let mut no_ts = base;
        no_ts.as_object_mut().unwrap().remove("ts");
        assert!(parse(no_ts).is_err());
    }

    #[test]
    fn ids_are_at_most_128_bytes() {
        let base = json!({"deviceId":"d","lat":1,"lon":2,"ts":1_700_000_000_003_i64});
        let with = |k: &str, v: Value| {
            let mut b = base.clone();
            b[k] = v;
            b
        };
        assert!(parse(with("deviceId", json!("x".repeat(128)))).is_ok());
        assert!(parse(with("deviceId", json!("x".repeat(129)))).is_err());
        assert!(parse(with("eventId", json!("x".repeat(128)))).is_ok());
        // 100 characters, 200 bytes: the byte bound applies to positions.
        assert!(parse(with("eventId", json!("é".repeat(100)))).is_err());
        assert!(parse(with("deviceId", json!("é".repeat(65)))).is_err());
    }

    #[test]
    fn json_len_is_the_stream_form_length_and_bounds_sources() {
        for v in [
            json!({"deviceId":"d","lat":1,"lon":2,"ts":1_700_000_000_003_i64}),
            json!({"deviceId":"d\"é","eventId":"e\n\u{1}","lat":1,"lon":2,"ts":1_700_000_000_003_i64,"x":[1,{"y":null}]}),
        ] {
            let p = parse(v.clone()).unwrap();
            assert_eq!(p.json_len(), p.to_json().len(), "{v}");
            let len = p.json_len();
            assert!(Position::from_source(v.clone(), len).is_ok());
            let err = Position::from_source(v, len - 1).unwrap_err();
            assert!(err.0.contains("bytes"), "{err}");
        }
    }

    #[test]
    fn numbers_survive_the_stream_round_trip() {
        // Found by `scripts/fuzz.sh` (target `position`): serde_json's
        // default float parser may be one ULP off for long numbers, so a
        // position re-read from the Redis Stream differed from the same
        // position served directly. The `float_roundtrip` feature fixes it.
        for (body, lat) in [
            (
                r#"{"deviceId":"d","lat":11.2658877983171287187,"lon":1,"ts":1700000000001}"#,
                11.265887798317129,
            ),
            (
                r#"{"deviceId":"d","lat":1,"lon":1,"ts":1700000000001,"x":4184467440737095516166.52}"#,
                1.0,
            ),
        ] {
            let p = parse(serde_json::from_str(body).unwrap()).unwrap();
            let again = parse(serde_json::from_str(&p.to_json()).unwrap()).unwrap();
            assert_eq!(again, p, "{body}");
            let v: Value = serde_json::from_str(&p.frame("e")).unwrap();
            assert_eq!(v["lat"].as_f64(), Some(lat), "{body}");
        }
    }

    #[test]
    fn a_ts_in_seconds_is_rejected_with_the_hint() {
        let at = |ts: Value| {
            Position::from_source(json!({"deviceId":"d","lat":1,"lon":2,"ts":ts}), 1000)
        };
        for seconds in
            [json!(1_700_000_000), json!(1_700_000_000.5), json!(0), json!(999_999_999_999_i64)]
        {
            let err = at(seconds.clone()).unwrap_err();
            assert!(err.0.contains("looks like seconds"), "{seconds}: {err}");
            assert!(err.0.contains(&seconds.to_string()), "{seconds}: {err}");
        }
        assert_eq!(at(json!(MIN_TS_MS)).unwrap().ts_ms, MIN_TS_MS);
        assert_eq!(at(json!(1_700_000_000_000.9)).unwrap().ts_ms, 1_700_000_000_000);
        assert!(at(json!(-1)).unwrap_err().0.contains("negative"));
        // A string says what it is: an old date is taken as it is.
        assert_eq!(at(json!("1999-12-31T23:59:59Z")).unwrap().ts_ms, 946_684_799_000);
    }

    #[test]
    fn rfc3339_normalised_to_millis() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_ms("2025-11-28T10:00:00.123+01:00"), Some(1_764_320_400_123));
        assert_eq!(parse_rfc3339_ms("2025-11-28T09:00:00.1234Z"), Some(1_764_320_400_123));
        assert_eq!(parse_rfc3339_ms("2024-02-29t12:00:00-00:30"), Some(1_709_209_800_000));
        assert_eq!(parse_rfc3339_ms("2025-11-28T10:00:00"), None);
        assert_eq!(parse_rfc3339_ms("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("2025-11-28T10:00:00.Z"), None);
        assert_eq!(parse_rfc3339_ms("2025-11-28T10:00:00Zjunk"), None);
        assert_eq!(parse_rfc3339_ms("€€€€-11-28T10:00:00Z"), None);
    }
}
