//! The migration manager's control port in the edge daemon: nodes register
//! (`Register` → `RegisterAck` with the hash parameters, the scope and the
//! members) and then send a `Heartbeat` every interval; a node silent for
//! longer than the failure limit is marked FAILED (see [`Membership`]).
//!
//! Each session has an outbox the migration driver writes to (`MigrateStart`,
//! `ScopeUpdate`, `Flipped`, `Abort`); what a node sends about the running
//! migration goes to the driver's event channel. Messages from another
//! incarnation, of an attempt that is not the running one, or repeated, are
//! refused and counted ([`StalenessFilter`]).
//!
//! The port is guarded by a [`Gate`]: connection caps, mutual TLS under the
//! cluster CA. A registration is refused (an `ErrorReply {UnknownNode}`,
//! counted) unless it names a configured member by its id and name and the
//! connection's certificate is that node's; a later message from another
//! sender ends the session.

use super::{
    membership::{Membership, Registration},
    migration::Coordinator,
};
use crate::{
    control::{
        codec::Envelope,
        ids::{Capabilities, Incarnation, MacAddr, NodeId, Sender as WireSender},
        io::{read_frame_paced, read_frame_within, write_frame, FrameIoError},
        message::{
            Body, ErrorCode, ErrorReply, MemberInfo, MemberStatus, MemberUpdate, Register, RegisterAck, ScopeUpdate,
        },
        scope_wire::WireScope,
        session::{Gate, FRAME_DEADLINE},
        stale::{Freshness, StalenessFilter},
        tls::{node_name, SecureStream},
    },
    metrics::MigrationMetrics,
    scope::{HashParams, Scope},
};
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::{
    collections::BTreeMap,
    io::ErrorKind,
    net::TcpListener,
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
/// After a restart that took over a pinned sprayer, how long the members of
/// its scope have to register again before the failure limit starts: nodes
/// retry every 500 ms once the session breaks, and the control port opens
/// only once the edge is up.
pub const REREGISTER_GRACE: Duration = Duration::from_secs(2);
/// How long a node may take to send its registration.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages queued for one node at most.
const OUTBOX: usize = 1024;

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
    /// Each live session's outbox.
    pub outboxes: BTreeMap<u16, Sender<Body>>,
    /// Admits one migration at a time.
    pub coordinator: Coordinator,
    /// Where the running migration's messages from its node go.
    pub migration_events: Option<Sender<Body>>,
    /// Messages refused as stale or duplicate.
    pub refused: u64,
    /// Migrations by outcome and their phases' durations, for the metrics
    /// listener.
    pub migration_metrics: MigrationMetrics,
}

impl ManagerState {
    /// Sends `scope` to every node with a live session that `to` selects.
    pub fn tell_scope(&self, scope: &Scope, to: impl Fn(u16) -> bool) {
        for (&node, (_, registration)) in self.registrations.iter().filter(|(&n, _)| to(n)) {
            let update = ScopeUpdate {
                scope: WireScope::new(scope, registration.capabilities),
            };
            if !self.send(node, Body::ScopeUpdate(update)) {
                tracing::warn!(node, "no live session for the scope update");
            }
        }
    }

    /// Tells every live node that `node` FAILED, so they forget the flows it
    /// owned (`MemberUpdate`).
    pub fn member_failed(&self, node: u16) {
        let Some(member) = self
            .member_info(node, MemberStatus::Failed)
            .or_else(|| self.unregistered_info(node))
        else {
            return;
        };
        for &peer in self.outboxes.keys().filter(|&&p| p != node) {
            self.send(peer, Body::MemberUpdate(MemberUpdate { member: member.clone() }));
        }
    }

    /// Registered member `node` as the control protocol describes it.
    fn member_info(&self, node: u16, status: MemberStatus) -> Option<MemberInfo> {
        let (incarnation, r) = self.registrations.get(&node)?;
        Some(MemberInfo {
            node: NodeId::new(node).ok()?,
            name: r.name.clone(),
            incarnation: *incarnation,
            status,
            capabilities: r.capabilities,
            control_addr: r.control_addr,
            data_mac: r.data_mac,
            data_ip: r.data_ip,
            workers: r.workers,
        })
    }

    /// A configured member that never registered with this run of the
    /// manager (it restarted and took over the scope, the node did not come
    /// back): its name and id, nothing it would have registered with. Peers
    /// only need the id to forget the flows it owned.
    fn unregistered_info(&self, node: u16) -> Option<MemberInfo> {
        Some(MemberInfo {
            node: NodeId::new(node).ok()?,
            name: self.configured.get(&node)?.clone(),
            incarnation: Incarnation(0),
            status: MemberStatus::Failed,
            capabilities: Capabilities::default(),
            control_addr: std::net::SocketAddr::from(([0, 0, 0, 0], 0)),
            data_mac: MacAddr([0; 6]),
            data_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
            workers: 0,
        })
    }

    /// Queues `body` for `node`; false if it has no live session or its
    /// outbox is full.
    pub fn send(&self, node: u16, body: Body) -> bool {
        self.outboxes.get(&node).is_some_and(|o| o.try_send(body).is_ok())
    }
}

/// Locks the shared state; a panic elsewhere does not make it unusable.
pub fn lock(state: &Mutex<ManagerState>) -> std::sync::MutexGuard<'_, ManagerState> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accepts nodes until `stop` is set, a thread each for those the gate
/// admits (under the caps, past the TLS handshake).
pub fn run_listener(
    listener: TcpListener,
    gate: Arc<Gate>,
    state: Arc<Mutex<ManagerState>>,
    incarnation: Incarnation,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((socket, from)) => {
                let Some(permit) = gate.admit(from.ip()) else {
                    continue;
                };
                let (gate, state, stop) = (Arc::clone(&gate), Arc::clone(&state), Arc::clone(&stop));
                let spawned = std::thread::Builder::new().name("member".into()).spawn(move || {
                    let _permit = permit;
                    if let Some(stream) = gate.handshake(socket, from) {
                        serve_member(stream, &gate, &state, incarnation, &stop);
                    }
                });
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

/// Refuses a registration: an `ErrorReply {UnknownNode}` naming why, counted.
fn refuse_registration(stream: &mut SecureStream, gate: &Gate, incarnation: Incarnation, first: &Envelope, why: &str) {
    let peer = stream
        .socket()
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    gate.refuse_peer(&peer, &format!("{:?}", first.sender), why);
    let mut reply = Envelope::new(
        WireSender::Manager,
        incarnation,
        NonZeroU64::MIN,
        ErrorReply {
            code: ErrorCode::UnknownNode,
            detail: format!("registration refused: {why}"),
        },
    );
    reply.reply_to = Some(first.serial);
    let _ = write_frame(stream, &reply);
}

fn serve_member(
    mut stream: SecureStream,
    gate: &Gate,
    state: &Mutex<ManagerState>,
    incarnation: Incarnation,
    stop: &AtomicBool,
) {
    let peer = stream
        .socket()
        .peer_addr()
        .map_or_else(|_| "?".into(), |a| a.to_string());
    let first = match read_frame_within(&mut stream, REGISTER_TIMEOUT) {
        Ok(envelope) => envelope,
        Err(FrameIoError::Timeout { .. }) => {
            gate.timed_out(&peer);
            return;
        }
        Err(e) => {
            tracing::warn!(%peer, error = %e, "no registration");
            return;
        }
    };
    let (WireSender::Node(node), Body::Register(register)) = (first.sender, &first.body) else {
        refuse_registration(
            &mut stream,
            gate,
            incarnation,
            &first,
            "the first message is not a node's registration",
        );
        return;
    };
    let register = register.clone();
    let id = node.get();
    if !stream.peer_is(&node_name(id)) {
        refuse_registration(
            &mut stream,
            gate,
            incarnation,
            &first,
            "the certificate names another party",
        );
        return;
    }
    let ack = {
        let mut s = lock(state);
        if s.configured.get(&id) != Some(&register.name) {
            drop(s);
            refuse_registration(
                &mut stream,
                gate,
                incarnation,
                &first,
                "not a configured member (id and name)",
            );
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
            .keys()
            .filter_map(|&id| s.member_info(id, status.iter().find(|m| m.node == id)?.status))
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
    let envelope = move |serial: &mut u64, body: Body| {
        *serial += 1;
        Envelope::new(
            WireSender::Manager,
            incarnation,
            NonZeroU64::new(*serial).unwrap_or(NonZeroU64::MIN),
            body,
        )
    };
    if write_frame(&mut stream, &envelope(&mut serial, Body::RegisterAck(ack))).is_err() {
        return;
    }
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let (outbox, queued) = bounded::<Body>(OUTBOX);
    lock(state).outboxes.insert(id, outbox.clone());
    let written = std::thread::Builder::new().name("member-out".into()).spawn(move || {
        write_outbox(&mut writer, &queued, |body| envelope(&mut serial, body));
    });
    if written.is_ok() {
        read_member(&mut stream, gate, node, first.incarnation, state, stop, &peer);
    }
    let mut s = lock(state);
    if s.outboxes.get(&id).is_some_and(|o| o.same_channel(&outbox)) {
        s.outboxes.remove(&id);
    }
    // The writer ends once the last sender is gone.
    let _ = stream.socket().shutdown(std::net::Shutdown::Both);
}

/// Writes what the driver queues until the session's sender is dropped.
fn write_outbox(stream: &mut SecureStream, queued: &Receiver<Body>, mut envelope: impl FnMut(Body) -> Envelope) {
    loop {
        match queued.recv_timeout(HEARTBEAT_INTERVAL) {
            Ok(body) => {
                if let Err(e) = write_frame(stream, &envelope(body)) {
                    tracing::warn!(error = %e, "writing to a member");
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Reads heartbeats and migration messages until the session breaks.
fn read_member(
    stream: &mut SecureStream,
    gate: &Gate,
    node: NodeId,
    member_incarnation: Incarnation,
    state: &Mutex<ManagerState>,
    stop: &AtomicBool,
    peer: &str,
) {
    let id = node.get();
    let mut filter = StalenessFilter::new(member_incarnation);
    while !stop.load(Ordering::Relaxed) {
        let envelope = match read_frame_paced(stream, HEARTBEAT_INTERVAL, FRAME_DEADLINE) {
            Ok(envelope) => envelope,
            Err(FrameIoError::Timeout { received: 0 }) => continue,
            Err(FrameIoError::Timeout { .. }) => {
                gate.timed_out(peer);
                return;
            }
            Err(e) => {
                tracing::info!(%peer, node = id, incarnation = %member_incarnation, error = %e, "member session ended");
                return;
            }
        };
        if envelope.sender != WireSender::Node(node) {
            gate.refuse_peer(
                peer,
                &format!("{:?}", envelope.sender),
                "another sender than the registration's",
            );
            return;
        }
        let mut s = lock(state);
        match s.coordinator.running() {
            Some(r) if r.target == id => {
                if filter.active_migration() != Some(r.serial) {
                    filter.begin_migration(r.serial);
                }
            }
            _ => filter.end_migration(),
        }
        let verdict = filter.classify(&envelope);
        if verdict != Freshness::Current {
            s.refused += 1;
            tracing::warn!(%peer, node = id, kind = ?envelope.body.kind(), ?verdict, "member message refused");
            continue;
        }
        match envelope.body {
            Body::Heartbeat(beat) => {
                let flows = beat.workers.iter().map(|w| w.flows).sum();
                if let Err(e) =
                    s.membership
                        .heartbeat(id, envelope.incarnation, flows, beat.scope_version, Instant::now())
                {
                    tracing::warn!(%peer, error = %e, "heartbeat refused; closing");
                    return;
                }
            }
            body @ (Body::Progress(_) | Body::ReadyToFlip(_) | Body::Drained(_) | Body::Purged(_) | Body::Abort(_)) => {
                if s.migration_events.as_ref().is_none_or(|e| e.try_send(body).is_err()) {
                    s.refused += 1;
                    tracing::warn!(%peer, node = id, "migration message with no migration to take it");
                }
            }
            other => tracing::warn!(%peer, kind = ?other.kind(), "unexpected message from a member"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{
        codec::SUPPORTED_VERSIONS,
        ids::{MacAddr, MigrationSerial, NodeId},
        keys::{tests::identities, Party},
        message::{Heartbeat, MigrationMode, Progress, ReadyToFlip},
        session::ConnectionLimits,
        tls::{TlsIdentity, MANAGER_NAME},
    };
    use std::net::TcpStream;

    const NODE: u16 = 1;
    const NODE_RUN: Incarnation = Incarnation(77);

    fn state() -> Arc<Mutex<ManagerState>> {
        let hash = HashParams {
            buckets: 64,
            symmetric: false,
            seed: 0,
        };
        Arc::new(Mutex::new(ManagerState {
            membership: Membership::new(FAILURE_AFTER),
            hash,
            scope: Scope::initial(64, &[0, 1]).unwrap(),
            configured: [(0, "fd-a".to_string()), (NODE, "fd-b".to_string())].into(),
            registrations: BTreeMap::new(),
            outboxes: BTreeMap::new(),
            coordinator: Coordinator::new(Duration::ZERO),
            migration_events: None,
            refused: 0,
            migration_metrics: MigrationMetrics::default(),
        }))
    }

    fn register(name: &str) -> Register {
        Register {
            name: name.into(),
            software_version: "test".into(),
            protocol: SUPPORTED_VERSIONS,
            capabilities: Capabilities::THIS_BUILD,
            control_addr: "127.0.0.1:1".parse().unwrap(),
            data_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            data_ip: "127.0.0.1".parse().unwrap(),
            workers: 1,
            in_progress: None,
        }
    }

    fn send(stream: &mut SecureStream, incarnation: Incarnation, serial: u64, body: impl Into<Body>) {
        let envelope = Envelope::new(
            WireSender::Node(NodeId::new(NODE).unwrap()),
            incarnation,
            NonZeroU64::new(serial).unwrap(),
            body,
        );
        write_frame(stream, &envelope).unwrap();
    }

    /// The manager's port on a thread, and the identities of the manager,
    /// node [`NODE`] and node 0 under one cluster CA.
    fn manager(
        state: &Arc<Mutex<ManagerState>>,
        stop: &Arc<AtomicBool>,
        tag: &str,
    ) -> (std::thread::JoinHandle<()>, std::net::SocketAddr, Vec<TlsIdentity>) {
        let ids = identities(tag, &[Party::Manager, Party::Node(NODE), Party::Node(0)]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let gate = Gate::new(ConnectionLimits::default(), ids[0].clone(), Arc::default());
        let (state, stop) = (Arc::clone(state), Arc::clone(stop));
        let thread = std::thread::spawn(move || run_listener(listener, gate, state, Incarnation(5), stop));
        (thread, address, ids)
    }

    #[test]
    fn a_registration_under_another_nodes_certificate_is_refused_and_changes_nothing() {
        let state = state();
        let stop = Arc::new(AtomicBool::new(false));
        let (manager, address, ids) = manager(&state, &stop, "impostor");
        // Node 0's certificate, registering as node 1 (fd-b).
        let mut stream = ids[2]
            .connect(TcpStream::connect(address).unwrap(), MANAGER_NAME)
            .unwrap();
        send(&mut stream, NODE_RUN, 1, register("fd-b"));
        let reply = read_frame_within(&mut stream, Duration::from_secs(5)).unwrap();
        assert!(
            matches!(&reply.body, Body::ErrorReply(e) if e.code == ErrorCode::UnknownNode),
            "{:?}",
            reply.body
        );
        assert!(matches!(
            read_frame_within(&mut stream, Duration::from_secs(5)),
            Err(FrameIoError::Closed | FrameIoError::Io(_))
        ));
        let s = lock(&state);
        assert!(s.registrations.is_empty() && s.outboxes.is_empty());
        drop(s);
        stop.store(true, Ordering::Relaxed);
        manager.join().unwrap();
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_session_takes_current_messages_and_refuses_stale_and_repeated_ones() {
        let state = state();
        let stop = Arc::new(AtomicBool::new(false));
        let (manager, address, ids) = manager(&state, &stop, "session");
        let mut stream = ids[1]
            .connect(TcpStream::connect(address).unwrap(), MANAGER_NAME)
            .unwrap();
        send(&mut stream, NODE_RUN, 1, register("fd-b"));
        let ack = read_frame_within(&mut stream, Duration::from_secs(5)).unwrap();
        assert!(matches!(ack.body, Body::RegisterAck(_)), "{:?}", ack.body.kind());
        wait_until("the outbox", || lock(&state).outboxes.contains_key(&NODE));

        send(
            &mut stream,
            NODE_RUN,
            2,
            Heartbeat {
                scope_version: 1,
                workers: vec![],
            },
        );
        wait_until("the heartbeat", || {
            lock(&state).membership.member(NODE).unwrap().scope_version == 1
        });
        let refused = |n: u64| {
            let state = Arc::clone(&state);
            move || lock(&state).refused == n
        };
        // The same message serial again: a duplicate.
        send(
            &mut stream,
            NODE_RUN,
            2,
            Heartbeat {
                scope_version: 9,
                workers: vec![],
            },
        );
        wait_until("the duplicate refused", refused(1));
        // Another run of the node.
        send(
            &mut stream,
            Incarnation(76),
            3,
            Heartbeat {
                scope_version: 9,
                workers: vec![],
            },
        );
        wait_until("the old incarnation refused", refused(2));
        // A migration message while none runs.
        send(
            &mut stream,
            NODE_RUN,
            4,
            ReadyToFlip {
                serial: MigrationSerial(1),
                flows_handed_over: 3,
            },
        );
        wait_until("the stray message refused", refused(3));

        let (events_tx, events) = crossbeam::channel::bounded(8);
        let running = {
            let mut s = lock(&state);
            s.migration_events = Some(events_tx);
            s.coordinator
                .begin(MigrationMode::Disengage, NODE, Instant::now(), Duration::from_secs(30))
                .unwrap()
        };
        // A late message of an earlier attempt, then the running one's.
        let late = MigrationSerial(running.serial.0 + 100);
        send(
            &mut stream,
            NODE_RUN,
            5,
            ReadyToFlip {
                serial: late,
                flows_handed_over: 3,
            },
        );
        wait_until("the late message refused", refused(4));
        let progress = Progress {
            serial: running.serial,
            phase: crate::control::message::Phase::Copy,
            flows_copied: 1,
            deltas_sent: 0,
            flows_remaining: 2,
            bytes_sent: 180,
        };
        send(&mut stream, NODE_RUN, 6, progress);
        assert_eq!(
            events.recv_timeout(Duration::from_secs(5)).unwrap(),
            Body::Progress(progress)
        );
        assert!(lock(&state).send(
            NODE,
            Body::Drained(crate::control::message::Drained { serial: running.serial })
        ));
        let written = read_frame_within(&mut stream, Duration::from_secs(5)).unwrap();
        assert_eq!(written.sender, WireSender::Manager);
        assert!(matches!(written.body, Body::Drained(_)));
        assert_eq!(lock(&state).refused, 4, "nothing else was refused");

        drop(stream);
        wait_until("the session's end", || !lock(&state).outboxes.contains_key(&NODE));
        stop.store(true, Ordering::Relaxed);
        manager.join().unwrap();
    }
}
