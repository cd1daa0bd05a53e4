//! Where positions come from.
//!
//! - `ingest.rs`: `POST /ingest` bodies (JSON or NDJSON), parsed on the HTTP
//!   worker thread that received them;
//! - `device_map.rs`: the `device-map` thread keeping the device→event map
//!   fresh for positions that carry no `eventId`.

pub(crate) mod device_map;
pub(crate) mod ingest;
