//! A worker thread drives hundreds or thousands of WebSocket clients on one
//! epoll instance: non-blocking connect, upgrade, subscribe, then it reads
//! every client's frames in place, checks each position's per-device
//! sequence number (loss, duplicates, order) and records its latency.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustix::event::{Timespec, epoll};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use crate::hist::Histogram;
use crate::wire::{self, Frame, Upgrade};

/// Bytes read from a socket at a time (and the least room left in the
/// worker's read buffer before a read).
const READ_CHUNK: usize = 256 * 1024;
/// Sequence numbers above this are treated as garbage, not tracked.
const MAX_SEQ: u64 = 1 << 28;

/// Where the clients connect.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// `Host` header value.
    pub(crate) host: String,
    pub(crate) path: String,
}

/// What the worker threads share with the coordinator.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) stop: AtomicBool,
    /// Per device: the last sequence number the server accepted. Set by the
    /// coordinator before `stop`; the loss count is computed against it.
    pub(crate) final_seqs: OnceLock<Vec<u64>>,
    pub(crate) subscribed: AtomicUsize,
    pub(crate) failed: AtomicUsize,
    pub(crate) server_closed: AtomicUsize,
    /// Distinct positions received by normal clients.
    pub(crate) unique: AtomicU64,
    /// Receive time (µs since the epoch) of the latest `subscribed`.
    pub(crate) last_subscribed_us: AtomicU64,
    /// Normal clients subscribed, per event.
    pub(crate) subscribed_in_event: Vec<AtomicU64>,
    /// Clients that never read, handed to the coordinator once subscribed.
    pub(crate) slow: parking_lot::Mutex<Vec<SlowClient>>,
}

impl Shared {
    pub(crate) fn new(events: usize) -> Shared {
        Shared {
            stop: AtomicBool::new(false),
            final_seqs: OnceLock::new(),
            subscribed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            server_closed: AtomicUsize::new(0),
            unique: AtomicU64::new(0),
            last_subscribed_us: AtomicU64::new(0),
            subscribed_in_event: (0..events).map(|_| AtomicU64::new(0)).collect(),
            slow: parking_lot::Mutex::new(Vec::new()),
        }
    }
}

/// A subscribed client that will not read again.
#[derive(Debug)]
pub(crate) struct SlowClient {
    pub(crate) stream: TcpStream,
    pub(crate) local_port: u16,
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientSpec {
    pub(crate) event: usize,
    /// Stops reading once subscribed.
    pub(crate) slow: bool,
}

/// Everything a worker needs besides its clients.
#[derive(Clone, Debug)]
pub(crate) struct WorkerConfig {
    pub(crate) target: Target,
    pub(crate) events: usize,
    /// The masked `subscribe` frame of each event.
    pub(crate) subscribe_frames: Arc<Vec<Vec<u8>>>,
    /// When the coordinator started the workers (µs since the epoch).
    pub(crate) started_us: u64,
    /// `SO_RCVBUF` of the clients that never read (0: the default).
    pub(crate) slow_rcvbuf: usize,
    /// Extra `subscribe` frame the slow clients send (the ballast event).
    pub(crate) slow_extra_frame: Option<Vec<u8>>,
}

/// What a worker saw, merged by the coordinator.
#[derive(Debug, Default)]
pub(crate) struct WorkerReport {
    pub(crate) latency_us: Histogram,
    /// Subscribe sent → first byte of the answer.
    pub(crate) subscribe_first_byte_us: Histogram,
    /// Subscribe sent → whole `subscribed` (with its snapshot) parsed.
    pub(crate) subscribe_complete_us: Histogram,
    /// Start of the connect storm → this client's `subscribed` parsed.
    pub(crate) ready_us: Histogram,
    /// Every `position` message received by a normal client.
    pub(crate) deliveries: u64,
    pub(crate) unique: u64,
    pub(crate) duplicates: u64,
    pub(crate) reordered: u64,
    /// Positions of a device outside the client's event, or unparsable ids.
    pub(crate) foreign: u64,
    pub(crate) expected: u64,
    pub(crate) lost: u64,
    /// Positions that carried no `sentUs` (no latency sample).
    pub(crate) untimed: u64,
    pub(crate) first_delivery_us: u64,
    pub(crate) last_delivery_us: u64,
    /// Connection attempts that never got to `subscribed`, by reason.
    pub(crate) failures: BTreeMap<String, u64>,
    /// Normal clients closed by the server, by close code (1006: no close
    /// frame, the connection just ended).
    pub(crate) close_codes: BTreeMap<u16, u64>,
    /// `error` messages from the server, by code.
    pub(crate) server_errors: BTreeMap<String, u64>,
    pub(crate) unparsed: u64,
    pub(crate) open_at_end: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Connecting,
    Upgrading,
    Subscribing,
    Live,
    /// Slow client handed over to the coordinator.
    HandedOff,
    Closed,
}

#[derive(Debug, Default)]
struct Device {
    /// Sequence number of the device's position in the snapshot (0: none).
    base: u64,
    max: u64,
    unique: u64,
    seen: Vec<u64>,
}

#[derive(Debug)]
struct Conn {
    stream: Option<TcpStream>,
    phase: Phase,
    spec: ClientSpec,
    accept: String,
    /// Bytes read but not yet parsed: the start of a frame, or of the
    /// upgrade answer.
    carry: Vec<u8>,
    /// Payload of a fragmented message being reassembled.
    fragments: Vec<u8>,
    out: Vec<u8>,
    want_write: bool,
    subscribe_sent_us: u64,
    answered: bool,
    devices: Vec<Device>,
}

struct Worker {
    epoll: OwnedFd,
    conns: Vec<Conn>,
    rbuf: Vec<u8>,
    report: WorkerReport,
    cfg: WorkerConfig,
    shared: Arc<Shared>,
    /// Counter deltas not yet published to `shared`.
    pending_subscribed: usize,
    pending_failed: usize,
    pending_closed: usize,
    pending_unique: u64,
}

pub(crate) fn run(cfg: WorkerConfig, specs: Vec<ClientSpec>, shared: Arc<Shared>) -> WorkerReport {
    let epoll = match epoll::create(epoll::CreateFlags::CLOEXEC) {
        Ok(fd) => fd,
        Err(e) => {
            let mut report = WorkerReport::default();
            report.failures.insert(format!("epoll-create-{e}"), specs.len() as u64);
            shared.failed.fetch_add(specs.len(), Ordering::Relaxed);
            return report;
        }
    };
    let mut worker = Worker {
        epoll,
        conns: Vec::with_capacity(specs.len()),
        rbuf: vec![0; 2 * READ_CHUNK],
        report: WorkerReport::default(),
        cfg,
        shared,
        pending_subscribed: 0,
        pending_failed: 0,
        pending_closed: 0,
        pending_unique: 0,
    };
    for spec in specs {
        worker.start(spec);
    }
    worker.publish();
    worker.event_loop();
    worker.finish()
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted
}

impl Worker {
    fn start(&mut self, spec: ClientSpec) {
        let family = match self.cfg.target.addr {
            SocketAddr::V4(_) => AddressFamily::INET,
            SocketAddr::V6(_) => AddressFamily::INET6,
        };
        let flags = SocketFlags::NONBLOCK | SocketFlags::CLOEXEC;
        let fd = match rustix::net::socket_with(family, SocketType::STREAM, flags, None) {
            Ok(fd) => fd,
            Err(e) => return self.fail_new(&format!("socket-{e}")),
        };
        if spec.slow && self.cfg.slow_rcvbuf > 0 {
            // Before connect, so that the window offered is small from the
            // start: the kernel buffers fill in seconds, not minutes.
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&fd, self.cfg.slow_rcvbuf);
        }
        match rustix::net::connect(&fd, &self.cfg.target.addr) {
            Ok(()) | Err(rustix::io::Errno::INPROGRESS) => {}
            Err(e) => return self.fail_new(&format!("connect-{e}")),
        }
        let _ = rustix::net::sockopt::set_tcp_nodelay(&fd, true);
        let stream = TcpStream::from(fd);
        let idx = self.conns.len() as u64;
        let interest = epoll::EventFlags::OUT;
        if let Err(e) = epoll::add(&self.epoll, &stream, epoll::EventData::new_u64(idx), interest) {
            return self.fail_new(&format!("epoll-add-{e}"));
        }
        self.conns.push(Conn {
            stream: Some(stream),
            phase: Phase::Connecting,
            spec,
            accept: String::new(),
            carry: Vec::new(),
            fragments: Vec::new(),
            out: Vec::new(),
            want_write: true,
            subscribe_sent_us: 0,
            answered: false,
            devices: Vec::new(),
        });
    }

    fn fail_new(&mut self, reason: &str) {
        *self.report.failures.entry(reason.to_owned()).or_default() += 1;
        self.pending_failed += 1;
    }

    fn publish(&mut self) {
        let s = &self.shared;
        if self.pending_subscribed > 0 {
            s.subscribed.fetch_add(std::mem::take(&mut self.pending_subscribed), Ordering::Relaxed);
        }
        if self.pending_failed > 0 {
            s.failed.fetch_add(std::mem::take(&mut self.pending_failed), Ordering::Relaxed);
        }
        if self.pending_closed > 0 {
            s.server_closed.fetch_add(std::mem::take(&mut self.pending_closed), Ordering::Relaxed);
        }
        if self.pending_unique > 0 {
            s.unique.fetch_add(std::mem::take(&mut self.pending_unique), Ordering::Relaxed);
        }
    }

    fn event_loop(&mut self) {
        let empty =
            epoll::Event { flags: epoll::EventFlags::empty(), data: epoll::EventData::new_u64(0) };
        let mut events = vec![empty; 1024];
        let timeout = Timespec { tv_sec: 0, tv_nsec: 20_000_000 };
        while !self.shared.stop.load(Ordering::Relaxed) {
            let n = match epoll::wait(&self.epoll, &mut events[..], Some(&timeout)) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => 0,
                Err(e) => {
                    eprintln!("loadgen: epoll_wait: {e}");
                    break;
                }
            };
            for event in events.iter().take(n) {
                let flags = event.flags;
                let Ok(idx) = usize::try_from(event.data.u64()) else { continue };
                self.on_event(idx, flags);
            }
            self.publish();
        }
    }

    fn on_event(&mut self, idx: usize, flags: epoll::EventFlags) {
        let Some(phase) = self.conns.get(idx).map(|c| c.phase) else { return };
        match phase {
            Phase::Connecting => self.on_connected(idx),
            Phase::Upgrading | Phase::Subscribing | Phase::Live => {
                if flags.contains(epoll::EventFlags::OUT) {
                    self.flush(idx);
                }
                if flags.intersects(
                    epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR,
                ) {
                    self.on_readable(idx);
                }
            }
            Phase::HandedOff | Phase::Closed => {}
        }
    }

    fn on_connected(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        let Some(stream) = &conn.stream else { return };
        match rustix::net::sockopt::socket_error(stream) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return self.fail(idx, &format!("connect-{e}")),
            Err(e) => return self.fail(idx, &format!("connect-{e}")),
        }
        let (request, accept) = wire::upgrade_request(&self.cfg.target.host, &self.cfg.target.path);
        conn.accept = accept;
        conn.out.extend_from_slice(&request);
        conn.phase = Phase::Upgrading;
        self.flush(idx);
    }

    /// Writes what is pending; keeps EPOLLOUT registered only while needed.
    fn flush(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        let Some(stream) = &mut conn.stream else { return };
        let mut written = 0;
        let mut error = None;
        while written < conn.out.len() {
            match stream.write(conn.out.get(written..).unwrap_or_default()) {
                Ok(0) => {
                    error = Some("write-zero".to_owned());
                    break;
                }
                Ok(n) => written += n,
                Err(e) if would_block(&e) => break,
                Err(e) => {
                    error = Some(format!("write-{}", e.kind()));
                    break;
                }
            }
        }
        conn.out.drain(..written);
        if let Some(reason) = error {
            return self.lost_connection(idx, &reason);
        }
        let want_write = !conn.out.is_empty();
        if want_write != conn.want_write {
            conn.want_write = want_write;
            let mut interest = epoll::EventFlags::IN;
            if want_write {
                interest |= epoll::EventFlags::OUT;
            }
            let data = epoll::EventData::new_u64(idx as u64);
            let _ = epoll::modify(&self.epoll, &*stream, data, interest);
        }
    }

    fn on_readable(&mut self, idx: usize) {
        let Worker { conns, rbuf, .. } = self;
        let Some(conn) = conns.get_mut(idx) else { return };
        let Some(stream) = &mut conn.stream else { return };
        let carried = conn.carry.len();
        if rbuf.len() < carried + READ_CHUNK {
            rbuf.resize(carried + READ_CHUNK, 0);
        }
        let n = match stream.read(rbuf.get_mut(carried..).unwrap_or_default()) {
            Ok(0) => return self.lost_connection(idx, "eof"),
            Ok(n) => n,
            Err(e) if would_block(&e) => return,
            Err(e) => return self.lost_connection(idx, &format!("read-{}", e.kind())),
        };
        let now = crate::now_us();
        if let Some(head) = rbuf.get_mut(..carried) {
            head.copy_from_slice(&conn.carry);
        }
        conn.carry.clear();
        // Take the buffer out so that frames can borrow it while `self`
        // is updated.
        let buf = std::mem::take(&mut self.rbuf);
        self.process(idx, buf.get(..carried + n).unwrap_or_default(), now);
        self.rbuf = buf;
    }

    fn process(&mut self, idx: usize, mut data: &[u8], now: u64) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        if conn.phase == Phase::Upgrading {
            match wire::parse_upgrade_response(data, &conn.accept) {
                Upgrade::Partial => {
                    conn.carry.extend_from_slice(data);
                    return;
                }
                Upgrade::Failed(reason) => return self.fail(idx, &reason),
                Upgrade::Done(head) => {
                    data = data.get(head..).unwrap_or_default();
                    let frame = self.cfg.subscribe_frames.get(conn.spec.event);
                    conn.out.extend_from_slice(frame.map(Vec::as_slice).unwrap_or_default());
                    if conn.spec.slow
                        && let Some(extra) = &self.cfg.slow_extra_frame
                    {
                        conn.out.extend_from_slice(extra);
                    }
                    conn.phase = Phase::Subscribing;
                    conn.subscribe_sent_us = crate::now_us();
                    self.flush(idx);
                    if data.is_empty() {
                        return;
                    }
                }
            }
        }
        if let Some(conn) = self.conns.get_mut(idx)
            && conn.phase == Phase::Subscribing
            && !conn.answered
        {
            conn.answered = true;
            self.report.subscribe_first_byte_us.record(now.saturating_sub(conn.subscribe_sent_us));
        }
        let mut pos = 0;
        loop {
            let rest = data.get(pos..).unwrap_or_default();
            match wire::parse_frame(rest) {
                Ok(Some((frame, used))) => {
                    pos += used;
                    self.on_frame(idx, &frame, now);
                    let phase = self.conns.get(idx).map_or(Phase::Closed, |c| c.phase);
                    if matches!(phase, Phase::Closed | Phase::HandedOff) {
                        return;
                    }
                }
                Ok(None) => break,
                Err(reason) => return self.lost_connection(idx, reason),
            }
        }
        if let Some(conn) = self.conns.get_mut(idx) {
            conn.carry.extend_from_slice(data.get(pos..).unwrap_or_default());
        }
    }

    fn on_frame(&mut self, idx: usize, frame: &Frame<'_>, now: u64) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        match frame.opcode {
            wire::OP_TEXT | wire::OP_BINARY if frame.fin => {
                if frame.opcode == wire::OP_TEXT {
                    self.on_text(idx, frame.payload, now);
                } else {
                    self.report.unparsed += 1;
                }
            }
            wire::OP_TEXT | wire::OP_BINARY => {
                conn.fragments.clear();
                conn.fragments.extend_from_slice(frame.payload);
            }
            wire::OP_CONTINUATION => {
                conn.fragments.extend_from_slice(frame.payload);
                if frame.fin {
                    let message = std::mem::take(&mut conn.fragments);
                    self.on_text(idx, &message, now);
                }
            }
            wire::OP_PING => {
                wire::client_frame(wire::OP_PONG, frame.payload, &mut conn.out);
                self.flush(idx);
            }
            wire::OP_CLOSE => {
                let code = wire::close_code(frame.payload);
                self.closed_by_server(idx, code);
            }
            _ => {}
        }
    }

    fn on_text(&mut self, idx: usize, payload: &[u8], now: u64) {
        if let Some((device, seq, sent_us)) = wire::fast_position(payload) {
            self.on_position(idx, Some(device), Some(seq), sent_us, now);
            return;
        }
        let Some(message) = wire::parse_message(payload) else {
            self.report.unparsed += 1;
            return;
        };
        let events = self.cfg.events;
        if message.kind == "position" {
            let device = message.device_id.and_then(wire::device_index);
            self.on_position(idx, device, message.seq, message.sent_us, now);
            return;
        }
        let Some(conn) = self.conns.get_mut(idx) else { return };
        let report = &mut self.report;
        match message.kind {
            "subscribed" => {
                if conn.phase != Phase::Subscribing {
                    return;
                }
                report.subscribe_complete_us.record(now.saturating_sub(conn.subscribe_sent_us));
                report.ready_us.record(now.saturating_sub(self.cfg.started_us));
                for p in message.positions.unwrap_or_default() {
                    let (Some(device), Some(seq)) = (wire::device_index(p.device_id), p.seq) else {
                        continue;
                    };
                    if device % events != conn.spec.event || seq > MAX_SEQ {
                        continue;
                    }
                    let local = device / events;
                    if conn.devices.len() <= local {
                        conn.devices.resize_with(local + 1, Device::default);
                    }
                    if let Some(d) = conn.devices.get_mut(local) {
                        d.base = d.base.max(seq);
                        d.max = d.max.max(seq);
                    }
                }
                self.shared.last_subscribed_us.fetch_max(now, Ordering::Relaxed);
                self.pending_subscribed += 1;
                if conn.spec.slow {
                    self.hand_off(idx);
                } else {
                    conn.phase = Phase::Live;
                    if let Some(n) = self.shared.subscribed_in_event.get(conn.spec.event) {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            "error" => {
                let code = message.code.unwrap_or("?").to_owned();
                *report.server_errors.entry(code).or_default() += 1;
            }
            _ => {}
        }
    }

    fn on_position(
        &mut self,
        idx: usize,
        device: Option<usize>,
        seq: Option<u64>,
        sent_us: Option<u64>,
        now: u64,
    ) {
        let events = self.cfg.events;
        let Some(conn) = self.conns.get_mut(idx) else { return };
        if conn.spec.slow {
            return;
        }
        let report = &mut self.report;
        report.deliveries += 1;
        if report.first_delivery_us == 0 {
            report.first_delivery_us = now;
        }
        report.last_delivery_us = now;
        match sent_us {
            Some(sent) => report.latency_us.record(now.saturating_sub(sent)),
            None => report.untimed += 1,
        }
        let (Some(device), Some(seq)) = (device, seq) else {
            report.foreign += 1;
            return;
        };
        if device % events != conn.spec.event || seq > MAX_SEQ {
            report.foreign += 1;
            return;
        }
        let local = device / events;
        if conn.devices.len() <= local {
            conn.devices.resize_with(local + 1, Device::default);
        }
        let Some(d) = conn.devices.get_mut(local) else { return };
        if seq == 0 || seq <= d.base {
            report.duplicates += 1;
            return;
        }
        let bit = seq - 1;
        let word = usize::try_from(bit / 64).unwrap_or(usize::MAX);
        if d.seen.len() <= word {
            d.seen.resize(word + 1, 0);
        }
        let Some(w) = d.seen.get_mut(word) else { return };
        let mask = 1u64 << (bit % 64);
        if *w & mask != 0 {
            report.duplicates += 1;
            return;
        }
        *w |= mask;
        d.unique += 1;
        report.unique += 1;
        self.pending_unique += 1;
        if seq < d.max {
            report.reordered += 1;
        }
        d.max = d.max.max(seq);
    }

    /// A slow client stops being read: the coordinator watches it.
    fn hand_off(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        conn.phase = Phase::HandedOff;
        let Some(stream) = &conn.stream else { return };
        let _ = epoll::delete(&self.epoll, stream);
        let local_port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
        if let Ok(stream) = stream.try_clone() {
            self.shared.slow.lock().push(SlowClient { stream, local_port });
        }
    }

    /// A connection attempt that did not reach `subscribed`.
    fn fail(&mut self, idx: usize, reason: &str) {
        *self.report.failures.entry(reason.to_owned()).or_default() += 1;
        self.pending_failed += 1;
        self.close(idx);
    }

    /// The connection ended without a close frame.
    fn lost_connection(&mut self, idx: usize, reason: &str) {
        let phase = self.conns.get(idx).map_or(Phase::Closed, |c| c.phase);
        match phase {
            Phase::Live => self.closed_by_server(idx, wire::ABNORMAL_CLOSURE),
            Phase::Closed | Phase::HandedOff => {}
            _ => self.fail(idx, reason),
        }
    }

    fn closed_by_server(&mut self, idx: usize, code: u16) {
        let phase = self.conns.get(idx).map_or(Phase::Closed, |c| c.phase);
        if phase == Phase::Live {
            *self.report.close_codes.entry(code).or_default() += 1;
            self.pending_closed += 1;
        } else if phase != Phase::Closed {
            *self.report.failures.entry(format!("closed-{code}")).or_default() += 1;
            self.pending_failed += 1;
        }
        self.close(idx);
    }

    fn close(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx) else { return };
        conn.phase = Phase::Closed;
        conn.carry = Vec::new();
        conn.out = Vec::new();
        if let Some(stream) = conn.stream.take() {
            let _ = epoll::delete(&self.epoll, &stream);
            // Reset rather than FIN: no TIME_WAIT left behind on the
            // load generator's ephemeral ports.
            let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
        }
    }

    fn finish(mut self) -> WorkerReport {
        self.publish();
        let events = self.cfg.events;
        let empty = Vec::new();
        let finals = self.shared.final_seqs.get().unwrap_or(&empty);
        for conn in &mut self.conns {
            match conn.phase {
                Phase::Live => {
                    self.report.open_at_end += 1;
                    for (device, &last) in finals.iter().enumerate() {
                        if device % events != conn.spec.event {
                            continue;
                        }
                        let d = conn.devices.get(device / events);
                        let base = d.map_or(0, |d| d.base);
                        let unique = d.map_or(0, |d| d.unique);
                        let expected = last.saturating_sub(base);
                        self.report.expected += expected;
                        self.report.lost += expected.saturating_sub(unique);
                    }
                }
                Phase::Connecting | Phase::Upgrading | Phase::Subscribing => {
                    let reason = format!("timeout-{:?}", conn.phase).to_lowercase();
                    *self.report.failures.entry(reason).or_default() += 1;
                }
                Phase::HandedOff | Phase::Closed => {}
            }
            if let Some(stream) = conn.stream.take() {
                let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
            }
        }
        self.report
    }
}
