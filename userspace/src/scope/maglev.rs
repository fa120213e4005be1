//! Consistent bucket assignment in the spirit of Maglev (Eisenbud et al.,
//! NSDI 2016), with two guarantees plain Maglev lacks:
//!
//! * **Minimal disruption.** A rebuild keeps every bucket whose owner is still
//!   present and under its quota. Removing a member moves exactly that
//!   member's buckets; adding one moves only buckets that go to the newcomer.
//! * **Exact balance.** Each member's share is its weighted quota, rounded by
//!   largest remainder, so shares differ from even by at most one bucket.
//!
//! Members fill the free buckets round-robin in the order of their own
//! Maglev permutation (`offset + j * skip mod B`), which spreads each member's
//! buckets pseudo-randomly over the table. `B` is a power of two, so any odd
//! `skip` generates a full permutation.

use handoff_common::hash::murmur3_words;

/// An owner of buckets and its weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WeightedMember {
    /// Member id, the value stored in the table.
    pub id: u32,
    /// Relative weight (> 0).
    pub weight: u32,
}

/// Value of a bucket with no owner.
pub const UNOWNED: u32 = u32::MAX;

const OFFSET_SEED: u32 = 0x6d61_676c; // "magl"
const SKIP_SEED: u32 = 0x6576_3121;

/// One member's preference order over the buckets.
#[derive(Clone, Copy, Debug)]
struct Permutation {
    offset: u64,
    skip: u64,
    skip_inverse: u64,
    mask: u64,
}

impl Permutation {
    fn new(id: u32, buckets: u32) -> Self {
        let mask = buckets as u64 - 1;
        let words = [id, 0x68616e64, 0x6f666621, 0, 0, 0, 0, 0, 0, 0];
        let offset = murmur3_words(&words, OFFSET_SEED) as u64 & mask;
        let skip = ((murmur3_words(&words, SKIP_SEED) as u64) << 1 | 1) & mask.max(1);
        let skip = if buckets == 1 { 0 } else { skip };
        Self {
            offset,
            skip,
            skip_inverse: odd_inverse(skip.max(1)) & mask,
            mask,
        }
    }

    /// The bucket at position `j` of the preference order.
    fn bucket(&self, j: u64) -> usize {
        (self.offset.wrapping_add(j.wrapping_mul(self.skip)) & self.mask) as usize
    }

    /// The position of `bucket` in the preference order.
    fn rank(&self, bucket: usize) -> u64 {
        ((bucket as u64)
            .wrapping_sub(self.offset)
            .wrapping_mul(self.skip_inverse))
            & self.mask
    }
}

/// The multiplicative inverse of an odd number modulo 2^64 (Newton's iteration;
/// each step doubles the correct low bits).
fn odd_inverse(a: u64) -> u64 {
    let mut x = a;
    for _ in 0..6 {
        x = x.wrapping_mul(2u64.wrapping_sub(a.wrapping_mul(x)));
    }
    x
}

/// Bucket quotas by weight: floor shares, then one more for the largest
/// remainders (ties broken by id, so the result is deterministic).
fn quotas(members: &[WeightedMember], buckets: u32) -> Vec<u32> {
    let total: u64 = members.iter().map(|m| m.weight as u64).sum();
    let mut quota: Vec<u32> = members
        .iter()
        .map(|m| (buckets as u64 * m.weight as u64 / total) as u32)
        .collect();
    let assigned: u32 = quota.iter().sum();
    let mut by_remainder: Vec<usize> = (0..members.len()).collect();
    by_remainder.sort_by_key(|&i| {
        let remainder = buckets as u64 * members[i].weight as u64 % total;
        (std::cmp::Reverse(remainder), members[i].id)
    });
    for &i in by_remainder.iter().take((buckets - assigned) as usize) {
        quota[i] += 1;
    }
    quota
}

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// Bucket count is not a power of two.
    #[error("bucket count {0} is not a power of two")]
    BucketsNotPowerOfTwo(u32),
    /// A weight of zero.
    #[error("member {0} has weight 0")]
    ZeroWeight(u32),
    /// The same id twice.
    #[error("member {0} is listed twice")]
    DuplicateMember(u32),
    /// The reserved id.
    #[error("member id {UNOWNED} is reserved for unowned buckets")]
    ReservedId,
    /// The previous table has a different size.
    #[error("previous table has {got} buckets, expected {expected}")]
    PreviousSize {
        /// Size given.
        got: usize,
        /// Size expected.
        expected: u32,
    },
}

/// Builds a table of `buckets` entries over `members`, keeping as much of
/// `previous` as the quotas allow. With no members every bucket is [`UNOWNED`].
pub fn build(buckets: u32, members: &[WeightedMember], previous: Option<&[u32]>) -> Result<Vec<u32>, BuildError> {
    if !buckets.is_power_of_two() {
        return Err(BuildError::BucketsNotPowerOfTwo(buckets));
    }
    let mut seen = std::collections::HashSet::new();
    for m in members {
        if m.weight == 0 {
            return Err(BuildError::ZeroWeight(m.id));
        }
        if m.id == UNOWNED {
            return Err(BuildError::ReservedId);
        }
        if !seen.insert(m.id) {
            return Err(BuildError::DuplicateMember(m.id));
        }
    }
    if let Some(p) = previous {
        if p.len() != buckets as usize {
            return Err(BuildError::PreviousSize {
                got: p.len(),
                expected: buckets,
            });
        }
    }
    let mut table = vec![UNOWNED; buckets as usize];
    if members.is_empty() {
        return Ok(table);
    }
    let quota = quotas(members, buckets);
    let perms: Vec<Permutation> = members.iter().map(|m| Permutation::new(m.id, buckets)).collect();
    let index_of: std::collections::HashMap<u32, usize> = members.iter().enumerate().map(|(i, m)| (m.id, i)).collect();
    let mut held = vec![0u32; members.len()];

    if let Some(previous) = previous {
        // Keep surviving assignments; a member over quota keeps the buckets it
        // prefers most (lowest rank) and frees the rest.
        let mut kept: Vec<Vec<usize>> = vec![Vec::new(); members.len()];
        for (bucket, owner) in previous.iter().enumerate() {
            if let Some(&i) = index_of.get(owner) {
                kept[i].push(bucket);
            }
        }
        for (i, buckets_of) in kept.iter_mut().enumerate() {
            if buckets_of.len() > quota[i] as usize {
                buckets_of.sort_by_key(|&b| perms[i].rank(b));
                buckets_of.truncate(quota[i] as usize);
            }
            for &b in buckets_of.iter() {
                table[b] = members[i].id;
            }
            held[i] = buckets_of.len() as u32;
        }
    }

    // Round-robin fill of the free buckets in each member's preference order.
    let mut next = vec![0u64; members.len()];
    let mut free = table.iter().filter(|&&o| o == UNOWNED).count();
    while free > 0 {
        for i in 0..members.len() {
            if held[i] >= quota[i] {
                continue;
            }
            loop {
                let bucket = perms[i].bucket(next[i]);
                next[i] += 1;
                if table[bucket] == UNOWNED {
                    table[bucket] = members[i].id;
                    held[i] += 1;
                    free -= 1;
                    break;
                }
            }
            if free == 0 {
                break;
            }
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn equal(ids: impl IntoIterator<Item = u32>) -> Vec<WeightedMember> {
        ids.into_iter().map(|id| WeightedMember { id, weight: 1 }).collect()
    }

    fn counts(table: &[u32]) -> std::collections::BTreeMap<u32, usize> {
        let mut c = std::collections::BTreeMap::new();
        for &o in table {
            *c.entry(o).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn odd_inverse_inverts() {
        for a in [1u64, 3, 5, 0xdead_beef, u64::MAX] {
            assert_eq!(a.wrapping_mul(odd_inverse(a)), 1);
        }
    }

    #[test]
    fn permutation_visits_every_bucket_once_and_rank_inverts_it() {
        for buckets in [2u32, 8, 1024] {
            let p = Permutation::new(42, buckets);
            let mut seen = vec![false; buckets as usize];
            for j in 0..buckets as u64 {
                let b = p.bucket(j);
                assert!(!seen[b]);
                seen[b] = true;
                assert_eq!(p.rank(b), j);
            }
        }
    }

    #[test]
    fn load_within_one_percent_of_even_for_up_to_64_members() {
        let buckets = 65536;
        for n in 1..=64u32 {
            let table = build(buckets, &equal(0..n), None).unwrap();
            let even = buckets as f64 / n as f64;
            for (&id, &count) in &counts(&table) {
                assert!(id < n, "unowned bucket with {n} members");
                let off = (count as f64 - even).abs() / even;
                assert!(off <= 0.01, "n={n} member {id} has {count}, even is {even}");
            }
        }
    }

    #[test]
    fn removing_a_member_moves_only_its_buckets() {
        let buckets = 65536;
        for n in [2u32, 3, 5, 16, 64] {
            let before = build(buckets, &equal(0..n), None).unwrap();
            for removed in [0, n / 2, n - 1] {
                let rest: Vec<u32> = (0..n).filter(|&i| i != removed).collect();
                let after = build(buckets, &equal(rest.iter().copied()), Some(&before)).unwrap();
                for (b, (&old, &new)) in before.iter().zip(&after).enumerate() {
                    if old != removed {
                        assert_eq!(old, new, "bucket {b} moved from surviving member {old}");
                    } else {
                        assert_ne!(new, removed);
                    }
                }
                let even = buckets as f64 / (n - 1).max(1) as f64;
                for &c in counts(&after).values() {
                    assert!((c as f64 - even).abs() / even <= 0.01);
                }
            }
        }
    }

    #[test]
    fn adding_a_member_moves_buckets_only_to_it() {
        let buckets = 4096;
        let before = build(buckets, &equal(0..4), None).unwrap();
        let after = build(buckets, &equal(0..5), Some(&before)).unwrap();
        let mut moved = 0;
        for (&old, &new) in before.iter().zip(&after) {
            if old != new {
                assert_eq!(new, 4);
                moved += 1;
            }
        }
        assert_eq!(moved, counts(&after)[&4]);
        assert!((moved as i64 - 4096 / 5).abs() <= 1);
    }

    #[test]
    fn remove_then_re_add_restores_balance() {
        let buckets = 1024;
        let t0 = build(buckets, &equal(0..3), None).unwrap();
        let t1 = build(buckets, &equal([0, 2]), Some(&t0)).unwrap();
        let t2 = build(buckets, &equal(0..3), Some(&t1)).unwrap();
        let c = counts(&t2);
        assert_eq!(c.len(), 3);
        assert!(c.values().all(|&v| (341..=342).contains(&v)));
    }

    #[test]
    fn weights_set_shares() {
        let members = [WeightedMember { id: 1, weight: 1 }, WeightedMember { id: 2, weight: 3 }];
        let table = build(1024, &members, None).unwrap();
        let c = counts(&table);
        assert_eq!(c[&1], 256);
        assert_eq!(c[&2], 768);
    }

    #[test]
    fn bad_input_is_rejected() {
        assert_eq!(
            build(1000, &equal([1]), None),
            Err(BuildError::BucketsNotPowerOfTwo(1000))
        );
        assert_eq!(build(8, &equal([1, 1]), None), Err(BuildError::DuplicateMember(1)));
        assert_eq!(
            build(8, &[WeightedMember { id: 1, weight: 0 }], None),
            Err(BuildError::ZeroWeight(1))
        );
        assert_eq!(build(8, &equal([UNOWNED]), None), Err(BuildError::ReservedId));
        assert!(matches!(
            build(8, &equal([1]), Some(&[0; 4])),
            Err(BuildError::PreviousSize { .. })
        ));
        assert!(build(8, &[], None).unwrap().iter().all(|&o| o == UNOWNED));
    }

    #[test]
    fn deterministic() {
        assert_eq!(build(4096, &equal(0..7), None), build(4096, &equal(0..7), None));
    }
}
