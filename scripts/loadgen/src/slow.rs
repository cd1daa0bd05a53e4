//! Watches the clients that never read. Their own sockets cannot tell when
//! the server gives up on them (the server's FIN or close frame sits behind
//! the data they refuse to read), so the kernel's table of the server's
//! sockets tells instead: the moment the server side of a slow client's
//! connection leaves ESTABLISHED (or vanishes), the server has closed it.
//! Then the client's socket is drained to find the close frame's code.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::procfs;
use crate::wire;
use crate::worker::SlowClient;

const TCP_ESTABLISHED: u8 = 1;

#[derive(Debug)]
struct Watched {
    client: SlowClient,
    /// (client side, server side), taken while the connection was whole.
    addrs: Option<(SocketAddr, SocketAddr)>,
    /// (time, bytes the server's socket held for this client).
    samples: Vec<(u64, u64)>,
    closed_us: Option<u64>,
    close_code: Option<u16>,
}

#[derive(Debug)]
pub(crate) struct SlowMonitor {
    server_port: u16,
    diag: Option<procfs::SockDiag>,
    watched: Vec<Watched>,
}

#[derive(Debug, Default)]
pub(crate) struct SlowReport {
    pub(crate) watched: usize,
    pub(crate) closed: usize,
    /// Per closed client: µs from the start of posting to the close.
    pub(crate) closed_after_start_us: Vec<u64>,
    /// Per closed client: µs from its socket buffers filling to the close.
    pub(crate) closed_after_stall_us: Vec<u64>,
    /// Highest number of bytes a server socket held for a slow client.
    pub(crate) max_server_queue: u64,
    pub(crate) close_codes: BTreeMap<String, u64>,
}

impl SlowMonitor {
    pub(crate) fn new(server_port: u16) -> SlowMonitor {
        SlowMonitor { server_port, diag: procfs::SockDiag::open(), watched: Vec::new() }
    }

    pub(crate) fn adopt(&mut self, clients: Vec<SlowClient>) {
        self.watched.extend(clients.into_iter().map(|client| Watched {
            addrs: client.stream.local_addr().ok().zip(client.stream.peer_addr().ok()),
            client,
            samples: Vec::new(),
            closed_us: None,
            close_code: None,
        }));
    }

    pub(crate) fn all_closed(&self) -> bool {
        self.watched.iter().all(|w| w.closed_us.is_some())
    }

    /// One look at every slow client still open.
    pub(crate) fn poll(&mut self) {
        if self.all_closed() {
            return;
        }
        // The kernel's table only when sock_diag is not available: reading
        // it costs milliseconds.
        let table = match &self.diag {
            Some(_) => None,
            None => {
                let ports: Vec<u16> = self
                    .watched
                    .iter()
                    .filter(|w| w.closed_us.is_none())
                    .map(|w| w.client.local_port)
                    .collect();
                match procfs::server_sockets(self.server_port, &ports) {
                    Some(table) => Some(table),
                    None => return,
                }
            }
        };
        let now = crate::now_us();
        for w in self.watched.iter_mut().filter(|w| w.closed_us.is_none()) {
            let socket = match (&table, &mut self.diag) {
                (Some(table), _) => table.get(&w.client.local_port).copied(),
                (None, Some(diag)) => {
                    let Some((client, server)) = w.addrs else { continue };
                    match diag.tcp_socket(server, client) {
                        Ok(socket) => socket,
                        Err(()) => continue,
                    }
                }
                (None, None) => continue,
            };
            if let Some(s) = socket {
                w.samples.push((now, s.tx_queue));
            }
            // Gone: reset, or closed and done with.
            let open = socket.is_some_and(|s| s.state == TCP_ESTABLISHED);
            if !open {
                w.closed_us = Some(now);
                w.close_code = Some(drain_for_close_code(&mut w.client.stream));
            }
        }
    }

    pub(crate) fn report(&self, posting_started_us: u64) -> SlowReport {
        let mut report = SlowReport { watched: self.watched.len(), ..SlowReport::default() };
        for w in &self.watched {
            // The kernel buffers count as full from the first look at which
            // the server's socket held 90 % of the most it ever held: from
            // then on, the server's own queue for the client fills.
            let max_queue = w.samples.iter().map(|&(_, q)| q).max().unwrap_or(0);
            let full_at =
                w.samples.iter().find(|&&(_, q)| q * 10 >= max_queue * 9).map(|&(t, _)| t);
            report.max_server_queue = report.max_server_queue.max(max_queue);
            match (w.closed_us, w.close_code) {
                (Some(closed), code) => {
                    report.closed += 1;
                    report.closed_after_start_us.push(closed.saturating_sub(posting_started_us));
                    if let Some(full_at) = full_at {
                        report.closed_after_stall_us.push(closed.saturating_sub(full_at));
                    }
                    let code = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
                    *report.close_codes.entry(code).or_default() += 1;
                }
                (None, _) => *report.close_codes.entry("still-open".to_owned()).or_default() += 1,
            }
        }
        report
    }

    /// Resets every watched connection (no TIME_WAIT left behind).
    pub(crate) fn release(&mut self) {
        for w in &self.watched {
            let _ = rustix::net::sockopt::set_socket_linger(&w.client.stream, Some(Duration::ZERO));
        }
        self.watched.clear();
    }
}

/// Reads everything the server had sent (for at most two seconds) and
/// returns the code of its close frame, or 1006 when the stream ended
/// without one. Only frame headers are looked at.
fn drain_for_close_code(stream: &mut std::net::TcpStream) -> u16 {
    // Open the window wide: megabytes may be waiting.
    let _ = rustix::net::sockopt::set_socket_recv_buffer_size(&*stream, 4 << 20);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 1 << 20];
    let mut pos = 0;
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => return wire::ABNORMAL_CLOSURE,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut fds = [rustix::event::PollFd::new(&*stream, rustix::event::PollFlags::IN)];
                let timeout = rustix::event::Timespec { tv_sec: 0, tv_nsec: 10_000_000 };
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return wire::ABNORMAL_CLOSURE,
        }
        while let Ok(Some((frame, used))) = wire::parse_frame(buf.get(pos..).unwrap_or_default()) {
            if frame.opcode == wire::OP_CLOSE {
                return wire::close_code(frame.payload);
            }
            pos += used;
        }
        if pos > (1 << 20) {
            buf.drain(..pos);
            pos = 0;
        }
    }
    wire::ABNORMAL_CLOSURE
}
