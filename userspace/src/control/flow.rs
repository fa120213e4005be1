//! The wire form of one flow, in every record version, and the translations
//! between versions.
//!
//! A record is self-contained: it carries both directions of a connection (the
//! reverse flow is derived from the key and the action, as the node installs
//! it) and only relative times, because peers' clocks differ. The types are
//! independent of the in-memory flow table; a record version's encoding never
//! changes once released, new information goes into a new version.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use handoff_common::flow_key::{FlowKey, IP_V4, IP_V6};
use serde::{Deserialize, Serialize};

use super::ids::{Capabilities, MacAddr, NodeId};

/// The two addresses of a flow key, of one family by construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WireAddrs {
    /// IPv4 source and destination.
    V4 {
        /// Source address.
        src: Ipv4Addr,
        /// Destination address.
        dst: Ipv4Addr,
    },
    /// IPv6 source and destination.
    V6 {
        /// Source address.
        src: Ipv6Addr,
        /// Destination address.
        dst: Ipv6Addr,
    },
}

/// A 5-tuple on the wire, in host values. Converts to and from
/// [`FlowKey`], whose layout may change without touching the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct WireFlowKey {
    /// Source and destination addresses.
    pub addrs: WireAddrs,
    /// Source port (zero for protocols without ports).
    pub src_port: u16,
    /// Destination port (zero for protocols without ports).
    pub dst_port: u16,
    /// IP protocol number.
    pub protocol: u8,
}

impl WireFlowKey {
    /// The source address.
    pub fn src(&self) -> IpAddr {
        match self.addrs {
            WireAddrs::V4 { src, .. } => src.into(),
            WireAddrs::V6 { src, .. } => src.into(),
        }
    }

    /// The destination address.
    pub fn dst(&self) -> IpAddr {
        match self.addrs {
            WireAddrs::V4 { dst, .. } => dst.into(),
            WireAddrs::V6 { dst, .. } => dst.into(),
        }
    }
}

/// A [`FlowKey`] that has no wire form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FlowKeyError {
    /// The key's IP version tag is neither 4 nor 6.
    #[error("flow key has IP version tag {ip_version}, expected {IP_V4} or {IP_V6}")]
    UnknownIpVersion {
        /// The tag found.
        ip_version: u8,
    },
}

impl TryFrom<&FlowKey> for WireFlowKey {
    type Error = FlowKeyError;
    fn try_from(key: &FlowKey) -> Result<Self, Self::Error> {
        let addrs = match (key.ip_version, key.src_ip(), key.dst_ip()) {
            (IP_V4, IpAddr::V4(src), IpAddr::V4(dst)) => WireAddrs::V4 { src, dst },
            (IP_V6, IpAddr::V6(src), IpAddr::V6(dst)) => WireAddrs::V6 { src, dst },
            (ip_version, _, _) => return Err(FlowKeyError::UnknownIpVersion { ip_version }),
        };
        Ok(Self {
            addrs,
            src_port: key.src_port.get(),
            dst_port: key.dst_port.get(),
            protocol: key.protocol,
        })
    }
}

impl From<&WireFlowKey> for FlowKey {
    fn from(key: &WireFlowKey) -> Self {
        FlowKey::new(key.src(), key.dst(), key.src_port, key.dst_port, key.protocol)
    }
}

impl fmt::Display for WireFlowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        FlowKey::from(self).fmt(f)
    }
}

/// The node and worker (core) that own a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// Owning node.
    pub node: NodeId,
    /// Owning worker on that node.
    pub worker: u16,
}

/// Where a forwarded packet goes next.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NextHop {
    /// The next hop's address, so a receiver on another segment can resolve it again.
    pub ip: IpAddr,
    /// The next hop's Ethernet address as the sender resolved it.
    pub mac: MacAddr,
}

/// Which endpoint a rewrite replaces in the forward direction; replies get the
/// opposite endpoint restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RewriteSide {
    /// Source NAT.
    Source,
    /// Destination NAT (a load balancer picking a backend).
    Destination,
}

/// Packet/byte counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes, IP header included.
    pub bytes: u64,
}

/// Connection tracking state of a TCP flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TcpState {
    /// Not a TCP flow.
    NotTcp,
    /// SYN seen from the initiator.
    SynSent,
    /// SYN-ACK seen from the responder.
    SynReceived,
    /// Handshake complete.
    Established,
    /// A FIN seen from one side.
    Closing,
    /// FINs from both sides or a RST seen.
    Closed,
}

/// What a node does with a flow's packets (record version 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NetworkActionV1 {
    /// Forward unchanged.
    Forward {
        /// Where to.
        next_hop: NextHop,
    },
    /// Rewrite one endpoint, then forward.
    Rewrite {
        /// The endpoint replaced in the forward direction.
        side: RewriteSide,
        /// Its new address and port.
        to: SocketAddr,
        /// Where to.
        next_hop: NextHop,
    },
    /// Send to the owning node/worker.
    Redirect {
        /// The flow's owner.
        owner: Owner,
    },
}

/// What a node does with a flow's packets (record version 2): everything V1
/// has plus full NAT.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum NetworkActionV2 {
    /// Forward unchanged.
    Forward {
        /// Where to.
        next_hop: NextHop,
    },
    /// Rewrite one endpoint, then forward.
    Rewrite {
        /// The endpoint replaced in the forward direction.
        side: RewriteSide,
        /// Its new address and port.
        to: SocketAddr,
        /// Where to.
        next_hop: NextHop,
    },
    /// Send to the owning node/worker.
    Redirect {
        /// The flow's owner.
        owner: Owner,
    },
    /// Rewrite both endpoints (a load balancer that also source-NATs so
    /// replies come back through it), then forward.
    FullNat {
        /// The new source address and port.
        source: SocketAddr,
        /// The new destination address and port.
        destination: SocketAddr,
        /// Where to.
        next_hop: NextHop,
    },
}

/// One flow, both directions, record version 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecordV1 {
    /// The forward (first-seen) direction's key.
    pub key: WireFlowKey,
    /// The network action.
    pub action: NetworkActionV1,
    /// The application action's id, opaque to the protocol.
    pub app_action: u32,
    /// The owner.
    pub owner: Owner,
    /// TCP tracking state.
    pub tcp_state: TcpState,
    /// Time since the flow's first packet.
    pub age: Duration,
    /// Time since the flow's last packet.
    pub idle: Duration,
    /// Both directions together.
    pub counters: Counters,
}

/// One flow, both directions, record version 2: V1 plus full NAT
/// ([`NetworkActionV2::FullNat`]) and the reply direction's own counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecordV2 {
    /// The forward (first-seen) direction's key.
    pub key: WireFlowKey,
    /// The network action.
    pub action: NetworkActionV2,
    /// The application action's id, opaque to the protocol.
    pub app_action: u32,
    /// The owner.
    pub owner: Owner,
    /// TCP tracking state.
    pub tcp_state: TcpState,
    /// Time since the flow's first packet.
    pub age: Duration,
    /// Time since the flow's last packet.
    pub idle: Duration,
    /// Both directions together, as in V1.
    pub counters: Counters,
    /// The reply direction's share of `counters`; `None` when unknown, as for a
    /// record upgraded from V1.
    pub reverse_counters: Option<Counters>,
}

/// A flow record version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RecordVersion {
    /// [`FlowRecordV1`].
    V1,
    /// [`FlowRecordV2`].
    V2,
}

impl RecordVersion {
    /// Every version this build knows, oldest first.
    pub const ALL: [RecordVersion; 2] = [RecordVersion::V1, RecordVersion::V2];

    /// The capability bit that advertises the version.
    pub fn capability(self) -> Capabilities {
        match self {
            RecordVersion::V1 => Capabilities::FLOW_RECORD_V1,
            RecordVersion::V2 => Capabilities::FLOW_RECORD_V2,
        }
    }
}

impl fmt::Display for RecordVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordVersion::V1 => f.write_str("V1"),
            RecordVersion::V2 => f.write_str("V2"),
        }
    }
}

/// A flow record of any version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FlowRecord {
    /// Version 1.
    V1(FlowRecordV1),
    /// Version 2.
    V2(FlowRecordV2),
}

/// Why a record cannot take an older form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UntranslatableReason {
    /// The flow rewrites both endpoints; V1 can rewrite only one, and a
    /// receiver that rewrote one would send packets the backend drops.
    FullNat,
}

impl fmt::Display for UntranslatableReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UntranslatableReason::FullNat => {
                f.write_str("its full-NAT action (both endpoints rewritten) has no V1 form")
            }
        }
    }
}

/// A record that cannot be expressed in the version a peer speaks without
/// changing how its packets are forwarded. A handover that meets one must be
/// refused: the flow would break on the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("flow {key} cannot be sent as a {target} record: {reason}")]
pub struct Untranslatable {
    /// The flow.
    pub key: WireFlowKey,
    /// The version asked for.
    pub target: RecordVersion,
    /// Why not.
    pub reason: UntranslatableReason,
}

impl FlowRecordV2 {
    /// The V1 form. Drops `reverse_counters` (bookkeeping only: V1's
    /// `counters` already hold both directions); fails for actions V1 cannot
    /// express.
    pub fn to_v1(&self) -> Result<FlowRecordV1, Untranslatable> {
        let action = match self.action {
            NetworkActionV2::Forward { next_hop } => NetworkActionV1::Forward { next_hop },
            NetworkActionV2::Rewrite { side, to, next_hop } => NetworkActionV1::Rewrite { side, to, next_hop },
            NetworkActionV2::Redirect { owner } => NetworkActionV1::Redirect { owner },
            NetworkActionV2::FullNat { .. } => {
                return Err(Untranslatable {
                    key: self.key,
                    target: RecordVersion::V1,
                    reason: UntranslatableReason::FullNat,
                })
            }
        };
        Ok(FlowRecordV1 {
            key: self.key,
            action,
            app_action: self.app_action,
            owner: self.owner,
            tcp_state: self.tcp_state,
            age: self.age,
            idle: self.idle,
            counters: self.counters,
        })
    }
}

/// Every V1 record has an exact V2 form.
impl From<FlowRecordV1> for FlowRecordV2 {
    fn from(r: FlowRecordV1) -> Self {
        let action = match r.action {
            NetworkActionV1::Forward { next_hop } => NetworkActionV2::Forward { next_hop },
            NetworkActionV1::Rewrite { side, to, next_hop } => NetworkActionV2::Rewrite { side, to, next_hop },
            NetworkActionV1::Redirect { owner } => NetworkActionV2::Redirect { owner },
        };
        Self {
            key: r.key,
            action,
            app_action: r.app_action,
            owner: r.owner,
            tcp_state: r.tcp_state,
            age: r.age,
            idle: r.idle,
            counters: r.counters,
            reverse_counters: None,
        }
    }
}

impl FlowRecord {
    /// The record's version.
    pub fn version(&self) -> RecordVersion {
        match self {
            FlowRecord::V1(_) => RecordVersion::V1,
            FlowRecord::V2(_) => RecordVersion::V2,
        }
    }

    /// The flow's key.
    pub fn key(&self) -> &WireFlowKey {
        match self {
            FlowRecord::V1(r) => &r.key,
            FlowRecord::V2(r) => &r.key,
        }
    }

    /// The record in `target` form: upgrades are exact, downgrades drop only
    /// information forwarding does not need, or fail with [`Untranslatable`].
    pub fn translate(self, target: RecordVersion) -> Result<FlowRecord, Untranslatable> {
        match (self, target) {
            (FlowRecord::V1(_), RecordVersion::V1) | (FlowRecord::V2(_), RecordVersion::V2) => Ok(self),
            (FlowRecord::V1(r), RecordVersion::V2) => Ok(FlowRecord::V2(r.into())),
            (FlowRecord::V2(r), RecordVersion::V1) => r.to_v1().map(FlowRecord::V1),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(id: u16) -> NodeId {
        NodeId::new(id).expect("test node ids are below the maximum")
    }

    pub(crate) fn v4_key(last_octet: u8) -> WireFlowKey {
        WireFlowKey {
            addrs: WireAddrs::V4 {
                src: Ipv4Addr::new(10, 0, 0, last_octet),
                dst: Ipv4Addr::new(10, 9, 0, 1),
            },
            src_port: 40_000 + u16::from(last_octet),
            dst_port: 80,
            protocol: 6,
        }
    }

    fn next_hop() -> NextHop {
        NextHop {
            ip: Ipv4Addr::new(10, 2, 0, 1).into(),
            mac: MacAddr([2, 0, 0, 0, 2, 1]),
        }
    }

    pub(crate) fn v2_record(key: WireFlowKey, action: NetworkActionV2) -> FlowRecordV2 {
        FlowRecordV2 {
            key,
            action,
            app_action: 7,
            owner: Owner {
                node: node(1),
                worker: 3,
            },
            tcp_state: TcpState::Established,
            age: Duration::from_millis(12_345),
            idle: Duration::from_millis(67),
            counters: Counters {
                packets: 10,
                bytes: 4_000,
            },
            reverse_counters: Some(Counters {
                packets: 4,
                bytes: 1_000,
            }),
        }
    }

    pub(crate) fn rewrite_action() -> NetworkActionV2 {
        NetworkActionV2::Rewrite {
            side: RewriteSide::Destination,
            to: "10.2.0.5:8080".parse().expect("literal socket address"),
            next_hop: next_hop(),
        }
    }

    pub(crate) fn full_nat_action() -> NetworkActionV2 {
        NetworkActionV2::FullNat {
            source: "10.1.0.1:50000".parse().expect("literal socket address"),
            destination: "10.2.0.5:8080".parse().expect("literal socket address"),
            next_hop: next_hop(),
        }
    }

    #[test]
    fn flow_keys_round_trip_through_the_wire_form_for_both_families() {
        for (src, dst) in [("10.0.0.1", "192.168.1.9"), ("2001:db8::1", "2001:db8:ffff::2")] {
            let key = FlowKey::new(
                src.parse().expect("literal"),
                dst.parse().expect("literal"),
                1234,
                443,
                17,
            );
            let wire = WireFlowKey::try_from(&key).expect("valid key");
            assert_eq!(wire.src().to_string(), src);
            assert_eq!(wire.dst().to_string(), dst);
            assert_eq!((wire.src_port, wire.dst_port, wire.protocol), (1234, 443, 17));
            assert_eq!(FlowKey::from(&wire), key);
        }
    }

    #[test]
    fn a_flow_key_with_an_unknown_ip_version_has_no_wire_form() {
        let key = FlowKey::default();
        assert_eq!(
            WireFlowKey::try_from(&key),
            Err(FlowKeyError::UnknownIpVersion { ip_version: 0 })
        );
    }

    #[test]
    fn v2_to_v1_keeps_everything_forwarding_needs_and_drops_reverse_counters() {
        let v2 = v2_record(v4_key(1), rewrite_action());
        let v1 = v2.to_v1().expect("a rewrite has a V1 form");
        assert_eq!(
            v1.action,
            NetworkActionV1::Rewrite {
                side: RewriteSide::Destination,
                to: "10.2.0.5:8080".parse().expect("literal socket address"),
                next_hop: next_hop(),
            }
        );
        assert_eq!(v1.counters, v2.counters);
        assert_eq!((v1.key, v1.owner, v1.age, v1.idle), (v2.key, v2.owner, v2.age, v2.idle));
        let back = FlowRecordV2::from(v1);
        assert_eq!(back.reverse_counters, None);
        assert_eq!(
            FlowRecordV2 {
                reverse_counters: v2.reverse_counters,
                ..back
            },
            v2
        );
    }

    #[test]
    fn full_nat_cannot_be_downgraded_and_the_error_names_the_flow() {
        let v2 = v2_record(v4_key(2), full_nat_action());
        let err = FlowRecord::V2(v2)
            .translate(RecordVersion::V1)
            .expect_err("full NAT has no V1 form");
        assert_eq!(
            err,
            Untranslatable {
                key: v4_key(2),
                target: RecordVersion::V1,
                reason: UntranslatableReason::FullNat,
            }
        );
        let text = err.to_string();
        assert!(text.contains("10.0.0.2:40002"), "{text}");
        assert!(text.contains("full-NAT"), "{text}");
    }

    #[test]
    fn translate_is_identity_for_the_same_version_and_exact_upwards() {
        let v2 = FlowRecord::V2(v2_record(v4_key(3), rewrite_action()));
        assert_eq!(v2.translate(RecordVersion::V2), Ok(v2));
        let v1 = v2.translate(RecordVersion::V1).expect("translatable");
        assert_eq!(v1.version(), RecordVersion::V1);
        assert_eq!(v1.translate(RecordVersion::V1), Ok(v1));
        let up = v1.translate(RecordVersion::V2).expect("upgrades always work");
        assert_eq!(up.version(), RecordVersion::V2);
        assert_eq!(up.key(), v2.key());
    }
    #[test]
    fn the_largest_v2_record_stays_under_200_bytes() {
        // The protocol doc sizes snapshot chunks from this bound.
        let v6 = |last: u16| Ipv6Addr::new(0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, last);
        let endpoint = |last| SocketAddr::new(v6(last).into(), u16::MAX);
        let max = Counters {
            packets: u64::MAX,
            bytes: u64::MAX,
        };
        let record = FlowRecord::V2(FlowRecordV2 {
            key: WireFlowKey {
                addrs: WireAddrs::V6 { src: v6(1), dst: v6(2) },
                src_port: u16::MAX,
                dst_port: u16::MAX,
                protocol: u8::MAX,
            },
            action: NetworkActionV2::FullNat {
                source: endpoint(3),
                destination: endpoint(4),
                next_hop: NextHop {
                    ip: v6(5).into(),
                    mac: MacAddr([0xff; 6]),
                },
            },
            app_action: u32::MAX,
            owner: Owner {
                node: node(crate::control::ids::MAX_NODE_ID),
                worker: u16::MAX,
            },
            tcp_state: TcpState::Closed,
            age: Duration::new(u64::MAX, 999_999_999),
            idle: Duration::new(u64::MAX, 999_999_999),
            counters: max,
            reverse_counters: Some(max),
        });
        let len = postcard::to_allocvec(&record).expect("encodes").len();
        assert!(len < 200, "{len}");
    }
}
