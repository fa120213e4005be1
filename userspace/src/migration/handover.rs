//! The table side of handing a node's connections to their inheritors, as
//! pure operations on one worker's [`FlowTable`]:
//!
//! 1. [`export`]: the snapshot, the connections that change owner under the
//!    next scope, each with its inheritor (the owner of its forward key's
//!    bucket in the next scope: the "spread" choice, which also agrees with
//!    where the scope sends replies once it is flipped); the table's journal
//!    records what changes from then on;
//! 2. [`changes`]: what the journal recorded, per leaving connection, sent
//!    after the snapshot until the cut;
//! 3. [`import`] at the inheritor;
//! 4. [`cut`]: the old owner redirects every leaving connection (those of
//!    the snapshot and those created since), after taking the journal's last
//!    changes in the same step, so the inheritor's copy misses nothing;
//! 5. [`take_back`]: if an inheritor never confirms the cut, its
//!    connections are owned here again, as before;
//! 6. [`purge`]: once drained, the old owner forgets the redirected
//!    connections.

use crate::{
    flow::{
        Direction, FlowActions, FlowError, FlowRecord, FlowTable, ImportOutcome, Journal, JournalOp, NetworkAction,
        Owner, Timestamp,
    },
    node::view::NodeView,
};
use handoff_common::{fabric::ANY_WORKER, flow_key::FlowKey};
use hashbrown::HashSet;

/// One connection leaving this worker.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    /// The inheriting node; its worker is the inheritor's choice.
    pub inheritor: Owner,
    /// The connection as it is now.
    pub record: FlowRecord,
}

/// The connections of `table` whose owner changes under `next`, each with
/// its inheritor. Connections already redirected are not exported again.
pub fn export(table: &FlowTable, next: &NodeView) -> Vec<Outgoing> {
    table
        .records()
        .filter_map(|record| leaving(&record, table, next))
        .collect()
}

/// `record` with its inheritor, if it leaves `table` under `next` and has
/// not been redirected yet.
fn leaving(record: &FlowRecord, table: &FlowTable, next: &NodeView) -> Option<Outgoing> {
    if matches!(record.forward.network, NetworkAction::Redirect { .. }) {
        return None;
    }
    let node = next.owner_by_scope(&record.forward.key).node;
    (node != table.local_owner().node).then_some(Outgoing {
        inheritor: Owner {
            node,
            worker: ANY_WORKER,
        },
        record: *record,
    })
}

/// A change since the snapshot to a leaving connection.
#[derive(Clone, Copy, Debug)]
pub enum Change {
    /// The connection as it is now: created since the snapshot (`new`) or
    /// changed.
    Upsert {
        /// The connection and its inheritor.
        outgoing: Outgoing,
        /// Created since the last batch.
        new: bool,
    },
    /// A connection that ended. `key` is one of its two keys: the journal
    /// no longer knows which, so both are sent, each to the inheritor of
    /// its own bucket, and the one that is not a forward key matches
    /// nothing there.
    Delete {
        /// The inheritor of `key`'s bucket.
        inheritor: u16,
        /// The removed entry's key.
        key: FlowKey,
    },
}

/// The changes `journal` recorded to connections of `table` that leave
/// under `next`: deletes first, then one upsert per changed connection
/// with its state now. Applied in this order after the earlier batches,
/// they give the inheritor the table as it is now (a connection removed
/// and created again in one batch is deleted, then upserted).
pub fn changes(table: &FlowTable, journal: &Journal, next: &NodeView) -> Vec<Change> {
    let me = table.local_owner().node;
    let mut out = Vec::new();
    for op in &journal.ops {
        if let JournalOp::Delete { key } = op {
            let inheritor = next.owner_by_scope(key).node;
            if inheritor != me {
                out.push(Change::Delete { inheritor, key: *key });
            }
        }
    }
    let mut seen = HashSet::with_capacity(journal.ops.len());
    for op in &journal.ops {
        let (slot, new) = match *op {
            JournalOp::Insert { slot, .. } => (slot, true),
            JournalOp::Update { slot, .. } => (slot, false),
            JournalOp::Delete { .. } => continue,
        };
        let Some(record) = table.record(slot) else { continue };
        if !seen.insert(record.forward.key) {
            continue;
        }
        if let Some(outgoing) = leaving(&record, table, next) {
            out.push(Change::Upsert { outgoing, new });
        }
    }
    out
}

/// Installs a connection handed over by another node, owned by `me` from
/// now on. `source_now` is the sender's clock when it took the record.
pub fn import(
    table: &mut FlowTable,
    mut record: FlowRecord,
    me: Owner,
    source_now: Timestamp,
    now: Timestamp,
) -> Result<ImportOutcome, FlowError> {
    record.forward.owner = me;
    record.reverse.owner = me;
    record.forward.direction = Direction::Forward;
    record.reverse.direction = Direction::Reverse;
    table.import(record, source_now, now)
}

/// A connection the cut redirected, with what it takes to take it back.
#[derive(Clone, Copy, Debug)]
pub struct CutConnection {
    /// The inheriting node.
    pub inheritor: u16,
    /// Forward key.
    pub forward: FlowKey,
    /// Reverse key.
    pub reverse: FlowKey,
    /// Its actions before the redirect.
    pub actions: FlowActions,
}

/// Redirects every connection of `table` that leaves under `next` to its
/// inheritor, those of the snapshot and those created since.
pub fn cut(table: &mut FlowTable, next: &NodeView) -> Vec<CutConnection> {
    export(table, next)
        .into_iter()
        .filter_map(|o| {
            let slot = table.lookup(&o.record.forward.key)?;
            let actions = table.redirect(slot, o.inheritor).ok()?;
            Some(CutConnection {
                inheritor: o.inheritor.node,
                forward: o.record.forward.key,
                reverse: o.record.reverse.key,
                actions,
            })
        })
        .collect()
}

/// Owns again the connections of `cut` that went to one of `inheritors`
/// and are still redirected here. Returns how many.
pub fn take_back(table: &mut FlowTable, cut: &[CutConnection], inheritors: &[u16]) -> usize {
    cut.iter()
        .filter(|c| inheritors.contains(&c.inheritor))
        .filter(|c| {
            table.lookup(&c.forward).is_some_and(|slot| {
                let still_redirected = table
                    .entry(slot)
                    .is_some_and(|e| matches!(e.network, NetworkAction::Redirect { .. }));
                still_redirected && table.reclaim(slot, c.actions).is_ok()
            })
        })
        .count()
}

/// Removes every redirected connection. Returns how many.
pub fn purge(table: &mut FlowTable) -> usize {
    let redirected: Vec<FlowKey> = table
        .records()
        .filter(|r| matches!(r.forward.network, NetworkAction::Redirect { .. }))
        .map(|r| r.forward.key)
        .collect();
    redirected
        .iter()
        .filter(|key| table.lookup(key).and_then(|slot| table.remove(slot)).is_some())
        .count()
}
