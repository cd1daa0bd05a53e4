//! A client's `{"type":"events"}`: the events that have positions and that
//! its user may read, so that a mistyped event id is told from a quiet
//! event, and a bare dashboard has something to pick from. Run on the
//! asking client's `ws-xxxxxxxx` thread.
//!
//! The broadcaster lists every event of its cache (it owns the cache, and
//! answers at once); this thread then keeps those the user may subscribe
//! to, by the same authorization a subscribe goes through (in mode
//! `directus` a Directus request per event not in the decision cache), so
//! that the list reveals no event the user could not subscribe to anyway.
//! Authorizing may block: it blocks only this client.
//!
//! Listing walks every cached device on the broadcaster thread, which
//! every client depends on; so a list is reused for [`FRESH_FOR`] by every
//! client of the server ([`Memo`]): however many ask, the broadcaster walks
//! its cache at most once a second for them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::auth::{self, Identity};
use crate::broadcast::{Command, EventSummary};
use crate::position::push_json_str;
use crate::server::Shared;

/// Most events listed: the most recently updated ones the user may read.
pub(crate) const MAX_LISTED: usize = 100;

/// Most events authorized for one list (newest first): bounds the
/// Directus requests one `events` message may cost.
const MAX_CHECKED: usize = 200;

/// Longest wait for the broadcaster's list (it answers within a cycle;
/// this is for a broadcaster that is stopping).
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a list from the broadcaster is reused: an answer may be this
/// much older than the cache.
pub(crate) const FRESH_FOR: Duration = Duration::from_secs(1);

/// The broadcaster's last list and when it came, shared (in [`Shared`]) by
/// every connection of one server.
#[derive(Debug, Default)]
pub(crate) struct Memo(Mutex<Option<(Instant, Arc<Vec<EventSummary>>)>>);

impl Memo {
    /// The list, from the memo when fresh, else asked of the broadcaster.
    /// The lock is held while asking, so that a crowd asking at once costs
    /// one walk of the cache: the others wait for it, never long (the
    /// broadcaster answers within one of its cycles).
    fn get(&self, shared: &Shared) -> Result<Arc<Vec<EventSummary>>, &'static str> {
        let mut memo = self.0.lock();
        if let Some((at, list)) = memo.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(Arc::clone(list));
        }
        let (reply, answer) = crossbeam_channel::bounded(1);
        shared.commands.send(Command::Events(reply)).map_err(|_| "server is stopping")?;
        let list = Arc::new(
            answer.recv_timeout(REPLY_TIMEOUT).map_err(|_| "the event list is not available")?,
        );
        *memo = Some((Instant::now(), Arc::clone(&list)));
        Ok(list)
    }
}

/// The `events` answer for `identity`, or why there is none (an
/// `internal` error for the client).
pub(super) fn list(shared: &Shared, identity: &Identity) -> Result<String, &'static str> {
    let all = shared.event_list.get(shared)?;
    let readable = all
        .iter()
        .take(MAX_CHECKED)
        .filter(|e| {
            auth::authorize(shared.auth.as_ref(), &shared.metrics, identity, &e.event).is_ok()
        })
        .take(MAX_LISTED);
    Ok(events_frame(readable))
}

/// `{"type":"events","events":[{"eventId":..,"devices":N,"lastUpdate":ms},..]}`.
fn events_frame<'a>(events: impl Iterator<Item = &'a EventSummary>) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"type\":\"events\",\"events\":[");
    for (i, e) in events.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"eventId\":");
        push_json_str(&mut out, &e.event);
        out.push_str(&format!(",\"devices\":{},\"lastUpdate\":{}}}", e.devices, e.last_ts));
    }
    out.push_str("]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_json_with_escaped_ids() {
        let list = [
            EventSummary { event: "e\"1".into(), devices: 2, last_ts: 1_700_000_000_123 },
            EventSummary { event: "e-2".into(), devices: 1, last_ts: 5 },
        ];
        let frame = events_frame(list.iter());
        let v: serde_json::Value = serde_json::from_str(&frame).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"events","events":[
                {"eventId":"e\"1","devices":2,"lastUpdate":1_700_000_000_123_i64},
                {"eventId":"e-2","devices":1,"lastUpdate":5},
            ]})
        );
        assert_eq!(events_frame(std::iter::empty()), r#"{"type":"events","events":[]}"#);
    }
}
