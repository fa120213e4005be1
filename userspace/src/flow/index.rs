//! The key -> slot index of a flow table: open addressing with linear probing
//! and backward-shift deletion (Knuth, TAOCP vol. 3, §6.4, Algorithm R).
//!
//! Why not `hashbrown`: its deletions leave tombstones, and once they use up
//! the spare room an insert rehashes, and *allocates a bigger table* whenever
//! the map is more than half full (`reserve_rehash`). A full flow table with
//! churn would then allocate on the packet path. Backward-shift deletion
//! leaves no tombstones, so a fixed bucket array serves forever.
//!
//! The array has at least twice as many buckets as the table has slots
//! (load <= 1/2: about 1.5 probes per hit and 2.5 per miss). A bucket holds
//! the slot and 32 bits of the key's hash; the hash picks the home bucket and
//! rejects most non-matching buckets without touching the slab. Keys live
//! only in the slab. The hasher has random keys per table, so an attacker
//! cannot aim flows at one probe run.

use ahash::RandomState;
use handoff_common::flow_key::FlowKey;

/// Marks an empty bucket.
const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    hash: u32,
    slot: u32,
}

const VACANT: Bucket = Bucket { hash: 0, slot: EMPTY };

/// Bytes of one bucket.
pub(super) const BUCKET_BYTES: usize = std::mem::size_of::<Bucket>();

#[derive(Debug)]
pub(super) struct Index {
    buckets: Vec<Bucket>,
    mask: usize,
    hasher: RandomState,
}

impl Index {
    /// The bucket count for `slots` slots: a power of two, at least `2 * slots`.
    pub(super) fn buckets_for(slots: usize) -> usize {
        (2 * slots).next_power_of_two()
    }

    /// An index for up to `slots` keys.
    pub(super) fn new(slots: usize) -> Self {
        Self::with_hasher(slots, RandomState::new())
    }

    fn with_hasher(slots: usize, hasher: RandomState) -> Self {
        let buckets = Self::buckets_for(slots);
        Self {
            buckets: vec![VACANT; buckets],
            mask: buckets - 1,
            hasher,
        }
    }

    /// An empty index for up to `slots` keys that hashes like this one.
    pub(super) fn resized(&self, slots: usize) -> Self {
        Self::with_hasher(slots, self.hasher.clone())
    }

    pub(super) fn bucket_count(&self) -> usize {
        self.buckets.len()
    }

    pub(super) fn hash(&self, key: &FlowKey) -> u32 {
        self.hasher.hash_one(key) as u32
    }

    /// The bucket holding `key`, given `key_of(slot)`.
    fn position<'k>(&self, key: &FlowKey, key_of: impl Fn(u32) -> &'k FlowKey) -> Option<usize> {
        let hash = self.hash(key);
        let mut i = hash as usize & self.mask;
        loop {
            let b = self.buckets[i];
            if b.slot == EMPTY {
                return None;
            }
            if b.hash == hash && key_of(b.slot) == key {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// The slot of `key`.
    pub(super) fn find<'k>(&self, key: &FlowKey, key_of: impl Fn(u32) -> &'k FlowKey) -> Option<u32> {
        self.position(key, key_of).map(|i| self.buckets[i].slot)
    }

    /// Adds a key known to be absent. The caller keeps the key count at or
    /// below the slot count, so an empty bucket always exists.
    pub(super) fn insert(&mut self, key: &FlowKey, slot: u32) {
        let hash = self.hash(key);
        let mut i = hash as usize & self.mask;
        while self.buckets[i].slot != EMPTY {
            i = (i + 1) & self.mask;
        }
        self.buckets[i] = Bucket { hash, slot };
    }

    /// Removes `key`, then shifts later members of its probe run back so that
    /// every key stays reachable from its home bucket without tombstones.
    pub(super) fn remove<'k>(&mut self, key: &FlowKey, key_of: impl Fn(u32) -> &'k FlowKey) {
        let Some(mut hole) = self.position(key, key_of) else {
            return;
        };
        let mut i = hole;
        loop {
            i = (i + 1) & self.mask;
            let b = self.buckets[i];
            if b.slot == EMPTY {
                break;
            }
            let home = b.hash as usize & self.mask;
            // `b` may fill the hole unless its home lies cyclically in (hole, i].
            if (i.wrapping_sub(home) & self.mask) >= (i.wrapping_sub(hole) & self.mask) {
                self.buckets[hole] = b;
                hole = i;
            }
        }
        self.buckets[hole] = VACANT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn key(n: u32) -> FlowKey {
        FlowKey::new(Ipv4Addr::from(n).into(), Ipv4Addr::new(10, 0, 0, 1).into(), 1, 2, 6)
    }

    /// Random inserts and removes against a reference model. The index is
    /// small, so probe runs form, merge and wrap around the end.
    #[test]
    fn matches_a_model_under_churn() {
        let slots = 24;
        let mut index = Index::new(slots);
        assert_eq!(index.bucket_count(), 64);
        let keys: Vec<FlowKey> = (0..slots as u32).map(key).collect();
        let key_of = |s: u32| &keys[s as usize];
        let mut present = [false; 24];
        let mut rng = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let s = (rng % slots as u64) as usize;
            if present[s] {
                index.remove(&keys[s], key_of);
            } else {
                index.insert(&keys[s], s as u32);
            }
            present[s] = !present[s];
            for (t, &p) in present.iter().enumerate() {
                let expect = p.then_some(t as u32);
                assert_eq!(index.find(&keys[t], key_of), expect);
            }
        }
    }

    #[test]
    fn removing_an_absent_key_changes_nothing() {
        let keys = [key(1), key(2)];
        let key_of = |s: u32| &keys[s as usize];
        let mut index = Index::new(2);
        index.insert(&keys[0], 0);
        index.remove(&keys[1], key_of);
        assert_eq!(index.find(&keys[0], key_of), Some(0));
        assert_eq!(index.find(&keys[1], key_of), None);
    }
}
