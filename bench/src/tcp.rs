//! The TCP request/response workload over real kernel TCP: a server for the
//! service nodes and a client that tells, per connection, whether it survived.
//!
//! Both directions use one frame, big-endian:
//!
//! ```text
//! 0       2               6          10       12
//! | magic | connection id | sequence | length | payload (length bytes)
//! ```
//!
//! Requests carry [`REQUEST_MAGIC`], responses [`RESPONSE_MAGIC`]; the server
//! echoes the ids and the payload. The magic lets the server reject garbage at
//! once instead of reading a random length.
//!
//! The client is honest: each connection ends in exactly one outcome, the first
//! thing that went wrong, and a broken connection is never retried.

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

/// `schema` value of [`TcpClientReport`].
pub const TCP_CLIENT_SCHEMA: &str = "handoff-tcp/1";
/// `schema` value of [`TcpServerReport`].
pub const TCP_SERVER_SCHEMA: &str = "handoff-tcp-server/1";
/// Frame header length.
pub const FRAME_HEADER_LEN: usize = 12;
/// Marks a request frame ("HQ").
pub const REQUEST_MAGIC: u16 = 0x4851;
/// Marks a response frame ("HR").
pub const RESPONSE_MAGIC: u16 = 0x4852;

/// Socket timeout for every blocking read or write, so loops can check their
/// deadline and the stop flag this often.
const SLICE: Duration = Duration::from_millis(50);
/// Connections a server serves at once, at most (one thread each).
const MAX_SERVER_CONNECTIONS: usize = 4096;
/// Connections a client opens, at most (one thread each).
const MAX_CLIENT_CONNECTIONS: usize = 4096;
/// Stack size of connection threads: they hold no large locals.
const CONNECTION_STACK_BYTES: usize = 256 * 1024;

/// One frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// [`REQUEST_MAGIC`] or [`RESPONSE_MAGIC`].
    pub magic: u16,
    /// The client's connection index.
    pub connection: u32,
    /// Request number within the connection, from 0.
    pub seq: u32,
    /// Payload bytes after the header.
    pub len: u16,
}

impl FrameHeader {
    /// The header's wire form.
    pub fn encode(&self) -> [u8; FRAME_HEADER_LEN] {
        let mut out = [0u8; FRAME_HEADER_LEN];
        out[0..2].copy_from_slice(&self.magic.to_be_bytes());
        out[2..6].copy_from_slice(&self.connection.to_be_bytes());
        out[6..10].copy_from_slice(&self.seq.to_be_bytes());
        out[10..12].copy_from_slice(&self.len.to_be_bytes());
        out
    }

    /// Reads a header from its wire form (any magic: the caller checks it).
    pub fn decode(h: &[u8; FRAME_HEADER_LEN]) -> Self {
        Self {
            magic: u16::from_be_bytes([h[0], h[1]]),
            connection: u32::from_be_bytes([h[2], h[3], h[4], h[5]]),
            seq: u32::from_be_bytes([h[6], h[7], h[8], h[9]]),
            len: u16::from_be_bytes([h[10], h[11]]),
        }
    }
}

/// `handoff-bench tcp-server`: answers framed requests.
#[derive(clap::Args, Clone, Debug)]
pub struct TcpServerArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "0.0.0.0:7100")]
    pub listen: SocketAddr,
    /// Connections served at once (a thread each); more are closed at accept and counted.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Largest request payload in bytes; a larger request closes its connection.
    #[arg(long, default_value_t = 16_384)]
    pub max_payload: u16,
    /// Seconds a connection may stay silent, or leave a response unread, before it is closed.
    #[arg(long, default_value_t = 60.0)]
    pub idle_timeout: f64,
    /// Seconds to run at most; omit to run until SIGINT or SIGTERM.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the server saw. Every accepted connection is counted in exactly one of
/// `refused`, `closed`, `reset`, `rejected`, `timed_out` and `aborted_at_stop`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpServerReport {
    /// Always [`TCP_SERVER_SCHEMA`].
    pub schema: String,
    /// Connections accepted.
    pub accepted: u64,
    /// Closed at once: `max_connections` were busy, or no thread could be started.
    pub refused: u64,
    /// The client closed cleanly between requests.
    pub closed: u64,
    /// The client reset or aborted it, or closed it in the middle of a request.
    pub reset: u64,
    /// Closed by the server for a bad magic or a payload above `max_payload`.
    pub rejected: u64,
    /// Closed by the server: silent, or not reading its responses, for `idle_timeout`.
    pub timed_out: u64,
    /// Still open at stop: reset by the server (`SO_LINGER` 0), so no client mistakes it for a clean close.
    pub aborted_at_stop: u64,
    /// `accept` failures (such as running out of descriptors).
    pub accept_errors: u64,
    /// Requests read whole.
    pub requests: u64,
    /// Responses written whole.
    pub responses: u64,
    /// Seconds the server ran.
    pub duration_s: f64,
}

/// `handoff-bench tcp-client`: many connections, each a request/response loop.
#[derive(clap::Args, Clone, Debug)]
pub struct TcpClientArgs {
    /// Server address and port.
    #[arg(long)]
    pub connect: SocketAddr,
    /// Connections to open.
    #[arg(long, default_value_t = 200)]
    pub connections: usize,
    /// Requests per connection; 0 for as many as the duration allows.
    #[arg(long, default_value_t = 100)]
    pub requests_per_connection: u64,
    /// Milliseconds between a response and the connection's next request.
    #[arg(long, default_value_t = 10)]
    pub interval_ms: u64,
    /// Request payload bytes; the server echoes them (and closes on more than its `--max-payload`).
    #[arg(long, default_value_t = 64)]
    pub request_size: u16,
    /// Milliseconds over which the connections are opened, evenly spaced.
    #[arg(long, default_value_t = 200)]
    pub ramp_ms: u64,
    /// Milliseconds to wait for a connection to be established.
    #[arg(long, default_value_t = 3000)]
    pub connect_timeout_ms: u64,
    /// Milliseconds to wait for each response, and for the server's close at the end.
    #[arg(long, default_value_t = 3000)]
    pub response_timeout_ms: u64,
    /// Seconds after which connections stop sending and close (finishing the request in flight).
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// What the client saw. Every configured connection is counted in exactly one of
/// `completed`, `reset`, `closed_early`, `timed_out`, `failed_connect`,
/// `corrupted` and `skipped`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpClientReport {
    /// Always [`TCP_CLIENT_SCHEMA`].
    pub schema: String,
    /// Connections configured.
    pub connections: u64,
    /// Connections `connect` reported established.
    pub opened: u64,
    /// Every request sent was answered correctly, then both sides closed cleanly.
    pub completed: u64,
    /// Broken by a reset (even one that beat `connect` returning), an abort, a broken pipe,
    /// or another error from the kernel.
    pub reset: u64,
    /// The server closed (FIN) before the client was done.
    pub closed_early: u64,
    /// No connection, response or closing FIN within its timeout.
    pub timed_out: u64,
    /// The connection was refused or the server unreachable.
    pub failed_connect: u64,
    /// A response did not match its request (ids, sequence, length or payload), or bytes came unasked.
    pub corrupted: u64,
    /// Never attempted: the stop flag or the duration ended the ramp first.
    pub skipped: u64,
    /// Requests sent whole.
    pub requests: u64,
    /// Responses received and matching their request.
    pub responses: u64,
    /// Request-to-response time.
    pub latency_us: TcpLatency,
    /// Seconds from the first connection attempt to the last connection's end.
    pub duration_s: f64,
}

impl TcpClientReport {
    /// True when every configured connection completed.
    pub fn ok(&self) -> bool {
        self.connections > 0 && self.completed == self.connections
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpLatency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

fn positive_seconds(value: f64, flag: &str) -> Result<Duration> {
    if !value.is_finite() || value <= 0.0 {
        bail!("{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(value))
}

/// Why reading or writing a whole buffer stopped.
#[derive(Debug)]
enum Transfer {
    /// The peer closed after `done` bytes.
    Eof { done: usize },
    /// The deadline passed.
    TimedOut,
    /// The halt check said stop.
    Halted,
    /// The kernel reported an error.
    Io(io::Error),
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// Reads exactly `buf.len()` bytes by `deadline`. The stream's read timeout
/// ([`SLICE`]) sets how often `halt` and the deadline are checked.
fn read_full(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    halt: &dyn Fn() -> bool,
) -> Result<(), Transfer> {
    let mut done = 0;
    while done < buf.len() {
        if halt() {
            return Err(Transfer::Halted);
        }
        if Instant::now() >= deadline {
            return Err(Transfer::TimedOut);
        }
        match stream.read(&mut buf[done..]) {
            Ok(0) => return Err(Transfer::Eof { done }),
            Ok(n) => done += n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Transfer::Io(e)),
        }
    }
    Ok(())
}

/// Writes all of `buf` by `deadline`; like [`read_full`].
fn write_full(stream: &mut TcpStream, buf: &[u8], deadline: Instant, halt: &dyn Fn() -> bool) -> Result<(), Transfer> {
    let mut done = 0;
    while done < buf.len() {
        if halt() {
            return Err(Transfer::Halted);
        }
        if Instant::now() >= deadline {
            return Err(Transfer::TimedOut);
        }
        match stream.write(&buf[done..]) {
            Ok(0) => return Err(Transfer::Eof { done }),
            Ok(n) => done += n,
            Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Transfer::Io(e)),
        }
    }
    Ok(())
}

/// Blocking socket with [`SLICE`] timeouts and Nagle off (each frame is one write).
fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(SLICE))?;
    stream.set_write_timeout(Some(SLICE))
}

/// Makes closing `stream` send a reset instead of a FIN.
fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the option value is a `linger` that lives across the call, with its size passed.
    // A failure only means the close sends a FIN instead; the outcome is counted either way.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}

/// How a served connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServedOutcome {
    Closed,
    Reset,
    Rejected,
    TimedOut,
    AbortedAtStop,
}

#[derive(Debug, Default)]
struct ServerCounters {
    accepted: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
    reset: AtomicU64,
    rejected: AtomicU64,
    timed_out: AtomicU64,
    aborted_at_stop: AtomicU64,
    accept_errors: AtomicU64,
    requests: AtomicU64,
    responses: AtomicU64,
}

impl ServerCounters {
    fn count(&self, outcome: ServedOutcome) {
        let counter = match outcome {
            ServedOutcome::Closed => &self.closed,
            ServedOutcome::Reset => &self.reset,
            ServedOutcome::Rejected => &self.rejected,
            ServedOutcome::TimedOut => &self.timed_out,
            ServedOutcome::AbortedAtStop => &self.aborted_at_stop,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The request/response server, bound and ready to [`run`](Self::run).
#[derive(Debug)]
pub struct TcpServer {
    listener: TcpListener,
    max_connections: usize,
    max_payload: u16,
    idle_timeout: Duration,
    duration: Option<Duration>,
}

impl TcpServer {
    /// Validates the arguments and binds the listening socket.
    pub fn bind(args: &TcpServerArgs) -> Result<Self> {
        if args.max_connections == 0 || args.max_connections > MAX_SERVER_CONNECTIONS {
            bail!("--max-connections must be between 1 and {MAX_SERVER_CONNECTIONS}");
        }
        let idle_timeout = positive_seconds(args.idle_timeout, "--idle-timeout")?;
        let duration = args.duration.map(|d| positive_seconds(d, "--duration")).transpose()?;
        let listener = TcpListener::bind(args.listen).with_context(|| format!("listening on tcp {}", args.listen))?;
        listener
            .set_nonblocking(true)
            .context("making the listener non-blocking")?;
        Ok(Self {
            listener,
            max_connections: args.max_connections,
            max_payload: args.max_payload,
            idle_timeout,
            duration,
        })
    }

    /// The bound address (with the actual port when 0 was asked for).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.listener.local_addr().context("reading the bound address")
    }

    /// Serves until `stop` is set or the duration ends, then resets the
    /// connections still open and returns once every connection thread has ended.
    pub fn run(&self, stop: &AtomicBool) -> Result<TcpServerReport> {
        let start = Instant::now();
        let deadline = self.duration.map(|d| start + d);
        let counters = ServerCounters::default();
        let active = AtomicUsize::new(0);
        let shutdown = AtomicBool::new(false);
        std::thread::scope(|scope| {
            while !stop.load(Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d) {
                let stream = match self.listener.accept() {
                    Ok((stream, _)) => stream,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        wait_readable(&self.listener, SLICE);
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        counters.accept_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "tcp-server: accept failed");
                        // Out of descriptors or memory: the listener stays readable, so pause instead of spinning.
                        std::thread::sleep(SLICE);
                        continue;
                    }
                };
                counters.accepted.fetch_add(1, Ordering::Relaxed);
                if active.load(Ordering::Relaxed) >= self.max_connections || configure(&stream).is_err() {
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    reset_on_close(&stream);
                    continue;
                }
                active.fetch_add(1, Ordering::Relaxed);
                let (counters, active, shutdown) = (&counters, &active, &shutdown);
                let spawned = std::thread::Builder::new()
                    .name("tcp-serve".into())
                    .stack_size(CONNECTION_STACK_BYTES)
                    .spawn_scoped(scope, move || {
                        let outcome = self.serve(stream, counters, shutdown);
                        counters.count(outcome);
                        active.fetch_sub(1, Ordering::Relaxed);
                    });
                if let Err(e) = spawned {
                    // The closure, and with it the stream, is dropped: the client sees the close.
                    active.fetch_sub(1, Ordering::Relaxed);
                    counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "tcp-server: no thread for a connection");
                }
            }
            shutdown.store(true, Ordering::Relaxed);
        });
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Ok(TcpServerReport {
            schema: TCP_SERVER_SCHEMA.to_string(),
            accepted: get(&counters.accepted),
            refused: get(&counters.refused),
            closed: get(&counters.closed),
            reset: get(&counters.reset),
            rejected: get(&counters.rejected),
            timed_out: get(&counters.timed_out),
            aborted_at_stop: get(&counters.aborted_at_stop),
            accept_errors: get(&counters.accept_errors),
            requests: get(&counters.requests),
            responses: get(&counters.responses),
            duration_s: start.elapsed().as_secs_f64(),
        })
    }

    /// Answers one connection's requests until it ends.
    fn serve(&self, mut stream: TcpStream, counters: &ServerCounters, shutdown: &AtomicBool) -> ServedOutcome {
        let halt = || shutdown.load(Ordering::Relaxed);
        let mut header = [0u8; FRAME_HEADER_LEN];
        // The response goes out in one write: its header, then the payload read in place.
        let mut frame = vec![0u8; FRAME_HEADER_LEN + usize::from(self.max_payload)];
        let outcome = loop {
            let deadline = Instant::now() + self.idle_timeout;
            match read_full(&mut stream, &mut header, deadline, &halt) {
                Ok(()) => {}
                Err(Transfer::Eof { done: 0 }) => break ServedOutcome::Closed,
                Err(other) => break served_outcome(other),
            }
            let request = FrameHeader::decode(&header);
            if request.magic != REQUEST_MAGIC || request.len > self.max_payload {
                tracing::debug!(?request, "tcp-server: rejecting a bad request");
                break ServedOutcome::Rejected;
            }
            let end = FRAME_HEADER_LEN + usize::from(request.len);
            if let Err(e) = read_full(&mut stream, &mut frame[FRAME_HEADER_LEN..end], deadline, &halt) {
                break served_outcome(e);
            }
            counters.requests.fetch_add(1, Ordering::Relaxed);
            let response = FrameHeader {
                magic: RESPONSE_MAGIC,
                ..request
            };
            frame[..FRAME_HEADER_LEN].copy_from_slice(&response.encode());
            let write_deadline = Instant::now() + self.idle_timeout;
            if let Err(e) = write_full(&mut stream, &frame[..end], write_deadline, &halt) {
                break served_outcome(e);
            }
            counters.responses.fetch_add(1, Ordering::Relaxed);
        };
        if outcome == ServedOutcome::AbortedAtStop {
            reset_on_close(&stream);
        }
        outcome
    }
}

/// The outcome of a served connection whose transfer stopped short.
fn served_outcome(transfer: Transfer) -> ServedOutcome {
    match transfer {
        Transfer::Eof { .. } | Transfer::Io(_) => ServedOutcome::Reset,
        Transfer::TimedOut => ServedOutcome::TimedOut,
        Transfer::Halted => ServedOutcome::AbortedAtStop,
    }
}

/// Waits up to `timeout` for the listener to have a connection to accept.
fn wait_readable(listener: &TcpListener, timeout: Duration) {
    let mut pollfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd that outlives the call. The result does not
    // matter: the caller tries to accept either way.
    unsafe { libc::poll(&mut pollfd, 1, timeout.as_millis() as i32) };
}

/// Binds the server and serves until `stop` is set or the duration ends.
pub fn run_tcp_server(args: &TcpServerArgs, stop: &AtomicBool) -> Result<TcpServerReport> {
    let server = TcpServer::bind(args)?;
    tracing::info!(addr = %server.local_addr()?, "tcp-server: listening");
    server.run(stop)
}

/// How a client connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionOutcome {
    Completed,
    Reset,
    ClosedEarly,
    TimedOut,
    FailedConnect,
    Corrupted,
}

/// One client connection's result.
#[derive(Debug)]
struct ConnectionResult {
    outcome: ConnectionOutcome,
    opened: bool,
    requests: u64,
    responses: u64,
}

/// What every client connection shares.
#[derive(Debug)]
struct ClientPlan {
    connect: SocketAddr,
    requests_per_connection: u64,
    interval: Duration,
    request_size: u16,
    connect_timeout: Duration,
    response_timeout: Duration,
    deadline: Instant,
}

/// The outcome of a connection whose transfer stopped short.
fn client_outcome(transfer: Transfer) -> ConnectionOutcome {
    match transfer {
        Transfer::Eof { .. } => ConnectionOutcome::ClosedEarly,
        // Halting never interrupts a client transfer; a deadline did.
        Transfer::TimedOut | Transfer::Halted => ConnectionOutcome::TimedOut,
        Transfer::Io(e) => io_outcome(&e),
    }
}

fn io_outcome(e: &io::Error) -> ConnectionOutcome {
    if is_timeout(e) {
        ConnectionOutcome::TimedOut
    } else {
        ConnectionOutcome::Reset
    }
}

/// Runs one connection: connect, request/response until done, clean close.
fn run_connection(
    id: u32,
    plan: &ClientPlan,
    halted: &dyn Fn() -> bool,
    latency_ns: &Mutex<Histogram<u64>>,
) -> ConnectionResult {
    let mut result = ConnectionResult {
        outcome: ConnectionOutcome::FailedConnect,
        opened: false,
        requests: 0,
        responses: 0,
    };
    let mut stream = match TcpStream::connect_timeout(&plan.connect, plan.connect_timeout) {
        Ok(stream) => stream,
        Err(e) => {
            tracing::debug!(connection = id, error = %e, "tcp-client: connect failed");
            result.outcome = match e.kind() {
                // Established, then reset before `connect` returned (a server refusing at accept).
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted => ConnectionOutcome::Reset,
                _ if is_timeout(&e) => ConnectionOutcome::TimedOut,
                _ => ConnectionOutcome::FailedConnect,
            };
            return result;
        }
    };
    result.opened = true;
    result.outcome = match exchange(&mut stream, id, plan, halted, latency_ns, &mut result) {
        Ok(()) => close_cleanly(&mut stream, plan),
        Err(outcome) => outcome,
    };
    if result.outcome != ConnectionOutcome::Completed {
        tracing::debug!(connection = id, outcome = ?result.outcome, "tcp-client: connection broken");
    }
    result
}

/// The request/response loop; `Err` carries the outcome of the first failure.
fn exchange(
    stream: &mut TcpStream,
    id: u32,
    plan: &ClientPlan,
    halted: &dyn Fn() -> bool,
    latency_ns: &Mutex<Histogram<u64>>,
    result: &mut ConnectionResult,
) -> Result<(), ConnectionOutcome> {
    configure(stream).map_err(|e| io_outcome(&e))?;
    let never = || false;
    let len = usize::from(plan.request_size);
    let mut request = vec![0u8; FRAME_HEADER_LEN + len];
    let mut response = vec![0u8; FRAME_HEADER_LEN + len];
    let mut seq = 0u32;
    while (plan.requests_per_connection == 0 || u64::from(seq) < plan.requests_per_connection)
        && !halted()
        && Instant::now() < plan.deadline
    {
        let header = FrameHeader {
            magic: REQUEST_MAGIC,
            connection: id,
            seq,
            len: plan.request_size,
        };
        request[..FRAME_HEADER_LEN].copy_from_slice(&header.encode());
        for (k, byte) in request[FRAME_HEADER_LEN..].iter_mut().enumerate() {
            *byte = (k as u32 ^ seq.wrapping_mul(31) ^ id) as u8;
        }
        let sent_at = Instant::now();
        let timeout_at = sent_at + plan.response_timeout;
        write_full(stream, &request, timeout_at, &never).map_err(client_outcome)?;
        result.requests += 1;
        read_full(stream, &mut response, timeout_at, &never).map_err(client_outcome)?;
        let expected = FrameHeader {
            magic: RESPONSE_MAGIC,
            ..header
        };
        if response[..FRAME_HEADER_LEN] != expected.encode()
            || response[FRAME_HEADER_LEN..] != request[FRAME_HEADER_LEN..]
        {
            return Err(ConnectionOutcome::Corrupted);
        }
        let elapsed_ns = u64::try_from(sent_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        latency_ns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .saturating_record(elapsed_ns.max(1));
        result.responses += 1;
        seq = seq.wrapping_add(1);
        pause(plan.interval, plan.deadline, halted);
    }
    Ok(())
}

/// Sleeps `interval` in [`SLICE`]s, ending early at the deadline or on halt.
fn pause(interval: Duration, deadline: Instant, halted: &dyn Fn() -> bool) {
    let until = (Instant::now() + interval).min(deadline);
    loop {
        let now = Instant::now();
        if now >= until || halted() {
            return;
        }
        std::thread::sleep(until.saturating_duration_since(now).min(SLICE));
    }
}

/// Sends FIN and waits for the server's: the connection is complete only if
/// the server closes too, with nothing more to say.
fn close_cleanly(stream: &mut TcpStream, plan: &ClientPlan) -> ConnectionOutcome {
    if let Err(e) = stream.shutdown(Shutdown::Write) {
        return io_outcome(&e);
    }
    let mut byte = [0u8; 1];
    match read_full(stream, &mut byte, Instant::now() + plan.response_timeout, &|| false) {
        Ok(()) => ConnectionOutcome::Corrupted,
        Err(Transfer::Eof { .. }) => ConnectionOutcome::Completed,
        Err(other) => client_outcome(other),
    }
}

/// Opens the connections over the ramp, runs them to the end, and reports.
pub fn run_tcp_client(args: &TcpClientArgs, stop: &AtomicBool) -> Result<TcpClientReport> {
    if args.connections == 0 || args.connections > MAX_CLIENT_CONNECTIONS {
        bail!("--connections must be between 1 and {MAX_CLIENT_CONNECTIONS}");
    }
    if args.connect_timeout_ms == 0 || args.response_timeout_ms == 0 {
        bail!("--connect-timeout-ms and --response-timeout-ms must be positive");
    }
    let start = Instant::now();
    let plan = ClientPlan {
        connect: args.connect,
        requests_per_connection: args.requests_per_connection,
        interval: Duration::from_millis(args.interval_ms),
        request_size: args.request_size,
        connect_timeout: Duration::from_millis(args.connect_timeout_ms),
        response_timeout: Duration::from_millis(args.response_timeout_ms),
        deadline: start + positive_seconds(args.duration, "--duration")?,
    };
    let ramp = Duration::from_millis(args.ramp_ms);
    let latency_ns = Mutex::new(Histogram::new_with_bounds(1, 60_000_000_000, 3).context("creating a histogram")?);
    let abort = AtomicBool::new(false);
    let halted = || stop.load(Ordering::Relaxed) || abort.load(Ordering::Relaxed);
    let (results, spawn_error) = std::thread::scope(|scope| {
        let mut handles = Vec::with_capacity(args.connections);
        let mut spawn_error = None;
        for id in 0..args.connections {
            let due = start + ramp.mul_f64(id as f64 / args.connections as f64);
            while Instant::now() < due && !halted() {
                std::thread::sleep(due.saturating_duration_since(Instant::now()).min(SLICE));
            }
            if halted() || Instant::now() >= plan.deadline {
                break;
            }
            let (plan, halted, latency_ns) = (&plan, &halted, &latency_ns);
            let spawned = std::thread::Builder::new()
                .name("tcp-client".into())
                .stack_size(CONNECTION_STACK_BYTES)
                .spawn_scoped(scope, move || run_connection(id as u32, plan, halted, latency_ns));
            match spawned {
                Ok(handle) => handles.push(handle),
                Err(e) => {
                    // Wind the started connections down and fail the run: a partial run is no measurement.
                    abort.store(true, Ordering::Relaxed);
                    spawn_error = Some(e);
                    break;
                }
            }
        }
        let results: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
        (results, spawn_error)
    });
    if let Some(e) = spawn_error {
        return Err(e).context("starting a connection thread");
    }
    let mut report = TcpClientReport {
        schema: TCP_CLIENT_SCHEMA.to_string(),
        connections: args.connections as u64,
        opened: 0,
        completed: 0,
        reset: 0,
        closed_early: 0,
        timed_out: 0,
        failed_connect: 0,
        corrupted: 0,
        skipped: (args.connections - results.len()) as u64,
        requests: 0,
        responses: 0,
        latency_us: TcpLatency {
            count: 0,
            p50: 0.0,
            p99: 0.0,
            max: 0.0,
        },
        duration_s: start.elapsed().as_secs_f64(),
    };
    for result in results {
        let result = result.map_err(|_| anyhow::anyhow!("a connection thread panicked"))?;
        report.opened += u64::from(result.opened);
        report.requests += result.requests;
        report.responses += result.responses;
        let counter = match result.outcome {
            ConnectionOutcome::Completed => &mut report.completed,
            ConnectionOutcome::Reset => &mut report.reset,
            ConnectionOutcome::ClosedEarly => &mut report.closed_early,
            ConnectionOutcome::TimedOut => &mut report.timed_out,
            ConnectionOutcome::FailedConnect => &mut report.failed_connect,
            ConnectionOutcome::Corrupted => &mut report.corrupted,
        };
        *counter += 1;
    }
    let histogram = latency_ns.into_inner().unwrap_or_else(PoisonError::into_inner);
    let us = |ns: u64| ns as f64 / 1000.0;
    report.latency_us = TcpLatency {
        count: histogram.len(),
        p50: us(histogram.value_at_quantile(0.5)),
        p99: us(histogram.value_at_quantile(0.99)),
        max: us(histogram.max()),
    };
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{sync::Arc, thread::JoinHandle};

    fn server_args() -> TcpServerArgs {
        TcpServerArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_connections: 1024,
            max_payload: 1024,
            idle_timeout: 5.0,
            duration: None,
            json: None,
        }
    }

    fn client_args(connect: SocketAddr, connections: usize, requests_per_connection: u64) -> TcpClientArgs {
        TcpClientArgs {
            connect,
            connections,
            requests_per_connection,
            interval_ms: 1,
            request_size: 300,
            ramp_ms: 20,
            connect_timeout_ms: 1000,
            response_timeout_ms: 1000,
            duration: 5.0,
            json: None,
        }
    }

    struct RunningServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: JoinHandle<Result<TcpServerReport>>,
    }

    impl RunningServer {
        fn start(args: &TcpServerArgs) -> Self {
            let server = TcpServer::bind(args).unwrap();
            let addr = server.local_addr().unwrap();
            let stop = Arc::new(AtomicBool::new(false));
            let flag = Arc::clone(&stop);
            Self {
                addr,
                stop,
                thread: std::thread::spawn(move || server.run(&flag)),
            }
        }

        fn stop(self) -> TcpServerReport {
            self.stop.store(true, Ordering::Relaxed);
            self.thread.join().unwrap().unwrap()
        }
    }

    fn spawn_client(args: TcpClientArgs) -> (Arc<AtomicBool>, JoinHandle<Result<TcpClientReport>>) {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        (stop, std::thread::spawn(move || run_tcp_client(&args, &flag)))
    }

    /// A hand-written server on a thread, for misbehaviours the real one never shows.
    fn fake_server(serve: impl FnOnce(TcpListener) + Send + 'static) -> (SocketAddr, JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        (addr, std::thread::spawn(move || serve(listener)))
    }

    /// Reads one whole request from `stream`.
    fn read_request(stream: &mut TcpStream) -> FrameHeader {
        stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut header = [0u8; FRAME_HEADER_LEN];
        stream.read_exact(&mut header).unwrap();
        let request = FrameHeader::decode(&header);
        let mut payload = vec![0u8; usize::from(request.len)];
        stream.read_exact(&mut payload).unwrap();
        request
    }

    #[test]
    fn every_connection_completes_with_matching_responses() {
        let server = RunningServer::start(&server_args());
        let started = Instant::now();
        let report = run_tcp_client(&client_args(server.addr, 50, 20), &AtomicBool::new(false)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(report.ok(), "{report:?}");
        assert_eq!((report.connections, report.opened, report.completed), (50, 50, 50));
        assert_eq!((report.requests, report.responses), (1000, 1000));
        assert_eq!(report.latency_us.count, 1000);
        let l = &report.latency_us;
        assert!(0.0 < l.p50 && l.p50 <= l.p99 && l.p99 <= l.max, "{l:?}");
        let served = server.stop();
        assert_eq!((served.accepted, served.closed), (50, 50), "{served:?}");
        assert_eq!((served.requests, served.responses), (1000, 1000));
        assert_eq!(
            served.reset + served.rejected + served.timed_out + served.aborted_at_stop,
            0
        );
    }

    #[test]
    fn stopping_the_server_resets_its_open_connections() {
        let server = RunningServer::start(&server_args());
        let mut args = client_args(server.addr, 20, 0);
        args.interval_ms = 5;
        let (_client_stop, client) = spawn_client(args);
        std::thread::sleep(Duration::from_millis(300));
        let served = server.stop();
        let stopped_at = Instant::now();
        let report = client.join().unwrap().unwrap();
        assert!(
            stopped_at.elapsed() < Duration::from_secs(1),
            "{:?}",
            stopped_at.elapsed()
        );
        assert_eq!(served.aborted_at_stop, 20, "{served:?}");
        assert_eq!(
            (report.opened, report.reset, report.completed),
            (20, 20, 0),
            "{report:?}"
        );
        assert!(report.responses > 20);
        assert!(!report.ok());
    }

    #[test]
    fn a_reset_while_waiting_for_a_response_is_a_reset() {
        let (addr, fake) = fake_server(|listener| {
            for _ in 0..5 {
                let (mut stream, _) = listener.accept().unwrap();
                read_request(&mut stream);
                reset_on_close(&stream);
            }
        });
        let report = run_tcp_client(&client_args(addr, 5, 3), &AtomicBool::new(false)).unwrap();
        fake.join().unwrap();
        assert_eq!(
            (report.opened, report.reset, report.requests, report.responses),
            (5, 5, 5, 0)
        );
    }

    #[test]
    fn a_wrong_response_is_corrupted() {
        let (addr, fake) = fake_server(|listener| {
            let (mut stream, _) = listener.accept().unwrap();
            let request = read_request(&mut stream);
            let wrong = FrameHeader {
                magic: RESPONSE_MAGIC,
                seq: request.seq + 1,
                ..request
            };
            stream.write_all(&wrong.encode()).unwrap();
            stream.write_all(&vec![0u8; usize::from(request.len)]).unwrap();
            // Wait for the client to give up on the connection.
            let _ = stream.read(&mut [0u8; 1]);
        });
        let report = run_tcp_client(&client_args(addr, 1, 3), &AtomicBool::new(false)).unwrap();
        fake.join().unwrap();
        assert_eq!(
            (report.corrupted, report.completed, report.responses),
            (1, 0, 0),
            "{report:?}"
        );
    }

    #[test]
    fn garbage_and_oversize_requests_close_only_their_connection() {
        let server = RunningServer::start(&server_args());
        let mut args = client_args(server.addr, 10, 20);
        args.interval_ms = 2;
        let (_client_stop, client) = spawn_client(args);
        let oversize = FrameHeader {
            magic: REQUEST_MAGIC,
            connection: 1,
            seq: 0,
            len: 60_000,
        }
        .encode();
        for bad in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &oversize[..]] {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            stream.write_all(bad).unwrap();
            match stream.read(&mut [0u8; 64]) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                other => panic!("the server kept a bad connection open: {other:?}"),
            }
        }
        let report = client.join().unwrap().unwrap();
        assert!(report.ok(), "{report:?}");
        let served = server.stop();
        assert_eq!(
            (served.rejected, served.closed, served.requests),
            (2, 10, 200),
            "{served:?}"
        );
    }

    #[test]
    fn connections_beyond_the_limit_are_refused_and_reported_as_reset() {
        let mut server_args = server_args();
        server_args.max_connections = 2;
        let server = RunningServer::start(&server_args);
        let mut args = client_args(server.addr, 4, 3);
        args.interval_ms = 50;
        let report = run_tcp_client(&args, &AtomicBool::new(false)).unwrap();
        assert_eq!((report.completed, report.reset), (2, 2), "{report:?}");
        let served = server.stop();
        assert_eq!(
            (served.accepted, served.refused, served.closed),
            (4, 2, 2),
            "{served:?}"
        );
    }

    #[test]
    fn a_closed_port_fails_to_connect() {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let report = run_tcp_client(
            &client_args(SocketAddr::from(([127, 0, 0, 1], port)), 5, 3),
            &AtomicBool::new(false),
        )
        .unwrap();
        assert_eq!((report.failed_connect, report.opened, report.requests), (5, 0, 0));
        assert!(!report.ok());
    }

    #[test]
    fn a_silent_server_times_out_within_the_response_timeout() {
        // Never accepted: the kernel completes the handshakes and nobody answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut args = client_args(listener.local_addr().unwrap(), 5, 3);
        args.response_timeout_ms = 300;
        let started = Instant::now();
        let report = run_tcp_client(&args, &AtomicBool::new(false)).unwrap();
        let elapsed = started.elapsed();
        assert!(
            (Duration::from_millis(300)..Duration::from_millis(1000)).contains(&elapsed),
            "{elapsed:?}"
        );
        assert_eq!(
            (report.timed_out, report.opened, report.requests, report.responses),
            (5, 5, 5, 0)
        );
    }

    #[test]
    fn stopping_the_client_closes_every_connection_cleanly() {
        let server = RunningServer::start(&server_args());
        let mut args = client_args(server.addr, 10, 0);
        args.interval_ms = 10;
        let (stop, client) = spawn_client(args);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let stopped_at = Instant::now();
        let report = client.join().unwrap().unwrap();
        assert!(
            stopped_at.elapsed() < Duration::from_millis(500),
            "{:?}",
            stopped_at.elapsed()
        );
        assert!(report.ok(), "{report:?}");
        assert!(
            report.requests > 50 && report.requests == report.responses,
            "{report:?}"
        );
        assert_eq!(server.stop().closed, 10);
    }

    #[test]
    fn a_stop_during_the_ramp_skips_the_rest() {
        let server = RunningServer::start(&server_args());
        let mut args = client_args(server.addr, 10, 0);
        args.ramp_ms = 2000;
        let (stop, client) = spawn_client(args);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let report = client.join().unwrap().unwrap();
        assert!((1..10).contains(&report.completed), "{report:?}");
        assert_eq!(report.completed + report.skipped, 10);
        assert!(!report.ok());
        server.stop();
    }

    #[test]
    fn frames_round_trip_and_bad_arguments_are_rejected() {
        let header = FrameHeader {
            magic: REQUEST_MAGIC,
            connection: 0xdead_beef,
            seq: 7,
            len: 513,
        };
        assert_eq!(FrameHeader::decode(&header.encode()), header);
        assert_eq!(&header.encode()[..2], b"HQ");
        let stop = AtomicBool::new(false);
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        assert!(run_tcp_client(&client_args(addr, 0, 1), &stop).is_err());
        let mut args = client_args(addr, 1, 1);
        args.duration = f64::NAN;
        assert!(run_tcp_client(&args, &stop).is_err());
        let mut server = server_args();
        server.max_connections = 0;
        assert!(TcpServer::bind(&server).is_err());
        let mut server = server_args();
        server.idle_timeout = -1.0;
        assert!(TcpServer::bind(&server).is_err());
    }

    #[test]
    fn reports_reject_unknown_fields() {
        let report = TcpClientReport {
            schema: TCP_CLIENT_SCHEMA.to_string(),
            connections: 2,
            opened: 2,
            completed: 1,
            reset: 1,
            closed_early: 0,
            timed_out: 0,
            failed_connect: 0,
            corrupted: 0,
            skipped: 0,
            requests: 10,
            responses: 9,
            latency_us: TcpLatency {
                count: 9,
                p50: 30.5,
                p99: 80.0,
                max: 91.0,
            },
            duration_s: 1.0,
        };
        assert!(!report.ok());
        let text = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<TcpClientReport>(&text).unwrap(), report);
        let extra = text.replace("\"opened\"", "\"retried\":1,\"opened\"");
        assert!(serde_json::from_str::<TcpClientReport>(&extra).is_err());
    }
}
