//! Frame accounting under tungstenite (SPEC §9, "Inbound frames").
//!
//! tungstenite hands the connection whole messages only: the frames of a
//! fragmented message, and the frames that make it up, are invisible to
//! the loop. So a peer sending an endless message of empty continuation
//! frames costs CPU without limit, and, since no message completes, looks
//! silent to the heartbeat. [`Frames`] sits between tungstenite and the
//! stream and parses the client frames' headers (RFC 6455 §5.2) from the
//! raw bytes as they are read: every frame marks the peer as seen, and a
//! message of more than [`MAX_FRAGMENTS`] frames fails the read with
//! [`TooManyFragments`], which the loop turns into a 1008 close.
//!
//! Generic over the stream, so that it wraps whatever carries the bytes
//! (plain TCP, TLS); writes pass through untouched.

use std::fmt;
use std::io::{self, Read, Write};
use std::ops::{Deref, DerefMut};

/// Most frames one message may arrive in.
pub(crate) const MAX_FRAGMENTS: u32 = 16;

/// The error a read returns once a message has more than
/// [`MAX_FRAGMENTS`] frames (inside an [`io::Error`] of kind `Other`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TooManyFragments;

impl fmt::Display for TooManyFragments {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a message of more than {MAX_FRAGMENTS} fragments")
    }
}

impl std::error::Error for TooManyFragments {}

impl TooManyFragments {
    /// Whether `e` is the error [`Frames`] returns for a message of too
    /// many fragments.
    pub(crate) fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(<dyn std::error::Error + Send + Sync>::is::<TooManyFragments>)
    }
}

/// Where the parser is in the inbound byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting a header: `have` of its bytes so far, in `header`.
    Header { have: usize },
    /// Skipping the payload of the current frame.
    Payload { left: u64 },
    /// The limit was reported: the connection is closing, nothing is
    /// parsed any more.
    Done,
}

/// A stream whose inbound frames are counted as they are read.
#[derive(Debug)]
pub(crate) struct Frames<S> {
    inner: S,
    state: State,
    /// Bytes of the header being collected (at most 2 + 8 + 4).
    header: [u8; 14],
    /// Frames of the message under way (0: none under way).
    fragments: u32,
    /// Most frames one message may have ([`MAX_FRAGMENTS`] for the live
    /// protocol).
    max_fragments: u32,
    /// A frame began since [`Frames::take_seen`] was last called.
    seen: bool,
}

impl<S> Frames<S> {
    /// Wraps `inner`; `leftover` are bytes of the stream already read past
    /// the handshake (handed to tungstenite separately), parsed first.
    pub(crate) fn new(inner: S, leftover: &[u8], max_fragments: u32) -> Frames<S> {
        let mut frames = Frames {
            inner,
            state: State::Header { have: 0 },
            header: [0; 14],
            fragments: 0,
            max_fragments,
            seen: false,
        };
        // A limit reached in the leftover shows at the first read.
        frames.parse(leftover);
        frames
    }

    /// Whether a frame arrived since the last call.
    pub(crate) fn take_seen(&mut self) -> bool {
        std::mem::take(&mut self.seen)
    }

    /// Parses `bytes`; returns `false` once a message has too many frames.
    fn parse(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match self.state {
                State::Done => return false,
                State::Payload { left } => {
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(bytes.len());
                    bytes = bytes.get(take..).unwrap_or_default();
                    let left = left - take as u64;
                    self.state =
                        if left == 0 { State::Header { have: 0 } } else { State::Payload { left } };
                }
                State::Header { mut have } => {
                    let need = self.header_len(have);
                    let take = (need - have).min(bytes.len());
                    if let (Some(slot), Some(src)) =
                        (self.header.get_mut(have..have + take), bytes.get(..take))
                    {
                        slot.copy_from_slice(src);
                    }
                    bytes = bytes.get(take..).unwrap_or_default();
                    have += take;
                    // The length byte may tell that more header follows.
                    if have < self.header_len(have) {
                        self.state = State::Header { have };
                        continue;
                    }
                    if !self.frame_began() {
                        self.state = State::Done;
                        return false;
                    }
                    let left = self.payload_len();
                    self.state =
                        if left == 0 { State::Header { have: 0 } } else { State::Payload { left } };
                }
            }
        }
        self.state != State::Done
    }

    /// Length of the header being collected, as far as `have` bytes tell.
    fn header_len(&self, have: usize) -> usize {
        if have < 2 {
            return 2;
        }
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        let extended = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + mask
    }

    fn payload_len(&self) -> u64 {
        match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(len)
            }
            n => u64::from(n),
        }
    }

    /// A whole header arrived: counts the frame. Returns `false` when its
    /// message now has too many frames.
    fn frame_began(&mut self) -> bool {
        self.seen = true;
        let fin = self.header[0] & 0x80 != 0;
        match self.header[0] & 0x0F {
            // Control frames may come between fragments; they are no part
            // of the message.
            0x8..=0xF => return true,
            // A continuation, or a new data frame: both add to the message
            // under way (a new data frame mid-message is tungstenite's
            // protocol error to report).
            _ => self.fragments = self.fragments.saturating_add(1),
        }
        let within = self.fragments <= self.max_fragments;
        if fin {
            self.fragments = 0;
        }
        within
    }
}

impl<S: Read> Read for Frames<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.state == State::Done {
            // Reported once; afterwards (lingering) the bytes pass.
            return self.inner.read(buf);
        }
        let n = self.inner.read(buf)?;
        if !self.parse(buf.get(..n).unwrap_or_default()) {
            return Err(io::Error::other(TooManyFragments));
        }
        Ok(n)
    }
}

impl<S: Write> Write for Frames<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The connection loop reaches the stream's own methods (the output queue)
/// through the wrapper.
impl<S> Deref for Frames<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.inner
    }
}

impl<S> DerefMut for Frames<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    #[allow(clippy::cast_possible_truncation)] // each match arm bounds the length
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[1, 2, 3, 4]);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ [1, 2, 3, 4][i % 4]));
        f
    }

    fn feed(frames: &mut Frames<io::Empty>, bytes: &[u8], chunk: usize) -> bool {
        bytes.chunks(chunk.max(1)).all(|c| frames.parse(c))
    }

    #[test]
    fn sixteen_fragments_pass_the_seventeenth_fails() {
        for chunk in [1, 3, 1000] {
            let mut f = Frames::new(io::empty(), &[], MAX_FRAGMENTS);
            let mut bytes = frame(false, 1, b"");
            for _ in 0..14 {
                bytes.extend(frame(false, 0, b""));
            }
            bytes.extend(frame(true, 0, b"x"));
            assert!(feed(&mut f, &bytes, chunk), "16 fragments, chunk {chunk}");
            assert!(f.take_seen());
            assert!(!f.take_seen());
            // A new message starts counting afresh.
            let mut bytes = frame(false, 2, &[0; 300]);
            for _ in 0..15 {
                bytes.extend(frame(false, 0, b""));
                // Control frames between fragments do not count.
                bytes.extend(frame(true, 9, b"ping"));
            }
            assert!(feed(&mut f, &bytes, chunk), "16 open fragments, chunk {chunk}");
            assert!(!feed(&mut f, &frame(false, 0, b""), chunk), "the 17th, chunk {chunk}");
            assert!(!f.parse(b"anything"), "reported for good");
        }
    }

    #[test]
    fn long_payloads_of_every_length_form_are_skipped_exactly() {
        let mut f = Frames::new(io::empty(), &[], MAX_FRAGMENTS);
        let mut bytes = Vec::new();
        for len in [0usize, 125, 126, 65_535, 65_536, 70_000] {
            // Payload bytes that look like headers must not be parsed.
            bytes.extend(frame(true, 1, &vec![0x00; len]));
        }
        assert!(feed(&mut f, &bytes, 777));
        assert_eq!(f.state, State::Header { have: 0 }, "ends on a frame boundary");
        assert_eq!(f.fragments, 0);
    }

    #[test]
    fn the_leftover_of_the_handshake_is_counted() {
        let mut f = Frames::new(io::empty(), &frame(true, 10, b""), MAX_FRAGMENTS);
        assert!(f.take_seen(), "a pong in the handshake's leftover");
    }

    #[test]
    fn reads_fail_once_with_the_typed_error() {
        let mut bytes = Vec::new();
        for _ in 0..17 {
            bytes.extend(frame(false, 0, b""));
        }
        bytes.extend(b"rest");
        let mut f = Frames::new(io::Cursor::new(bytes), &[], MAX_FRAGMENTS);
        let mut buf = [0u8; 4096];
        let err = f.read(&mut buf).expect_err("17 fragments");
        assert!(TooManyFragments::is(&err));
        assert!(!TooManyFragments::is(&io::Error::other("other")));
        assert_eq!(f.read(&mut buf).expect("passes afterwards"), 0, "the cursor was drained");
    }
}
