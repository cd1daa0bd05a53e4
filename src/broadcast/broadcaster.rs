//! The `broadcaster` thread's loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use log::{debug, info};
use prometheus::IntCounter;
use tungstenite::Utf8Bytes;
use uuid::Uuid;

use super::cache::Cache;
use super::registry::Registry;
use crate::metrics::Metrics;
use crate::position::{Position, now_ms};
use crate::protocol::{CloseReason, subscribed_frame, unsubscribed_frame};
use crate::server::{ClientHandle, Kind, OfferError, Outbound, push_text_frame};

/// What other threads ask of the broadcaster, in the order they ask it.
#[derive(Debug)]
pub(crate) enum Command {
    /// Validated positions from a source, in source order.
    Positions(Vec<Position>),
    /// Positions read back from the stream's tail at start: they fill the
    /// cache for devices not seen live, and are not broadcast.
    Warm(Vec<Position>),
    /// Register the client on the event and queue `subscribed` + snapshot.
    /// Authorization has already been done by the connection thread.
    Subscribe { client: Arc<ClientHandle>, event: String },
    /// Unregister and queue `unsubscribed`.
    Unsubscribe { client: Arc<ClientHandle>, event: String },
    /// The connection ended: forget it.
    Disconnect { id: Uuid },
    /// A new device→event map.
    DeviceMap(Arc<HashMap<String, String>>),
    /// Leave the loop.
    Shutdown,
}

/// How many commands one cycle takes before it flushes, so that a flood of
/// positions still reaches clients in bounded steps.
const MAX_COMMANDS_PER_CYCLE: usize = 256;

/// Frames for one event gathered during a cycle.
#[derive(Debug, Default)]
struct Pending {
    /// WebSocket frames, back to back.
    wire: Vec<u8>,
    messages: usize,
    last_ts: Option<i64>,
}

/// State owned by the broadcaster thread.
#[derive(Debug)]
pub(crate) struct Broadcaster {
    registry: Registry,
    cache: Cache,
    device_map: Arc<HashMap<String, String>>,
    pending: HashMap<String, Pending>,
    metrics: Metrics,
    /// `livecast_outbound_messages_total` by [`Kind`] (position,
    /// subscribed, unsubscribed), resolved once instead of per delivery.
    outbound: (IntCounter, IntCounter, IntCounter),
    byte_limit: usize,
}

impl Broadcaster {
    pub(crate) fn new(metrics: Metrics, byte_limit: usize) -> Broadcaster {
        Broadcaster {
            registry: Registry::default(),
            cache: Cache::default(),
            device_map: Arc::default(),
            pending: HashMap::new(),
            outbound: (
                metrics.outbound_messages.with_label_values(&[Kind::Position.label()]),
                metrics.outbound_messages.with_label_values(&[Kind::Subscribed.label()]),
                metrics.outbound_messages.with_label_values(&[Kind::Unsubscribed.label()]),
            ),
            metrics,
            byte_limit,
        }
    }

    /// Runs until [`Command::Shutdown`] or until every sender is gone.
    ///
    /// Blocks in `recv` while there is nothing to do; never blocks on a
    /// client.
    pub(crate) fn run(mut self, commands: &Receiver<Command>) {
        while let Ok(first) = commands.recv() {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(command) = next.take() {
                if matches!(command, Command::Shutdown) {
                    self.flush();
                    info!("broadcaster stopped");
                    return;
                }
                self.handle(command);
                taken += 1;
                if taken < MAX_COMMANDS_PER_CYCLE {
                    next = commands.try_recv().ok();
                }
            }
            self.flush();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Positions(positions) => {
                for p in positions {
                    self.position(p);
                }
            }
            Command::Warm(positions) => self.warm(positions),
            Command::Subscribe { client, event } => {
                // Everything queued before this subscribe goes out first, so
                // the snapshot below is exactly where the live stream starts.
                self.flush();
                let started = Instant::now();
                self.registry.add(&event, &client);
                // Gauges first: once the client reads its answer, they agree.
                self.update_gauge();
                let positions: Vec<&str> = self.cache.snapshot(&event).collect();
                let count = positions.len();
                let frame = subscribed_frame(&event, positions.into_iter());
                self.metrics.snapshot_duration.observe(started.elapsed().as_secs_f64());
                #[allow(clippy::cast_precision_loss)] // a count of devices
                self.metrics.snapshot_positions.observe(count as f64);
                self.deliver(&client, &Arc::new(Outbound::single(Kind::Subscribed, &frame)));
            }
            Command::Unsubscribe { client, event } => {
                self.flush();
                self.registry.remove(&event, client.id);
                self.update_gauge();
                let frame = unsubscribed_frame(&event);
                self.deliver(&client, &Arc::new(Outbound::single(Kind::Unsubscribed, &frame)));
            }
            Command::Disconnect { id } => {
                self.registry.remove_client(id);
                self.update_gauge();
            }
            Command::DeviceMap(map) => {
                self.device_map = map;
                for (event, position) in self.cache.remap(&self.device_map) {
                    debug!("device {} moved to event {event}", position.device_id);
                    self.route(&event, position, true);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn warm(&mut self, positions: Vec<Position>) {
        // Oldest first in: the newest of each device wins.
        let mut latest: HashMap<String, Position> = HashMap::new();
        for p in positions {
            latest.insert(p.device_id.clone(), p);
        }
        for p in latest.into_values() {
            if self.cache.has_device(&p.device_id) {
                continue;
            }
            let (event, via_map) = match &p.event_id {
                Some(event) => (event.clone(), false),
                None => match self.device_map.get(&p.device_id) {
                    Some(event) => (event.clone(), true),
                    None => continue,
                },
            };
            let frame = Utf8Bytes::from(p.frame(&event));
            self.cache.put(&event, p, frame, via_map);
        }
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
            let pending = self.pending.entry(event.to_owned()).or_default();
            push_text_frame(&mut pending.wire, frame.as_bytes());
            pending.messages += 1;
            pending.last_ts = Some(p.ts_ms);
        }
        self.cache.put(event, p, frame, via_map);
    }

    /// Hands every pending batch to the subscribers of its event: one
    /// shared entry per event, one `try_send` per subscriber.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        for (event, batch) in pending {
            let entry = Arc::new(Outbound {
                kind: Kind::Position,
                messages: batch.messages,
                wire: batch.wire,
                last_ts: batch.last_ts,
            });
            let mut failed = Vec::new();
            let mut delivered = 0;
            for client in self.registry.subscribers(&event) {
                match client.offer(&entry, self.byte_limit) {
                    Ok(()) => delivered += 1,
                    Err(e) => failed.push((Arc::clone(client), e)),
                }
            }
            let n = delivered * entry.messages as u64;
            self.outbound(Kind::Position).inc_by(n);
            self.metrics.fanout_deliveries.inc_by(n);
            for (client, e) in failed {
                self.failed(&client, e);
            }
        }
    }

    /// Queues `entry` for `client`, closing it on overflow.
    fn deliver(&mut self, client: &Arc<ClientHandle>, entry: &Arc<Outbound>) {
        match client.offer(entry, self.byte_limit) {
            Ok(()) => self.outbound(entry.kind).inc_by(entry.messages as u64),
            Err(e) => self.failed(client, e),
        }
    }

    /// A client whose queue overflowed is closed with 1008; a client whose
    /// thread is gone is forgotten.
    fn failed(&mut self, client: &Arc<ClientHandle>, error: OfferError) {
        match error {
            OfferError::Overflow => {
                debug!("{} {}: back-pressure, closing", client.thread_name, client.remote);
                self.metrics.backpressure_closes.inc();
                client.request_close(CloseReason::BackPressure);
                self.registry.remove_client(client.id);
                self.update_gauge();
            }
            OfferError::Gone => {
                self.registry.remove_client(client.id);
                self.update_gauge();
            }
        }
    }

    fn outbound(&self, kind: Kind) -> &IntCounter {
        match kind {
            Kind::Position => &self.outbound.0,
            Kind::Subscribed => &self.outbound.1,
            Kind::Unsubscribed => &self.outbound.2,
        }
    }

    fn update_gauge(&self) {
        self.metrics.subscriptions.set(i64::try_from(self.registry.total()).unwrap_or(i64::MAX));
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
        Broadcaster::new(Metrics::new().unwrap(), 1 << 20)
    }

    #[test]
    fn a_batch_is_framed_once_and_shared_by_every_subscriber() {
        let mut b = broadcaster();
        let (c1, rx1, _s1) = client();
        let (c2, rx2, _s2) = client();
        for c in [&c1, &c2] {
            b.handle(Command::Subscribe { client: Arc::clone(c), event: "e".into() });
        }
        for rx in [&rx1, &rx2] {
            assert_eq!(rx.try_recv().unwrap().kind, Kind::Subscribed);
        }
        b.handle(Command::Positions(vec![position("d", 1), position("d", 2)]));
        b.flush();
        let (e1, e2) = (rx1.try_recv().unwrap(), rx2.try_recv().unwrap());
        assert!(Arc::ptr_eq(&e1, &e2), "one allocation for all subscribers");
        assert_eq!(e1.messages, 2);
        assert!(rx1.try_recv().is_err(), "one entry per event per cycle");
    }

    #[test]
    fn the_snapshot_includes_exactly_what_came_before_the_subscribe() {
        let mut b = broadcaster();
        let (early, rx_early, _s1) = client();
        b.handle(Command::Subscribe { client: Arc::clone(&early), event: "e".into() });
        let _ = rx_early.try_recv();
        let (late, rx_late, _s2) = client();
        // Same cycle: a position, the late subscribe, another position.
        b.handle(Command::Positions(vec![position("d", 1)]));
        b.handle(Command::Subscribe { client: Arc::clone(&late), event: "e".into() });
        b.handle(Command::Positions(vec![position("d", 2)]));
        b.flush();
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
            b.handle(Command::Subscribe { client: Arc::clone(c), event: "e".into() });
        }
        for seq in 0..10 {
            b.handle(Command::Positions(vec![position("d", seq)]));
            b.flush();
            while rx_fast.try_recv().is_ok() {}
        }
        assert_eq!(slow.take_close_request(), Some(CloseReason::BackPressure));
        assert_eq!(fast.take_close_request(), None);
        assert_eq!(b.registry.total(), 1);
    }
}
