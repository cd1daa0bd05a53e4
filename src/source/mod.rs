//! Where positions come from.
//!
//! - `ingest.rs`: `POST /ingest` bodies (JSON or NDJSON), parsed on the HTTP
//!   worker thread that received them;
//! - `redis.rs`: the `redis-source` thread reading the Redis Stream with
//!   this instance's consumer group, and the sink appending ingested
//!   positions to the stream;
//! - `osmand.rs`, `owntracks.rs`: the trackers' own protocols on the HTTP
//!   port (`/ingest/osmand`, `/ingest/owntracks`), with what they share in
//!   `tracker.rs`, parsed on the HTTP worker thread like ingest bodies;
//! - `device_map.rs`: the `device-map` thread keeping the device→event map
//!   fresh for positions that carry no `eventId`.

pub(crate) mod device_map;
pub(crate) mod ingest;
pub(crate) mod osmand;
pub(crate) mod owntracks;
pub(crate) mod redis;
pub(crate) mod tracker;
