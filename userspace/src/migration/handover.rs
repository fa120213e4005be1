//! The table side of handing a node's connections to their inheritors, as
//! pure operations on one worker's [`FlowTable`]:
//!
//! 1. [`export`]: the connections that change owner under the next scope,
//!    each with its inheritor (the owner of its forward key's bucket in the
//!    next scope: the "spread" choice, which also agrees with where the
//!    scope sends replies once it is flipped);
//! 2. [`import`] at the inheritor;
//! 3. [`cut`]: the old owner redirects every exported connection still
//!    present, so its packets that still arrive follow the state;
//! 4. [`purge`]: once drained, the old owner forgets the redirected
//!    connections.
//!
//! Flows created between [`export`] and [`cut`] stay local: the next export
//! round picks them up.

use crate::{
    flow::{Direction, FlowError, FlowRecord, FlowTable, ImportOutcome, NetworkAction, Owner, Timestamp},
    node::view::NodeView,
};
use handoff_common::{fabric::ANY_WORKER, flow_key::FlowKey};

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
    let me = table.local_owner().node;
    table
        .records()
        .filter(|r| !matches!(r.forward.network, NetworkAction::Redirect { .. }))
        .filter_map(|record| {
            let node = next.owner_by_scope(&record.forward.key).node;
            (node != me).then_some(Outgoing {
                inheritor: Owner {
                    node,
                    worker: ANY_WORKER,
                },
                record,
            })
        })
        .collect()
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

/// Redirects every connection of `moved` still in `table` to its inheritor.
/// Returns how many were redirected (the others ended meanwhile).
pub fn cut(table: &mut FlowTable, moved: &[Outgoing]) -> usize {
    moved
        .iter()
        .filter(|m| {
            table
                .lookup(&m.record.forward.key)
                .is_some_and(|slot| table.redirect(slot, m.inheritor).is_ok())
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
