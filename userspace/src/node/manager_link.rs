//! The node's session with the migration manager in the edge: it registers,
//! adopts the manager's scope, sends a heartbeat with every worker's load each
//! interval the manager asked for, and hands the manager's migration orders
//! to the node's loop, whose answers it writes back. It reconnects (and
//! registers again) whenever the session breaks.
//!
//! Orders from another run of the manager, of an attempt that is over, or
//! repeated, are refused here ([`StalenessFilter`]) and never reach the loop.

use super::{
    peers::Identity,
    worker::{WorkerCommand, WorkerReport},
};
use crate::{
    control::{
        io::{read_frame_paced, read_frame_within, write_frame, FrameIoError},
        message::{Abort, Body, Flipped, Heartbeat, MemberStatus, MigrateStart, Register, WorkerLoad},
        session::FRAME_DEADLINE,
        stale::{Freshness, StalenessFilter},
        tls::{SecureStream, MANAGER_NAME},
    },
    scope::Scope,
};
use anyhow::{bail, Context, Result};
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::{
    net::{SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// How often the reader checks the stop flag.
const READ_POLL: Duration = Duration::from_millis(500);
/// Answers queued for the manager at most.
const OUTBOX: usize = 256;
/// Bounds on the interval the manager may ask for.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
const MAX_INTERVAL: Duration = Duration::from_secs(5);

/// What the manager tells the node's loop to do.
#[derive(Debug)]
pub enum ManagerOrder {
    /// Forward by this scope (at registration, and at every flip).
    Scope(Scope),
    /// Start a migration: copy, cut and broadcast towards the plan.
    Start(MigrateStart),
    /// The edge flipped: drain and purge.
    Flipped(Flipped),
    /// The attempt is over without a flip.
    Abort(Abort),
    /// This member FAILED: the flows it owned died with it.
    MemberFailed(u16),
}

/// An order and where its answers go.
pub type OrderCall = (ManagerOrder, Sender<Body>);

/// What a session needs besides its socket.
#[derive(Debug)]
pub struct Link {
    /// Where the manager listens.
    pub manager: SocketAddr,
    /// This node.
    pub identity: Identity,
    /// What it registers with.
    pub register: Register,
    /// The workers, for the heartbeat's loads.
    pub workers: Vec<Sender<WorkerCommand>>,
    /// The scope version the node forwards by.
    pub scope_version: Arc<AtomicU64>,
    /// The node's loop.
    pub orders: Sender<OrderCall>,
}

/// Keeps a session with the manager until `stop` is set.
pub fn run(link: &Link, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = session(link, stop) {
            tracing::warn!(manager = %link.manager, error = %format!("{e:#}"), "manager session");
            std::thread::sleep(RECONNECT_AFTER);
        }
    }
}

fn session(link: &Link, stop: &AtomicBool) -> Result<()> {
    let socket = TcpStream::connect_timeout(&link.manager, CONNECT_TIMEOUT).context("connecting")?;
    socket.set_nodelay(true)?;
    let mut stream = link
        .identity
        .tls
        .connect(socket, MANAGER_NAME)
        .context("TLS with the manager")?;
    stream.socket().set_write_timeout(Some(ACK_TIMEOUT))?;
    let mut serial = 0u64;
    write_frame(
        &mut stream,
        &link
            .identity
            .envelope(&mut serial, Body::Register(link.register.clone())),
    )?;
    let ack = read_frame_within(&mut stream, ACK_TIMEOUT)?;
    let manager_incarnation = ack.incarnation;
    let Body::RegisterAck(ack) = ack.body else {
        bail!("the manager answered the registration with {:?}", ack.body.kind());
    };
    let interval = ack.heartbeat_interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
    let scope = ack.scope.to_scope().context("the manager's scope")?;
    tracing::info!(manager = %link.manager, ?interval, scope_version = scope.version, "registered with the manager");
    let (outbox, answers) = bounded::<Body>(OUTBOX);
    link.orders
        .send((ManagerOrder::Scope(scope), outbox.clone()))
        .context("the node is stopping")?;
    let over = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut stream = stream.try_clone()?;
        let (identity, workers, version, over) = (
            link.identity.clone(),
            link.workers.clone(),
            Arc::clone(&link.scope_version),
            Arc::clone(&over),
        );
        std::thread::Builder::new().name("manager-out".into()).spawn(move || {
            let result = write_loop(
                &mut stream,
                &answers,
                interval,
                &over,
                |body| identity.envelope(&mut serial, body),
                || Heartbeat {
                    scope_version: version.load(Ordering::Relaxed),
                    workers: loads(&workers, interval),
                },
            );
            if let Err(e) = result {
                tracing::warn!(error = %format!("{e:#}"), "writing to the manager");
            }
            // Unblocks the reader.
            let _ = stream.socket().shutdown(std::net::Shutdown::Both);
        })?
    };
    let result = read_loop(&mut stream, manager_incarnation, &outbox, &link.orders, stop);
    over.store(true, Ordering::Relaxed);
    let _ = stream.socket().shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    result
}

/// Writes the loop's answers as they come and a heartbeat every `interval`.
fn write_loop(
    stream: &mut SecureStream,
    answers: &Receiver<Body>,
    interval: Duration,
    over: &AtomicBool,
    mut envelope: impl FnMut(Body) -> crate::control::codec::Envelope,
    mut heartbeat: impl FnMut() -> Heartbeat,
) -> Result<()> {
    let mut next_beat = Instant::now();
    while !over.load(Ordering::Relaxed) {
        if Instant::now() >= next_beat {
            write_frame(stream, &envelope(Body::Heartbeat(heartbeat())))?;
            next_beat = Instant::now() + interval;
        }
        match answers.recv_timeout(next_beat.saturating_duration_since(Instant::now())) {
            Ok(body) => {
                write_frame(stream, &envelope(body))?;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
    Ok(())
}

/// Reads the manager's orders until the session breaks or `stop` is set.
fn read_loop(
    stream: &mut SecureStream,
    manager: crate::control::ids::Incarnation,
    outbox: &Sender<Body>,
    orders: &Sender<OrderCall>,
    stop: &AtomicBool,
) -> Result<()> {
    let mut filter = StalenessFilter::new(manager);
    while !stop.load(Ordering::Relaxed) {
        // A manager that stalls mid-frame ends the session.
        let envelope = match read_frame_paced(stream, READ_POLL, FRAME_DEADLINE) {
            Ok(envelope) => envelope,
            Err(FrameIoError::Timeout { received: 0 }) => continue,
            Err(e) => return Err(e).context("reading from the manager"),
        };
        let verdict = filter.classify(&envelope);
        if verdict != Freshness::Current {
            tracing::warn!(kind = ?envelope.body.kind(), ?verdict, "manager message refused");
            continue;
        }
        let order = match envelope.body {
            Body::ScopeUpdate(update) => match update.scope.to_scope() {
                Ok(scope) => ManagerOrder::Scope(scope),
                Err(e) => {
                    tracing::warn!(error = %e, "malformed scope update refused");
                    continue;
                }
            },
            Body::MigrateStart(start) => {
                filter.begin_migration(start.serial);
                ManagerOrder::Start(start)
            }
            Body::Flipped(flipped) => ManagerOrder::Flipped(flipped),
            Body::MemberUpdate(update) if update.member.status == MemberStatus::Failed => {
                ManagerOrder::MemberFailed(update.member.node.get())
            }
            Body::MemberUpdate(_) => continue,
            Body::Abort(abort) => {
                filter.end_migration();
                ManagerOrder::Abort(abort)
            }
            other => {
                tracing::warn!(kind = ?other.kind(), "unexpected message from the manager");
                continue;
            }
        };
        orders.send((order, outbox.clone())).context("the node is stopping")?;
    }
    Ok(())
}

/// Every worker's load; a worker that does not answer within `timeout`
/// reports nothing (the heartbeat still goes out: the node is alive).
fn loads(workers: &[Sender<WorkerCommand>], timeout: Duration) -> Vec<WorkerLoad> {
    let (tx, rx) = bounded(workers.len());
    let asked = workers
        .iter()
        .filter(|w| w.send(WorkerCommand::Report(tx.clone())).is_ok())
        .count();
    let reports: Vec<_> = (0..asked).filter_map(|_| rx.recv_timeout(timeout).ok()).collect();
    loads_of(reports)
}

/// The heartbeat's per-worker loads, in worker order.
pub fn loads_of(mut reports: Vec<WorkerReport>) -> Vec<WorkerLoad> {
    reports.sort_by_key(|r| r.worker);
    reports
        .iter()
        .map(|r| WorkerLoad {
            flows: r.table.active,
            rx_pending: u32::try_from(r.pending_rx).unwrap_or(u32::MAX),
            tx_pending: u32::try_from(r.pending_tx).unwrap_or(u32::MAX),
        })
        .collect()
}
