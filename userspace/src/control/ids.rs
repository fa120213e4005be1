//! Identities and small value types shared by every control message.

use std::{fmt, ops};

use serde::{Deserialize, Serialize};

/// Largest id a flow-distributor node can have. The values above it name the
/// non-node senders on the wire (see [`Sender`]), so a node can never be
/// mistaken for the manager or the operator.
pub const MAX_NODE_ID: u16 = 0xffef;

const WIRE_MANAGER: u16 = 0xffff;
const WIRE_OPERATOR: u16 = 0xfffe;

/// A flow-distributor node, `0..=MAX_NODE_ID`. Doubles as the node's member id
/// in the hash scope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct NodeId(u16);

/// A node id above [`MAX_NODE_ID`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("node id {raw:#06x} is above the largest node id {MAX_NODE_ID:#06x}")]
pub struct ReservedNodeId {
    /// The rejected value.
    pub raw: u16,
}

impl NodeId {
    /// A node id, or an error for the reserved values above [`MAX_NODE_ID`].
    pub const fn new(raw: u16) -> Result<Self, ReservedNodeId> {
        if raw <= MAX_NODE_ID {
            Ok(Self(raw))
        } else {
            Err(ReservedNodeId { raw })
        }
    }

    /// The numeric id.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl TryFrom<u16> for NodeId {
    type Error = ReservedNodeId;
    fn try_from(raw: u16) -> Result<Self, Self::Error> {
        Self::new(raw)
    }
}

impl From<NodeId> for u16 {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

/// The node's member id in [`crate::scope::Scope`] tables.
impl From<NodeId> for u32 {
    fn from(id: NodeId) -> Self {
        u32::from(id.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// Who sent a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Sender {
    /// A flow-distributor node.
    Node(NodeId),
    /// The migration manager inside the edge daemon.
    Manager,
    /// The operator CLI.
    Operator,
}

impl Sender {
    /// The 16-bit wire value.
    pub fn to_wire(self) -> u16 {
        match self {
            Sender::Node(id) => id.get(),
            Sender::Manager => WIRE_MANAGER,
            Sender::Operator => WIRE_OPERATOR,
        }
    }

    /// The sender a wire value names, or `None` for the unassigned values
    /// between [`MAX_NODE_ID`] and the manager/operator constants.
    pub fn from_wire(raw: u16) -> Option<Self> {
        match raw {
            WIRE_MANAGER => Some(Sender::Manager),
            WIRE_OPERATOR => Some(Sender::Operator),
            _ => NodeId::new(raw).ok().map(Sender::Node),
        }
    }
}

impl fmt::Display for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Sender::Node(id) => id.fmt(f),
            Sender::Manager => f.write_str("manager"),
            Sender::Operator => f.write_str("operator"),
        }
    }
}

/// One run of a process. A process picks a value that differs from every
/// earlier run's (for example its start time in nanoseconds) and keeps it until
/// it exits. Receivers only compare incarnations for equality: any other value
/// than the one a session was opened with belongs to another run of the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub u64);

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "incarnation {:#x}", self.0)
    }
}

/// One migration attempt. The manager allocates serials in increasing order
/// within its incarnation; a retry after an abort gets a new serial. 32 bits
/// wide because the fabric's drain marker carries it in a 32-bit field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MigrationSerial(pub u32);

impl fmt::Display for MigrationSerial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "migration {}", self.0)
    }
}

/// An inclusive range of protocol versions a process speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRange {
    /// Oldest version spoken.
    pub min: u16,
    /// Newest version spoken.
    pub max: u16,
}

impl VersionRange {
    /// Whether `version` is in the range.
    pub fn contains(self, version: u16) -> bool {
        (self.min..=self.max).contains(&version)
    }
}

impl fmt::Display for VersionRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..={}", self.min, self.max)
    }
}

/// An Ethernet address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Optional features a process supports, as a bit set. Bits this build does
/// not know are kept, so a set received from a newer peer survives a round
/// trip and intersects correctly.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Capabilities(u64);

const CAPABILITY_NAMES: [(Capabilities, &str); 6] = [
    (Capabilities::FLOW_RECORD_V1, "FLOW_RECORD_V1"),
    (Capabilities::FLOW_RECORD_V2, "FLOW_RECORD_V2"),
    (Capabilities::FLOW_DELTA, "FLOW_DELTA"),
    (Capabilities::OWNER_ANNOUNCE, "OWNER_ANNOUNCE"),
    (Capabilities::MARKER_DRAIN, "MARKER_DRAIN"),
    (Capabilities::SCOPE_RUNS, "SCOPE_RUNS"),
];

impl Capabilities {
    /// Can send and receive [`super::flow::FlowRecordV1`].
    pub const FLOW_RECORD_V1: Self = Self(1 << 0);
    /// Can send and receive [`super::flow::FlowRecordV2`].
    pub const FLOW_RECORD_V2: Self = Self(1 << 1);
    /// Sends and applies [`super::message::FlowDelta`] after a snapshot.
    pub const FLOW_DELTA: Self = Self(1 << 2);
    /// Sends and accepts steady-state [`super::message::OwnerAnnounce`].
    pub const OWNER_ANNOUNCE: Self = Self(1 << 3);
    /// Sends and honours per-path drain end markers on the fabric.
    pub const MARKER_DRAIN: Self = Self(1 << 4);
    /// Accepts scope tables encoded as runs ([`super::scope_wire::ScopeTable::Runs`]).
    pub const SCOPE_RUNS: Self = Self(1 << 5);

    /// Everything this build implements.
    pub const THIS_BUILD: Self = Self(
        Self::FLOW_RECORD_V1.0
            | Self::FLOW_RECORD_V2.0
            | Self::FLOW_DELTA.0
            | Self::OWNER_ANNOUNCE.0
            | Self::MARKER_DRAIN.0
            | Self::SCOPE_RUNS.0,
    );

    /// The empty set.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// A set from raw bits, unknown bits included.
    pub const fn from_bits(bits: u64) -> Self {
        Self(bits)
    }

    /// The raw bits.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// Whether every capability in `other` is in `self`.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

impl ops::BitOr for Capabilities {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

impl ops::BitAnd for Capabilities {
    type Output = Self;
    fn bitand(self, rhs: Self) -> Self {
        Self(self.0 & rhs.0)
    }
}

impl fmt::Debug for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Capabilities({self})")
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut unnamed = self.0;
        let mut first = true;
        for (cap, name) in CAPABILITY_NAMES {
            if self.contains(cap) {
                unnamed &= !cap.0;
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        if unnamed != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{unnamed:#x}")?;
        } else if first {
            f.write_str("none")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_above_the_maximum_are_rejected_also_when_decoded() {
        assert_eq!(NodeId::new(MAX_NODE_ID).map(NodeId::get), Ok(MAX_NODE_ID));
        assert_eq!(
            NodeId::new(MAX_NODE_ID + 1),
            Err(ReservedNodeId { raw: MAX_NODE_ID + 1 })
        );
        let bytes = postcard::to_allocvec(&WIRE_MANAGER).expect("a u16 encodes");
        assert!(postcard::from_bytes::<NodeId>(&bytes).is_err());
    }

    #[test]
    fn senders_round_trip_and_unassigned_values_name_nobody() {
        for sender in [
            Sender::Manager,
            Sender::Operator,
            Sender::Node(NodeId::new(0).expect("valid id")),
            Sender::Node(NodeId::new(MAX_NODE_ID).expect("valid id")),
        ] {
            assert_eq!(Sender::from_wire(sender.to_wire()), Some(sender));
        }
        assert_eq!(Sender::from_wire(MAX_NODE_ID + 1), None);
        assert_eq!(Sender::from_wire(0xfffd), None);
    }

    #[test]
    fn capabilities_keep_unknown_bits_and_print_names() {
        let theirs = Capabilities::from_bits(Capabilities::FLOW_RECORD_V1.bits() | 1 << 40);
        let common = theirs & Capabilities::THIS_BUILD;
        assert_eq!(common, Capabilities::FLOW_RECORD_V1);
        assert!(theirs.contains(Capabilities::FLOW_RECORD_V1));
        assert!(!theirs.contains(Capabilities::FLOW_RECORD_V1 | Capabilities::MARKER_DRAIN));
        assert_eq!(theirs.to_string(), "FLOW_RECORD_V1|0x10000000000");
        assert_eq!(Capabilities::empty().to_string(), "none");
    }

    #[test]
    fn mac_addresses_print_colon_separated() {
        let mac = MacAddr([0x02, 0, 0, 0, 0xab, 0x0c]);
        assert_eq!(mac.to_string(), "02:00:00:00:ab:0c");
    }
}
