//! Blocking frame I/O over any byte stream.
//!
//! Timeouts come from the stream: set `TcpStream::set_read_timeout` and a peer
//! that goes quiet yields [`FrameIoError::Timeout`] instead of a hang.
//! [`read_frame_within`] bounds a whole frame, which also defeats a peer that
//! trickles one byte per timeout.

use std::{
    io::{self, ErrorKind, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use super::codec::{
    check_length_prefix, decode_payload, encode, DecodeError, EncodeError, Envelope,
    LENGTH_PREFIX_LEN,
};

/// A frame could not be read or written.
///
/// Only a [`FrameIoError::Timeout`] with `received == 0` leaves the stream at a
/// frame boundary; after anything else the session closes it (having answered
/// a [`FrameIoError::Decode`] with an error reply when the header parsed).
#[derive(Debug, thiserror::Error)]
pub enum FrameIoError {
    /// The peer closed the stream at a frame boundary.
    #[error("peer closed the connection")]
    Closed,
    /// The peer closed the stream inside a frame.
    #[error("peer closed the connection {received} bytes into a frame")]
    Truncated {
        /// Bytes of the frame (length prefix included) read before the close.
        received: usize,
    },
    /// The stream's timeout or the frame deadline expired. With `received ==
    /// 0` the peer was merely idle and the stream is still usable.
    #[error("timed out {received} bytes into a frame")]
    Timeout {
        /// Bytes of the frame (length prefix included) read before the timeout.
        received: usize,
    },
    /// The frame is invalid.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message cannot be framed.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// Any other I/O failure.
    #[error("frame I/O failed")]
    Io(#[from] io::Error),
}

fn is_timeout(kind: ErrorKind) -> bool {
    // A socket read timeout shows up as WouldBlock on Unix, TimedOut elsewhere.
    matches!(kind, ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

/// Fills `buf`, counting bytes of the frame already read in `before`.
fn fill(reader: &mut impl Read, buf: &mut [u8], before: usize) -> Result<(), FrameIoError> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) if before + filled == 0 => return Err(FrameIoError::Closed),
            Ok(0) => {
                return Err(FrameIoError::Truncated {
                    received: before + filled,
                })
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(e.kind()) => {
                return Err(FrameIoError::Timeout {
                    received: before + filled,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one frame. The length prefix is checked before the payload buffer is
/// allocated.
pub fn read_frame(reader: &mut impl Read) -> Result<Envelope, FrameIoError> {
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    fill(reader, &mut prefix, 0)?;
    let len = check_length_prefix(prefix)?;
    let mut payload = vec![0u8; len];
    fill(reader, &mut payload, LENGTH_PREFIX_LEN)?;
    Ok(decode_payload(&payload)?)
}

/// Writes one frame in a single `write_all`. A write timeout surfaces as
/// [`FrameIoError::Io`]; part of the frame may have been sent.
pub fn write_frame(writer: &mut impl Write, envelope: &Envelope) -> Result<(), FrameIoError> {
    let frame = encode(envelope)?;
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(())
}

/// Reads from a socket with every read's timeout shortened to what is left
/// until a deadline.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        stream.read(buf)
    }
}

/// Reads one frame that must arrive completely within `limit`, however the
/// peer paces its bytes. The socket's own read timeout is restored afterwards.
pub fn read_frame_within(stream: &TcpStream, limit: Duration) -> Result<Envelope, FrameIoError> {
    let saved = stream.read_timeout()?;
    let mut reader = DeadlineReader {
        stream,
        deadline: Instant::now() + limit,
    };
    let result = read_frame(&mut reader);
    stream.set_read_timeout(saved)?;
    result
}
