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
    pipeline::{CorePacket, DropReason, Installed, Outbox, Pipeline, WorkerCounters, CORE_FRAME},
    view::NodeView,
};
use crate::{
    control::flow::FlowRecordV2,
    flow::{FlowCounters, Owner, Timestamp},
    io::{memory::MemoryFrame, PacketIo, Pending, PortStats, Verdict},
    migration::{
        handover::{self, Outgoing},
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
    /// Send a report back.
    Report(Sender<WorkerReport>),
    /// Export, in wire form, the connections whose owner changes under
    /// `next`; remembered for the following [`WorkerCommand::Cut`].
    Export {
        /// The scope after the handover.
        next: Arc<NodeView>,
        /// Where the export goes.
        reply: Sender<Exported>,
    },
    /// Redirect the connections of the last export to their inheritors.
    Cut {
        /// How many were redirected.
        reply: Sender<usize>,
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
    /// The connections of the last export, until they are cut.
    exported: Vec<Outgoing>,
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
            exported: Vec::new(),
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

    fn apply_commands(&mut self) -> Result<(), Disconnected> {
        loop {
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
                Ok(WorkerCommand::Report(reply)) => {
                    let _ = reply.send(self.report());
                }
                Ok(WorkerCommand::Export { next, reply }) => {
                    let _ = reply.send(self.export(&next));
                }
                Ok(WorkerCommand::Cut { reply }) => {
                    let moved = std::mem::take(&mut self.exported);
                    let _ = reply.send(handover::cut(self.pipeline.table_mut(), &moved));
                }
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
    }

    /// Runs frames other cores handed over through the pipeline; what it
    /// transmits is sent as a copy, since the frame is not from this port.
    fn drain_inbox(&mut self, now: Timestamp) -> usize {
        let me = self.pipeline.owner().worker as usize;
        let Some(inbox) = self.links.inboxes.get(me).cloned() else {
            return 0;
        };
        let mut handled = 0;
        while handled < self.outbox.to_cores.capacity() {
            let Some(packet) = inbox.pop() else { break };
            handled += 1;
            if self
                .scratch
                .load(&packet.data[..packet.len as usize], INBOX_HEADROOM)
                .is_err()
            {
                self.pipeline.count_drop(DropReason::Malformed);
                continue;
            }
            let verdict = self
                .pipeline
                .process(&mut self.scratch, packet.hops, now, &mut self.outbox);
            if verdict == Verdict::Transmit && self.port.send(crate::io::FrameBuf::bytes(&self.scratch)).is_err() {
                self.pipeline.count_drop(DropReason::RingFull);
            }
        }
        handled
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
        // Markers matter to a migration only; none is running in this
        // version of the node, so seeing one is counted and nothing more.
        self.outbox.markers.clear();
    }

    fn export(&mut self, next: &NodeView) -> Exported {
        let now = self.now();
        let outgoing = handover::export(self.pipeline.table(), next);
        let mut exported = Exported::default();
        self.exported.clear();
        for o in outgoing {
            match wire::to_wire(&o.record, self.pipeline.policy(), now) {
                Ok(record) => {
                    exported.connections.push(ExportedConnection {
                        inheritor: o.inheritor.node,
                        record,
                        reverse: o.record.reverse.key,
                    });
                    self.exported.push(o);
                }
                Err(e) => exported.refused.push(format!("{}: {e}", o.record.forward.key)),
            }
        }
        exported
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
        }
    }
}

/// The control path dropped its end of the command channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Disconnected;
