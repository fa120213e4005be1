//! The node's control links to its peers: owner announcements out, and the
//! listener that applies the peers' announcements to every worker.
//!
//! Every link is mutual TLS under the cluster CA
//! ([`crate::control::tls`]) and opens with a [`PeerHello`]; a peer that
//! refuses it gets nothing else. The listener refuses a hello whose sender
//! is not a configured member or not the node its certificate names, and
//! any later message from another sender than the hello's. Announcements are batched (at most [`ANNOUNCE_BATCH`] connections
//! per message) and paced (one round per [`ANNOUNCE_INTERVAL`]), so their
//! rate and size stay bounded whatever the connection rate.

use super::{
    clock::VersionClock,
    handover::Receiver,
    pipeline::Installed,
    view::NodeView,
    worker::{WorkerCommand, WorkerLinks, COMMAND_CHUNK},
};
use crate::control::{
    codec::{Envelope, SUPPORTED_VERSIONS},
    flow::{Owner as WireOwner, WireFlowKey},
    ids::{Capabilities, Incarnation, NodeId, Sender as WireSender},
    io::{read_frame, read_frame_paced, write_frame, FrameIoError},
    message::{Body, FlowOwner, OwnerAnnounce, PeerHello, PeerHelloAck, RefusalReason},
    negotiate::answer_peer_hello,
    session::{Gate, SessionCounters, FRAME_DEADLINE},
    tls::{node_name, SecureStream, TlsIdentity},
};
use crate::flow::Owner;
use anyhow::{Context, Result};
use crossbeam::channel::Sender;
use handoff_common::flow_key::FlowKey;
use std::{
    io::ErrorKind,
    net::{SocketAddr, TcpListener, TcpStream},
    num::NonZeroU64,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Connections per announcement message at most (two keys each).
pub const ANNOUNCE_BATCH: usize = 1024;
/// Pause between announcement rounds.
pub const ANNOUNCE_INTERVAL: Duration = Duration::from_millis(2);
/// How long a connect or a write to a peer may take.
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
/// How often a peer's session checks the stop flag while the peer is idle.
const STOP_POLL: Duration = Duration::from_millis(200);
/// Wait before reconnecting to a peer that failed.
const RECONNECT_AFTER: Duration = Duration::from_millis(200);

/// Control-path counters shared with the admin socket.
#[derive(Debug, Default)]
pub struct PeerCounters {
    /// Announcement messages sent.
    pub announces_sent: AtomicU64,
    /// Connections announced.
    pub flows_announced: AtomicU64,
    /// Announcements that could not be sent to some peer (link down).
    pub announce_failures: AtomicU64,
    /// Announcement messages received.
    pub announces_received: AtomicU64,
    /// Messages refused (malformed, unexpected, or before a hello).
    pub messages_refused: AtomicU64,
    /// The control port's admissions and refusals.
    pub sessions: Arc<SessionCounters>,
}

/// A peer node: its member id and control address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Member id (its certificate names `node-<id>.handoff.cluster`).
    pub id: u16,
    /// Where its control port listens.
    pub address: SocketAddr,
}

/// This node's identity on the control protocol.
#[derive(Clone, Debug)]
pub struct Identity {
    /// Node id.
    pub node: NodeId,
    /// Incarnation (changes at every start).
    pub incarnation: Incarnation,
    /// Its certificate and the cluster CA.
    pub tls: TlsIdentity,
    /// Versions what it says about ownership; shared by all its threads.
    pub clock: Arc<VersionClock>,
}

impl Identity {
    /// This build's hello.
    pub fn hello() -> PeerHello {
        PeerHello {
            software_version: env!("CARGO_PKG_VERSION").to_string(),
            protocol: SUPPORTED_VERSIONS,
            capabilities: Capabilities::THIS_BUILD,
        }
    }

    /// The next envelope of a session whose last serial is `serial`.
    pub fn envelope(&self, serial: &mut u64, body: impl Into<Body>) -> Envelope {
        *serial += 1;
        let serial = NonZeroU64::new(*serial).unwrap_or(NonZeroU64::MIN);
        Envelope::new(WireSender::Node(self.node), self.incarnation, serial, body)
    }
}

struct PeerLink {
    peer: Peer,
    stream: Option<SecureStream>,
    retry_at: Instant,
}

impl PeerLink {
    fn connect(&mut self, identity: &Identity, serial: &mut u64) -> Option<&mut SecureStream> {
        if self.stream.is_none() && Instant::now() >= self.retry_at {
            match open_link(self.peer, identity, serial) {
                Ok(stream) => self.stream = Some(stream),
                Err(e) => {
                    tracing::debug!(peer = %self.peer.address, error = %format!("{e:#}"), "peer link");
                    self.retry_at = Instant::now() + RECONNECT_AFTER;
                }
            }
        }
        self.stream.as_mut()
    }
}

/// Connects to `peer`, authenticates it as that node over TLS and opens a
/// session (hello and its acceptance).
pub fn open_link(peer: Peer, identity: &Identity, serial: &mut u64) -> Result<SecureStream> {
    let address = peer.address;
    let socket = TcpStream::connect_timeout(&address, PEER_TIMEOUT)?;
    socket.set_nodelay(true)?;
    let mut stream = identity
        .tls
        .connect(socket, &node_name(peer.id))
        .with_context(|| format!("TLS with node {} at {address}", peer.id))?;
    stream.socket().set_write_timeout(Some(PEER_TIMEOUT))?;
    stream.socket().set_read_timeout(Some(PEER_TIMEOUT))?;
    write_frame(&mut stream, &identity.envelope(serial, Identity::hello()))?;
    match read_frame(&mut stream)?.body {
        Body::PeerHelloAck(PeerHelloAck::Accepted { .. }) => Ok(stream),
        Body::PeerHelloAck(PeerHelloAck::Refused { reason }) => anyhow::bail!("{address} refused us: {reason:?}"),
        other => anyhow::bail!("{address} answered the hello with {:?}", other.kind()),
    }
}

/// Sends every worker's newly installed connections to every peer until
/// `stop` is set.
pub fn run_announcer(
    identity: Identity,
    peers: Vec<Peer>,
    links: Vec<WorkerLinks>,
    counters: Arc<PeerCounters>,
    stop: Arc<AtomicBool>,
) {
    let mut serial = 0u64;
    let mut peers: Vec<PeerLink> = peers
        .into_iter()
        .map(|peer| PeerLink {
            peer,
            stream: None,
            retry_at: Instant::now(),
        })
        .collect();
    let mut added = Vec::with_capacity(2 * ANNOUNCE_BATCH);
    while !stop.load(Ordering::Relaxed) {
        let mut connections = 0;
        for (worker, link) in links.iter().enumerate() {
            while connections < ANNOUNCE_BATCH {
                let Some(Installed { forward, reverse }) = link.installed.pop() else {
                    break;
                };
                connections += 1;
                let owner = WireOwner {
                    node: identity.node,
                    worker: worker as u16,
                };
                for key in [forward, reverse] {
                    if let Ok(key) = WireFlowKey::try_from(&key) {
                        added.push(FlowOwner { key, owner });
                    }
                }
            }
        }
        if added.is_empty() {
            std::thread::sleep(ANNOUNCE_INTERVAL);
            continue;
        }
        let announce = OwnerAnnounce {
            version: identity.clock.stamp(),
            added: std::mem::take(&mut added),
            removed: Vec::new(),
        };
        for peer in &mut peers {
            let envelope = identity.envelope(&mut serial, announce.clone());
            let sent = peer.connect(&identity, &mut serial).map(|s| write_frame(s, &envelope));
            match sent {
                Some(Ok(_)) => {
                    counters.announces_sent.fetch_add(1, Ordering::Relaxed);
                }
                Some(Err(e)) => {
                    tracing::warn!(peer = %peer.peer.address, error = %e, "announcement lost; reconnecting");
                    peer.stream = None;
                    counters.announce_failures.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    counters.announce_failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        counters
            .flows_announced
            .fetch_add(connections as u64, Ordering::Relaxed);
        added = announce.added;
        added.clear();
        std::thread::sleep(ANNOUNCE_INTERVAL);
    }
}

/// Binds the control port.
pub fn bind(address: SocketAddr) -> Result<TcpListener> {
    let listener = TcpListener::bind(address).with_context(|| format!("binding the control port {address}"))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Who may talk to the control port and how it is guarded.
#[derive(Debug)]
pub struct Admission {
    /// Caps, TLS, refusal counters.
    pub gate: Arc<Gate>,
    /// The member ids of the peers (this node excluded).
    pub members: Vec<u16>,
    /// Connections one handover stream may bring at most (what this node's
    /// flow tables hold).
    pub max_handover_connections: u64,
}

/// Accepts peers until `stop` is set; each admitted peer (under the caps,
/// past the TLS handshake) gets a thread that applies its announcements to
/// every worker.
pub fn run_listener(
    listener: TcpListener,
    identity: Identity,
    admission: Arc<Admission>,
    routing: Arc<NodeView>,
    workers: Vec<Sender<WorkerCommand>>,
    counters: Arc<PeerCounters>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((socket, from)) => {
                let Some(permit) = admission.gate.admit(from.ip()) else {
                    continue;
                };
                let (identity, admission, routing, workers, counters, stop) = (
                    identity.clone(),
                    Arc::clone(&admission),
                    Arc::clone(&routing),
                    workers.clone(),
                    Arc::clone(&counters),
                    Arc::clone(&stop),
                );
                let spawned = std::thread::Builder::new().name("peer".into()).spawn(move || {
                    let _permit = permit;
                    if let Some(stream) = admission.gate.handshake(socket, from) {
                        serve_peer(stream, &identity, &admission, &routing, &workers, &counters, &stop);
                    }
                });
                if let Err(e) = spawned {
                    tracing::warn!(%from, error = %e, "cannot serve peer");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                tracing::warn!(error = %e, "control accept");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// Whether the authenticated `stream` may speak as `claimed`: a configured
/// peer whose certificate names it. The reason when not.
fn may_speak_as(stream: &SecureStream, claimed: WireSender, members: &[u16]) -> Result<(), &'static str> {
    let WireSender::Node(node) = claimed else {
        return Err("the sender is not a node");
    };
    if !members.contains(&node.get()) {
        return Err("not a configured member");
    }
    if !stream.peer_is(&node_name(node.get())) {
        return Err("the certificate names another party");
    }
    Ok(())
}

fn serve_peer(
    mut stream: SecureStream,
    identity: &Identity,
    admission: &Admission,
    routing: &NodeView,
    workers: &[Sender<WorkerCommand>],
    counters: &PeerCounters,
    stop: &AtomicBool,
) {
    let mut receiver = Receiver::new(
        identity.node,
        &identity.clock,
        admission.max_handover_connections,
        routing,
        workers,
    );
    let peer = stream
        .socket()
        .peer_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let mut serial = 0u64;
    let mut greeted: Option<WireSender> = None;
    while !stop.load(Ordering::Relaxed) {
        let envelope = match read_frame_paced(&mut stream, STOP_POLL, FRAME_DEADLINE) {
            Ok(e) => e,
            Err(FrameIoError::Timeout { received: 0 }) => continue,
            Err(FrameIoError::Closed) => return,
            Err(FrameIoError::Timeout { .. }) => {
                admission.gate.timed_out(&peer);
                return;
            }
            Err(e) => {
                counters.messages_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, error = %e, "dropping peer link");
                return;
            }
        };
        if greeted.is_some_and(|sender| sender != envelope.sender) {
            admission.gate.refuse_peer(
                &peer,
                &format!("{:?}", envelope.sender),
                "another sender than the hello's",
            );
            return;
        }
        match envelope.body {
            Body::PeerHello(theirs) => {
                if let Err(why) = may_speak_as(&stream, envelope.sender, &admission.members) {
                    admission
                        .gate
                        .refuse_peer(&peer, &format!("{:?}", envelope.sender), why);
                    let refused = PeerHelloAck::Refused {
                        reason: RefusalReason::NotAMember,
                    };
                    let _ = write_frame(&mut stream, &identity.envelope(&mut serial, refused));
                    return;
                }
                let ack = answer_peer_hello(&Identity::hello(), &theirs);
                greeted = matches!(ack, PeerHelloAck::Accepted { .. }).then_some(envelope.sender);
                if write_frame(&mut stream, &identity.envelope(&mut serial, ack)).is_err() {
                    return;
                }
            }
            Body::OwnerAnnounce(announce) if greeted.is_some() => {
                counters.announces_received.fetch_add(1, Ordering::Relaxed);
                identity.clock.witness(announce.version);
                apply_announce(&announce, workers, identity.node);
            }
            body @ (Body::TableAnnounce(_)
            | Body::FlowRecords(_)
            | Body::FlowDelta(_)
            | Body::Cut(_)
            | Body::OwnershipBroadcast(_))
                if greeted.is_some() =>
            {
                if let Some(answer) = receiver.handle(&body) {
                    if write_frame(&mut stream, &identity.envelope(&mut serial, answer)).is_err() {
                        return;
                    }
                }
            }
            other => {
                counters.messages_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, kind = ?other.kind(), greeted = greeted.is_some(), "unexpected message");
            }
        }
    }
}

fn apply_announce(announce: &OwnerAnnounce, workers: &[Sender<WorkerCommand>], local: NodeId) {
    tell_owners(workers, &announce.added, local, announce.version);
    let removed: Vec<FlowKey> = announce.removed.iter().map(FlowKey::from).collect();
    if !removed.is_empty() {
        for worker in workers {
            let _ = worker.send(WorkerCommand::Forget { keys: removed.clone() });
        }
    }
}

/// Records in every worker's ownership table that `flows` are owned as
/// stated, as of `version`. Entries owned by `local` (which this node routes
/// itself) and entries naming no valid worker are left out.
pub fn tell_owners(workers: &[Sender<WorkerCommand>], flows: &[FlowOwner], local: NodeId, version: u64) {
    let owners: Vec<(FlowKey, Owner)> = flows
        .iter()
        .filter(|f| f.owner.node != local)
        .filter_map(|f| {
            Some((
                FlowKey::from(&f.key),
                Owner {
                    node: f.owner.node.get(),
                    worker: u8::try_from(f.owner.worker).ok()?,
                },
            ))
        })
        .collect();
    if owners.is_empty() {
        return;
    }
    for chunk in owners.chunks(COMMAND_CHUNK) {
        for worker in workers {
            let _ = worker.send(WorkerCommand::Owners {
                version,
                owners: chunk.to_vec(),
            });
        }
    }
}
