//! The wire forms of the hash parameters and the hash scope.

use handoff_common::names::limits::MAX_BUCKETS;
use serde::{Deserialize, Serialize};

use super::ids::{Capabilities, MAX_NODE_ID};
use crate::scope::{HashParams, Scope, UNOWNED};

/// [`HashParams`] on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireHashParams {
    /// Buckets per scope (a power of two).
    pub buckets: u32,
    /// Both directions of a connection hash alike.
    pub symmetric: bool,
    /// Hash seed.
    pub seed: u32,
}

impl From<HashParams> for WireHashParams {
    fn from(p: HashParams) -> Self {
        Self {
            buckets: p.buckets,
            symmetric: p.symmetric,
            seed: p.seed,
        }
    }
}

impl From<WireHashParams> for HashParams {
    fn from(p: WireHashParams) -> Self {
        Self {
            buckets: p.buckets,
            symmetric: p.symmetric,
            seed: p.seed,
        }
    }
}

/// `len` consecutive buckets with one owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRun {
    /// Owner (a node id, or [`UNOWNED`]).
    pub owner: u32,
    /// Buckets in the run, at least one.
    pub len: u32,
}

/// A bucket -> owner table. A Maglev table interleaves its members, so runs
/// help only for tables dominated by long stretches (one member, or none);
/// [`ScopeTable::compact`] picks whichever form is smaller.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScopeTable {
    /// One owner per bucket.
    Dense(Vec<u32>),
    /// Run-length encoded, in bucket order. Sent only to peers with
    /// [`Capabilities::SCOPE_RUNS`].
    Runs(Vec<BucketRun>),
}

/// A table that does not describe a valid scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScopeTableError {
    /// More buckets than any edge supports.
    #[error("scope table has {buckets} buckets, more than the maximum {MAX_BUCKETS}")]
    TooManyBuckets {
        /// Buckets counted before giving up (at least the maximum plus one).
        buckets: u64,
    },
    /// The edge masks the hash, so the count must be a power of two.
    #[error("scope table has {buckets} buckets, not a power of two")]
    NotPowerOfTwo {
        /// Buckets in the table.
        buckets: u64,
    },
    /// A run of no buckets: never produced by an encoder.
    #[error("run {index} of the scope table is empty")]
    EmptyRun {
        /// Position of the run.
        index: usize,
    },
    /// An owner that is neither a node id nor [`UNOWNED`].
    #[error("scope table names owner {owner}, which is not a node id")]
    InvalidOwner {
        /// The value found.
        owner: u32,
    },
}

fn check_owner(owner: u32) -> Result<(), ScopeTableError> {
    if owner == UNOWNED || owner <= u32::from(MAX_NODE_ID) {
        Ok(())
    } else {
        Err(ScopeTableError::InvalidOwner { owner })
    }
}

fn check_bucket_count(buckets: u64) -> Result<(), ScopeTableError> {
    if buckets > u64::from(MAX_BUCKETS) {
        Err(ScopeTableError::TooManyBuckets { buckets })
    } else if !buckets.is_power_of_two() {
        Err(ScopeTableError::NotPowerOfTwo { buckets })
    } else {
        Ok(())
    }
}

impl ScopeTable {
    /// The smaller encoding of `table`. A run costs two varints and a dense
    /// entry one, so runs win when there are fewer than half as many.
    pub fn compact(table: &[u32]) -> Self {
        let mut runs: Vec<BucketRun> = Vec::new();
        for &owner in table {
            if let Some(run) = runs.last_mut().filter(|run| run.owner == owner) {
                run.len += 1;
            } else if runs.len() * 2 >= table.len() {
                return Self::Dense(table.to_vec());
            } else {
                runs.push(BucketRun { owner, len: 1 });
            }
        }
        Self::Runs(runs)
    }

    /// Buckets the table covers, counted without expanding it. Stops counting
    /// past [`MAX_BUCKETS`] so a hostile run list cannot overflow.
    fn bucket_count(&self) -> Result<u64, ScopeTableError> {
        match self {
            Self::Dense(owners) => Ok(owners.len() as u64),
            Self::Runs(runs) => {
                let mut total = 0u64;
                for (index, run) in runs.iter().enumerate() {
                    if run.len == 0 {
                        return Err(ScopeTableError::EmptyRun { index });
                    }
                    total += u64::from(run.len);
                    if total > u64::from(MAX_BUCKETS) {
                        return Err(ScopeTableError::TooManyBuckets { buckets: total });
                    }
                }
                Ok(total)
            }
        }
    }

    /// The owner of every bucket. Validates the size before allocating.
    pub fn expand(&self) -> Result<Vec<u32>, ScopeTableError> {
        let buckets = self.bucket_count()?;
        check_bucket_count(buckets)?;
        match self {
            Self::Dense(owners) => {
                owners.iter().try_for_each(|&o| check_owner(o))?;
                Ok(owners.clone())
            }
            Self::Runs(runs) => {
                let mut table = Vec::with_capacity(buckets as usize);
                for run in runs {
                    check_owner(run.owner)?;
                    table.extend(std::iter::repeat_n(run.owner, run.len as usize));
                }
                Ok(table)
            }
        }
    }
}

/// A versioned scope on the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireScope {
    /// The scope's version.
    pub version: u64,
    /// Its table.
    pub table: ScopeTable,
}

impl WireScope {
    /// `scope` in the smallest form the receiver (with capabilities `peer`) reads.
    pub fn new(scope: &Scope, peer: Capabilities) -> Self {
        let table = if peer.contains(Capabilities::SCOPE_RUNS) {
            ScopeTable::compact(&scope.table)
        } else {
            ScopeTable::Dense(scope.table.clone())
        };
        Self {
            version: scope.version,
            table,
        }
    }

    /// The scope, validated.
    pub fn to_scope(&self) -> Result<Scope, ScopeTableError> {
        Ok(Scope {
            version: self.version,
            table: self.table.expand()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded_len(scope: &WireScope) -> usize {
        postcard::to_allocvec(scope).expect("encodes").len()
    }

    #[test]
    fn a_full_size_maglev_scope_round_trips_well_under_the_frame_limit() {
        let scope = Scope::initial(1 << 16, &[1, 2, 3]).expect("valid members");
        let wire = WireScope::new(&scope, Capabilities::THIS_BUILD);
        assert!(matches!(wire.table, ScopeTable::Dense(_)));
        assert!(encoded_len(&wire) < 70_000, "{}", encoded_len(&wire));
        assert_eq!(wire.to_scope(), Ok(scope));
    }

    #[test]
    fn long_stretches_encode_as_runs_only_for_peers_that_read_them() {
        let mut table = vec![UNOWNED; 1 << 16];
        table[..1000].fill(4);
        let scope = Scope { version: 9, table };
        let runs = WireScope::new(&scope, Capabilities::SCOPE_RUNS);
        assert_eq!(
            runs.table,
            ScopeTable::Runs(vec![
                BucketRun { owner: 4, len: 1000 },
                BucketRun {
                    owner: UNOWNED,
                    len: (1 << 16) - 1000
                },
            ])
        );
        assert!(encoded_len(&runs) < 20);
        assert_eq!(runs.to_scope().as_ref(), Ok(&scope));
        let dense = WireScope::new(&scope, Capabilities::FLOW_RECORD_V1);
        assert!(matches!(dense.table, ScopeTable::Dense(_)));
        assert_eq!(dense.to_scope(), Ok(scope));
    }

    #[test]
    fn hostile_run_lists_are_rejected_before_allocating() {
        let huge = ScopeTable::Runs(vec![
            BucketRun {
                owner: 1,
                len: u32::MAX
            };
            1000
        ]);
        assert_eq!(
            huge.expand(),
            Err(ScopeTableError::TooManyBuckets {
                buckets: u64::from(u32::MAX)
            })
        );
        let empty = ScopeTable::Runs(vec![BucketRun { owner: 1, len: 4 }, BucketRun { owner: 2, len: 0 }]);
        assert_eq!(empty.expand(), Err(ScopeTableError::EmptyRun { index: 1 }));
    }

    #[test]
    fn bucket_counts_must_be_powers_of_two_and_owners_node_ids() {
        assert_eq!(
            ScopeTable::Dense(vec![1; 3]).expand(),
            Err(ScopeTableError::NotPowerOfTwo { buckets: 3 })
        );
        assert_eq!(
            ScopeTable::Runs(vec![]).expand(),
            Err(ScopeTableError::NotPowerOfTwo { buckets: 0 })
        );
        assert_eq!(
            ScopeTable::Dense(vec![1, 0x1_0000]).expand(),
            Err(ScopeTableError::InvalidOwner { owner: 0x1_0000 })
        );
    }

    #[test]
    fn hash_params_convert_both_ways() {
        let p = HashParams {
            buckets: 1024,
            symmetric: true,
            seed: 77,
        };
        assert_eq!(HashParams::from(WireHashParams::from(p)), p);
    }
}
