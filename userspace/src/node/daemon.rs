//! The `handoff node` daemon: loads the steering program, opens one AF_XDP
//! socket per configured queue, runs one pinned worker per socket, the peer
//! links, and the admin socket.

use super::{
    clock::VersionClock,
    config::{NodeConfig, NodeMember},
    handover, manager_link,
    metrics::{self as node_metrics, NodeSnapshot},
    netdev,
    peers::{self, Identity, PeerCounters},
    pipeline::{Pipeline, RouterSettings},
    view::NodeView,
    worker::{Deltas, Worker, WorkerCommand, WorkerLinks, WorkerReport},
};
use crate::{
    admin::{self, AdminCall, AdminRequest, AdminResponse},
    control::{
        codec::SUPPORTED_VERSIONS,
        flow::FlowRecordV2,
        ids::{Capabilities, Incarnation, MacAddr, MigrationSerial, NodeId},
        message::{
            Abort, AbortReason, Body, DeltaOp, Drained, Flipped, Heartbeat, MigrateStart, MigrationMode, Phase,
            Progress, Purged, ReadyToFlip, Register,
        },
        session::Gate,
    },
    flow::{config::PolicyConfig, Policy},
    io::afxdp::AfXdpPort,
    metrics::{self, Exposition, HandoverMetrics, ScrapeCall},
    scope::Scope,
};
use anyhow::{bail, Context, Result};
use crossbeam::channel::{bounded, unbounded, Receiver, Sender};
use handoff_common::flow_key::FlowKey;
use handoff_loader::XskProgram;
use manager_link::{Link, ManagerOrder, OrderCall};
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

/// Commands queued per worker at most; a full queue makes the control path wait.
const COMMAND_QUEUE: usize = 256;
/// How long the admin path waits for a worker's report.
const REPORT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long every worker has to adopt a new policy (between two bursts).
const POLICY_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a worker may take over one handover step.
const HANDOVER_STEP: Duration = Duration::from_secs(10);
/// Handover rounds a release runs at most before giving up on stragglers.
const MAX_RELEASE_ROUNDS: usize = 16;
/// A release waits this long at most for the node to fall silent.
const QUIET_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval of the silence checks.
const QUIET_POLL: Duration = Duration::from_millis(100);
/// Consecutive silent checks that make a node drained.
const QUIET_POLLS: u32 = 3;
/// How long a node that lost buckets in a flip waits at most for its rings
/// to empty before it sends its end markers anyway.
const DRAIN_WAIT: Duration = Duration::from_millis(50);
/// After a flip, packets of a moved bucket with no known connection go to
/// the bucket's previous owner this long: every node adopts a flip within
/// milliseconds, and announcements leave every 2 ms.
const TRANSITION_GRACE: Duration = Duration::from_millis(500);

/// The running node.
pub struct Node {
    config: NodeConfig,
    /// The policy every worker decides by (the last one they all adopted).
    policy: Arc<Policy>,
    program: XskProgram,
    scope: Scope,
    view: Arc<NodeView>,
    commands: Vec<Sender<WorkerCommand>>,
    threads: Vec<JoinHandle<()>>,
    counters: Arc<PeerCounters>,
    scope_version: Arc<AtomicU64>,
    identity: Identity,
    /// The last handover attempt's serial.
    handovers: u32,
    /// Bytes the handover streams that reached their cut sent so far.
    handover_bytes: u64,
    /// The histograms the metrics listener exposes.
    handover_metrics: HandoverMetrics,
    /// The manager's migration this node is in.
    migration: Option<MigrationSerial>,
    /// When the workers stop consulting the previous scope.
    settle_at: Option<Instant>,
    /// Members the manager reported FAILED, until a scope has them again.
    failed: Vec<u16>,
    /// Orders from the manager session.
    orders: Receiver<OrderCall>,
    stop: Arc<AtomicBool>,
}

/// Why a handover round failed; nothing was cut in either case.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    /// An inheritor could not be reached or did not install its share.
    #[error("handing over to {name}; nothing was cut: {source:#}")]
    Inheritor {
        /// Its id.
        node: u16,
        /// Its name.
        name: String,
        /// What happened.
        source: anyhow::Error,
    },
    /// This node failed.
    #[error(transparent)]
    Local(#[from] anyhow::Error),
}

/// What was redirected (inheritor, forward key, reverse key), and the
/// inheritors that did not confirm their cut (id, name, why).
type CutOutcome = (Vec<(u16, FlowKey, FlowKey)>, Vec<(u16, String, anyhow::Error)>);

/// Delta batches a round sends at most before it cuts.
const MAX_DELTA_BATCHES: usize = 8;
/// A round cuts once a batch carries fewer changes than this: the last
/// batch then goes out while the cut connections' packets wait.
const CUT_BELOW_DELTAS: u64 = 1024;
/// How often a copy reports its progress to the manager at most: often
/// enough for the operator's display to move, rare enough to cost nothing.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Where a handover round stands, as the manager hears it in `Progress`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CopyState {
    /// Connections of the snapshot sent.
    flows_copied: u64,
    /// Connections in the snapshot.
    flows_total: u64,
    /// Delta operations sent.
    deltas_sent: u64,
    /// Bytes the round's streams sent.
    bytes_sent: u64,
}

/// Hears a round's progress: the phase and where the round stands.
type ProgressSink<'p> = &'p dyn Fn(Phase, CopyState);

fn member_name(members: &[NodeMember], id: u16) -> String {
    members
        .iter()
        .find(|m| m.id == id)
        .map_or_else(|| format!("node {id}"), |m| m.name.clone())
}

/// The streams of one handover round, one per inheritor, opened on first use.
struct Streams<'a> {
    identity: &'a Identity,
    members: &'a [NodeMember],
    serial: MigrationSerial,
    open: BTreeMap<u16, handover::Stream<'a>>,
    deltas_sent: u64,
    rate_limit: Option<u64>,
    /// Bytes the streams sent.
    bytes: u64,
}

impl<'a> Streams<'a> {
    /// The stream to `node`, announcing `flows` connections if it opens now.
    fn stream(&mut self, node: u16, flows: u64) -> Result<&mut handover::Stream<'a>, RoundError> {
        if !self.open.contains_key(&node) {
            let member = self
                .members
                .iter()
                .find(|m| m.id == node)
                .with_context(|| format!("inheritor {node} is not a configured member"))?;
            let stream = handover::Stream::open(member.peer(), self.identity, self.serial, flows, self.rate_limit)
                .map_err(|source| self.lost(node, source))?;
            self.open.insert(node, stream);
        }
        self.open
            .get_mut(&node)
            .ok_or_else(|| RoundError::Local(anyhow::anyhow!("stream to {node} vanished")))
    }

    fn lost(&self, node: u16, source: anyhow::Error) -> RoundError {
        RoundError::Inheritor {
            node,
            name: member_name(self.members, node),
            source,
        }
    }

    /// Sends the workers' changes to their inheritors, in each worker's
    /// order; returns how many. A journal that lost changes, or a change
    /// that cannot go on the wire, fails the round.
    fn send_deltas<'d>(&mut self, batches: impl Iterator<Item = &'d Deltas>) -> Result<u64, RoundError> {
        let mut by_inheritor: BTreeMap<u16, Vec<DeltaOp>> = BTreeMap::new();
        for batch in batches {
            if batch.overflowed {
                return Err(anyhow::anyhow!(
                    "connections changed faster than the copy could follow; nothing changed, retry"
                )
                .into());
            }
            if let Some(refused) = batch.refused.first() {
                return Err(anyhow::anyhow!("a connection cannot be handed over, nothing changed: {refused}").into());
            }
            for (node, op) in &batch.ops {
                by_inheritor.entry(*node).or_default().push(op.clone());
            }
        }
        let mut sent = 0;
        for (node, ops) in by_inheritor {
            let result = self.stream(node, 0)?.deltas(&ops);
            result.map_err(|source| self.lost(node, source))?;
            sent += ops.len() as u64;
        }
        self.deltas_sent += sent;
        Ok(sent)
    }

    /// Bytes every stream of the round sent so far, the closed ones and
    /// the open ones but `except`'s.
    fn bytes_sent_except(&self, except: Option<u16>) -> u64 {
        self.bytes
            + self
                .open
                .iter()
                .filter(|(node, _)| Some(**node) != except)
                .map(|(_, stream)| stream.bytes())
                .sum::<u64>()
    }

    /// Streams `records` to `node`'s inheritor as its snapshot; `report`
    /// hears, after each chunk, the records of this call sent and the
    /// bytes of the round so far.
    fn snapshot(
        &mut self,
        node: u16,
        records: &[FlowRecordV2],
        report: &mut dyn FnMut(u64, u64),
    ) -> Result<(), RoundError> {
        let others = self.bytes_sent_except(Some(node));
        let stream = self.stream(node, records.len() as u64)?;
        let sent = stream.snapshot(records, &mut |copied, bytes| report(copied, others + bytes));
        sent.map_err(|source| self.lost(node, source))
    }

    /// Ends every stream with its cut; returns the inheritors that did not
    /// install the number of connections `expected` of them.
    fn cut(&mut self, expected: &BTreeMap<u16, u64>) -> Vec<(u16, String, anyhow::Error)> {
        let mut failed = Vec::new();
        for (node, stream) in std::mem::take(&mut self.open) {
            // The cut's own frame is not counted: it is a few bytes.
            self.bytes += stream.bytes();
            if let Err(source) = stream.cut(expected.get(&node).copied().unwrap_or(0)) {
                failed.push((node, member_name(self.members, node), source));
            }
        }
        failed
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.config.name)
            .finish_non_exhaustive()
    }
}

/// Every worker counter (rx, tx, each drop reason, ...) summed over the
/// workers, by its name.
fn summed_counters(workers: &[WorkerReport]) -> serde_json::Map<String, serde_json::Value> {
    let mut totals: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    for report in workers {
        if let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(report.counters) {
            for (name, value) in fields {
                *totals.entry(name).or_default() += value.as_u64().unwrap_or(0);
            }
        }
    }
    totals.into_iter().map(|(k, v)| (k, v.into())).collect()
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain data; zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set`; `cpu` is checked against its size.
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        bail!("cpu {cpu} is out of range");
    }
    // SAFETY: see above; `cpu` is within the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size passed.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("pinning a worker to cpu {cpu}"));
    }
    Ok(())
}

impl Node {
    /// Loads everything and starts the workers and the peer links. The
    /// program is attached only after every socket is registered, so no
    /// data-plane frame reaches the kernel stack during start.
    pub fn start(config: NodeConfig, stop: Arc<AtomicBool>) -> Result<Self> {
        let policy = Arc::new(Policy::new(PolicyConfig::load(&config.policy)?).context("building the policy")?);
        let member_ids: Vec<u32> = config.members.iter().map(|m| u32::from(m.id)).collect();
        let scope = Scope::initial(config.hash.buckets, &member_ids)?;
        let workers = config.queues.len();
        let view = Arc::new(NodeView::new(
            config.id,
            config.hash,
            scope.clone(),
            workers as u8,
            config.peer_macs(),
        ));
        let ifindex = handoff_loader::interface_index(&config.interface)?;
        let mtu = netdev::check_mtu(&config.interface, config.ip_mtu, config.afxdp.frame_capacity())?;
        let fixed = netdev::check_offloads(&config.interface, config.offloads)?;
        if !fixed.is_empty() {
            tracing::warn!(
                interface = %config.interface,
                offloads = ?fixed,
                "turned receive offloads off: they merge segments into frames larger than an AF_XDP frame"
            );
        }
        tracing::info!(interface = %config.interface, mtu, ip_mtu = config.ip_mtu, "interface checked");
        let router = RouterSettings {
            ip_mtu: config.ip_mtu,
            addresses: config.local_addresses.clone(),
        };
        let own_mac = handoff_loader::interface_mac(&config.interface)?;
        let mut program = XskProgram::load().context("loading the steering program")?;
        for addr in &config.local_addresses {
            program.add_local_address(*addr)?;
        }
        let links = WorkerLinks::for_node(workers);
        let mut commands = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers + 2);
        for (index, (&queue, link)) in config.queues.iter().zip(&links).enumerate() {
            let port = AfXdpPort::open(ifindex, queue, config.afxdp.clone())
                .with_context(|| format!("opening AF_XDP on {} queue {queue}", config.interface))?;
            program.register_socket(queue, &port)?;
            let pipeline = Pipeline::new(
                index as u8,
                own_mac,
                Arc::clone(&view),
                Arc::clone(&policy),
                config.ownership_capacity,
            )?
            .with_router(router.clone());
            let (tx, rx) = bounded(COMMAND_QUEUE);
            commands.push(tx);
            let worker = Worker::new(pipeline, port, link.clone(), rx, config.afxdp.burst);
            let cpu = config.cpus.get(index).copied();
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("worker-{index}"))
                    .spawn(move || {
                        if let Some(cpu) = cpu {
                            if let Err(e) = pin_to(cpu) {
                                tracing::warn!(error = %e, "worker runs unpinned");
                            }
                        }
                        let worker = worker.run(&stop);
                        tracing::info!(report = ?worker.report(), "worker stopped");
                    })?,
            );
        }
        program.attach(&config.interface, config.xdp_mode)?;
        let identity = Identity {
            node: NodeId::new(config.id)?,
            incarnation: Incarnation(
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            ),
            tls: config.tls.clone().context(
                "no TLS identity: the configuration must be loaded with NodeConfig::load, which reads [tls]",
            )?,
            clock: Arc::new(VersionClock::default()),
        };
        identity.clock.enter_scope(scope.version);
        let counters = Arc::new(PeerCounters::default());
        let admission = Arc::new(peers::Admission {
            gate: Gate::new(
                config.connection_limits,
                identity.tls.clone(),
                Arc::clone(&counters.sessions),
            ),
            members: config.peers().map(|m| m.id).collect(),
            // A connection takes two entries (one per direction).
            max_handover_connections: (workers * policy.table_config().capacity / 2) as u64,
        });
        let listener = peers::bind(config.control_listen)?;
        {
            let (identity, routing, commands, counters, stop) = (
                identity.clone(),
                Arc::clone(&view),
                commands.clone(),
                Arc::clone(&counters),
                Arc::clone(&stop),
            );
            threads.push(std::thread::Builder::new().name("control".into()).spawn(move || {
                peers::run_listener(listener, identity, admission, routing, commands, counters, stop)
            })?);
        }
        {
            let peers = config.peers().map(NodeMember::peer).collect();
            let (identity, counters, stop) = (identity.clone(), Arc::clone(&counters), Arc::clone(&stop));
            threads.push(
                std::thread::Builder::new()
                    .name("announcer".into())
                    .spawn(move || peers::run_announcer(identity, peers, links, counters, stop))?,
            );
        }
        let scope_version = Arc::new(AtomicU64::new(scope.version));
        let (order_tx, orders) = unbounded();
        if let Some(manager) = config.manager {
            let register = Register {
                name: config.name.clone(),
                software_version: env!("CARGO_PKG_VERSION").to_string(),
                protocol: SUPPORTED_VERSIONS,
                capabilities: Capabilities::THIS_BUILD,
                control_addr: config.control_listen,
                data_mac: MacAddr(own_mac),
                data_ip: config
                    .local_addresses
                    .first()
                    .copied()
                    .unwrap_or(config.control_listen.ip()),
                workers: workers as u16,
                in_progress: None,
            };
            let link = Link {
                manager,
                identity: identity.clone(),
                register,
                workers: commands.clone(),
                scope_version: Arc::clone(&scope_version),
                orders: order_tx,
            };
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name("manager-link".into())
                    .spawn(move || manager_link::run(&link, &stop))?,
            );
        }
        tracing::info!(node = %config.name, workers, interface = %config.interface, "node up");
        Ok(Self {
            config,
            policy,
            program,
            scope,
            view,
            commands,
            threads,
            counters,
            scope_version,
            identity,
            handovers: 0,
            handover_bytes: 0,
            handover_metrics: HandoverMetrics::default(),
            migration: None,
            settle_at: None,
            failed: Vec::new(),
            orders,
            stop,
        })
    }

    fn reports(&self) -> Result<Vec<WorkerReport>> {
        let mut reports = self.ask_workers(WorkerCommand::Report, REPORT_TIMEOUT)?;
        reports.sort_by_key(|r| r.worker);
        Ok(reports)
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let workers = self.reports()?;
        let sum = |f: &dyn Fn(&WorkerReport) -> u64| workers.iter().map(f).sum::<u64>();
        let c = &self.counters;
        let mut totals = summed_counters(&workers);
        totals.extend(
            serde_json::json!({
                "active": sum(&|r| r.table.active),
                "expired": sum(&|r| r.table.expired),
                "evicted": sum(&|r| r.table.evicted),
                "dropped": sum(&|r| r.counters.dropped()),
                "kernel_rx_ring_full": sum(&|r| r.port.kernel_rx_ring_full),
                "kernel_rx_dropped": sum(&|r| r.port.kernel_rx_dropped),
                "held": sum(&|r| r.hold.held),
                "held_released_early": sum(&|r| r.hold.released_early),
                "hold_timeouts": sum(&|r| r.hold.timeouts),
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
        Ok(serde_json::json!({
            "node": self.config.name,
            "totals": totals,
            "control": {
                "announces_sent": c.announces_sent.load(Ordering::Relaxed),
                "flows_announced": c.flows_announced.load(Ordering::Relaxed),
                "announce_failures": c.announce_failures.load(Ordering::Relaxed),
                "announces_received": c.announces_received.load(Ordering::Relaxed),
                "messages_refused": c.messages_refused.load(Ordering::Relaxed),
                "sessions": c.sessions.to_json(),
                "handovers": self.handovers,
                "handover_bytes_sent": self.handover_bytes,
            },
            "steering": self.program.reason_counts()?.named().map(|(n, v)| (n.to_string(), v)).collect::<std::collections::BTreeMap<_, _>>(),
            "workers": workers,
        }))
    }

    /// The metrics of a scrape, from the sources of [`Node::stats`].
    fn exposition(&self) -> Result<Exposition> {
        let workers = self.reports()?;
        let steering = self.program.reason_counts()?;
        Ok(node_metrics::exposition(&NodeSnapshot {
            node: &self.config.name,
            workers: &workers,
            steering: &steering,
            peers: &self.counters,
            handovers: self.handovers,
            handover_bytes: self.handover_bytes,
            scope_version: self.scope.version,
            buckets: self.scope.buckets_of(u32::from(self.config.id)).count() as u64,
            handover_metrics: &self.handover_metrics,
        }))
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "node": self.config.name,
            "id": self.config.id,
            "workers": self.commands.len(),
            "scope_version": self.scope.version,
            "buckets_owned": self.scope.buckets_of(u32::from(self.config.id)).count(),
        })
    }

    /// Rebuilds the scope over `members` and hands every worker the new view.
    fn rescope(&mut self, members: &[u32]) -> Result<AdminResponse> {
        let next = self.scope.rebuilt(members)?;
        self.adopt(next)
    }

    /// Forwards by `next` from now on: every worker gets the new view.
    fn adopt(&mut self, next: Scope) -> Result<AdminResponse> {
        if next.table.len() != self.scope.table.len() {
            bail!(
                "a scope of {} buckets, this node has {}",
                next.table.len(),
                self.scope.table.len()
            );
        }
        let moved = self.scope.moves(&next).count();
        let members = next.members();
        self.failed.retain(|&node| !members.contains(&u32::from(node)));
        let view = Arc::new(self.view.flipped_to(next.clone(), &self.failed));
        self.settle_at = Some(Instant::now() + TRANSITION_GRACE);
        self.tell_workers(|| WorkerCommand::View(Arc::clone(&view)))?;
        let gainers = self.gainers(&next);
        self.scope_version.store(next.version, Ordering::Relaxed);
        self.identity.clock.enter_scope(next.version);
        self.scope = next;
        self.view = view;
        if !gainers.is_empty() {
            self.end_drain_paths(gainers);
        }
        Ok(AdminResponse::ScopeChanged {
            version: self.scope.version,
            moved_buckets: moved,
            generation: 0,
        })
    }

    /// The live nodes that take buckets from this one in `next`, with
    /// their fabric MACs.
    fn gainers(&self, next: &Scope) -> Vec<(u16, [u8; 6])> {
        let me = u32::from(self.config.id);
        let mut gainers: Vec<(u16, [u8; 6])> = Vec::new();
        for (_, _, after) in self.scope.moves(next).filter(|&(_, before, _)| before == me) {
            let Ok(node) = u16::try_from(after) else { continue };
            if self.failed.contains(&node) || gainers.iter().any(|g| g.0 == node) {
                continue;
            }
            if let Some(mac) = self.view.peer_mac(node) {
                gainers.push((node, mac));
            }
        }
        gainers
    }

    /// After a flip that took buckets from this node (the edge sends it no
    /// more of them): once its rings are empty, every worker ends its path
    /// to each gainer with a marker, so the gainers let go the newer
    /// packets they held back (see [`super::pipeline::Pipeline::set_view`]).
    fn end_drain_paths(&self, gainers: Vec<(u16, [u8; 6])>) {
        let deadline = Instant::now() + DRAIN_WAIT;
        while Instant::now() < deadline {
            let idle = self
                .reports()
                .is_ok_and(|reports| reports.iter().all(|r| r.pending_rx == 0 && r.inbox == 0));
            if idle {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let lanes = self.commands.len() as u16;
        let serial = self.scope.version as u32;
        if let Err(e) = self.tell_workers(|| WorkerCommand::SendMarkers {
            to: gainers.clone(),
            serial,
            lanes,
        }) {
            tracing::error!(error = %format!("{e:#}"), "sending end markers");
        }
    }

    /// Sends every worker the command `command` makes.
    fn tell_workers(&self, command: impl Fn() -> WorkerCommand) -> Result<()> {
        for worker in &self.commands {
            worker.send(command()).context("a worker has stopped")?;
        }
        Ok(())
    }

    /// Asks every worker, collects one answer from each.
    fn ask_workers<T>(&self, command: impl Fn(Sender<T>) -> WorkerCommand, timeout: Duration) -> Result<Vec<T>> {
        let (tx, rx) = bounded(self.commands.len());
        for worker in &self.commands {
            worker.send(command(tx.clone())).context("a worker has stopped")?;
        }
        (0..self.commands.len())
            .map(|_| rx.recv_timeout(timeout).context("a worker did not answer"))
            .collect()
    }

    /// One handover round towards `next`: export (the snapshot), stream
    /// it to each inheritor, stream the changes since in batches until few
    /// are left, cut (the last changes and the redirect in one step of each
    /// worker, whose packets of the cut connections then wait), send the
    /// last changes and the cut, and release the waiting packets once every
    /// inheritor installed its share. An inheritor that did not gets its
    /// connections taken back before the packets go on: then nothing
    /// changed for them. `progress` hears the copy's start, its progress
    /// every [`PROGRESS_EVERY`] at most, and the broadcast's start.
    fn handover_round(
        &mut self,
        next: &Arc<NodeView>,
        progress: ProgressSink<'_>,
    ) -> Result<serde_json::Value, RoundError> {
        self.handovers += 1;
        let serial = MigrationSerial(self.handovers);
        let started = Instant::now();
        let mut streams = Streams {
            identity: &self.identity,
            members: &self.config.members,
            serial,
            open: BTreeMap::new(),
            deltas_sent: 0,
            rate_limit: self.config.copy_rate_limit,
            bytes: 0,
        };
        let round = self.stream_and_cut(next, &mut streams, progress, started);
        self.handover_bytes += streams.bytes;
        self.handover_metrics
            .bytes
            .get_or_create(&metrics::labels(&[("node", &self.config.name)]))
            .observe(streams.bytes as f64);
        let (redirected, failed) = match round {
            Ok(cut) => cut,
            Err(e) => {
                // Nothing was cut (or the cut is taken back whole): stop
                // the journals and let any held packet go on as before.
                let everyone: Vec<u16> = self.config.members.iter().map(|m| m.id).collect();
                if let Err(release) = self.ask_workers(
                    |reply| WorkerCommand::Release {
                        take_back: everyone.clone(),
                        reply,
                    },
                    HANDOVER_STEP,
                ) {
                    tracing::error!(error = %format!("{release:#}"), "ending a failed handover round");
                }
                return Err(e);
            }
        };
        let failed_ids: Vec<u16> = failed.iter().map(|(node, _, _)| *node).collect();
        let taken_back: usize = self
            .ask_workers(
                |reply| WorkerCommand::Release {
                    take_back: failed_ids.clone(),
                    reply,
                },
                HANDOVER_STEP,
            )?
            .into_iter()
            .sum();
        if let Some((node, name, source)) = failed.into_iter().next() {
            tracing::warn!(%serial, taken_back, inheritor = %name, "an inheritor did not confirm its cut; its connections are owned here again");
            return Err(RoundError::Inheritor { node, name, source });
        }
        let copied = started.elapsed();
        progress(
            Phase::Broadcast,
            CopyState {
                flows_copied: redirected.len() as u64,
                flows_total: redirected.len() as u64,
                deltas_sent: streams.deltas_sent,
                bytes_sent: streams.bytes,
            },
        );
        let owners = handover::owners_of(&redirected);
        let version = self.identity.clock.stamp();
        // This node remembers the new owners too: once its table is purged,
        // and if it rejoins the scope, their packets must still find them.
        peers::tell_owners(&self.commands, &owners, self.identity.node, version);
        let mut broadcast_failures = 0;
        for peer in self.config.peers() {
            if let Err(e) = handover::broadcast(peer.peer(), &self.identity, serial, version, &owners) {
                tracing::warn!(peer = %peer.name, error = %e, "ownership broadcast failed; the redirect still carries its packets");
                broadcast_failures += 1;
            }
        }
        let mut inheritors = serde_json::Map::new();
        for &(node, _, _) in &redirected {
            let name = member_name(&self.config.members, node);
            let count = inheritors.get(&name).and_then(serde_json::Value::as_u64).unwrap_or(0);
            inheritors.insert(name, (count + 1).into());
        }
        tracing::info!(%serial, moved = redirected.len(), deltas = streams.deltas_sent, "handover round done");
        Ok(serde_json::json!({
            "serial": serial.0,
            "connections": redirected.len(),
            "deltas": streams.deltas_sent,
            "bytes": streams.bytes,
            "inheritors": inheritors,
            "copy_ms": copied.as_secs_f64() * 1e3,
            "total_ms": started.elapsed().as_secs_f64() * 1e3,
            "broadcast_failures": broadcast_failures,
        }))
    }

    /// The streaming part of [`Node::handover_round`], up to the inheritors'
    /// answers to the cut. Returns what was redirected and the inheritors
    /// that did not confirm; an error before the cut leaves nothing cut.
    fn stream_and_cut(
        &self,
        next: &Arc<NodeView>,
        streams: &mut Streams<'_>,
        progress: ProgressSink<'_>,
        started: Instant,
    ) -> Result<CutOutcome, RoundError> {
        let exported = self.ask_workers(
            |reply| WorkerCommand::Export {
                next: Arc::clone(next),
                reply,
            },
            HANDOVER_STEP,
        )?;
        if let Some(refused) = exported.iter().flat_map(|e| &e.refused).next() {
            return Err(anyhow::anyhow!("a connection cannot be handed over, nothing changed: {refused}").into());
        }
        let mut by_inheritor: BTreeMap<u16, Vec<FlowRecordV2>> = BTreeMap::new();
        for c in exported.iter().flat_map(|e| &e.connections) {
            by_inheritor.entry(c.inheritor).or_default().push(c.record);
        }
        let mut state = CopyState {
            flows_total: by_inheritor.values().map(|r| r.len() as u64).sum(),
            ..CopyState::default()
        };
        progress(Phase::Copy, state);
        let mut reported = Instant::now();
        for (&node, records) in &by_inheritor {
            let before = state.flows_copied;
            streams.snapshot(node, records, &mut |copied, bytes| {
                state.flows_copied = before + copied;
                state.bytes_sent = bytes;
                if reported.elapsed() >= PROGRESS_EVERY {
                    reported = Instant::now();
                    progress(Phase::Copy, state);
                }
            })?;
        }
        for _ in 0..MAX_DELTA_BATCHES {
            let batch = self.ask_workers(|reply| WorkerCommand::Deltas { reply }, HANDOVER_STEP)?;
            let sent = streams.send_deltas(batch.iter())?;
            state.deltas_sent = streams.deltas_sent;
            state.bytes_sent = streams.bytes_sent_except(None);
            progress(Phase::Copy, state);
            if sent < CUT_BELOW_DELTAS || started.elapsed() > HANDOVER_STEP {
                break;
            }
        }
        let shares = self.ask_workers(|reply| WorkerCommand::Cut { reply }, HANDOVER_STEP)?;
        // From here on, the cut connections' packets wait in the workers.
        streams.send_deltas(shares.iter().map(|s| &s.deltas))?;
        let redirected: Vec<(u16, FlowKey, FlowKey)> = shares.into_iter().flat_map(|s| s.redirected).collect();
        let mut expected: BTreeMap<u16, u64> = BTreeMap::new();
        for &(node, _, _) in &redirected {
            *expected.entry(node).or_default() += 1;
        }
        let failed = streams.cut(&expected);
        Ok((redirected, failed))
    }

    /// Hands over the stragglers, waits for silence, purges.
    fn release(&mut self) -> Result<serde_json::Value> {
        if self.scope.buckets_of(u32::from(self.config.id)).next().is_some() {
            bail!("this node still owns buckets: flip the scope without it first");
        }
        let started = Instant::now();
        let next = Arc::clone(&self.view);
        let mut rounds = Vec::new();
        for _ in 0..MAX_RELEASE_ROUNDS {
            let round = self.handover_round(&next, &|_, _| {})?;
            let moved = round["connections"].as_u64().unwrap_or(0);
            rounds.push(round);
            if moved == 0 {
                break;
            }
        }
        let deadline = Instant::now() + QUIET_TIMEOUT;
        let mut last_rx = None;
        let mut quiet_polls = 0;
        while quiet_polls < QUIET_POLLS {
            if Instant::now() > deadline {
                bail!("traffic still arrives after {QUIET_TIMEOUT:?}; not purging");
            }
            std::thread::sleep(QUIET_POLL);
            let reports = self.reports()?;
            let rx: u64 = reports.iter().map(|r| r.counters.rx).sum();
            let idle = reports
                .iter()
                .all(|r| r.pending_rx == 0 && r.pending_tx == 0 && r.inbox == 0 && r.held == 0);
            quiet_polls = if idle && last_rx == Some(rx) {
                quiet_polls + 1
            } else {
                0
            };
            last_rx = Some(rx);
        }
        let drained = started.elapsed();
        let purged: usize = self
            .ask_workers(|reply| WorkerCommand::Purge { reply }, HANDOVER_STEP)?
            .into_iter()
            .sum();
        let left: u64 = self.reports()?.iter().map(|r| r.table.active).sum();
        Ok(serde_json::json!({
            "rounds": rounds,
            "drain_ms": drained.as_secs_f64() * 1e3,
            "purged": purged,
            "connections_left": left,
        }))
    }

    /// Carries out the manager's `order`, answering on `answers`.
    fn obey(&mut self, order: ManagerOrder, answers: &Sender<Body>) {
        match order {
            ManagerOrder::Scope(scope) => {
                let version = scope.version;
                if let Err(e) = self.adopt(scope) {
                    tracing::error!(version, error = %format!("{e:#}"), "cannot adopt the manager's scope");
                    return;
                }
                // A heartbeat now, not at the next interval: the manager
                // drains the disengaging node only once every node forwards
                // by the new scope, and connections created meanwhile wait.
                if let Ok(reports) = self.reports() {
                    let _ = answers.send(Body::Heartbeat(Heartbeat {
                        scope_version: version,
                        workers: manager_link::loads_of(reports),
                    }));
                }
            }
            ManagerOrder::Start(start) => {
                let serial = start.serial;
                let answer = match self.hand_over(start, answers) {
                    Ok(flows_handed_over) => Body::ReadyToFlip(ReadyToFlip {
                        serial,
                        flows_handed_over,
                    }),
                    Err((reason, detail)) => {
                        self.migration = None;
                        tracing::warn!(%serial, %reason, %detail, "migration aborted");
                        Body::Abort(Abort { serial, reason, detail })
                    }
                };
                let _ = answers.send(answer);
            }
            ManagerOrder::Flipped(flipped) => self.finish(flipped, answers),
            ManagerOrder::MemberFailed(node) if node != self.config.id => {
                tracing::warn!(node, "a member FAILED; forgetting the flows it owned");
                if !self.failed.contains(&node) {
                    self.failed.push(node);
                }
                if let Err(e) = self.tell_workers(|| WorkerCommand::ForgetNode { node }) {
                    tracing::error!(error = %format!("{e:#}"), "forgetting a FAILED member's flows");
                }
            }
            ManagerOrder::MemberFailed(_) => {}
            ManagerOrder::Abort(abort) => {
                if self.migration == Some(abort.serial) {
                    tracing::warn!(serial = %abort.serial, reason = %abort.reason, detail = %abort.detail, "the manager aborted the migration; flows already cut stay redirected to their inheritors");
                    self.migration = None;
                }
            }
        }
    }

    /// Copies, cuts and broadcasts towards the manager's plan; returns the
    /// connections handed over.
    fn hand_over(&mut self, start: MigrateStart, answers: &Sender<Body>) -> Result<u64, (AbortReason, String)> {
        let serial = start.serial;
        let cancelled = |detail: String| (AbortReason::Cancelled, detail);
        if start.mode != MigrationMode::Disengage || start.target != self.identity.node {
            return Err(cancelled(format!(
                "{:?} of node {} is not a migration this node gives buckets in",
                start.mode, start.target
            )));
        }
        if start.from_version != self.scope.version {
            return Err((
                AbortReason::ScopeMismatch {
                    expected: start.from_version,
                    found: self.scope.version,
                },
                "the node forwards by another scope than the plan's base".into(),
            ));
        }
        let plan = start
            .plan
            .to_scope()
            .map_err(|e| cancelled(format!("malformed plan: {e}")))?;
        if plan.table.len() != self.scope.table.len() || plan.buckets_of(u32::from(self.config.id)).next().is_some() {
            return Err(cancelled("the plan does not take every bucket from this node".into()));
        }
        self.migration = Some(serial);
        let progress = |phase: Phase, state: CopyState| {
            let _ = answers.send(Body::Progress(Progress {
                serial,
                phase,
                flows_copied: state.flows_copied,
                deltas_sent: state.deltas_sent,
                flows_remaining: state.flows_total.saturating_sub(state.flows_copied),
                bytes_sent: state.bytes_sent,
            }));
        };
        progress(Phase::Copy, CopyState::default());
        let next = Arc::new(NodeView {
            scope: plan,
            ..(*self.view).clone()
        });
        match self.handover_round(&next, &progress) {
            Ok(round) => Ok(round["connections"].as_u64().unwrap_or(0)),
            Err(RoundError::Inheritor { node, name, source }) => Err((
                AbortReason::InheritorLost {
                    node: NodeId::new(node).unwrap_or(self.identity.node),
                },
                format!("{name}: {source:#}"),
            )),
            Err(RoundError::Local(e)) => Err(cancelled(format!("{e:#}"))),
        }
    }

    /// After the flip: drains, purges and tells the manager.
    fn finish(&mut self, flipped: Flipped, answers: &Sender<Body>) {
        let serial = flipped.serial;
        if self.migration != Some(serial) {
            tracing::warn!(%serial, "Flipped for a migration this node is not in; refused");
            return;
        }
        let answer = match self.release() {
            Ok(report) if report["connections_left"] == 0 => {
                tracing::info!(%serial, %report, "drained and purged");
                let _ = answers.send(Body::Drained(Drained { serial }));
                Body::Purged(Purged { serial })
            }
            Ok(report) => Body::Abort(Abort {
                serial,
                reason: AbortReason::DeadlineExceeded { phase: Phase::Purge },
                detail: format!("connections remain after the purge: {report}"),
            }),
            Err(e) => Body::Abort(Abort {
                serial,
                reason: AbortReason::DeadlineExceeded { phase: Phase::Drain },
                detail: format!("{e:#}"),
            }),
        };
        self.migration = None;
        let _ = answers.send(answer);
    }

    fn member_id(&self, name: &str) -> Result<u32> {
        self.config
            .members
            .iter()
            .find(|m| m.name == name)
            .map(|m| u32::from(m.id))
            .with_context(|| format!("no member named {name:?}"))
    }

    fn handle(&mut self, request: AdminRequest) -> AdminResponse {
        let in_scope = self.scope.members();
        let result = match request {
            AdminRequest::Status => Ok(AdminResponse::Status(self.status())),
            AdminRequest::Stats => self.stats().map(AdminResponse::Stats),
            AdminRequest::ScopeRemove { member } => self.member_id(&member).and_then(|id| {
                let rest: Vec<u32> = in_scope.iter().copied().filter(|&m| m != id).collect();
                if rest.len() == in_scope.len() || rest.is_empty() {
                    bail!("{member} is not in the scope, or is its last member");
                }
                self.rescope(&rest)
            }),
            AdminRequest::ScopeAdd { member } => self.member_id(&member).and_then(|id| {
                if in_scope.contains(&id) {
                    bail!("{member} is already in the scope");
                }
                self.rescope(&in_scope.iter().copied().chain([id]).collect::<Vec<_>>())
            }),
            AdminRequest::Disengage { .. } | AdminRequest::Engage { .. } => Err(anyhow::anyhow!(
                "migrations are run by the manager: ask the edge's admin socket"
            )),
            AdminRequest::MemberAdd { .. } | AdminRequest::MemberRemove { .. } => Err(anyhow::anyhow!(
                "the edge keeps the members: ask the edge's admin socket or API"
            )),
            AdminRequest::Services => Ok(AdminResponse::Services(self.services())),
            AdminRequest::PolicyReload { dry_run } => self.reload_policy_file(dry_run),
            request @ (AdminRequest::BackendAdd { .. }
            | AdminRequest::BackendRemove { .. }
            | AdminRequest::BackendWeight { .. }
            | AdminRequest::BackendDrain { .. }) => match request.policy_edit() {
                Some((edit, dry_run)) => edit
                    .apply(self.policy.config())
                    .map_err(|e| anyhow::Error::new(e).context("the change is refused; nothing changed"))
                    .and_then(|next| self.change_policy(next, edit.to_string(), dry_run)),
                None => Err(anyhow::anyhow!("not a backend change")),
            },
        };
        result.unwrap_or_else(|e| AdminResponse::Error {
            message: format!("{e:#}"),
        })
    }

    /// The services, their backends and the backends removed live.
    fn services(&self) -> serde_json::Value {
        let retired: Vec<String> = self
            .policy
            .retired()
            .iter()
            .map(|(address, port, protocol)| {
                let protocol = if *protocol == handoff_common::net::ipproto::TCP {
                    "tcp"
                } else {
                    "udp"
                };
                format!("{}/{protocol}", std::net::SocketAddr::new(*address, *port))
            })
            .collect();
        serde_json::json!({
            "services": self.policy.services(),
            "removed_backends": retired,
            "on_backend_removed": self.policy.config().on_backend_removed,
        })
    }

    /// Re-reads the policy file and applies it: the file is the source of
    /// truth, so live backend changes not written to it are undone.
    fn reload_policy_file(&mut self, dry_run: bool) -> Result<AdminResponse> {
        let path = self.config.policy.clone();
        let next = PolicyConfig::load(&path).context("the reload is refused; nothing changed")?;
        self.change_policy(next, format!("reload of {}", path.display()), dry_run)
    }

    /// Builds the policy for `next` from the running one (every check is
    /// made there, before anything changes) and, unless `dry_run`, has
    /// every worker adopt it: answers once the last one did.
    fn change_policy(&mut self, next: PolicyConfig, change: String, dry_run: bool) -> Result<AdminResponse> {
        let policy = Arc::new(
            self.policy
                .reload(next)
                .context("the change is refused; nothing changed")?,
        );
        if !dry_run {
            // Recorded first: a worker that adopted it decides by it even
            // if another stopped before answering.
            self.policy = Arc::clone(&policy);
            self.ask_workers(
                |adopted| WorkerCommand::Policy {
                    policy: Arc::clone(&policy),
                    adopted,
                },
                POLICY_TIMEOUT,
            )?;
            tracing::info!(%change, "policy changed");
        }
        let mut answer = self.services();
        answer["change"] = change.into();
        answer["dry_run"] = dry_run.into();
        answer["workers"] = self.commands.len().into();
        Ok(AdminResponse::PolicyChanged(answer))
    }

    /// Serves the admin socket until the stop flag is set, then stops the
    /// workers and detaches.
    pub fn run(mut self) -> Result<()> {
        let (tx, rx) = crossbeam::channel::unbounded::<AdminCall>();
        let _socket = admin::serve(&self.config.admin_socket, tx.clone(), Arc::clone(&self.stop))?;
        let (scrape_tx, scrapes) = bounded::<ScrapeCall>(metrics::HTTP_THREADS);
        let metrics_server = match self.config.metrics {
            Some(listen) => Some(metrics::serve(listen, scrape_tx, Arc::clone(&self.stop))?),
            None => None,
        };
        let api_server = match self.config.api {
            Some(listen) => Some(crate::api::serve(
                listen,
                self.config.tls.clone(),
                tx.clone(),
                Arc::clone(&self.stop),
            )?),
            None => None,
        };
        let hangup = crate::shutdown::flag_on_hangup()?;
        // Readiness line for scripts and tests.
        eprintln!("node: ready on {}", self.config.interface);
        let orders = self.orders.clone();
        while !self.stop.load(Ordering::Relaxed) {
            crossbeam::channel::select! {
                recv(rx) -> call => if let Ok((request, reply)) = call {
                    let response = self.handle(request);
                    let _ = reply.send(response);
                },
                recv(orders) -> order => if let Ok((order, answers)) = order {
                    self.obey(order, &answers);
                },
                recv(scrapes) -> call => if let Ok(reply) = call {
                    let _ = reply.send(self.exposition());
                },
                default(Duration::from_millis(100)) => {}
            }
            if hangup.swap(false, Ordering::Relaxed) {
                match self.reload_policy_file(false) {
                    Ok(_) => tracing::info!(policy = %self.config.policy.display(), "SIGHUP: policy reloaded"),
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: policy reload refused"),
                }
            }
            if self.settle_at.is_some_and(|at| Instant::now() >= at) {
                self.settle_at = None;
                self.view = Arc::new(self.view.settled());
                if let Err(e) = self.tell_workers(|| WorkerCommand::View(Arc::clone(&self.view))) {
                    tracing::error!(error = %format!("{e:#}"), "settling the view");
                }
            }
        }
        self.program.detach()?;
        for server in [metrics_server, api_server].into_iter().flatten() {
            server.join();
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                tracing::error!("a node thread panicked");
            }
        }
        tracing::info!("node stopped");
        Ok(())
    }
}
