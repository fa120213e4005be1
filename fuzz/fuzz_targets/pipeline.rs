//! The node pipeline (`handoff::node::pipeline`) on the in-memory backend,
//! fed a burst of arbitrary frames.
//!
//! The node is node 0 of two, with two workers; node 1 is its fabric peer.
//! Frames reach worker 0 through a `MemoryPort`, like a worker loop runs
//! them: what a worker hands to another core runs on that core's pipeline,
//! parked fragments that their first fragment released run again, and the
//! clock moves as the input says.
//!
//! Input: records, each `[control, len_hi, len_lo, frame[len]]` (the last
//! frame takes what is left when fewer bytes follow). `control`: bits 0-2
//! the fabric/core crossings the frame arrived with, bits 3-7 seconds the
//! clock moves before it. `fuzz/src/bin` does not exist: the seed
//! generator (`handoff-fuzz-seeds` in the tests crate) writes this format.
//!
//! Invariants: no panic and no endless loop; every frame is accounted for
//! (sent, dropped with a reason, handed to a core, parked, held);
//! the port's frame pool never loses a frame; every frame sent parses
//! (a fabric frame: its header and the packet inside); a frame whose input
//! had valid checksums is sent with valid checksums; once the clock has
//! moved past every timeout, no parked fragment is left behind.
#![no_main]

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use handoff::{
    flow::{config::PolicyConfig, Policy, Timestamp},
    io::{
        memory::{MemoryFrame, MemoryPort},
        FrameBuf, PacketIo, Verdict,
    },
    node::{
        fabric::{decapsulate, FabricError},
        fragments::FRAGMENT_TIMEOUT,
        pipeline::{CorePacket, Outbox, Pipeline, RouterSettings, WorkerCounters, CORE_FRAME, NO_SENDER},
        view::NodeView,
    },
    scope::{HashParams, Scope},
};
use handoff_common::{fabric::FABRIC_ETHERTYPE, parse::parse_frame};
use libfuzzer_sys::fuzz_target;
use std::{
    collections::VecDeque,
    path::Path,
    sync::{Arc, OnceLock},
};

const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0xfd, 0];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0xfd, 1];
const WORKERS: u8 = 2;
const BUCKETS: u32 = 256;
/// Headroom of a frame another core hands over (the worker loop's).
const INBOX_HEADROOM: usize = 64;
/// Core handoffs and released fragments one input frame may cause at most
/// before the harness calls it an endless loop.
const MAX_FOLLOW_UPS: usize = 4096;
const SECOND: u64 = 1_000_000_000;
/// Record header: control byte and a big-endian length.
const RECORD_HEADER: usize = 3;

/// Two services per family, a VIP that rejects, echo replies, a small table.
const POLICY: &str = r#"
[table]
capacity = 64
miss_policy = "drop"

[timeouts]
tcp_established = 60
tcp_transitory = 20
tcp_closing = 10
udp = 30
other = 10

[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "forward"
gateway = "router"
vip = "reject"

[icmp]
echo = "reply"
errors_per_second = 1000

[[service]]
vip = "10.0.9.1"
protocol = "udp"
port = 53
[[service.backend]]
address = "10.1.0.1"
port = 5353
mac = "02:00:00:00:01:04"

[[service]]
vip = "10.0.9.1"
protocol = "tcp"
port = 80
[[service.backend]]
address = "10.1.0.1"
port = 8080
mac = "02:00:00:00:01:04"
[[service.backend]]
address = "10.1.0.2"
port = 8080

[[service]]
vip = "fd00::9:1"
protocol = "udp"
port = 53
[[service.backend]]
address = "fd00::1:1"
port = 5353
mac = "02:00:00:00:01:06"

[[service]]
vip = "fd00::9:1"
protocol = "tcp"
port = 80
[[service.backend]]
address = "fd00::1:1"
port = 8080
mac = "02:00:00:00:01:06"
"#;

struct Node {
    workers: Vec<Pipeline>,
    port: MemoryPort,
    out: Outbox,
    scratch: MemoryFrame,
    now: u64,
    /// Parked fragments run again after their first fragment came.
    released_runs: u64,
}

impl Node {
    fn new() -> Self {
        // Built once: a policy's backend tables and a view's bucket maps
        // take far longer than a burst, and neither changes under traffic.
        static SHARED: OnceLock<(Arc<Policy>, Arc<NodeView>)> = OnceLock::new();
        let (policy, view) = SHARED.get_or_init(|| {
            let config = PolicyConfig::parse(POLICY, Path::new("policy.toml")).expect("the harness policy parses");
            let policy = Arc::new(Policy::new(config).expect("the harness policy is valid"));
            let hash = HashParams {
                buckets: BUCKETS,
                symmetric: false,
                seed: 0,
            };
            let scope = Scope::initial(BUCKETS, &[0, 1]).expect("two members");
            let view = Arc::new(NodeView::new(
                0,
                hash,
                scope,
                WORKERS,
                vec![Some(NODE_MAC), Some(PEER_MAC)],
            ));
            (policy, view)
        });
        let router = RouterSettings {
            ip_mtu: 1500,
            addresses: vec!["10.0.0.254".parse().unwrap(), "fd00::fe".parse().unwrap()],
        };
        let workers = (0..WORKERS)
            .map(|w| {
                Pipeline::new(w, NODE_MAC, Arc::clone(view), Arc::clone(policy), 64)
                    .expect("pipeline")
                    .with_router(router.clone())
            })
            .collect();
        Self {
            workers,
            port: MemoryPort::new(32, CORE_FRAME, 1),
            out: Outbox::with_capacity(8),
            scratch: MemoryFrame::new(CORE_FRAME, INBOX_HEADROOM),
            now: SECOND,
            released_runs: 0,
        }
    }

    fn at(&self) -> Timestamp {
        Timestamp::from_nanos(self.now)
    }

    /// Runs one frame from the wire through worker 0, then everything it
    /// caused, checking what each run sent.
    fn receive(&mut self, frame: &[u8], hops: u8) {
        if self.port.inject(frame).is_err() {
            // Larger than a port frame: the NIC would not deliver it.
            return;
        }
        let valid = checksums_valid(frame);
        let now = self.at();
        let Self { workers, port, out, .. } = self;
        let handled = port.poll_rx(|f| workers[0].process(f, hops, now, out));
        assert_eq!(handled, 1);
        self.check_sent(valid);
        // In the order the worker loop runs them: what each run handed on
        // goes after what was already waiting.
        let mut queue: VecDeque<(CorePacket, bool)> = VecDeque::new();
        let mut follow_ups = 0;
        loop {
            queue.extend(self.out.to_cores.drain(..).map(|p| (p, false)));
            queue.extend(self.out.released.drain(..).map(|p| (p, true)));
            let Some((next, released)) = queue.pop_front() else {
                break;
            };
            if released {
                self.released_runs += 1;
            }
            follow_ups += 1;
            assert!(follow_ups <= MAX_FOLLOW_UPS, "a frame keeps causing work");
            self.run_copy(&next);
        }
        // Held packets and installed flows are the worker loop's business.
        self.out.held.clear();
        self.out.installed.clear();
    }

    /// Runs a frame another core handed over, as the worker loop does.
    fn run_copy(&mut self, packet: &CorePacket) {
        assert!(packet.worker < WORKERS, "handed to core {} of {WORKERS}", packet.worker);
        let bytes = &packet.data[..usize::from(packet.len)];
        let valid = checksums_valid(bytes);
        self.scratch
            .load(bytes, INBOX_HEADROOM)
            .expect("a core frame fits the scratch frame");
        let sender = (packet.sender != NO_SENDER).then_some(packet.sender);
        let now = self.at();
        let pipeline = &mut self.workers[usize::from(packet.worker)];
        if pipeline.process_from(&mut self.scratch, packet.hops, sender, now, &mut self.out) == Verdict::Transmit {
            self.port
                .send(self.scratch.bytes())
                .expect("the port has frames to send with");
        }
        self.check_sent(valid);
    }

    fn check_sent(&mut self, input_valid: bool) {
        self.port.drain_tx(|sent| {
            let inner = match fabric_inner(sent) {
                Some(Ok(inner)) => inner,
                Some(Err(e)) => panic!("sent a fabric frame that does not decapsulate ({e:?}): {sent:02x?}"),
                None => sent.to_vec(),
            };
            if let Err(e) = parse_frame(inner.as_slice()) {
                panic!("sent a frame that does not parse ({e:?}): {sent:02x?}");
            }
            if input_valid {
                assert!(
                    checksums_valid(&inner),
                    "valid input sent with a bad checksum: {inner:02x?}"
                );
            }
        });
        assert_eq!(
            self.port.frames_accounted(),
            self.port.total_frames(),
            "a port frame leaked"
        );
    }

    /// Moves the clock and runs every expiry sweep.
    fn advance(&mut self, seconds: u64) {
        if seconds == 0 {
            return;
        }
        self.now += seconds * SECOND;
        let now = self.at();
        for w in &mut self.workers {
            w.expire(now, 1024);
        }
    }

    fn check_balanced(&self) {
        for w in &self.workers {
            let c = w.counters();
            // A parked fragment has two outcomes when it times out: parked,
            // then dropped.
            assert_eq!(
                c.rx + c.drop_fragment_timeout,
                c.tx + c.dropped() + c.forwarded_to_core + c.markers + c.held + c.fragments_parked,
                "{c:?}"
            );
        }
    }

    /// Parked fragments not yet run again nor timed out.
    fn still_parked(&self) -> u64 {
        let total = |f: fn(&WorkerCounters) -> u64| self.workers.iter().map(|w| f(&w.counters())).sum::<u64>();
        total(|c| c.fragments_parked) - total(|c| c.drop_fragment_timeout) - self.released_runs
    }
}

/// The plain frame inside a fabric frame (as its receiver decapsulates
/// it), or `None` for a frame of another EtherType.
fn fabric_inner(frame: &[u8]) -> Option<Result<Vec<u8>, FabricError>> {
    if frame.get(12..14)? != FABRIC_ETHERTYPE.to_be_bytes() {
        return None;
    }
    let mut copy = MemoryFrame::new(frame.len(), 0);
    copy.load(frame, 0).expect("a frame of its own length fits");
    Some(decapsulate(&mut copy, PEER_MAC).map(|_| copy.bytes().to_vec()))
}

/// Whether `frame` parses with `etherparse` (an independent implementation)
/// and every checksum it carries is right: the IPv4 header's, and the
/// TCP/UDP/ICMP one of an unfragmented packet (a zero UDP-over-IPv4
/// checksum means none, RFC 768); a fabric frame's, those of the packet
/// inside.
fn checksums_valid(frame: &[u8]) -> bool {
    if let Some(inner) = fabric_inner(frame) {
        return inner.is_ok_and(|inner| checksums_valid(&inner));
    }
    let Ok(p) = PacketHeaders::from_ethernet_slice(frame) else {
        return false;
    };
    let payload = p.payload.slice();
    match (&p.net, &p.transport) {
        (Some(NetHeaders::Ipv4(ip, _)), transport) => {
            if ip.header_checksum != ip.calc_header_checksum() {
                return false;
            }
            match transport {
                Some(TransportHeader::Udp(u)) => {
                    u.checksum == 0 || u.calc_checksum_ipv4(ip, payload).is_ok_and(|c| c == u.checksum)
                }
                Some(TransportHeader::Tcp(t)) => t.calc_checksum_ipv4(ip, payload).is_ok_and(|c| c == t.checksum),
                Some(TransportHeader::Icmpv4(i)) => i.icmp_type.calc_checksum(payload) == i.checksum,
                Some(TransportHeader::Icmpv6(_)) => false,
                None => true,
            }
        }
        (Some(NetHeaders::Ipv6(ip, _)), transport) => match transport {
            Some(TransportHeader::Udp(u)) => u.calc_checksum_ipv6(ip, payload).is_ok_and(|c| c == u.checksum),
            Some(TransportHeader::Tcp(t)) => t.calc_checksum_ipv6(ip, payload).is_ok_and(|c| c == t.checksum),
            Some(TransportHeader::Icmpv6(i)) => i
                .icmp_type
                .calc_checksum(ip.source, ip.destination, payload)
                .is_ok_and(|c| c == i.checksum),
            Some(TransportHeader::Icmpv4(_)) => false,
            None => true,
        },
        (None, _) => true,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut node = Node::new();
    let mut rest = data;
    while let Some((&control, after)) = rest.split_first() {
        let len = match after {
            [hi, lo, ..] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => break,
        };
        let body = &after[RECORD_HEADER - 1..];
        let (frame, next) = body.split_at(len.min(body.len()));
        rest = next;
        node.advance(u64::from(control >> 3));
        node.receive(frame, control & 0x7);
        node.check_balanced();
    }
    // Past every timeout, nothing parked is left behind.
    node.advance(FRAGMENT_TIMEOUT / SECOND + 1);
    node.check_balanced();
    assert_eq!(node.still_parked(), 0, "parked fragments outlived their timeout");
});
