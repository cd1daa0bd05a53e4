//! `subscribed` answers (SPEC §3, §9 "Snapshots and their cache"): one
//! built per event and cache state, whatever trail lengths are asked, and
//! freed as soon as no queue holds it.
//!
//! An [`Answer`] is the full message with every cached trail, laid out so
//! that the answer for any shorter trail is a cut of the same bytes: per
//! device `"<id>":[f1,f2,...,fk]`, oldest first, so that keeping the `n`
//! newest frames skips one run (`f1,...,f(k-n),`) per device with more
//! than `n`. A subscriber's queue entry is its own frame header plus the
//! ranges it sends ([`Cut`]): the broadcaster's work per subscribe is one
//! range per device, its memory a few bytes per device, and 32 subscribers
//! asking 32 trail lengths share one buffer instead of holding 32.
//!
//! The broadcaster keeps built answers by event as [`Weak`] references
//! ([`Answers`]): a later subscriber to an unchanged event reuses a live
//! one, and the last queue entry to go frees it.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Weak};

use super::cache::Cache;
use crate::outbound::{Cut, Drain, Outbound, OutboundKind};
use crate::position::push_json_str;
use crate::protocol::open_subscribed_frame;

/// The end of the answers without `trails`: the root object's brace.
const CLOSE: &str = "}";
/// Kept after the full message, for the answers whose `trails` is empty.
const EMPTY_TRAILS: &str = ",\"trails\":{}}";

/// Where one device's trail frames are in [`Answer::starts`].
#[derive(Debug, Clone, Copy)]
struct Span {
    first: usize,
    count: usize,
}

/// One event's `subscribed` message with every cached trail, and where its
/// parts are, so that any trail length is a cut of it.
#[derive(Debug)]
pub(crate) struct Answer {
    /// The full message, then [`EMPTY_TRAILS`].
    bytes: Vec<u8>,
    /// End of `{"type":"subscribed",...,"positions":[...]`.
    head_end: usize,
    /// End of the full message.
    end: usize,
    /// Start of each trail frame, device after device.
    starts: Vec<usize>,
    /// Devices with a trail, in the message's order.
    devices: Vec<Span>,
    /// Positions in the snapshot.
    positions: usize,
}

impl AsRef<[u8]> for Answer {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Answer {
    /// Builds `event`'s answer from the cache, every trail whole.
    pub(crate) fn build(cache: &Cache, event: &str) -> Answer {
        let mut positions = 0;
        let mut out =
            open_subscribed_frame(event, cache.snapshot(event).inspect(|_| positions += 1));
        let head_end = out.len();
        out.push_str(",\"trails\":{");
        let mut starts = Vec::new();
        let mut devices = Vec::new();
        for (i, (device, frames)) in cache.trails(event, usize::MAX).enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, device);
            out.push_str(":[");
            let first = starts.len();
            for (j, frame) in frames.enumerate() {
                if j > 0 {
                    out.push(',');
                }
                starts.push(out.len());
                out.push_str(frame);
            }
            out.push(']');
            devices.push(Span { first, count: starts.len() - first });
        }
        out.push_str("}}");
        let end = out.len();
        out.push_str(EMPTY_TRAILS);
        Answer { bytes: out.into_bytes(), head_end, end, starts, devices, positions }
    }

    /// The ranges of the answer with at most `trail` older positions per
    /// device (no `trails` at all for `None`), and how many positions they
    /// carry.
    fn ranges(&self, trail: Option<usize>) -> (Vec<Range<usize>>, usize) {
        let n = match trail {
            None => {
                let close = self.end - CLOSE.len()..self.end;
                return (vec![0..self.head_end, close], self.positions);
            }
            Some(0) => 0,
            Some(n) if self.devices.is_empty() => n,
            Some(n) => {
                let mut ranges = Vec::new();
                let mut from = 0;
                let mut count = self.positions;
                for d in &self.devices {
                    let skip = d.count.saturating_sub(n);
                    count += d.count - skip;
                    if skip > 0 {
                        let (Some(&cut), Some(&resume)) =
                            (self.starts.get(d.first), self.starts.get(d.first + skip))
                        else {
                            continue;
                        };
                        ranges.push(from..cut);
                        from = resume;
                    }
                }
                ranges.push(from..self.end);
                return (ranges, count);
            }
        };
        debug_assert!(n == 0 || self.devices.is_empty());
        (vec![0..self.head_end, self.end..self.bytes.len()], self.positions)
    }

    /// A subscriber's queue entry: its frame header, then its cut of the
    /// shared bytes. Returns the entry and how many positions it carries.
    pub(crate) fn entry(self: &Arc<Answer>, trail: Option<usize>) -> (Outbound, usize) {
        let (ranges, count) = self.ranges(trail);
        let shared: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::clone(self) as _;
        let cut = Cut::new(shared, ranges);
        let entry = Outbound {
            kind: OutboundKind::Subscribed,
            messages: 1,
            wire: text_frame_header(cut.len()),
            last_ts: None,
            drain: Drain::new(),
            cut: Some(cut),
        };
        (entry, count)
    }
}

/// The header of an unmasked, final text frame of `len` payload bytes
/// (RFC 6455 §5.2).
#[allow(clippy::cast_possible_truncation)] // each match arm bounds the length
fn text_frame_header(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    out.push(0x81);
    match len {
        0..=125 => out.push(len as u8),
        126..=0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out
}

/// Answers built, by event, with the cache state they show; held weakly,
/// so that an answer lives exactly as long as some queue holds it.
#[derive(Debug, Default)]
pub(crate) struct Answers {
    built: HashMap<String, (u64, Weak<Answer>)>,
    /// Size of `built` past which dead entries are swept out.
    sweep_at: usize,
}

impl Answers {
    /// `event`'s answer for the cache as it is: a live one built for the
    /// same state of the event, else a new one. Returns whether it was
    /// built now.
    pub(crate) fn get(&mut self, cache: &Cache, event: &str) -> (Arc<Answer>, bool) {
        let Some(changed) = cache.changed(event) else {
            // No device: a few bytes, not worth remembering.
            self.built.remove(event);
            return (Arc::new(Answer::build(cache, event)), true);
        };
        if let Some((state, weak)) = self.built.get(event)
            && *state == changed
            && let Some(answer) = weak.upgrade()
        {
            return (answer, false);
        }
        let answer = Arc::new(Answer::build(cache, event));
        if self.built.len() >= self.sweep_at {
            self.built.retain(|_, (_, weak)| weak.strong_count() > 0);
            self.sweep_at = 2 * self.built.len() + 64;
        }
        self.built.insert(event.to_owned(), (changed, Arc::downgrade(&answer)));
        (answer, true)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};
    use tungstenite::Utf8Bytes;

    use super::*;
    use crate::position::Position;
    use crate::protocol::push_trails;

    fn put(cache: &mut Cache, event: &str, device: &str, seq: u64) {
        let p = Position::from_value(
            json!({"deviceId":device,"lat":1,"lon":2,"ts":seq,"seq":seq,"note":"a,]\"}"}),
        )
        .unwrap();
        let frame = Utf8Bytes::from(p.frame(event));
        cache.put(event, p, frame, false);
    }

    /// The message the cut sends, without its frame header.
    fn payload(entry: &Outbound) -> String {
        let bytes: Vec<u8> = entry.cut.iter().flat_map(Cut::slices).flatten().copied().collect();
        String::from_utf8(bytes).unwrap()
    }

    /// The answer built the direct way, for `trail`.
    fn reference(cache: &Cache, event: &str, trail: Option<usize>) -> String {
        let mut frame = open_subscribed_frame(event, cache.snapshot(event));
        if let Some(n) = trail {
            push_trails(&mut frame, cache.trails(event, n));
        }
        frame.push('}');
        frame
    }

    #[test]
    fn every_trail_length_is_a_cut_of_one_answer_equal_to_building_it() {
        let mut cache = Cache::new(1000, usize::MAX, 30);
        // Devices with 0, 1, 5, 30 and 31 (one dropped) older positions.
        for (d, k) in [("a", 1u64), ("b", 2), ("c", 6), ("d", 31), ("e", 32)] {
            for seq in 0..k {
                put(&mut cache, "e", d, seq);
            }
        }
        put(&mut cache, "other", "z", 1);
        let answer = Arc::new(Answer::build(&cache, "e"));
        let mut trails: Vec<Option<usize>> = (0..=31).map(Some).collect();
        trails.push(None);
        for trail in trails {
            let (entry, count) = answer.entry(trail);
            let text = payload(&entry);
            assert_eq!(text, reference(&cache, "e", trail), "trail {trail:?}");
            let v: Value = serde_json::from_str(&text).unwrap();
            let trail_positions: usize = v["trails"]
                .as_object()
                .map_or(0, |t| t.values().map(|a| a.as_array().unwrap().len()).sum());
            assert_eq!(count, 5 + trail_positions, "trail {trail:?}");
            // The frame header announces exactly the cut's length.
            let mut framed = Vec::new();
            crate::outbound::push_text_frame(&mut framed, text.as_bytes());
            assert_eq!(entry.wire, framed[..framed.len() - text.len()]);
            assert_eq!(entry.bytes(), framed.len());
        }
    }

    #[test]
    fn an_event_without_devices_or_trails_still_answers() {
        let mut cache = Cache::new(10, usize::MAX, 30);
        let empty = Arc::new(Answer::build(&cache, "none"));
        for trail in [None, Some(0), Some(3)] {
            assert_eq!(payload(&empty.entry(trail).0), reference(&cache, "none", trail));
        }
        put(&mut cache, "e", "d", 1);
        let no_trails = Arc::new(Answer::build(&cache, "e"));
        for trail in [None, Some(0), Some(3)] {
            assert_eq!(payload(&no_trails.entry(trail).0), reference(&cache, "e", trail));
        }
    }

    #[test]
    fn answers_are_shared_while_the_event_is_unchanged_and_freed_when_unheld() {
        let mut cache = Cache::new(10, usize::MAX, 30);
        let mut answers = Answers::default();
        put(&mut cache, "e", "d", 1);
        put(&mut cache, "e", "d", 2);
        let (a1, built) = answers.get(&cache, "e");
        assert!(built);
        let (a2, built) = answers.get(&cache, "e");
        assert!(!built && Arc::ptr_eq(&a1, &a2), "unchanged: the same answer");
        // Another event's change leaves this one's answer valid.
        put(&mut cache, "f", "x", 1);
        assert!(!answers.get(&cache, "e").1);
        // Entries keep it alive; once they are gone, it is freed.
        let (entry, _) = a1.entry(Some(3));
        let weak = Arc::downgrade(&a1);
        drop((a1, a2));
        assert!(weak.upgrade().is_some(), "a queued entry holds it");
        drop(entry);
        assert!(weak.upgrade().is_none(), "freed with its last entry");
        // Freed: the next subscriber builds it again, as does a change.
        let (a3, built) = answers.get(&cache, "e");
        assert!(built);
        assert!(!answers.get(&cache, "e").1);
        put(&mut cache, "e", "d", 3);
        let (a4, built) = answers.get(&cache, "e");
        assert!(built && !Arc::ptr_eq(&a3, &a4));
    }
}
