//! The per-packet decision of one worker. Pure logic over a [`FrameBuf`]:
//! no I/O, no lock, no allocation; the worker loop owns the port and the rings.
//!
//! Order of lookups for a packet:
//! 1. this worker's flow table: apply the flow's action;
//! 2. the ownership table (announcements, migrations): forward to the owner;
//! 3. a reply from a backend: the owner of its connection's forward key;
//! 4. the scope: forward to the bucket's node / worker;
//! 5. otherwise the flow is new and ours: admit, decide, install both directions.

use super::{
    fabric::{self, decapsulate, encapsulate, FabricError, Hop, Marker},
    fragments::{DatagramId, FragmentTracker, Parked},
    ownership::OwnershipTable,
    view::NodeView,
};
use crate::scope::maglev::UNOWNED;
use crate::{
    flow::{
        config::{EchoPolicy, OnBackendRemoved, UnmatchedVip},
        Admission, AppRegistry, AppVerdict, Decision, FlowError, FlowTable, NetworkAction, Owner, Policy, Side, Slot,
        Timestamp,
    },
    icmp,
    io::{FrameBuf, Verdict},
    rewrite::{self, Ttl},
    tcp_reset::{write_reset, ResetOf},
};
use handoff_common::{
    fabric::{kind, ANY_WORKER, FABRIC_ETHERTYPE, FABRIC_MAX_HOPS},
    flow_key::{FlowKey, IP_V4},
    net::{ethertype, ipproto, NetU16},
    parse::{
        icmp_error_key, parse_ethernet, parse_frame, Headers, QuotedPacket, ETH_HLEN, ICMP_HLEN, IPV6_FRAGMENT_HLEN,
        IPV6_HLEN,
    },
};
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::sync::Arc;

/// Why a worker dropped a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// Not parseable.
    Malformed,
    /// TCP without SYN and no flow (the miss policy), or a reply with no connection.
    NoFlow,
    /// The policy drops it.
    Policy,
    /// The flow's application dropped it.
    App,
    /// It crossed the fabric too often (a forwarding loop).
    LoopGuard,
    /// A fabric header that is not ours, names a core this node does not
    /// have, or comes from a MAC that is not the fabric MAC of the member
    /// it names.
    BadFabric,
    /// A fabric frame whose source MAC is no cluster member's.
    FabricNonMember,
    /// The owner is a node we have no address for, or a core this node
    /// does not have.
    UnknownOwner,
    /// The table could not take the flow.
    TableFull,
    /// The frame could not be rewritten.
    Rewrite,
    /// The target core's ring was full.
    RingFull,
    /// Addressed to a VIP that no service matches, or from a backend and
    /// answering no connection: the edge would spray it straight back.
    NoService,
    /// The TTL (hop limit) ran out.
    TtlExpired,
    /// Larger than the fabric or a core handoff takes.
    TooBig,
    /// A fragment whose first fragment did not come in time.
    FragmentTimeout,
    /// A fragment that found the fragment pen full.
    FragmentsFull,
}

/// Per-worker counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerCounters {
    /// Frames handled (from the port and from other cores).
    pub rx: u64,
    /// Frames transmitted.
    pub tx: u64,
    /// Flows created (connections: both directions count once).
    pub created: u64,
    /// Packets handed to another core of this node.
    pub forwarded_to_core: u64,
    /// Packets sent over the fabric to their owner node.
    pub forwarded_to_node: u64,
    /// Packets received over the fabric.
    pub received_from_node: u64,
    /// Drain markers received.
    pub markers: u64,
    /// Of those, markers of another flip than the one awaited (late, or
    /// early), ignored.
    pub markers_stale: u64,
    /// Packets held back (each runs again once released).
    pub held: u64,
    /// Dropped: not parseable.
    pub drop_malformed: u64,
    /// Dropped: no flow (miss policy), or a reply with no connection.
    pub drop_no_flow: u64,
    /// Dropped by the policy.
    pub drop_policy: u64,
    /// Dropped by an application.
    pub drop_app: u64,
    /// Dropped by the loop guard.
    pub drop_loop_guard: u64,
    /// Dropped: bad fabric header, or a fabric frame from a MAC that is
    /// not the one of the member it names.
    pub drop_bad_fabric: u64,
    /// Dropped: a fabric frame from a MAC that is no member's.
    pub drop_fabric_non_member: u64,
    /// Dropped: owner without a known address, or a core this node does
    /// not have.
    pub drop_unknown_owner: u64,
    /// Dropped: flow table refused the flow.
    pub drop_table_full: u64,
    /// Dropped: the rewrite failed.
    pub drop_rewrite: u64,
    /// Dropped: the other core's ring was full.
    pub drop_ring_full: u64,
    /// Dropped: for a VIP no service matches, or from a backend outside
    /// any connection (never sent back to the edge, which would spray it
    /// here again).
    pub drop_no_service: u64,
    /// Dropped: the TTL (hop limit) ran out here.
    pub drop_ttl_expired: u64,
    /// Dropped: an IP packet larger than `ip_mtu` for the fabric, or a
    /// frame larger than a core handoff takes.
    pub drop_too_big: u64,
    /// Echo requests to a VIP answered.
    pub echo_replies: u64,
    /// ICMP errors originated (time exceeded, too big, unreachable).
    pub icmp_errors_sent: u64,
    /// VID-0 priority tags removed (the frame is then untagged).
    pub priority_tags_removed: u64,
    /// IP fragments handled (each time one runs).
    pub fragments: u64,
    /// Fragments parked until their datagram's first fragment came (each
    /// runs again once it did).
    pub fragments_parked: u64,
    /// Dropped: a parked fragment's first fragment did not come in time.
    pub drop_fragment_timeout: u64,
    /// Dropped: the fragment pen was full.
    pub drop_fragments_full: u64,
    /// Flows whose backend a live change removed, moved to a live backend
    /// at their next packet (UDP and other protocols without a handshake).
    pub backend_moved: u64,
    /// TCP connections whose backend a live change removed, reset: their
    /// client got an RST.
    pub backend_resets: u64,
}

impl WorkerCounters {
    fn count(&mut self, reason: DropReason) {
        let c = match reason {
            DropReason::Malformed => &mut self.drop_malformed,
            DropReason::NoFlow => &mut self.drop_no_flow,
            DropReason::Policy => &mut self.drop_policy,
            DropReason::App => &mut self.drop_app,
            DropReason::LoopGuard => &mut self.drop_loop_guard,
            DropReason::BadFabric => &mut self.drop_bad_fabric,
            DropReason::FabricNonMember => &mut self.drop_fabric_non_member,
            DropReason::UnknownOwner => &mut self.drop_unknown_owner,
            DropReason::TableFull => &mut self.drop_table_full,
            DropReason::Rewrite => &mut self.drop_rewrite,
            DropReason::RingFull => &mut self.drop_ring_full,
            DropReason::NoService => &mut self.drop_no_service,
            DropReason::TtlExpired => &mut self.drop_ttl_expired,
            DropReason::TooBig => &mut self.drop_too_big,
            DropReason::FragmentTimeout => &mut self.drop_fragment_timeout,
            DropReason::FragmentsFull => &mut self.drop_fragments_full,
        };
        *c += 1;
    }

    /// Every drop.
    pub fn dropped(&self) -> u64 {
        self.drop_malformed
            + self.drop_no_flow
            + self.drop_policy
            + self.drop_app
            + self.drop_loop_guard
            + self.drop_bad_fabric
            + self.drop_fabric_non_member
            + self.drop_unknown_owner
            + self.drop_table_full
            + self.drop_rewrite
            + self.drop_ring_full
            + self.drop_no_service
            + self.drop_ttl_expired
            + self.drop_too_big
            + self.drop_fragment_timeout
            + self.drop_fragments_full
    }
}

/// Largest frame handed between cores: any frame a port takes.
pub const CORE_FRAME: usize = crate::io::MAX_FRAME_LEN;

/// [`CorePacket::sender`] of a frame that did not come over the fabric.
pub const NO_SENDER: u16 = u16::MAX;

/// A frame on its way to another core of the node.
#[derive(Clone, Copy)]
pub struct CorePacket {
    /// Target worker.
    pub worker: u8,
    /// Hops so far (the loop guard counts core handoffs too).
    pub hops: u8,
    /// The node that sent it over the fabric, or [`NO_SENDER`].
    pub sender: u16,
    /// Frame length.
    pub len: u16,
    /// Frame bytes (a plain Ethernet frame).
    pub data: [u8; CORE_FRAME],
}

impl CorePacket {
    /// A copy of `bytes` (at most [`CORE_FRAME`] long) for `worker`.
    fn copy_of(bytes: &[u8], worker: u8, hops: u8, sender: Option<u16>) -> Self {
        let mut packet = Self {
            worker,
            hops,
            sender: sender.unwrap_or(NO_SENDER),
            len: bytes.len() as u16,
            data: [0; CORE_FRAME],
        };
        packet.data[..bytes.len()].copy_from_slice(bytes);
        packet
    }
}

impl std::fmt::Debug for CorePacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CorePacket")
            .field("worker", &self.worker)
            .field("len", &self.len)
            .finish()
    }
}

/// A newly installed connection, for the owner's announcements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Installed {
    /// Forward key.
    pub forward: FlowKey,
    /// Reverse key.
    pub reverse: FlowKey,
}

/// What a burst produced besides verdicts. Preallocated by the worker and
/// drained after every burst, so the packet path never allocates.
#[derive(Debug)]
pub struct Outbox {
    /// Frames for other cores.
    pub to_cores: Vec<CorePacket>,
    /// Connections installed.
    pub installed: Vec<Installed>,
    /// Frames of redirected connections held back (see
    /// [`Pipeline::hold_redirects`]), unchanged, in arrival order.
    pub held: Vec<CorePacket>,
    /// Parked fragments whose first fragment came: to run again, in order.
    pub released: Vec<CorePacket>,
}

impl Outbox {
    /// An outbox for bursts of up to `burst` frames.
    pub fn with_capacity(burst: usize) -> Self {
        Self {
            to_cores: Vec::with_capacity(burst),
            installed: Vec::with_capacity(burst),
            held: Vec::with_capacity(burst),
            released: Vec::with_capacity(burst),
        }
    }
}

/// What a node needs to forward like a router: the largest IP packet its
/// fabric takes and the addresses it sends ICMP errors from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouterSettings {
    /// The largest IP packet (bytes, headers included) the node forwards
    /// to another node: the fabric link's MTU less the fabric header.
    pub ip_mtu: u16,
    /// The node's own addresses; the first of each family is the source
    /// of the ICMP errors it originates (none: no error of that family is
    /// sent, the drop is still counted).
    pub addresses: Vec<IpAddr>,
}

impl Default for RouterSettings {
    fn default() -> Self {
        Self {
            ip_mtu: DEFAULT_IP_MTU,
            addresses: Vec::new(),
        }
    }
}

/// The IP MTU of an Ethernet network (RFC 894).
pub const DEFAULT_IP_MTU: u16 = 1500;

impl RouterSettings {
    fn source_for(&self, ipv4: bool) -> Option<IpAddr> {
        self.addresses.iter().copied().find(|a| a.is_ipv4() == ipv4)
    }
}

/// One worker's packet logic.
pub struct Pipeline {
    me: Owner,
    own_mac: [u8; 6],
    view: Arc<NodeView>,
    policy: Arc<Policy>,
    table: FlowTable,
    apps: AppRegistry,
    ownership: OwnershipTable,
    neighbor_macs: Vec<[u8; 6]>,
    counters: WorkerCounters,
    lost: Option<LostFlow>,
    /// Packets of redirected connections go to [`Outbox::held`] instead of
    /// their inheritor (between a cut and the inheritor's confirmation).
    holding_redirects: bool,
    /// Nothing is held while set: a packet leaving a full pen early goes on.
    holds_suspended: bool,
    /// The node that sent the packet being handled over the fabric.
    sender: Option<u16>,
    /// The previous owners of the buckets this node took in the last flip,
    /// whose end markers this worker awaits (see [`Pipeline::set_view`]).
    awaiting: Vec<Awaited>,
    /// The held packets are due to run again: `Some(true)` when the wait
    /// ended without every marker.
    release_due: Option<bool>,
    router: RouterSettings,
    /// Bounds the ICMP errors this worker originates.
    icmp_limit: icmp::RateLimit,
    /// The gateway's MAC: where replies and originated messages go.
    gateway_mac: Option<[u8; 6]>,
    /// The time of the packet being handled.
    now: Timestamp,
    /// The packet being handled is an ICMP error quoting this packet.
    quoted: Option<QuotedPacket>,
    /// The packet being handled is a fragment of a datagram with these ports.
    fragment_ports: Option<(NetU16, NetU16)>,
    fragments: FragmentTracker,
}

/// A previous owner whose drain this worker awaits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Awaited {
    node: u16,
    /// The flip whose end it awaits (low bits of the scope version, as
    /// the previous owner's markers carry it).
    serial: u32,
    /// Its lanes, once a marker told.
    lanes: u16,
    /// Lanes whose marker came (bit per lane).
    seen: u64,
}

impl Awaited {
    /// The live previous owners of the buckets `node` took in the flip
    /// `view` remembers, if any.
    fn after(view: &NodeView, node: u16) -> Vec<Self> {
        let mut awaited: Vec<Self> = Vec::new();
        let Some(previous) = view.previous.as_ref() else {
            return awaited;
        };
        let me = u32::from(node);
        for (bucket, &before) in previous.iter().enumerate() {
            let gained = before != me && before != UNOWNED && view.scope.owner(bucket as u32) == me;
            if gained && !awaited.iter().any(|a| u32::from(a.node) == before) {
                awaited.push(Self {
                    node: before as u16,
                    serial: view.scope.version as u32,
                    lanes: 0,
                    seen: 0,
                });
            }
        }
        awaited
    }
}

/// Where a packet goes right after a flip instead of by the scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transition {
    /// To the bucket's previous owner, which may hold its connection.
    AskPrevious(u16),
    /// To the core of this node the bucket mapped to before it was given up.
    LookOnCore(u8),
}

/// A packet of a connection dropped because the cluster disagreed on its
/// owner, with what this worker knew: kept for the operator's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LostFlow {
    /// Why.
    pub reason: DropReason,
    /// The packet's key.
    pub key: FlowKey,
    /// Fabric and core crossings so far.
    pub hops: u8,
    /// Its owner in this worker's ownership table.
    pub announced: Option<Owner>,
    /// Its owner by the scope (of the forward key, for a reply).
    pub by_scope: Owner,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("me", &self.me)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// A pipeline for worker `worker` of the node in `view`.
    pub fn new(
        worker: u8,
        own_mac: [u8; 6],
        view: Arc<NodeView>,
        policy: Arc<Policy>,
        ownership_capacity: usize,
    ) -> Result<Self, FlowError> {
        let me = Owner {
            node: view.node,
            worker,
        };
        let table = FlowTable::new(policy.table_config(), me)?;
        let awaiting = Awaited::after(&view, me.node);
        let neighbor_macs: Vec<[u8; 6]> = policy.neighbors().iter().map(|n| n.mac).collect();
        let gateway_mac = neighbor_macs.get(usize::from(policy.config().gateway)).copied();
        let icmp_limit = icmp::RateLimit::new(policy.config().icmp.errors_per_second);
        Ok(Self {
            me,
            own_mac,
            view,
            policy,
            table,
            apps: AppRegistry::new(),
            ownership: OwnershipTable::new(ownership_capacity),
            neighbor_macs,
            counters: WorkerCounters::default(),
            lost: None,
            holding_redirects: false,
            holds_suspended: false,
            sender: None,
            awaiting,
            release_due: None,
            router: RouterSettings::default(),
            icmp_limit,
            gateway_mac,
            now: Timestamp::from_nanos(0),
            quoted: None,
            fragment_ports: None,
            fragments: FragmentTracker::new(),
        })
    }

    /// This pipeline forwarding with `router`'s MTU and addresses.
    #[must_use]
    pub fn with_router(mut self, router: RouterSettings) -> Self {
        self.router = router;
        self
    }

    /// This worker.
    pub fn owner(&self) -> Owner {
        self.me
    }

    /// Counters so far.
    pub fn counters(&self) -> WorkerCounters {
        self.counters
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Adopts `policy` (built by [`Policy::reload`] from the running one, so
    /// installed connections' next-hop indices stay valid). New flows get
    /// its decisions; a connection whose backend it retired is moved, reset
    /// or kept at its next packet.
    pub fn set_policy(&mut self, policy: Arc<Policy>) {
        self.neighbor_macs.clear();
        self.neighbor_macs.extend(policy.neighbors().iter().map(|n| n.mac));
        self.gateway_mac = self.neighbor_macs.get(usize::from(policy.config().gateway)).copied();
        if policy.config().icmp.errors_per_second != self.policy.config().icmp.errors_per_second {
            self.icmp_limit = icmp::RateLimit::new(policy.config().icmp.errors_per_second);
        }
        self.policy = policy;
    }

    /// The clock-independent view this worker routes by.
    pub fn view(&self) -> &Arc<NodeView> {
        &self.view
    }

    /// The flow table.
    pub fn table(&self) -> &FlowTable {
        &self.table
    }

    /// The flow table, for the control path (migration, expiry).
    pub fn table_mut(&mut self) -> &mut FlowTable {
        &mut self.table
    }

    /// The ownership lookup table, for the control path.
    pub fn ownership_mut(&mut self) -> &mut OwnershipTable {
        &mut self.ownership
    }

    /// The ownership lookup table.
    pub fn ownership(&self) -> &OwnershipTable {
        &self.ownership
    }

    /// Installs a new view (scope, peers).
    ///
    /// Right after a flip, a connection this node took over may still have
    /// packets on their way through its previous owner (in that node's
    /// rings, then on the fabric), while newer ones arrive here directly.
    /// So the direct packets of such connections wait in [`Outbox::held`]
    /// until the previous owner's end markers arrived on every lane, and
    /// what came through it ran first. A wait that a later view ends before
    /// every marker came ends as a timeout.
    pub fn set_view(&mut self, view: Arc<NodeView>) {
        if !self.awaiting.is_empty() {
            self.release_due = Some(true);
        }
        self.awaiting = Awaited::after(&view, self.me.node);
        self.view = view;
    }

    /// Suspends (or resumes) every hold, for a packet that must go on now.
    pub fn suspend_holds(&mut self, suspended: bool) {
        self.holds_suspended = suspended;
    }

    /// Stops holding anything: redirects pass, no marker is awaited.
    pub fn stop_holding(&mut self) {
        self.holding_redirects = false;
        self.awaiting.clear();
    }

    /// Whether (and how) the held packets are due to run again since the
    /// last call: `Some(true)` if a wait ended without its markers.
    pub fn take_release(&mut self) -> Option<bool> {
        self.release_due.take()
    }

    /// This worker's MAC on the fabric.
    pub fn own_mac(&self) -> [u8; 6] {
        self.own_mac
    }

    /// Records `marker`; all lanes of an awaited node in makes the held
    /// packets due (those still waiting for another node are held again).
    /// A marker that ends another flip than the awaited one (a late one
    /// from an earlier flip) is counted and ignored: it says nothing about
    /// the packets of this one.
    fn marker_arrived(&mut self, marker: &Marker) {
        let Some(i) = self.awaiting.iter().position(|a| a.node == marker.sender) else {
            return;
        };
        let awaited = &mut self.awaiting[i];
        if awaited.serial != marker.serial {
            self.counters.markers_stale += 1;
            return;
        }
        awaited.lanes = awaited.lanes.max(marker.lanes);
        awaited.seen |= 1u64 << (marker.lane % 64);
        if awaited.lanes > 0 && awaited.seen.count_ones() >= u32::from(awaited.lanes.min(64)) {
            self.awaiting.swap_remove(i);
            self.release_due.get_or_insert(false);
        }
    }

    /// Whether a packet with `key` that reached this node directly waits for
    /// the end markers of its bucket's previous owner.
    fn waits_for_drain(&self, key: &FlowKey) -> bool {
        if self.awaiting.is_empty() {
            return false;
        }
        self.view
            .previous_owner(key)
            .is_some_and(|before| self.sender != Some(before) && self.awaiting.iter().any(|a| a.node == before))
    }

    /// Holds back (or lets pass again) the packets of redirected
    /// connections: untouched, they wait in [`Outbox::held`] for the worker
    /// to run them again once the inheritor confirmed, or the cut was
    /// taken back.
    pub fn hold_redirects(&mut self, hold: bool) {
        self.holding_redirects = hold;
    }

    /// Counts a transmission the worker made for a frame from another core.
    pub fn count_tx(&mut self) {
        self.counters.tx += 1;
    }

    /// The last packet lost to an ownership disagreement since the last call.
    pub fn take_lost_flow(&mut self) -> Option<LostFlow> {
        self.lost.take()
    }

    fn lose(&mut self, reason: DropReason, key: &FlowKey, hops: u8) -> Verdict {
        let forward = self.policy.forward_key_of_reply(key).unwrap_or(*key);
        self.lost = Some(LostFlow {
            reason,
            key: *key,
            hops,
            announced: self.ownership.get(key),
            by_scope: self.scope_owner(&forward),
        });
        self.drop(reason)
    }

    /// Counts a drop decided by the worker loop (e.g. a full ring).
    pub fn count_drop(&mut self, reason: DropReason) {
        self.counters.count(reason);
    }

    fn drop(&mut self, reason: DropReason) -> Verdict {
        self.counters.count(reason);
        Verdict::Drop
    }

    fn transmit(&mut self) -> Verdict {
        self.counters.tx += 1;
        Verdict::Transmit
    }

    /// Handles one frame that arrived with `hops` fabric/core crossings.
    pub fn process<F: FrameBuf>(&mut self, frame: &mut F, hops: u8, now: Timestamp, out: &mut Outbox) -> Verdict {
        self.run(frame, hops, None, Arrival::Port, now, out)
    }

    /// [`Pipeline::process`] for a frame another core handed over, which
    /// `sender` had sent over the fabric.
    pub fn process_from<F: FrameBuf>(
        &mut self,
        frame: &mut F,
        hops: u8,
        sender: Option<u16>,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Verdict {
        self.run(frame, hops, sender, Arrival::Core, now, out)
    }

    fn run<F: FrameBuf>(
        &mut self,
        frame: &mut F,
        hops: u8,
        sender: Option<u16>,
        arrival: Arrival,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Verdict {
        self.sender = sender;
        self.now = now;
        self.counters.rx += 1;
        let Ok(l2) = parse_ethernet(frame.bytes()) else {
            return self.drop(DropReason::Malformed);
        };
        if l2.l3_offset > ETH_HLEN && rewrite::is_priority_tagged(frame.bytes()) {
            // A VID-0 tag carries only a priority (IEEE 802.1Q §6.9):
            // the frame is untagged for everything that follows.
            if rewrite::pop_vlan_tag(frame).is_err() {
                return self.drop(DropReason::Malformed);
            }
            self.counters.priority_tags_removed += 1;
        }
        let mut hops = hops;
        if l2.ethertype == FABRIC_ETHERTYPE {
            // Only members speak the fabric: anyone else could inject
            // flows, ownership hops or drain markers.
            let source = &frame.bytes()[6..12];
            if !self.view.peer_macs.iter().flatten().any(|mac| mac[..] == *source) {
                return self.drop(DropReason::FabricNonMember);
            }
            match decapsulate(frame, self.own_mac) {
                // Only a member sends on the fabric, from its own MAC: a
                // fabric frame from anyone else could claim any sender,
                // end a drain early or put packets in any flow. Copies
                // from this node's other cores carry this node's MAC.
                Ok(h) if arrival == Arrival::Port && !self.sent_by_member(frame.bytes(), h.sender.get()) => {
                    return self.drop(DropReason::BadFabric)
                }
                Ok(h) if h.kind == kind::MARKER => {
                    self.counters.markers += 1;
                    let marker = Marker {
                        sender: h.sender.get(),
                        lane: h.lane.get(),
                        lanes: h.lanes.get(),
                        serial: h.serial.get(),
                    };
                    if h.target_worker == ANY_WORKER {
                        // Every core here may hold packets of the path it
                        // ends; each copy follows, on that core's ring, what
                        // this core handed it before.
                        let me = self.me.worker;
                        for worker in (0..self.view.workers).filter(|&w| w != me) {
                            self.hand_marker(&marker, worker, out);
                        }
                    }
                    self.marker_arrived(&marker);
                    return Verdict::Drop;
                }
                Ok(h) => {
                    self.counters.received_from_node += 1;
                    hops = hops.max(h.hops);
                    self.sender = Some(h.sender.get());
                    if h.target_worker != ANY_WORKER && h.target_worker != self.me.worker {
                        if h.target_worker >= self.view.workers {
                            // No core here has it: no ring to hand it to.
                            return self.drop(DropReason::BadFabric);
                        }
                        // The sender named the owning core; another core's
                        // table or scope would only send it away again.
                        return self.hand_to_core(frame.bytes(), h.target_worker, hops, out);
                    }
                }
                Err(FabricError::TooManyHops(_)) => return self.drop(DropReason::LoopGuard),
                Err(_) => return self.drop(DropReason::BadFabric),
            }
        }
        let Ok(headers) = parse_frame(frame.bytes()) else {
            return self.drop(DropReason::Malformed);
        };
        self.quoted = None;
        self.fragment_ports = None;
        if headers.fragment {
            self.counters.fragments += 1;
            let Some(ports) = self.fragment_ports_of(frame.bytes(), &headers, hops, out) else {
                return Verdict::Drop;
            };
            self.fragment_ports = Some(ports);
        }
        if matches!(headers.key.protocol, ipproto::ICMP | ipproto::ICMPV6) && !headers.fragment {
            if headers.upper_offset + ICMP_HLEN > headers.l3_end {
                // No whole ICMP header (RFC 792, RFC 4443 §2.1): nothing
                // to answer, to quote or to forward.
                return self.drop(DropReason::Malformed);
            }
            if self.policy.is_vip(&headers.key) && icmp::is_echo_request(frame.bytes(), &headers) {
                return self.answer_echo(frame.bytes_mut(), &headers);
            }
            // An error about a connection's packet belongs to that
            // connection, found by the quote (the edge hashed it so too).
            self.quoted = icmp_error_key(frame.bytes(), &headers).ok().flatten();
        }
        let key = self.flow_key(&headers);
        if let Some(slot) = self.table.lookup(&key) {
            // Nothing to check (one branch) unless a live change removed a backend.
            if !self.policy.has_retired() || self.quoted.is_some() || headers.fragment {
                return self.apply(slot, frame, &headers, hops, now, out);
            }
            match self.on_retired_backend(slot, frame, &headers) {
                Retired::No => return self.apply(slot, frame, &headers, hops, now, out),
                Retired::Done(verdict) => return verdict,
                // Forgotten: the packet opens a flow to a live backend.
                Retired::Moved => {}
            }
        }
        // An announced owner overrides the scope, also when it is us: asking
        // the scope then would send our flow to a node that points back here.
        let reply_of = self.policy.forward_key_of_reply(&key);
        let announced = self.ownership.get(&key);
        let owner = match (announced, reply_of) {
            (Some(owner), _) => owner,
            (None, Some(forward_key)) => self.scope_owner(&forward_key),
            (None, None) => self.scope_owner(&key),
        };
        if announced.is_none() {
            match self.transition(&reply_of.unwrap_or(key), owner, hops, self.sender) {
                Some(Transition::AskPrevious(node)) => {
                    let previous = Owner {
                        node,
                        worker: ANY_WORKER,
                    };
                    return self.forward(frame, &headers, previous, hops, out);
                }
                Some(Transition::LookOnCore(core)) => return self.hand_to_core(frame.bytes(), core, hops, out),
                None => {}
            }
        }
        if owner != self.me {
            return self.forward(frame, &headers, owner, hops, out);
        }
        if reply_of.is_some() {
            // The connection would be ours, and we do not have it.
            return self.lose(DropReason::NoFlow, &key, hops);
        }
        if self.quoted.is_some() {
            // An error about no connection here: nothing to tell it to.
            return self.drop(DropReason::NoFlow);
        }
        if self.table.admit(&key, headers.tcp_flags) == Admission::Drop {
            return self.drop(DropReason::NoFlow);
        }
        match self.policy.decide(&key) {
            Decision::Drop => self.drop(DropReason::Policy),
            Decision::NoService => self.refuse(frame, &headers),
            Decision::Install { reverse_key, actions } => match self.table.install(key, reverse_key, actions, now) {
                Ok(slots) => {
                    self.counters.created += 1;
                    out.installed.push(Installed {
                        forward: key,
                        reverse: reverse_key,
                    });
                    self.apply(slots.forward, frame, &headers, hops, now, out)
                }
                Err(_) => self.drop(DropReason::TableFull),
            },
        }
    }

    /// What becomes of the packet of the connection at `slot` if its
    /// backend was retired by a live change: a flow without handshake is
    /// forgotten and its next forward packet picks a live backend; a TCP
    /// connection is reset (its client gets an RST from the VIP, in place
    /// of the packet) or kept, as the policy says. One lookup in the short
    /// retired list, only while it is not empty.
    fn on_retired_backend<F: FrameBuf>(&mut self, slot: Slot, frame: &mut F, headers: &Headers) -> Retired {
        let Some(entry) = self.table.entry(slot) else {
            return Retired::No;
        };
        let key = entry.key;
        let (forward, vip) = match entry.network {
            NetworkAction::Rewrite(rw) if rw.side == Side::Destination => {
                if !self.policy.is_retired(rw.address, rw.port, key.protocol) {
                    return Retired::No;
                }
                (true, (key.dst_ip(), key.dst_port.get()))
            }
            NetworkAction::Rewrite(rw) if rw.side == Side::Source => {
                if !self.policy.is_retired(key.src_ip(), key.src_port.get(), key.protocol) {
                    return Retired::No;
                }
                (false, (rw.address, rw.port))
            }
            _ => return Retired::No,
        };
        if key.protocol != ipproto::TCP {
            self.table.remove(slot);
            self.counters.backend_moved += 1;
            if forward {
                return Retired::Moved;
            }
            // A reply of a flow that is gone: the backend is no service's.
            return Retired::Done(self.drop(DropReason::NoService));
        }
        if self.policy.config().on_backend_removed == OnBackendRemoved::Keep {
            return Retired::No;
        }
        self.table.remove(slot);
        self.counters.backend_resets += 1;
        let Some(gateway) = self.gateway_mac else {
            return Retired::Done(self.drop(DropReason::UnknownOwner));
        };
        let (of, client) = if forward {
            (ResetOf::Sender, (key.src_ip(), key.src_port.get()))
        } else {
            (ResetOf::Receiver, (key.dst_ip(), key.dst_port.get()))
        };
        match write_reset(frame, headers, of, vip, client, self.own_mac, gateway) {
            Ok(()) => Retired::Done(self.transmit()),
            Err(_) => Retired::Done(self.drop(DropReason::Rewrite)),
        }
    }

    fn apply<F: FrameBuf>(
        &mut self,
        slot: Slot,
        frame: &mut F,
        headers: &Headers,
        hops: u8,
        now: Timestamp,
        out: &mut Outbox,
    ) -> Verdict {
        // A frame too large to copy goes on unheld: it may then reach the
        // inheritor before its connection does, never lost silently here.
        let held = (self.holding_redirects
            && self
                .table
                .entry(slot)
                .is_some_and(|e| matches!(e.network, NetworkAction::Redirect { .. })))
            || self.waits_for_drain(&self.flow_key(headers));
        if held && !self.holds_suspended && frame.bytes().len() <= CORE_FRAME {
            return self.hold(frame.bytes(), hops, out);
        }
        let len = frame.bytes().len();
        let (network, verdict) = match self.table.on_packet(slot, headers.tcp_flags, len, now) {
            Ok(entry) => (entry.network, self.apps.run(entry, frame.bytes_mut())),
            Err(_) => return self.drop(DropReason::NoFlow),
        };
        if matches!(verdict, Ok(AppVerdict::Drop)) {
            return self.drop(DropReason::App);
        }
        match network {
            NetworkAction::Forward { next_hop } => self.send_to_next_hop(frame, headers, next_hop),
            NetworkAction::Rewrite(rw) => {
                // The TTL first: an expired packet's ICMP error quotes it
                // as its sender sent it.
                match rewrite::decrement_ttl(frame.bytes_mut(), headers) {
                    Ok(Ttl::Decremented) => {}
                    Ok(Ttl::Expired) => return self.ttl_expired(frame, headers),
                    Err(_) => return self.drop(DropReason::Rewrite),
                }
                let rewritten = match self.quoted {
                    Some(quoted) => {
                        let flow_key = quoted.key.reversed();
                        rewrite::apply_icmp_error(frame.bytes_mut(), headers, &quoted, &flow_key, &rw)
                    }
                    None if headers.fragment => rewrite::apply_fragment(frame.bytes_mut(), headers, &rw),
                    None => rewrite::apply(frame.bytes_mut(), headers, &rw),
                };
                if rewritten.is_err() {
                    return self.drop(DropReason::Rewrite);
                }
                self.send_to_neighbor(frame.bytes_mut(), rw.next_hop)
            }
            NetworkAction::Redirect { owner } => self.forward(frame, headers, owner, hops, out),
        }
    }

    /// Forwards the packet unchanged but for its TTL to `next_hop`, as a
    /// router does.
    fn send_to_next_hop<F: FrameBuf>(&mut self, frame: &mut F, headers: &Headers, next_hop: u16) -> Verdict {
        match rewrite::decrement_ttl(frame.bytes_mut(), headers) {
            Ok(Ttl::Decremented) => self.send_to_neighbor(frame.bytes_mut(), next_hop),
            Ok(Ttl::Expired) => self.ttl_expired(frame, headers),
            Err(_) => self.drop(DropReason::Rewrite),
        }
    }

    /// Sends the frame to neighbor `next_hop`.
    fn send_to_neighbor(&mut self, frame: &mut [u8], next_hop: u16) -> Verdict {
        let Some(&mac) = self.neighbor_macs.get(next_hop as usize) else {
            return self.drop(DropReason::UnknownOwner);
        };
        if rewrite::set_macs(frame, self.own_mac, mac).is_err() {
            return self.drop(DropReason::Rewrite);
        }
        self.transmit()
    }

    fn forward<F: FrameBuf>(
        &mut self,
        frame: &mut F,
        headers: &Headers,
        owner: Owner,
        hops: u8,
        out: &mut Outbox,
    ) -> Verdict {
        if hops >= FABRIC_MAX_HOPS {
            return self.lose(DropReason::LoopGuard, &headers.key, hops);
        }
        if owner.node == self.me.node {
            return self.hand_to_core(frame.bytes(), owner.worker, hops, out);
        }
        if headers.l3_end - headers.l3_offset > usize::from(self.router.ip_mtu) {
            // The fabric link takes ip_mtu plus the fabric header: this
            // packet would be dropped by the link, uncounted.
            return self.too_big(frame, headers);
        }
        let Some(peer) = self.view.peer_mac(owner.node) else {
            return self.drop(DropReason::UnknownOwner);
        };
        let inner = if headers.key.ip_version == IP_V4 {
            ethertype::IPV4
        } else {
            ethertype::IPV6
        };
        let hop = Hop {
            src_mac: self.own_mac,
            dst_mac: peer,
            sender: self.me.node,
            lane: self.me.worker as u16,
        };
        match encapsulate(frame, headers.l3_offset, inner, hops, owner.worker, &hop) {
            Ok(()) => {
                self.counters.forwarded_to_node += 1;
                self.transmit()
            }
            Err(FabricError::TooManyHops(_)) => self.drop(DropReason::LoopGuard),
            Err(_) => self.drop(DropReason::BadFabric),
        }
    }

    /// Where a packet with no known connection goes first while the
    /// view remembers the scope before the last flip, if not by the scope.
    /// `forward_key` is the connection's forward key, `owner` its owner by
    /// the scope, `from_node` the node that sent it over the fabric.
    fn transition(&self, forward_key: &FlowKey, owner: Owner, hops: u8, from_node: Option<u16>) -> Option<Transition> {
        let before = self.view.previous_owner(forward_key)?;
        if owner.node == self.me.node {
            // A bucket this node just took over: the connection may be the
            // old owner's, announced or not yet. Asked there first, unless
            // the old owner sent it (then it is new) or another core here
            // already asked (hops without a sender).
            (hops == 0 || from_node.is_some_and(|s| s != before)).then_some(Transition::AskPrevious(before))
        } else if before == self.me.node {
            // A bucket this node just gave up: a connection of it is still
            // here until it is handed over, on the core the bucket maps to.
            let core = self.view.owner_by_scope(forward_key).worker;
            (core != self.me.worker).then_some(Transition::LookOnCore(core))
        } else {
            None
        }
    }

    /// The owner of `key` by the scope. The worker is known only for this
    /// node: another node may run a different number of workers, so its
    /// packets name [`ANY_WORKER`] and that node picks the core.
    fn scope_owner(&self, key: &FlowKey) -> Owner {
        let owner = self.view.owner_by_scope(key);
        if owner.node == self.me.node {
            owner
        } else {
            Owner {
                worker: ANY_WORKER,
                ..owner
            }
        }
    }

    /// Keeps a copy of `bytes` (at most [`CORE_FRAME`] long) for this
    /// worker to run again later.
    fn hold(&mut self, bytes: &[u8], hops: u8, out: &mut Outbox) -> Verdict {
        out.held
            .push(CorePacket::copy_of(bytes, self.me.worker, hops, self.sender));
        self.counters.held += 1;
        Verdict::Drop
    }

    /// Queues a copy of `marker` for `worker` of this node.
    fn hand_marker(&mut self, marker: &Marker, worker: u8, out: &mut Outbox) {
        let mut packet = CorePacket {
            worker,
            hops: 1,
            sender: marker.sender,
            len: fabric::INNER_OFFSET as u16,
            data: [0; CORE_FRAME],
        };
        fabric::write_marker(&mut packet.data, self.own_mac, self.own_mac, marker, worker);
        out.to_cores.push(packet);
    }

    /// Queues a copy of `bytes` for `worker` of this node.
    fn hand_to_core(&mut self, bytes: &[u8], worker: u8, hops: u8, out: &mut Outbox) -> Verdict {
        if bytes.len() > CORE_FRAME {
            return self.drop(DropReason::TooBig);
        }
        if worker == self.me.worker || hops >= FABRIC_MAX_HOPS {
            return self.drop(DropReason::LoopGuard);
        }
        if worker >= self.view.workers {
            // An announced owner naming a core this node does not have.
            return self.drop(DropReason::UnknownOwner);
        }
        out.to_cores
            .push(CorePacket::copy_of(bytes, worker, hops + 1, self.sender));
        self.counters.forwarded_to_core += 1;
        Verdict::Drop
    }

    /// The key of the connection the packet belongs to: its own, or for an
    /// ICMP error the reverse of the packet it quotes.
    fn flow_key(&self, headers: &Headers) -> FlowKey {
        match (self.quoted, self.fragment_ports) {
            (Some(quoted), _) => quoted.key.reversed(),
            (None, Some((src_port, dst_port))) => FlowKey {
                src_port,
                dst_port,
                ..headers.key
            },
            (None, None) => headers.key,
        }
    }

    /// The ports of the datagram a fragment belongs to: read from its first
    /// fragment (zero for a protocol without ports), or learnt from it
    /// before. A later fragment that comes first is parked until then
    /// (`None`: parked or dropped, counted).
    ///
    /// A fragment its datagram could not hold, or a first fragment of TCP
    /// or UDP without the whole header, is dropped as malformed.
    fn fragment_ports_of(
        &mut self,
        bytes: &[u8],
        headers: &Headers,
        hops: u8,
        out: &mut Outbox,
    ) -> Option<(NetU16, NetU16)> {
        let datagram = DatagramId {
            key: headers.key,
            id: headers.frag.id,
        };
        if reassembled_len(headers) > MAX_DATAGRAM_LEN {
            // Its datagram could never be put together (the "ping of
            // death"); a receiver discards it (RFC 8200 §4.5).
            self.drop(DropReason::Malformed);
            return None;
        }
        if headers.frag.offset == 0 {
            let l4 = headers.frag.first_l4_offset;
            if l4 == 0 && matches!(headers.key.protocol, ipproto::TCP | ipproto::UDP) {
                // A tiny first fragment: its TCP or UDP header does not
                // fit, so its ports (and TCP's flags) would come from a
                // later fragment, past any filter (RFC 1858 §3).
                self.drop(DropReason::Malformed);
                return None;
            }
            let port = |at: usize| bytes.get(at..at + 2).map(|b| NetU16(u16::from_ne_bytes([b[0], b[1]])));
            let ports = match (l4, port(l4), port(l4 + 2)) {
                (0, _, _) => (NetU16(0), NetU16(0)),
                (_, Some(src), Some(dst)) => (src, dst),
                _ => {
                    self.drop(DropReason::Malformed);
                    return None;
                }
            };
            self.fragments.learn(datagram, ports, self.now, &mut out.released);
            return Some(ports);
        }
        if let Some(ports) = self.fragments.ports(&datagram) {
            return Some(ports);
        }
        if bytes.len() > CORE_FRAME {
            self.drop(DropReason::TooBig);
            return None;
        }
        let copy = CorePacket::copy_of(bytes, self.me.worker, hops, self.sender);
        match self.fragments.park(datagram, copy, self.now) {
            Parked::Waiting => self.counters.fragments_parked += 1,
            Parked::Full => {
                self.drop(DropReason::FragmentsFull);
            }
        }
        None
    }

    /// Whether `frame`'s source MAC is the fabric MAC of `sender`, the
    /// member its fabric header names.
    fn sent_by_member(&self, frame: &[u8], sender: u16) -> bool {
        self.view
            .peer_mac(sender)
            .is_some_and(|mac| frame.get(6..12) == Some(&mac[..]))
    }

    /// Answers an echo request to a VIP, or drops it, by policy.
    fn answer_echo(&mut self, frame: &mut [u8], headers: &Headers) -> Verdict {
        if self.policy.config().icmp.echo == EchoPolicy::Drop {
            return self.drop(DropReason::Policy);
        }
        let Some(gateway) = self.gateway_mac else {
            return self.drop(DropReason::UnknownOwner);
        };
        if icmp::answer_echo(frame, headers).is_err() || rewrite::set_macs(frame, self.own_mac, gateway).is_err() {
            return self.drop(DropReason::Rewrite);
        }
        self.counters.echo_replies += 1;
        self.transmit()
    }

    /// Drops a packet no service takes, answering it with ICMP unreachable
    /// from its destination if the policy rejects.
    fn refuse<F: FrameBuf>(&mut self, frame: &mut F, headers: &Headers) -> Verdict {
        if self.policy.config().unmatched_vip == UnmatchedVip::Reject && self.policy.is_vip(&headers.key) {
            // A fragment's ports come from its first fragment.
            let kind = if matches!(headers.key.protocol, ipproto::TCP | ipproto::UDP) {
                icmp::ErrorKind::PortUnreachable
            } else {
                icmp::ErrorKind::ProtocolUnreachable
            };
            return self.send_error(frame, headers, kind, Some(headers.key.dst_ip()), DropReason::NoService);
        }
        self.drop(DropReason::NoService)
    }

    /// Drops a packet whose TTL ran out, with ICMP time exceeded.
    fn ttl_expired<F: FrameBuf>(&mut self, frame: &mut F, headers: &Headers) -> Verdict {
        let source = self.router.source_for(headers.key.ip_version == IP_V4);
        self.send_error(
            frame,
            headers,
            icmp::ErrorKind::TimeExceeded,
            source,
            DropReason::TtlExpired,
        )
    }

    /// Drops a packet larger than the fabric takes, with fragmentation
    /// needed (IPv4) or packet too big (IPv6) naming `ip_mtu`, so the
    /// sender's path MTU discovery (RFC 1191, RFC 8201) adapts.
    fn too_big<F: FrameBuf>(&mut self, frame: &mut F, headers: &Headers) -> Verdict {
        let source = self.router.source_for(headers.key.ip_version == IP_V4);
        let kind = icmp::ErrorKind::TooBig {
            mtu: self.router.ip_mtu,
        };
        self.send_error(frame, headers, kind, source, DropReason::TooBig)
    }

    /// Counts the drop `reason` of the packet in `frame`, and replaces the
    /// frame with the ICMP error `kind` from `source` to its sender when
    /// one may be sent (a source address, the rate limit, RFC 1812's rules).
    fn send_error<F: FrameBuf>(
        &mut self,
        frame: &mut F,
        headers: &Headers,
        kind: icmp::ErrorKind,
        source: Option<IpAddr>,
        reason: DropReason,
    ) -> Verdict {
        self.counters.count(reason);
        let (Some(source), Some(gateway)) = (source, self.gateway_mac) else {
            return Verdict::Drop;
        };
        if !icmp::may_answer_with_error(frame.bytes(), headers) || !self.icmp_limit.allow(self.now.as_nanos()) {
            return Verdict::Drop;
        }
        if icmp::write_error(frame, headers, kind, source, self.own_mac, gateway).is_err() {
            return Verdict::Drop;
        }
        // The packet counts as dropped (above); its error as sent.
        self.counters.icmp_errors_sent += 1;
        Verdict::Transmit
    }

    /// Runs the expiry sweep over at most `budget` slots.
    pub fn expire(&mut self, now: Timestamp, budget: usize) -> usize {
        for _ in 0..self.fragments.expire(now) {
            self.counters.count(DropReason::FragmentTimeout);
        }
        self.table.expire(now, budget)
    }
}

/// What a packet of a connection to a retired backend becomes.
enum Retired {
    /// Its backend is live (or the connection is kept): it goes on.
    No,
    /// Its flow was forgotten: it opens a new one.
    Moved,
    /// It was answered or dropped.
    Done(Verdict),
}

/// Marker frames are this long.
pub const MARKER_LEN: usize = fabric::INNER_OFFSET;

/// Where a frame came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arrival {
    /// This worker's port: from the wire.
    Port,
    /// Another core of this node (a copy it handed over, or a parked
    /// fragment released).
    Core,
}

/// The longest datagram IP can carry: IPv4's Total Length and IPv6's
/// Payload Length are 16-bit fields (RFC 791 §3.1, RFC 8200 §3).
const MAX_DATAGRAM_LEN: usize = u16::MAX as usize;

/// What the length field of the datagram `headers` (a fragment) belongs
/// to would say once it is reassembled, in bytes: for IPv4 the Total
/// Length (header, the fragment's offset, its data); for IPv6 the Payload
/// Length (the unfragmentable extension headers, the offset, the data: the
/// fragment's packet without its fixed header and its fragment header).
fn reassembled_len(headers: &Headers) -> usize {
    let packet = headers.l3_end - headers.l3_offset;
    let without = if headers.key.ip_version == IP_V4 {
        0
    } else {
        IPV6_HLEN + IPV6_FRAGMENT_HLEN
    };
    usize::from(headers.frag.offset) + packet.saturating_sub(without)
}
