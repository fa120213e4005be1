//! The packet generator: UDP over a flow set, each packet carrying a
//! [`BenchHeader`], at a fixed rate or as fast as possible, always bounded
//! by a packet count and a duration.
//!
//! Backends: AF_XDP TX (the fast path: one socket and one thread per queue,
//! each queue owning the flows `f % queues == q`, so a flow's packets leave
//! in order on one queue) and a raw IPv4 socket with `sendmmsg` (works
//! anywhere; about 0.3 Mpps on the reference host).

use crate::{
    flows::FrameBuilder,
    payload::{monotonic_ns, BenchHeader},
    report::{GenReport, GEN_SCHEMA},
};
use anyhow::{bail, Context, Result};
use handoff::io::{
    afxdp::{AfXdpConfig, AfXdpPort, BindMode},
    PacketIo, SendError,
};
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// Where generated packets go.
#[derive(Clone, Debug)]
pub enum GenBackend {
    /// AF_XDP TX on `ifindex`, one socket per queue.
    AfXdp {
        /// Interface index.
        ifindex: u32,
        /// Queues to send on.
        queues: Vec<u32>,
        /// Copy or zero-copy.
        bind_mode: BindMode,
    },
    /// A raw IPv4 socket (the kernel routes and resolves the next hop).
    RawSocket,
    /// Nowhere: only the pcap file is written.
    None,
}

/// What to send.
#[derive(Clone, Debug)]
pub struct GenConfig {
    /// Frames to build.
    pub frames: FrameBuilder,
    /// Packets to send at most.
    pub count: u64,
    /// Time to send at most.
    pub duration: Duration,
    /// Packets per second, or as fast as possible.
    pub rate: Option<u64>,
    /// Also write every frame to this pcap file.
    pub pcap: Option<PathBuf>,
}

/// Paces a sender: how many packets it may send by now.
#[derive(Debug)]
struct Pacer {
    start: Instant,
    rate: Option<u64>,
}

impl Pacer {
    fn allowed(&self, sent: u64) -> u64 {
        match self.rate {
            None => u64::MAX,
            Some(rate) => {
                let due = (self.start.elapsed().as_nanos() * rate as u128 / 1_000_000_000) as u64;
                due.saturating_sub(sent)
            }
        }
    }
}

const BATCH: u64 = 64;

/// One sender's share: flows `first, first + stride, ...`.
#[derive(Clone, Copy, Debug)]
struct Share {
    first: u32,
    stride: u32,
    flows: u32,
    count: u64,
}

impl Share {
    fn split(total_flows: u32, count: u64, parts: u32) -> Vec<Share> {
        (0..parts)
            .filter(|&q| q < total_flows)
            .map(|q| Share {
                first: q,
                stride: parts,
                flows: (total_flows - q).div_ceil(parts),
                count: count / parts as u64 + u64::from((q as u64) < count % parts as u64),
            })
            .collect()
    }

    /// The header of this share's `k`-th packet (round-robin over its flows).
    fn header(&self, k: u64, sent_ns: u64) -> BenchHeader {
        BenchHeader {
            flow: self.first + self.stride * (k % self.flows as u64) as u32,
            seq: (k / self.flows as u64) as u32,
            sent_ns,
        }
    }
}

/// Runs the generator until the count, the duration or `stop` ends it.
pub fn run(config: &GenConfig, backend: &GenBackend, stop: &AtomicBool) -> Result<GenReport> {
    if config.frames.flows().count == 0 {
        bail!("the flow set is empty");
    }
    if config.pcap.is_some() {
        // Refused before anything is sent, not after.
        pcap_rate(config)?;
    }
    let start = Instant::now();
    let (name, sent, waits) = match backend {
        GenBackend::AfXdp {
            ifindex,
            queues,
            bind_mode,
        } => {
            if queues.is_empty() {
                bail!("no queues to send on");
            }
            let shares = Share::split(config.frames.flows().count, config.count, queues.len() as u32);
            let results: Vec<Result<(u64, u64)>> = std::thread::scope(|scope| {
                let handles: Vec<_> = shares
                    .iter()
                    .zip(queues)
                    .map(|(share, &queue)| {
                        let share = *share;
                        scope.spawn(move || af_xdp_sender(config, *ifindex, queue, *bind_mode, share, stop))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("sender thread panicked")))
                    })
                    .collect()
            });
            let mut sent = 0;
            let mut waits = 0;
            for r in results {
                let (s, w) = r?;
                sent += s;
                waits += w;
            }
            ("af_xdp", sent, waits)
        }
        GenBackend::RawSocket => {
            let share = Share::split(config.frames.flows().count, config.count, 1)[0];
            let (s, w) = raw_socket_sender(config, share, stop)?;
            ("raw_socket", s, w)
        }
        GenBackend::None => ("none", 0, 0),
    };
    if let Some(path) = &config.pcap {
        write_pcap(config, path)?;
    }
    let duration_s = start.elapsed().as_secs_f64();
    Ok(GenReport {
        schema: GEN_SCHEMA.to_string(),
        backend: name.to_string(),
        sent,
        flows: config.frames.flows().count,
        frame_len: config.frames.frame_len(),
        duration_s,
        rate_pps: if duration_s > 0.0 {
            sent as f64 / duration_s
        } else {
            0.0
        },
        target_pps: config.rate,
        backpressure_waits: waits,
    })
}

/// Sends one share of a generator's traffic on a port, paced and bounded;
/// called repeatedly by a loop that may also receive on the same port.
#[derive(Debug)]
pub struct PacedSender<'a> {
    config: &'a GenConfig,
    share: Share,
    pacer: Pacer,
    deadline: Instant,
    sent: u64,
    waits: u64,
}

impl<'a> PacedSender<'a> {
    /// A sender of the whole flow set (one queue).
    pub fn whole(config: &'a GenConfig) -> Self {
        Self::for_share(config, Share::split(config.frames.flows().count, config.count, 1)[0])
    }

    fn for_share(config: &'a GenConfig, share: Share) -> Self {
        // Each share paces its part of the rate.
        let rate = config
            .rate
            .map(|r| ((r as u128 * share.count as u128 / config.count.max(1) as u128) as u64).max(1));
        Self {
            config,
            share,
            pacer: Pacer {
                start: Instant::now(),
                rate,
            },
            deadline: Instant::now() + config.duration,
            sent: 0,
            waits: 0,
        }
    }

    /// True once the count or the duration is used up, or `stop` is set.
    pub fn done(&self, stop: &AtomicBool) -> bool {
        self.sent >= self.share.count || stop.load(Ordering::Relaxed) || Instant::now() >= self.deadline
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Times the port had no free frame.
    pub fn waits(&self) -> u64 {
        self.waits
    }

    /// Queues up to one batch that the pacing allows; returns how many.
    pub fn step<P: PacketIo>(&mut self, port: &mut P) -> Result<u64> {
        let batch = BATCH
            .min(self.share.count.saturating_sub(self.sent))
            .min(self.pacer.allowed(self.sent));
        let now = monotonic_ns();
        let len = self.config.frames.frame_len();
        let mut queued = 0;
        for _ in 0..batch {
            let header = self.share.header(self.sent, now);
            match port.send_with(len, |buf| self.config.frames.write(&header, buf)) {
                Ok(()) => {
                    self.sent += 1;
                    queued += 1;
                }
                Err(SendError::PoolEmpty) => {
                    self.waits += 1;
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(queued)
    }
}

fn af_xdp_sender(
    config: &GenConfig,
    ifindex: u32,
    queue: u32,
    bind_mode: BindMode,
    share: Share,
    stop: &AtomicBool,
) -> Result<(u64, u64)> {
    let port_config = AfXdpConfig {
        bind_mode,
        ..AfXdpConfig::default()
    };
    let mut port = AfXdpPort::open(ifindex, queue, port_config).context("opening the AF_XDP sender")?;
    let mut sender = PacedSender::for_share(config, share);
    while !sender.done(stop) {
        let queued = sender.step(&mut port)?;
        port.flush()?;
        if queued == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    drain(&mut port)?;
    Ok((sender.sent(), sender.waits()))
}

/// Lets the last queued frames leave (bounded to one second).
pub fn drain<P: PacketIo>(port: &mut P) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !port.pending().is_empty() && Instant::now() < deadline {
        port.flush()?;
        std::thread::sleep(Duration::from_micros(100));
    }
    Ok(())
}

fn raw_socket_sender(config: &GenConfig, share: Share, stop: &AtomicBool) -> Result<(u64, u64)> {
    // SAFETY: socket(2); the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening a raw IPv4 socket (needs root or CAP_NET_RAW)");
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&socket);
    let flows = config.frames.flows();
    let dst = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(flows.dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = config.frames.frame_len();
    const N: usize = 32;
    let mut buffers = vec![vec![0u8; len]; N];
    let pacer = Pacer {
        start: Instant::now(),
        rate: config.rate,
    };
    let deadline = Instant::now() + config.duration;
    let mut sent = 0u64;
    let mut waits = 0u64;
    while sent < share.count && !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let batch = (N as u64).min(share.count - sent).min(pacer.allowed(sent)) as usize;
        if batch == 0 {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let now = monotonic_ns();
        let mut iovecs: Vec<libc::iovec> = Vec::with_capacity(batch);
        for (i, buf) in buffers.iter_mut().take(batch).enumerate() {
            config.frames.write(&share.header(sent + i as u64, now), buf);
            iovecs.push(libc::iovec {
                iov_base: buf[14..].as_mut_ptr().cast(),
                iov_len: len - 14,
            });
        }
        let mut msgs: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: msghdr is plain data; zero is a valid initial value.
                let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
                hdr.msg_name = (&dst as *const libc::sockaddr_in).cast_mut().cast();
                hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
                hdr.msg_iov = iov;
                hdr.msg_iovlen = 1;
                libc::mmsghdr {
                    msg_hdr: hdr,
                    msg_len: 0,
                }
            })
            .collect();
        // SAFETY: `msgs` points at `batch` valid headers whose buffers live until the call returns.
        let rc = unsafe { libc::sendmmsg(raw, msgs.as_mut_ptr(), batch as u32, 0) };
        if rc < 0 {
            let err = std::io::Error::last_os_error();
            if matches!(
                err.raw_os_error(),
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR)
            ) {
                waits += 1;
                std::thread::sleep(Duration::from_micros(100));
                continue;
            }
            return Err(err).context("sendmmsg on the raw socket");
        }
        sent += rc as u64;
    }
    Ok((sent, waits))
}

/// Packet `k`'s scheduled send time at `rate` packets per second, in
/// nanoseconds after the first packet's: `k * 10^9 / rate`, exact (no
/// per-packet rounding accumulates). The live senders' [`Pacer`] keeps the
/// same rate.
pub fn scheduled_ns(k: u64, rate: u64) -> u64 {
    (u128::from(k) * 1_000_000_000 / u128::from(rate.max(1))) as u64
}

/// The rate a capture is stamped at: `--rate`, which a capture needs.
fn pcap_rate(config: &GenConfig) -> Result<u64> {
    match config.rate {
        Some(rate) => Ok(rate),
        None => bail!(
            "a capture stamps each packet with its scheduled send time, and without --rate there is no schedule: \
             pass --rate (tcpreplay --topspeed still replays the capture as fast as possible)"
        ),
    }
}

fn write_pcap(config: &GenConfig, path: &PathBuf) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    write_pcap_to(config, start, std::io::BufWriter::new(file))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Writes the generator's traffic as a nanosecond-resolution pcap (link
/// type Ethernet): packet `k` is stamped `start + scheduled_ns(k, rate)`,
/// so a replay at recorded speed (`tcpreplay` without `--topspeed`) sends
/// at the generator's rate. As the live senders, it stops at the count or
/// at the duration, whichever comes first. Each frame's [`BenchHeader`]
/// carries the schedule offset as `sent_ns`. Returns the packets written.
///
/// Errors: no `rate` (as fast as possible has no schedule to record), or
/// the writer's I/O error.
pub fn write_pcap_to<W: std::io::Write>(config: &GenConfig, start: Duration, writer: W) -> Result<u64> {
    use pcap_file::{
        pcap::{PcapHeader, PcapPacket, PcapWriter},
        TsResolution,
    };
    let rate = pcap_rate(config)?;
    let header = PcapHeader {
        ts_resolution: TsResolution::NanoSecond,
        ..PcapHeader::default()
    };
    let mut writer = PcapWriter::with_header(writer, header).context("writing the pcap header")?;
    let share = Share::split(config.frames.flows().count, config.count, 1)[0];
    let len = config.frames.frame_len();
    let mut buf = vec![0u8; len];
    let limit = u64::try_from(config.duration.as_nanos()).unwrap_or(u64::MAX);
    let mut written = 0;
    for k in 0..config.count {
        let ts = scheduled_ns(k, rate);
        if ts >= limit {
            break;
        }
        config.frames.write(&share.header(k, ts), &mut buf);
        writer
            .write_packet(&PcapPacket::new(start + Duration::from_nanos(ts), len as u32, &buf))
            .context("writing a pcap record")?;
        written += 1;
    }
    writer.into_writer().flush().context("flushing the pcap file")?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_every_flow_once_and_the_whole_count() {
        let shares = Share::split(10, 1003, 3);
        assert_eq!(shares.iter().map(|s| s.count).sum::<u64>(), 1003);
        let mut seen = std::collections::BTreeSet::new();
        for s in &shares {
            for k in 0..s.flows as u64 {
                assert!(seen.insert(s.header(k, 0).flow));
            }
        }
        assert_eq!(seen.len(), 10);
        assert_eq!(
            shares[1].header(3, 0),
            BenchHeader {
                flow: 1,
                seq: 1,
                sent_ns: 0
            }
        );
        assert!(Share::split(2, 10, 4).len() == 2);
    }

    fn config(count: u64, rate: Option<u64>, duration: Duration) -> GenConfig {
        let flows = crate::flows::FlowSet {
            count: 7,
            src_base: std::net::Ipv4Addr::new(10, 0, 0, 1),
            first_port: 10_000,
            dst: std::net::Ipv4Addr::new(10, 0, 9, 1),
            dst_port: 7000,
        };
        GenConfig {
            frames: FrameBuilder::new(flows, 64, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).unwrap(),
            count,
            duration,
            rate,
            pcap: None,
        }
    }

    fn timestamps(pcap: &[u8]) -> Vec<Duration> {
        let mut reader = pcap_file::pcap::PcapReader::new(pcap).unwrap();
        assert_eq!(reader.header().ts_resolution, pcap_file::TsResolution::NanoSecond);
        let mut out = Vec::new();
        while let Some(packet) = reader.next_packet() {
            out.push(packet.unwrap().timestamp);
        }
        out
    }

    #[test]
    fn pcap_stamps_each_packet_with_its_scheduled_send_time() {
        let start = Duration::from_secs(1_700_000_000);
        let mut pcap = Vec::new();
        // 3 pps does not divide a second: the schedule must not drift.
        let written = write_pcap_to(&config(1000, Some(3), Duration::from_secs(3600)), start, &mut pcap).unwrap();
        assert_eq!(written, 1000);
        let ts = timestamps(&pcap);
        assert_eq!(ts.len(), 1000);
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "non-decreasing");
        assert_eq!(ts[0], start);
        assert_eq!(ts[3] - ts[0], Duration::from_secs(1));
        // 999 gaps of 1/3 s: 333 s and 0.333333333 s, nanosecond exact.
        assert_eq!(ts[999] - ts[0], Duration::new(333, 0));
        assert_eq!(ts[998] - ts[0], Duration::new(332, 666_666_666));

        let mut pcap = Vec::new();
        write_pcap_to(
            &config(100_000, Some(1_000_000), Duration::from_secs(60)),
            start,
            &mut pcap,
        )
        .unwrap();
        let ts = timestamps(&pcap);
        assert_eq!(ts.len(), 100_000);
        assert!(ts.windows(2).all(|w| w[1] - w[0] == Duration::from_micros(1)));
        assert_eq!(*ts.last().unwrap() - ts[0], Duration::from_nanos(99_999_000));
    }

    #[test]
    fn pcap_stops_at_the_duration_and_needs_a_rate() {
        let mut pcap = Vec::new();
        // 1 kpps for 0.25 s: packets 0..250 are due before the end.
        let written = write_pcap_to(
            &config(1000, Some(1000), Duration::from_millis(250)),
            Duration::ZERO,
            &mut pcap,
        )
        .unwrap();
        assert_eq!(written, 250);
        assert_eq!(timestamps(&pcap).last(), Some(&Duration::from_millis(249)));
        let err = write_pcap_to(&config(10, None, Duration::from_secs(1)), Duration::ZERO, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("pass --rate"), "{err}");
    }

    #[test]
    fn pacer_allows_by_elapsed_time() {
        let p = Pacer {
            start: Instant::now() - Duration::from_millis(100),
            rate: Some(1000),
        };
        let allowed = p.allowed(0);
        assert!((100..200).contains(&allowed), "{allowed}");
        assert_eq!(p.allowed(1_000_000), 0);
        assert_eq!(
            Pacer {
                start: Instant::now(),
                rate: None
            }
            .allowed(5),
            u64::MAX
        );
    }
}
