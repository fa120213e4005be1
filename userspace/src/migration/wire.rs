//! A connection between its in-table form ([`FlowRecord`]: both entries)
//! and its wire form ([`FlowRecordV2`]: the forward direction, from which
//! the receiver's policy derives the reply direction).
//!
//! Next hops travel as MAC addresses and are mapped back to the receiver's
//! neighbor table, so the two nodes may number their neighbors differently.
//! What the wire form cannot carry: the entries' change versions (both start
//! again at 1) and which side sent a lone FIN (both become "closing").

use crate::{
    control::{
        flow::{
            Counters, FlowKeyError, FlowRecordV2, NetworkActionV2, NextHop, Owner as WireOwner, RewriteSide,
            TcpState as WireTcpState, WireFlowKey,
        },
        ids::{MacAddr, NodeId, ReservedNodeId},
    },
    flow::{AppId, Direction, FlowEntry, FlowRecord, NetworkAction, Owner, Policy, Rewrite, Side, TcpState, Timestamp},
};
use handoff_common::flow_key::FlowKey;
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::Duration,
};

/// Why a record cannot be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The flow key has no wire form.
    #[error("flow key: {0}")]
    Key(#[from] FlowKeyError),
    /// A next hop index this node's neighbor table does not have.
    #[error("next hop {index} is not in the neighbor table")]
    UnknownNextHop {
        /// The index.
        index: u16,
    },
    /// A next hop MAC the receiver has no neighbor for.
    #[error("no neighbor has MAC {mac}")]
    UnknownNeighbor {
        /// The MAC.
        mac: MacAddr,
    },
    /// A redirected connection: it is not this node's to hand over.
    #[error("the connection is redirected to its owner already")]
    Redirected,
    /// A full-NAT action, which this node's tables cannot express.
    #[error("full NAT is not supported by this node")]
    FullNat,
    /// An owner id the wire reserves for non-nodes.
    #[error(transparent)]
    Owner(#[from] ReservedNodeId),
    /// A worker index above what a node can have.
    #[error("worker {worker} is out of range")]
    Worker {
        /// The index.
        worker: u16,
    },
}

fn tcp_to_wire(state: TcpState) -> WireTcpState {
    match state {
        TcpState::NotTcp => WireTcpState::NotTcp,
        TcpState::SynSent => WireTcpState::SynSent,
        TcpState::Established => WireTcpState::Established,
        TcpState::FinForward | TcpState::FinReverse => WireTcpState::Closing,
        TcpState::Closing => WireTcpState::Closed,
    }
}

fn tcp_from_wire(state: WireTcpState) -> TcpState {
    match state {
        WireTcpState::NotTcp => TcpState::NotTcp,
        WireTcpState::SynSent | WireTcpState::SynReceived => TcpState::SynSent,
        WireTcpState::Established => TcpState::Established,
        // A lone FIN's side is not on the wire; the next FIN either way closes.
        WireTcpState::Closing => TcpState::FinForward,
        WireTcpState::Closed => TcpState::Closing,
    }
}

fn next_hop(policy: &Policy, index: u16) -> Result<NextHop, WireError> {
    let neighbor = policy
        .neighbors()
        .get(index as usize)
        .ok_or(WireError::UnknownNextHop { index })?;
    Ok(NextHop {
        ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        mac: MacAddr(neighbor.mac),
    })
}

fn neighbor_index(policy: &Policy, hop: &NextHop) -> Result<u16, WireError> {
    policy
        .neighbors()
        .iter()
        .position(|n| n.mac == hop.mac.0)
        .map(|i| i as u16)
        .ok_or(WireError::UnknownNeighbor { mac: hop.mac })
}

/// The wire form of `record`, with ages measured against `now`.
pub fn to_wire(record: &FlowRecord, policy: &Policy, now: Timestamp) -> Result<FlowRecordV2, WireError> {
    let forward = &record.forward;
    let action = match forward.network {
        NetworkAction::Forward { next_hop: index } => NetworkActionV2::Forward {
            next_hop: next_hop(policy, index)?,
        },
        NetworkAction::Rewrite(rw) => NetworkActionV2::Rewrite {
            side: match rw.side {
                Side::Destination => RewriteSide::Destination,
                Side::Source => RewriteSide::Source,
            },
            to: SocketAddr::new(rw.address, rw.port),
            next_hop: next_hop(policy, rw.next_hop)?,
        },
        NetworkAction::Redirect { .. } => return Err(WireError::Redirected),
    };
    let counters = |e: &FlowEntry| Counters {
        packets: e.packets,
        bytes: e.bytes,
    };
    let (f, r) = (counters(forward), counters(&record.reverse));
    Ok(FlowRecordV2 {
        key: WireFlowKey::try_from(&forward.key)?,
        action,
        app_action: u32::from(forward.app.0),
        owner: WireOwner {
            node: NodeId::new(forward.owner.node)?,
            worker: u16::from(forward.owner.worker),
        },
        tcp_state: tcp_to_wire(forward.tcp),
        age: now.saturating_since(forward.created),
        idle: now.saturating_since(forward.last_seen.max(record.reverse.last_seen)),
        counters: Counters {
            packets: f.packets + r.packets,
            bytes: f.bytes + r.bytes,
        },
        reverse_counters: Some(r),
    })
}

fn before(now: Timestamp, age: Duration) -> Timestamp {
    Timestamp::from_nanos(
        now.as_nanos()
            .saturating_sub(age.as_nanos().min(u64::MAX as u128) as u64),
    )
}

/// The in-table form of `record` on this node: the reply direction derived
/// by `policy`, timestamps on this node's clock (`now`).
pub fn from_wire(record: &FlowRecordV2, policy: &Policy, now: Timestamp) -> Result<FlowRecord, WireError> {
    let key = FlowKey::from(&record.key);
    let forward_action = match record.action {
        NetworkActionV2::Forward { next_hop } => NetworkAction::Forward {
            next_hop: neighbor_index(policy, &next_hop)?,
        },
        NetworkActionV2::Rewrite { side, to, next_hop } => NetworkAction::Rewrite(Rewrite {
            side: match side {
                RewriteSide::Destination => Side::Destination,
                RewriteSide::Source => Side::Source,
            },
            address: to.ip(),
            port: to.port(),
            next_hop: neighbor_index(policy, &next_hop)?,
        }),
        NetworkActionV2::Redirect { .. } => return Err(WireError::Redirected),
        NetworkActionV2::FullNat { .. } => return Err(WireError::FullNat),
    };
    let (reverse_key, reverse_action) = policy.reverse_of(&key, &forward_action).ok_or(WireError::Redirected)?;
    let owner = Owner {
        node: record.owner.node.get(),
        worker: u8::try_from(record.owner.worker).map_err(|_| WireError::Worker {
            worker: record.owner.worker,
        })?,
    };
    let app = AppId(u8::try_from(record.app_action).unwrap_or(AppId::NONE.0));
    let created = before(now, record.age);
    let last_seen = before(now, record.idle);
    let reverse_counters = record.reverse_counters.unwrap_or_default();
    let entry = |key, direction, network, counters: Counters| {
        let mut e = FlowEntry::new(key, direction, network, app, owner, created);
        e.tcp = tcp_from_wire(record.tcp_state);
        e.last_seen = last_seen;
        e.packets = counters.packets;
        e.bytes = counters.bytes;
        e
    };
    Ok(FlowRecord {
        forward: entry(
            key,
            Direction::Forward,
            forward_action,
            Counters {
                packets: record.counters.packets.saturating_sub(reverse_counters.packets),
                bytes: record.counters.bytes.saturating_sub(reverse_counters.bytes),
            },
        ),
        reverse: entry(reverse_key, Direction::Reverse, reverse_action, reverse_counters),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{config::PolicyConfig, Decision};
    use std::path::Path;

    const POLICY: &str = r#"
[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "forward"
gateway = "router"

[[service]]
vip = "10.0.9.1"
protocol = "tcp"
port = 80
[[service.backend]]
address = "10.1.0.1"
port = 8080
mac = "02:00:00:00:01:01"
"#;

    fn policy(text: &str) -> Policy {
        Policy::new(PolicyConfig::parse(text, Path::new("p.toml")).unwrap()).unwrap()
    }

    fn record(policy: &Policy, key: FlowKey, at: Timestamp) -> FlowRecord {
        let Decision::Install { reverse_key, actions } = policy.decide(&key) else {
            panic!("dropped")
        };
        let owner = Owner { node: 3, worker: 1 };
        let mut forward = FlowEntry::new(key, Direction::Forward, actions.forward, actions.app, owner, at);
        let mut reverse = FlowEntry::new(reverse_key, Direction::Reverse, actions.reverse, actions.app, owner, at);
        for (e, n) in [(&mut forward, 5), (&mut reverse, 3)] {
            e.tcp = TcpState::Established;
            e.packets = n;
            e.bytes = n * 100;
        }
        forward.last_seen = Timestamp::from_nanos(at.as_nanos() + 4_000);
        FlowRecord { forward, reverse }
    }

    fn same(a: &FlowEntry, b: &FlowEntry) {
        assert_eq!(
            (a.key, a.network, a.app, a.owner, a.direction, a.tcp, a.packets, a.bytes),
            (b.key, b.network, b.app, b.owner, b.direction, b.tcp, b.packets, b.bytes)
        );
    }

    #[test]
    fn a_dnat_connection_survives_the_wire_with_its_reply_direction_and_ages() {
        let sender = policy(POLICY);
        let key = FlowKey::new("10.0.0.7".parse().unwrap(), "10.0.9.1".parse().unwrap(), 4000, 80, 6);
        let original = record(&sender, key, Timestamp::from_nanos(1_000_000));
        let wire = to_wire(&original, &sender, Timestamp::from_nanos(11_000_000)).unwrap();
        assert_eq!(wire.age, Duration::from_millis(10));
        // The receiver numbers its neighbors differently.
        let receiver = policy(&POLICY.replace(
            "[[neighbor]]\nname = \"router\"",
            "[[neighbor]]\nname = \"other\"\nmac = \"02:00:00:00:00:aa\"\n\n[[neighbor]]\nname = \"router\"",
        ));
        let back = from_wire(&wire, &receiver, Timestamp::from_nanos(50_000_000)).unwrap();
        let shift = |e: &FlowEntry| match e.network {
            NetworkAction::Rewrite(rw) => rw.next_hop,
            _ => u16::MAX,
        };
        assert_eq!(shift(&back.forward), shift(&original.forward) + 1);
        assert_eq!(shift(&back.reverse), shift(&original.reverse) + 1);
        let same_policy = from_wire(&wire, &sender, Timestamp::from_nanos(50_000_000)).unwrap();
        same(&same_policy.forward, &original.forward);
        same(&same_policy.reverse, &original.reverse);
        assert_eq!(same_policy.forward.created, Timestamp::from_nanos(40_000_000));
        assert_eq!(same_policy.forward.last_seen, Timestamp::from_nanos(40_004_000));
    }

    #[test]
    fn what_cannot_be_expressed_is_refused_not_guessed() {
        let sender = policy(POLICY);
        let key = FlowKey::new("10.0.0.7".parse().unwrap(), "10.0.9.1".parse().unwrap(), 4000, 80, 6);
        let mut original = record(&sender, key, Timestamp::from_nanos(0));
        let wire = to_wire(&original, &sender, Timestamp::from_nanos(0)).unwrap();
        let stranger = policy(&POLICY.replace("02:00:00:00:01:01", "02:00:00:00:01:99"));
        assert!(matches!(
            from_wire(&wire, &stranger, Timestamp::from_nanos(0)),
            Err(WireError::UnknownNeighbor { .. })
        ));
        original.forward.network = NetworkAction::Redirect {
            owner: Owner { node: 1, worker: 0 },
        };
        assert_eq!(
            to_wire(&original, &sender, Timestamp::from_nanos(0)),
            Err(WireError::Redirected)
        );
        original.forward.network = NetworkAction::Forward { next_hop: 9 };
        assert_eq!(
            to_wire(&original, &sender, Timestamp::from_nanos(0)),
            Err(WireError::UnknownNextHop { index: 9 })
        );
    }

    #[test]
    fn tcp_states_map_to_the_nearest_wire_state_and_back() {
        for (state, wire, back) in [
            (TcpState::NotTcp, WireTcpState::NotTcp, TcpState::NotTcp),
            (TcpState::SynSent, WireTcpState::SynSent, TcpState::SynSent),
            (TcpState::Established, WireTcpState::Established, TcpState::Established),
            (TcpState::FinForward, WireTcpState::Closing, TcpState::FinForward),
            (TcpState::FinReverse, WireTcpState::Closing, TcpState::FinForward),
            (TcpState::Closing, WireTcpState::Closed, TcpState::Closing),
        ] {
            assert_eq!(tcp_to_wire(state), wire);
            assert_eq!(tcp_from_wire(wire), back);
        }
    }
}
