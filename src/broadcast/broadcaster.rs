//! The `broadcaster` thread's loop.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, info};
use prometheus::IntCounter;
use tungstenite::Utf8Bytes;
use uuid::Uuid;

use super::answer::Answers;
use super::cache::Cache;
use super::registry::Registry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbound::{ClientHandle, Drain, OfferError, Outbound, OutboundKind, push_text_frame};
use crate::position::{Position, now_ms};
use crate::protocol::{CloseReason, unsubscribed_frame};

/// What other threads ask of the broadcaster, in the order they ask it.
#[derive(Debug)]
pub(crate) enum Command {
    /// Validated positions from a source, in source order.
    Positions(Vec<Position>),
    /// Positions read back from the stream's tail at start: they fill the
    /// cache for devices not seen live, and are not broadcast.
    Warm(Vec<Position>),
    /// Register the client on the event and queue `subscribed` + snapshot
    /// (+ `trails` of at most `trail` older positions per device, when
    /// asked). Authorization and the bound on `trail` have already been
    /// checked by the connection thread.
    Subscribe { client: Arc<ClientHandle>, event: String, trail: Option<usize> },
    /// Unregister and queue `unsubscribed`.
    Unsubscribe { client: Arc<ClientHandle>, event: String },
    /// The client may no longer see `event` (its session was revalidated):
    /// unregister and queue `unsubscribed` with `"reason":"forbidden"`,
    /// after every position of the event routed before it.
    Forbid { client: Arc<ClientHandle>, event: String },
    /// The connection ended: forget it.
    Disconnect { id: Uuid },
    /// A new device→event map.
    DeviceMap(Arc<HashMap<String, String>>),
    /// Every event with positions, newest first, sent at once into the
    /// channel (bounded, never blocks): a client's `events`, whose
    /// connection thread filters it by what its user may read.
    Events(crossbeam_channel::Sender<Vec<super::EventSummary>>),
    /// Leave the loop.
    Shutdown,
}

/// How many commands one cycle takes before it looks at due flushes, so
/// that a flood of positions still reaches clients in bounded steps.
const MAX_COMMANDS_PER_CYCLE: usize = 256;

/// The scale of the flush interval: an event whose fan-out costs `w`
/// waits `sqrt(PACE * w)` between flushes, or [`CHEAP_PACE`] times `w` when
/// that is shorter (at most the configured cap).
///
/// The interval counts from the end of the previous flush's offers, which
/// on a busy core is the end of its wave of wake-ups, so an event is
/// flushed every `w + interval` and its fan-out takes `w / (w + interval)`
/// of a core, while a position waits up to `interval + w`. A square root
/// spends latency where it buys CPU: measured on the 2-core benchmark
/// machine (server pinned to one core) before write-through, waking 1,000
/// subscribers cost ~25 ms (interval ~11 ms: about 28 flushes/s, the core
/// two-thirds busy; a longer interval would save little CPU and cost
/// latency the wave already spends: with a linear rule capped at 20 ms the
/// same load ran at 56 % CPU but p99 70 ms); the scale was 5 ms then.
///
/// With write-through a fan-out to idle clients costs the broadcaster's
/// own writes, 4.5 to 7 µs each: 1,000 subscribers ~4.5–7 ms (interval
/// ~3–3.7 ms), 100 ~0.6 ms. At 1,000 clients × 100 single-position
/// POSTs/s the 5 ms scale merged nothing (392 flushes for 400 POSTs, mean
/// interval 4.6 ms: the broadcaster is far from busy) and only delayed
/// positions: 2 ms gave p99 14.3–14.6 ms at 45–46 % CPU against 16.9–21.0
/// ms at 47–52 % (quick runs, two each). An overloaded event stays bounded:
/// 1,000 subscribers at 500 POSTs/s flush about every 8 ms, some 55 % of
/// a core of writes. The README's "Fan-out cadence" gives the runs behind
/// these figures.
const PACE: Duration = Duration::from_millis(2);

/// Below `PACE / CHEAP_PACE²` of fan-out cost (0.9 ms), the interval is
/// `CHEAP_PACE × w` instead of the square root, which there is the
/// longer: a cheap fan-out then takes at most 40 % of a core, and its
/// positions wait less. Measured with write-through, quick benchmark runs
/// on the 2-core machine (100 clients × 500 single-position POSTs/s, where
/// `w` is ~0.6 ms), with the 5 ms scale of [`PACE`]: p99 1.9–2.3 ms
/// instead of 3.0–4.0 ms at the same CPU (20–23 %). A linear rule
/// everywhere (1.5 `w`) cut the CPU of 1,000 clients × 100 POSTs/s from
/// 46 % to 36 % but raised its p99 from ~20–25 ms to 34–43 ms.
const CHEAP_PACE: f64 = 1.5;

/// Weight of the newest fan-out cost in its running average (1/4): one
/// preempted fan-out does not stretch the interval on its own.
const COST_SMOOTHING: u32 = 4;

/// `sqrt(PACE * cost)` or `CHEAP_PACE * cost`, whichever is shorter, in
/// whole microseconds.
fn interval_for(cost: Duration) -> Duration {
    let product = PACE.as_micros().saturating_mul(cost.as_micros());
    let root = Duration::from_micros(u64::try_from(product.isqrt()).unwrap_or(u64::MAX));
    root.min(cost.mul_f64(CHEAP_PACE))
}

/// Longest a flush writes into sockets itself: past it, the remaining
/// subscribers are queued and woken as before write-through, so that one
/// flush to thousands of idle clients holds the cycle (other events'
/// flushes, subscribes) for about this long plus half a microsecond per
/// remaining client, not for all of their writes.
///
/// Measured on the 2-core machine (`flush_time_at_many_idle_subscribers`,
/// release, CPU time of the broadcaster): a write-through costs 5.7 to 7.3
/// µs per subscriber, a wake-up about 0.5 µs of the broadcaster's time
/// (and some 15 to 20 µs of the machine's, in the woken thread). All
/// written through, a flush to 10,000 idle subscribers would take about
/// 70 ms; with this budget about 15. 10 ms keeps a flush to an event of
/// 1,000 to 1,400 subscribers (about 7 ms) wholly written through, where
/// write-through saves the most; past that the broadcaster's latency for
/// every other event outweighs the CPU saved.
const WRITE_THROUGH_BUDGET: Duration = Duration::from_millis(10);

/// The clock is read once per this many subscribers of a flush.
const BUDGET_CHECK_EVERY: usize = 16;

/// Frames for one event gathered since its last flush.
#[derive(Debug, Default)]
struct Pending {
    /// WebSocket frames, back to back.
    wire: Vec<u8>,
    messages: usize,
    last_ts: Option<i64>,
}

/// One event's fan-out pacing: what waits, when it last went out, what
/// that cost.
#[derive(Debug, Default)]
struct Lane {
    pending: Pending,
    last_flush: Option<Instant>,
    /// The entry of the last flush, whose drain clock tells what it cost.
    last_entry: Option<Arc<Outbound>>,
    /// Running average of completed fan-out costs.
    cost: Duration,
    /// Where the next flush starts in the subscriber list, so that the
    /// clients past the write-through budget are not always the same.
    turn: usize,
}

impl Lane {
    /// The shortest time between two flushes of this event now:
    /// [`interval_for`] its fan-out cost, at most `max_delay`. A fan-out
    /// still under way counts with the time it has taken so far.
    fn interval(&mut self, max_delay: Duration) -> Duration {
        let mut cost = self.cost;
        if let Some(entry) = &self.last_entry {
            match entry.drain.elapsed() {
                Ok(took) => {
                    self.cost = (self.cost * (COST_SMOOTHING - 1) + took) / COST_SMOOTHING;
                    cost = self.cost;
                    self.last_entry = None;
                }
                Err(so_far) => cost = cost.max(so_far),
            }
        }
        interval_for(cost).min(max_delay)
    }

    /// When the pending frames may go out, if any wait (`now` when this
    /// event never flushed).
    fn due(&mut self, max_delay: Duration, now: Instant) -> Option<Instant> {
        if self.pending.messages == 0 {
            return None;
        }
        match self.last_flush {
            None => Some(now),
            Some(last) => Some(last + self.interval(max_delay)),
        }
    }
}

/// State owned by the broadcaster thread.
#[derive(Debug)]
pub(crate) struct Broadcaster {
    registry: Registry,
    cache: Cache,
    device_map: Arc<HashMap<String, String>>,
    /// Events with subscribers, and the pacing of their fan-out.
    lanes: HashMap<String, Lane>,
    /// `subscribed` answers built, held weakly (see `answer.rs`).
    answers: Answers,
    metrics: Metrics,
    /// `livecast_outbound_messages_total` by [`OutboundKind`] (position,
    /// subscribed, unsubscribed), resolved once instead of per delivery.
    outbound: (IntCounter, IntCounter, IntCounter),
    byte_limit: usize,
    max_delay: Duration,
    /// [`WRITE_THROUGH_BUDGET`]; a field so that a measurement can lift it.
    write_budget: Duration,
}

impl Broadcaster {
    pub(crate) fn new(metrics: Metrics, config: &Config) -> Broadcaster {
        Broadcaster {
            registry: Registry::default(),
            cache: Cache::new(
                config.cache_max_devices,
                config.cache_max_bytes,
                config.trail_length,
            ),
            device_map: Arc::default(),
            lanes: HashMap::new(),
            answers: Answers::default(),
            outbound: (
                metrics.outbound_messages.with_label_values(&[OutboundKind::Position.label()]),
                metrics.outbound_messages.with_label_values(&[OutboundKind::Subscribed.label()]),
                metrics.outbound_messages.with_label_values(&[OutboundKind::Unsubscribed.label()]),
            ),
            metrics,
            byte_limit: config.backpressure_threshold_bytes,
            max_delay: config.broadcast_max_delay,
            write_budget: WRITE_THROUGH_BUDGET,
        }
    }

    /// Runs until [`Command::Shutdown`] or until every sender is gone.
    ///
    /// Blocks in `recv` while there is nothing to do, or until the earliest
    /// event whose positions wait for their flush is due; never blocks on a
    /// client.
    pub(crate) fn run(mut self, commands: &Receiver<Command>) {
        loop {
            let first = match self.next_due() {
                None => commands.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(due) => commands.recv_deadline(due),
            };
            let mut next = match first {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut taken = 0;
            while let Some(command) = next.take() {
                if matches!(command, Command::Shutdown) {
                    self.flush_all();
                    info!("broadcaster stopped");
                    return;
                }
                self.handle(command);
                taken += 1;
                if taken < MAX_COMMANDS_PER_CYCLE {
                    next = commands.try_recv().ok();
                }
            }
            self.flush_due();
        }
        self.flush_all();
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Positions(positions) => {
                for p in positions {
                    self.position(p);
                }
            }
            Command::Warm(positions) => self.warm(positions),
            // A client that sends nothing more (closed for back-pressure,
            // or closing) is never registered again.
            Command::Subscribe { client, .. } if client.is_closing() => {}
            Command::Subscribe { client, event, trail } => {
                // Everything routed to this event before the subscribe goes
                // out first, so the snapshot below is exactly where the live
                // stream starts.
                self.flush_event(&event);
                let started = Instant::now();
                self.registry.add(&event, &client);
                // Gauges first: once the client reads its answer, they agree.
                self.update_gauge();
                let answer = self.subscribed_answer(&event, trail);
                self.metrics.snapshot_duration.observe(started.elapsed().as_secs_f64());
                self.deliver(&client, &answer);
            }
            Command::Unsubscribe { client, event } => {
                let frame = unsubscribed_frame(&event);
                self.unsubscribe(&client, &event, &frame);
            }
            Command::Forbid { client, event } => {
                let frame = serde_json::json!({
                    "type": "unsubscribed",
                    "eventId": event,
                    "reason": "forbidden",
                });
                self.unsubscribe(&client, &event, &frame.to_string());
            }
            Command::Disconnect { id } => self.remove_client(id),
            Command::DeviceMap(map) => {
                self.device_map = map;
                for (event, position) in self.cache.remap(&self.device_map) {
                    debug!("device {} moved to event {event}", position.device_id);
                    self.route(&event, position, true);
                }
                self.update_cache_gauges();
            }
            Command::Events(reply) => {
                let _ = reply.try_send(self.cache.event_summaries());
            }
            Command::Shutdown => {}
        }
    }

    /// Unregisters `client` from `event` and queues `frame` (an
    /// `unsubscribed`) behind the event's positions routed so far: nothing
    /// of the event follows it.
    fn unsubscribe(&mut self, client: &Arc<ClientHandle>, event: &str, frame: &str) {
        self.flush_event(event);
        self.registry.remove(event, client.id);
        self.forget_if_unwatched(event);
        self.update_gauge();
        self.deliver(client, &Arc::new(Outbound::single(OutboundKind::Unsubscribed, frame)));
    }

    /// The `subscribed` answer for `event` with `trail`: cut from the
    /// event's one answer for the cache as it is (built now if no queue
    /// holds one), so that its cost here is a range per device, whatever
    /// trail lengths other subscribers asked.
    fn subscribed_answer(&mut self, event: &str, trail: Option<usize>) -> Arc<Outbound> {
        let (answer, built) = self.answers.get(&self.cache, event);
        if built {
            self.metrics.snapshot_builds.inc();
        }
        let (entry, count) = answer.entry(trail);
        #[allow(clippy::cast_precision_loss)] // a count of positions
        self.metrics.snapshot_positions.observe(count as f64);
        Arc::new(entry)
    }

    /// Fills the cache from the stream's tail (oldest first), for devices
    /// not seen live: their latest position and their trail.
    fn warm(&mut self, positions: Vec<Position>) {
        let mut warmed = HashSet::new();
        for p in positions {
            if self.cache.has_device(&p.device_id) && !warmed.contains(&p.device_id) {
                continue;
            }
            let (event, via_map) = match &p.event_id {
                Some(event) => (event.clone(), false),
                None => match self.device_map.get(&p.device_id) {
                    Some(event) => (event.clone(), true),
                    None => continue,
                },
            };
            warmed.insert(p.device_id.clone());
            let frame = Utf8Bytes::from(p.frame(&event));
            self.put(&event, p, frame, via_map);
        }
        self.update_cache_gauges();
    }

    /// Routes one position: its own `eventId`, else the device map.
    fn position(&mut self, p: Position) {
        let now = now_ms();
        #[allow(clippy::cast_precision_loss)] // lag in ms fits an f64 exactly
        self.metrics.broadcast_lag.observe((now - p.ts_ms).max(0) as f64 / 1000.0);
        if let Some(event) = p.event_id.clone() {
            self.route(&event, p, false);
        } else if let Some(event) = self.device_map.get(&p.device_id).cloned() {
            self.route(&event, p, true);
        } else {
            self.metrics.positions_unrouted.inc();
        }
    }

    fn route(&mut self, event: &str, p: Position, via_map: bool) {
        let frame = Utf8Bytes::from(p.frame(event));
        self.metrics.positions_broadcast.inc();
        if self.registry.has_subscribers(event) {
            let lane = match self.lanes.get_mut(event) {
                Some(lane) => lane,
                None => self.lanes.entry(event.to_owned()).or_default(),
            };
            push_text_frame(&mut lane.pending.wire, frame.as_bytes());
            lane.pending.messages += 1;
            lane.pending.last_ts = Some(p.ts_ms);
        }
        self.put(event, p, frame, via_map);
        self.update_cache_gauges();
    }

    fn put(&mut self, event: &str, p: Position, frame: Utf8Bytes, via_map: bool) {
        let outcome = self.cache.put(event, p, frame, via_map);
        if outcome.evicted > 0 {
            self.metrics.cache_evictions.inc_by(outcome.evicted);
        }
    }

    /// The earliest moment an event's waiting positions are due.
    fn next_due(&mut self) -> Option<Instant> {
        let (max_delay, now) = (self.max_delay, Instant::now());
        self.lanes.values_mut().filter_map(|lane| lane.due(max_delay, now)).min()
    }

    /// Flushes every event whose interval since its last flush is up.
    fn flush_due(&mut self) {
        let now = Instant::now();
        let max_delay = self.max_delay;
        let due: Vec<String> = self
            .lanes
            .iter_mut()
            .filter_map(|(event, lane)| {
                lane.due(max_delay, now).is_some_and(|due| due <= now).then(|| event.clone())
            })
            .collect();
        for event in due {
            self.flush_event(&event);
        }
    }

    fn flush_all(&mut self) {
        let events: Vec<String> = self.lanes.keys().cloned().collect();
        for event in events {
            self.flush_event(&event);
        }
    }

    /// Hands `event`'s pending frames to its subscribers: one shared entry,
    /// written into the socket of each sleeping subscriber that owes
    /// nothing (write-through), queued for the others; for at most
    /// [`WRITE_THROUGH_BUDGET`], past which the rest are queued and woken.
    fn flush_event(&mut self, event: &str) {
        let max_delay = self.max_delay;
        let Some(lane) = self.lanes.get_mut(event) else { return };
        if lane.pending.messages == 0 {
            return;
        }
        let interval = lane.interval(max_delay);
        let batch = std::mem::take(&mut lane.pending);
        let entry = Arc::new(Outbound {
            kind: OutboundKind::Position,
            messages: batch.messages,
            wire: batch.wire,
            last_ts: batch.last_ts,
            drain: Drain::new(),
            cut: None,
        });
        let mut failed = Vec::new();
        let mut delivered = 0;
        let (mut woken, mut written) = (0, 0);
        let subscribers = self.registry.subscribers(event);
        let start = lane.turn % subscribers.len().max(1);
        lane.turn = lane.turn.wrapping_add(1);
        let (later, first) = subscribers.split_at(start);
        let budget_end = Instant::now() + self.write_budget;
        let mut may_write = true;
        for (i, client) in first.iter().chain(later).enumerate() {
            if may_write && i % BUDGET_CHECK_EVERY == BUDGET_CHECK_EVERY - 1 {
                may_write = Instant::now() < budget_end;
            }
            match client.offer_position(&entry, self.byte_limit, may_write) {
                Ok(delivery) => {
                    delivered += 1;
                    woken += u64::from(delivery.woke());
                    written += u64::from(delivery.wrote());
                }
                Err(e) => failed.push((Arc::clone(client), e)),
            }
        }
        entry.drain.offered(delivered);
        lane.last_flush = Some(Instant::now());
        lane.last_entry = Some(Arc::clone(&entry));
        let n = delivered as u64 * entry.messages as u64;
        self.outbound(OutboundKind::Position).inc_by(n);
        self.metrics.fanout_deliveries.inc_by(n);
        self.metrics.broadcast_flushes.inc();
        self.metrics.broadcast_wakeups.inc_by(woken);
        self.metrics.fanout_direct_writes.inc_by(written);
        self.metrics.broadcast_flush_interval.observe(interval.as_secs_f64());
        for (client, e) in failed {
            self.failed(&client, e);
        }
        self.forget_if_unwatched(event);
    }

    /// Queues `entry` for `client`, closing it on overflow.
    fn deliver(&mut self, client: &Arc<ClientHandle>, entry: &Arc<Outbound>) {
        match client.offer(entry, self.byte_limit) {
            Ok(woke) => {
                self.outbound(entry.kind).inc_by(entry.messages as u64);
                self.metrics.broadcast_wakeups.inc_by(u64::from(woke));
            }
            Err(e) => self.failed(client, e),
        }
    }

    /// A client whose queue overflowed is closed with 1008; a client whose
    /// thread is gone is forgotten.
    fn failed(&mut self, client: &Arc<ClientHandle>, error: OfferError) {
        if error == OfferError::Overflow {
            debug!("{} {}: back-pressure, closing", client.thread_name, client.remote);
            // Once per connection, whoever saw it first (the broadcaster
            // here, or the thread for its own bytes or its write deadline).
            if client.mark_backpressure() {
                self.metrics.backpressure_closes.inc();
            }
            client.request_close(CloseReason::BackPressure);
        }
        self.remove_client(client.id);
    }

    fn remove_client(&mut self, id: Uuid) {
        for event in self.registry.remove_client(id) {
            self.forget_if_unwatched(&event);
        }
        self.update_gauge();
    }

    /// Drops the lane of an event nobody watches any more (its pending
    /// frames have no reader).
    fn forget_if_unwatched(&mut self, event: &str) {
        if !self.registry.has_subscribers(event) {
            self.lanes.remove(event);
        }
    }

    fn outbound(&self, kind: OutboundKind) -> &IntCounter {
        match kind {
            OutboundKind::Position => &self.outbound.0,
            OutboundKind::Subscribed => &self.outbound.1,
            OutboundKind::Unsubscribed => &self.outbound.2,
        }
    }

    fn update_gauge(&self) {
        self.metrics.subscriptions.set(i64::try_from(self.registry.total()).unwrap_or(i64::MAX));
    }

    fn update_cache_gauges(&self) {
        self.metrics.cache_devices.set(i64::try_from(self.cache.devices_len()).unwrap_or(i64::MAX));
        self.metrics
            .trail_positions
            .set(i64::try_from(self.cache.trail_positions()).unwrap_or(i64::MAX));
        self.metrics.cache_bytes.set(i64::try_from(self.cache.bytes()).unwrap_or(i64::MAX));
    }
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};

    use crossbeam_channel::Receiver;
    use serde_json::json;

    use super::*;

    fn client() -> (Arc<ClientHandle>, Receiver<Arc<Outbound>>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (handle, rx) =
            ClientHandle::new(Uuid::new_v4(), socket.local_addr().unwrap(), "u".into(), 4).unwrap();
        (handle, rx, socket)
    }

    fn position(device: &str, seq: u64) -> Position {
        Position::from_value(
            json!({"eventId":"e","deviceId":device,"lat":1,"lon":2,"ts":3,"seq":seq}),
        )
        .unwrap()
    }

    /// An entry's bytes (frame headers included) as text.
    fn text(entry: &Outbound) -> String {
        String::from_utf8_lossy(&entry.slices().flatten().copied().collect::<Vec<u8>>())
            .into_owned()
    }

    fn broadcaster() -> Broadcaster {
        Broadcaster::new(Metrics::new().unwrap(), &Config::default())
    }

    #[test]
    fn a_batch_is_framed_once_and_shared_by_every_subscriber() {
        let mut b = broadcaster();
        let (c1, rx1, _s1) = client();
        let (c2, rx2, _s2) = client();
        for c in [&c1, &c2] {
            b.handle(Command::Subscribe { client: Arc::clone(c), event: "e".into(), trail: None });
        }
        for rx in [&rx1, &rx2] {
            assert_eq!(rx.try_recv().unwrap().kind, OutboundKind::Subscribed);
        }
        b.handle(Command::Positions(vec![position("d", 1), position("d", 2)]));
        b.flush_all();
        let (e1, e2) = (rx1.try_recv().unwrap(), rx2.try_recv().unwrap());
        assert!(Arc::ptr_eq(&e1, &e2), "one allocation for all subscribers");
        assert_eq!(e1.messages, 2);
        assert!(rx1.try_recv().is_err(), "one entry per event per cycle");
    }

    #[test]
    fn the_snapshot_includes_exactly_what_came_before_the_subscribe() {
        let mut b = broadcaster();
        let (early, rx_early, _s1) = client();
        b.handle(Command::Subscribe { client: Arc::clone(&early), event: "e".into(), trail: None });
        let _ = rx_early.try_recv();
        let (late, rx_late, _s2) = client();
        // Same cycle: a position, the late subscribe, another position.
        b.handle(Command::Positions(vec![position("d", 1)]));
        b.handle(Command::Subscribe { client: Arc::clone(&late), event: "e".into(), trail: None });
        b.handle(Command::Positions(vec![position("d", 2)]));
        b.flush_all();
        let snapshot = rx_late.try_recv().unwrap();
        let shown = text(&snapshot);
        assert!(shown.contains("\"seq\":1") && !shown.contains("\"seq\":2"), "{shown}");
        let live = rx_late.try_recv().unwrap();
        let shown = text(&live);
        assert!(shown.contains("\"seq\":2") && !shown.contains("\"seq\":1"), "{shown}");
        // The early subscriber saw both, in two entries, in order.
        let seqs: Vec<String> = rx_early.try_iter().map(|e| text(&e)).collect();
        assert_eq!(seqs.len(), 2);
        assert!(seqs[0].contains("\"seq\":1") && seqs[1].contains("\"seq\":2"));
    }

    #[test]
    fn a_full_queue_closes_that_client_only() {
        let mut b = broadcaster();
        let (slow, _rx_slow, _s1) = client();
        let (fast, rx_fast, _s2) = client();
        for c in [&slow, &fast] {
            b.handle(Command::Subscribe { client: Arc::clone(c), event: "e".into(), trail: None });
        }
        for seq in 0..10 {
            b.handle(Command::Positions(vec![position("d", seq)]));
            b.flush_all();
            while rx_fast.try_recv().is_ok() {}
        }
        assert_eq!(slow.take_close_request(), Some(CloseReason::BackPressure));
        assert_eq!(fast.take_close_request(), None);
        assert_eq!(b.registry.total(), 1);
    }

    /// Subscribes `client` to `e` and takes its `subscribed` answer.
    fn subscribe(b: &mut Broadcaster, client: &Arc<ClientHandle>, rx: &Receiver<Arc<Outbound>>) {
        b.handle(Command::Subscribe { client: Arc::clone(client), event: "e".into(), trail: None });
        assert_eq!(rx.try_recv().unwrap().kind, OutboundKind::Subscribed);
    }

    #[test]
    fn a_lone_position_on_a_quiet_event_goes_out_at_once() {
        let mut b = broadcaster();
        let (c, rx, _s) = client();
        subscribe(&mut b, &c, &rx);
        b.handle(Command::Positions(vec![position("d", 1)]));
        b.flush_due();
        assert_eq!(rx.try_recv().unwrap().messages, 1, "never flushed before: at once");
        // A costly event whose last flush is older than its interval: at once too.
        let lane = b.lanes.get_mut("e").unwrap();
        lane.cost = Duration::from_millis(4);
        lane.last_flush = Some(Instant::now() - Duration::from_secs(1));
        b.handle(Command::Positions(vec![position("d", 2)]));
        b.flush_due();
        assert_eq!(rx.try_recv().unwrap().messages, 1);
    }

    #[test]
    fn a_costly_fan_out_holds_positions_until_its_interval_is_up() {
        let mut b = broadcaster();
        let (c, rx, _s) = client();
        subscribe(&mut b, &c, &rx);
        b.handle(Command::Positions(vec![position("d", 1)]));
        b.flush_due();
        c.taken(&rx.try_recv().unwrap());
        let lane = b.lanes.get_mut("e").unwrap();
        lane.last_entry = None;
        lane.cost = Duration::from_millis(3);
        let last = lane.last_flush.unwrap();
        b.handle(Command::Positions(vec![position("d", 2)]));
        b.handle(Command::Positions(vec![position("d", 3)]));
        b.flush_due();
        assert!(rx.try_recv().is_err(), "held: the interval is not up");
        let due = b.next_due().unwrap();
        assert_eq!(due - last, interval_for(Duration::from_millis(3)));
        assert_eq!(interval_for(Duration::from_millis(3)), Duration::from_micros(2449));
        // A cheap fan-out waits one and a half times its cost.
        assert_eq!(interval_for(Duration::from_micros(600)), Duration::from_micros(900));
        // Once the interval is up, both go out in one entry.
        b.lanes.get_mut("e").unwrap().last_flush = Some(last - Duration::from_millis(20));
        b.flush_due();
        assert_eq!(rx.try_recv().unwrap().messages, 2);
        assert_eq!(b.next_due(), None, "nothing waits");
    }

    #[test]
    fn the_interval_is_capped_and_counts_a_fan_out_still_under_way() {
        let mut b = broadcaster();
        let (c, rx, _s) = client();
        subscribe(&mut b, &c, &rx);
        b.handle(Command::Positions(vec![position("d", 1)]));
        b.flush_due();
        // The entry is not taken: the fan-out is still under way, and its
        // cost so far (an hour, here) stretches the interval to the cap.
        let lane = b.lanes.get_mut("e").unwrap();
        let last = lane.last_flush.unwrap();
        lane.last_entry = Some(Arc::new(Outbound {
            kind: OutboundKind::Position,
            messages: 1,
            wire: Vec::new(),
            last_ts: None,
            drain: Drain::new(),
            cut: None,
        }));
        lane.cost = Duration::from_secs(3600);
        b.handle(Command::Positions(vec![position("d", 2)]));
        assert_eq!(b.next_due().unwrap() - last, Config::default().broadcast_max_delay);
    }

    #[test]
    fn a_subscribe_flushes_its_event_at_once_for_an_exact_handover() {
        let mut b = broadcaster();
        let (early, rx_early, _s1) = client();
        subscribe(&mut b, &early, &rx_early);
        b.handle(Command::Positions(vec![position("d", 1)]));
        b.flush_due();
        let _ = rx_early.try_recv().unwrap();
        b.lanes.get_mut("e").unwrap().cost = Duration::from_millis(5);
        b.handle(Command::Positions(vec![position("d", 2)]));
        b.flush_due();
        assert!(rx_early.try_recv().is_err(), "held by the interval");
        let (late, rx_late, _s2) = client();
        b.handle(Command::Subscribe { client: Arc::clone(&late), event: "e".into(), trail: None });
        let held = rx_early.try_recv().unwrap();
        assert!(text(&held).contains("\"seq\":2"));
        let snapshot = rx_late.try_recv().unwrap();
        assert!(text(&snapshot).contains("\"seq\":2"));
        assert!(rx_late.try_recv().is_err(), "seq 2 is in the snapshot, not sent again");
    }

    #[test]
    fn an_event_nobody_watches_keeps_no_lane() {
        let mut b = broadcaster();
        let (c, rx, _s) = client();
        subscribe(&mut b, &c, &rx);
        b.handle(Command::Positions(vec![position("d", 1)]));
        assert!(b.lanes.contains_key("e"));
        b.handle(Command::Disconnect { id: c.id });
        assert!(b.lanes.is_empty());
        assert_eq!(b.next_due(), None);
    }

    #[test]
    fn a_snapshot_over_the_byte_threshold_is_delivered() {
        let config = Config { backpressure_threshold_bytes: 64, ..Config::default() };
        let mut b = Broadcaster::new(Metrics::new().unwrap(), &config);
        for seq in 0..20 {
            b.handle(Command::Positions(vec![position(&format!("d{seq}"), seq)]));
        }
        let (c, rx, _s) = client();
        b.handle(Command::Subscribe { client: Arc::clone(&c), event: "e".into(), trail: None });
        let snapshot = rx.try_recv().unwrap();
        assert!(snapshot.bytes() > 64);
        assert_eq!(c.take_close_request(), None, "the first entry of an empty queue fits");
    }

    #[test]
    fn past_the_device_cap_the_stalest_device_is_evicted_and_counted() {
        let config = Config { cache_max_devices: 2, ..Config::default() };
        let metrics = Metrics::new().unwrap();
        let mut b = Broadcaster::new(metrics.clone(), &config);
        for d in ["d1", "d2", "d3"] {
            b.handle(Command::Positions(vec![position(d, 1)]));
        }
        assert_eq!(metrics.cache_evictions.get(), 1);
        assert_eq!(metrics.cache_devices.get(), 2);
        assert!(!b.cache.has_device("d1"));
    }

    #[test]
    fn subscribers_of_an_unchanged_event_share_one_answer_whatever_their_trails() {
        let metrics = Metrics::new().unwrap();
        let mut b = Broadcaster::new(metrics.clone(), &Config::default());
        b.handle(Command::Positions(vec![position("d", 1), position("d", 2), position("d", 3)]));
        let (c1, rx1, _s1) = client();
        let (c2, rx2, _s2) = client();
        let (c3, rx3, _s3) = client();
        for (c, trail) in [(&c1, Some(5)), (&c2, Some(1)), (&c3, None)] {
            b.handle(Command::Subscribe { client: Arc::clone(c), event: "e".into(), trail });
        }
        assert_eq!(metrics.snapshot_builds.get(), 1, "built once for three trail lengths");
        let (a1, a2, a3) =
            (rx1.try_recv().unwrap(), rx2.try_recv().unwrap(), rx3.try_recv().unwrap());
        let t1 = text(&a1);
        assert!(t1.contains("\"trails\"") && t1.contains("\"seq\":1"), "{t1}");
        let t2 = text(&a2);
        assert!(t2.contains("\"trails\"") && !t2.contains("\"seq\":1"), "{t2}");
        assert!(!text(&a3).contains("trails"));
        // Unrelated changes keep the answer; a change of the event builds anew.
        b.handle(Command::Positions(vec![
            Position::from_value(json!({"eventId":"other","deviceId":"x","lat":1,"lon":2,"ts":3}))
                .unwrap(),
        ]));
        b.handle(Command::Subscribe { client: Arc::clone(&c3), event: "e".into(), trail: Some(2) });
        assert_eq!(metrics.snapshot_builds.get(), 1);
        let _ = rx3.try_recv().unwrap();
        b.handle(Command::Positions(vec![position("d", 4)]));
        b.flush_all();
        let _ = rx3.try_recv().unwrap();
        b.handle(Command::Subscribe { client: Arc::clone(&c3), event: "e".into(), trail: Some(2) });
        assert_eq!(metrics.snapshot_builds.get(), 2);
        assert!(text(&rx3.try_recv().unwrap()).contains("\"seq\":4"));
        // That answer was taken and dropped: nothing holds it, it is gone,
        // and the next subscriber builds it again.
        b.handle(Command::Subscribe { client: Arc::clone(&c1), event: "e".into(), trail: Some(2) });
        assert_eq!(metrics.snapshot_builds.get(), 3);
        drop((a1, a2, a3));
    }

    /// Wall time of one flush to `n` idle subscribers (asleep, owing
    /// nothing, each with its own loopback TCP socket whose peer is open),
    /// with the write-through budget lifted and as configured. A
    /// measurement, not a check: run it in release,
    /// `cargo test --release --lib -- --ignored --nocapture flush_time`.
    /// Three descriptors per subscriber: the default limit of 20,000 open
    /// files allows about 6,000.
    /// CPU time of the calling thread so far (`/proc/thread-self/schedstat`,
    /// nanoseconds), so that a measurement on a busy machine leaves out the
    /// time the thread waited for a core.
    fn thread_cpu() -> Duration {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
        Duration::from_nanos(stat.split_whitespace().next().unwrap().parse().unwrap())
    }

    #[test]
    #[ignore = "a measurement, run by hand in release"]
    fn flush_time_at_many_idle_subscribers() {
        use crate::outbound::SharedSocket;

        const ROUNDS: usize = 15;
        for n in [100usize, 1000, 2500, 5000] {
            for budget in [Duration::from_secs(3600), WRITE_THROUGH_BUDGET] {
                let metrics = Metrics::new().unwrap();
                let mut b = Broadcaster::new(metrics.clone(), &Config::default());
                b.write_budget = budget;
                let mut clients = Vec::new();
                for _ in 0..n {
                    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                    let peer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                    let (ours, remote) = listener.accept().unwrap();
                    ours.set_nonblocking(true).unwrap();
                    let (c, rx) = ClientHandle::new(Uuid::new_v4(), remote, "u".into(), 4).unwrap();
                    c.set_direct(SharedSocket::new(ours));
                    b.handle(Command::Subscribe {
                        client: Arc::clone(&c),
                        event: "e".into(),
                        trail: None,
                    });
                    clients.push((c, rx, peer));
                }
                let mut took = Vec::new();
                let mut cpu = Duration::ZERO;
                for seq in 0..ROUNDS as u64 {
                    // Everyone idle: queues taken, asleep.
                    for (c, rx, _) in &clients {
                        while let Ok(e) = rx.try_recv() {
                            c.taken(&e);
                        }
                        assert!(c.prepare_sleep(true));
                    }
                    b.handle(Command::Positions(vec![position("d", seq)]));
                    let (started, cpu_before) = (Instant::now(), thread_cpu());
                    b.flush_all();
                    took.push(started.elapsed());
                    cpu += thread_cpu() - cpu_before;
                }
                took.sort();
                let median = took[ROUNDS / 2];
                let direct = metrics.fanout_direct_writes.get();
                let woken = metrics.broadcast_wakeups.get();
                #[allow(clippy::cast_precision_loss)] // a measurement
                let per = cpu.as_secs_f64() * 1e6 / (n * ROUNDS) as f64;
                println!(
                    "{n} subscribers, budget {budget:?}: flush wall median {median:?}, max {:?}; \
                     CPU {per:.1} us per subscriber; {direct} written through, {woken} woken \
                     in {ROUNDS} flushes",
                    took[ROUNDS - 1]
                );
            }
        }
    }
}
