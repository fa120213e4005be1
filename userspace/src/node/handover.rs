//! The node's side of a handover on the control protocol: streaming
//! connections to an inheritor (`TableAnnounce`, `FlowRecords`...,
//! `FlowDelta`..., `Cut`, answered by `CutAck` or `Abort`), receiving them,
//! and the ownership broadcast that follows the cut.

use super::{
    clock::VersionClock,
    peers::{open_link, tell_owners, Identity, Peer},
    view::NodeView,
    worker::{Imported, WorkerCommand, COMMAND_CHUNK},
};
use crate::{
    control::{
        flow::{FlowRecord as WireRecord, FlowRecordV2, Owner as WireOwner, RecordVersion, WireFlowKey},
        ids::{MigrationSerial, NodeId},
        io::{read_frame_within, write_frame},
        message::{
            Abort, AbortReason, Body, Cut, CutAck, DeltaOp, FlowDelta, FlowOwner, FlowRecords, OwnershipBroadcast,
            OwnershipChanges, TableAnnounce,
        },
        tls::SecureStream,
    },
    flow::Owner,
};
use anyhow::{bail, Context, Result};
use crossbeam::channel::{unbounded, Sender};
use handoff_common::{fabric::ANY_WORKER, flow_key::FlowKey};
use hashbrown::HashMap;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

/// Connections per `FlowRecords` chunk.
pub const RECORDS_PER_CHUNK: usize = 512;
/// Owners per `OwnershipBroadcast` message.
const OWNERS_PER_BROADCAST: usize = 4096;
/// How long an inheritor may take to install a stream after its cut.
const CUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Rough wire size of one record, for the receiver's pre-sizing.
const RECORD_BYTES_ESTIMATE: u64 = 96;

/// One handover stream to an inheritor, from its announcement to its cut.
#[derive(Debug)]
pub struct Stream<'a> {
    address: SocketAddr,
    identity: &'a Identity,
    serial: MigrationSerial,
    stream: SecureStream,
    message_serial: u64,
    chunks: u32,
    delta_batches: u64,
    /// Snapshot records per second at most.
    rate_limit: Option<u64>,
    bytes: u64,
}

impl<'a> Stream<'a> {
    /// Connects to the inheritor `peer` and announces `flows`
    /// connections, so it can size its copy. The snapshot streams at
    /// `rate_limit` records per second at most.
    pub fn open(
        peer: Peer,
        identity: &'a Identity,
        serial: MigrationSerial,
        flows: u64,
        rate_limit: Option<u64>,
    ) -> Result<Self> {
        let mut message_serial = 0u64;
        let stream = open_link(peer, identity, &mut message_serial)?;
        let mut this = Self {
            address: peer.address,
            identity,
            serial,
            stream,
            message_serial,
            chunks: 0,
            delta_batches: 0,
            rate_limit,
            bytes: 0,
        };
        this.send(Body::TableAnnounce(TableAnnounce {
            serial,
            flows,
            bytes_estimate: flows * RECORD_BYTES_ESTIMATE,
            record_version: RecordVersion::V2,
        }))?;
        Ok(this)
    }

    fn send(&mut self, body: Body) -> Result<()> {
        let sent = write_frame(
            &mut self.stream,
            &self.identity.envelope(&mut self.message_serial, body),
        )
        .with_context(|| format!("streaming to {}", self.address))?;
        self.bytes += sent as u64;
        Ok(())
    }

    /// Bytes sent so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Sends the snapshot, in chunks, paced by the rate limit; after each
    /// chunk `sent` hears the records sent so far and this stream's bytes.
    pub fn snapshot(&mut self, records: &[FlowRecordV2], sent: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let started = Instant::now();
        for (i, chunk) in records.chunks(RECORDS_PER_CHUNK).enumerate() {
            if let Some(rate) = self.rate_limit {
                let due = Duration::from_secs_f64((i * RECORDS_PER_CHUNK) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            self.send(Body::FlowRecords(FlowRecords {
                serial: self.serial,
                chunk: self.chunks,
                records: chunk.iter().copied().map(WireRecord::V2).collect(),
            }))?;
            self.chunks += 1;
            sent((i * RECORDS_PER_CHUNK + chunk.len()) as u64, self.bytes);
        }
        Ok(())
    }

    /// Sends changes since the snapshot, in order, in batches.
    pub fn deltas(&mut self, ops: &[DeltaOp]) -> Result<()> {
        for batch in ops.chunks(RECORDS_PER_CHUNK) {
            self.send(Body::FlowDelta(FlowDelta {
                serial: self.serial,
                seq: self.delta_batches,
                ops: batch.to_vec(),
            }))?;
            self.delta_batches += 1;
        }
        Ok(())
    }

    /// Ends the stream and waits until the inheritor installed `expected`
    /// connections.
    pub fn cut(mut self, expected: u64) -> Result<u64> {
        self.send(Body::Cut(Cut {
            serial: self.serial,
            chunks: self.chunks,
            delta_batches: self.delta_batches,
            version: self.identity.clock.stamp(),
        }))?;
        let address = self.address;
        match read_frame_within(&mut self.stream, CUT_TIMEOUT)
            .with_context(|| format!("waiting for {address} to install"))?
            .body
        {
            Body::CutAck(ack) if ack.serial == self.serial && ack.flows == expected => Ok(ack.flows),
            Body::CutAck(ack) => bail!(
                "{address} installed {} of {expected} connections (attempt {})",
                ack.flows,
                ack.serial
            ),
            Body::Abort(abort) => bail!("{address} aborted: {}: {}", abort.reason, abort.detail),
            other => bail!("{address} answered the cut with {:?}", other.kind()),
        }
    }
}

/// Tells `peer` who owns `owners` from now on, as of `version` (a stamp of
/// this node's [`super::clock::VersionClock`]).
pub fn broadcast(
    peer: Peer,
    identity: &Identity,
    serial: MigrationSerial,
    version: u64,
    owners: &[FlowOwner],
) -> Result<()> {
    let mut message_serial = 0u64;
    let address = peer.address;
    let mut stream = open_link(peer, identity, &mut message_serial)?;
    for chunk in owners.chunks(OWNERS_PER_BROADCAST) {
        let body = Body::OwnershipBroadcast(OwnershipBroadcast {
            serial,
            version,
            changes: OwnershipChanges::Flows(chunk.to_vec()),
        });
        write_frame(&mut stream, &identity.envelope(&mut message_serial, body))
            .with_context(|| format!("broadcasting to {address}"))?;
    }
    Ok(())
}

/// Both keys of every redirected connection (inheritor, forward key,
/// reverse key), owned by its inheritor (any worker).
pub fn owners_of(redirected: &[(u16, FlowKey, FlowKey)]) -> Vec<FlowOwner> {
    let mut owners = Vec::with_capacity(redirected.len() * 2);
    for &(inheritor, forward, reverse) in redirected {
        let Ok(node) = NodeId::new(inheritor) else { continue };
        let owner = WireOwner {
            node,
            worker: u16::from(ANY_WORKER),
        };
        for key in [forward, reverse] {
            if let Ok(key) = WireFlowKey::try_from(&key) {
                owners.push(FlowOwner { key, owner });
            }
        }
    }
    owners
}

/// A stream being received: the snapshot with the deltas applied so far,
/// by forward key.
#[derive(Debug)]
pub struct Incoming {
    serial: MigrationSerial,
    /// Connections the announcement promised for the snapshot.
    announced: u64,
    /// Snapshot records received so far.
    snapshot_records: u64,
    chunks: u32,
    delta_batches: u64,
    records: HashMap<WireFlowKey, FlowRecordV2>,
}

impl Incoming {
    fn add(&mut self, record: &WireRecord) -> bool {
        match record.translate(RecordVersion::V2) {
            Ok(WireRecord::V2(r)) => {
                self.records.insert(r.key, r);
                true
            }
            _ => false,
        }
    }
}

/// Why a handover stream was ended by its receiver.
enum StreamFault {
    /// Out of order, or a count that does not add up.
    Gap(&'static str),
    /// More than the receiver takes.
    OverCapacity(&'static str),
}

/// The receiving end of handovers on one peer session.
#[derive(Debug)]
pub struct Receiver<'a> {
    node: NodeId,
    clock: &'a VersionClock,
    /// Connections one stream may bring at most.
    max_connections: u64,
    /// Routes a connection to the worker that will hold it.
    routing: &'a NodeView,
    workers: &'a [Sender<WorkerCommand>],
    incoming: Option<Incoming>,
}

impl<'a> Receiver<'a> {
    /// A receiver for `node`'s `workers`, stamping with `clock`, taking at
    /// most `max_connections` connections from one stream: a peer's
    /// announcement and records can make this node hold no more than that.
    pub fn new(
        node: NodeId,
        clock: &'a VersionClock,
        max_connections: u64,
        routing: &'a NodeView,
        workers: &'a [Sender<WorkerCommand>],
    ) -> Self {
        Self {
            node,
            clock,
            max_connections,
            routing,
            workers,
            incoming: None,
        }
    }

    /// Handles one handover message; returns the answer to send, if any.
    /// Messages that are not part of a handover return `None` untouched.
    /// A stream that goes out of order, does not add up, or brings more
    /// connections than announced or than [`Receiver::new`]'s bound is
    /// answered with an [`Abort`] and forgotten.
    pub fn handle(&mut self, body: &Body) -> Option<Body> {
        let (serial, result) = match body {
            Body::TableAnnounce(a) => (a.serial, self.announce(a)),
            Body::FlowRecords(m) => (m.serial, self.records(m)),
            Body::FlowDelta(d) => (d.serial, self.delta(d)),
            Body::Cut(c) => {
                return Some(match self.cut(c) {
                    Ok(flows) => Body::CutAck(CutAck {
                        serial: c.serial,
                        flows,
                    }),
                    Err(fault) => self.abort(c.serial, fault),
                })
            }
            Body::OwnershipBroadcast(b) => {
                self.clock.witness(b.version);
                if let OwnershipChanges::Flows(flows) = &b.changes {
                    // Our own connections are routed by the entries `install` made.
                    tell_owners(self.workers, flows, self.node, b.version);
                }
                return None;
            }
            _ => return None,
        };
        result.err().map(|fault| self.abort(serial, fault))
    }

    fn announce(&mut self, a: &TableAnnounce) -> Result<(), StreamFault> {
        self.incoming = None;
        if a.flows > self.max_connections {
            return Err(StreamFault::OverCapacity(
                "the announcement is over this node's capacity",
            ));
        }
        self.incoming = Some(Incoming {
            serial: a.serial,
            announced: a.flows,
            snapshot_records: 0,
            chunks: 0,
            delta_batches: 0,
            // Bounded by the check above: at most what this node's tables hold.
            records: HashMap::with_capacity(a.flows as usize),
        });
        Ok(())
    }

    fn records(&mut self, m: &FlowRecords) -> Result<(), StreamFault> {
        let inc = match self.incoming.as_mut() {
            Some(inc) if inc.serial == m.serial && inc.chunks == m.chunk => inc,
            _ => return Err(StreamFault::Gap("a snapshot chunk out of order")),
        };
        inc.chunks += 1;
        inc.snapshot_records += m.records.len() as u64;
        if inc.snapshot_records > inc.announced {
            return Err(StreamFault::OverCapacity("more snapshot records than announced"));
        }
        if m.records.iter().all(|r| inc.add(r)) {
            Ok(())
        } else {
            Err(StreamFault::Gap("a record cannot be read in version 2"))
        }
    }

    fn delta(&mut self, d: &FlowDelta) -> Result<(), StreamFault> {
        let max = self.max_connections as usize;
        let inc = match self.incoming.as_mut() {
            Some(inc) if inc.serial == d.serial && inc.delta_batches == d.seq => inc,
            _ => return Err(StreamFault::Gap("a delta batch out of order")),
        };
        inc.delta_batches += 1;
        for op in &d.ops {
            match op {
                DeltaOp::Insert(r) | DeltaOp::Update(r) => {
                    if !inc.add(r) {
                        return Err(StreamFault::Gap("a record cannot be read in version 2"));
                    }
                    if inc.records.len() > max {
                        return Err(StreamFault::OverCapacity(
                            "the changes grew the copy over this node's capacity",
                        ));
                    }
                }
                // The delete of a connection's reverse key matches nothing:
                // the copy is keyed by forward key.
                DeltaOp::Delete(key) => {
                    inc.records.remove(key);
                }
            }
        }
        Ok(())
    }

    fn cut(&mut self, c: &Cut) -> Result<u64, StreamFault> {
        match self.incoming.take() {
            Some(inc) if inc.serial == c.serial && inc.chunks == c.chunks && inc.delta_batches == c.delta_batches => {
                // What the sender announced before its cut must not
                // outrank the owners installed now.
                self.clock.witness(c.version);
                Ok(self.install(inc.records.into_values().collect()))
            }
            _ => Err(StreamFault::Gap("the stream did not add up at the cut")),
        }
    }

    fn abort(&mut self, serial: MigrationSerial, fault: StreamFault) -> Body {
        self.incoming = None;
        let (reason, detail) = match fault {
            StreamFault::Gap(detail) => (AbortReason::StreamGap { node: self.node }, detail),
            StreamFault::OverCapacity(detail) => (
                AbortReason::OverCapacity {
                    node: self.node,
                    limit: self.max_connections,
                },
                detail,
            ),
        };
        tracing::warn!(%serial, %reason, detail, "handover stream ended by its receiver");
        Body::Abort(Abort {
            serial,
            reason,
            detail: detail.into(),
        })
    }

    /// Installs `records` on the workers that own their buckets, then tells
    /// every worker which core holds them. Returns how many were installed.
    fn install(&self, records: Vec<FlowRecordV2>) -> u64 {
        let mut per_worker: Vec<Vec<FlowRecordV2>> = vec![Vec::new(); self.workers.len()];
        for record in records {
            let key = FlowKey::from(&record.key);
            let worker = self.routing.owner_by_scope(&key).worker as usize;
            per_worker[worker.min(self.workers.len() - 1)].push(record);
        }
        // Unbounded: every chunk is asked for before any answer is read.
        let (tx, rx) = unbounded::<Imported>();
        let mut asked = 0;
        for (worker, records) in self.workers.iter().zip(per_worker) {
            for chunk in records.chunks(COMMAND_CHUNK) {
                let command = WorkerCommand::Import {
                    records: chunk.to_vec(),
                    reply: tx.clone(),
                };
                if worker.send(command).is_ok() {
                    asked += 1;
                }
            }
        }
        let mut installed = 0u64;
        let mut owners = Vec::new();
        for _ in 0..asked {
            let Ok(imported) = rx.recv_timeout(CUT_TIMEOUT) else {
                break;
            };
            for refused in &imported.refused {
                tracing::warn!(%refused, "handover: connection refused");
            }
            installed += imported.keys.len() as u64;
            let owner = Owner {
                node: self.node.get(),
                worker: imported.worker,
            };
            owners.extend(imported.keys.iter().flat_map(|&(f, r)| [(f, owner), (r, owner)]));
        }
        let version = self.clock.stamp();
        for chunk in owners.chunks(COMMAND_CHUNK) {
            for worker in self.workers {
                let _ = worker.send(WorkerCommand::Owners {
                    version,
                    owners: chunk.to_vec(),
                });
            }
        }
        // The cut's acknowledgement lets the old owner send the packets it
        // held: every core here must know by then which core holds each
        // connection, or it would send them back. A report request queued
        // behind the entries answers once they are applied.
        let (done, reports) = unbounded();
        let barriers = self
            .workers
            .iter()
            .filter(|worker| worker.send(WorkerCommand::Report(done.clone())).is_ok())
            .count();
        drop(done);
        for _ in 0..barriers {
            if reports.recv_timeout(CUT_TIMEOUT).is_err() {
                tracing::warn!("handover: a worker did not confirm the new owners in time");
                break;
            }
        }
        installed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        control::flow::tests::{rewrite_action, v2_record, v4_key},
        scope::{HashParams, Scope},
    };
    use std::thread::JoinHandle;

    /// A worker that installs whatever it is asked to; returns what it got.
    fn worker() -> (Sender<WorkerCommand>, JoinHandle<Vec<FlowRecordV2>>) {
        let (tx, rx) = crossbeam::channel::unbounded();
        let thread = std::thread::spawn(move || {
            let mut installed = Vec::new();
            for command in rx {
                if let WorkerCommand::Import { records, reply } = command {
                    let keys = records
                        .iter()
                        .map(|r: &FlowRecordV2| (FlowKey::from(&r.key), FlowKey::from(&r.key).reversed()))
                        .collect();
                    installed.extend(records);
                    let _ = reply.send(Imported {
                        worker: 0,
                        keys,
                        refused: Vec::new(),
                    });
                }
            }
            installed
        });
        (tx, thread)
    }

    fn view() -> NodeView {
        let hash = HashParams::default();
        NodeView::new(1, hash, Scope::initial(hash.buckets, &[0, 1]).unwrap(), 1, Vec::new())
    }

    fn record(last_octet: u8, packets: u64) -> FlowRecordV2 {
        let mut r = v2_record(v4_key(last_octet), rewrite_action());
        r.counters.packets = packets;
        r
    }

    const SERIAL: MigrationSerial = MigrationSerial(3);

    fn announce(flows: u64) -> Body {
        Body::TableAnnounce(TableAnnounce {
            serial: SERIAL,
            flows,
            bytes_estimate: 0,
            record_version: RecordVersion::V2,
        })
    }

    #[test]
    fn the_cut_installs_the_snapshot_with_its_deltas_applied_in_order() {
        let (tx, thread) = worker();
        let (view, clock) = (view(), VersionClock::default());
        let workers = [tx];
        let mut receiver = Receiver::new(NodeId::new(1).unwrap(), &clock, 16, &view, &workers);
        let snapshot = [record(1, 1), record(2, 1), record(3, 1)];
        let deltas = vec![
            DeltaOp::Update(WireRecord::V2(record(2, 9))),
            DeltaOp::Delete(v4_key(3)),
            DeltaOp::Insert(WireRecord::V2(record(4, 1))),
            // The delete of a reverse key matches nothing here.
            DeltaOp::Delete(v4_key(99)),
        ];
        for body in [
            announce(3),
            Body::FlowRecords(FlowRecords {
                serial: SERIAL,
                chunk: 0,
                records: snapshot.iter().copied().map(WireRecord::V2).collect(),
            }),
            Body::FlowDelta(FlowDelta {
                serial: SERIAL,
                seq: 0,
                ops: deltas,
            }),
        ] {
            assert_eq!(receiver.handle(&body), None);
        }
        let answer = receiver.handle(&Body::Cut(Cut {
            serial: SERIAL,
            chunks: 1,
            delta_batches: 1,
            version: 77,
        }));
        assert_eq!(
            answer,
            Some(Body::CutAck(CutAck {
                serial: SERIAL,
                flows: 3
            }))
        );
        drop(workers);
        let mut installed: Vec<(WireFlowKey, u64)> = thread
            .join()
            .unwrap()
            .iter()
            .map(|r| (r.key, r.counters.packets))
            .collect();
        installed.sort_by_key(|(k, _)| k.src_port);
        assert_eq!(installed, vec![(v4_key(1), 1), (v4_key(2), 9), (v4_key(4), 1)]);
    }

    #[test]
    fn a_stream_out_of_order_or_short_at_the_cut_is_aborted() {
        let (tx, _thread) = worker();
        let (view, clock) = (view(), VersionClock::default());
        let workers = [tx];
        let mut receiver = Receiver::new(NodeId::new(1).unwrap(), &clock, 16, &view, &workers);
        let gap = |body: Option<Body>| {
            matches!(
                body,
                Some(Body::Abort(Abort {
                    reason: AbortReason::StreamGap { .. },
                    ..
                }))
            )
        };
        receiver.handle(&announce(1));
        let skipped = Body::FlowDelta(FlowDelta {
            serial: SERIAL,
            seq: 1,
            ops: Vec::new(),
        });
        assert!(gap(receiver.handle(&skipped)), "batch 0 never came");
        receiver.handle(&announce(1));
        let chunk = Body::FlowRecords(FlowRecords {
            serial: SERIAL,
            chunk: 0,
            records: vec![WireRecord::V2(record(1, 1))],
        });
        assert_eq!(receiver.handle(&chunk), None);
        let short = Body::Cut(Cut {
            serial: SERIAL,
            chunks: 2,
            delta_batches: 0,
            version: 1,
        });
        assert!(gap(receiver.handle(&short)), "a chunk is missing at the cut");
        let late = Body::Cut(Cut {
            serial: SERIAL,
            chunks: 1,
            delta_batches: 0,
            version: 1,
        });
        assert!(gap(receiver.handle(&late)), "the aborted stream is gone");
    }

    fn over_capacity(body: Option<Body>) -> bool {
        matches!(
            body,
            Some(Body::Abort(Abort {
                reason: AbortReason::OverCapacity { limit: 16, .. },
                ..
            }))
        )
    }

    fn chunk(chunk: u32, first: u8, count: u8) -> Body {
        Body::FlowRecords(FlowRecords {
            serial: SERIAL,
            chunk,
            records: (first..first + count).map(|i| WireRecord::V2(record(i, 1))).collect(),
        })
    }

    #[test]
    fn a_stream_over_the_bound_or_over_its_announcement_is_aborted_and_forgotten() {
        let (tx, _thread) = worker();
        let (view, clock) = (view(), VersionClock::default());
        let workers = [tx];
        let mut receiver = Receiver::new(NodeId::new(1).unwrap(), &clock, 16, &view, &workers);
        // An announcement of more than the bound allocates nothing.
        assert!(over_capacity(receiver.handle(&announce(u64::MAX))));
        assert!(receiver.incoming.is_none());
        assert!(over_capacity(receiver.handle(&announce(17))));
        // The pre-sizing follows the announcement, within the bound.
        assert_eq!(receiver.handle(&announce(16)), None);
        assert!(receiver.incoming.as_ref().unwrap().records.capacity() < 64);
        // Records beyond the announced count end the stream.
        assert_eq!(receiver.handle(&announce(4)), None);
        assert_eq!(receiver.handle(&chunk(0, 1, 3)), None);
        assert!(over_capacity(receiver.handle(&chunk(1, 4, 2))));
        assert!(receiver.incoming.is_none(), "the stream is forgotten");
        // Changes that grow the copy over the bound end it too.
        assert_eq!(receiver.handle(&announce(16)), None);
        assert_eq!(receiver.handle(&chunk(0, 1, 16)), None);
        let grow = Body::FlowDelta(FlowDelta {
            serial: SERIAL,
            seq: 0,
            ops: vec![DeltaOp::Insert(WireRecord::V2(record(100, 1)))],
        });
        assert!(over_capacity(receiver.handle(&grow)));
        assert!(receiver.incoming.is_none());
    }

    #[test]
    fn owners_installed_at_the_cut_order_after_the_senders_clock() {
        let (tx, _thread) = worker();
        let (view, clock) = (view(), VersionClock::default());
        let workers = [tx];
        let mut receiver = Receiver::new(NodeId::new(1).unwrap(), &clock, 16, &view, &workers);
        assert_eq!(receiver.handle(&announce(1)), None);
        assert_eq!(receiver.handle(&chunk(0, 1, 1)), None);
        let sender_clock = 5 << 40;
        let cut = Body::Cut(Cut {
            serial: SERIAL,
            chunks: 1,
            delta_batches: 0,
            version: sender_clock,
        });
        assert!(matches!(receiver.handle(&cut), Some(Body::CutAck(_))));
        assert!(clock.last() > sender_clock, "the install stamped after the cut");
        let broadcast = Body::OwnershipBroadcast(OwnershipBroadcast {
            serial: SERIAL,
            version: sender_clock + 10,
            changes: OwnershipChanges::Flows(Vec::new()),
        });
        assert_eq!(receiver.handle(&broadcast), None);
        assert!(clock.stamp() > sender_clock + 10);
    }
}
