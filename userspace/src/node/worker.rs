//! One worker: a core's loop over its port, its inbox from the other cores
//! and its command channel. Generic over [`PacketIo`], so the same loop runs
//! on AF_XDP and on the in-memory backend.
//!
//! Per iteration: apply control commands, receive a burst through the
//! [`Pipeline`], handle frames other cores handed over, deliver what the
//! burst produced (frames for other cores, installed flows for the
//! announcer), flush the port and sweep a slice of the table for expiry.
//! Nothing here locks or allocates per packet: the inbox rings and the
//! outbox are sized at start.

use super::{
    fabric::{self, Marker},
    hold::{HoldCounters, HoldQueue},
    pipeline::{CorePacket, DropReason, Installed, Outbox, Pipeline, WorkerCounters, CORE_FRAME, NO_SENDER},
    view::NodeView,
};
use crate::{
    control::{
        flow::{FlowRecord as WireRecord, FlowRecordV2, WireFlowKey},
        message::DeltaOp,
    },
    flow::{FlowCounters, FlowRecord, Owner, Timestamp},
    io::{memory::MemoryFrame, PacketIo, Pending, PortStats, Verdict},
    migration::{
        handover::{self, Change, CutConnection},
        wire,
    },
};
use crossbeam::{
    channel::{Receiver, Sender, TryRecvError},
    queue::ArrayQueue,
};
use handoff_common::flow_key::FlowKey;
use serde::{Deserialize, Serialize};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Frames one core may have queued for another.
pub const CORE_RING: usize = 1024;
/// Installed flows queued for the announcer per worker.
pub const INSTALLED_RING: usize = 16_384;
/// Table slots swept for expiry per loop iteration.
const EXPIRY_BUDGET: usize = 64;
/// Idle iterations before the worker sleeps in `wait_rx`.
const SPINS_BEFORE_SLEEP: u32 = 64;
/// How long an idle worker sleeps at most (inbox frames wait this long).
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// Headroom kept in front of frames taken from the inbox (fabric encapsulation).
const INBOX_HEADROOM: usize = 64;
/// Connections or ownership entries one command carries at most, and the
/// commands a worker runs between two bursts: a large handover is many
/// small commands, so it never holds the worker's packets back for long
/// (a million entries in one command stalled a worker long enough for its
/// RX ring to overflow).
pub const COMMAND_CHUNK: usize = 4096;
const COMMANDS_PER_STEP: usize = 4;
/// Journal ops per delta batch; a copy that changes more between two
/// batches is aborted (and may be retried), not completed with a gap.
const JOURNAL_BATCH: usize = 65_536;
/// Packets of just-redirected connections one worker holds at most while
/// its inheritors install them (about 6.5 MB, allocated at start).
const HOLD_CAPACITY: usize = 4096;
/// How long they are held at most if the control path never releases them.
const HOLD_TIMEOUT: Duration = Duration::from_secs(5);

/// A control-path request to one worker.
#[derive(Debug)]
pub enum WorkerCommand {
    /// These flows are owned elsewhere (or here), as of `version`.
    Owners {
        /// Announcement version.
        version: u64,
        /// Flow and owner.
        owners: Vec<(FlowKey, Owner)>,
    },
    /// These flows are no longer owned by whoever announced them.
    Forget {
        /// The flows.
        keys: Vec<FlowKey>,
    },
    /// This node died: forget every flow it owned.
    ForgetNode {
        /// The node.
        node: u16,
    },
    /// A new cluster view (scope change).
    View(Arc<NodeView>),
    /// A new policy (a live change): adopted between two bursts, then
    /// acknowledged on `adopted`.
    Policy {
        /// The policy, built by [`crate::flow::Policy::reload`] from the running one.
        policy: Arc<crate::flow::Policy>,
        /// Told once the worker decides by it.
        adopted: Sender<()>,
    },
    /// Send a report back.
    Report(Sender<WorkerReport>),
    /// Export, in wire form, the connections whose owner changes under
    /// `next`, and journal every change from then on, for
    /// [`WorkerCommand::Deltas`] and [`WorkerCommand::Cut`].
    Export {
        /// The scope after the handover.
        next: Arc<NodeView>,
        /// Where the export goes.
        reply: Sender<Exported>,
    },
    /// The changes to leaving connections since the export or the last batch.
    Deltas {
        /// Where they go.
        reply: Sender<Deltas>,
    },
    /// Take the last changes, redirect every leaving connection to its
    /// inheritor and hold their packets until [`WorkerCommand::Release`].
    Cut {
        /// The last changes and what was redirected.
        reply: Sender<CutShare>,
    },
    /// End the handover: own again the connections cut to `take_back`
    /// (inheritors that did not confirm), then let the held packets go, in
    /// order.
    Release {
        /// Inheritors whose connections come back.
        take_back: Vec<u16>,
        /// How many connections came back.
        reply: Sender<usize>,
    },
    /// After a flip that took buckets from this node: run what is still in
    /// the inbox, then send each gainer an end marker on this worker's
    /// path to it (see [`Pipeline::set_view`] for the receiving end).
    SendMarkers {
        /// Each gainer's node id and fabric MAC.
        to: Vec<(u16, [u8; 6])>,
        /// The flip (low bits of the scope version).
        serial: u32,
        /// This node's workers: each sends its own marker.
        lanes: u16,
    },
    /// Install connections handed over by another node.
    Import {
        /// The connections.
        records: Vec<FlowRecordV2>,
        /// What was installed.
        reply: Sender<Imported>,
    },
    /// Forget every redirected connection.
    Purge {
        /// How many were removed.
        reply: Sender<usize>,
    },
}

/// One connection of a handover, as it leaves.
#[derive(Clone, Copy, Debug)]
pub struct ExportedConnection {
    /// The inheriting node.
    pub inheritor: u16,
    /// The connection in wire form.
    pub record: FlowRecordV2,
    /// Its reply direction's key (the wire form carries the forward key only).
    pub reverse: FlowKey,
}

/// One worker's share of a handover.
#[derive(Debug, Default)]
pub struct Exported {
    /// The connections.
    pub connections: Vec<ExportedConnection>,
    /// Connections that cannot be expressed on the wire, and why.
    pub refused: Vec<String>,
}

/// One worker's changes to leaving connections, in the order they apply.
#[derive(Debug, Default)]
pub struct Deltas {
    /// Each change with its inheritor.
    pub ops: Vec<(u16, DeltaOp)>,
    /// Connections that cannot be expressed on the wire, and why.
    pub refused: Vec<String>,
    /// The journal lost changes: the copy cannot be completed.
    pub overflowed: bool,
}

/// One worker's cut.
#[derive(Debug, Default)]
pub struct CutShare {
    /// The changes since the last batch, up to the cut.
    pub deltas: Deltas,
    /// Inheritor, forward and reverse key of every connection redirected.
    pub redirected: Vec<(u16, FlowKey, FlowKey)>,
}

/// A handover this worker gives connections in.
#[derive(Debug)]
struct Leaving {
    next: Arc<NodeView>,
    /// What the cut redirected, kept to take it back.
    cut: Vec<CutConnection>,
}

/// What one worker installed of a handover.
#[derive(Debug, Default)]
pub struct Imported {
    /// The worker.
    pub worker: u8,
    /// Forward and reverse key of each connection installed.
    pub keys: Vec<(FlowKey, FlowKey)>,
    /// Records refused, and why.
    pub refused: Vec<String>,
}

/// A worker's state for operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Worker index.
    pub worker: u8,
    /// Pipeline counters.
    pub counters: WorkerCounters,
    /// Flow table counters.
    pub table: FlowCounters,
    /// Port counters.
    pub port: PortStats,
    /// Frames still in the port's rings.
    pub pending_rx: usize,
    /// Frames queued for transmission.
    pub pending_tx: usize,
    /// Frames waiting in this worker's inbox.
    pub inbox: usize,
    /// Flows in the ownership table.
    pub ownership_entries: usize,
    /// Installed flows the announcer could not take (its ring was full).
    pub announce_overflow: u64,
    /// Packets held during handovers.
    pub hold: HoldCounters,
    /// Packets held now.
    pub held: usize,
}

/// What a worker shares with the rest of the node.
#[derive(Clone, Debug)]
pub struct WorkerLinks {
    /// Every worker's inbox, indexed by worker.
    pub inboxes: Vec<Arc<ArrayQueue<CorePacket>>>,
    /// This worker's newly installed flows, for the announcer.
    pub installed: Arc<ArrayQueue<Installed>>,
}

impl WorkerLinks {
    /// Links for `workers` workers: one inbox each and one installed-flow ring each.
    pub fn for_node(workers: usize) -> Vec<Self> {
        let inboxes: Vec<_> = (0..workers).map(|_| Arc::new(ArrayQueue::new(CORE_RING))).collect();
        (0..workers)
            .map(|_| Self {
                inboxes: inboxes.clone(),
                installed: Arc::new(ArrayQueue::new(INSTALLED_RING)),
            })
            .collect()
    }
}

/// One core's worker.
pub struct Worker<P: PacketIo> {
    pipeline: Pipeline,
    port: P,
    links: WorkerLinks,
    commands: Receiver<WorkerCommand>,
    outbox: Outbox,
    scratch: MemoryFrame,
    clock: Instant,
    announce_overflow: u64,
    /// The handover in progress, from export to release.
    leaving: Option<Leaving>,
    /// Packets of just-cut connections, until their inheritors confirm.
    pen: HoldQueue<CorePacket>,
}

impl<P: PacketIo> std::fmt::Debug for Worker<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pipeline", &self.pipeline)
            .finish_non_exhaustive()
    }
}

impl<P: PacketIo> Worker<P> {
    /// A worker over `port`, with `burst` frames per RX burst at most.
    pub fn new(
        pipeline: Pipeline,
        port: P,
        links: WorkerLinks,
        commands: Receiver<WorkerCommand>,
        burst: usize,
    ) -> Self {
        Self {
            pipeline,
            port,
            links,
            commands,
            outbox: Outbox::with_capacity(burst.max(1) * 2),
            scratch: MemoryFrame::new(CORE_FRAME, INBOX_HEADROOM),
            clock: Instant::now(),
            announce_overflow: 0,
            leaving: None,
            pen: HoldQueue::new(HOLD_CAPACITY, HOLD_TIMEOUT),
        }
    }

    /// The port.
    pub fn port(&self) -> &P {
        &self.port
    }

    /// The port, writable (tests inject and drain through it).
    pub fn port_mut(&mut self) -> &mut P {
        &mut self.port
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.clock.elapsed().as_nanos() as u64)
    }

    /// Runs until `stop` is set or the command channel closes, then flushes.
    pub fn run(mut self, stop: &AtomicBool) -> Self {
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) {
            match self.step() {
                Ok(0) => {
                    idle += 1;
                    if idle >= SPINS_BEFORE_SLEEP {
                        if let Err(e) = self.port.wait_rx(IDLE_WAIT) {
                            tracing::warn!(error = %e, "waiting for frames");
                        }
                        idle = 0;
                    }
                }
                Ok(_) => idle = 0,
                Err(Disconnected) => break,
            }
        }
        if let Err(e) = self.port.flush() {
            tracing::warn!(error = %e, "final flush");
        }
        self
    }

    /// One iteration; returns the frames handled, or [`Disconnected`] when
    /// the control path is gone.
    pub fn step(&mut self) -> Result<usize, Disconnected> {
        self.apply_commands()?;
        let now = self.now();
        let Self {
            pipeline, port, outbox, ..
        } = self;
        let mut handled = port.poll_rx(|frame| pipeline.process(frame, 0, now, outbox));
        handled += self.drain_inbox(now);
        self.run_released(now);
        self.pen_held(now);
        if self.pen.timed_out(now) {
            tracing::warn!(
                held = self.pen.len(),
                "held packets waited too long for a confirmation or end marker; they go on"
            );
            self.pipeline.stop_holding();
            self.unhold(now, true);
        } else if let Some(by_timeout) = self.pipeline.take_release() {
            self.unhold(now, by_timeout);
        }
        if let Some(lost) = self.pipeline.take_lost_flow() {
            // Rare by design (a disagreement on a connection's owner): each
            // one is worth a line.
            tracing::warn!(?lost, "packet dropped: the cluster disagrees on its connection's owner");
        }
        self.deliver();
        if let Err(e) = self.port.flush() {
            tracing::warn!(error = %e, "flushing the port");
        }
        self.pipeline.expire(now, EXPIRY_BUDGET);
        Ok(handled)
    }

    /// Runs at most [`COMMANDS_PER_STEP`] queued commands.
    fn apply_commands(&mut self) -> Result<(), Disconnected> {
        for _ in 0..COMMANDS_PER_STEP {
            match self.commands.try_recv() {
                Ok(WorkerCommand::Owners { version, owners }) => {
                    let table = self.pipeline.ownership_mut();
                    for (key, owner) in owners {
                        table.set(key, owner, version);
                    }
                }
                Ok(WorkerCommand::Forget { keys }) => {
                    let table = self.pipeline.ownership_mut();
                    for key in &keys {
                        table.remove(key);
                    }
                }
                Ok(WorkerCommand::ForgetNode { node }) => {
                    let forgotten = self.pipeline.ownership_mut().forget_node(node);
                    tracing::info!(node, forgotten, "forgot the flows of a FAILED node");
                }
                Ok(WorkerCommand::View(view)) => self.pipeline.set_view(view),
                Ok(WorkerCommand::Policy { policy, adopted }) => {
                    self.pipeline.set_policy(policy);
                    let _ = adopted.send(());
                }
                Ok(WorkerCommand::Report(reply)) => {
                    let _ = reply.send(self.report());
                }
                Ok(WorkerCommand::Export { next, reply }) => {
                    let _ = reply.send(self.export(next));
                }
                Ok(WorkerCommand::Deltas { reply }) => {
                    let _ = reply.send(self.deltas(false));
                }
                Ok(WorkerCommand::Cut { reply }) => {
                    let _ = reply.send(self.cut());
                }
                Ok(WorkerCommand::Release { take_back, reply }) => {
                    let _ = reply.send(self.release(&take_back));
                }
                Ok(WorkerCommand::SendMarkers { to, serial, lanes }) => self.send_markers(&to, serial, lanes),
                Ok(WorkerCommand::Import { records, reply }) => {
                    let _ = reply.send(self.import(&records));
                }
                Ok(WorkerCommand::Purge { reply }) => {
                    let _ = reply.send(handover::purge(self.pipeline.table_mut()));
                }
                Err(TryRecvError::Empty) => return Ok(()),
                Err(TryRecvError::Disconnected) => return Err(Disconnected),
            }
        }
        Ok(())
    }

    /// Runs frames other cores handed over through the pipeline.
    fn drain_inbox(&mut self, now: Timestamp) -> usize {
        let me = self.pipeline.owner().worker as usize;
        let Some(inbox) = self.links.inboxes.get(me).cloned() else {
            return 0;
        };
        let mut handled = 0;
        while handled < self.outbox.to_cores.capacity() {
            let Some(packet) = inbox.pop() else { break };
            handled += 1;
            self.run_copy(&packet, now);
        }
        handled
    }

    /// Runs a copied frame through the pipeline; what it transmits is sent
    /// as a copy, since the frame is not from this port.
    fn run_copy(&mut self, packet: &CorePacket, now: Timestamp) {
        if self
            .scratch
            .load(&packet.data[..packet.len as usize], INBOX_HEADROOM)
            .is_err()
        {
            self.pipeline.count_drop(DropReason::Malformed);
            return;
        }
        let sender = (packet.sender != NO_SENDER).then_some(packet.sender);
        let verdict = self
            .pipeline
            .process_from(&mut self.scratch, packet.hops, sender, now, &mut self.outbox);
        if verdict == Verdict::Transmit && self.port.send(crate::io::FrameBuf::bytes(&self.scratch)).is_err() {
            self.pipeline.count_drop(DropReason::RingFull);
        }
    }

    /// Runs the parked fragments whose first fragment came, in order; they
    /// may release others in turn (never more than were parked).
    fn run_released(&mut self, now: Timestamp) {
        while !self.outbox.released.is_empty() {
            let released = std::mem::take(&mut self.outbox.released);
            for packet in &released {
                self.run_copy(packet, now);
            }
            // Hand the buffer back when nothing new came meanwhile.
            if self.outbox.released.is_empty() {
                self.outbox.released = released;
                self.outbox.released.clear();
            }
        }
    }

    /// Moves what the pipeline held into the pen. A full pen sends its
    /// oldest packet on now, unheld: late for its inheritor maybe, but in
    /// order and never dropped here.
    fn pen_held(&mut self, now: Timestamp) {
        if self.outbox.held.is_empty() {
            return;
        }
        self.pen.start(now);
        let held = std::mem::take(&mut self.outbox.held);
        for packet in &held {
            let Some(early) = self.pen.hold(*packet) else { continue };
            self.pipeline.suspend_holds(true);
            self.run_copy(&early, now);
            self.pipeline.suspend_holds(false);
        }
        // Hand the buffer back: the packet path does not allocate.
        self.outbox.held = held;
        self.outbox.held.clear();
    }

    /// Runs the held packets again, oldest first: those whose reason to
    /// wait is gone go on, the others are held again in the same order.
    fn unhold(&mut self, now: Timestamp, by_timeout: bool) {
        let held: Vec<CorePacket> = self.pen.release(by_timeout).collect();
        for packet in &held {
            self.run_copy(packet, now);
        }
        self.pen_held(now);
        self.deliver();
    }

    fn send_markers(&mut self, to: &[(u16, [u8; 6])], serial: u32, lanes: u16) {
        let now = self.now();
        // A drain that handled nothing produced nothing to deliver.
        while self.drain_inbox(now) > 0 {
            self.deliver();
        }
        let me = self.pipeline.owner();
        let marker = Marker {
            sender: me.node,
            lane: u16::from(me.worker),
            lanes,
            serial,
        };
        // An Ethernet frame's minimum, zero-padded.
        let mut frame = [0u8; 60];
        for &(_, mac) in to {
            fabric::write_marker(
                &mut frame,
                self.pipeline.own_mac(),
                mac,
                &marker,
                handoff_common::fabric::ANY_WORKER,
            );
            if self.port.send(&frame).is_err() {
                tracing::warn!(
                    ?marker,
                    "an end marker could not be sent; its receiver waits out its timeout"
                );
            }
        }
        if let Err(e) = self.port.flush() {
            tracing::warn!(error = %e, "flushing end markers");
        }
    }

    fn deliver(&mut self) {
        for packet in self.outbox.to_cores.drain(..) {
            let pushed = self
                .links
                .inboxes
                .get(packet.worker as usize)
                .is_some_and(|inbox| inbox.push(packet).is_ok());
            if !pushed {
                self.pipeline.count_drop(DropReason::RingFull);
            }
        }
        for installed in self.outbox.installed.drain(..) {
            if self.links.installed.push(installed).is_err() {
                self.announce_overflow += 1;
            }
        }
    }

    fn export(&mut self, next: Arc<NodeView>) -> Exported {
        let now = self.now();
        let table = self.pipeline.table_mut();
        table.start_journal(JOURNAL_BATCH);
        let outgoing = handover::export(table, &next);
        let mut exported = Exported::default();
        for o in outgoing {
            match wire::to_wire(&o.record, self.pipeline.policy(), now) {
                Ok(record) => exported.connections.push(ExportedConnection {
                    inheritor: o.inheritor.node,
                    record,
                    reverse: o.record.reverse.key,
                }),
                Err(e) => exported.refused.push(format!("{}: {e}", o.record.forward.key)),
            }
        }
        self.leaving = Some(Leaving { next, cut: Vec::new() });
        exported
    }

    /// The journal's changes to leaving connections since the last batch;
    /// `last` stops the journal.
    fn deltas(&mut self, last: bool) -> Deltas {
        let Some(leaving) = self.leaving.as_ref() else {
            return Deltas::default();
        };
        let now = self.now();
        let table = self.pipeline.table_mut();
        let journal = if last {
            table.stop_journal()
        } else {
            table.take_journal()
        };
        let mut deltas = Deltas {
            overflowed: journal.overflowed,
            ..Deltas::default()
        };
        let to_wire = |record: &FlowRecord| wire::to_wire(record, self.pipeline.policy(), now).map(WireRecord::V2);
        for change in handover::changes(self.pipeline.table(), &journal, &leaving.next) {
            match change {
                Change::Upsert { outgoing, new } => match to_wire(&outgoing.record) {
                    Ok(record) => deltas.ops.push((
                        outgoing.inheritor.node,
                        if new {
                            DeltaOp::Insert(record)
                        } else {
                            DeltaOp::Update(record)
                        },
                    )),
                    Err(e) => deltas.refused.push(format!("{}: {e}", outgoing.record.forward.key)),
                },
                Change::Delete { inheritor, key } => {
                    if let Ok(key) = WireFlowKey::try_from(&key) {
                        deltas.ops.push((inheritor, DeltaOp::Delete(key)));
                    }
                }
            }
        }
        deltas
    }

    /// The last changes, then the redirect, in one step of the loop: no
    /// packet changes a leaving connection in between.
    fn cut(&mut self) -> CutShare {
        let deltas = self.deltas(true);
        let Some(leaving) = self.leaving.as_mut() else {
            return CutShare::default();
        };
        leaving.cut = handover::cut(self.pipeline.table_mut(), &leaving.next);
        self.pipeline.hold_redirects(true);
        CutShare {
            deltas,
            redirected: leaving
                .cut
                .iter()
                .map(|c| (c.inheritor, c.forward, c.reverse))
                .collect(),
        }
    }

    fn release(&mut self, take_back: &[u16]) -> usize {
        let Some(leaving) = self.leaving.take() else {
            return 0;
        };
        let table = self.pipeline.table_mut();
        table.stop_journal();
        let taken = handover::take_back(table, &leaving.cut, take_back);
        self.pipeline.hold_redirects(false);
        let now = self.now();
        self.unhold(now, false);
        taken
    }

    fn import(&mut self, records: &[FlowRecordV2]) -> Imported {
        let now = self.now();
        let me = self.pipeline.owner();
        let mut imported = Imported {
            worker: me.worker,
            ..Imported::default()
        };
        for wire_record in records {
            let result = wire::from_wire(wire_record, self.pipeline.policy(), now)
                .map_err(|e| e.to_string())
                .and_then(|record| {
                    let keys = (record.forward.key, record.reverse.key);
                    handover::import(self.pipeline.table_mut(), record, me, now, now)
                        .map(|_| keys)
                        .map_err(|e| e.to_string())
                });
            match result {
                Ok(keys) => imported.keys.push(keys),
                Err(e) => imported.refused.push(format!("{}: {e}", wire_record.key)),
            }
        }
        imported
    }

    /// The worker's report.
    pub fn report(&self) -> WorkerReport {
        let Pending { rx, tx } = self.port.pending();
        let me = self.pipeline.owner().worker;
        WorkerReport {
            worker: me,
            counters: self.pipeline.counters(),
            table: self.pipeline.table().counters(),
            port: self.port.stats(),
            pending_rx: rx,
            pending_tx: tx,
            inbox: self.links.inboxes.get(me as usize).map_or(0, |q| q.len()),
            ownership_entries: self.pipeline.ownership().len(),
            announce_overflow: self.announce_overflow,
            hold: self.pen.counters(),
            held: self.pen.len(),
        }
    }
}

/// The control path dropped its end of the command channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnected;
