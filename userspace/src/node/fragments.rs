//! Which connection an IP fragment belongs to.
//!
//! Only a datagram's first fragment carries its ports; the others carry
//! only the identification the datagram's fragments share (RFC 791 §3.1,
//! RFC 8200 §4.5). The edge sprays every fragment of a datagram to the same
//! node by addresses and protocol, so each worker that sees a datagram's
//! fragments sees its first one too. A worker learns the ports from the
//! first fragment; a later fragment that comes before it is parked (a copy,
//! as the pen holds packets) until it does, or until [`FRAGMENT_TIMEOUT`].
//! Each worker on a fragment's way learns the ports again from the first
//! fragment, which goes ahead of the others on every path; nothing about
//! fragments crosses the fabric but the fragments themselves.
//!
//! Memory is bounded: [`MAX_DATAGRAMS`] datagrams are remembered (the oldest
//! forgotten first) and [`MAX_PARKED`] fragments parked per worker; a
//! fragment that finds the pen full is dropped, counted.

use super::pipeline::CorePacket;
use crate::flow::Timestamp;
use handoff_common::{flow_key::FlowKey, net::NetU16};
use std::collections::{HashMap, VecDeque};

/// Datagrams whose ports a worker remembers.
pub const MAX_DATAGRAMS: usize = 4096;
/// Fragments a worker parks at most, awaiting their first fragment.
pub const MAX_PARKED: usize = 256;
/// How long a datagram's ports are remembered and a fragment waits, in
/// nanoseconds (Linux reassembles for 30 s, `net.ipv4.ipfrag_time`; a
/// datagram whose fragments are seconds apart is lost to its sender's
/// timeouts long before).
pub const FRAGMENT_TIMEOUT: u64 = 5_000_000_000;

/// A datagram: its fragments' addresses, protocol and identification.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DatagramId {
    /// The fragment's key (ports zero).
    pub key: FlowKey,
    /// The identification (IPv4: 16 bits, IPv6: 32).
    pub id: u32,
}

/// What became of a fragment whose ports were unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parked {
    /// It waits for its first fragment.
    Waiting,
    /// The pen is full: drop it.
    Full,
}

/// One worker's fragment state.
#[derive(Debug, Default)]
pub struct FragmentTracker {
    ports: HashMap<DatagramId, (NetU16, NetU16, Timestamp), ahash::RandomState>,
    /// Datagrams in the order they were learnt, for forgetting the oldest.
    learnt: VecDeque<(DatagramId, Timestamp)>,
    parked: VecDeque<(DatagramId, CorePacket, Timestamp)>,
}

impl FragmentTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Remembers the ports of `datagram` from its first fragment, and
    /// moves its parked fragments, oldest first, to `released`.
    pub fn learn(
        &mut self,
        datagram: DatagramId,
        ports: (NetU16, NetU16),
        now: Timestamp,
        released: &mut Vec<CorePacket>,
    ) {
        if self.ports.len() >= MAX_DATAGRAMS && !self.ports.contains_key(&datagram) {
            while let Some((oldest, at)) = self.learnt.pop_front() {
                if self.is_current(&oldest, at) {
                    self.ports.remove(&oldest);
                    break;
                }
            }
        }
        // A datagram learnt again (its first fragment repeated) is
        // remembered from now: its entry in the order moves to the back,
        // and the older one is skipped once reached.
        self.ports.insert(datagram, (ports.0, ports.1, now));
        self.learnt.push_back((datagram, now));
        if self.learnt.len() > 2 * MAX_DATAGRAMS {
            let ports = &self.ports;
            self.learnt
                .retain(|(d, at)| ports.get(d).is_some_and(|&(_, _, seen)| seen == *at));
        }
        if self.parked.iter().any(|(d, _, _)| *d == datagram) {
            let mut kept = VecDeque::with_capacity(self.parked.len());
            for (d, packet, at) in self.parked.drain(..) {
                if d == datagram {
                    released.push(packet);
                } else {
                    kept.push_back((d, packet, at));
                }
            }
            self.parked = kept;
        }
    }

    /// The ports of `datagram`, if its first fragment came.
    pub fn ports(&self, datagram: &DatagramId) -> Option<(NetU16, NetU16)> {
        self.ports.get(datagram).map(|&(s, d, _)| (s, d))
    }

    /// Parks a copy of a later fragment that came before its first.
    pub fn park(&mut self, datagram: DatagramId, packet: CorePacket, now: Timestamp) -> Parked {
        if self.parked.len() >= MAX_PARKED {
            return Parked::Full;
        }
        self.parked.push_back((datagram, packet, now));
        Parked::Waiting
    }

    /// Fragments parked now.
    pub fn parked(&self) -> usize {
        self.parked.len()
    }

    /// Whether `at` is when `datagram` was last learnt (not an entry of the
    /// order that a repeat of its first fragment made stale).
    fn is_current(&self, datagram: &DatagramId, at: Timestamp) -> bool {
        self.ports.get(datagram).is_some_and(|&(_, _, seen)| seen == at)
    }

    /// Forgets datagrams and drops parked fragments older than
    /// [`FRAGMENT_TIMEOUT`]; returns how many fragments it dropped.
    pub fn expire(&mut self, now: Timestamp) -> usize {
        let old = |at: &Timestamp| now.as_nanos().saturating_sub(at.as_nanos()) > FRAGMENT_TIMEOUT;
        while let Some((datagram, at)) = self.learnt.front() {
            if !old(at) {
                break;
            }
            // A datagram learnt again since keeps its newer entry.
            if self.is_current(datagram, *at) {
                self.ports.remove(datagram);
            }
            self.learnt.pop_front();
        }
        let before = self.parked.len();
        while self.parked.front().is_some_and(|(_, _, at)| old(at)) {
            self.parked.pop_front();
        }
        before - self.parked.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(id: u32) -> DatagramId {
        DatagramId {
            key: FlowKey {
                protocol: 17,
                ip_version: 4,
                ..FlowKey::default()
            },
            id,
        }
    }

    fn packet(tag: u8) -> CorePacket {
        let mut p = CorePacket {
            worker: 0,
            hops: 0,
            sender: u16::MAX,
            len: 1,
            data: [0; super::super::pipeline::CORE_FRAME],
        };
        p.data[0] = tag;
        p
    }

    const PORTS: (NetU16, NetU16) = (NetU16(1), NetU16(2));

    #[test]
    fn parked_fragments_go_on_in_order_once_their_first_comes() {
        let mut t = FragmentTracker::new();
        let at = Timestamp::from_nanos(1);
        assert_eq!(t.ports(&datagram(7)), None);
        for tag in [1, 2] {
            assert_eq!(t.park(datagram(7), packet(tag), at), Parked::Waiting);
        }
        assert_eq!(t.park(datagram(8), packet(9), at), Parked::Waiting);
        let mut released = Vec::new();
        t.learn(datagram(7), PORTS, at, &mut released);
        assert_eq!(released.iter().map(|p| p.data[0]).collect::<Vec<_>>(), [1, 2]);
        assert_eq!((t.ports(&datagram(7)), t.parked()), (Some(PORTS), 1));
    }

    #[test]
    fn the_pen_and_the_table_are_bounded() {
        let mut t = FragmentTracker::new();
        let at = Timestamp::from_nanos(1);
        for i in 0..MAX_PARKED {
            assert_eq!(t.park(datagram(i as u32), packet(0), at), Parked::Waiting);
        }
        assert_eq!(t.park(datagram(0), packet(0), at), Parked::Full);
        let mut released = Vec::new();
        for i in 0..MAX_DATAGRAMS as u32 + 10 {
            t.learn(datagram(1_000_000 + i), PORTS, at, &mut released);
        }
        assert_eq!(t.ports.len(), MAX_DATAGRAMS);
        assert_eq!(t.ports(&datagram(1_000_000)), None, "the oldest is forgotten first");
        assert!(t.ports(&datagram(1_000_000 + MAX_DATAGRAMS as u32 + 9)).is_some());
    }

    #[test]
    fn a_repeated_first_fragment_is_remembered_from_its_repeat_and_memory_stays_bounded() {
        let mut t = FragmentTracker::new();
        let mut released = Vec::new();
        t.learn(datagram(1), PORTS, Timestamp::from_nanos(0), &mut released);
        let again = Timestamp::from_nanos(FRAGMENT_TIMEOUT / 2);
        t.learn(datagram(1), PORTS, again, &mut released);
        // Past the first learning's timeout, the repeat keeps it.
        assert_eq!(t.expire(Timestamp::from_nanos(FRAGMENT_TIMEOUT + 1)), 0);
        assert_eq!(t.ports(&datagram(1)), Some(PORTS));
        // Past the repeat's, it is forgotten: nothing is left behind.
        t.expire(Timestamp::from_nanos(FRAGMENT_TIMEOUT / 2 + FRAGMENT_TIMEOUT + 1));
        assert_eq!((t.ports.len(), t.learnt.len()), (0, 0));
        // A flood of repeats of the same first fragments, and of new ones,
        // within one timeout keeps both the table and the order bounded, and
        // evicts by the newest learning.
        for round in 0..50u64 {
            for i in 0..MAX_DATAGRAMS as u32 {
                t.learn(datagram(i), PORTS, Timestamp::from_nanos(round), &mut released);
            }
        }
        t.learn(datagram(0), PORTS, Timestamp::from_nanos(50), &mut released);
        t.learn(datagram(u32::MAX), PORTS, Timestamp::from_nanos(50), &mut released);
        assert_eq!(t.ports.len(), MAX_DATAGRAMS);
        assert!(t.learnt.len() <= 2 * MAX_DATAGRAMS + 1, "{}", t.learnt.len());
        assert_eq!(t.ports(&datagram(0)), Some(PORTS), "learnt last, kept");
        assert_eq!(t.ports(&datagram(1)), None, "the least recently learnt went");
    }

    #[test]
    fn what_waits_too_long_is_dropped_and_forgotten() {
        let mut t = FragmentTracker::new();
        let mut released = Vec::new();
        t.learn(datagram(1), PORTS, Timestamp::from_nanos(0), &mut released);
        t.park(datagram(2), packet(0), Timestamp::from_nanos(0));
        t.park(datagram(3), packet(0), Timestamp::from_nanos(FRAGMENT_TIMEOUT));
        assert_eq!(t.expire(Timestamp::from_nanos(FRAGMENT_TIMEOUT)), 0);
        assert_eq!(t.expire(Timestamp::from_nanos(FRAGMENT_TIMEOUT + 1)), 1);
        assert_eq!((t.ports(&datagram(1)), t.parked()), (None, 1));
    }
}
