//! The UDP echo service a service node runs: every datagram goes back, payload
//! unchanged, to the address and port it came from. The client's sink matches
//! replies by the [`BenchHeader`](crate::payload::BenchHeader) inside, so the
//! echo never parses the payload.
//!
//! One thread polls every listening socket and moves datagrams in batches
//! (`recvmmsg` then `sendmmsg`). A socket bound to a wildcard address answers
//! from the address each datagram was sent to (`IP_PKTINFO`/`IPV6_PKTINFO`),
//! so a reply to a VIP or a secondary address leaves with the 5-tuple the
//! dataplane installed for its flow. Nothing is dropped silently: every
//! datagram is either echoed or counted as an error, and the kernel's own
//! receive-queue drops are read back from `SO_MEMINFO`.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeSet,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    ops::RangeInclusive,
    os::fd::{AsRawFd, RawFd},
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// `schema` value of [`EchoReport`].
pub const ECHO_SCHEMA: &str = "handoff-echo/1";

/// Datagrams per `recvmmsg`/`sendmmsg` call.
const BATCH: usize = 32;
/// Bytes per receive slot: the largest UDP payload fits, so nothing is truncated.
const SLOT_LEN: usize = 65_536;
/// Room for one `IPV6_PKTINFO` control message (the larger of the two), aligned.
const CONTROL_LEN: usize = 64;
/// Batches taken from one socket before the others get their turn.
const BATCHES_PER_WAKEUP: usize = 8;
/// Longest `poll` wait, so `stop` is seen within this many milliseconds.
const POLL_INTERVAL_MS: u64 = 50;
/// Waits for socket-buffer room per batch before the rest of the batch counts as errors.
const SEND_RETRIES_PER_BATCH: u32 = 16;
/// Longest wait for socket-buffer room, in milliseconds.
const SEND_RETRY_WAIT_MS: i32 = 1;
/// Listening sockets at most (one descriptor each).
const MAX_PORTS: usize = 1024;
/// Receive buffer asked for; the kernel caps it at `net.core.rmem_max`.
const RECEIVE_BUFFER_BYTES: libc::c_int = 4 << 20;

/// `handoff-bench udp-echo`: the UDP echo service.
#[derive(clap::Args, Clone, Debug)]
pub struct UdpEchoArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:7000")]
    pub listen: SocketAddr,
    /// More ports on the same address: ports and ranges, comma separated (`7001,7010-7019`).
    #[arg(long, value_delimiter = ',', value_parser = parse_port_range)]
    pub ports: Vec<RangeInclusive<u16>>,
    /// Seconds to run at most; omit to run until SIGINT or SIGTERM.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the echo service did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EchoReport {
    /// Always [`ECHO_SCHEMA`].
    pub schema: String,
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent back. `received - echoed` are in `errors`.
    pub echoed: u64,
    /// Datagrams received but not echoed: the send failed, or found no buffer room after bounded retries.
    pub errors: u64,
    /// Receive calls that failed with something other than "nothing to read".
    pub receive_errors: u64,
    /// Datagrams the kernel dropped before the service read them (receive queue full), from `SO_MEMINFO`.
    pub kernel_drops: u64,
    /// Seconds the service ran.
    pub duration_s: f64,
}

/// Parses `7001` or `7010-7019` (ports from 1).
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let port = |s: &str| -> Result<u16, String> {
        match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{s:?} is not a port (1-65535)")),
            Ok(p) => Ok(p),
        }
    };
    let range = match text.split_once('-') {
        Some((first, last)) => port(first)?..=port(last)?,
        None => {
            let p = port(text)?;
            p..=p
        }
    };
    if range.is_empty() {
        return Err(format!("{text:?} is an empty port range"));
    }
    Ok(range)
}

/// The echo service's bound sockets, ready to [`run`](Self::run).
#[derive(Debug)]
pub struct UdpEchoServer {
    sockets: Vec<UdpSocket>,
    duration: Option<Duration>,
    reply_from_destination: bool,
}

impl UdpEchoServer {
    /// Binds `args.listen` and every extra port on the same address.
    pub fn bind(args: &UdpEchoArgs) -> Result<Self> {
        let duration = match args.duration {
            None => None,
            Some(s) if s.is_finite() && s > 0.0 => Some(Duration::from_secs_f64(s)),
            Some(_) => bail!("--duration must be a positive number of seconds"),
        };
        let mut ports = BTreeSet::new();
        for range in &args.ports {
            if ports.len() + range.len() > MAX_PORTS {
                bail!("at most {MAX_PORTS} ports");
            }
            ports.extend(range.clone());
        }
        ports.remove(&args.listen.port());
        let addrs = std::iter::once(args.listen).chain(ports.iter().map(|&p| SocketAddr::new(args.listen.ip(), p)));
        let reply_from_destination = args.listen.ip().is_unspecified();
        let sockets = addrs
            .map(|addr| open_socket(addr, reply_from_destination).with_context(|| format!("listening on udp {addr}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            sockets,
            duration,
            reply_from_destination,
        })
    }

    /// The bound addresses (with the actual ports when 0 was asked for).
    pub fn local_addrs(&self) -> Result<Vec<SocketAddr>> {
        self.sockets
            .iter()
            .map(|s| s.local_addr().context("reading a bound address"))
            .collect()
    }

    /// Echoes until `stop` is set or the duration ends.
    pub fn run(&self, stop: &AtomicBool) -> Result<EchoReport> {
        let start = Instant::now();
        let deadline = self.duration.map(|d| start + d);
        let mut pollfds: Vec<libc::pollfd> = self
            .sockets
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut batch = Batch::new(self.reply_from_destination);
        let mut counters = Counters::default();
        while !stop.load(Ordering::Relaxed) {
            let mut wait = Duration::from_millis(POLL_INTERVAL_MS);
            if let Some(deadline) = deadline {
                match deadline.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => wait = wait.min(left),
                    _ => break,
                }
            }
            // SAFETY: `pollfds` holds `len` initialized entries that outlive the call.
            let rc = unsafe {
                libc::poll(
                    pollfds.as_mut_ptr(),
                    pollfds.len() as libc::nfds_t,
                    wait.as_millis() as i32,
                )
            };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(err).context("poll on the echo sockets");
            }
            for pollfd in pollfds.iter().filter(|p| p.revents != 0) {
                drain(pollfd.fd, &mut batch, &mut counters, stop);
            }
        }
        let kernel_drops = self.sockets.iter().map(|s| receive_queue_drops(s.as_raw_fd())).sum();
        Ok(EchoReport {
            schema: ECHO_SCHEMA.to_string(),
            received: counters.received,
            echoed: counters.echoed,
            errors: counters.errors,
            receive_errors: counters.receive_errors,
            kernel_drops,
            duration_s: start.elapsed().as_secs_f64(),
        })
    }
}

/// Binds the sockets and echoes until `stop` is set or the duration ends.
pub fn run_udp_echo(args: &UdpEchoArgs, stop: &AtomicBool) -> Result<EchoReport> {
    let server = UdpEchoServer::bind(args)?;
    tracing::info!(addrs = ?server.local_addrs()?, "udp-echo: listening");
    server.run(stop)
}

#[derive(Debug, Default)]
struct Counters {
    received: u64,
    echoed: u64,
    errors: u64,
    receive_errors: u64,
}

/// Echoes what one readable socket holds, a bounded number of batches at a time.
fn drain(fd: RawFd, batch: &mut Batch, counters: &mut Counters, stop: &AtomicBool) {
    for _ in 0..BATCHES_PER_WAKEUP {
        let n = match batch.receive(fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                counters.receive_errors += 1;
                tracing::debug!(error = %e, "udp-echo: recvmmsg failed");
                return;
            }
        };
        counters.received += n as u64;
        let echoed = batch.echo(fd, n);
        counters.echoed += echoed as u64;
        counters.errors += (n - echoed) as u64;
        if n < BATCH || stop.load(Ordering::Relaxed) {
            return;
        }
    }
}

/// Kernel control-message buffer, aligned for `cmsghdr`.
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct ControlBuffer([u8; CONTROL_LEN]);

/// Where a reply must come from, when the socket is bound to a wildcard:
/// the destination address of the datagram it answers.
#[derive(Clone, Copy)]
enum ReplySource {
    V4(libc::in_addr),
    V6(libc::in6_addr),
}

/// Buffers and headers for one `recvmmsg`/`sendmmsg` round. Heap storage, so the
/// pointers the headers hold stay valid while the `Batch` moves.
struct Batch {
    buffers: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovecs: Vec<libc::iovec>,
    controls: Vec<ControlBuffer>,
    headers: Vec<libc::mmsghdr>,
    reply_from_destination: bool,
}

impl Batch {
    fn new(reply_from_destination: bool) -> Self {
        // SAFETY: these are plain C structs for which all-zero bytes are a valid value.
        let (addr, iovec, header) = unsafe {
            (
                std::mem::zeroed::<libc::sockaddr_storage>(),
                std::mem::zeroed::<libc::iovec>(),
                std::mem::zeroed::<libc::mmsghdr>(),
            )
        };
        Self {
            buffers: vec![0; BATCH * SLOT_LEN],
            addrs: vec![addr; BATCH],
            iovecs: vec![iovec; BATCH],
            controls: vec![ControlBuffer([0; CONTROL_LEN]); BATCH],
            headers: vec![header; BATCH],
            reply_from_destination,
        }
    }

    /// Points header `i` at slot `i`'s address, `data_len` bytes of its buffer and
    /// `control_len` bytes of its control buffer.
    fn prepare(&mut self, i: usize, name_len: libc::socklen_t, data_len: usize, control_len: usize) {
        self.iovecs[i] = libc::iovec {
            iov_base: self.buffers[i * SLOT_LEN..].as_mut_ptr().cast(),
            iov_len: data_len,
        };
        let hdr = &mut self.headers[i].msg_hdr;
        hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
        hdr.msg_namelen = name_len;
        hdr.msg_iov = &mut self.iovecs[i];
        hdr.msg_iovlen = 1;
        if control_len == 0 {
            hdr.msg_control = std::ptr::null_mut();
        } else {
            hdr.msg_control = self.controls[i].0.as_mut_ptr().cast();
        }
        hdr.msg_controllen = control_len;
        hdr.msg_flags = 0;
        self.headers[i].msg_len = 0;
    }

    /// Receives up to [`BATCH`] datagrams without blocking.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let control_len = if self.reply_from_destination { CONTROL_LEN } else { 0 };
        for i in 0..BATCH {
            self.prepare(
                i,
                std::mem::size_of::<libc::sockaddr_storage>() as u32,
                SLOT_LEN,
                control_len,
            );
        }
        // SAFETY: every header points at buffers owned by `self` that outlive the call,
        // with lengths no larger than those buffers.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.headers.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }

    /// Sends the `n` datagrams just received back to their senders; returns how many went out.
    fn echo(&mut self, fd: RawFd, n: usize) -> usize {
        for i in 0..n {
            let name_len = self.headers[i].msg_hdr.msg_namelen;
            let data_len = self.headers[i].msg_len as usize;
            let control_len = match self.reply_source(i) {
                Some(source) => write_reply_source(&mut self.controls[i], source),
                None => 0,
            };
            self.prepare(i, name_len, data_len, control_len);
        }
        let mut next = 0;
        let mut echoed = 0;
        let mut retries = 0;
        while next < n {
            // SAFETY: headers `next..n` were prepared above and point at buffers owned by `self`.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
                    self.headers[next..].as_mut_ptr(),
                    (n - next) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc > 0 {
                next += rc as usize;
                echoed += rc as usize;
                continue;
            }
            let err = io::Error::last_os_error();
            let retryable = rc < 0
                && matches!(
                    err.raw_os_error(),
                    Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR)
                );
            if retryable && retries < SEND_RETRIES_PER_BATCH {
                retries += 1;
                wait_writable(fd);
                continue;
            }
            // This datagram cannot go out (or the retries are spent): count it, go on with the rest.
            tracing::debug!(error = %err, "udp-echo: sendmmsg failed");
            next += 1;
        }
        echoed
    }

    /// The source address for the reply to received datagram `i`; `None` means
    /// the socket's own (it is bound to a specific address).
    fn reply_source(&self, i: usize) -> Option<ReplySource> {
        let hdr = &self.headers[i].msg_hdr;
        if hdr.msg_control.is_null() {
            return None;
        }
        // SAFETY: the kernel filled `msg_controllen` bytes of the control buffer `hdr`
        // points at; the CMSG_* helpers stay within that length.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                let data = libc::CMSG_DATA(cmsg);
                match ((*cmsg).cmsg_level, (*cmsg).cmsg_type) {
                    (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                        // `ipi_spec_dst` is the destination address when it is local, and a
                        // local address of the receiving interface for a broadcast.
                        let info = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                        return Some(ReplySource::V4(info.ipi_spec_dst));
                    }
                    (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) => {
                        let info = std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                        return Some(ReplySource::V6(info.ipi6_addr));
                    }
                    _ => cmsg = libc::CMSG_NXTHDR(hdr, cmsg),
                }
            }
        }
        None
    }
}

/// Writes the control message that sets a reply's source address; returns its length.
/// The interface index stays 0 so the kernel routes the reply as usual.
fn write_reply_source(control: &mut ControlBuffer, source: ReplySource) -> usize {
    let (level, kind, data_len) = match source {
        ReplySource::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            std::mem::size_of::<libc::in_pktinfo>(),
        ),
        ReplySource::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            std::mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes.
    let (space, len) = unsafe { (libc::CMSG_SPACE(data_len as u32), libc::CMSG_LEN(data_len as u32)) };
    // SAFETY: a zeroed msghdr is valid; it only describes `control` to CMSG_FIRSTHDR.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_control = control.0.as_mut_ptr().cast();
    hdr.msg_controllen = space as usize;
    // SAFETY: `space` <= CONTROL_LEN (checked at compile time below), so the header and its
    // data lie inside `control`; unaligned writes make no alignment assumption.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&hdr);
        (*cmsg).cmsg_level = level;
        (*cmsg).cmsg_type = kind;
        (*cmsg).cmsg_len = len as usize;
        let data = libc::CMSG_DATA(cmsg);
        match source {
            ReplySource::V4(addr) => std::ptr::write_unaligned(
                data.cast::<libc::in_pktinfo>(),
                libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: addr,
                    ipi_addr: libc::in_addr { s_addr: 0 },
                },
            ),
            ReplySource::V6(addr) => std::ptr::write_unaligned(
                data.cast::<libc::in6_pktinfo>(),
                libc::in6_pktinfo {
                    ipi6_addr: addr,
                    ipi6_ifindex: 0,
                },
            ),
        }
    }
    space as usize
}

// SAFETY: CMSG_SPACE only computes a size.
const _: () =
    assert!(unsafe { libc::CMSG_SPACE(std::mem::size_of::<libc::in6_pktinfo>() as u32) } as usize <= CONTROL_LEN);

/// Waits up to [`SEND_RETRY_WAIT_MS`] for room in the socket's send buffer.
fn wait_writable(fd: RawFd) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    // SAFETY: one valid pollfd that outlives the call. The result does not matter:
    // the caller retries the send either way.
    unsafe { libc::poll(&mut pollfd, 1, SEND_RETRY_WAIT_MS) };
}

fn set_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: the option value is a c_int that lives across the call, with its size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A non-blocking UDP socket on `addr` with a large receive buffer; with
/// `reply_from_destination`, it also reports each datagram's destination address.
fn open_socket(addr: SocketAddr, reply_from_destination: bool) -> Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    let fd = socket.as_raw_fd();
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, RECEIVE_BUFFER_BYTES).context("setting SO_RCVBUF")?;
    if reply_from_destination {
        match addr.ip() {
            IpAddr::V4(_) => set_int_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1).context("setting IP_PKTINFO")?,
            IpAddr::V6(_) => {
                set_int_option(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, 1)
                    .context("setting IPV6_RECVPKTINFO")?;
                // IPv4 clients of a dual-stack socket arrive with IP_PKTINFO.
                set_int_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1).context("setting IP_PKTINFO")?;
            }
        }
    }
    Ok(socket)
}

/// Datagrams the kernel dropped on this socket, or 0 if it cannot say.
fn receive_queue_drops(fd: RawFd) -> u64 {
    let mut meminfo = [0u32; libc::SK_MEMINFO_DROPS as usize + 1];
    let mut len = std::mem::size_of_val(&meminfo) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `meminfo` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            meminfo.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc < 0 || (len as usize) < std::mem::size_of_val(&meminfo) {
        return 0;
    }
    u64::from(meminfo[libc::SK_MEMINFO_DROPS as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::BenchHeader;
    use std::{net::Ipv4Addr, sync::Arc};

    fn args(listen: &str) -> UdpEchoArgs {
        UdpEchoArgs {
            listen: listen.parse().unwrap(),
            ports: Vec::new(),
            duration: None,
            json: None,
        }
    }

    /// Runs the server on a thread; returns its addresses, the stop flag and the thread.
    fn spawn(
        args: &UdpEchoArgs,
    ) -> (
        Vec<SocketAddr>,
        Arc<AtomicBool>,
        std::thread::JoinHandle<Result<EchoReport>>,
    ) {
        let server = UdpEchoServer::bind(args).unwrap();
        let addrs = server.local_addrs().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        (addrs, stop, std::thread::spawn(move || server.run(&flag)))
    }

    fn client() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        socket
    }

    /// Sends `count` bench datagrams of `len` bytes in windows small enough for the
    /// default socket buffers, and checks each reply is the datagram sent.
    fn exchange(socket: &UdpSocket, to: SocketAddr, count: u32, len: usize) {
        const WINDOW: u32 = 32;
        let mut sent = vec![0u8; len];
        let mut reply = vec![0u8; len + 1];
        for window in (0..count).step_by(WINDOW as usize) {
            let end = (window + WINDOW).min(count);
            let mut expected = Vec::new();
            for seq in window..end {
                BenchHeader {
                    flow: 7,
                    seq,
                    sent_ns: u64::from(seq) << 20,
                }
                .write(&mut sent)
                .unwrap();
                sent[crate::payload::HEADER_LEN..].fill(seq as u8);
                socket.send_to(&sent, to).unwrap();
                expected.push(sent.clone());
            }
            for want in expected {
                let (n, from) = socket.recv_from(&mut reply).unwrap();
                assert_eq!(from, to, "the reply comes from the address the datagram went to");
                assert_eq!(&reply[..n], &want[..]);
            }
        }
    }

    #[test]
    fn echoes_every_datagram_unchanged_and_stops_promptly() {
        let (addrs, stop, server) = spawn(&args("127.0.0.1:0"));
        let socket = client();
        exchange(&socket, addrs[0], 1000, 100);
        exchange(&socket, addrs[0], 3, 9000);
        let stopped_at = Instant::now();
        stop.store(true, Ordering::Relaxed);
        let report = server.join().unwrap().unwrap();
        assert!(
            stopped_at.elapsed() < Duration::from_millis(300),
            "{:?}",
            stopped_at.elapsed()
        );
        assert_eq!(report.schema, ECHO_SCHEMA);
        assert_eq!((report.received, report.echoed, report.errors), (1003, 1003, 0));
        assert_eq!((report.receive_errors, report.kernel_drops), (0, 0));
    }

    #[test]
    fn wildcard_socket_answers_from_the_destination_address() {
        // 127.0.0.2 is a loopback address too; a wildcard socket without
        // IP_PKTINFO would answer from 127.0.0.1.
        let (addrs, stop, server) = spawn(&args("0.0.0.0:0"));
        let socket = client();
        let target = SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), addrs[0].port());
        exchange(&socket, target, 40, 64);
        stop.store(true, Ordering::Relaxed);
        let report = server.join().unwrap().unwrap();
        assert_eq!(report.echoed, 40);
    }

    #[test]
    fn dual_stack_wildcard_answers_both_families_from_the_destination_address() {
        let Ok(v6) = UdpSocket::bind("[::1]:0") else {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
                "CI must have IPv6 loopback"
            );
            eprintln!(
                "SKIPPED dual_stack_wildcard_answers_both_families_from_the_destination_address: no IPv6 loopback"
            );
            return;
        };
        let (addrs, stop, server) = spawn(&args("[::]:0"));
        let port = addrs[0].port();
        v6.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        exchange(&v6, SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port), 20, 64);
        let v4 = client();
        exchange(&v4, SocketAddr::new(Ipv4Addr::new(127, 0, 0, 2).into(), port), 20, 64);
        stop.store(true, Ordering::Relaxed);
        assert_eq!(server.join().unwrap().unwrap().echoed, 40);
    }

    #[test]
    fn serves_extra_ports_and_ends_at_its_duration() {
        let free_port = UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut a = args("127.0.0.1:0");
        a.ports = vec![free_port..=free_port];
        a.duration = Some(0.5);
        let (addrs, _stop, server) = spawn(&a);
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[1].port(), free_port);
        let socket = client();
        for &addr in &addrs {
            exchange(&socket, addr, 10, 32);
        }
        let report = server.join().unwrap().unwrap();
        assert_eq!(report.echoed, 20);
        assert!((0.4..1.0).contains(&report.duration_s), "{}", report.duration_s);
    }

    #[test]
    fn port_ranges_parse_and_bad_input_is_rejected() {
        assert_eq!(parse_port_range("7001"), Ok(7001..=7001));
        assert_eq!(parse_port_range("7010-7019"), Ok(7010..=7019));
        for bad in ["0", "70000", "x", "7019-7010", "1-", "-5"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        let mut a = args("127.0.0.1:0");
        a.duration = Some(-1.0);
        assert!(UdpEchoServer::bind(&a).is_err());
        a.duration = None;
        a.ports = vec![1..=2000];
        assert!(UdpEchoServer::bind(&a).is_err());
    }

    #[test]
    fn report_round_trips_and_rejects_unknown_fields() {
        let report = EchoReport {
            schema: ECHO_SCHEMA.to_string(),
            received: 5,
            echoed: 4,
            errors: 1,
            receive_errors: 0,
            kernel_drops: 2,
            duration_s: 1.5,
        };
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<EchoReport>(&text).unwrap(), report);
        let extra = text.replace("\"errors\"", "\"bogus\":1,\"errors\"");
        assert!(serde_json::from_str::<EchoReport>(&extra).is_err());
    }
}
