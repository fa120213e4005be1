//! The node's session with the migration manager in the edge: it registers,
//! then sends a heartbeat with every worker's load each interval the manager
//! asked for; it reconnects (and registers again) whenever the session breaks.

use super::{peers::Identity, worker::WorkerCommand};
use crate::control::{
    io::{read_frame_within, write_frame},
    message::{Body, Heartbeat, Register, WorkerLoad},
};
use anyhow::{bail, Context, Result};
use crossbeam::channel::{bounded, Sender};
use std::{
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// Bounds on the interval the manager may ask for.
const MIN_INTERVAL: Duration = Duration::from_millis(50);
const MAX_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps a session with the manager at `manager` until `stop` is set.
pub fn run(
    manager: SocketAddr,
    identity: Identity,
    register: Register,
    workers: Vec<Sender<WorkerCommand>>,
    scope_version: &AtomicU64,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = session(manager, &identity, &register, &workers, scope_version, stop) {
            tracing::warn!(%manager, error = %format!("{e:#}"), "manager session");
            std::thread::sleep(RECONNECT_AFTER);
        }
    }
}

fn session(
    manager: SocketAddr,
    identity: &Identity,
    register: &Register,
    workers: &[Sender<WorkerCommand>],
    scope_version: &AtomicU64,
    stop: &AtomicBool,
) -> Result<()> {
    let mut stream = TcpStream::connect_timeout(&manager, CONNECT_TIMEOUT).context("connecting")?;
    stream.set_write_timeout(Some(ACK_TIMEOUT))?;
    let mut serial = 0u64;
    write_frame(
        &mut stream,
        &identity.envelope(&mut serial, Body::Register(register.clone())),
    )?;
    let interval = match read_frame_within(&stream, ACK_TIMEOUT)?.body {
        Body::RegisterAck(ack) => ack.heartbeat_interval.clamp(MIN_INTERVAL, MAX_INTERVAL),
        other => bail!("the manager answered the registration with {:?}", other.kind()),
    };
    tracing::info!(%manager, ?interval, "registered with the manager");
    while !stop.load(Ordering::Relaxed) {
        let beat = Heartbeat {
            scope_version: scope_version.load(Ordering::Relaxed),
            workers: loads(workers, interval),
        };
        write_frame(&mut stream, &identity.envelope(&mut serial, Body::Heartbeat(beat)))?;
        std::thread::sleep(interval);
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
    let mut reports: Vec<_> = (0..asked).filter_map(|_| rx.recv_timeout(timeout).ok()).collect();
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
