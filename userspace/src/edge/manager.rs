//! The migration manager's control port in the edge daemon: nodes register
//! (`Register` → `RegisterAck` with the hash parameters, the scope and the
//! members) and then send a `Heartbeat` every interval; a node silent for
//! longer than the failure limit is marked FAILED (see [`Membership`]).

use super::membership::{Membership, Registration};
use crate::{
    control::{
        codec::Envelope,
        ids::{Capabilities, Incarnation, Sender as WireSender},
        io::{read_frame, read_frame_within, write_frame, FrameIoError},
        message::{Body, MemberInfo, Register, RegisterAck},
        scope_wire::WireScope,
    },
    scope::{HashParams, Scope},
};
use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::{TcpListener, TcpStream},
    num::NonZeroU64,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

/// How often nodes send heartbeats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(200);
/// Silence after which a member is FAILED: five missed heartbeats.
pub const FAILURE_AFTER: Duration = Duration::from_millis(1000);
/// How long a node may take to send its registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// What the control port and the edge's loop share.
#[derive(Debug)]
pub struct ManagerState {
    /// Members and their liveness.
    pub membership: Membership,
    /// The hash parameters.
    pub hash: HashParams,
    /// The scope the edge sprays by.
    pub scope: Scope,
    /// Configured member names by id: only these may register.
    pub configured: BTreeMap<u16, String>,
    /// Each registered member's registration, for the member lists.
    pub registrations: BTreeMap<u16, (Incarnation, Register)>,
}

/// Locks the shared state; a panic elsewhere does not make it unusable.
pub fn lock(state: &Mutex<ManagerState>) -> std::sync::MutexGuard<'_, ManagerState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts nodes until `stop` is set, a thread each.
pub fn run_listener(
    listener: TcpListener,
    state: Arc<Mutex<ManagerState>>,
    incarnation: Incarnation,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, from)) => {
                let (state, stop) = (Arc::clone(&state), Arc::clone(&stop));
                let spawned = std::thread::Builder::new()
                    .name("member".into())
                    .spawn(move || serve_member(stream, &state, incarnation, &stop));
                if let Err(e) = spawned {
                    tracing::warn!(%from, error = %e, "cannot serve member");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!(error = %e, "manager accept");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn serve_member(mut stream: TcpStream, state: &Mutex<ManagerState>, incarnation: Incarnation, stop: &AtomicBool) {
    let peer = stream.peer_addr().map_or_else(|_| "?".into(), |a| a.to_string());
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let first = match read_frame_within(&stream, REGISTER_TIMEOUT) {
        Ok(envelope) => envelope,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "no registration");
            return;
        }
    };
    let (WireSender::Node(node), Body::Register(register)) = (first.sender, first.body) else {
        tracing::warn!(%peer, "the first message was not a node's registration");
        return;
    };
    let id = node.get();
    let ack = {
        let mut s = lock(state);
        if s.configured.get(&id) != Some(&register.name) {
            tracing::warn!(%peer, node = id, name = %register.name, "registration refused: not a configured member");
            return;
        }
        let in_scope = s.scope.buckets_of(u32::from(id)).next().is_some();
        let how = s.membership.register(
            id,
            &register.name,
            first.incarnation,
            register.workers,
            in_scope,
            Instant::now(),
        );
        tracing::info!(node = id, name = %register.name, ?how, "member registered");
        if how == Registration::Restarted {
            tracing::warn!(node = id, "member restarted: its earlier run's state is gone");
        }
        let capabilities = register.capabilities;
        s.registrations.insert(id, (first.incarnation, register));
        let status = s.membership.view(Instant::now());
        let members = s
            .registrations
            .iter()
            .filter_map(|(&id, (inc, r))| {
                let status = status.iter().find(|m| m.node == id)?.status;
                Some(MemberInfo {
                    node: crate::control::ids::NodeId::new(id).ok()?,
                    name: r.name.clone(),
                    incarnation: *inc,
                    status,
                    capabilities: r.capabilities,
                    control_addr: r.control_addr,
                    data_mac: r.data_mac,
                    data_ip: r.data_ip,
                    workers: r.workers,
                })
            })
            .collect();
        RegisterAck {
            protocol_version: crate::control::codec::PROTOCOL_VERSION,
            capabilities: Capabilities::THIS_BUILD & capabilities,
            hash: s.hash.into(),
            scope: WireScope::new(&s.scope, capabilities),
            members,
            heartbeat_interval: HEARTBEAT_INTERVAL,
        }
    };
    let mut serial = 1u64;
    let envelope = |serial: &mut u64, body: Body| {
        *serial += 1;
        Envelope::new(
            WireSender::Manager,
            incarnation,
            NonZeroU64::new(*serial).unwrap_or(NonZeroU64::MIN),
            body,
        )
    };
    if write_frame(&mut stream, &envelope(&mut serial, Body::RegisterAck(ack))).is_err()
        || stream.set_read_timeout(Some(HEARTBEAT_INTERVAL)).is_err()
    {
        return;
    }
    let member_incarnation = first.incarnation;
    while !stop.load(Ordering::Relaxed) {
        match read_frame(&mut stream) {
            Ok(envelope) => match envelope.body {
                Body::Heartbeat(beat) => {
                    let flows = beat.workers.iter().map(|w| w.flows).sum();
                    if let Err(e) = lock(state)
                        .membership
                        .heartbeat(id, envelope.incarnation, flows, Instant::now())
                    {
                        tracing::warn!(%peer, error = %e, "heartbeat refused; closing");
                        return;
                    }
                }
                other => tracing::warn!(%peer, kind = ?other.kind(), "unexpected message from a member"),
            },
            Err(FrameIoError::Timeout { received: 0 }) => continue,
            Err(e) => {
                tracing::info!(%peer, node = id, incarnation = %member_incarnation, error = %e, "member session ended");
                return;
            }
        }
    }
}
