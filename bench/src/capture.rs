//! Receiving for the sink: AF_XDP (with handoff's steering program) or an
//! AF_PACKET socket as the fallback, feeding every frame to a [`Sink`].

use crate::sink::{now_ns, Sink};
use anyhow::{Context, Result};
use handoff::io::{
    afxdp::{AfXdpConfig, AfXdpPort, BindMode},
    FrameBuf, PacketIo, Verdict,
};
use handoff_loader::{AttachMode, XskProgram};
use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// How to receive.
#[derive(Clone, Debug)]
pub enum CaptureBackend {
    /// AF_XDP on the given queues, with the steering program attached in `mode`.
    AfXdp {
        /// Queues to receive on.
        queues: Vec<u32>,
        /// XDP attach mode.
        mode: AttachMode,
        /// Copy or zero-copy.
        bind_mode: BindMode,
    },
    /// An AF_PACKET socket (sees what the kernel sees; slower).
    Packet,
}

/// When capturing ends.
#[derive(Clone, Copy, Debug)]
pub struct CaptureLimits {
    /// Stop after this long in any case.
    pub max_duration: Duration,
    /// Stop once no frame arrived for this long after the first one.
    pub idle: Option<Duration>,
}

/// What a capture produced: the sink and the span from first to last frame.
#[derive(Debug)]
pub struct Capture {
    /// Accounted traffic.
    pub sink: Sink,
    /// Seconds from the first to the last frame.
    pub active_s: f64,
}

struct Clock {
    started: Instant,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Clock {
    fn saw(&mut self) {
        let now = Instant::now();
        self.first.get_or_insert(now);
        self.last = Some(now);
    }
    fn done(&self, limits: &CaptureLimits, stop: &AtomicBool) -> bool {
        if stop.load(Ordering::Relaxed) || self.started.elapsed() >= limits.max_duration {
            return true;
        }
        matches!((limits.idle, self.last), (Some(idle), Some(last)) if last.elapsed() >= idle)
    }
    fn active_s(&self) -> f64 {
        match (self.first, self.last) {
            (Some(a), Some(b)) => (b - a).as_secs_f64(),
            _ => 0.0,
        }
    }
}

/// Captures on `ifname` into a sink for `flows` flows.
pub fn capture(
    ifname: &str,
    backend: &CaptureBackend,
    flows: u32,
    limits: CaptureLimits,
    stop: &AtomicBool,
) -> Result<Capture> {
    let mut sink = Sink::new(flows);
    let mut clock = Clock {
        started: Instant::now(),
        first: None,
        last: None,
    };
    match backend {
        CaptureBackend::AfXdp {
            queues,
            mode,
            bind_mode,
        } => {
            let ifindex = handoff_loader::interface_index(ifname)?;
            let mut program = XskProgram::load().context("loading the steering program")?;
            let mut ports = Vec::new();
            for &queue in queues {
                let config = AfXdpConfig {
                    bind_mode: *bind_mode,
                    ..AfXdpConfig::default()
                };
                let port = AfXdpPort::open(ifindex, queue, config)?;
                program.register_socket(queue, &port)?;
                ports.push(port);
            }
            program.attach(ifname, *mode)?;
            let idle_wait = Duration::from_millis(if ports.len() == 1 { 20 } else { 1 });
            while !clock.done(&limits, stop) {
                let mut got = 0;
                for port in &mut ports {
                    let now = now_ns();
                    got += port.poll_rx(|frame| {
                        sink.frame(frame.bytes(), now);
                        Verdict::Drop
                    });
                    port.flush()?;
                }
                if got > 0 {
                    clock.saw();
                } else if let Some(port) = ports.first_mut() {
                    port.wait_rx(idle_wait)?;
                }
            }
        }
        CaptureBackend::Packet => packet_socket(ifname, &mut sink, &mut clock, &limits, stop)?,
    }
    Ok(Capture {
        sink,
        active_s: clock.active_s(),
    })
}

/// Receive buffer asked for the AF_PACKET sink, in bytes.
const PACKET_SOCKET_BUFFER: libc::c_int = 16 << 20;

fn packet_socket(
    ifname: &str,
    sink: &mut Sink,
    clock: &mut Clock,
    limits: &CaptureLimits,
    stop: &AtomicBool,
) -> Result<()> {
    let ifindex = handoff_loader::interface_index(ifname)?;
    let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
    // SAFETY: socket(2); the descriptor is owned right below.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("opening an AF_PACKET socket (needs root or CAP_NET_RAW)");
    }
    // SAFETY: `fd` is fresh and owned by nobody else.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&socket);
    // SAFETY: sockaddr_ll is plain data.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto as u16;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: binds our socket to a valid sockaddr_ll of the right size.
    if unsafe {
        libc::bind(
            raw,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error()).context("binding the AF_PACKET socket");
    }
    // The default receive buffer (net.core.rmem_default, ~200 KiB) holds a
    // few hundred small frames: a sink descheduled for a few milliseconds
    // would drop what it is there to count. Root may exceed rmem_max.
    let rcvbuf: libc::c_int = PACKET_SOCKET_BUFFER;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt with an int of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                option,
                (&rcvbuf as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc == 0 {
            break;
        }
    }
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 50_000,
    };
    // SAFETY: setsockopt with a timeval of the right size.
    unsafe {
        libc::setsockopt(
            raw,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut buf = vec![0u8; 2048];
    while !clock.done(limits, stop) {
        // SAFETY: sockaddr_ll is plain data.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: recvfrom into our buffer and address, both sized as passed.
        let n = unsafe {
            libc::recvfrom(
                raw,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)) {
                continue;
            }
            return Err(err).context("receiving on the AF_PACKET socket");
        }
        if from.sll_pkttype == libc::PACKET_OUTGOING {
            continue;
        }
        sink.frame(&buf[..n as usize], now_ns());
        clock.saw();
    }
    Ok(())
}
