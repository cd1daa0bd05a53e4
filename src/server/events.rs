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

use std::time::Duration;

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

/// The `events` answer for `identity`, or why there is none (an
/// `internal` error for the client).
pub(super) fn list(shared: &Shared, identity: &Identity) -> Result<String, &'static str> {
    let (reply, answer) = crossbeam_channel::bounded(1);
    shared.commands.send(Command::Events(reply)).map_err(|_| "server is stopping")?;
    let all = answer.recv_timeout(REPLY_TIMEOUT).map_err(|_| "the event list is not available")?;
    let readable = all
        .into_iter()
        .take(MAX_CHECKED)
        .filter(|e| {
            auth::authorize(shared.auth.as_ref(), &shared.metrics, identity, &e.event).is_ok()
        })
        .take(MAX_LISTED);
    Ok(events_frame(readable))
}

/// `{"type":"events","events":[{"eventId":..,"devices":N,"lastUpdate":ms},..]}`.
fn events_frame(events: impl Iterator<Item = EventSummary>) -> String {
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
        let frame = events_frame(
            [
                EventSummary { event: "e\"1".into(), devices: 2, last_ts: 1_700_000_000_123 },
                EventSummary { event: "e-2".into(), devices: 1, last_ts: 5 },
            ]
            .into_iter(),
        );
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
