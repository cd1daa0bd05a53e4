//! The `broadcaster` thread's loop.

use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::{debug, info};
use prometheus::IntCounter;
use tungstenite::Utf8Bytes;
use uuid::Uuid;

use super::cache::Cache;
use super::registry::Registry;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbound::{ClientHandle, Drain, OfferError, Outbound, OutboundKind, push_text_frame};
use crate::position::{Position, now_ms};
use crate::protocol::{CloseReason, open_subscribed_frame, push_trails, unsubscribed_frame};

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
/// waits `sqrt(PACE * w)` between flushes (at most the configured cap).
///
/// The interval counts from the end of the previous flush's offers, which
/// on a busy core is the end of its wave of wake-ups, so an event is
/// flushed every `w + interval` and its fan-out takes `w / (w + interval)`
/// of a core, while a position waits up to `interval + w`. A square root
/// spends latency where it buys CPU: measured on the 2-core benchmark
/// machine (server pinned to one core), waking 10 sleeping subscribers
/// costs ~0.2 ms (interval ~1 ms: at the POST rates of a small fleet every
/// position still goes out at once), 100 ~2 ms (interval ~3.2 ms: 500
/// POSTs/s become ~200 flushes/s), 1,000 ~25 ms (interval ~11 ms: about
/// 28 flushes/s, the core two-thirds busy; a longer interval would save
/// little CPU and cost latency the wave already spends: with a linear rule
/// capped at 20 ms the same load ran at 56 % CPU but p99 70 ms). The
/// README's "Fan-out cadence" gives the runs behind these figures.
const PACE: Duration = Duration::from_millis(5);

/// Weight of the newest fan-out cost in its running average (1/4): one
/// preempted fan-out does not stretch the interval on its own.
const COST_SMOOTHING: u32 = 4;

/// `sqrt(PACE * cost)`, in whole microseconds.
fn interval_for(cost: Duration) -> Duration {
    let product = PACE.as_micros().saturating_mul(cost.as_micros());
    Duration::from_micros(u64::try_from(product.isqrt()).unwrap_or(u64::MAX))
}

/// Most `subscribed` answers kept for sharing at once (see
/// [`Broadcaster::subscribed_answer`]); past it they are all dropped.
const MAX_SHARED_ANSWERS: usize = 64;

/// `subscribed` answers shared by the subscribers that ask while the cache
/// does not change, by event and trail, with their count of positions.
#[derive(Debug, Default)]
struct SharedAnswers {
    generation: u64,
    built: HashMap<(String, Option<usize>), (Arc<Outbound>, usize)>,
}

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
}

impl Lane {
    /// The shortest time between two flushes of this event now:
    /// `sqrt(PACE * cost)` of its fan-out, at most `max_delay`. A fan-out
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
    answers: SharedAnswers,
    metrics: Metrics,
    /// `livecast_outbound_messages_total` by [`OutboundKind`] (position,
    /// subscribed, unsubscribed), resolved once instead of per delivery.
    outbound: (IntCounter, IntCounter, IntCounter),
    byte_limit: usize,
    max_delay: Duration,
}

impl Broadcaster {
    pub(crate) fn new(metrics: Metrics, config: &Config) -> Broadcaster {
        Broadcaster {
            registry: Registry::default(),
            cache: Cache::new(config.cache_max_devices, config.trail_length),
            device_map: Arc::default(),
            lanes: HashMap::new(),
            answers: SharedAnswers::default(),
            outbound: (
                metrics.outbound_messages.with_label_values(&[OutboundKind::Position.label()]),
                metrics.outbound_messages.with_label_values(&[OutboundKind::Subscribed.label()]),
                metrics.outbound_messages.with_label_values(&[OutboundKind::Unsubscribed.label()]),
            ),
            metrics,
            byte_limit: config.backpressure_threshold_bytes,
            max_delay: config.broadcast_max_delay,
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
                self.flush_event(&event);
                self.registry.remove(&event, client.id);
                self.forget_if_unwatched(&event);
                self.update_gauge();
                let frame = unsubscribed_frame(&event);
                self.deliver(
                    &client,
                    &Arc::new(Outbound::single(OutboundKind::Unsubscribed, &frame)),
                );
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

    /// The `subscribed` answer for `event` (with `trail`), built once per
    /// state of the cache: in a connect storm every subscriber of an event
    /// gets the same shared bytes instead of its own copy of a snapshot
    /// that may weigh hundreds of kilobytes with trails.
    fn subscribed_answer(&mut self, event: &str, trail: Option<usize>) -> Arc<Outbound> {
        let generation = self.cache.generation();
        if self.answers.generation != generation || self.answers.built.len() >= MAX_SHARED_ANSWERS {
            self.answers.built.clear();
            self.answers.generation = generation;
        }
        let key = (event.to_owned(), trail);
        if let Some((answer, count)) = self.answers.built.get(&key) {
            #[allow(clippy::cast_precision_loss)] // a count of positions
            self.metrics.snapshot_positions.observe(*count as f64);
            return Arc::clone(answer);
        }
        // Positions in the answer, trails included.
        let count = Cell::new(0usize);
        let counted = |_: &&str| count.set(count.get() + 1);
        let mut frame = open_subscribed_frame(event, self.cache.snapshot(event).inspect(counted));
        if let Some(n) = trail {
            let trails = self.cache.trails(event, n);
            push_trails(&mut frame, trails.map(|(id, frames)| (id, frames.inspect(counted))));
        }
        frame.push('}');
        let count = count.get();
        #[allow(clippy::cast_precision_loss)] // a count of positions
        self.metrics.snapshot_positions.observe(count as f64);
        let answer = Arc::new(Outbound::single(OutboundKind::Subscribed, &frame));
        self.answers.built.insert(key, (Arc::clone(&answer), count));
        answer
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
    /// one `try_send` per subscriber.
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
        });
        let mut failed = Vec::new();
        let mut delivered = 0;
        let mut woken = 0;
        for client in self.registry.subscribers(event) {
            match client.offer(&entry, self.byte_limit) {
                Ok(woke) => {
                    delivered += 1;
                    woken += u64::from(woke);
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
            self.metrics.backpressure_closes.inc();
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
        let text = String::from_utf8_lossy(&snapshot.wire).into_owned();
        assert!(text.contains("\"seq\":1") && !text.contains("\"seq\":2"), "{text}");
        let live = rx_late.try_recv().unwrap();
        let text = String::from_utf8_lossy(&live.wire).into_owned();
        assert!(text.contains("\"seq\":2") && !text.contains("\"seq\":1"), "{text}");
        // The early subscriber saw both, in two entries, in order.
        let seqs: Vec<String> =
            rx_early.try_iter().map(|e| String::from_utf8_lossy(&e.wire).into_owned()).collect();
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
        assert_eq!(interval_for(Duration::from_millis(3)), Duration::from_micros(3872));
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
        assert!(String::from_utf8_lossy(&held.wire).contains("\"seq\":2"));
        let snapshot = rx_late.try_recv().unwrap();
        assert!(String::from_utf8_lossy(&snapshot.wire).contains("\"seq\":2"));
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
    fn subscribers_of_an_unchanged_event_share_one_answer() {
        let mut b = broadcaster();
        b.handle(Command::Positions(vec![position("d", 1), position("d", 2)]));
        let (c1, rx1, _s1) = client();
        let (c2, rx2, _s2) = client();
        let (c3, rx3, _s3) = client();
        for c in [&c1, &c2] {
            b.handle(Command::Subscribe {
                client: Arc::clone(c),
                event: "e".into(),
                trail: Some(5),
            });
        }
        let (a1, a2) = (rx1.try_recv().unwrap(), rx2.try_recv().unwrap());
        assert!(Arc::ptr_eq(&a1, &a2), "built once for both");
        let text = String::from_utf8_lossy(&a1.wire).into_owned();
        assert!(text.contains("\"trails\"") && text.contains("\"seq\":2"), "{text}");
        // A position changes the cache: the next answer is built anew.
        b.handle(Command::Positions(vec![position("d", 3)]));
        b.handle(Command::Subscribe { client: Arc::clone(&c3), event: "e".into(), trail: Some(5) });
        let a3 = rx3.try_recv().unwrap();
        assert!(!Arc::ptr_eq(&a1, &a3));
        assert!(String::from_utf8_lossy(&a3.wire).contains("\"seq\":3"));
        // Another trail length is another answer.
        b.handle(Command::Subscribe { client: Arc::clone(&c3), event: "e".into(), trail: None });
        let plain = rx3.try_recv().unwrap();
        assert!(!String::from_utf8_lossy(&plain.wire).contains("trails"));
    }
}
