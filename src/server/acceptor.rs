//! The `acceptor` thread: blocks in `accept()` and gives every socket its
//! own named thread.
//!
//! Limits are enforced here, before a thread exists, so that a flood of
//! half-open connections cannot create more than `LIVE_WS_MAX_CONNECTIONS`
//! threads: past a limit the socket gets a best-effort 503 from this thread
//! (non-blocking write, never waits on the peer) and is closed.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use log::{debug, error, info, warn};
use uuid::Uuid;

use super::{Shared, Slot, connection};
use crate::outbound::thread_name;
use crate::thread::spawn_named;

/// Pause after a failed `accept` (EMFILE/ENFILE), so that the loop does not
/// spin while descriptors are exhausted.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The running acceptor.
#[derive(Debug)]
pub(crate) struct Acceptor {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Starts the `acceptor` thread on an already bound listener.
    pub(crate) fn start(listener: TcpListener, shared: Arc<Shared>) -> io::Result<Acceptor> {
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread =
            spawn_named("acceptor".into(), None, move || accept_loop(&listener, &shared, &flag))?;
        Ok(Acceptor { addr, stop, thread: Some(thread) })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting: sets the flag, then connects to our own address to
    /// wake the blocking `accept()` (tiny-http's trick), and joins.
    pub(crate) fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>, stop: &AtomicBool) {
    info!("websocket listening on {}", listener.local_addr().map_or("?".into(), |a| a.to_string()));
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let (stream, remote) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                warn!("accept failed: {e}");
                std::thread::sleep(ACCEPT_ERROR_PAUSE);
                continue;
            }
        };
        let Some(slot) = Slot::take(shared, remote.ip()) else {
            debug!("{remote}: connection limit reached, 503");
            refuse(stream, shared);
            continue;
        };
        let id = Uuid::new_v4();
        let worker = Arc::clone(shared);
        let spawned =
            spawn_named(thread_name(id), Some(shared.config.thread_stack_bytes), move || {
                connection::run(&worker, stream, remote, id, slot);
            });
        if let Err(e) = spawned {
            // The closure (socket and slot) was dropped with the error.
            error!("cannot spawn a connection thread: {e}");
        }
    }
    info!("acceptor stopped");
}

/// Answers 503 without ever blocking the acceptor, then drops the socket.
///
/// What the client already sent is read first: closing a socket with unread
/// input makes the kernel send a reset, which could destroy the 503 before
/// the client reads it.
fn refuse(mut stream: TcpStream, shared: &Shared) {
    shared.metrics.upgrades_rejected.with_label_values(&["503"]).inc();
    if stream.set_nonblocking(true).is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let _ = stream.shutdown(std::net::Shutdown::Write);
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}
