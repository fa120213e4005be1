//! The hash scope: which member owns which bucket.
//!
//! The edge sprays by it, the nodes use it to find a flow's owner, and the
//! migration protocol moves a node's buckets by publishing a new version.
//! Everything here is pure logic; `handoff_loader::EdgeProgram` writes tables
//! into the kernel.

pub mod maglev;

use handoff_common::{
    flow_key::FlowKey,
    hash::{bucket_of, flow_hash, HashMode},
};
pub use maglev::{BuildError, WeightedMember, UNOWNED};
use serde::{Deserialize, Serialize};

/// How flows map to buckets. The edge and every node must agree on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashParams {
    /// Buckets per scope (a power of two).
    pub buckets: u32,
    /// Hash both directions of a connection alike.
    pub symmetric: bool,
    /// Hash seed.
    pub seed: u32,
}

impl HashParams {
    /// The kernel-side mode value.
    pub fn mode(&self) -> HashMode {
        if self.symmetric {
            HashMode::Symmetric
        } else {
            HashMode::Directional
        }
    }

    /// The bucket of a flow, bit-identical to the edge's XDP program.
    pub fn bucket(&self, key: &FlowKey) -> u32 {
        bucket_of(flow_hash(key, self.mode(), self.seed), self.buckets - 1)
    }
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            buckets: handoff_common::names::limits::DEFAULT_BUCKETS,
            symmetric: false,
            seed: 0,
        }
    }
}

/// A versioned bucket -> member table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    /// Increases with every published change.
    pub version: u64,
    /// Owner of each bucket, [`UNOWNED`] for none.
    pub table: Vec<u32>,
}

impl Scope {
    /// A first scope over `members`.
    pub fn initial(buckets: u32, members: &[u32]) -> Result<Self, BuildError> {
        Ok(Self {
            version: 1,
            table: maglev::build(buckets, &equal_weights(members), None)?,
        })
    }

    /// The next version over `members`, moving as few buckets as possible.
    pub fn rebuilt(&self, members: &[u32]) -> Result<Self, BuildError> {
        Ok(Self {
            version: self.version + 1,
            table: maglev::build(self.table.len() as u32, &equal_weights(members), Some(&self.table))?,
        })
    }

    /// The owner of `bucket`.
    pub fn owner(&self, bucket: u32) -> u32 {
        self.table.get(bucket as usize).copied().unwrap_or(UNOWNED)
    }

    /// Buckets owned by `member`.
    pub fn buckets_of(&self, member: u32) -> impl Iterator<Item = u32> + '_ {
        self.table
            .iter()
            .enumerate()
            .filter(move |(_, &o)| o == member)
            .map(|(b, _)| b as u32)
    }

    /// Members that own at least one bucket, sorted.
    pub fn members(&self) -> Vec<u32> {
        let mut m: Vec<u32> = self.table.iter().copied().filter(|&o| o != UNOWNED).collect();
        m.sort_unstable();
        m.dedup();
        m
    }

    /// Buckets each member takes over from another in `next`, by member:
    /// its keys are the members that gain buckets.
    pub fn gains(&self, next: &Scope) -> std::collections::BTreeMap<u32, usize> {
        let mut gains = std::collections::BTreeMap::new();
        for (_, _, new) in self.moves(next) {
            *gains.entry(new).or_default() += 1;
        }
        gains
    }

    /// A fingerprint of the table (64-bit FNV-1a over the owners in bucket
    /// order), so operators can compare two scopes by one value: the edge's
    /// before and after a restart, say.
    pub fn digest(&self) -> u64 {
        self.table
            .iter()
            .flat_map(|owner| owner.to_le_bytes())
            .fold(0xcbf2_9ce4_8422_2325, |h, byte| {
                (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
            })
    }

    /// `(bucket, old owner, new owner)` for every bucket that differs.
    pub fn moves<'a>(&'a self, next: &'a Scope) -> impl Iterator<Item = (u32, u32, u32)> + 'a {
        self.table
            .iter()
            .zip(&next.table)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (&a, &b))| (i as u32, a, b))
    }
}

/// Members in id order: a table depends only on the set of members, so the
/// edge and every node compute the same one from the same set.
fn equal_weights(members: &[u32]) -> Vec<WeightedMember> {
    let mut ids = members.to_vec();
    ids.sort_unstable();
    ids.into_iter().map(|id| WeightedMember { id, weight: 1 }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebuilt_without_a_member_moves_only_its_buckets_and_bumps_version() {
        let s1 = Scope::initial(1024, &[1, 2, 3]).unwrap();
        let s2 = s1.rebuilt(&[1, 3]).unwrap();
        assert_eq!(s2.version, 2);
        assert!(s1.moves(&s2).all(|(_, old, new)| old == 2 && new != 2));
        assert_eq!(s1.moves(&s2).count(), s1.buckets_of(2).count());
        assert_eq!(s2.members(), vec![1, 3]);
        let gains = s1.gains(&s2);
        assert_eq!(gains.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(gains.values().sum::<usize>(), s1.buckets_of(2).count());
    }

    #[test]
    fn the_digest_follows_the_table_not_the_version() {
        let s1 = Scope::initial(1024, &[1, 2, 3]).unwrap();
        let same = Scope {
            version: 7,
            ..s1.clone()
        };
        assert_eq!(s1.digest(), same.digest());
        let mut one_moved = s1.clone();
        one_moved.table[5] = 9;
        assert_ne!(s1.digest(), one_moved.digest());
        let empty = Scope {
            version: 1,
            table: vec![],
        };
        assert_eq!(empty.digest(), 0xcbf2_9ce4_8422_2325, "FNV-1a offset basis");
    }

    #[test]
    fn member_order_does_not_matter() {
        assert_eq!(
            Scope::initial(512, &[3, 1, 2]).unwrap(),
            Scope::initial(512, &[1, 2, 3]).unwrap()
        );
    }

    #[test]
    fn bucket_matches_the_shared_hash() {
        let p = HashParams {
            buckets: 256,
            symmetric: true,
            seed: 9,
        };
        let k = FlowKey::new("10.0.0.1".parse().unwrap(), "10.0.9.1".parse().unwrap(), 1000, 80, 6);
        assert_eq!(p.bucket(&k), p.bucket(&k.reversed()));
        assert_eq!(p.bucket(&k), flow_hash(&k, HashMode::Symmetric, 9) & 255);
    }
}
