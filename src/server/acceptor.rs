//! The WebSocket port's side of [`crate::accept`]: what the `acceptor`
//! thread does with a socket it admits (spawn its `ws-xxxxxxxx` thread) or
//! refuses (`503`).
//!
//! The limits themselves (`LIVE_WS_MAX_CONNECTIONS`,
//! `LIVE_WS_MAX_CONNECTIONS_PER_IP`, `LIVE_WS_MAX_PENDING_PER_IP`) are
//! enforced by the shared acceptor before a thread exists, so a flood of
//! half-open connections costs no more threads than they allow.

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

use log::error;
use uuid::Uuid;

use super::{Shared, connection};
use crate::accept::{Port, Refusal, Slot};
use crate::outbound::thread_name;
use crate::thread::spawn_named;

/// The WebSocket port as the acceptor sees it.
#[derive(Debug)]
pub(crate) struct WsPort {
    pub(crate) shared: Arc<Shared>,
}

impl Port for WsPort {
    fn refusal(&self, _why: Refusal) -> Vec<u8> {
        self.shared.metrics.upgrades_rejected.with_label_values(&["503"]).inc();
        // The accept thread does no TLS handshake: a TLS port's refusal is
        // a close.
        if self.shared.tls.is_some() {
            return Vec::new();
        }
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            .to_vec()
    }

    fn serve(&mut self, stream: TcpStream, remote: SocketAddr, slot: Slot) {
        let id = Uuid::new_v4();
        let worker = Arc::clone(&self.shared);
        let spawned =
            spawn_named(thread_name(id), Some(self.shared.config.thread_stack_bytes), move || {
                connection::run(&worker, stream, remote, id, slot);
            });
        if let Err(e) = spawned {
            // The closure (socket and slot) was dropped with the error.
            error!("cannot spawn a connection thread: {e}");
        }
    }
}
