//! Blocking frame I/O over any byte stream.
//!
//! Timeouts come from the stream: set `TcpStream::set_read_timeout` (or
//! [`TimedRead::set_read_timeout`] on a TLS session) and a peer that goes
//! quiet yields [`FrameIoError::Timeout`] instead of a hang.
//! [`read_frame_within`] bounds a whole frame, which also defeats a peer that
//! trickles one byte per timeout.

use std::{
    io::{self, ErrorKind, Read, Write},
    time::{Duration, Instant},
};

use super::codec::{
    check_length_prefix, decode_payload, encode, DecodeError, EncodeError, Envelope, LENGTH_PREFIX_LEN,
};
use super::tls::TimedRead;

/// A frame could not be read or written.
///
/// Only after a [`FrameIoError::Timeout`] with `received == 0` may the session
/// keep using the stream; after anything else it closes it (having answered a
/// [`FrameIoError::Decode`] with an error reply when the header parsed).
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

/// The payload buffer grows by at most this much ahead of the bytes received,
/// so a peer that announces a large frame and sends little of it costs little.
const READ_CHUNK: usize = 64 * 1024;

/// Reads one frame. The length prefix is checked against the limits before any
/// of the payload is read.
pub fn read_frame(reader: &mut impl Read) -> Result<Envelope, FrameIoError> {
    let mut prefix = [0u8; LENGTH_PREFIX_LEN];
    fill(reader, &mut prefix, 0)?;
    let len = check_length_prefix(prefix)?;
    let mut payload = Vec::new();
    while payload.len() < len {
        let start = payload.len();
        payload.resize(start + (len - start).min(READ_CHUNK), 0);
        fill(reader, &mut payload[start..], LENGTH_PREFIX_LEN + start)?;
    }
    Ok(decode_payload(&payload)?)
}

/// Writes one frame in a single `write_all`; returns its length in bytes.
/// A write timeout surfaces as [`FrameIoError::Io`]; part of the frame may
/// have been sent.
pub fn write_frame(writer: &mut impl Write, envelope: &Envelope) -> Result<usize, FrameIoError> {
    let frame = encode(envelope)?;
    writer.write_all(&frame)?;
    writer.flush()?;
    Ok(frame.len())
}

/// Reads from a stream with every read's timeout shortened to what is left
/// until a deadline.
struct DeadlineReader<'a, S> {
    stream: &'a mut S,
    deadline: Instant,
}

impl<S: TimedRead> Read for DeadlineReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// Reads one frame that must arrive completely within `limit`, however the
/// peer paces its bytes. The stream's own read timeout is restored afterwards.
pub fn read_frame_within<S: TimedRead>(stream: &mut S, limit: Duration) -> Result<Envelope, FrameIoError> {
    let saved = stream.read_timeout()?;
    let mut reader = DeadlineReader {
        stream,
        deadline: Instant::now() + limit,
    };
    let result = read_frame(&mut reader);
    reader.stream.set_read_timeout(saved)?;
    result
}

/// Reads from a stream that may idle until `idle_until` before a frame
/// begins, and then has `limit` to finish it.
struct PacedReader<'a, S> {
    stream: &'a mut S,
    idle_until: Instant,
    limit: Duration,
    deadline: Option<Instant>,
}

impl<S: TimedRead> Read for PacedReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let until = self.deadline.unwrap_or(self.idle_until);
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let n = self.stream.read(buf)?;
        if n > 0 && self.deadline.is_none() {
            self.deadline = Some(Instant::now() + self.limit);
        }
        Ok(n)
    }
}

/// Reads one frame: waits up to `idle` for it to begin (then
/// [`FrameIoError::Timeout`] with `received == 0`: the peer is idle), and
/// from its first byte gives it `limit` to complete, however the peer paces
/// its bytes. The stream's own read timeout is restored afterwards.
pub fn read_frame_paced<S: TimedRead>(
    stream: &mut S,
    idle: Duration,
    limit: Duration,
) -> Result<Envelope, FrameIoError> {
    let saved = stream.read_timeout()?;
    let mut reader = PacedReader {
        stream,
        idle_until: Instant::now() + idle,
        limit,
        deadline: None,
    };
    let result = read_frame(&mut reader);
    reader.stream.set_read_timeout(saved)?;
    result
}

#[cfg(test)]
mod tests {
    use std::{
        io::Cursor,
        net::{TcpListener, TcpStream},
        num::NonZeroU64,
        thread,
        time::{Duration, Instant},
    };

    use super::*;
    use crate::control::{
        codec::{DecodeError, MAX_FRAME_LEN},
        flow::tests::node,
        ids::{Incarnation, Sender},
        message::{ErrorCode, ErrorReply, StatusRequest},
        samples::every_body,
    };

    fn envelope(serial: u64) -> Envelope {
        Envelope::new(
            Sender::Node(node(1)),
            Incarnation(77),
            NonZeroU64::new(serial).expect("test serials are nonzero"),
            StatusRequest,
        )
    }

    /// A connected loopback pair: (client, server side).
    fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
        let client = TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        (client, server)
    }

    #[test]
    fn frames_of_every_kind_cross_a_loopback_connection_in_order() {
        let (mut client, mut server) = tcp_pair();
        let sent: Vec<Envelope> = every_body()
            .into_iter()
            .zip(1..)
            .map(|(body, serial)| Envelope {
                body,
                ..envelope(serial)
            })
            .collect();
        let to_send = sent.clone();
        let writer = thread::spawn(move || {
            for env in &to_send {
                write_frame(&mut client, env).expect("write");
            }
        });
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        for expected in &sent {
            assert_eq!(&read_frame(&mut server).expect("read"), expected);
        }
        writer.join().expect("writer thread");
        assert!(matches!(read_frame(&mut server), Err(FrameIoError::Closed)));
    }

    #[test]
    fn a_peer_that_stalls_mid_frame_times_out_instead_of_hanging() {
        let (mut client, mut server) = tcp_pair();
        let frame = encode(&envelope(1)).expect("encodes");
        let half = frame.len() / 2;
        client.write_all(&frame[..half]).expect("write half");
        server
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("set timeout");
        let started = Instant::now();
        let err = read_frame(&mut server).expect_err("the frame never completes");
        assert!(
            matches!(err, FrameIoError::Timeout { received } if received == half),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(client);
    }

    #[test]
    fn an_idle_peer_times_out_at_a_frame_boundary_and_the_stream_stays_usable() {
        let (mut client, mut server) = tcp_pair();
        server
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("set timeout");
        assert!(matches!(
            read_frame(&mut server),
            Err(FrameIoError::Timeout { received: 0 })
        ));
        write_frame(&mut client, &envelope(2)).expect("write");
        assert_eq!(read_frame(&mut server).expect("read"), envelope(2));
    }

    #[test]
    fn a_trickling_peer_cannot_stretch_a_frame_past_the_deadline() {
        let (mut client, mut server) = tcp_pair();
        let frame = encode(&envelope(1)).expect("encodes");
        let trickler = thread::spawn(move || {
            // One byte per 40 ms: each read completes well inside any read
            // timeout, but the frame takes over a second.
            for byte in frame {
                if client.write_all(&[byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(40));
            }
        });
        let per_read = Some(Duration::from_secs(2));
        server.set_read_timeout(per_read).expect("set timeout");
        let started = Instant::now();
        let err =
            read_frame_within(&mut server, Duration::from_millis(300)).expect_err("the frame cannot complete in time");
        let elapsed = started.elapsed();
        assert!(
            matches!(err, FrameIoError::Timeout { received } if received > 0),
            "{err:?}"
        );
        assert!(elapsed >= Duration::from_millis(300), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(1), "{elapsed:?}");
        assert_eq!(server.read_timeout().expect("timeout"), per_read);
        drop(server);
        trickler.join().expect("trickler thread");
    }

    #[test]
    fn a_paced_read_waits_idle_then_bounds_the_frame_from_its_first_byte() {
        let (mut client, mut server) = tcp_pair();
        assert!(matches!(
            read_frame_paced(&mut server, Duration::from_millis(50), Duration::from_secs(5)),
            Err(FrameIoError::Timeout { received: 0 })
        ));
        let frame = encode(&envelope(1)).expect("encodes");
        client.write_all(&frame[..5]).expect("write the start");
        let err = read_frame_paced(&mut server, Duration::from_secs(5), Duration::from_millis(100))
            .expect_err("the frame stalls");
        assert!(matches!(err, FrameIoError::Timeout { received: 5 }), "{err:?}");
        let (mut client, mut server) = tcp_pair();
        write_frame(&mut client, &envelope(2)).expect("write");
        assert_eq!(
            read_frame_paced(&mut server, Duration::from_secs(5), Duration::from_secs(5)).expect("read"),
            envelope(2)
        );
    }

    #[test]
    fn read_frame_within_returns_a_frame_that_arrives_in_time() {
        let (mut client, mut server) = tcp_pair();
        write_frame(&mut client, &envelope(3)).expect("write");
        assert_eq!(
            read_frame_within(&mut server, Duration::from_secs(5)).expect("read"),
            envelope(3)
        );
        assert_eq!(server.read_timeout().expect("timeout"), None);
    }

    #[test]
    fn a_close_inside_a_frame_is_truncation_at_every_length() {
        let frame = encode(&envelope(1)).expect("encodes");
        assert!(matches!(
            read_frame(&mut Cursor::new(&[][..])),
            Err(FrameIoError::Closed)
        ));
        for cut in 1..frame.len() {
            let err = read_frame(&mut Cursor::new(&frame[..cut])).expect_err("short");
            assert!(
                matches!(err, FrameIoError::Truncated { received } if received == cut),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn frames_spanning_several_read_chunks_read_whole_or_report_the_exact_cut() {
        let env = Envelope {
            body: ErrorReply {
                code: ErrorCode::InvalidRequest,
                detail: "y".repeat(3 * READ_CHUNK + 17),
            }
            .into(),
            ..envelope(4)
        };
        let frame = encode(&env).expect("encodes");
        assert_eq!(read_frame(&mut Cursor::new(&frame)).expect("read"), env);
        let cut = 2 * READ_CHUNK + 5;
        assert!(matches!(
            read_frame(&mut Cursor::new(&frame[..cut])),
            Err(FrameIoError::Truncated { received }) if received == cut
        ));
    }

    #[test]
    fn a_bumped_length_reads_as_truncation_and_an_oversize_one_is_refused_unread() {
        let mut frame = encode(&envelope(1)).expect("encodes");
        let declared = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        frame[..4].copy_from_slice(&(declared + 1).to_be_bytes());
        assert!(matches!(
            read_frame(&mut Cursor::new(&frame)),
            Err(FrameIoError::Truncated { received }) if received == frame.len()
        ));

        let (mut client, mut server) = tcp_pair();
        client
            .write_all(&(MAX_FRAME_LEN + 1).to_be_bytes())
            .expect("write prefix");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("set timeout");
        // Refused right after the prefix: no wait for the 16 MiB that never come.
        assert!(matches!(
            read_frame(&mut server),
            Err(FrameIoError::Decode(DecodeError::TooLarge { .. }))
        ));
    }
}
