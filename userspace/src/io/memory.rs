//! The in-memory backend: a fixed pool of frames, an RX queue that tests fill
//! with [`MemoryPort::inject`], and a TX queue they drain. Same verdict
//! semantics as AF_XDP and no allocation after construction, so it also
//! serves micro-benchmarks of the pipeline.

use super::{FrameBuf, FrameError, PacketIo, Pending, PortStats, SendError, Verdict};
use std::{collections::VecDeque, time::Duration};

/// A pool frame with headroom.
#[derive(Debug)]
pub struct MemoryFrame {
    buf: Box<[u8]>,
    head: usize,
    tail: usize,
}

impl MemoryFrame {
    /// A standalone frame of `capacity` bytes after `headroom` bytes of
    /// headroom, for frames that do not come from a port (another core's).
    pub fn new(capacity: usize, headroom: usize) -> Self {
        Self {
            buf: vec![0; headroom + capacity].into_boxed_slice(),
            head: headroom,
            tail: headroom,
        }
    }

    /// Replaces the contents with `bytes`, restoring `headroom`.
    pub fn load(&mut self, bytes: &[u8], headroom: usize) -> Result<(), FrameError> {
        let available = self.buf.len().saturating_sub(headroom);
        if headroom > self.buf.len() || bytes.len() > available {
            return Err(FrameError::TooShort {
                len: available,
                requested: bytes.len(),
            });
        }
        self.reset(headroom);
        self.tail = headroom + bytes.len();
        self.buf[headroom..self.tail].copy_from_slice(bytes);
        Ok(())
    }

    fn reset(&mut self, headroom: usize) {
        self.head = headroom;
        self.tail = headroom;
    }
}

impl FrameBuf for MemoryFrame {
    fn bytes(&self) -> &[u8] {
        &self.buf[self.head..self.tail]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.head..self.tail]
    }
    fn push_front(&mut self, n: usize) -> Result<(), FrameError> {
        if n > self.head {
            return Err(FrameError::NoHeadroom {
                needed: n,
                available: self.head,
            });
        }
        self.head -= n;
        Ok(())
    }
    fn pull_front(&mut self, n: usize) -> Result<(), FrameError> {
        let len = self.tail - self.head;
        if n > len {
            return Err(FrameError::TooShort { len, requested: n });
        }
        self.head += n;
        Ok(())
    }
    fn truncate(&mut self, new_len: usize) -> Result<(), FrameError> {
        let len = self.tail - self.head;
        if new_len > len {
            return Err(FrameError::TooShort {
                len,
                requested: new_len,
            });
        }
        self.tail = self.head + new_len;
        Ok(())
    }
}

/// An in-memory port.
#[derive(Debug)]
pub struct MemoryPort {
    free: Vec<MemoryFrame>,
    rx: VecDeque<MemoryFrame>,
    tx: VecDeque<MemoryFrame>,
    total: usize,
    headroom: usize,
    capacity: usize,
    burst: usize,
    stats: PortStats,
}

impl MemoryPort {
    /// A port with `frames` frames of `frame_capacity` bytes (plus 64 bytes
    /// of headroom) and bursts of `burst`.
    pub fn new(frames: usize, frame_capacity: usize, burst: usize) -> Self {
        let headroom = 64;
        let free = (0..frames)
            .map(|_| MemoryFrame::new(frame_capacity, headroom))
            .collect();
        Self {
            free,
            rx: VecDeque::with_capacity(frames),
            tx: VecDeque::with_capacity(frames),
            total: frames,
            headroom,
            capacity: frame_capacity,
            burst: burst.max(1),
            stats: PortStats::default(),
        }
    }

    fn take_free(&mut self, len: usize) -> Result<MemoryFrame, SendError> {
        if len > self.capacity {
            return Err(SendError::TooLarge {
                len,
                capacity: self.capacity,
            });
        }
        let mut frame = self.free.pop().ok_or(SendError::PoolEmpty)?;
        frame.reset(self.headroom);
        frame.tail = self.headroom + len;
        Ok(frame)
    }

    /// Queues `bytes` as if the wire had delivered them.
    pub fn inject(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        let mut frame = self.take_free(bytes.len())?;
        frame.bytes_mut().copy_from_slice(bytes);
        self.rx.push_back(frame);
        Ok(())
    }

    /// Hands every transmitted frame, in order, to `each` and returns the frames to the pool.
    pub fn drain_tx(&mut self, mut each: impl FnMut(&[u8])) -> usize {
        let n = self.tx.len();
        while let Some(frame) = self.tx.pop_front() {
            each(frame.bytes());
            self.free.push(frame);
        }
        n
    }

    /// Copies of every transmitted frame (tests; allocates).
    pub fn take_transmitted(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::with_capacity(self.tx.len());
        self.drain_tx(|b| out.push(b.to_vec()));
        out
    }

    /// Frames in the pool, the RX queue and the TX queue: equals the total
    /// when nothing leaked.
    pub fn frames_accounted(&self) -> usize {
        self.free.len() + self.rx.len() + self.tx.len()
    }

    /// Total frames.
    pub fn total_frames(&self) -> usize {
        self.total
    }
}

impl PacketIo for MemoryPort {
    type Frame = MemoryFrame;

    fn poll_rx<F: FnMut(&mut MemoryFrame) -> Verdict>(&mut self, mut handle: F) -> usize {
        let mut handled = 0;
        while handled < self.burst {
            let Some(mut frame) = self.rx.pop_front() else {
                break;
            };
            handled += 1;
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += frame.bytes().len() as u64;
            match handle(&mut frame) {
                Verdict::Transmit => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.bytes().len() as u64;
                    self.tx.push_back(frame);
                }
                Verdict::Drop => {
                    self.stats.dropped += 1;
                    self.free.push(frame);
                }
            }
        }
        handled
    }

    fn send_with<F: FnOnce(&mut [u8])>(&mut self, len: usize, fill: F) -> Result<(), SendError> {
        let mut frame = self.take_free(len).inspect_err(|e| {
            if *e == SendError::PoolEmpty {
                self.stats.tx_pool_empty += 1;
            }
        })?;
        fill(frame.bytes_mut());
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        self.tx.push_back(frame);
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn pending(&self) -> Pending {
        Pending {
            rx: self.rx.len(),
            tx: 0,
        }
    }

    fn stats(&self) -> PortStats {
        self.stats
    }

    fn wait_rx(&mut self, _timeout: Duration) -> std::io::Result<bool> {
        Ok(!self.rx.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_transmit_or_free_and_nothing_leaks() {
        let mut port = MemoryPort::new(8, 128, 4);
        for i in 0..6u8 {
            port.inject(&[i; 10]).unwrap();
        }
        let handled = port.poll_rx(|f| {
            if f.bytes()[0] % 2 == 0 {
                Verdict::Transmit
            } else {
                Verdict::Drop
            }
        });
        assert_eq!(handled, 4);
        port.poll_rx(|f| {
            f.push_front(2).unwrap();
            f.bytes_mut()[..2].copy_from_slice(&[0xaa, 0xbb]);
            Verdict::Transmit
        });
        let sent = port.take_transmitted();
        assert_eq!(sent.len(), 4);
        assert_eq!(sent[0], vec![0; 10]);
        assert_eq!(&sent[2][..3], &[0xaa, 0xbb, 4]);
        assert_eq!(port.frames_accounted(), port.total_frames());
        assert_eq!(port.stats().dropped, 2);
    }

    #[test]
    fn pool_exhaustion_is_an_error_not_a_panic() {
        let mut port = MemoryPort::new(2, 64, 4);
        port.inject(&[1]).unwrap();
        port.send(&[2]).unwrap();
        assert_eq!(port.send(&[3]), Err(SendError::PoolEmpty));
        assert_eq!(
            port.inject(&[0; 65]),
            Err(SendError::TooLarge { len: 65, capacity: 64 })
        );
        let mut f = MemoryFrame {
            buf: vec![0; 8].into_boxed_slice(),
            head: 2,
            tail: 4,
        };
        assert!(f.push_front(3).is_err());
        assert!(f.pull_front(3).is_err());
        assert!(f.truncate(3).is_err());
    }
}
