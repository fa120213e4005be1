//! The node-to-node fabric encapsulation.
//!
//! When a node forwards a packet to the node that owns its flow, or sends a
//! drain end-marker, it prepends this header after the Ethernet header, under
//! an EtherType of its own. The node's XDP program steers these frames to its
//! AF_XDP sockets; the edge never matches them (they are not IP).

use crate::net::{NetU16, NetU32};

/// IEEE 802 "Local Experimental EtherType 1".
pub const FABRIC_ETHERTYPE: u16 = 0x88b5;
/// Version of [`FabricHeader`].
pub const FABRIC_VERSION: u8 = 1;
/// Forwarded packets carry this many hops at most, node-to-node and
/// core-to-core crossings together; a frame beyond it is dropped and counted
/// (the loop guard). The longest legitimate path, during a handover, has
/// four: a non-owner sends it to the old owner (1), whose receiving core hands
/// it to the core holding the redirect (2), which sends it to the inheritor
/// (3), whose receiving core hands it to the core holding the connection (4).
/// Six leaves room for a scope flip in flight.
pub const FABRIC_MAX_HOPS: u8 = 6;

/// Frame kinds.
pub mod kind {
    /// An IP packet forwarded to its owner; the original packet follows.
    pub const DATA: u8 = 1;
    /// End of one drain path: nothing more of the given migration follows on it.
    pub const MARKER: u8 = 2;
}

/// The fabric header. All multi-byte fields are in network order.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct FabricHeader {
    /// [`FABRIC_VERSION`].
    pub version: u8,
    /// One of [`kind`].
    pub kind: u8,
    /// Times this packet crossed the fabric.
    pub hops: u8,
    /// Target worker (core) on the receiving node, or 0xff for "any".
    pub target_worker: u8,
    /// Sending node id.
    pub sender: NetU16,
    /// EtherType of the encapsulated packet.
    pub inner_ethertype: NetU16,
    /// Migration serial a marker belongs to; 0 for data.
    pub serial: NetU32,
    /// Sending worker (the path id of a marker).
    pub lane: NetU16,
    /// For a marker: how many lanes the sender drains, each ending with a
    /// marker of its own, so the receiver knows when all have; 0 for data.
    pub lanes: NetU16,
}
crate::assert_size!(FabricHeader, 16);

/// `target_worker` value meaning "let the receiver pick by hash".
pub const ANY_WORKER: u8 = 0xff;
