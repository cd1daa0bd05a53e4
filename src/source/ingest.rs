//! `POST /ingest` (SPEC §4, §9): a JSON array (or one object), or NDJSON.
//!
//! Each item is validated on its own: rejected items are reported by index
//! and never stop the good ones around them. Valid positions go to the
//! broadcaster in body order, in one command, so that one request is one
//! broadcaster cycle.
//!
//! Memory follows the body, not the item count: a JSON array is walked
//! item by item (a serde visitor), each item turned into a [`Position`] or
//! a rejection at once, so the body never exists as one `Value` tree; only
//! the first [`MAX_LISTED_REJECTIONS`] rejections are kept (the others are
//! counted); and a body with more than `max_items` items stops parsing at
//! the first item too many.
//!
//! The walk only checks each item's syntax (as raw JSON text); the item is
//! then parsed on its own, so one that JSON cannot represent in memory (a
//! number out of `f64`'s range, a lone surrogate, nesting past the
//! parser's depth) rejects that item only (SPEC §9 "Bodies").

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize as _, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::position::Position;

/// Most rejections listed in an answer (SPEC §4); `rejectedCount` has them
/// all. Keeps the answer to a hostile body small: a 1 MiB `[0,0,…]` would
/// otherwise be answered with one rejection per item.
pub(crate) const MAX_LISTED_REJECTIONS: usize = 100;

/// The bounds applied to one body.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `INGEST_MAX_ITEMS`: more items (array elements, non-blank lines)
    /// make the whole body [`Refused::TooManyItems`].
    pub(crate) max_items: usize,
    /// `LIVE_MAX_POSITION_BYTES`: larger positions are rejected.
    pub(crate) max_position_bytes: usize,
}

/// One refused item of a body.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub(crate) struct Rejection {
    /// 0-based: array index, or line number for NDJSON.
    pub(crate) index: usize,
    pub(crate) error: String,
}

/// A parsed body.
#[derive(Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) positions: Vec<Position>,
    /// The first [`MAX_LISTED_REJECTIONS`] rejections, in body order.
    pub(crate) rejected: Vec<Rejection>,
    /// Every rejection, listed or not.
    pub(crate) rejected_count: usize,
}

impl Parsed {
    fn take(&mut self, index: usize, value: Value, limits: &Limits) {
        match Position::from_source(value, limits.max_position_bytes) {
            Ok(p) => self.positions.push(p),
            Err(e) => self.reject(index, e.0),
        }
    }

    fn reject(&mut self, index: usize, error: String) {
        self.rejected_count += 1;
        if self.rejected.len() < MAX_LISTED_REJECTIONS {
            self.rejected.push(Rejection { index, error });
        }
    }
}

/// Why a whole body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Not JSON, or neither an array nor an object (`400`); the text says
    /// what.
    Malformed(String),
    /// More than `max_items` items (`413`).
    TooManyItems {
        /// The bound that was passed.
        max: usize,
    },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Malformed(why) => f.write_str(why),
            Refused::TooManyItems { max } => {
                write!(f, "more than {max} items in one body (INGEST_MAX_ITEMS)")
            }
        }
    }
}

/// Whether a `Content-Type` names NDJSON.
pub(crate) fn is_ndjson(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| mime(ct).eq_ignore_ascii_case("application/x-ndjson"))
}

/// Whether `POST /ingest` takes a body of this `Content-Type` (SPEC §9):
/// `application/json`, `application/x-ndjson` (parameters allowed) or none.
/// Everything else, notably what a web page may send cross-site without a
/// CORS preflight (`text/plain`, forms), is refused.
pub(crate) fn content_type_accepted(content_type: Option<&str>) -> bool {
    content_type.is_none_or(|ct| {
        let mime = mime(ct);
        mime.eq_ignore_ascii_case("application/json")
            || mime.eq_ignore_ascii_case("application/x-ndjson")
    })
}

/// The media type of a `Content-Type` value, without parameters.
fn mime(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Parses a JSON body: an array of positions, or one position object.
///
/// # Errors
/// [`Refused`] when the body is not JSON at all, is neither an array nor an
/// object, or has more than `limits.max_items` items.
pub(crate) fn parse_json(body: &[u8], limits: &Limits) -> Result<Parsed, Refused> {
    let mut too_many = false;
    let mut de = serde_json::Deserializer::from_slice(body);
    let walked = de
        .deserialize_any(BodyVisitor { limits, too_many: &mut too_many })
        .and_then(|parsed| de.end().map(|()| parsed));
    match walked {
        Ok(parsed) => Ok(parsed),
        Err(_) if too_many => Err(Refused::TooManyItems { max: limits.max_items }),
        Err(e) => Err(Refused::Malformed(format!("invalid JSON body: {e}"))),
    }
}

/// Walks the top-level value of a JSON body.
struct BodyVisitor<'a> {
    limits: &'a Limits,
    /// Set when the walk stopped at the item past `max_items` (the error
    /// serde returns then is ours, not a syntax error).
    too_many: &'a mut bool,
}

impl<'de> Visitor<'de> for BodyVisitor<'_> {
    type Value = Parsed;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of positions or one position")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
        let mut parsed = Parsed::default();
        let mut index = 0;
        // One item at a time, first as its raw text (syntax only), then
        // as a `Value` that lives only until it is a position: an item the
        // second step refuses is that item's rejection, not the body's.
        while let Some(item) = seq.next_element::<&RawValue>()? {
            if index >= self.limits.max_items {
                *self.too_many = true;
                return Err(de::Error::custom("too many items"));
            }
            match serde_json::from_str::<Value>(item.get()) {
                Ok(value) => parsed.take(index, value, self.limits),
                Err(e) => parsed.reject(index, format!("invalid JSON: {e}")),
            }
            index += 1;
        }
        Ok(parsed)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Parsed, A::Error> {
        let object = ObjectSeed.deserialize(de::value::MapAccessDeserializer::new(map))?;
        let mut parsed = Parsed::default();
        parsed.take(0, object, self.limits);
        Ok(parsed)
    }
}

/// Reads one JSON object into a `Value`.
struct ObjectSeed;

impl<'de> DeserializeSeed<'de> for ObjectSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        serde_json::Map::<String, Value>::deserialize(deserializer).map(Value::Object)
    }
}

/// Parses an NDJSON body: one position per line; blank lines are skipped but
/// still counted, so indices are line numbers.
///
/// # Errors
/// [`Refused::TooManyItems`] past `limits.max_items` non-blank lines.
pub(crate) fn parse_ndjson(body: &[u8], limits: &Limits) -> Result<Parsed, Refused> {
    let mut parsed = Parsed::default();
    let mut items = 0;
    for (index, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if items >= limits.max_items {
            return Err(Refused::TooManyItems { max: limits.max_items });
        }
        items += 1;
        match serde_json::from_slice::<Value>(line) {
            Ok(value) => parsed.take(index, value, limits),
            Err(e) => parsed.reject(index, format!("invalid JSON: {e}")),
        }
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_items: 10_000, max_position_bytes: 16_384 };

    #[test]
    fn json_array_keeps_good_items_around_bad_ones() {
        let body =
            br#"[{"deviceId":"a","lat":1,"lon":1,"ts":1700000000000},{"deviceId":"b","lat":99,"lon":1,"ts":1700000000000},
            {"deviceId":"c","lat":1,"lon":1,"ts":1700000000000}]"#;
        let p = parse_json(body, &LIMITS).unwrap();
        assert_eq!(p.positions.len(), 2);
        assert_eq!((p.rejected.len(), p.rejected_count), (1, 1));
        assert_eq!(p.rejected[0].index, 1);
        assert!(matches!(parse_json(b"{nope", &LIMITS), Err(Refused::Malformed(_))));
        assert!(matches!(parse_json(b"42", &LIMITS), Err(Refused::Malformed(_))));
        assert!(matches!(parse_json(b"[] []", &LIMITS), Err(Refused::Malformed(_))));
        assert!(matches!(parse_json(b"[1,", &LIMITS), Err(Refused::Malformed(_))));
        assert_eq!(
            parse_json(br#" {"deviceId":"a","lat":1,"lon":1,"ts":1700000000000} "#, &LIMITS)
                .unwrap()
                .positions
                .len(),
            1
        );
        let p = parse_json(br#"{"deviceId":"a","lat":1}"#, &LIMITS).unwrap();
        assert_eq!((p.positions.len(), p.rejected_count), (0, 1));
    }

    #[test]
    fn an_item_json_cannot_represent_rejects_that_item_only() {
        let good = |d: &str| format!(r#"{{"deviceId":"{d}","lat":1,"lon":1,"ts":1764316800123}}"#);
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        for bad in [
            r#"{"deviceId":"x","lat":1e400,"lon":1,"ts":1764316800123}"#.to_owned(),
            r#"{"deviceId":"\ud800","lat":1,"lon":1,"ts":1764316800123}"#.to_owned(),
            format!(r#"{{"deviceId":"x","lat":1,"lon":1,"ts":1764316800123,"deep":{deep}}}"#),
            deep.clone(),
        ] {
            let body = format!("[{},{bad},{}]", good("a"), good("b"));
            let p = parse_json(body.as_bytes(), &LIMITS).unwrap_or_else(|e| panic!("{bad}: {e}"));
            assert_eq!(p.positions.len(), 2, "{bad}");
            assert_eq!(p.rejected.iter().map(|r| r.index).collect::<Vec<_>>(), [1], "{bad}");
            let ndjson = format!("{}\n{bad}\n{}\n", good("a"), good("b"));
            let p = parse_ndjson(ndjson.as_bytes(), &LIMITS).unwrap();
            assert_eq!((p.positions.len(), p.rejected[0].index), (2, 1), "{bad}");
        }
        // Bad syntax is still the body's fault.
        assert!(matches!(parse_json(b"[{\"a\":1},{]", &LIMITS), Err(Refused::Malformed(_))));
    }

    #[test]
    fn only_the_first_rejections_are_listed_all_are_counted() {
        let body = format!("[{}0]", "0,".repeat(999));
        let p = parse_json(body.as_bytes(), &LIMITS).unwrap();
        assert_eq!((p.rejected.len(), p.rejected_count), (MAX_LISTED_REJECTIONS, 1000));
        assert_eq!(p.rejected.last().map(|r| r.index), Some(MAX_LISTED_REJECTIONS - 1));
        let ndjson = "0\n".repeat(1000);
        let p = parse_ndjson(ndjson.as_bytes(), &LIMITS).unwrap();
        assert_eq!((p.rejected.len(), p.rejected_count), (MAX_LISTED_REJECTIONS, 1000));
    }

    #[test]
    fn more_items_than_allowed_refuse_the_body() {
        let limits = Limits { max_items: 3, ..LIMITS };
        assert_eq!(parse_json(b"[0,0,0]", &limits).unwrap().rejected_count, 3);
        assert_eq!(
            parse_json(b"[0,0,0,0]", &limits).unwrap_err(),
            Refused::TooManyItems { max: 3 }
        );
        // Past the bound the rest is not even parsed: a syntax error after
        // it still makes a 413, not a 400.
        assert_eq!(
            parse_json(b"[0,0,0,0,nope", &limits).unwrap_err(),
            Refused::TooManyItems { max: 3 }
        );
        assert_eq!(parse_ndjson(b"0\n\n0\n0\n", &limits).unwrap().rejected_count, 3);
        assert_eq!(
            parse_ndjson(b"0\n0\n\n0\n0", &limits).unwrap_err(),
            Refused::TooManyItems { max: 3 }
        );
    }

    #[test]
    fn oversized_positions_are_rejected_by_index() {
        let limits = Limits { max_position_bytes: 100, ..LIMITS };
        let big = format!(
            r#"{{"deviceId":"b","lat":1,"lon":1,"ts":1700000000000,"note":"{}"}}"#,
            "x".repeat(100)
        );
        let body = format!(r#"[{{"deviceId":"a","lat":1,"lon":1,"ts":1700000000000}},{big}]"#);
        let p = parse_json(body.as_bytes(), &limits).unwrap();
        assert_eq!(p.positions.len(), 1);
        assert_eq!(p.rejected[0].index, 1);
        let p = parse_ndjson(format!("{big}\n").as_bytes(), &limits).unwrap();
        assert_eq!((p.positions.len(), p.rejected[0].index), (0, 0));
    }

    #[test]
    fn ndjson_indices_are_line_numbers() {
        let body = b"{\"deviceId\":\"a\",\"lat\":1,\"lon\":1,\"ts\":1700000000000}\r\n\n{bad\n{\"deviceId\":\"b\",\"lat\":1,\"lon\":1,\"ts\":1700000000000}\n";
        let p = parse_ndjson(body, &LIMITS).unwrap();
        assert_eq!(p.positions.len(), 2);
        assert_eq!(p.rejected, vec![Rejection { index: 2, error: p.rejected[0].error.clone() }]);
        assert!(is_ndjson(Some("application/x-ndjson; charset=utf-8")));
        assert!(!is_ndjson(Some("application/json")));
    }

    #[test]
    fn content_types() {
        for ok in [
            None,
            Some("application/json"),
            Some("Application/JSON; charset=utf-8"),
            Some("application/x-ndjson"),
            Some(" application/x-ndjson ;charset=UTF-8"),
        ] {
            assert!(content_type_accepted(ok), "{ok:?}");
        }
        for refused in [
            "text/plain",
            "text/plain; charset=utf-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            "application/jsonx",
        ] {
            assert!(!content_type_accepted(Some(refused)), "{refused:?}");
        }
    }
}
