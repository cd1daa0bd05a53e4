//! The byte stream under a connection's tungstenite socket: one ordered
//! queue of outbound chunks, written with vectored writes.
//!
//! Live positions reach every subscriber as the *same* pre-framed bytes: a
//! server frame is unmasked (RFC 6455 §5.1), so the broadcaster frames a
//! batch once and each connection writes that shared buffer as is, without
//! copying it through tungstenite. Frames tungstenite makes itself (pongs,
//! pings, close frames, error messages) land in the same queue through
//! [`Write`], so everything leaves in the order it was produced, and the
//! connection loop writes the whole queue with one `writev` per wake-up.
//!
//! The wire keeps a counter shared with the connection's handle equal to
//! its unwritten bytes, so that what the thread owes its peer (its own
//! frames included) counts against the back-pressure threshold and shows
//! in `queuedBytes`, and so that the broadcaster writes through only when
//! nothing is unsent.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::outbound::Outbound;

/// Most chunks handed to one `writev` (Linux allows 1024; 64 is plenty
/// for one wake-up and keeps the slice array on the stack).
const MAX_IOVECS: usize = 64;

/// Owned chunks smaller than this are merged with the previous owned chunk,
/// so that a burst of small control frames is one chunk.
const MERGE_BELOW: usize = 512;

/// One queued piece of output.
#[derive(Debug)]
enum Chunk {
    /// A broadcaster batch shared with every subscriber, from a byte offset
    /// (the broadcaster wrote the bytes before it itself).
    Shared(Arc<Outbound>, usize),
    /// Bytes tungstenite wrote.
    Owned(Vec<u8>),
}

impl Chunk {
    fn len(&self) -> usize {
        match self {
            Chunk::Shared(entry, from) => entry.bytes().saturating_sub(*from),
            Chunk::Owned(bytes) => bytes.len(),
        }
    }

    /// The chunk's bytes from `offset` on, as slices (an entry cut from a
    /// shared answer is several).
    fn slices_from(&self, offset: usize) -> impl Iterator<Item = &[u8]> {
        let (owned, shared, mut offset) = match self {
            Chunk::Shared(entry, from) => (None, Some(entry), offset + from),
            Chunk::Owned(bytes) => (Some(bytes.as_slice()), None, offset),
        };
        let slices = owned.into_iter().chain(shared.into_iter().flat_map(|e| e.slices()));
        slices.filter_map(move |slice| {
            let skip = offset.min(slice.len());
            offset -= skip;
            slice.get(skip..).filter(|rest| !rest.is_empty())
        })
    }
}

/// The stream given to tungstenite: reads go to the socket, writes go to
/// the queue; [`Wire::drain`] does the socket writes.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    socket: S,
    out: VecDeque<Chunk>,
    /// Bytes of the front chunk already written.
    offset: usize,
    /// Unwritten bytes in `out`.
    pending: usize,
    /// Kept equal to `pending`, for the other threads.
    meter: Arc<AtomicUsize>,
    /// Bytes written to the socket so far: progress, for the write deadline.
    written: u64,
}

impl<S> Wire<S> {
    /// Sets `pending` and its shared copy.
    fn set_pending(&mut self, pending: usize) {
        self.pending = pending;
        self.meter.store(pending, Ordering::Relaxed);
    }
}

impl<S: Read + Write> Wire<S> {
    /// A wire over `socket` that keeps `meter` equal to its unwritten bytes.
    pub(crate) fn new(socket: S, meter: Arc<AtomicUsize>) -> Wire<S> {
        meter.store(0, Ordering::Relaxed);
        Wire { socket, out: VecDeque::new(), offset: 0, pending: 0, meter, written: 0 }
    }

    pub(crate) fn socket(&self) -> &S {
        &self.socket
    }

    /// Queues a broadcaster batch (already framed) behind what is queued,
    /// but for its first `from` bytes (already written by the broadcaster).
    pub(crate) fn push_shared(&mut self, entry: Arc<Outbound>, from: usize) {
        let chunk = Chunk::Shared(entry, from);
        self.set_pending(self.pending + chunk.len());
        self.out.push_back(chunk);
    }

    /// Whether unwritten bytes remain.
    pub(crate) fn is_blocked(&self) -> bool {
        self.pending > 0
    }

    /// Bytes written to the socket since the wire was made.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Writes as much of the queue as the socket takes.
    ///
    /// Returns `Ok(true)` when everything is written, `Ok(false)` when the
    /// socket would block (wait for POLLOUT and call again).
    ///
    /// # Errors
    /// Any socket error other than `WouldBlock`/`Interrupted`.
    pub(crate) fn drain(&mut self) -> io::Result<bool> {
        while self.pending > 0 {
            let written = {
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut n = 0;
                let parts =
                    self.out.iter().enumerate().flat_map(|(i, chunk)| {
                        chunk.slices_from(if i == 0 { self.offset } else { 0 })
                    });
                for (slot, bytes) in slices.iter_mut().zip(parts) {
                    *slot = IoSlice::new(bytes);
                    n += 1;
                }
                match self.socket.write_vectored(slices.get(..n).unwrap_or_default()) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(written) => written,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            };
            self.consume(written);
        }
        // A transport that buffers (TLS records) pushes its rest now; a
        // socket's flush does nothing.
        match self.socket.flush() {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops `n` written bytes from the front of the queue.
    fn consume(&mut self, mut n: usize) {
        self.set_pending(self.pending - n);
        self.written += n as u64;
        while n > 0 {
            let Some(front) = self.out.front() else { break };
            let left = front.len() - self.offset;
            if n < left {
                self.offset += n;
                return;
            }
            n -= left;
            self.offset = 0;
            self.out.pop_front();
        }
    }
}

impl<S: Read> Read for Wire<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.socket.read(buf)
    }
}

impl<S> Write for Wire<S> {
    /// Takes every byte: the queue, not the socket, decides when to write.
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.set_pending(self.pending + buf.len());
        match self.out.back_mut() {
            Some(Chunk::Owned(last)) if last.len() < MERGE_BELOW => {
                last.extend_from_slice(buf);
            }
            _ => self.out.push_back(Chunk::Owned(buf.to_vec())),
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::{Cut, OutboundKind, push_text_frame};

    /// A socket that takes at most `limit` bytes per call, then blocks,
    /// and counts calls: k queued frames must cost one `writev`.
    #[derive(Default)]
    struct Counting {
        written: Vec<u8>,
        calls: usize,
        limit: Option<usize>,
    }

    impl Read for Counting {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            if self.limit == Some(0) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = match self.limit {
                    Some(limit) => b.len().min(limit - n),
                    None => b.len(),
                };
                self.written.extend_from_slice(&b[..take]);
                n += take;
                if Some(n) == self.limit {
                    break;
                }
            }
            if let Some(limit) = &mut self.limit {
                *limit -= n;
            }
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn entry(text: &str) -> Arc<Outbound> {
        Arc::new(Outbound::single(OutboundKind::Position, text))
    }

    #[test]
    fn many_frames_one_writev_in_order() {
        let mut wire = Wire::new(Counting::default(), Arc::default());
        for i in 0..10 {
            wire.push_shared(entry(&format!("{{\"n\":{i}}}")), 0);
        }
        wire.write_all(b"pong").unwrap();
        assert!(wire.drain().unwrap());
        assert_eq!(wire.socket.calls, 1);
        assert!(!wire.is_blocked());
        let mut expected = Vec::new();
        for i in 0..10 {
            push_text_frame(&mut expected, format!("{{\"n\":{i}}}").as_bytes());
        }
        expected.extend_from_slice(b"pong");
        assert_eq!(wire.socket.written, expected);
    }

    #[test]
    fn partial_writes_resume_where_they_stopped() {
        let mut wire =
            Wire::new(Counting { limit: Some(7), ..Counting::default() }, Arc::default());
        wire.push_shared(entry("0123456789"), 0);
        wire.write_all(b"abc").unwrap();
        assert!(!wire.drain().unwrap(), "blocked after 7 bytes");
        assert!(wire.is_blocked());
        wire.socket.limit = Some(1000);
        assert!(wire.drain().unwrap());
        let mut expected = Vec::new();
        push_text_frame(&mut expected, b"0123456789");
        expected.extend_from_slice(b"abc");
        assert_eq!(wire.socket.written, expected);
    }

    #[test]
    fn an_entry_cut_from_shared_bytes_goes_out_range_by_range() {
        let shared: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(b"0123456789abcdef".to_vec());
        // Partial writes that stop inside the header, inside a range and
        // between ranges.
        for limit in [1, 2, 4, 7] {
            let mut entry = Outbound::single(OutboundKind::Subscribed, "");
            entry.wire = b"<h>".to_vec();
            entry.cut = Some(Cut::new(Arc::clone(&shared), vec![0..3, 5..6, 10..16]));
            assert_eq!(entry.bytes(), 3 + 3 + 1 + 6);
            let mut wire =
                Wire::new(Counting { limit: Some(limit), ..Counting::default() }, Arc::default());
            wire.push_shared(Arc::new(entry), 0);
            wire.write_all(b"!").unwrap();
            while !wire.drain().unwrap() {
                wire.socket.limit = Some(limit);
            }
            assert_eq!(wire.socket.written, b"<h>0125abcdef!", "limit {limit}");
            assert!(!wire.is_blocked());
        }
    }

    #[test]
    fn frame_lengths_follow_rfc6455() {
        for (len, header) in [(0usize, 2usize), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let mut out = Vec::new();
            push_text_frame(&mut out, &vec![b'x'; len]);
            assert_eq!(out.len(), len + header, "payload {len}");
            assert_eq!(out[0], 0x81);
        }
    }
}
