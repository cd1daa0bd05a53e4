//! Entry points for the fuzz targets under `scripts/fuzz/`: thin wrappers
//! over the crate's private parsers, so that the fuzzers call the very code
//! the server runs. Not a stable API; hidden from the docs.

use crate::position::Position;
use crate::protocol;
use crate::source::{ingest, osmand, owntracks, tracker};

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

/// Why a tracker request (SPEC §10) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerRefused {
    /// `400` or `413`.
    pub status: u16,
    /// The text of the answer.
    pub message: String,
    /// Whether a position was refused (counted as rejected), rather than
    /// the body.
    pub position: bool,
}

impl From<tracker::Refused> for TrackerRefused {
    fn from(r: tracker::Refused) -> TrackerRefused {
        TrackerRefused { status: r.status(), message: r.to_string(), position: r.is_position() }
    }
}

/// The context of one tracker request: no `?event=`, receipt time 1 ms
/// past the epoch.
fn tracker_context(limits: IngestLimits) -> tracker::Context {
    tracker::Context {
        event: None,
        now_ms: 1,
        max_position_bytes: limits.max_position_bytes,
        max_items: limits.max_items,
    }
}

/// An OsmAnd request's parameters, as `GET`/`POST /ingest/osmand` reads
/// them: the URL's `query`, then a form body's.
///
/// # Errors
/// The refusal the tracker gets.
pub fn osmand_params(
    query: &[u8],
    form: &[u8],
    limits: IngestLimits,
) -> Result<ParsedPosition, TrackerRefused> {
    let params = tracker::form_pairs(query).chain(tracker::form_pairs(form));
    osmand::from_params(params, &tracker_context(limits)).map(ParsedPosition).map_err(Into::into)
}

/// The `name=value` pairs of a query or form body, decoded.
pub fn form_pairs(input: &[u8]) -> Vec<(String, String)> {
    tracker::form_pairs(input).collect()
}

/// A parsed request carrying several positions.
#[derive(Debug)]
pub struct TrackerBatch {
    /// The valid positions, in body order.
    pub positions: Vec<ParsedPosition>,
    /// The reports refused as positions.
    pub rejected: usize,
}

/// A Traccar Client 9 JSON body of `POST /ingest/osmand`.
///
/// # Errors
/// What the whole body is refused for (`400`, `413`).
pub fn osmand_json(body: &[u8], limits: IngestLimits) -> Result<TrackerBatch, TrackerRefused> {
    let batch = osmand::from_json(body, &tracker_context(limits))?;
    Ok(TrackerBatch {
        positions: batch.positions.into_iter().map(ParsedPosition).collect(),
        rejected: batch.rejected,
    })
}

/// An OwnTracks message of `POST /ingest/owntracks` from `user`/`device`
/// (the `X-Limit-U`/`X-Limit-D` headers): `Ok(Err(type))` for a message
/// answered and ignored.
///
/// # Errors
/// The refusal the app gets.
pub fn owntracks(
    body: &[u8],
    user: Option<&str>,
    device: Option<&str>,
    limits: IngestLimits,
) -> Result<Result<ParsedPosition, &'static str>, TrackerRefused> {
    let sender =
        owntracks::Sender { user: user.map(str::to_owned), device: device.map(str::to_owned) };
    match owntracks::parse(body, &sender, &tracker_context(limits))? {
        owntracks::Message::Location(p) => Ok(Ok(ParsedPosition(p))),
        owntracks::Message::Ignored(kind) => Ok(Err(kind)),
    }
}

/// What [`chunked_body`] made of its input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    /// The decoded body.
    pub body: Vec<u8>,
    /// Input bytes the body took on the wire (the rest is the next request).
    pub wire_bytes: usize,
}

/// Decodes `input` as the chunked body of a `POST`, as both HTTP ports do,
/// with `max_body_bytes` as the body bound, reading at most `step` bytes
/// per read (so that lines straddle reads).
///
/// # Errors
/// The status the request would get (`400`, `413`), or `None` when the
/// input ended before the body did (the peer closed).
pub fn chunked_body(
    input: &[u8],
    max_body_bytes: usize,
    step: usize,
) -> Result<Chunked, Option<u16>> {
    use crate::http_codec::{BodyLimits, RequestHead, read_body};
    let head = RequestHead {
        method: "POST".to_owned(),
        path: "/".to_owned(),
        query: None,
        version: 1,
        headers: vec![("Transfer-Encoding".to_owned(), "chunked".to_owned())],
    };
    let limits = BodyLimits {
        max_body_bytes,
        max_trailer_bytes: 16 * 1024,
        timeout: std::time::Duration::from_secs(60),
    };
    let mut stream = SliceStream { rest: input, step: step.max(1) };
    let mut buf = Vec::new();
    match read_body(&mut stream, &mut buf, &head, &limits) {
        Ok(body) => Ok(Chunked { body, wire_bytes: input.len() - stream.rest.len() - buf.len() }),
        Err(e) => Err(e.status()),
    }
}

/// A byte slice read `step` bytes at a time, as a socket would deliver it.
struct SliceStream<'a> {
    rest: &'a [u8],
    step: usize,
}

impl std::io::Read for SliceStream<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let n = self.step.min(out.len()).min(self.rest.len());
        let (now, later) = self.rest.split_at(n);
        out.get_mut(..n).unwrap_or_default().copy_from_slice(now);
        self.rest = later;
        Ok(n)
    }
}

impl std::io::Write for SliceStream<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl crate::http_codec::TimedRead for SliceStream<'_> {
    fn set_read_timeout(&mut self, _: Option<std::time::Duration>) -> std::io::Result<()> {
        Ok(())
    }
}
