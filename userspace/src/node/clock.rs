//! The logical clock that versions ownership entries: a Lamport clock
//! (Lamport, "Time, Clocks, and the Ordering of Events in a Distributed
//! System", CACM 21(7), 1978) floored by the manager's scope version.
//!
//! A version is `scope_version << 32` plus a per-node counter. Every
//! version a node receives (in `OwnerAnnounce`, `Cut`, `OwnershipBroadcast`)
//! is witnessed, so whatever a node stamps after hearing of a change orders
//! after it, whatever the hosts' wall clocks say. A flip of the scope
//! raises every node's floor past any version stamped in the scope before
//! it, which also orders a restarted node (whose counter starts over) after
//! its earlier incarnation once a flip happened between them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of a version below the scope version.
pub const COUNTER_BITS: u32 = 32;

/// A node's version clock; shared by every thread that stamps or receives
/// versions.
///
/// # Examples
///
/// ```
/// use handoff::node::clock::VersionClock;
///
/// let clock = VersionClock::default();
/// clock.enter_scope(3);
/// let first = clock.stamp();
/// assert_eq!(first, (3 << 32) + 1);
/// // A peer's later version is witnessed: the next stamp orders after it.
/// clock.witness(first + 1000);
/// assert!(clock.stamp() > first + 1000);
/// ```
#[derive(Debug, Default)]
pub struct VersionClock {
    last: AtomicU64,
}

impl VersionClock {
    /// A new version, greater than every version stamped or witnessed here
    /// before.
    pub fn stamp(&self) -> u64 {
        self.last.fetch_add(1, Ordering::AcqRel).saturating_add(1)
    }

    /// Records `version` (a peer's): later stamps order after it.
    pub fn witness(&self, version: u64) {
        self.last.fetch_max(version, Ordering::AcqRel);
    }

    /// Raises the floor to scope `version` (the manager's, increased at
    /// every flip): later stamps order after every version of the scopes
    /// before it. Scope versions past `u32::MAX` saturate.
    pub fn enter_scope(&self, version: u64) {
        self.witness(version.min(u64::from(u32::MAX)) << COUNTER_BITS);
    }

    /// The newest version stamped or witnessed.
    pub fn last(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Owner;
    use crate::node::ownership::OwnershipTable;
    use handoff_common::flow_key::FlowKey;

    #[test]
    fn stamps_increase_and_order_after_what_was_witnessed() {
        let clock = VersionClock::default();
        let a = clock.stamp();
        let b = clock.stamp();
        assert!(b > a);
        clock.witness(a);
        assert!(clock.stamp() > b, "witnessing an older version does not go back");
        clock.witness(1 << 40);
        assert!(clock.stamp() > 1 << 40);
    }

    #[test]
    fn a_flip_orders_later_stamps_after_every_stamp_of_the_scope_before() {
        let ahead = VersionClock::default();
        let behind = VersionClock::default();
        ahead.enter_scope(1);
        behind.enter_scope(1);
        // One node stamped far more often in scope 1 than the other.
        let busy = (0..100_000).map(|_| ahead.stamp()).max().unwrap();
        behind.enter_scope(2);
        assert!(behind.stamp() > busy);
        assert_eq!(behind.last() >> COUNTER_BITS, 2);
        // A scope version past 32 bits saturates instead of wrapping.
        behind.enter_scope(u64::MAX);
        assert_eq!(behind.last() >> COUNTER_BITS, u64::from(u32::MAX));
    }

    /// The wall-clock failure this clock replaces: a node whose host runs an
    /// hour ahead announced a flow; the flow moves and its inheritor's
    /// announcement must win at every peer.
    #[test]
    fn an_announcement_after_a_move_wins_whoever_stamped_more() {
        let key = FlowKey::new("10.0.0.1".parse().unwrap(), "10.0.9.1".parse().unwrap(), 1000, 80, 17);
        let (old_owner, inheritor, peer) = (
            VersionClock::default(),
            VersionClock::default(),
            VersionClock::default(),
        );
        for _ in 0..5000 {
            old_owner.stamp();
        }
        let announced = old_owner.stamp();
        peer.witness(announced);
        let mut table = OwnershipTable::new(4);
        assert!(table.set(key, Owner { node: 0, worker: 0 }, announced));
        // The cut carries the old owner's clock to the inheritor.
        let cut = old_owner.stamp();
        inheritor.witness(cut);
        let moved = inheritor.stamp();
        peer.witness(moved);
        assert!(table.set(key, Owner { node: 1, worker: 0 }, moved));
        // A late copy of the old announcement changes nothing.
        assert!(!table.set(key, Owner { node: 0, worker: 0 }, announced));
        assert_eq!(table.get(&key), Some(Owner { node: 1, worker: 0 }));
    }
}
