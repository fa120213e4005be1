//! An AF_XDP port (one socket on one RX/TX queue) over the `xdp` crate.
//!
//! Frame ownership: every UMEM frame is, at any time, in exactly one place:
//! the free pool, the fill ring (or the RX ring behind it), the TX ring (until
//! its completion comes back), or lent to a handler for the duration of one
//! call. [`AfXdpPort::frame_accounting`] exposes the counts so tests can prove
//! that no path leaks a frame.
//!
//! Backpressure: a burst is never larger than the free room in the TX ring,
//! so a `Transmit` verdict always finds a slot. When the TX ring is full the
//! port stops taking frames from the RX ring and the kernel holds them there.
//!
//! Ring indices are free-running u32 counters that wrap, as in the kernel's
//! xsk queues (net/xdp/xsk_queue.h); the workspace builds the `xdp` crate with
//! overflow checks off so that wrap is well defined in every profile.

use super::{FrameBuf, FrameError, PacketIo, Pending, PortStats, SendError, Verdict};
use std::{io, os::fd::AsRawFd, time::Duration};
use thiserror::Error;
use xdp::{
    slab::{HeapSlab, Slab},
    socket::{PollTimeout, XdpSocket, XdpSocketBuilder},
    umem::{FrameSize, UmemCfgBuilder},
    CompletionRing, FillRing, Packet, RingConfigBuilder, RxRing, TxRing, Umem,
};

/// Copy or zero-copy binding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BindMode {
    /// Zero-copy where the driver offers it, copy otherwise (the kernel decides).
    #[default]
    Auto,
    /// Always copy (works on every driver, including veth).
    Copy,
    /// Zero-copy or fail.
    ZeroCopy,
}

/// Port configuration. [`AfXdpConfig::validate`] checks it before any syscall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfXdpConfig {
    /// UMEM frames (2 KiB each).
    pub frame_count: u32,
    /// Entries in each of the four rings (a power of two).
    pub ring_size: u32,
    /// Bytes kept free in front of every received frame, so a header can be
    /// prepended in place (the fabric encapsulation needs 16).
    pub headroom: u32,
    /// Frames handled per burst at most.
    pub burst: usize,
    /// Binding mode.
    pub bind_mode: BindMode,
}

impl Default for AfXdpConfig {
    fn default() -> Self {
        Self {
            frame_count: 4096,
            ring_size: 2048,
            headroom: 64,
            burst: 64,
            bind_mode: BindMode::Auto,
        }
    }
}

/// Frames one UMEM frame can hold at most: 2 KiB minus the kernel's
/// XDP_PACKET_HEADROOM (256, include/uapi/linux/bpf.h) minus our headroom.
const FRAME_SIZE: u32 = 2048;
const KERNEL_HEADROOM: u32 = FRAME_SIZE - super::MAX_FRAME_LEN as u32;

impl AfXdpConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), AfXdpError> {
        let invalid = |detail: String| Err(AfXdpError::Config { detail });
        if !self.ring_size.is_power_of_two() || self.ring_size < 64 {
            return invalid(format!("ring_size {} must be a power of two >= 64", self.ring_size));
        }
        if self.frame_count < 2 * self.ring_size {
            return invalid(format!(
                "frame_count {} must be at least twice ring_size {} (half fills the RX side, half transmits)",
                self.frame_count, self.ring_size
            ));
        }
        if self.headroom > 256 {
            return invalid(format!("headroom {} exceeds 256 bytes", self.headroom));
        }
        if self.burst == 0 || self.burst > self.ring_size as usize {
            return invalid(format!("burst {} must be in 1..={}", self.burst, self.ring_size));
        }
        Ok(())
    }

    /// Largest frame this port can receive or send.
    pub fn frame_capacity(&self) -> usize {
        (FRAME_SIZE - KERNEL_HEADROOM - self.headroom) as usize
    }

    /// Bytes of one socket's UMEM: what the kernel pins and charges to
    /// RLIMIT_MEMLOCK for a process without CAP_IPC_LOCK
    /// (net/xdp/xdp_umem.c, `xdp_umem_account_pages`).
    pub fn umem_bytes(&self) -> u64 {
        u64::from(self.frame_count) * u64::from(FRAME_SIZE)
    }
}

/// Errors opening a port.
#[derive(Debug, Error)]
pub enum AfXdpError {
    /// Bad configuration.
    #[error("invalid AF_XDP configuration: {detail}")]
    Config {
        /// What is wrong.
        detail: String,
    },
    /// Mapping the UMEM failed.
    #[error("mapping {bytes} bytes of UMEM failed")]
    Umem {
        /// Size requested.
        bytes: usize,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Creating the socket or its rings failed.
    #[error("creating the AF_XDP socket failed{hint}")]
    Socket {
        /// What to check.
        hint: &'static str,
        /// The underlying error.
        #[source]
        source: xdp::socket::SocketError,
    },
    /// Binding to the interface queue failed.
    #[error("binding AF_XDP to ifindex {ifindex} queue {queue} failed: {hint}")]
    Bind {
        /// Interface.
        ifindex: u32,
        /// Queue.
        queue: u32,
        /// Likely cause.
        hint: String,
        /// The underlying error.
        #[source]
        source: xdp::socket::SocketError,
    },
}

/// Where a port's frames are right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameAccounting {
    /// In the free pool.
    pub free: usize,
    /// Given to the kernel for reception (fill ring, or RX ring not yet read).
    pub receiving: usize,
    /// Submitted for transmission and not yet completed.
    pub transmitting: usize,
    /// Total frames of the UMEM.
    pub total: usize,
}

impl FrameAccounting {
    /// True when every frame is somewhere known: none leaked.
    pub fn balanced(&self) -> bool {
        self.free + self.receiving + self.transmitting == self.total
    }
}

/// A frame lent to a handler.
pub struct AfXdpFrame(Packet);

impl std::fmt::Debug for AfXdpFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpFrame").field("len", &self.0.len()).finish()
    }
}

impl FrameBuf for AfXdpFrame {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn push_front(&mut self, n: usize) -> Result<(), FrameError> {
        self.0.adjust_head(-(n as i32)).map_err(|_| FrameError::NoHeadroom {
            needed: n,
            available: 0,
        })
    }
    fn pull_front(&mut self, n: usize) -> Result<(), FrameError> {
        let len = self.0.len();
        self.0
            .adjust_head(n as i32)
            .map_err(|_| FrameError::TooShort { len, requested: n })
    }
    fn truncate(&mut self, new_len: usize) -> Result<(), FrameError> {
        let len = self.0.len();
        if new_len > len {
            return Err(FrameError::TooShort {
                len,
                requested: new_len,
            });
        }
        self.0
            .adjust_tail(-((len - new_len) as i32))
            .map_err(|_| FrameError::TooShort {
                len,
                requested: new_len,
            })
    }
}

/// One AF_XDP socket bound to one queue of one interface.
pub struct AfXdpPort {
    // Field order is drop order: the rings unmap before the socket closes,
    // and the UMEM outlives both.
    fill: FillRing,
    rx: RxRing,
    tx: TxRing,
    completion: CompletionRing,
    socket: XdpSocket,
    umem: Umem,
    /// Bounds a burst; its capacity is the burst size.
    rx_slab: HeapSlab,
    /// Frames queued for the TX ring; its capacity is the TX ring size.
    tx_slab: HeapSlab,
    config: AfXdpConfig,
    fill_target: usize,
    receiving: usize,
    transmitting: usize,
    unkicked: bool,
    stats: PortStats,
    ifindex: u32,
    queue: u32,
}

impl std::fmt::Debug for AfXdpPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfXdpPort")
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl AsRawFd for AfXdpPort {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

fn bind_hint(source: &xdp::socket::SocketError) -> String {
    let errno = match source {
        xdp::socket::SocketError::Bind(e) => e.raw_os_error(),
        _ => None,
    };
    match errno {
        Some(libc::EINVAL) => "the interface has no such queue (check `ethtool -l`)".into(),
        Some(libc::EOPNOTSUPP) => "the driver does not support zero-copy: use bind mode copy or auto".into(),
        Some(libc::EBUSY) => "another AF_XDP socket is bound to this queue".into(),
        Some(libc::EPERM) => "permission denied: AF_XDP needs root or CAP_NET_RAW + CAP_NET_ADMIN".into(),
        Some(libc::ENODEV) | Some(libc::ENXIO) => "no such interface".into(),
        _ => source.to_string(),
    }
}

// SAFETY: the raw pointers inside are the port's own UMEM and ring mappings,
// which nothing else references; the port is used by one thread at a time
// (it is not `Sync`), so handing it to the worker thread that will own it is
// sound. The kernel side of an AF_XDP socket does not care which thread
// drives it.
unsafe impl Send for AfXdpPort {}

impl AfXdpPort {
    /// Opens a socket on `queue` of `ifindex`. The caller must then register
    /// it in the XDP program's socket map for frames to arrive.
    pub fn open(ifindex: u32, queue: u32, config: AfXdpConfig) -> Result<Self, AfXdpError> {
        config.validate()?;
        let umem_cfg = UmemCfgBuilder {
            frame_size: FrameSize::TwoK,
            head_room: config.headroom,
            frame_count: config.frame_count,
            ..Default::default()
        }
        .build()
        .map_err(|e| AfXdpError::Config { detail: e.to_string() })?;
        let bytes = config.umem_bytes() as usize;
        let umem = Umem::map(umem_cfg).map_err(|source| AfXdpError::Umem { bytes, source })?;
        let mut builder = XdpSocketBuilder::new().map_err(|source| AfXdpError::Socket {
            hint: " (AF_XDP needs root or CAP_NET_RAW, and a kernel with CONFIG_XDP_SOCKETS)",
            source,
        })?;
        let rings = RingConfigBuilder {
            rx_count: config.ring_size,
            tx_count: config.ring_size,
            fill_count: config.ring_size,
            completion_count: config.ring_size,
        }
        .build()
        .map_err(|e| AfXdpError::Config { detail: e.to_string() })?;
        let (rings, mut flags) = builder
            .build_rings(&umem, rings)
            .map_err(|source| AfXdpError::Socket { hint: "", source })?;
        match config.bind_mode {
            BindMode::Auto => {}
            BindMode::Copy => flags.force_copy(),
            BindMode::ZeroCopy => flags.force_zerocopy(),
        }
        let socket = builder
            .bind(xdp::nic::NicIndex::new(ifindex), queue, flags)
            .map_err(|source| AfXdpError::Bind {
                ifindex,
                queue,
                hint: bind_hint(&source),
                source,
            })?;
        let (Some(rx), Some(tx)) = (rings.rx_ring, rings.tx_ring) else {
            return Err(AfXdpError::Config {
                detail: "the socket came up without RX or TX ring".into(),
            });
        };
        let mut port = Self {
            fill: rings.fill_ring,
            rx,
            tx,
            completion: rings.completion_ring,
            socket,
            umem,
            rx_slab: HeapSlab::with_capacity(config.burst),
            tx_slab: HeapSlab::with_capacity(config.ring_size as usize),
            fill_target: config.ring_size as usize,
            receiving: 0,
            transmitting: 0,
            unkicked: false,
            stats: PortStats::default(),
            ifindex,
            queue,
            config,
        };
        port.refill();
        Ok(port)
    }

    /// The queue this port is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Where the frames are (for leak checks).
    pub fn frame_accounting(&self) -> FrameAccounting {
        FrameAccounting {
            free: self.umem.allocatable(),
            receiving: self.receiving,
            transmitting: self.transmitting + self.tx_slab.len(),
            total: self.umem.capacity(),
        }
    }

    /// Kernel-side counters of this socket (drops for a full RX ring, an
    /// empty fill ring, invalid descriptors).
    pub fn kernel_stats(&self) -> Option<xdp::libc::xdp::XdpStatistics> {
        self.socket.statistics().ok()
    }

    fn tx_room(&self) -> usize {
        (self.config.ring_size as usize).saturating_sub(self.transmitting + self.tx_slab.len())
    }

    fn refill(&mut self) {
        let want = self.fill_target.saturating_sub(self.receiving);
        if want == 0 {
            return;
        }
        // SAFETY: the frames come from `self.umem`, which outlives the rings.
        let queued = unsafe { self.fill.enqueue(&mut self.umem, want) };
        self.receiving += queued;
    }

    fn reclaim_completions(&mut self) {
        let done = self.completion.dequeue(&mut self.umem, self.config.ring_size as usize);
        self.transmitting -= done;
    }

    fn submit_tx(&mut self) {
        let queued = self.tx_slab.len();
        if queued == 0 {
            return;
        }
        // SAFETY: every packet in the slab was allocated from `self.umem`.
        let sent = unsafe { self.tx.send(&mut self.tx_slab) };
        self.transmitting += sent;
        if sent > 0 {
            self.unkicked = true;
        }
    }

    /// Wakes the kernel to transmit. Copy mode sends at most 32 descriptors
    /// per call (TX_BATCH_SIZE, net/xdp/xsk.c) and answers EAGAIN when more
    /// remain, so kick until it stops asking, within a bound.
    fn kick(&mut self) -> io::Result<()> {
        if !self.unkicked && self.transmitting == 0 {
            return Ok(());
        }
        let rounds = self.transmitting / 32 + 4;
        for _ in 0..rounds {
            // SAFETY: sendto(2) with a null buffer of length 0 on our own socket.
            let rc = unsafe {
                libc::sendto(
                    self.socket.as_raw_fd(),
                    std::ptr::null(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null(),
                    0,
                )
            };
            if rc >= 0 {
                self.unkicked = false;
                return Ok(());
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::ENOBUFS) | Some(libc::EINTR) => {
                    self.stats.tx_kick_retries += 1;
                }
                _ => return Err(err),
            }
        }
        Ok(())
    }
}

impl PacketIo for AfXdpPort {
    type Frame = AfXdpFrame;

    fn poll_rx<F: FnMut(&mut AfXdpFrame) -> Verdict>(&mut self, mut handle: F) -> usize {
        self.reclaim_completions();
        // Every received frame may be transmitted: take no more than fits.
        if self.tx_room() < self.rx_slab.available() {
            self.submit_tx();
            return 0;
        }
        // SAFETY: the packets point into `self.umem`, which outlives them.
        let received = unsafe { self.rx.recv(&self.umem, &mut self.rx_slab) };
        self.receiving -= received;
        while let Some(packet) = self.rx_slab.pop_back() {
            let mut frame = AfXdpFrame(packet);
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += frame.0.len() as u64;
            match handle(&mut frame) {
                Verdict::Transmit => {
                    self.stats.tx_frames += 1;
                    self.stats.tx_bytes += frame.0.len() as u64;
                    if let Some(back) = self.tx_slab.push_front(frame.0) {
                        // Unreachable while the room check above holds; never leak.
                        self.umem.free_packet(back);
                        self.stats.dropped += 1;
                    }
                }
                Verdict::Drop => {
                    self.stats.dropped += 1;
                    self.umem.free_packet(frame.0);
                }
            }
        }
        self.submit_tx();
        received
    }

    fn send_with<F: FnOnce(&mut [u8])>(&mut self, len: usize, fill: F) -> Result<(), SendError> {
        let capacity = self.config.frame_capacity();
        if len > capacity {
            return Err(SendError::TooLarge { len, capacity });
        }
        if self.tx_room() == 0 || self.tx_slab.available() == 0 {
            self.reclaim_completions();
            self.submit_tx();
            if self.tx_room() == 0 || self.tx_slab.available() == 0 {
                self.stats.tx_pool_empty += 1;
                return Err(SendError::PoolEmpty);
            }
        }
        // SAFETY: the packet is from `self.umem` and goes back to it through
        // the TX ring and the completion ring.
        let Some(mut packet) = (unsafe { self.umem.alloc() }) else {
            self.stats.tx_pool_empty += 1;
            return Err(SendError::PoolEmpty);
        };
        if packet.adjust_tail(len as i32).is_err() {
            self.umem.free_packet(packet);
            return Err(SendError::TooLarge { len, capacity });
        }
        fill(&mut packet[..]);
        self.stats.tx_frames += 1;
        self.stats.tx_bytes += len as u64;
        if let Some(back) = self.tx_slab.push_front(packet) {
            self.umem.free_packet(back);
            return Err(SendError::PoolEmpty);
        }
        if self.tx_slab.available() == 0 {
            self.submit_tx();
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.submit_tx();
        self.kick()?;
        self.reclaim_completions();
        self.refill();
        Ok(())
    }

    fn pending(&self) -> Pending {
        // POLLIN on an AF_XDP socket means its RX ring is not empty (xsk_poll,
        // net/xdp/xsk.c); the ring's fill level itself is not exposed.
        let rx = usize::from(
            self.socket
                .poll_read(PollTimeout::new(Some(Duration::ZERO)))
                .unwrap_or(false),
        );
        Pending {
            rx,
            tx: self.transmitting + self.tx_slab.len(),
        }
    }

    fn stats(&self) -> PortStats {
        // The kernel's own drops (include/uapi/linux/if_xdp.h, struct
        // xdp_statistics); a socket that cannot answer reports none.
        match self.socket.statistics() {
            Ok(kernel) => PortStats {
                kernel_rx_ring_full: kernel.rx_ring_full,
                kernel_fill_ring_empty: kernel.rx_fill_ring_empty_descs,
                kernel_rx_dropped: kernel.rx_dropped,
                ..self.stats
            },
            Err(_) => self.stats,
        }
    }

    fn wait_rx(&mut self, timeout: Duration) -> io::Result<bool> {
        self.socket.poll_read(PollTimeout::new(Some(timeout)))
    }
}
