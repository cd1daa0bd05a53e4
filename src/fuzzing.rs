//! Entry points for the fuzz targets under `scripts/fuzz/`: thin wrappers
//! over the crate's private parsers, so that the fuzzers call the very code
//! the server runs. Not a stable API; hidden from the docs.

use crate::position::Position;
use crate::protocol;
use crate::source::ingest;

/// An inbound client message, as [`inbound`] parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// `{"type":"subscribe","eventId":..,"trail":..}`
    Subscribe {
        /// `eventId`.
        event: String,
        /// `trail`, when given.
        trail: Option<u64>,
    },
    /// `{"type":"unsubscribe","eventId":..}`
    Unsubscribe(String),
    /// `{"type":"ping","id":..}`: the `id` as the JSON text the pong echoes.
    Ping(Option<String>),
    /// `{"type":"events"}`.
    Events,
}

/// Parses one text frame as the connection loop does.
///
/// # Errors
/// The `protocol-violation` text the client would get.
pub fn inbound(text: &str) -> Result<Inbound, String> {
    protocol::Inbound::parse(text).map(|m| match m {
        protocol::Inbound::Subscribe { event, trail } => Inbound::Subscribe { event, trail },
        protocol::Inbound::Unsubscribe(e) => Inbound::Unsubscribe(e),
        protocol::Inbound::Ping(id) => Inbound::Ping(id),
        protocol::Inbound::Events => Inbound::Events,
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

/// The longest `deviceId` or `eventId` of a position, in bytes.
pub const MAX_ID_BYTES: usize = crate::position::MAX_ID_BYTES;

/// The most rejections an ingest answer lists.
pub const MAX_LISTED_REJECTIONS: usize = ingest::MAX_LISTED_REJECTIONS;

/// Parses JSON text and validates it as one position, as the Redis source
/// does with a stream entry, with at most `max_bytes` of JSON.
///
/// # Errors
/// The JSON error, or the validation error the producer would get.
pub fn position(json: &[u8], max_bytes: usize) -> Result<ParsedPosition, String> {
    let value = serde_json::from_slice(json).map_err(|e| format!("invalid JSON: {e}"))?;
    Position::from_source(value, max_bytes).map(ParsedPosition).map_err(|e| e.0)
}

/// The bounds of one ingest body (`INGEST_MAX_ITEMS`,
/// `LIVE_MAX_POSITION_BYTES`).
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// More items refuse the whole body.
    pub max_items: usize,
    /// Larger positions are rejected.
    pub max_position_bytes: usize,
}

impl From<IngestLimits> for ingest::Limits {
    fn from(l: IngestLimits) -> ingest::Limits {
        ingest::Limits { max_items: l.max_items, max_position_bytes: l.max_position_bytes }
    }
}

/// A parsed `POST /ingest` body.
#[derive(Debug)]
pub struct Ingest {
    /// The valid positions, in body order.
    pub positions: Vec<ParsedPosition>,
    /// `(index, error)` of the first refused items (at most
    /// [`MAX_LISTED_REJECTIONS`]).
    pub rejected: Vec<(usize, String)>,
    /// Every refused item.
    pub rejected_count: usize,
}

impl From<ingest::Parsed> for Ingest {
    fn from(parsed: ingest::Parsed) -> Ingest {
        Ingest {
            positions: parsed.positions.into_iter().map(ParsedPosition).collect(),
            rejected: parsed.rejected.into_iter().map(|r| (r.index, r.error)).collect(),
            rejected_count: parsed.rejected_count,
        }
    }
}

/// Why a whole ingest body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IngestRefused {
    /// `400`, with its text.
    Malformed(String),
    /// `413`: more than `max_items` items.
    TooManyItems,
}

impl From<ingest::Refused> for IngestRefused {
    fn from(r: ingest::Refused) -> IngestRefused {
        match r {
            ingest::Refused::Malformed(why) => IngestRefused::Malformed(why),
            ingest::Refused::TooManyItems { .. } => IngestRefused::TooManyItems,
        }
    }
}

/// A JSON `POST /ingest` body: an array of positions or one object.
///
/// # Errors
/// What the whole body is refused for (`400`, `413`).
pub fn ingest_json(body: &[u8], limits: IngestLimits) -> Result<Ingest, IngestRefused> {
    ingest::parse_json(body, &limits.into()).map(Ingest::from).map_err(IngestRefused::from)
}

/// An NDJSON `POST /ingest` body.
///
/// # Errors
/// More than `max_items` non-blank lines (`413`).
pub fn ingest_ndjson(body: &[u8], limits: IngestLimits) -> Result<Ingest, IngestRefused> {
    ingest::parse_ndjson(body, &limits.into()).map(Ingest::from).map_err(IngestRefused::from)
}
