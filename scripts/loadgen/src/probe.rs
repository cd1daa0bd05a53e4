//! Subscribe probes: a few extra clients that, while the load runs, keep
//! subscribing to an event and unsubscribing again, to measure how fast a
//! busy server answers a subscribe (first byte of `subscribed`, and the
//! whole message with its snapshot).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::hist::Histogram;
use crate::wire::{self, Upgrade};
use crate::worker::Target;

#[derive(Debug, Default)]
pub(crate) struct ProbeReport {
    pub(crate) first_byte_us: Histogram,
    pub(crate) complete_us: Histogram,
    pub(crate) failures: u64,
}

#[derive(Debug)]
pub(crate) struct ProbeConfig {
    pub(crate) target: Target,
    pub(crate) probes: usize,
    pub(crate) event_names: Vec<String>,
    /// Each probe client does one subscribe/unsubscribe cycle per period
    /// (livecast allows 20 inbound messages per second).
    pub(crate) period: Duration,
}

struct Probe {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Receive time of the first byte of `buf` (the frame being read).
    buf_started_us: u64,
    last_read_us: u64,
}

/// Connects the probes, waits for `go`, then cycles until `stop`.
pub(crate) fn run(cfg: &ProbeConfig, go: &Arc<AtomicBool>, stop: &Arc<AtomicBool>) -> ProbeReport {
    let mut report = ProbeReport::default();
    let mut probes = Vec::new();
    for _ in 0..cfg.probes {
        match connect(&cfg.target) {
            Ok(p) => probes.push(p),
            Err(e) => {
                eprintln!("loadgen: probe connection failed: {e}");
                report.failures += 1;
            }
        }
    }
    while !go.load(Ordering::Relaxed) {
        if stop.load(Ordering::Relaxed) {
            return report;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if probes.is_empty() || cfg.event_names.is_empty() {
        return report;
    }
    let step = cfg.period / u32::try_from(probes.len()).unwrap_or(1);
    let mut cycle = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let event = cfg.event_names.get(cycle % cfg.event_names.len()).cloned().unwrap_or_default();
        let which = cycle % probes.len();
        if let Some(probe) = probes.get_mut(which)
            && probe.cycle(&event, &mut report).is_err()
        {
            report.failures += 1;
        }
        cycle += 1;
        std::thread::sleep(step);
    }
    for p in &probes {
        let _ = rustix::net::sockopt::set_socket_linger(&p.stream, Some(Duration::ZERO));
    }
    report
}

fn connect(target: &Target) -> Result<Probe, String> {
    let stream = TcpStream::connect_timeout(&target.addr, Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    let (request, accept) = wire::upgrade_request(&target.host, &target.path);
    let mut probe = Probe { stream, buf: Vec::new(), buf_started_us: 0, last_read_us: 0 };
    probe.stream.write_all(&request).map_err(|e| e.to_string())?;
    loop {
        probe.fill()?;
        match wire::parse_upgrade_response(&probe.buf, &accept) {
            Upgrade::Partial => {}
            Upgrade::Failed(reason) => return Err(reason),
            Upgrade::Done(head) => {
                probe.buf.drain(..head);
                return Ok(probe);
            }
        }
    }
}

impl Probe {
    /// Reads once more into `buf`.
    fn fill(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("closed".to_owned());
        }
        self.last_read_us = crate::now_us();
        if self.buf.is_empty() {
            self.buf_started_us = self.last_read_us;
        }
        self.buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        Ok(())
    }

    /// Reads until a text message of type `kind` has arrived, skipping
    /// everything else; returns the receive time of its first byte.
    fn wait_for(&mut self, kind: &str) -> Result<u64, String> {
        loop {
            while let Some((frame, used)) = wire::parse_frame(&self.buf).map_err(str::to_owned)? {
                let started = self.buf_started_us;
                let mut found = false;
                match frame.opcode {
                    wire::OP_TEXT => {
                        found = wire::parse_message(frame.payload).is_some_and(|m| m.kind == kind);
                    }
                    wire::OP_PING => {
                        let mut pong = Vec::new();
                        wire::client_frame(wire::OP_PONG, frame.payload, &mut pong);
                        self.stream.write_all(&pong).map_err(|e| e.to_string())?;
                    }
                    wire::OP_CLOSE => return Err("closed by the server".to_owned()),
                    _ => {}
                }
                self.buf.drain(..used);
                // What is left arrived by the last read at the latest.
                self.buf_started_us = self.last_read_us;
                if found {
                    return Ok(started);
                }
            }
            self.fill()?;
        }
    }

    fn cycle(&mut self, event: &str, report: &mut ProbeReport) -> Result<(), String> {
        let mut frame = Vec::new();
        let subscribe = format!(r#"{{"type":"subscribe","eventId":"{event}"}}"#);
        wire::client_frame(wire::OP_TEXT, subscribe.as_bytes(), &mut frame);
        let sent = crate::now_us();
        self.stream.write_all(&frame).map_err(|e| e.to_string())?;
        let first_byte = self.wait_for("subscribed")?;
        let done = crate::now_us();
        report.first_byte_us.record(first_byte.saturating_sub(sent));
        report.complete_us.record(done.saturating_sub(sent));
        frame.clear();
        let unsubscribe = format!(r#"{{"type":"unsubscribe","eventId":"{event}"}}"#);
        wire::client_frame(wire::OP_TEXT, unsubscribe.as_bytes(), &mut frame);
        self.stream.write_all(&frame).map_err(|e| e.to_string())?;
        self.wait_for("unsubscribed")?;
        Ok(())
    }
}
