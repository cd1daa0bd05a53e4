//! What the load generator reads from /proc: CPU time and memory of a
//! process (the server's or its own), and the kernel's view of TCP sockets
//! (to see when a server closed a client that does not read).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;

use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// CPU seconds (user + system, all threads, dead ones included) of `pid`,
/// or of this process when `pid` is `None`.
pub(crate) fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may contain spaces and parentheses: fields are
    // counted from the last ')'. utime and stime are fields 14 and 15.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = rustix::param::clock_ticks_per_second();
    Some(crate::u2f(utime + stime) / crate::u2f(ticks.max(1)))
}

/// Resident set size now and its peak (`VmRSS`, `VmHWM`), in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Memory {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

pub(crate) fn memory(pid: u32) -> Option<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line.get(name.len()..)?.split_whitespace().next()?.parse().ok()
    };
    Some(Memory { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// Kernel state of the server side of a TCP connection.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SocketState {
    /// `/proc/net/tcp` state: 1 established, 4 FIN-WAIT-1, 7 close, ...
    pub(crate) state: u8,
    /// Bytes written by the server and not yet acknowledged by the peer.
    pub(crate) tx_queue: u64,
}

/// Exact look-ups of one TCP socket's state through NETLINK_SOCK_DIAG: a
/// hash look-up in the kernel, where reading /proc/net/tcp walks the whole
/// established table (milliseconds per read on a big machine).
#[derive(Debug)]
pub(crate) struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

/// `SOCK_DIAG_BY_FAMILY`, `NLMSG_ERROR`, `NLM_F_REQUEST`.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;

impl SockDiag {
    pub(crate) fn open() -> Option<SockDiag> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(rustix::net::netlink::SOCK_DIAG),
        )
        .ok()?;
        Some(SockDiag { fd, seq: 0 })
    }

    /// The TCP socket bound to `local` and connected to `remote`:
    /// `Ok(None)` when there is no such socket any more, `Err` when the
    /// kernel could not be asked.
    pub(crate) fn tcp_socket(
        &mut self,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<Option<SocketState>, ()> {
        fn addr_bytes(a: SocketAddr) -> [u8; 16] {
            let mut out = [0u8; 16];
            match a {
                SocketAddr::V4(v4) => out[..4].copy_from_slice(&v4.ip().octets()),
                SocketAddr::V6(v6) => out.copy_from_slice(&v6.ip().octets()),
            }
            out
        }
        let family: u8 = if local.is_ipv4() { 2 } else { 10 };
        self.seq = self.seq.wrapping_add(1);
        let mut msg = Vec::with_capacity(72);
        msg.extend_from_slice(&72u32.to_ne_bytes());
        msg.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&self.seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        // struct inet_diag_req_v2
        msg.extend_from_slice(&[family, 6 /* IPPROTO_TCP */, 0, 0]);
        msg.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        msg.extend_from_slice(&local.port().to_be_bytes());
        msg.extend_from_slice(&remote.port().to_be_bytes());
        msg.extend_from_slice(&addr_bytes(local));
        msg.extend_from_slice(&addr_bytes(remote));
        msg.extend_from_slice(&0u32.to_ne_bytes()); // interface
        msg.extend_from_slice(&[0xFF; 8]); // INET_DIAG_NOCOOKIE
        rustix::net::send(&self.fd, &msg, SendFlags::empty()).map_err(|_| ())?;
        let mut buf = [0u8; 512];
        loop {
            let (n, _) =
                rustix::net::recv(&self.fd, &mut buf, RecvFlags::empty()).map_err(|_| ())?;
            let reply = buf.get(..n).ok_or(())?;
            let field = |at: usize| reply.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
            let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]]));
            let seq = field(8).map(u32::from_ne_bytes);
            if seq != Some(self.seq) {
                continue; // an answer to an earlier, abandoned question
            }
            return match kind {
                // struct inet_diag_msg after the 16-byte header: state at
                // byte 1, idiag_wqueue at byte 60.
                Some(SOCK_DIAG_BY_FAMILY) => match (reply.get(17), field(76)) {
                    (Some(&state), Some(wqueue)) => Ok(Some(SocketState {
                        state,
                        tx_queue: u64::from(u32::from_ne_bytes(wqueue)),
                    })),
                    _ => Err(()),
                },
                Some(NLMSG_ERROR) => match field(16).map(i32::from_ne_bytes) {
                    Some(-2) => Ok(None), // ENOENT
                    _ => Err(()),
                },
                _ => Err(()),
            };
        }
    }
}

/// The server-side sockets (local port `server_port`) whose peer port is in
/// `peer_ports`, keyed by peer port. A connection missing from the map has
/// been torn down completely (reset, or closed and gone). `None` when the
/// tables list no socket on `server_port` at all (not even the listening
/// one): they could not be read.
pub(crate) fn server_sockets(
    server_port: u16,
    peer_ports: &[u16],
) -> Option<HashMap<u16, SocketState>> {
    let mut found = HashMap::new();
    let mut seen_port = false;
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(table) = std::fs::read_to_string(file) else { continue };
        for line in table.lines().skip(1) {
            let mut cols = line.split_whitespace();
            let (Some(_), Some(local), Some(remote), Some(state), Some(queues)) =
                (cols.next(), cols.next(), cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            let port =
                |addr: &str| addr.rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if port(local) != Some(server_port) {
                continue;
            }
            seen_port = true;
            let Some(peer) = port(remote) else { continue };
            if !peer_ports.contains(&peer) {
                continue;
            }
            let state = u8::from_str_radix(state, 16).unwrap_or(0);
            let tx_queue =
                queues.split(':').next().and_then(|q| u64::from_str_radix(q, 16).ok()).unwrap_or(0);
            found.insert(peer, SocketState { state, tx_queue });
        }
    }
    seen_port.then_some(found)
}

/// Number of CPUs this process may run on (its affinity mask).
pub(crate) fn allowed_cpus() -> usize {
    rustix::thread::sched_getaffinity(None)
        .map(|set| usize::try_from(set.count()).unwrap_or(1))
        .unwrap_or(1)
        .max(1)
}

/// Raises the open-files soft limit to the hard limit; returns the limit in
/// force afterwards.
pub(crate) fn raise_nofile_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current
}

/// The kernel's count of connections dropped because a listen queue was
/// full (`TcpExt: ListenOverflows` in /proc/net/netstat): a connect storm
/// that overflows the server's accept backlog costs its clients a SYN
/// retransmission (1 s).
pub(crate) fn listen_overflows() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = netstat.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let i = names.split_whitespace().position(|n| n == "ListenOverflows")?;
        return values.split_whitespace().nth(i)?.parse().ok();
    }
    None
}
