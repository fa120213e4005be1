//! Who owns a flow that this node does not hold: the design note's "lookup
//! tables indicating ownership". Filled from the owners' announcements and
//! from migrations; read on the packet path, written only by the control path.
//!
//! Bounded: at capacity the oldest entry is forgotten (counted). Versioned:
//! an announcement older than what the table holds is ignored, so a late
//! message cannot undo a newer owner.

use crate::flow::Owner;
use handoff_common::flow_key::FlowKey;
use std::collections::VecDeque;

/// An ownership lookup table.
#[derive(Debug)]
pub struct OwnershipTable {
    owners: hashbrown::HashMap<FlowKey, (Owner, u64), ahash::RandomState>,
    /// Insertion order, for forgetting the oldest at capacity. May hold keys
    /// already removed; those are skipped.
    order: VecDeque<FlowKey>,
    capacity: usize,
    forgotten: u64,
    stale: u64,
}

impl OwnershipTable {
    /// A table of at most `capacity` entries (allocated now).
    pub fn new(capacity: usize) -> Self {
        Self {
            owners: hashbrown::HashMap::with_capacity_and_hasher(capacity, ahash::RandomState::new()),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
            forgotten: 0,
            stale: 0,
        }
    }

    /// The owner of `key`, if announced.
    #[inline]
    pub fn get(&self, key: &FlowKey) -> Option<Owner> {
        self.owners.get(key).map(|(o, _)| *o)
    }

    /// Records that `owner` holds `key` as of `version`. Returns false if the
    /// table already holds a newer version.
    pub fn set(&mut self, key: FlowKey, owner: Owner, version: u64) -> bool {
        if let Some((current, held)) = self.owners.get_mut(&key) {
            if *held > version {
                self.stale += 1;
                return false;
            }
            *current = owner;
            *held = version;
            return true;
        }
        while self.owners.len() >= self.capacity {
            let Some(oldest) = self.order.pop_front() else { break };
            if self.owners.remove(&oldest).is_some() {
                self.forgotten += 1;
            }
        }
        if self.order.len() >= 2 * self.capacity {
            // Compact the order queue of keys removed since.
            let owners = &self.owners;
            self.order.retain(|k| owners.contains_key(k));
        }
        self.owners.insert(key, (owner, version));
        self.order.push_back(key);
        true
    }

    /// Forgets `key` (its flow ended).
    pub fn remove(&mut self, key: &FlowKey) {
        self.owners.remove(key);
    }

    /// Forgets every flow `node` owns (it died: their state went with it,
    /// and their packets are new flows to whoever owns them by the scope).
    /// Returns how many.
    pub fn forget_node(&mut self, node: u16) -> usize {
        let before = self.owners.len();
        self.owners.retain(|_, (owner, _)| owner.node != node);
        before - self.owners.len()
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Entries forgotten at capacity.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    /// Announcements ignored as older than the entry held.
    pub fn stale(&self) -> u64 {
        self.stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> FlowKey {
        FlowKey::new("10.0.0.1".parse().unwrap(), "10.0.9.1".parse().unwrap(), port, 80, 6)
    }

    #[test]
    fn a_failed_nodes_entries_are_forgotten_and_the_rest_stay() {
        let mut t = OwnershipTable::new(16);
        let key = |port| FlowKey::new("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), port, 80, 6);
        t.set(key(1), Owner { node: 1, worker: 0 }, 1);
        t.set(key(2), Owner { node: 2, worker: 0 }, 1);
        t.set(key(3), Owner { node: 1, worker: 1 }, 1);
        assert_eq!(t.forget_node(1), 2);
        assert_eq!((t.get(&key(1)), t.get(&key(3))), (None, None));
        assert_eq!(t.get(&key(2)), Some(Owner { node: 2, worker: 0 }));
        assert_eq!(t.forget_node(1), 0);
    }

    #[test]
    fn newer_versions_win_and_capacity_forgets_the_oldest() {
        let mut t = OwnershipTable::new(2);
        let a = Owner { node: 1, worker: 0 };
        let b = Owner { node: 2, worker: 1 };
        assert!(t.set(key(1), a, 5));
        assert!(!t.set(key(1), b, 4));
        assert_eq!((t.get(&key(1)), t.stale()), (Some(a), 1));
        assert!(t.set(key(1), b, 6));
        assert_eq!(t.get(&key(1)), Some(b));
        t.set(key(2), a, 1);
        t.set(key(3), a, 1);
        assert_eq!((t.len(), t.forgotten(), t.get(&key(1))), (2, 1, None));
        t.remove(&key(2));
        assert_eq!(t.get(&key(2)), None);
        for p in 10..100 {
            t.set(key(p), a, 1);
        }
        assert!(t.len() <= 2 && t.order.len() <= 4);
    }
}
