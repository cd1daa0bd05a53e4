//! `POST /ingest` (SPEC §4): a JSON array (or one object), or NDJSON.
//!
//! Each item is validated on its own: rejected items are reported by index
//! and never stop the good ones around them. Valid positions go to the
//! broadcaster in body order, in one command, so that one request is one
//! broadcaster cycle.

use serde::Serialize;
use serde_json::Value;

use crate::position::Position;

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
    pub(crate) rejected: Vec<Rejection>,
}

impl Parsed {
    fn take(&mut self, index: usize, value: Value) {
        match Position::from_value(value) {
            Ok(p) => self.positions.push(p),
            Err(e) => self.rejected.push(Rejection { index, error: e.0 }),
        }
    }
}

/// Whether a `Content-Type` names NDJSON.
pub(crate) fn is_ndjson(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or("").trim();
        mime.eq_ignore_ascii_case("application/x-ndjson")
            || mime.eq_ignore_ascii_case("application/ndjson")
            || mime.eq_ignore_ascii_case("application/jsonlines")
    })
}

/// Parses a JSON body: an array of positions, or one position object.
///
/// # Errors
/// A message for the 400 answer when the body is not JSON at all, or is
/// neither an array nor an object.
pub(crate) fn parse_json(body: &[u8]) -> Result<Parsed, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON body: {e}"))?;
    let mut parsed = Parsed::default();
    match value {
        Value::Array(items) => {
            parsed.positions.reserve(items.len());
            for (index, item) in items.into_iter().enumerate() {
                parsed.take(index, item);
            }
        }
        obj @ Value::Object(_) => parsed.take(0, obj),
        _ => return Err("the body must be a JSON array of positions or one position".into()),
    }
    Ok(parsed)
}

/// Parses an NDJSON body: one position per line; blank lines are skipped but
/// still counted, so indices are line numbers.
pub(crate) fn parse_ndjson(body: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    for (index, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Value>(line) {
            Ok(value) => parsed.take(index, value),
            Err(e) => {
                parsed.rejected.push(Rejection { index, error: format!("invalid JSON: {e}") });
            }
        }
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_keeps_good_items_around_bad_ones() {
        let body =
            br#"[{"deviceId":"a","lat":1,"lon":1,"ts":1},{"deviceId":"b","lat":99,"lon":1,"ts":1},
            {"deviceId":"c","lat":1,"lon":1,"ts":1}]"#;
        let p = parse_json(body).unwrap();
        assert_eq!(p.positions.len(), 2);
        assert_eq!(p.rejected.len(), 1);
        assert_eq!(p.rejected[0].index, 1);
        assert!(parse_json(b"{nope").is_err());
        assert!(parse_json(b"42").is_err());
        assert_eq!(
            parse_json(br#"{"deviceId":"a","lat":1,"lon":1,"ts":1}"#).unwrap().positions.len(),
            1
        );
    }

    #[test]
    fn ndjson_indices_are_line_numbers() {
        let body = b"{\"deviceId\":\"a\",\"lat\":1,\"lon\":1,\"ts\":1}\r\n\n{bad\n{\"deviceId\":\"b\",\"lat\":1,\"lon\":1,\"ts\":1}\n";
        let p = parse_ndjson(body);
        assert_eq!(p.positions.len(), 2);
        assert_eq!(p.rejected, vec![Rejection { index: 2, error: p.rejected[0].error.clone() }]);
        assert!(is_ndjson(Some("application/x-ndjson; charset=utf-8")));
        assert!(!is_ndjson(Some("application/json")));
    }
}
