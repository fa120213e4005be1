//! Every message body, and the table of message kinds and their wire numbers.
//!
//! Each body is its own struct; [`Body`] is the union a frame carries. Kind
//! numbers are explicit and permanent, grouped by conversation: `0x00xx`
//! generic, `0x01xx` node <-> manager, `0x02xx` migration control, `0x03xx`
//! node <-> node, `0x04xx` operator <-> manager.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{
    flow::{FlowRecord, Owner, RecordVersion, Untranslatable, WireFlowKey},
    ids::{Capabilities, Incarnation, MacAddr, MigrationSerial, NodeId, VersionRange},
    scope_wire::{WireHashParams, WireScope},
};

/// Defines [`MessageKind`], [`Body`] and the per-kind encode/decode dispatch
/// from one list, so a kind number, its variant and its body type cannot drift
/// apart.
macro_rules! messages {
    ($($(#[$doc:meta])* $name:ident = $code:literal,)+) => {
        /// A message kind and its permanent wire number.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum MessageKind {
            $($(#[$doc])* $name = $code,)+
        }

        impl MessageKind {
            /// Every kind, in wire-number order.
            pub const ALL: &'static [MessageKind] = &[$(MessageKind::$name,)+];

            /// The kind a wire number names, if this build knows it.
            pub fn from_wire(code: u16) -> Option<Self> {
                match code {
                    $($code => Some(MessageKind::$name),)+
                    _ => None,
                }
            }

            /// The wire number.
            pub fn to_wire(self) -> u16 {
                self as u16
            }
        }

        /// A message body of any kind.
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum Body {
            $($(#[$doc])* $name($name),)+
        }

        impl Body {
            /// The body's kind.
            pub fn kind(&self) -> MessageKind {
                match self {
                    $(Body::$name(_) => MessageKind::$name,)+
                }
            }

            /// Appends the body's postcard encoding to `out`.
            pub(super) fn encode_into(&self, out: Vec<u8>) -> postcard::Result<Vec<u8>> {
                match self {
                    $(Body::$name(m) => postcard::to_extend(m, out),)+
                }
            }

            /// Decodes a body of `kind` from the front of `bytes`, returning
            /// it and whatever follows it.
            pub(super) fn decode(kind: MessageKind, bytes: &[u8]) -> postcard::Result<(Body, &[u8])> {
                match kind {
                    $(MessageKind::$name => {
                        postcard::take_from_bytes(bytes).map(|(m, rest)| (Body::$name(m), rest))
                    })+
                }
            }
        }

        $(impl From<$name> for Body {
            fn from(m: $name) -> Self {
                Body::$name(m)
            }
        })+
    };
}

messages! {
    /// Any -> any: a request failed.
    ErrorReply = 0x0001,

    /// Node -> manager: join, or rejoin after a restart of either side.
    Register = 0x0101,
    /// Manager -> node: the cluster as the node must see it.
    RegisterAck = 0x0102,
    /// Node -> manager: liveness and load.
    Heartbeat = 0x0103,
    /// Manager -> nodes: a new scope version.
    ScopeUpdate = 0x0104,
    /// Manager -> nodes: a member joined, changed status or address.
    MemberUpdate = 0x0105,

    /// Manager -> node: start moving this node's buckets (disengage) or buckets
    /// to it (engage).
    MigrateStart = 0x0201,
    /// Node -> manager: the migration's current phase and counts.
    Progress = 0x0202,
    /// Node -> manager: copy and broadcast done, the scope may flip.
    ReadyToFlip = 0x0203,
    /// Manager -> node: the edge now sprays by the new scope.
    Flipped = 0x0204,
    /// Node -> manager: every drain path carried its end marker.
    Drained = 0x0205,
    /// Node -> manager: the table is empty and nothing is pending.
    Purged = 0x0206,
    /// Any party of a migration -> the others: it is over, nothing changes.
    Abort = 0x0207,
    /// Manager -> operator, node -> manager: another migration is running.
    Busy = 0x0208,

    /// Node -> node: open a peer session.
    PeerHello = 0x0301,
    /// Node -> node: the session's terms, or a refusal.
    PeerHelloAck = 0x0302,
    /// Disengaging node -> inheritor: a snapshot of this size follows.
    TableAnnounce = 0x0303,
    /// Disengaging node -> inheritor: one chunk of the snapshot.
    FlowRecords = 0x0304,
    /// Disengaging node -> inheritor: changes since the snapshot.
    FlowDelta = 0x0305,
    /// Disengaging node -> inheritor: the stream is complete.
    Cut = 0x0306,
    /// Inheritor -> disengaging node: everything up to the cut is installed.
    CutAck = 0x0307,
    /// Disengaging node -> peers: these buckets or flows have a new owner.
    OwnershipBroadcast = 0x0308,
    /// Node -> peers: the flows it owns, for replies hashed elsewhere.
    OwnerAnnounce = 0x0309,

    /// Operator -> manager: take a node out.
    Disengage = 0x0401,
    /// Operator -> manager: bring a node in.
    Engage = 0x0402,
    /// Operator -> manager: show the cluster.
    StatusRequest = 0x0403,
    /// Manager -> operator: the cluster.
    StatusReply = 0x0404,
    /// Manager -> operator: the request started this migration.
    Accepted = 0x0405,
}

/// How an envelope refers to a migration, for the staleness check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MigrationRef {
    /// The message opens a migration with this serial.
    Opens(MigrationSerial),
    /// The message belongs to the migration with this serial.
    Within(MigrationSerial),
}

impl Body {
    /// The migration the body belongs to, if any.
    pub fn migration(&self) -> Option<MigrationRef> {
        use MigrationRef::{Opens, Within};
        match self {
            Body::MigrateStart(m) => Some(Opens(m.serial)),
            Body::TableAnnounce(m) => Some(Opens(m.serial)),
            Body::Progress(m) => Some(Within(m.serial)),
            Body::ReadyToFlip(m) => Some(Within(m.serial)),
            Body::Flipped(m) => Some(Within(m.serial)),
            Body::Drained(m) => Some(Within(m.serial)),
            Body::Purged(m) => Some(Within(m.serial)),
            Body::Abort(m) => Some(Within(m.serial)),
            Body::FlowRecords(m) => Some(Within(m.serial)),
            Body::FlowDelta(m) => Some(Within(m.serial)),
            Body::Cut(m) => Some(Within(m.serial)),
            Body::CutAck(m) => Some(Within(m.serial)),
            Body::OwnershipBroadcast(m) => Some(Within(m.serial)),
            Body::ErrorReply(_)
            | Body::Register(_)
            | Body::RegisterAck(_)
            | Body::Heartbeat(_)
            | Body::ScopeUpdate(_)
            | Body::MemberUpdate(_)
            | Body::Busy(_)
            | Body::PeerHello(_)
            | Body::PeerHelloAck(_)
            | Body::OwnerAnnounce(_)
            | Body::Disengage(_)
            | Body::Engage(_)
            | Body::StatusRequest(_)
            | Body::StatusReply(_)
            | Body::Accepted(_) => None,
        }
    }
}

// ---- generic ----

/// What kind of failure an [`ErrorReply`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The request's frame did not decode.
    Malformed,
    /// The request's protocol version is not spoken here.
    UnsupportedVersion,
    /// The request is not valid in the session's state (e.g. a heartbeat
    /// before registering).
    UnexpectedMessage,
    /// The request names a node the manager does not know.
    UnknownNode,
    /// Another live incarnation holds the node id.
    NodeIdInUse,
    /// The request's arguments are inconsistent.
    InvalidRequest,
}

/// A request failed. The envelope's `reply_to` names the request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    /// The kind of failure.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub detail: String,
}

// ---- node <-> manager ----

/// A member's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberStatus {
    /// Registered, not yet in the scope.
    Joining,
    /// In the scope, owns buckets.
    Active,
    /// A migration is moving its buckets away.
    Disengaging,
    /// Owns nothing; may be stopped.
    Disengaged,
    /// Missed its heartbeats.
    Failed,
}

/// A migration's phase, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Phase {
    /// Choosing inheritors and opening peer sessions.
    Select,
    /// Streaming the snapshot and deltas.
    Copy,
    /// Announcing the new owners to the peers.
    Broadcast,
    /// Waiting for the edge to switch scope generations.
    Flip,
    /// Forwarding what is still queued, then sending end markers.
    Drain,
    /// Emptying the table.
    Purge,
}

/// A migration in progress, as reported by a node or the manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationReport {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Disengage or engage.
    pub mode: MigrationMode,
    /// The node leaving or joining.
    pub target: NodeId,
    /// Where it is.
    pub phase: Phase,
}

/// Joins the cluster. The envelope's sender is the node id and its incarnation
/// the node's; a second registration from the same incarnation is a duplicate,
/// one from a new incarnation replaces the old member state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// Human-readable name (e.g. "fd-a").
    pub name: String,
    /// The build's version string, for operators and logs.
    pub software_version: String,
    /// Protocol versions the node speaks.
    pub protocol: VersionRange,
    /// Features the node supports.
    pub capabilities: Capabilities,
    /// Where peers and the manager reach the node's control endpoint.
    pub control_addr: SocketAddr,
    /// The data-plane interface's Ethernet address (the edge rewrites to it).
    pub data_mac: MacAddr,
    /// The data-plane interface's address.
    pub data_ip: IpAddr,
    /// Worker threads (one flow table each).
    pub workers: u16,
    /// The migration the node is in the middle of, so a restarted manager can
    /// resume or abort it instead of leaving the node stranded.
    pub in_progress: Option<MigrationReport>,
}

/// A member and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Its id.
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Its incarnation as registered; peers reject messages from others.
    pub incarnation: Incarnation,
    /// Its status.
    pub status: MemberStatus,
    /// Its capabilities.
    pub capabilities: Capabilities,
    /// Its control endpoint.
    pub control_addr: SocketAddr,
    /// Its data-plane Ethernet address.
    pub data_mac: MacAddr,
    /// Its data-plane address.
    pub data_ip: IpAddr,
    /// Its worker count.
    pub workers: u16,
}

/// Accepts a registration. The manager's incarnation is in the envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAck {
    /// The protocol version the session continues with.
    pub protocol_version: u16,
    /// The manager's capabilities.
    pub capabilities: Capabilities,
    /// How flows map to buckets.
    pub hash: WireHashParams,
    /// The scope the edge sprays by now.
    pub scope: WireScope,
    /// Every member, the registering node included.
    pub members: Vec<MemberInfo>,
    /// How often the node must send [`Heartbeat`]s.
    pub heartbeat_interval: Duration,
}

/// One worker's load.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerLoad {
    /// Flows in its table.
    pub flows: u64,
    /// Frames waiting in its RX ring.
    pub rx_pending: u32,
    /// Frames waiting in its TX ring.
    pub tx_pending: u32,
}

/// Liveness and load, sent every heartbeat interval.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The scope version the node forwards by, so the manager sees laggards.
    pub scope_version: u64,
    /// One entry per worker, in worker order.
    pub workers: Vec<WorkerLoad>,
}

/// A new scope version. Nodes use it to find a bucket's owner; it does not by
/// itself move flows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeUpdate {
    /// The scope.
    pub scope: WireScope,
}

/// A member joined or changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberUpdate {
    /// The member as it is now.
    pub member: MemberInfo,
}

// ---- migration control ----

/// Which way a migration moves buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MigrationMode {
    /// Away from the target, which ends owning nothing.
    Disengage,
    /// To the target, which joins the scope.
    Engage,
}

/// Starts a migration on the node that gives up buckets.
///
/// The plan is the scope after the flip: every bucket whose owner differs
/// between `from_version`'s table and `plan` moves, and its new owner is its
/// inheritor. The edge flips to exactly this table, so what the nodes copy and
/// what the edge sprays cannot disagree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateStart {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Disengage or engage.
    pub mode: MigrationMode,
    /// The node leaving or joining.
    pub target: NodeId,
    /// The scope version the plan is a change of; a node on another version
    /// aborts with [`AbortReason::ScopeMismatch`].
    pub from_version: u64,
    /// The scope after the flip.
    pub plan: WireScope,
    /// Time budget from receipt; past it the node aborts.
    pub deadline: Duration,
}

/// A migration's progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The attempt.
    pub serial: MigrationSerial,
    /// The phase entered or in progress.
    pub phase: Phase,
    /// Connections of the snapshot sent so far.
    pub flows_copied: u64,
    /// Delta operations sent so far.
    pub deltas_sent: u64,
    /// Connections of the snapshot not yet sent: `flows_copied +
    /// flows_remaining` is the snapshot's size.
    pub flows_remaining: u64,
    /// Bytes the handover streams sent so far (frames with their headers,
    /// on every stream of the attempt).
    pub bytes_sent: u64,
}

/// Every inheritor acknowledged the cut and every peer the broadcast.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadyToFlip {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Flows the inheritors installed.
    pub flows_handed_over: u64,
}

/// The edge now uses the plan's scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flipped {
    /// The attempt.
    pub serial: MigrationSerial,
    /// The scope version now active.
    pub scope_version: u64,
}

/// Every drain path carried its end marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drained {
    /// The attempt.
    pub serial: MigrationSerial,
}

/// The table is empty and no frame is pending in RX or TX.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purged {
    /// The attempt.
    pub serial: MigrationSerial,
}

/// Why a peer session was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RefusalReason {
    /// The two protocol version ranges do not overlap.
    #[error("no common protocol version: ours {ours}, theirs {theirs}")]
    NoCommonProtocolVersion {
        /// The refusing side's range.
        ours: VersionRange,
        /// The hello's range.
        theirs: VersionRange,
    },
    /// The hello's sender is not in the refusing side's member list.
    #[error("not a member of this cluster")]
    NotAMember,
}

/// Why a migration ended without changing anything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum AbortReason {
    /// The operator cancelled it.
    #[error("cancelled by the operator")]
    Cancelled,
    /// The deadline passed.
    #[error("deadline passed during the {phase:?} phase")]
    DeadlineExceeded {
        /// The phase it was in.
        phase: Phase,
    },
    /// An inheritor died or its session broke.
    #[error("inheritor {node} was lost")]
    InheritorLost {
        /// The inheritor.
        node: NodeId,
    },
    /// The node giving up buckets died or its session broke.
    #[error("the migrating node was lost")]
    TargetLost,
    /// The manager restarted and does not resume this attempt.
    #[error("the manager restarted")]
    ManagerRestarted,
    /// The node is not on the scope version the plan changes.
    #[error("plan is based on scope version {expected}, node has {found}")]
    ScopeMismatch {
        /// The plan's base version.
        expected: u64,
        /// The node's version.
        found: u64,
    },
    /// A peer refused the session.
    #[error("{node} refused the peer session: {reason}")]
    PeerRefused {
        /// The peer.
        node: NodeId,
        /// Its reason.
        reason: RefusalReason,
    },
    /// Sender and inheritor share no flow record version.
    #[error("{node} shares no flow record version with the migrating node")]
    NoCommonRecordVersion {
        /// The inheritor.
        node: NodeId,
    },
    /// A flow cannot be expressed in the record version the inheritor reads.
    #[error("stateful handover to {node} refused: {flow}")]
    Untranslatable {
        /// The inheritor.
        node: NodeId,
        /// The first flow that failed.
        flow: Untranslatable,
    },
    /// The inheritor's stream did not add up at the cut.
    #[error("inheritor {node} saw a gap in the stream")]
    StreamGap {
        /// The inheritor.
        node: NodeId,
    },
    /// The stream announced or sent more connections than the inheritor
    /// takes from one handover (its flow tables' capacity), or more
    /// snapshot records than it announced.
    #[error("inheritor {node} takes at most {limit} connections from one handover")]
    OverCapacity {
        /// The inheritor.
        node: NodeId,
        /// The most it takes.
        limit: u64,
    },
}

/// Ends a migration attempt; the old scope stays and the migrating node keeps
/// (or takes back) ownership of everything it had.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Abort {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Why.
    pub reason: AbortReason,
    /// What the operator reads: the error as the aborting side saw it.
    pub detail: String,
}

/// Another migration is running; only one runs at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Busy {
    /// The one running.
    pub current: MigrationReport,
}

// ---- node <-> node ----

/// Opens a peer session. Sent at the sender's oldest protocol version so any
/// receiver whose range overlaps can decode it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// The build's version string.
    pub software_version: String,
    /// Protocol versions spoken.
    pub protocol: VersionRange,
    /// Features supported; the `FLOW_RECORD_*` bits are the record versions
    /// it reads and writes.
    pub capabilities: Capabilities,
}

/// Answers a [`PeerHello`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerHelloAck {
    /// The session is open on these terms.
    Accepted {
        /// The highest protocol version both speak.
        protocol_version: u16,
        /// The highest flow record version both speak; `None` means the pair
        /// can talk but cannot hand over state.
        record_version: Option<RecordVersion>,
        /// Features both support.
        capabilities: Capabilities,
    },
    /// No session.
    Refused {
        /// Why.
        reason: RefusalReason,
    },
}

/// Announces a snapshot before it is sent, so the receiver can size its tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableAnnounce {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Flows in the snapshot.
    pub flows: u64,
    /// Encoded size of the snapshot, roughly.
    pub bytes_estimate: u64,
    /// The record version every chunk uses.
    pub record_version: RecordVersion,
}

/// One chunk of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecords {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Chunk number, from 0 without gaps.
    pub chunk: u32,
    /// The flows.
    pub records: Vec<FlowRecord>,
}

/// One change to a flow after the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeltaOp {
    /// A flow created since the snapshot.
    Insert(FlowRecord),
    /// A flow whose state changed.
    Update(FlowRecord),
    /// A flow that ended.
    Delete(WireFlowKey),
}

/// Changes since the snapshot, applied in `seq` order after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowDelta {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Batch number, from 0 without gaps.
    pub seq: u64,
    /// The changes, in order.
    pub ops: Vec<DeltaOp>,
}

/// The stream is complete; nothing for this attempt follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cut {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Snapshot chunks sent.
    pub chunks: u32,
    /// Delta batches sent; the last `seq` is one less.
    pub delta_batches: u64,
    /// The sender's logical clock at the cut (see
    /// [`crate::node::clock`]): the receiver stamps its new owners after it.
    pub version: u64,
}

/// Everything up to the cut is installed. The receiver answers a cut whose
/// counts do not match what it received with [`Abort`] instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CutAck {
    /// The attempt.
    pub serial: MigrationSerial,
    /// Flows installed.
    pub flows: u64,
}

/// One bucket's new owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketOwner {
    /// The bucket.
    pub bucket: u32,
    /// Its new owner.
    pub node: NodeId,
}

/// One flow's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowOwner {
    /// The flow.
    pub key: WireFlowKey,
    /// Its owner.
    pub owner: Owner,
}

/// New owners, by bucket or by flow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OwnershipChanges {
    /// Every flow in these buckets moved.
    Buckets(Vec<BucketOwner>),
    /// These flows moved.
    Flows(Vec<FlowOwner>),
}

/// Announces ownership changes of a migration; from now on packets of these
/// flows go to the new owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnershipBroadcast {
    /// The attempt.
    pub serial: MigrationSerial,
    /// The sender's logical clock (see [`crate::node::clock`]): the version
    /// of the new owners, ordered after every announcement it sent before.
    pub version: u64,
    /// The changes.
    pub changes: OwnershipChanges,
}

/// Steady state: flows the sender owns, so a peer that receives a reply whose
/// hash lands on it can forward it to the owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerAnnounce {
    /// The sender's logical clock (see [`crate::node::clock`]); a receiver
    /// ignores an entry older than the one it holds.
    pub version: u64,
    /// Flows now owned by the sender.
    pub added: Vec<FlowOwner>,
    /// Flows the sender no longer owns.
    pub removed: Vec<WireFlowKey>,
}

// ---- operator <-> manager ----

/// Who inherits a disengaging node's buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum InheritorChoice {
    /// The member with the fewest flows takes everything.
    LeastFlows,
    /// The buckets spread over the remaining members, as the next scope
    /// assigns them.
    Spread,
    /// This member takes everything.
    Named(NodeId),
}

/// Takes a node out of the scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disengage {
    /// The node.
    pub node: NodeId,
    /// Who inherits.
    pub inheritor: InheritorChoice,
}

/// Brings a registered node into the scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Engage {
    /// The node.
    pub node: NodeId,
}

/// Asks for the cluster's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusRequest;

/// A member as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReport {
    /// The member.
    pub member: MemberInfo,
    /// Flows over all its workers, from its last heartbeat.
    pub flows: u64,
    /// Time since its last heartbeat.
    pub last_heard: Duration,
}

/// The cluster's state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The active scope version.
    pub scope_version: u64,
    /// Every member.
    pub members: Vec<MemberReport>,
    /// The running migration.
    pub migration: Option<MigrationReport>,
}

/// A disengage or engage request started a migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// Its serial, for following it in [`StatusReply`].
    pub migration: MigrationSerial,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_numbers_are_unique_and_round_trip() {
        let mut seen = std::collections::HashSet::new();
        for &kind in MessageKind::ALL {
            assert!(seen.insert(kind.to_wire()), "{kind:?} reuses a number");
            assert_eq!(MessageKind::from_wire(kind.to_wire()), Some(kind));
        }
        assert_eq!(MessageKind::from_wire(0), None);
        assert_eq!(MessageKind::from_wire(0x0106), None);
    }

    #[test]
    fn kind_numbers_are_pinned() {
        // The numbers are the wire contract: a change here breaks every peer
        // running an older build.
        assert_eq!(MessageKind::ErrorReply.to_wire(), 0x0001);
        assert_eq!(MessageKind::Register.to_wire(), 0x0101);
        assert_eq!(MessageKind::MigrateStart.to_wire(), 0x0201);
        assert_eq!(MessageKind::PeerHello.to_wire(), 0x0301);
        assert_eq!(MessageKind::Disengage.to_wire(), 0x0401);
        assert_eq!(MessageKind::ALL.len(), 28);
    }

    #[test]
    fn migration_messages_name_their_attempt() {
        let s = MigrationSerial(5);
        assert_eq!(
            Body::from(Drained { serial: s }).migration(),
            Some(MigrationRef::Within(s))
        );
        assert_eq!(
            Body::from(TableAnnounce {
                serial: s,
                flows: 1,
                bytes_estimate: 80,
                record_version: RecordVersion::V2,
            })
            .migration(),
            Some(MigrationRef::Opens(s))
        );
        assert_eq!(Body::from(StatusRequest).migration(), None);
    }
}
