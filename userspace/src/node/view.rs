//! What every worker of a node must agree on, published as one immutable
//! value and swapped whole when it changes: the hash parameters, the scope
//! (bucket -> node), the node's bucket -> worker map, and the peers' MACs.

use crate::{
    flow::Owner,
    scope::{maglev, HashParams, Scope, WeightedMember},
};
use handoff_common::flow_key::FlowKey;

/// Added to worker indices before they enter Maglev (see [`NodeView::new`]).
const WORKER_ID_SALT: u32 = 0x576f_0000;

/// The node's view of the cluster.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// This node's id.
    pub node: u16,
    /// How flows map to buckets (the edge's parameters).
    pub hash: HashParams,
    /// Bucket -> node.
    pub scope: Scope,
    /// Bucket -> worker of this node.
    pub worker_of_bucket: Vec<u8>,
    /// This node's workers.
    pub workers: u8,
    /// Node id -> MAC on the fabric.
    pub peer_macs: Vec<Option<[u8; 6]>>,
    /// Bucket -> node by the scope before the last flip, for a short while
    /// after it (see [`NodeView::previous_owner`]).
    pub previous: Option<std::sync::Arc<Vec<u32>>>,
}

impl NodeView {
    /// A view with `workers` workers sharing the buckets evenly.
    pub fn new(node: u16, hash: HashParams, scope: Scope, workers: u8, peer_macs: Vec<Option<[u8; 6]>>) -> Self {
        // Salted ids: with the nodes' own ids (0, 1, ...) the worker table
        // would follow the same Maglev permutations as the scope, and a
        // node's buckets would nearly all fall to its first worker.
        let members: Vec<WeightedMember> = (0..workers.max(1) as u32)
            .map(|w| WeightedMember {
                id: WORKER_ID_SALT + w,
                weight: 1,
            })
            .collect();
        let worker_of_bucket = maglev::build(hash.buckets, &members, None)
            .map(|t| t.into_iter().map(|id| id.wrapping_sub(WORKER_ID_SALT) as u8).collect())
            .unwrap_or_else(|_| vec![0; hash.buckets as usize]);
        Self {
            node,
            hash,
            scope,
            worker_of_bucket,
            workers: workers.max(1),
            peer_macs,
            previous: None,
        }
    }

    /// This view with `next` as the scope, remembering the current one as
    /// the previous, except the buckets of `dead` members: nothing is asked
    /// of them.
    pub fn flipped_to(&self, next: Scope, dead: &[u16]) -> Self {
        let previous = self
            .scope
            .table
            .iter()
            .map(|&owner| {
                if dead.iter().any(|&d| u32::from(d) == owner) {
                    crate::scope::maglev::UNOWNED
                } else {
                    owner
                }
            })
            .collect();
        Self {
            previous: Some(std::sync::Arc::new(previous)),
            scope: next,
            ..self.clone()
        }
    }

    /// This view without the previous scope.
    pub fn settled(&self) -> Self {
        Self {
            previous: None,
            ..self.clone()
        }
    }

    /// The node that owned `key`'s bucket before the last flip, if it is
    /// another node than the owner now. Right after a flip, the old owner
    /// may still create connections in the bucket (it has not adopted the
    /// flip yet) whose announcements are still on their way: their packets
    /// go there, not to a fresh connection here.
    #[inline]
    pub fn previous_owner(&self, key: &FlowKey) -> Option<u16> {
        let previous = self.previous.as_ref()?;
        let bucket = self.hash.bucket(key);
        let before = *previous.get(bucket as usize)?;
        (before != self.scope.owner(bucket) && before != crate::scope::maglev::UNOWNED).then_some(before as u16)
    }

    /// The owner of `key` by the scope alone.
    #[inline]
    pub fn owner_by_scope(&self, key: &FlowKey) -> Owner {
        let bucket = self.hash.bucket(key);
        Owner {
            node: self.scope.owner(bucket) as u16,
            worker: self.worker_of_bucket.get(bucket as usize).copied().unwrap_or(0),
        }
    }

    /// The fabric MAC of `node`.
    #[inline]
    pub fn peer_mac(&self, node: u16) -> Option<[u8; 6]> {
        self.peer_macs.get(node as usize).copied().flatten()
    }
}
