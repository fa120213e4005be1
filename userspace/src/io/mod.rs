//! Packet I/O behind one trait, so the packet pipeline is the same code over
//! AF_XDP and over the in-memory backend that tests and micro-benchmarks use.
//!
//! The pipeline never owns a frame: [`PacketIo::poll_rx`] lends each received
//! frame to a handler that returns a [`Verdict`], and the backend then either
//! transmits the frame or returns it to its pool. A frame cannot be leaked by
//! forgetting it, on any path.

pub mod afxdp;
pub mod memory;

use thiserror::Error;

/// The largest frame any port here receives or sends: a 2 KiB AF_XDP
/// UMEM frame minus the kernel's XDP_PACKET_HEADROOM (256,
/// include/uapi/linux/bpf.h). A port's own headroom takes from it
/// ([`afxdp::AfXdpConfig::frame_capacity`]). Larger frames (jumbo, GRO
/// aggregates) need AF_XDP multi-buffer, which this build does not use.
pub const MAX_FRAME_LEN: usize = 2048 - 256;

/// What to do with a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Transmit it (as modified by the handler) on the same port.
    Transmit,
    /// Return it to the pool.
    Drop,
}

/// A frame lent to a handler: its bytes, and room to grow at the front.
pub trait FrameBuf {
    /// The frame's bytes.
    fn bytes(&self) -> &[u8];
    /// The frame's bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// Grows the frame by `n` bytes at the front (the new bytes are undefined).
    fn push_front(&mut self, n: usize) -> Result<(), FrameError>;
    /// Removes `n` bytes from the front.
    fn pull_front(&mut self, n: usize) -> Result<(), FrameError>;
    /// Shortens the frame to `len` bytes.
    fn truncate(&mut self, len: usize) -> Result<(), FrameError>;
}

/// Why a frame could not be resized.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Not enough headroom to grow at the front.
    #[error("frame has {available} bytes of headroom, {needed} needed")]
    NoHeadroom {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// The frame is shorter than the requested cut.
    #[error("frame is {len} bytes, cannot remove or keep {requested}")]
    TooShort {
        /// Frame length.
        len: usize,
        /// Bytes requested.
        requested: usize,
    },
}

/// Why a frame could not be queued for transmission.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No free frame in the pool right now (transient: completions return frames).
    #[error("no free frame to transmit into")]
    PoolEmpty,
    /// The frame is larger than a pool frame.
    #[error("frame of {len} bytes exceeds the frame capacity of {capacity}")]
    TooLarge {
        /// Requested length.
        len: usize,
        /// Capacity of one frame.
        capacity: usize,
    },
}

/// Frames a port still holds in flight, to tell when it is drained.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pending {
    /// Frames received by the kernel and not yet processed.
    pub rx: usize,
    /// Frames queued for transmission and not yet completed.
    pub tx: usize,
}

impl Pending {
    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.rx == 0 && self.tx == 0
    }
}

/// Per-port counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Bytes queued for transmission.
    pub tx_bytes: u64,
    /// Frames dropped by verdict.
    pub dropped: u64,
    /// Sends refused because the pool was empty.
    pub tx_pool_empty: u64,
    /// Transmit kicks that the kernel asked to retry (EAGAIN/EBUSY/ENOBUFS).
    pub tx_kick_retries: u64,
    /// Frames the kernel dropped because the RX ring was full (the worker
    /// fell behind); from `XDP_STATISTICS`, 0 where there is no kernel.
    pub kernel_rx_ring_full: u64,
    /// Times the kernel found the fill ring empty (no frame to receive into).
    pub kernel_fill_ring_empty: u64,
    /// Frames the kernel dropped for other reasons.
    pub kernel_rx_dropped: u64,
}

/// A packet port: one RX/TX queue pair with its frame pool.
pub trait PacketIo {
    /// The frame type lent to handlers.
    type Frame: FrameBuf;

    /// Receives one burst and gives each frame, in arrival order, to `handle`;
    /// transmits or frees each frame according to its verdict. Returns the
    /// number of frames handled.
    fn poll_rx<F: FnMut(&mut Self::Frame) -> Verdict>(&mut self, handle: F) -> usize;

    /// Queues a frame of `len` bytes for transmission, letting `fill` write
    /// it in place (no intermediate copy).
    fn send_with<F: FnOnce(&mut [u8])>(&mut self, len: usize, fill: F) -> Result<(), SendError>;

    /// Queues a copy of `bytes` for transmission.
    fn send(&mut self, bytes: &[u8]) -> Result<(), SendError> {
        self.send_with(bytes.len(), |buf| buf.copy_from_slice(bytes))
    }

    /// Pushes queued transmissions to the device, reclaims completed frames
    /// and refills the receive side.
    fn flush(&mut self) -> std::io::Result<()>;

    /// Frames still in flight.
    fn pending(&self) -> Pending;

    /// Counters.
    fn stats(&self) -> PortStats;

    /// Waits up to `timeout` for received frames (returns at once if some are
    /// ready). Lets idle workers sleep instead of spinning.
    fn wait_rx(&mut self, timeout: std::time::Duration) -> std::io::Result<bool>;
}
