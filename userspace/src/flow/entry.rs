//! A flow entry and the actions it carries.

use super::app::AppId;
use handoff_common::{flow_key::FlowKey, parse::tcp_flags};
use std::{net::IpAddr, time::Duration};

/// A point on the worker's monotonic clock, in nanoseconds since an arbitrary
/// epoch. The table never reads a clock: callers pass `now`, so tests are
/// deterministic and one clock read serves a whole batch of packets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The timestamp `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: u64) -> Self {
        Self(nanos)
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }

    /// This timestamp of a clock that read `from_now` moved to a clock that
    /// reads `to_now`, keeping its age (a future one becomes `to_now`, one
    /// older than `to_now`'s epoch becomes the epoch).
    pub fn rebased(self, from_now: Timestamp, to_now: Timestamp) -> Self {
        Self(to_now.0.saturating_sub(from_now.0.saturating_sub(self.0)))
    }
}

/// Who owns a flow's state: a worker (core) of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Node id.
    pub node: u16,
    /// Worker (core) index within the node.
    pub worker: u8,
}

/// Which addresses of a packet a [`Rewrite`] replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// Destination address and port: DNAT towards a backend.
    Destination,
    /// Source address and port: SNAT, or un-rewriting a backend's reply so it
    /// comes from the VIP again.
    Source,
}

/// A header rewrite (applied by [`crate::rewrite::apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rewrite {
    /// The side whose address and port are replaced.
    pub side: Side,
    /// The new address; its family must match the packet's.
    pub address: IpAddr,
    /// The new port.
    pub port: u16,
    /// Index into the neighbor table: the MAC the rewritten packet goes to.
    pub next_hop: u16,
}

/// What the network layer does with a flow's packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetworkAction {
    /// Send unchanged to a neighbor.
    Forward {
        /// Index into the neighbor table.
        next_hop: u16,
    },
    /// Rewrite the headers, then send to the rewrite's next hop.
    Rewrite(Rewrite),
    /// The flow lives elsewhere now: hand the packet to its owner.
    Redirect {
        /// The core or node that holds the flow.
        owner: Owner,
    },
}

/// Which direction of a connection an entry matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The direction of the packet that created the flow.
    Forward,
    /// The replies.
    Reverse,
}

/// Connection-tracking state of a TCP flow, kept equal in both entries of a
/// connection. Deliberately coarse: a forwarding node only needs to know
/// which idle timeout applies and when the connection is over (RFC 9293 §3.3.2
/// has the endpoint's full machine; RFC 5382 §5 the NAT's view of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TcpState {
    /// Not a TCP flow.
    NotTcp,
    /// The forward direction opened; no acknowledgement from the other side yet.
    SynSent,
    /// The reverse direction acknowledged: data flows.
    Established,
    /// The forward direction sent a FIN.
    FinForward,
    /// The reverse direction sent a FIN.
    FinReverse,
    /// FINs went both ways, or an RST: the entry lingers briefly, so late
    /// retransmissions still find it, and is then removed.
    Closing,
}

impl TcpState {
    /// The state after a segment with `flags` travelling in `direction`.
    pub fn after(self, direction: Direction, flags: u8) -> Self {
        use TcpState::*;
        let syn = flags & tcp_flags::SYN != 0;
        let ack = flags & tcp_flags::ACK != 0;
        let fin = flags & tcp_flags::FIN != 0;
        match self {
            NotTcp => NotTcp,
            _ if flags & tcp_flags::RST != 0 => Closing,
            // A fresh SYN on a closing tuple is a new connection that reuses
            // the client's port; keep the flow (and its backend) instead of
            // letting the linger remove it under the new connection.
            Closing if syn && !ack && direction == Direction::Forward => SynSent,
            Closing => Closing,
            state => {
                let state = match state {
                    SynSent if ack && direction == Direction::Reverse => Established,
                    other => other,
                };
                if !fin {
                    return state;
                }
                match (state, direction) {
                    (FinForward, Direction::Reverse) | (FinReverse, Direction::Forward) => Closing,
                    (FinForward | FinReverse, _) => state,
                    (_, Direction::Forward) => FinForward,
                    (_, Direction::Reverse) => FinReverse,
                }
            }
        }
    }

    /// Opening or closing: the short "transitory" idle timeout applies.
    pub fn is_transitory(self) -> bool {
        matches!(self, Self::SynSent | Self::FinForward | Self::FinReverse)
    }
}

/// `flags` bit: the slot holds a flow.
pub(super) const LIVE: u8 = 1;
/// `flags` bit: the slot has an op in the current journal batch.
pub(super) const JOURNALED: u8 = 2;
/// `partner` value meaning "no slot".
pub(super) const NO_SLOT: u32 = u32::MAX;

/// One direction of a flow. A connection is two entries linked to each other,
/// so both the request and the reply find their action with one lookup.
///
/// 112 bytes (asserted in the table's tests; see the [module docs](super)
/// for the memory a table takes per entry).
#[derive(Clone, Copy, Debug)]
pub struct FlowEntry {
    /// The 5-tuple this entry matches.
    pub key: FlowKey,
    /// What the network layer does with matching packets.
    pub network: NetworkAction,
    /// The per-flow application, an index into the worker's
    /// [`AppRegistry`](super::AppRegistry).
    pub app: AppId,
    /// Who owns the flow.
    pub owner: Owner,
    /// Which direction of the connection this entry matches.
    pub direction: Direction,
    /// TCP state, equal in both entries of a connection.
    pub tcp: TcpState,
    /// When the flow was installed.
    pub created: Timestamp,
    /// When the last packet in this direction was seen.
    pub last_seen: Timestamp,
    /// Packets seen in this direction.
    pub packets: u64,
    /// Bytes seen in this direction (frame lengths).
    pub bytes: u64,
    /// Bumped on every change to the entry (wrapping; compared as RFC 1982
    /// serial numbers), so a receiver of a streamed table can drop stale copies.
    pub version: u32,
    /// Slot of the other direction; the next free slot while vacant.
    pub(super) partner: u32,
    /// [`LIVE`] | [`JOURNALED`].
    pub(super) flags: u8,
}

impl FlowEntry {
    /// A new entry at version 1.
    pub fn new(
        key: FlowKey,
        direction: Direction,
        network: NetworkAction,
        app: AppId,
        owner: Owner,
        now: Timestamp,
    ) -> Self {
        Self {
            key,
            network,
            app,
            owner,
            direction,
            tcp: if key.protocol == handoff_common::net::ipproto::TCP {
                TcpState::SynSent
            } else {
                TcpState::NotTcp
            },
            created: now,
            last_seen: now,
            packets: 0,
            bytes: 0,
            version: 1,
            partner: NO_SLOT,
            flags: 0,
        }
    }

    /// An empty slot linked to the next free slot `next_free`.
    pub(super) fn vacant(next_free: u32) -> Self {
        Self {
            partner: next_free,
            ..Self::new(
                FlowKey::default(),
                Direction::Forward,
                NetworkAction::Forward { next_hop: 0 },
                AppId::NONE,
                Owner::default(),
                Timestamp::default(),
            )
        }
    }

    pub(super) fn is_live(&self) -> bool {
        self.flags & LIVE != 0
    }

    /// Records a change: a new version.
    pub(super) fn bump(&mut self) {
        self.version = self.version.wrapping_add(1);
    }
}

/// `a` is older than `b` in RFC 1982 serial-number arithmetic, so versions
/// keep comparing correctly after they wrap.
pub(super) fn version_older(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcp_flags::{ACK, FIN, RST, SYN};
    use Direction::{Forward as F, Reverse as R};
    use TcpState::*;

    #[test]
    fn handshake_data_and_close_from_both_sides() {
        let mut s = SynSent;
        for (dir, flags, expect) in [
            (F, SYN, SynSent),
            (R, SYN | ACK, Established),
            (F, ACK, Established),
            (R, FIN | ACK, FinReverse),
            (R, ACK, FinReverse),
            (F, FIN | ACK, Closing),
            (R, ACK, Closing),
        ] {
            s = s.after(dir, flags);
            assert_eq!(s, expect, "after {dir:?} {flags:#x}");
        }
    }

    #[test]
    fn rst_closes_from_any_state_and_a_new_syn_reopens() {
        for s in [SynSent, Established, FinForward, FinReverse] {
            assert_eq!(s.after(R, RST), Closing);
        }
        assert_eq!(Closing.after(F, SYN), SynSent);
        assert_eq!(Closing.after(R, SYN), Closing);
        assert_eq!(Closing.after(F, SYN | ACK), Closing);
        assert_eq!(NotTcp.after(F, RST), NotTcp);
    }

    #[test]
    fn a_fin_repeated_in_one_direction_does_not_close() {
        assert_eq!(Established.after(F, FIN).after(F, FIN), FinForward);
        assert_eq!(SynSent.after(R, FIN | ACK), FinReverse);
        assert_eq!(SynSent.after(F, ACK), SynSent);
    }

    #[test]
    fn versions_compare_across_wrap() {
        assert!(version_older(1, 2));
        assert!(!version_older(2, 1));
        assert!(!version_older(7, 7));
        assert!(version_older(u32::MAX, 0));
        assert!(!version_older(0, u32::MAX));
        assert!(version_older(u32::MAX - 5, 10));
    }

    #[test]
    fn timestamps_saturate() {
        let t = Timestamp::from_nanos(10);
        assert_eq!(t.saturating_since(Timestamp::from_nanos(4)), Duration::from_nanos(6));
        assert_eq!(Timestamp::from_nanos(4).saturating_since(t), Duration::ZERO);
        let rebased = |t: u64, from: u64, to: u64| {
            Timestamp::from_nanos(t)
                .rebased(Timestamp::from_nanos(from), Timestamp::from_nanos(to))
                .as_nanos()
        };
        assert_eq!(rebased(90, 100, 1000), 990);
        assert_eq!(rebased(990, 1000, 100), 90);
        assert_eq!(rebased(500, 1000, 100), 0);
        assert_eq!(rebased(1200, 1000, 100), 100);
    }
}
