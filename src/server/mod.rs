//! The WebSocket side: one blocking acceptor, one thread per client.
//!
//! - `acceptor.rs`: the `acceptor` thread: accept, enforce the connection
//!   limits, spawn a `ws-xxxxxxxx` thread per socket;
//! - `handshake.rs`: the HTTP upgrade, run in the new thread: Origin, auth,
//!   `GET /auth/check`, 101;
//! - `connection.rs`: the connection loop: poll on socket + wake fd, write
//!   queued frames, read, heartbeat;
//! - `sleep.rs`: the per-connection epoll set (socket + wake eventfd) the
//!   thread blocks in;
//! - `wire.rs`: the ordered output queue under tungstenite, written with
//!   one `writev` per wake-up; shared pre-framed batches go out uncopied.

mod acceptor;
mod connection;
mod handshake;
mod sleep;
mod wire;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::Sender;
use parking_lot::{Mutex, RwLock};
use uuid::Uuid;

use crate::auth::Authenticator;
use crate::broadcast::Command;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::outbound::ClientHandle;
use crate::source::redis::{SourceStatus, StreamSink};

pub(crate) use acceptor::Acceptor;

/// What each connection does with the data messages it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Service {
    /// The live protocol (SPEC §3): subscribe, unsubscribe.
    #[default]
    Live,
    /// Echo every text and binary message back: the WebSocket conformance
    /// suite (Autobahn) runs against the product's own connection loop
    /// with this handler plugged in.
    Echo,
}

/// What every connection thread shares with the rest of the server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) metrics: Metrics,
    pub(crate) service: Service,
    /// The broadcaster's inbox.
    pub(crate) commands: Sender<Command>,
    pub(crate) auth: Box<dyn Authenticator>,
    /// Open (post-upgrade) connections, for the debug endpoint and the stop.
    pub(crate) connections: RwLock<HashMap<Uuid, Arc<ClientHandle>>>,
    /// False once a stop has begun: readiness turns 503.
    pub(crate) accepting: AtomicBool,
    /// Connection threads alive, handshaking ones included.
    threads: AtomicUsize,
    /// The Redis source's state, when Redis is configured.
    pub(crate) source: Option<Arc<SourceStatus>>,
    /// Where ingested positions go when Redis is configured.
    pub(crate) sink: Option<StreamSink>,
    /// Connection threads per peer address, when a per-IP limit is set.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl Shared {
    pub(crate) fn new(
        config: Config,
        metrics: Metrics,
        service: Service,
        commands: Sender<Command>,
        auth: Box<dyn Authenticator>,
        source: Option<Arc<SourceStatus>>,
        sink: Option<StreamSink>,
    ) -> Shared {
        Shared {
            config,
            metrics,
            service,
            commands,
            auth,
            connections: RwLock::new(HashMap::new()),
            accepting: AtomicBool::new(true),
            threads: AtomicUsize::new(0),
            source,
            sink,
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Connection threads alive (handshaking ones included).
    pub(crate) fn threads(&self) -> usize {
        self.threads.load(Ordering::SeqCst)
    }
}

/// A connection thread's place in the limits: taken by the acceptor before
/// spawning, released when the thread ends on any path (tiny-http's
/// `Registration`), so the counts cannot drift.
#[derive(Debug)]
pub(crate) struct Slot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Slot {
    /// Takes a slot, or `None` when a limit is reached.
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> Option<Slot> {
        let ip = crate::proxy::limit_key(ip);
        let max = shared.config.max_connections;
        let taken = shared
            .threads
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < max).then_some(n + 1))
            .is_ok();
        if !taken {
            return None;
        }
        let per_ip_max = shared.config.max_connections_per_ip;
        if per_ip_max > 0 {
            let mut per_ip = shared.per_ip.lock();
            let n = per_ip.entry(ip).or_insert(0);
            if *n >= per_ip_max {
                drop(per_ip);
                shared.threads.fetch_sub(1, Ordering::SeqCst);
                return None;
            }
            *n += 1;
        }
        Some(Slot { shared: Arc::clone(shared), ip })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.shared.config.max_connections_per_ip > 0 {
            let mut per_ip = self.shared.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&self.ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&self.ip);
                }
            }
        }
        self.shared.threads.fetch_sub(1, Ordering::SeqCst);
    }
}
