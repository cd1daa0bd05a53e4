//! The broadcaster: the one thread that owns who is subscribed to what and
//! the latest position of every device.
//!
//! - `broadcaster.rs`: the thread's loop and the [`Command`]s it obeys;
//! - `registry.rs`: event → subscribers;
//! - `cache.rs`: latest position per device, by event, for snapshots;
//! - `answer.rs`: `subscribed` answers, one per event and cache state, cut
//!   for each trail length and freed once no queue holds them.
//!
//! Owning both in one thread makes the snapshot/live handover exact without
//! any lock on the hot path: a subscribe is registered and its snapshot
//! queued in the same step, between two batches of positions.

mod answer;
mod broadcaster;
mod cache;
mod registry;

pub(crate) use broadcaster::{Broadcaster, Command};
pub(crate) use cache::EventSummary;
