//! Entry points for the fuzz targets under `scripts/fuzz/`: thin wrappers
//! over the crate's private parsers, so that the fuzzers call the very code
//! the server runs. Not a stable API; hidden from the docs.

use crate::position::Position;
use crate::protocol;
use crate::source::ingest;

/// An inbound client message, as [`inbound`] parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `{"type":"subscribe","eventId":..}`
    Subscribe(String),
    /// `{"type":"unsubscribe","eventId":..}`
    Unsubscribe(String),
    /// `{"type":"ping","id":..}`: the `id` as the JSON text the pong echoes.
    Ping(Option<String>),
}

/// Parses one text frame as the connection loop does.
///
/// # Errors
/// The `protocol-violation` text the client would get.
pub fn inbound(text: &str) -> Result<Inbound, String> {
    protocol::Inbound::parse(text).map(|m| match m {
        protocol::Inbound::Subscribe(e) => Inbound::Subscribe(e),
        protocol::Inbound::Unsubscribe(e) => Inbound::Unsubscribe(e),
        protocol::Inbound::Ping(id) => Inbound::Ping(id),
    })
}

/// The longest `eventId` accepted, in characters.
pub const MAX_EVENT_ID_CHARS: usize = crate::position::MAX_EVENT_ID_CHARS;

/// A validated position.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedPosition(Position);

impl ParsedPosition {
    /// The tracked device.
    pub fn device_id(&self) -> &str {
        &self.0.device_id
    }

    /// The event the source named, if any.
    pub fn event_id(&self) -> Option<&str> {
        self.0.event_id.as_deref()
    }

    /// Milliseconds since the epoch.
    pub fn ts_ms(&self) -> i64 {
        self.0.ts_ms
    }

    /// The `position` message sent to the subscribers of `event_id`.
    pub fn frame(&self, event_id: &str) -> String {
        self.0.frame(event_id)
    }

    /// The form appended to the Redis Stream.
    pub fn to_json(&self) -> String {
        self.0.to_json()
    }
}

/// Parses JSON text and validates it as one position, as the Redis source
/// does with a stream entry.
///
/// # Errors
/// The JSON error, or the validation error the producer would get.
pub fn position(json: &[u8]) -> Result<ParsedPosition, String> {
    let value = serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))?;
    Position::from_value(value).map(ParsedPosition).map_err(|e| e.0)
}

/// A parsed `POST /ingest` body.
#[derive(Debug)]
pub struct Ingest {
    /// The valid positions, in body order.
    pub positions: Vec<ParsedPosition>,
    /// `(index, error)` of each refused item.
    pub rejected: Vec<(usize, String)>,
}

impl From<ingest::Parsed> for Ingest {
    fn from(parsed: ingest::Parsed) -> Ingest {
        Ingest {
            positions: parsed.positions.into_iter().map(ParsedPosition).collect(),
            rejected: parsed.rejected.into_iter().map(|r| (r.index, r.error)).collect(),
        }
    }
}

/// A JSON `POST /ingest` body: an array of positions or one object.
///
/// # Errors
/// The text of the 400 answer.
pub fn ingest_json(body: &[u8]) -> Result<Ingest, String> {
    ingest::parse_json(body).map(Ingest::from)
}

/// An NDJSON `POST /ingest` body.
pub fn ingest_ndjson(body: &[u8]) -> Ingest {
    ingest::parse_ndjson(body).into()
}
