//! The node's per-packet logic ([`Pipeline::process`]) run on the in-memory
//! port: NAT rewrites checked by `etherparse` (an independent implementation
//! of every checksum), the flow lifecycle, a full table, owner forwarding
//! between cores and nodes, malformed input, and frame accounting.

use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader, VlanId};
use handoff::{
    flow::{config::PolicyConfig, Owner, Policy, TcpState, Timestamp},
    io::{memory::MemoryPort, PacketIo, Verdict},
    node::{
        fabric::{self, Marker, INNER_OFFSET},
        pipeline::{Outbox, Pipeline, RouterSettings, WorkerCounters},
        view::NodeView,
    },
    scope::{HashParams, Scope},
};
use handoff_common::{
    fabric::{ANY_WORKER, FABRIC_ETHERTYPE, FABRIC_MAX_HOPS, FABRIC_VERSION},
    flow_key::FlowKey,
    parse::{
        parse_frame,
        tcp_flags::{ACK, FIN, RST, SYN},
    },
};
use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::Arc,
};

const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0xfd, 0];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0xfd, 1];
/// Node 2's, in the views that have one.
const THIRD_MAC: [u8; 6] = [2, 0, 0, 0, 0xfd, 2];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const BACKEND4_MAC: [u8; 6] = [2, 0, 0, 0, 1, 4];
const BACKEND6_MAC: [u8; 6] = [2, 0, 0, 0, 1, 6];

/// One backend per service, so the backend a flow gets is known.
const POLICY: &str = r#"
[table]
capacity = 1024

[timeouts]
tcp_established = 3600
tcp_transitory = 60
tcp_closing = 10
udp = 30

[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "forward"
gateway = "router"

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

const BUCKETS: u32 = 256;
const SECOND: u64 = 1_000_000_000;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_nanos(secs * SECOND)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(s: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(s), port)
}

fn hash() -> HashParams {
    HashParams {
        buckets: BUCKETS,
        symmetric: false,
        seed: 0,
    }
}

/// Node 0 alone, one worker: every flow is ours.
fn solo_view() -> Arc<NodeView> {
    let scope = Scope::initial(BUCKETS, &[0]).unwrap();
    Arc::new(NodeView::new(0, hash(), scope, 1, vec![Some(NODE_MAC)]))
}

/// Node 0 of nodes 0 and 1, two workers each.
fn pair_view() -> Arc<NodeView> {
    let scope = Scope::initial(BUCKETS, &[0, 1]).unwrap();
    Arc::new(NodeView::new(0, hash(), scope, 2, vec![Some(NODE_MAC), Some(PEER_MAC)]))
}

/// A worker's pipeline and a port to feed it through.
struct Node {
    pipeline: Pipeline,
    port: MemoryPort,
    out: Outbox,
}

impl Node {
    fn new(policy: &str, view: Arc<NodeView>, worker: u8) -> Self {
        let config = PolicyConfig::parse(policy, Path::new("policy.toml")).unwrap();
        let policy = Arc::new(Policy::new(config).unwrap());
        Self {
            pipeline: Pipeline::new(worker, NODE_MAC, view, policy, 64).unwrap(),
            port: MemoryPort::new(8, 2048, 8),
            out: Outbox::with_capacity(8),
        }
    }

    /// Worker 0 of the node in `view`, forwarding with `router`.
    fn routing(policy: &str, view: Arc<NodeView>, router: RouterSettings) -> Self {
        let node = Self::new(policy, view, 0);
        Self {
            pipeline: node.pipeline.with_router(router),
            ..node
        }
    }

    fn solo() -> Self {
        Self::new(POLICY, solo_view(), 0)
    }

    /// Runs one frame through the port and the pipeline; the frame it
    /// transmitted, if any.
    fn handle(&mut self, frame: &[u8], hops: u8, now: Timestamp) -> Option<Vec<u8>> {
        self.port.inject(frame).unwrap();
        let Self { pipeline, port, out } = self;
        let mut verdict = None;
        assert_eq!(
            port.poll_rx(|f| *verdict.insert(pipeline.process(f, hops, now, out))),
            1
        );
        let mut sent = self.port.take_transmitted();
        assert_eq!(self.port.frames_accounted(), self.port.total_frames());
        assert_balanced(&self.pipeline.counters());
        match verdict.unwrap() {
            Verdict::Transmit => {
                assert_eq!(sent.len(), 1);
                sent.pop()
            }
            Verdict::Drop => {
                assert!(sent.is_empty());
                None
            }
        }
    }

    fn counters(&self) -> WorkerCounters {
        self.pipeline.counters()
    }
}

/// Every frame handled was sent, dropped (and counted why), handed to
/// another core, or was a marker: none vanished uncounted.
fn assert_balanced(c: &WorkerCounters) {
    assert_eq!(
        c.rx,
        c.tx + c.dropped() + c.forwarded_to_core + c.markers + c.held + c.fragments_parked,
        "{c:?}"
    );
}

#[derive(Clone, Copy, Debug)]
enum L4 {
    Udp,
    Tcp(u8),
}

/// A valid frame from the client's MAC to the node's, checksums included.
fn packet(src: SocketAddr, dst: SocketAddr, l4: L4, payload: &[u8]) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
    let ip = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families"),
    };
    let mut frame = Vec::new();
    match l4 {
        L4::Udp => ip.udp(src.port(), dst.port()).write(&mut frame, payload).unwrap(),
        L4::Tcp(flags) => {
            let mut tcp = ip.tcp(src.port(), dst.port(), 1000, 4096);
            if flags & SYN != 0 {
                tcp = tcp.syn();
            }
            if flags & ACK != 0 {
                tcp = tcp.ack(1);
            }
            if flags & FIN != 0 {
                tcp = tcp.fin();
            }
            if flags & RST != 0 {
                tcp = tcp.rst();
            }
            tcp.write(&mut frame, payload).unwrap();
        }
    }
    frame
}

fn udp(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    packet(src, dst, L4::Udp, b"datagram")
}

fn tcp(src: SocketAddr, dst: SocketAddr, flags: u8) -> Vec<u8> {
    packet(src, dst, L4::Tcp(flags), b"segment")
}

fn key_of(frame: &[u8]) -> FlowKey {
    parse_frame(frame).unwrap().key
}

/// What `etherparse` reads from a frame.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

/// Parses `frame` with `etherparse` and asserts that every checksum in it is
/// the one `etherparse` computes.
fn seen(frame: &[u8]) -> Seen {
    let p = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let eth = p.link.clone().unwrap().ethernet2().unwrap();
    let payload = p.payload.slice();
    let transport = p.transport.as_ref().unwrap();
    let (src, dst, expected) = match p.net.as_ref().unwrap() {
        NetHeaders::Ipv4(h, _) => {
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
            let l4 = match transport {
                TransportHeader::Tcp(t) => t.calc_checksum_ipv4(h, payload).unwrap(),
                TransportHeader::Udp(u) => u.calc_checksum_ipv4(h, payload).unwrap(),
                other => panic!("not TCP/UDP: {other:?}"),
            };
            (IpAddr::from(h.source), IpAddr::from(h.destination), l4)
        }
        NetHeaders::Ipv6(h, _) => {
            let l4 = match transport {
                TransportHeader::Tcp(t) => t.calc_checksum_ipv6(h, payload).unwrap(),
                TransportHeader::Udp(u) => u.calc_checksum_ipv6(h, payload).unwrap(),
                other => panic!("not TCP/UDP: {other:?}"),
            };
            (IpAddr::from(h.source), IpAddr::from(h.destination), l4)
        }
    };
    let (ports, checksum) = match transport {
        TransportHeader::Tcp(t) => ((t.source_port, t.destination_port), t.checksum),
        TransportHeader::Udp(u) => {
            // Zero would mean "no checksum" and verify nothing; every frame
            // here was built with one.
            assert_ne!(u.checksum, 0, "UDP checksum missing");
            ((u.source_port, u.destination_port), u.checksum)
        }
        other => panic!("not TCP/UDP: {other:?}"),
    };
    assert_eq!(checksum, expected, "L4 checksum");
    Seen {
        src_mac: eth.source,
        dst_mac: eth.destination,
        src: SocketAddr::new(src, ports.0),
        dst: SocketAddr::new(dst, ports.1),
        payload: payload.to_vec(),
    }
}

/// A client's request to a service is DNATed to the backend and sent to the
/// backend's MAC; the backend's reply comes back from the VIP via the router.
fn dnat_round_trip(vip: &str, backend: &str, backend_mac: [u8; 6], client: &str, is_tcp: bool) {
    let mut node = Node::solo();
    let (port, backend_port) = if is_tcp { (80, 8080) } else { (53, 5353) };
    let client = sock(client, 40000);
    let (vip, backend) = (sock(vip, port), sock(backend, backend_port));
    let (open, answer, follow) = if is_tcp {
        (L4::Tcp(SYN), L4::Tcp(SYN | ACK), L4::Tcp(ACK))
    } else {
        (L4::Udp, L4::Udp, L4::Udp)
    };

    // Odd payload lengths: the checksums' padding byte matters.
    for (i, l4) in [open, follow].into_iter().enumerate() {
        let request = packet(client, vip, l4, b"request");
        let sent = node.handle(&request, 0, at(1)).expect("the request is sent");
        assert_eq!(
            seen(&sent),
            Seen {
                src_mac: NODE_MAC,
                dst_mac: backend_mac,
                src: client,
                dst: backend,
                payload: b"request".to_vec(),
            },
            "request {i}"
        );
    }

    let reply = packet(backend, client, answer, b"reply");
    let sent = node.handle(&reply, 0, at(2)).expect("the reply is sent");
    assert_eq!(
        seen(&sent),
        Seen {
            src_mac: NODE_MAC,
            dst_mac: ROUTER_MAC,
            src: vip,
            dst: client,
            payload: b"reply".to_vec(),
        }
    );
    let c = node.counters();
    assert_eq!((c.created, c.tx, c.dropped()), (1, 3, 0), "{c:?}");
}

#[test]
fn ipv4_udp_is_dnated_and_its_reply_un_rewritten() {
    dnat_round_trip("10.0.9.1", "10.1.0.1", BACKEND4_MAC, "10.0.0.7", false);
}

#[test]
fn ipv4_tcp_is_dnated_and_its_reply_un_rewritten() {
    dnat_round_trip("10.0.9.1", "10.1.0.1", BACKEND4_MAC, "10.0.0.7", true);
}

#[test]
fn ipv6_udp_is_dnated_and_its_reply_un_rewritten() {
    dnat_round_trip("fd00::9:1", "fd00::1:1", BACKEND6_MAC, "fd00::7", false);
}

#[test]
fn ipv6_tcp_is_dnated_and_its_reply_un_rewritten() {
    dnat_round_trip("fd00::9:1", "fd00::1:1", BACKEND6_MAC, "fd00::7", true);
}

#[test]
fn a_tagged_padded_frame_is_rewritten_without_its_padding() {
    let mut node = Node::solo();
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .single_vlan(VlanId::try_new(7).unwrap())
        .ipv4([10, 0, 0, 7], [10, 0, 9, 1], 64)
        .udp(40000, 53)
        .write(&mut frame, b"q")
        .unwrap();
    // Padding to the Ethernet minimum, not covered by any checksum.
    frame.resize(64, 0xa5);
    let sent = node.handle(&frame, 0, at(1)).expect("sent");
    assert_eq!(sent.len(), 64);
    assert_eq!(&sent[60..], &[0xa5; 4]);
    let s = seen(&sent);
    assert_eq!(
        (s.dst_mac, s.dst, s.payload),
        (BACKEND4_MAC, sock("10.1.0.1", 5353), b"q".to_vec())
    );
}

#[test]
fn options_and_extension_headers_keep_valid_checksums() {
    use etherparse::{IpHeaders, IpNumber, Ipv4Header, Ipv6Extensions, Ipv6Header, Ipv6RawExtHeader, TcpOptionElement};
    let mut node = Node::solo();
    let mut v4 = Ipv4Header::new(0, 64, IpNumber::TCP, [10, 0, 0, 7], [10, 0, 9, 1]).unwrap();
    // Router alert, then end of options.
    v4.options = [0x94, 0x04, 0, 0].as_slice().try_into().unwrap();
    // PadN filling a hop-by-hop header and a destination-options header.
    let pad = Ipv6RawExtHeader::new_raw(IpNumber::UDP, &[1, 4, 0, 0, 0, 0]).unwrap();
    let v6 = Ipv6Header {
        hop_limit: 64,
        source: ip_octets6("fd00::7"),
        destination: ip_octets6("fd00::9:1"),
        ..Default::default()
    };
    let extensions = Ipv6Extensions {
        hop_by_hop_options: Some(pad.clone()),
        destination_options: Some(pad),
        ..Default::default()
    };
    let mss = [
        TcpOptionElement::MaximumSegmentSize(1460),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
    ];
    let mut tcp4 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ip(IpHeaders::Ipv4(v4, Default::default()))
        .tcp(40000, 80, 1, 4096)
        .syn()
        .options(&mss)
        .unwrap()
        .write(&mut tcp4, b"with options")
        .unwrap();
    let mut udp6 = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .ip(IpHeaders::Ipv6(v6, extensions))
        .udp(40000, 53)
        .write(&mut udp6, b"behind extension headers")
        .unwrap();
    for (frame, backend, mac) in [
        (tcp4, sock("10.1.0.1", 8080), BACKEND4_MAC),
        (udp6, sock("fd00::1:1", 5353), BACKEND6_MAC),
    ] {
        let sent = node.handle(&frame, 0, at(1)).expect("sent");
        let (before, after) = (seen(&frame), seen(&sent));
        assert_eq!((after.dst_mac, after.src, after.dst), (mac, before.src, backend));
        assert_eq!(after.payload, before.payload);
        // Rewritten in place: no header grew or shrank.
        assert_eq!(sent.len(), frame.len());
    }
    assert_eq!(node.counters().created, 2);
}

#[test]
fn flows_are_installed_by_their_first_packet_both_ways() {
    let mut node = Node::solo();
    let (client, vip) = (sock("10.0.0.7", 40000), sock("10.0.9.1", 53));
    let request = udp(client, vip);
    node.handle(&request, 0, at(1)).expect("sent");
    let reply = udp(sock("10.1.0.1", 5353), client);
    let (forward, reverse) = (key_of(&request), key_of(&reply));
    assert_eq!(node.counters().created, 1);
    assert_eq!(node.pipeline.table().len(), 2);
    let table = node.pipeline.table();
    let f = table.entry(table.lookup(&forward).unwrap()).unwrap();
    let r = table.entry(table.lookup(&reverse).unwrap()).unwrap();
    assert_eq!((f.packets, r.packets), (1, 0));
    assert_eq!(f.owner, Owner { node: 0, worker: 0 });
    assert_eq!(node.out.installed.len(), 1);
    assert_eq!(
        (node.out.installed[0].forward, node.out.installed[0].reverse),
        (forward, reverse)
    );

    // Later packets of either direction use the flow: nothing new installed.
    node.handle(&request, 0, at(2)).expect("sent");
    node.handle(&reply, 0, at(2)).expect("sent");
    assert_eq!((node.counters().created, node.out.installed.len()), (1, 1));
    let table = node.pipeline.table();
    assert_eq!(table.entry(table.lookup(&forward).unwrap()).unwrap().packets, 2);
    assert_eq!(table.entry(table.lookup(&reverse).unwrap()).unwrap().packets, 1);
}

#[test]
fn tcp_without_syn_and_without_flow_is_dropped_and_counted() {
    let mut node = Node::solo();
    let (client, vip) = (sock("10.0.0.7", 40000), sock("10.0.9.1", 80));
    for flags in [ACK, FIN | ACK, RST, SYN | ACK, 0] {
        assert_eq!(
            node.handle(&tcp(client, vip, flags), 0, at(1)),
            None,
            "flags {flags:#x}"
        );
    }
    // A stray reply from the backend has no connection either.
    assert_eq!(node.handle(&tcp(sock("10.1.0.1", 8080), client, ACK), 0, at(1)), None);
    let c = node.counters();
    assert_eq!((c.drop_no_flow, c.created, c.tx), (6, 0, 0), "{c:?}");
    assert!(node.pipeline.table().is_empty());
}

#[test]
fn fins_both_ways_close_and_the_linger_then_removes_the_connection() {
    let mut node = Node::solo();
    let (client, vip, backend) = (sock("10.0.0.7", 40000), sock("10.0.9.1", 80), sock("10.1.0.1", 8080));
    let state = |node: &Node| {
        let table = node.pipeline.table();
        let slot = table.lookup(&key_of(&tcp(client, vip, ACK)));
        slot.map(|s| table.entry(s).unwrap().tcp)
    };
    let steps = [
        (tcp(client, vip, SYN), TcpState::SynSent),
        (tcp(backend, client, SYN | ACK), TcpState::Established),
        (tcp(client, vip, ACK), TcpState::Established),
        (tcp(client, vip, FIN | ACK), TcpState::FinForward),
        (tcp(backend, client, FIN | ACK), TcpState::Closing),
        (tcp(client, vip, ACK), TcpState::Closing),
    ];
    for (i, (frame, expected)) in steps.iter().enumerate() {
        node.handle(frame, 0, at(100)).expect("sent");
        assert_eq!(state(&node), Some(*expected), "step {i}");
    }
    let budget = node.pipeline.table().capacity();
    // Closing lingers 10 s, whatever the longer timeouts say.
    assert_eq!(node.pipeline.expire(at(109), budget), 0);
    assert_eq!(node.pipeline.expire(at(111), budget), 1);
    assert_eq!(state(&node), None);
    assert!(node.pipeline.table().is_empty());
    assert_eq!(node.pipeline.table().counters().closed, 1);
    // Late segments of the closed connection find nothing.
    assert_eq!(node.handle(&tcp(client, vip, ACK), 0, at(112)), None);
    assert_eq!(node.counters().drop_no_flow, 1);
}

#[test]
fn an_rst_closes_from_either_side() {
    let mut node = Node::solo();
    let (vip, backend) = (sock("10.0.9.1", 80), sock("10.1.0.1", 8080));
    for (port, from_backend) in [(40001, false), (40002, true)] {
        let client = sock("10.0.0.7", port);
        node.handle(&tcp(client, vip, SYN), 0, at(1)).expect("sent");
        node.handle(&tcp(backend, client, SYN | ACK), 0, at(1)).expect("sent");
        let rst = if from_backend {
            tcp(backend, client, RST)
        } else {
            tcp(client, vip, RST)
        };
        // The RST itself is forwarded so the other end learns of it.
        node.handle(&rst, 0, at(1)).expect("sent");
        let table = node.pipeline.table();
        let slot = table.lookup(&key_of(&tcp(client, vip, ACK))).unwrap();
        assert_eq!(table.entry(slot).unwrap().tcp, TcpState::Closing, "port {port}");
    }
    let budget = node.pipeline.table().capacity();
    assert_eq!(node.pipeline.expire(at(12), budget), 2);
    assert_eq!(node.pipeline.table().counters().closed, 2);
}

#[test]
fn idle_flows_expire_by_protocol_and_state_and_replies_keep_them_alive() {
    let mut node = Node::solo();
    let client = |port| sock("10.0.0.7", port);
    let (dns, web, backend) = (sock("10.0.9.1", 53), sock("10.0.9.1", 80), sock("10.1.0.1", 8080));
    let quiet = udp(client(1), dns);
    let chatty = udp(client(2), dns);
    node.handle(&quiet, 0, at(0)).expect("sent");
    node.handle(&chatty, 0, at(0)).expect("sent");
    // An established connection (1 h timeout) and a half-open one (60 s).
    node.handle(&tcp(client(3), web, SYN), 0, at(0)).expect("sent");
    node.handle(&tcp(backend, client(3), SYN | ACK), 0, at(0))
        .expect("sent");
    node.handle(&tcp(client(4), web, SYN), 0, at(0)).expect("sent");
    // Only the backend's reply refreshes the chatty flow.
    node.handle(&udp(sock("10.1.0.1", 5353), client(2)), 0, at(20))
        .expect("sent");

    let budget = node.pipeline.table().capacity();
    let present = |node: &Node, frame: &[u8]| node.pipeline.table().lookup(&key_of(frame)).is_some();
    assert_eq!(node.pipeline.expire(at(29), budget), 0);
    assert_eq!(node.pipeline.expire(at(31), budget), 1);
    assert!(!present(&node, &quiet));
    assert!(present(&node, &chatty));
    assert_eq!(node.pipeline.expire(at(51), budget), 1);
    assert!(!present(&node, &chatty));
    assert_eq!(node.pipeline.expire(at(61), budget), 1);
    assert!(!present(&node, &tcp(client(4), web, SYN)));
    assert_eq!(node.pipeline.expire(at(3599), budget), 0);
    assert!(present(&node, &tcp(client(3), web, ACK)));
    assert_eq!(node.pipeline.expire(at(3601), budget), 1);
    assert!(node.pipeline.table().is_empty());
    assert_eq!(node.pipeline.table().counters().expired, 4);

    // An expired flow is installed anew by its next packet.
    node.handle(&quiet, 0, at(4000)).expect("sent");
    assert_eq!(node.counters().created, 5);
}

#[test]
fn the_sweep_respects_its_budget() {
    let mut node = Node::solo();
    for port in 0..20 {
        node.handle(&udp(sock("10.0.0.7", 1000 + port), sock("10.0.7.7", 9)), 0, at(0))
            .expect("sent");
    }
    let mut removed = 0;
    for _ in 0..node.pipeline.table().capacity() / 8 {
        let n = node.pipeline.expire(at(100), 8);
        assert!(n <= 8);
        removed += n;
    }
    assert_eq!(removed, 20);
    assert!(node.pipeline.table().is_empty());
}

#[test]
fn a_full_table_evicts_to_install_and_never_panics() {
    for capacity in [2, 3, 4, 6] {
        let policy = POLICY.replace("capacity = 1024", &format!("capacity = {capacity}"));
        let mut node = Node::new(&policy, solo_view(), 0);
        let connections = capacity / 2;
        let flows = 50;
        for port in 0..flows {
            let client = sock("10.0.0.7", 1000 + port);
            let frame = if port % 2 == 0 {
                udp(client, sock("10.0.9.1", 53))
            } else {
                tcp(client, sock("10.0.9.1", 80), SYN)
            };
            let sent = node.handle(&frame, 0, at(port as u64)).expect("installed by evicting");
            assert_eq!(seen(&sent).dst_mac, BACKEND4_MAC);
            assert!(node.pipeline.table().len() <= capacity);
        }
        let table = node.pipeline.table().counters();
        let c = node.counters();
        assert_eq!(
            (c.created, c.drop_table_full),
            (flows as u64, 0),
            "capacity {capacity}: {c:?}"
        );
        assert_eq!(table.evicted, flows as u64 - connections as u64, "capacity {capacity}");
        assert_eq!(table.active, connections as u64);
        // The newest flow survived its own install.
        let newest = tcp(sock("10.0.0.7", 1000 + flows - 1), sock("10.0.9.1", 80), ACK);
        assert!(node.pipeline.table().lookup(&key_of(&newest)).is_some());
    }
}

/// Clients (to a non-service address) whose scope owner is `owner`.
fn clients_owned_by(view: &NodeView, owner: Owner) -> impl Iterator<Item = Vec<u8>> + '_ {
    (1000..u16::MAX)
        .map(|port| udp(sock("10.0.0.7", port), sock("10.0.7.7", 9)))
        .filter(move |frame| {
            let key = key_of(frame);
            let bucket = view.hash.bucket(&key);
            let by_scope = Owner {
                node: view.scope.owner(bucket) as u16,
                worker: view.worker_of_bucket[bucket as usize],
            };
            by_scope == owner
        })
}

fn first_owned_by(view: &NodeView, owner: Owner) -> Vec<u8> {
    clients_owned_by(view, owner).next().unwrap()
}

/// The fabric header fields of an encapsulated frame, read by hand.
#[derive(Debug, PartialEq, Eq)]
struct Fabric {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    version: u8,
    kind: u8,
    hops: u8,
    target_worker: u8,
    sender: u16,
    inner_ethertype: u16,
}

fn fabric_of(frame: &[u8]) -> Fabric {
    assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), FABRIC_ETHERTYPE);
    let h = &frame[14..INNER_OFFSET];
    Fabric {
        dst_mac: frame[..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        version: h[0],
        kind: h[1],
        hops: h[2],
        target_worker: h[3],
        sender: u16::from_be_bytes([h[4], h[5]]),
        inner_ethertype: u16::from_be_bytes([h[6], h[7]]),
    }
}

/// `plain` (an untagged frame) as node 1 sends it to node 0 over the fabric.
/// `frame` as a router forwards it: the IPv4 TTL one less, the header
/// checksum computed anew by etherparse.
fn routed(frame: &[u8]) -> Vec<u8> {
    let (mut ip, _) = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap();
    ip.time_to_live -= 1;
    ip.header_checksum = ip.calc_header_checksum();
    let mut out = frame.to_vec();
    out[14..14 + ip.header_len()].copy_from_slice(&ip.to_bytes());
    out
}

fn encapsulated(plain: &[u8], hops: u8, target_worker: u8) -> Vec<u8> {
    let mut frame = Vec::with_capacity(plain.len() + 16);
    frame.extend_from_slice(&NODE_MAC);
    frame.extend_from_slice(&PEER_MAC);
    frame.extend_from_slice(&FABRIC_ETHERTYPE.to_be_bytes());
    frame.extend_from_slice(&[FABRIC_VERSION, 1, hops, target_worker, 0, 1]);
    frame.extend_from_slice(&plain[12..14]);
    frame.extend_from_slice(&[0; 8]);
    frame.extend_from_slice(&plain[14..]);
    frame
}

#[test]
fn every_worker_of_every_node_gets_a_share_of_the_buckets() {
    for (nodes, workers) in [(2u32, 2u8), (3, 3), (2, 4), (4, 2)] {
        let members: Vec<u32> = (0..nodes).collect();
        let scope = Scope::initial(BUCKETS, &members).unwrap();
        for node in 0..nodes as u16 {
            let view = NodeView::new(node, hash(), scope.clone(), workers, vec![]);
            let mut share = vec![0u32; workers as usize];
            for bucket in scope.buckets_of(u32::from(node)) {
                share[view.worker_of_bucket[bucket as usize] as usize] += 1;
            }
            // Half the even share at least: no worker of a node sits idle.
            let even = BUCKETS / nodes / u32::from(workers);
            assert!(
                share.iter().all(|&s| s >= even / 2),
                "{nodes} nodes x {workers} workers, node {node}: {share:?}"
            );
        }
    }
}

#[test]
fn a_flow_of_the_other_worker_is_handed_to_its_core() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let frame = first_owned_by(&view, Owner { node: 0, worker: 1 });
    assert_eq!(node.handle(&frame, 0, at(1)), None);
    assert_eq!(node.out.to_cores.len(), 1);
    let packet = &node.out.to_cores[0];
    assert_eq!((packet.worker, packet.hops), (1, 1));
    assert_eq!(&packet.data[..packet.len as usize], &frame[..]);
    let c = node.counters();
    assert_eq!((c.forwarded_to_core, c.dropped(), c.created), (1, 0, 0), "{c:?}");
    assert!(node.pipeline.table().is_empty());

    // Our own flows stay here.
    let mine = first_owned_by(&view, Owner { node: 0, worker: 0 });
    let sent = node.handle(&mine, 0, at(1)).expect("sent");
    assert_eq!(seen(&sent).dst_mac, ROUTER_MAC);
    assert_eq!((node.out.to_cores.len(), node.counters().created), (1, 1));
}

#[test]
fn a_flow_of_the_other_node_is_encapsulated_to_it() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    for worker in [0, 1] {
        let frame = first_owned_by(&view, Owner { node: 1, worker });
        let sent = node.handle(&frame, 0, at(1)).expect("sent to the peer");
        assert_eq!(
            fabric_of(&sent),
            Fabric {
                dst_mac: PEER_MAC,
                src_mac: NODE_MAC,
                version: FABRIC_VERSION,
                kind: 1,
                hops: 1,
                // The scope cannot know the peer's cores: it picks one.
                target_worker: ANY_WORKER,
                sender: 0,
                inner_ethertype: 0x0800,
            }
        );
        // The IP packet travels byte for byte.
        assert_eq!(&sent[INNER_OFFSET..], &frame[14..]);
    }
    let c = node.counters();
    assert_eq!((c.forwarded_to_node, c.tx, c.created), (2, 2, 0), "{c:?}");
    assert!(node.out.to_cores.is_empty());

    // IPv6 keeps its EtherType inside.
    let frame = (1000..u16::MAX)
        .map(|port| udp(sock("fd00::7", port), sock("fd00::7:7", 9)))
        .find(|f| view.owner_by_scope(&key_of(f)).node == 1)
        .unwrap();
    let sent = node.handle(&frame, 0, at(1)).expect("sent to the peer");
    assert_eq!(fabric_of(&sent).inner_ethertype, 0x86dd);
    assert_eq!(&sent[INNER_OFFSET..], &frame[14..]);
}

#[test]
fn a_reply_goes_to_the_owner_of_its_connection() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let backend = sock("10.1.0.1", 5353);
    // A reply whose connection (client -> VIP) another node owns, though the
    // reply's own key may hash anywhere.
    let (request, owner) = (1000..u16::MAX)
        .map(|port| udp(sock("10.0.0.7", port), sock("10.0.9.1", 53)))
        .map(|f| {
            let owner = view.owner_by_scope(&key_of(&f));
            (f, owner)
        })
        .find(|(_, o)| o.node == 1)
        .unwrap();
    let client = seen(&request).src;
    let reply = udp(backend, client);
    let sent = node.handle(&reply, 0, at(1)).expect("sent to the peer");
    let f = fabric_of(&sent);
    assert_eq!((owner.node, f.dst_mac, f.target_worker), (1, PEER_MAC, ANY_WORKER));
    assert_eq!(&sent[INNER_OFFSET..], &reply[14..]);

    // A reply to a connection of ours that we do not hold is dropped.
    let (request, _) = (1000..u16::MAX)
        .map(|port| udp(sock("10.0.0.7", port), sock("10.0.9.1", 53)))
        .map(|f| {
            let owner = view.owner_by_scope(&key_of(&f));
            (f, owner)
        })
        .find(|(_, o)| *o == Owner { node: 0, worker: 0 })
        .unwrap();
    assert_eq!(node.handle(&udp(backend, seen(&request).src), 0, at(1)), None);
    assert_eq!(node.counters().drop_no_flow, 1);
}

#[test]
fn a_fabric_frame_for_us_is_decapsulated_and_handled() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let plain = first_owned_by(&view, Owner { node: 0, worker: 0 });
    let sent = node.handle(&encapsulated(&plain, 1, 0), 0, at(1)).expect("sent");
    let s = seen(&sent);
    let original = seen(&plain);
    assert_eq!(
        (s.src_mac, s.dst_mac, s.src, s.dst),
        (NODE_MAC, ROUTER_MAC, original.src, original.dst)
    );
    assert_eq!(u16::from_be_bytes([sent[12], sent[13]]), 0x0800);
    assert_eq!(&sent[14..], &routed(&plain)[14..]);
    let c = node.counters();
    assert_eq!((c.received_from_node, c.created, c.tx), (1, 1, 1), "{c:?}");

    // A service flow arriving over the fabric is DNATed like any other.
    let request = (1000..u16::MAX)
        .map(|port| udp(sock("10.0.0.7", port), sock("10.0.9.1", 53)))
        .find(|f| view.owner_by_scope(&key_of(f)) == Owner { node: 0, worker: 0 })
        .unwrap();
    let sent = node.handle(&encapsulated(&request, 2, 0), 0, at(1)).expect("sent");
    let s = seen(&sent);
    assert_eq!((s.dst_mac, s.dst), (BACKEND4_MAC, sock("10.1.0.1", 5353)));

    // One for our other worker goes to its core as a plain Ethernet frame.
    let other_core = first_owned_by(&view, Owner { node: 0, worker: 1 });
    assert_eq!(node.handle(&encapsulated(&other_core, 1, 1), 0, at(1)), None);
    let packet = &node.out.to_cores[0];
    let data = &packet.data[..packet.len as usize];
    assert_eq!((packet.worker, packet.hops), (1, 2));
    assert_eq!((&data[..6], &data[6..12]), (&NODE_MAC[..], &PEER_MAC[..]));
    assert_eq!(&data[12..], &other_core[12..]);

    // A drain marker is recorded, and a copy goes to the other core (after
    // what this core handed it before); it is no packet to forward.
    node.out.to_cores.clear();
    let mut marker = [0u8; INNER_OFFSET];
    let sent = Marker {
        sender: 1,
        lane: 1,
        lanes: 2,
        serial: 42,
    };
    fabric::write_marker(&mut marker, PEER_MAC, NODE_MAC, &sent, ANY_WORKER);
    assert_eq!(node.handle(&marker, 0, at(1)), None);
    let copy = &node.out.to_cores[0];
    assert_eq!((node.out.to_cores.len(), copy.worker, copy.sender), (1, 1, 1));
    let header = fabric::read_header(&copy.data[..copy.len as usize]).unwrap();
    assert_eq!(
        (header.kind, header.target_worker, header.lane.get(), header.lanes.get()),
        (2, 1, 1, 2)
    );
    assert_eq!((node.counters().markers, node.counters().dropped()), (1, 0));
}

#[test]
fn the_loop_guard_stops_frames_at_the_hop_limit() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let theirs = first_owned_by(&view, Owner { node: 1, worker: 0 });
    let other_core = first_owned_by(&view, Owner { node: 0, worker: 1 });

    // Below the limit a frame for the peer goes on, one hop more.
    let sent = node.handle(&encapsulated(&theirs, 1, 0), 0, at(1)).expect("forwarded");
    assert_eq!(fabric_of(&sent).hops, 2);
    assert_eq!(node.counters().forwarded_to_node, 1);

    // At the limit it would have to cross again: dropped.
    assert_eq!(node.handle(&encapsulated(&theirs, FABRIC_MAX_HOPS, 0), 0, at(1)), None);
    // Beyond it the header itself is refused.
    assert_eq!(
        node.handle(&encapsulated(&theirs, FABRIC_MAX_HOPS + 1, 0), 0, at(1)),
        None
    );
    // Core handoffs count as hops too.
    assert_eq!(node.handle(&other_core, FABRIC_MAX_HOPS, at(1)), None);
    assert_eq!(node.handle(&theirs, FABRIC_MAX_HOPS, at(1)), None);
    assert_eq!(
        node.handle(&encapsulated(&other_core, FABRIC_MAX_HOPS, 0), 0, at(1)),
        None
    );
    let c = node.counters();
    assert_eq!(
        (c.drop_loop_guard, c.forwarded_to_node, c.forwarded_to_core),
        (5, 1, 0),
        "{c:?}"
    );
    assert!(node.out.to_cores.is_empty());
}

#[test]
fn an_ownership_entry_overrides_the_scope() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let mine = first_owned_by(&view, Owner { node: 0, worker: 0 });
    let theirs = first_owned_by(&view, Owner { node: 1, worker: 0 });
    let elsewhere = Owner { node: 1, worker: 1 };
    let other_core = Owner { node: 0, worker: 1 };

    assert!(node.pipeline.ownership_mut().set(key_of(&mine), elsewhere, 5));
    assert!(node.pipeline.ownership_mut().set(key_of(&theirs), other_core, 5));
    let sent = node.handle(&mine, 0, at(1)).expect("sent to the peer");
    let f = fabric_of(&sent);
    assert_eq!((f.dst_mac, f.target_worker, f.hops), (PEER_MAC, 1, 1));
    assert_eq!(node.handle(&theirs, 0, at(1)), None);
    assert_eq!((node.out.to_cores.len(), node.out.to_cores[0].worker), (1, 1));

    // An older announcement does not undo a newer one.
    assert!(!node
        .pipeline
        .ownership_mut()
        .set(key_of(&mine), Owner { node: 0, worker: 0 }, 4));
    assert_eq!(fabric_of(&node.handle(&mine, 0, at(1)).expect("sent")).target_worker, 1);

    // Announced as ours: handled here, whatever the scope says.
    let also_theirs = clients_owned_by(&view, Owner { node: 1, worker: 1 }).next().unwrap();
    let me = node.pipeline.owner();
    assert!(node.pipeline.ownership_mut().set(key_of(&also_theirs), me, 1));
    let sent = node.handle(&also_theirs, 0, at(1)).expect("sent");
    assert_eq!(seen(&sent).dst_mac, ROUTER_MAC);

    let c = node.counters();
    assert_eq!(
        (c.forwarded_to_node, c.forwarded_to_core, c.created, c.dropped()),
        (2, 1, 1, 0),
        "{c:?}"
    );
}

#[test]
fn a_redirected_flow_follows_its_new_owner() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let mine = first_owned_by(&view, Owner { node: 0, worker: 0 });
    node.handle(&mine, 0, at(1)).expect("sent");
    let slot = node.pipeline.table().lookup(&key_of(&mine)).unwrap();
    for (owner, encapsulated) in [
        (Owner { node: 1, worker: 1 }, true),
        (Owner { node: 0, worker: 1 }, false),
    ] {
        node.pipeline.table_mut().redirect(slot, owner).unwrap();
        match node.handle(&mine, 0, at(2)) {
            Some(sent) => {
                assert!(encapsulated, "{owner:?}");
                let f = fabric_of(&sent);
                assert_eq!((f.dst_mac, f.target_worker), (PEER_MAC, 1));
                assert_eq!(&sent[INNER_OFFSET..], &mine[14..]);
            }
            None => {
                assert!(!encapsulated, "{owner:?}");
                assert_eq!(node.out.to_cores.last().unwrap().worker, 1);
            }
        }
    }
    let c = node.counters();
    assert_eq!(
        (c.forwarded_to_node, c.forwarded_to_core, c.created, c.dropped()),
        (1, 1, 1, 0),
        "{c:?}"
    );
}

#[test]
fn an_owner_without_a_known_address_is_a_counted_drop() {
    let scope = Scope::initial(BUCKETS, &[0, 1]).unwrap();
    let view = Arc::new(NodeView::new(0, hash(), scope, 2, vec![Some(NODE_MAC), None]));
    let mut node = Node::new(POLICY, view.clone(), 0);
    let theirs = first_owned_by(&view, Owner { node: 1, worker: 0 });
    assert_eq!(node.handle(&theirs, 0, at(1)), None);
    // A node id beyond the peer list.
    let mine = first_owned_by(&view, Owner { node: 0, worker: 0 });
    node.pipeline
        .ownership_mut()
        .set(key_of(&mine), Owner { node: 9, worker: 0 }, 1);
    assert_eq!(node.handle(&mine, 0, at(1)), None);
    assert_eq!(node.counters().drop_unknown_owner, 2);
}

/// Valid frames of every shape the tests use.
fn sample_frames() -> Vec<Vec<u8>> {
    let (c4, c6) = (sock("10.0.0.7", 40000), sock("fd00::7", 40000));
    let mut tagged = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
        .single_vlan(VlanId::try_new(7).unwrap())
        .ipv6(ip_octets6("fd00::7"), ip_octets6("fd00::9:1"), 64)
        .tcp(40000, 80, 1, 4096)
        .syn()
        .write(&mut tagged, b"x")
        .unwrap();
    vec![
        udp(c4, sock("10.0.9.1", 53)),
        tcp(c4, sock("10.0.9.1", 80), SYN),
        udp(c6, sock("fd00::9:1", 53)),
        tcp(c6, sock("fd00::9:1", 80), SYN),
        tagged,
    ]
}

fn ip_octets6(s: &str) -> [u8; 16] {
    match ip(s) {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => panic!("not IPv6"),
    }
}

#[test]
fn truncated_frames_are_counted_drops_at_every_length() {
    let mut node = Node::solo();
    let mut expected = 0;
    for frame in sample_frames() {
        for len in 0..frame.len() {
            assert_eq!(node.handle(&frame[..len], 0, at(1)), None, "{len} of {}", frame.len());
            expected += 1;
        }
        // Cut inside the fabric header, or inside the packet it carries.
        let wrapped = encapsulated(&frame, 1, 0);
        for len in 0..wrapped.len() {
            assert_eq!(node.handle(&wrapped[..len], 0, at(1)), None, "fabric, {len}");
            expected += 1;
        }
    }
    let c = node.counters();
    assert_eq!(c.dropped(), expected, "{c:?}");
    assert_eq!((c.tx, c.created), (0, 0));
    // A solo node has no member that may send it fabric frames: the cut
    // ones past the Ethernet header fall to that check first (a pair's
    // node reads bad headers in `bogus_fabric_headers_are_counted_drops`).
    assert_eq!(
        c.drop_malformed + c.drop_bad_fabric + c.drop_fabric_non_member,
        expected,
        "{c:?}"
    );
    assert!(node.pipeline.table().is_empty());
}

#[test]
fn lying_headers_are_malformed() {
    let mut node = Node::solo();
    let v4 = udp(sock("10.0.0.7", 40000), sock("10.0.9.1", 53));
    let v4_tcp = tcp(sock("10.0.0.7", 40000), sock("10.0.9.1", 80), SYN);
    let v6 = udp(sock("fd00::7", 40000), sock("fd00::9:1", 53));
    // (frame, offset, bytes written there)
    let patches: [(&[u8], usize, &[u8]); 8] = [
        (&v4, 14, &[0x44]),       // IHL below 5
        (&v4, 14, &[0x65]),       // version 6 in an IPv4 EtherType
        (&v4, 16, &[0xff, 0xff]), // total length beyond the frame
        (&v4, 38, &[0, 4]),       // UDP length below 8
        (&v4, 38, &[0xff, 0]),    // UDP length beyond the packet
        (&v4_tcp, 46, &[0x40]),   // TCP data offset below 5
        (&v6, 18, &[0xff, 0xff]), // payload length beyond the frame
        (&v4, 12, &[0x08, 0x06]), // ARP
    ];
    for (i, (frame, at_offset, bytes)) in patches.into_iter().enumerate() {
        let mut frame = frame.to_vec();
        frame[at_offset..at_offset + bytes.len()].copy_from_slice(bytes);
        assert_eq!(node.handle(&frame, 0, at(1)), None, "patch {i}");
    }
    let c = node.counters();
    assert_eq!((c.drop_malformed, c.tx), (8, 0), "{c:?}");
    assert!(node.pipeline.table().is_empty());
}

#[test]
fn bogus_fabric_headers_are_counted_drops() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let plain = first_owned_by(&view, Owner { node: 0, worker: 0 });
    let good = encapsulated(&plain, 1, 0);
    let edits: [fn(&mut Vec<u8>); 4] = [
        |f| f[14] = FABRIC_VERSION + 1,
        |f| f[15] = 0,
        |f| f[15] = 77,
        |f| f.truncate(20),
    ];
    for (i, edit) in edits.into_iter().enumerate() {
        let mut frame = good.clone();
        edit(&mut frame);
        assert_eq!(node.handle(&frame, 0, at(1)), None, "edit {i}");
    }
    assert_eq!(node.counters().drop_bad_fabric, 4);
    // A well-formed header around something that is not IP.
    let mut frame = good.clone();
    frame[20..22].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(node.handle(&frame, 0, at(1)), None);
    let mut frame = good.clone();
    frame.truncate(INNER_OFFSET + 10);
    assert_eq!(node.handle(&frame, 0, at(1)), None);
    let c = node.counters();
    assert_eq!((c.drop_bad_fabric, c.drop_malformed, c.tx), (4, 2, 0), "{c:?}");
    // The untouched frame is still handled.
    assert!(node.handle(&good, 0, at(1)).is_some());
}

/// Found by fuzzing (`fuzz/regressions/pipeline/fabric-frame-for-core-40`):
/// a fabric frame naming a core this node does not have went into the
/// outbox for it, where the worker loop found no ring and counted a second
/// outcome (a ring-full drop) for the one frame. The same for an announced
/// owner naming such a core.
#[test]
fn a_frame_for_a_core_this_node_does_not_have_is_a_counted_drop() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let plain = first_owned_by(&view, Owner { node: 0, worker: 1 });
    for worker in [2, 40, ANY_WORKER - 1] {
        assert_eq!(node.handle(&encapsulated(&plain, 1, worker), 0, at(1)), None);
    }
    assert!(node.out.to_cores.is_empty());
    let c = node.counters();
    assert_eq!((c.drop_bad_fabric, c.forwarded_to_core), (3, 0), "{c:?}");

    let missing_core = Owner { node: 0, worker: 7 };
    assert!(node.pipeline.ownership_mut().set(key_of(&plain), missing_core, 1));
    assert_eq!(node.handle(&plain, 0, at(1)), None);
    assert!(node.out.to_cores.is_empty());
    let c = node.counters();
    assert_eq!((c.drop_unknown_owner, c.forwarded_to_core), (1, 0), "{c:?}");

    // The core it names, when this node has it, still gets it.
    assert_eq!(node.handle(&encapsulated(&plain, 1, 1), 0, at(1)), None);
    assert_eq!(node.out.to_cores.len(), 1);
    assert_eq!(node.out.to_cores[0].worker, 1);
}

#[test]
fn fabric_frames_from_a_mac_that_is_no_members_are_counted_drops() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let plain = first_owned_by(&view, Owner { node: 0, worker: 0 });
    let good = encapsulated(&plain, 1, 0);
    let mut forged = good.clone();
    forged[6..12].copy_from_slice(&[0x02, 0xba, 0xd0, 0, 0, 1]);
    assert_eq!(node.handle(&forged, 0, at(1)), None);
    let c = node.counters();
    assert_eq!(
        (c.drop_fabric_non_member, c.received_from_node, c.tx),
        (1, 0, 0),
        "{c:?}"
    );
    assert!(node.pipeline.table().is_empty(), "no flow came in with it");
    // The member's own frame still goes through.
    assert!(node.handle(&good, 0, at(1)).is_some());
}

/// xorshift64: deterministic, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn garbage_never_panics_and_is_always_counted() {
    let mut node = Node::new(POLICY, pair_view(), 0);
    let mut rng = Rng(0x1234_5678_9abc_def0);
    let samples = sample_frames();
    let ethertypes = [0x0800u16, 0x86dd, FABRIC_ETHERTYPE, 0x8100, 0x88a8, 0x0806];
    for i in 0..20_000 {
        let mut frame = if i % 2 == 0 {
            let len = rng.below(200) as usize;
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            // Valid frames with a few bytes flipped past the MACs.
            let mut f = samples[rng.below(samples.len() as u64) as usize].clone();
            for _ in 0..=rng.below(4) {
                let at = 12 + rng.below(f.len() as u64 - 12) as usize;
                f[at] = rng.next() as u8;
            }
            f
        };
        if frame.len() >= 14 && rng.below(2) == 0 {
            let t = ethertypes[rng.below(ethertypes.len() as u64) as usize];
            frame[12..14].copy_from_slice(&t.to_be_bytes());
            if t == FABRIC_ETHERTYPE && frame.len() >= INNER_OFFSET {
                frame[14] = FABRIC_VERSION;
                frame[15] = 1;
            }
        }
        let hops = rng.below(u64::from(FABRIC_MAX_HOPS) + 2) as u8;
        if let Some(sent) = node.handle(&frame, hops, at(1)) {
            assert!(sent.len() >= 14);
        }
        node.out.to_cores.clear();
        node.out.installed.clear();
        node.out.held.clear();
    }
    assert_eq!(node.counters().rx, 20_000);
}

#[test]
fn no_frame_leaks_whatever_the_verdict() {
    let view = pair_view();
    let policy = PolicyConfig::parse(POLICY, Path::new("policy.toml")).unwrap();
    let mut pipeline = Pipeline::new(0, NODE_MAC, view.clone(), Arc::new(Policy::new(policy).unwrap()), 64).unwrap();
    let mut port = MemoryPort::new(64, 2048, 16);
    let mut out = Outbox::with_capacity(16);
    let mut rng = Rng(0xfeed_beef_cafe_f00d);
    let samples = sample_frames();
    let mine = first_owned_by(&view, Owner { node: 0, worker: 0 });
    let theirs = first_owned_by(&view, Owner { node: 1, worker: 1 });
    let other_core = first_owned_by(&view, Owner { node: 0, worker: 1 });
    let stray = (1..u16::MAX)
        .map(|port| tcp(sock("10.0.0.7", port), sock("10.0.9.1", 80), ACK))
        .find(|f| view.owner_by_scope(&key_of(f)) == Owner { node: 0, worker: 0 })
        .unwrap();
    let kinds: [&[u8]; 7] = [
        &mine,
        &theirs,
        &other_core,
        &stray,
        &encapsulated(&mine, 1, 0),
        &encapsulated(&theirs, FABRIC_MAX_HOPS, 1),
        &[0xff; 20],
    ];
    let (mut transmitted, mut injected) = (0, 0);
    for round in 0..200 {
        // Fill the port to a random level: the pool is never exhausted by a
        // leak, so these injections must always succeed.
        for _ in 0..rng.below(48) {
            let frame = match rng.below(8) {
                7 => &samples[rng.below(samples.len() as u64) as usize][..],
                k => kinds[k as usize],
            };
            port.inject(frame).unwrap();
            injected += 1;
        }
        while port.pending().rx > 0 {
            port.poll_rx(|f| pipeline.process(f, 0, at(round), &mut out));
        }
        assert_eq!(port.frames_accounted(), port.total_frames());
        transmitted += port.drain_tx(|f| assert!(f.len() >= 14));
        out.to_cores.clear();
        out.installed.clear();
        out.held.clear();
        assert_eq!(port.frames_accounted(), port.total_frames(), "round {round}");
    }
    let (stats, c) = (port.stats(), pipeline.counters());
    assert_eq!(stats.rx_frames, injected);
    assert_eq!(stats.tx_frames + stats.dropped, stats.rx_frames);
    assert_eq!(stats.tx_frames as usize, transmitted);
    assert_eq!(c.tx, stats.tx_frames);
    assert_eq!(c.rx, stats.rx_frames);
    assert_balanced(&c);
    // Every path was taken.
    assert!(
        c.forwarded_to_node > 0 && c.forwarded_to_core > 0 && c.received_from_node > 0,
        "{c:?}"
    );
    assert!(
        c.drop_no_flow > 0 && c.drop_loop_guard > 0 && c.drop_malformed > 0,
        "{c:?}"
    );
}

#[test]
fn right_after_a_flip_a_taken_over_bucket_asks_its_previous_owner_first() {
    // Node 0 takes over node 1's buckets; the view remembers who had them.
    let before = Scope::initial(BUCKETS, &[0, 1]).unwrap();
    let after = before.rebuilt(&[0]).unwrap();
    let macs = vec![Some(NODE_MAC), Some(PEER_MAC), Some(THIRD_MAC)];
    let old = NodeView::new(0, hash(), before, 1, macs);
    let view = Arc::new(old.flipped_to(after.clone(), &[]));
    let mut node = Node::new(POLICY, Arc::clone(&view), 0);
    let frame = first_owned_by(&old, Owner { node: 1, worker: 0 });

    // Straight from the edge: to node 1, whose connection it may be.
    let sent = node.handle(&frame, 0, at(1)).expect("sent to the previous owner");
    let f = fabric_of(&sent);
    assert_eq!((f.dst_mac, f.hops, f.target_worker), (PEER_MAC, 1, ANY_WORKER));
    assert_eq!(node.counters().created, 0);

    // Sent back by node 1 (not its connection): ours now, created here.
    let sent = node.handle(&encapsulated(&frame, 1, 0), 0, at(1)).expect("forwarded");
    assert_eq!(seen(&sent).dst_mac, ROUTER_MAC);
    assert_eq!(node.counters().created, 1);

    // Relayed by a third node (which forwarded by the new scope): asked of
    // the previous owner too.
    let fourth = clients_owned_by(&old, Owner { node: 1, worker: 0 }).nth(3).unwrap();
    let mut relayed = encapsulated(&fourth, 1, ANY_WORKER);
    relayed[6..12].copy_from_slice(&THIRD_MAC);
    relayed[14 + 4..14 + 6].copy_from_slice(&2u16.to_be_bytes());
    let sent = node.handle(&relayed, 0, at(1)).expect("sent to the previous owner");
    assert_eq!((fabric_of(&sent).dst_mac, fabric_of(&sent).hops), (PEER_MAC, 2));

    // A bucket node 0 had before as well is not affected, and once the
    // view settles nothing is asked of node 1.
    let kept = first_owned_by(&old, Owner { node: 0, worker: 0 });
    assert_eq!(seen(&node.handle(&kept, 0, at(1)).expect("ours")).dst_mac, ROUTER_MAC);
    node.pipeline.set_view(Arc::new(view.settled()));
    let other = clients_owned_by(&old, Owner { node: 1, worker: 0 }).nth(1).unwrap();
    assert_eq!(seen(&node.handle(&other, 0, at(1)).expect("ours")).dst_mac, ROUTER_MAC);

    // A dead previous owner is never asked.
    let dead = Arc::new(old.flipped_to(after, &[1]));
    node.pipeline.set_view(dead);
    let third = clients_owned_by(&old, Owner { node: 1, worker: 0 }).nth(2).unwrap();
    assert_eq!(seen(&node.handle(&third, 0, at(1)).expect("ours")).dst_mac, ROUTER_MAC);
}

#[test]
fn right_after_giving_a_bucket_up_its_packets_look_on_the_core_it_mapped_to() {
    let before = pair_view();
    let after = before.scope.rebuilt(&[1]).unwrap();
    let view = Arc::new(before.flipped_to(after, &[]));
    let mut node = Node::new(POLICY, Arc::clone(&view), 0);
    // A bucket node 0 had, on its core 1: the connection, if still here, is there.
    let frame = first_owned_by(&before, Owner { node: 0, worker: 1 });
    assert_eq!(node.handle(&frame, 0, at(1)), None);
    assert_eq!(node.out.to_cores.len(), 1);
    assert_eq!(node.out.to_cores[0].worker, 1);
    // On its own core, not found: to the new owner.
    let mine = first_owned_by(&before, Owner { node: 0, worker: 0 });
    let sent = node.handle(&mine, 0, at(1)).expect("to node 1");
    assert_eq!(fabric_of(&sent).dst_mac, PEER_MAC);
}

#[test]
fn right_after_a_flip_direct_packets_of_a_taken_over_connection_wait_for_the_previous_owners_markers() {
    let before = Scope::initial(BUCKETS, &[0, 1]).unwrap();
    let after = before.rebuilt(&[0]).unwrap();
    let old = NodeView::new(0, hash(), before, 1, vec![Some(NODE_MAC), Some(PEER_MAC)]);
    let view = Arc::new(old.flipped_to(after, &[]));
    let mut node = Node::new(POLICY, Arc::clone(&view), 0);
    let frame = first_owned_by(&old, Owner { node: 1, worker: 0 });
    let flip = view.scope.version as u32;
    let marker_of = |lane: u16, serial: u32| {
        let mut m = [0u8; INNER_OFFSET];
        let sent = Marker {
            sender: 1,
            lane,
            lanes: 2,
            serial,
        };
        fabric::write_marker(&mut m, PEER_MAC, NODE_MAC, &sent, ANY_WORKER);
        m
    };
    let marker = |lane: u16| marker_of(lane, flip);

    // The connection came over from node 1, its previous owner.
    node.handle(&encapsulated(&frame, 1, 0), 0, at(1)).expect("forwarded");
    // Straight from the edge, a newer packet waits: node 1 may still have
    // older ones in its rings.
    assert_eq!(node.handle(&frame, 0, at(1)), None);
    assert_eq!((node.out.held.len(), node.counters().held), (1, 1));
    assert_eq!(&node.out.held[0].data[..frame.len()], &frame[..]);
    // Those older ones, through node 1, go on at once.
    assert!(node.handle(&encapsulated(&frame, 1, 0), 0, at(1)).is_some());
    // Late markers of node 1's earlier flip say nothing of this one: counted,
    // ignored, the packet still waits.
    for lane in 0..2 {
        assert_eq!(node.handle(&marker_of(lane, flip.wrapping_sub(1)), 0, at(1)), None);
    }
    assert_eq!(node.pipeline.take_release(), None, "stale markers release nothing");
    assert_eq!((node.out.held.len(), node.counters().markers_stale), (1, 2));
    // Node 1 drains two lanes: the wait ends with the second marker.
    assert_eq!(node.handle(&marker(0), 0, at(1)), None);
    assert_eq!(node.pipeline.take_release(), None);
    assert_eq!(node.handle(&marker(0), 0, at(1)), None);
    assert_eq!(node.pipeline.take_release(), None, "the same lane twice is one lane");
    assert_eq!(node.handle(&marker(1), 0, at(1)), None);
    assert_eq!(node.pipeline.take_release(), Some(false));
    assert!(node.handle(&frame, 0, at(1)).is_some(), "nothing waits any more");

    // A wait the view settles before every marker came ends as a timeout.
    node.pipeline.set_view(Arc::clone(&view));
    assert_eq!(node.handle(&frame, 0, at(2)), None);
    node.pipeline.set_view(Arc::new(view.settled()));
    assert_eq!(node.pipeline.take_release(), Some(true));
    assert!(node.handle(&frame, 0, at(2)).is_some());
    let c = node.counters();
    assert_eq!((c.held, c.markers, c.markers_stale, c.dropped()), (2, 5, 2, 0), "{c:?}");
}

/// An ICMP echo request from the client to `dst`.
fn echo_request(src: &str, dst: &str) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
    let mut frame = Vec::new();
    match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth
            .ipv4(s.octets(), d.octets(), 64)
            .icmpv4_echo_request(7, 1)
            .write(&mut frame, b"ping")
            .unwrap(),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth
            .ipv6(s.octets(), d.octets(), 64)
            .icmpv6_echo_request(7, 1)
            .write(&mut frame, b"ping")
            .unwrap(),
        _ => panic!("mixed address families"),
    }
    frame
}

/// The router settings of a node at 10.0.1.11 and fd00::1:11.
fn router(ip_mtu: u16) -> RouterSettings {
    RouterSettings {
        ip_mtu,
        addresses: vec![ip("10.0.1.11"), ip("fd00::1:11")],
    }
}

/// Node 0 alone with `policy`, forwarding with [`router`]`(ip_mtu)`.
fn solo_router(policy: &str, ip_mtu: u16) -> Node {
    Node::routing(policy, solo_view(), router(ip_mtu))
}

/// The ICMP(v6) type and code of a frame, its source and destination, after
/// checking every checksum etherparse knows of.
fn icmp_of(frame: &[u8]) -> (u8, u8, IpAddr, IpAddr) {
    let p = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let payload = p.payload.slice();
    match (p.net.as_ref().unwrap(), p.transport.as_ref().unwrap()) {
        (NetHeaders::Ipv4(h, _), TransportHeader::Icmpv4(icmp)) => {
            assert_eq!(h.header_checksum, h.calc_header_checksum());
            assert_eq!(icmp.checksum, icmp.icmp_type.calc_checksum(payload));
            let b = icmp.to_bytes();
            (b[0], b[1], h.source.into(), h.destination.into())
        }
        (NetHeaders::Ipv6(h, _), TransportHeader::Icmpv6(icmp)) => {
            let expected = icmp.icmp_type.calc_checksum(h.source, h.destination, payload).unwrap();
            assert_eq!(icmp.checksum, expected);
            let b = icmp.to_bytes();
            (b[0], b[1], h.source.into(), h.destination.into())
        }
        other => panic!("not ICMP: {other:?}"),
    }
}

#[test]
fn an_echo_request_to_a_vip_is_answered_or_dropped_by_policy() {
    for (client, vip, reply_type) in [("10.0.0.7", "10.0.9.1", 0), ("fd00::7", "fd00::9:1", 129)] {
        let mut node = Node::solo();
        let sent = node.handle(&echo_request(client, vip), 0, at(1)).expect("answered");
        let (t, code, src, dst) = icmp_of(&sent);
        assert_eq!((t, code, src, dst), (reply_type, 0, ip(vip), ip(client)));
        assert_eq!(
            (&sent[..6], &sent[6..12]),
            (&ROUTER_MAC[..], &NODE_MAC[..]),
            "to the gateway"
        );
        let c = node.counters();
        assert_eq!((c.echo_replies, c.tx, c.created), (1, 1, 0), "{c:?}");

        let drop_echo = format!("{POLICY}\n[icmp]\necho = \"drop\"\n");
        let mut node = Node::new(&drop_echo, solo_view(), 0);
        assert_eq!(node.handle(&echo_request(client, vip), 0, at(1)), None);
        assert_eq!((node.counters().drop_policy, node.counters().echo_replies), (1, 0));
    }
    // An echo request to another host is forwarded like any traffic.
    let mut node = Node::solo();
    let sent = node
        .handle(&echo_request("10.0.0.7", "10.0.5.5"), 0, at(1))
        .expect("forwarded");
    assert_eq!(icmp_of(&sent).0, 8);
    assert_eq!(node.counters().echo_replies, 0);
}

#[test]
fn traffic_for_a_vip_without_service_is_never_sent_back_to_the_edge() {
    // UDP and TCP to a port no service has, and a protocol none has.
    let frames = [
        udp(sock("10.0.0.7", 4000), sock("10.0.9.1", 9)),
        tcp(sock("10.0.0.7", 4000), sock("10.0.9.1", 81), SYN),
        udp(sock("fd00::7", 4000), sock("fd00::9:1", 9)),
    ];
    for frame in &frames {
        let mut node = Node::solo();
        assert_eq!(node.handle(frame, 0, at(1)), None);
        assert_eq!(node.counters().drop_no_service, 1);
        // The same packet again is dropped again: no connection was made.
        assert_eq!(node.handle(frame, 0, at(1)), None);
        assert_eq!((node.counters().drop_no_service, node.counters().created), (2, 0));
    }
    // A backend's packet that answers no service port is not forwarded either.
    let mut node = Node::solo();
    assert_eq!(
        node.handle(&udp(sock("10.1.0.1", 9999), sock("10.0.0.7", 4000)), 0, at(1)),
        None
    );
    assert_eq!(node.counters().drop_no_service, 1);

    // Rejected: ICMP port unreachable from the VIP, quoting the packet.
    let reject = format!(
        "{}vip = \"reject\"\n{}",
        &POLICY[..POLICY.find("\n[[service]]").unwrap() + 1],
        &POLICY[POLICY.find("\n[[service]]").unwrap() + 1..]
    );
    for (frame, expected) in [(&frames[0], (3, 3)), (&frames[2], (1, 4))] {
        let mut node = solo_router(&reject, 1500);
        let sent = node.handle(frame, 0, at(1)).expect("rejected with ICMP");
        let (t, code, src, dst) = icmp_of(&sent);
        let original = seen(frame);
        assert_eq!((t, code), expected);
        assert_eq!((src, dst), (original.dst.ip(), original.src.ip()));
        let c = node.counters();
        assert_eq!((c.drop_no_service, c.icmp_errors_sent, c.tx), (1, 1, 0), "{c:?}");
    }
}

#[test]
fn every_forward_decrements_the_ttl_and_an_expired_packet_is_dropped() {
    let client = sock("10.0.0.7", 4000);
    let mut node = solo_router(POLICY, 1500);
    // Forwarded and DNATed packets leave with one hop less.
    for (frame, ttl) in [
        (udp(client, sock("10.0.5.5", 9)), 63),
        (udp(client, sock("10.0.9.1", 53)), 63),
    ] {
        let sent = node.handle(&frame, 0, at(1)).expect("forwarded");
        let (ip4, _) = etherparse::Ipv4Header::from_slice(&sent[14..]).unwrap();
        assert_eq!(ip4.time_to_live, ttl);
        seen(&sent);
    }
    let mut v6 = udp(sock("fd00::7", 4000), sock("fd00::9:1", 53));
    let sent = node.handle(&v6, 0, at(1)).expect("forwarded");
    assert_eq!(sent[14 + 7], 63, "IPv6 hop limit");

    // TTL 1: dropped, answered with time exceeded from the node's address.
    for (frame, source, expected) in [
        (udp(sock("10.0.0.8", 4000), sock("10.0.5.5", 9)), "10.0.1.11", (11, 0)),
        (std::mem::take(&mut v6), "fd00::1:11", (3, 0)),
    ] {
        let mut frame = frame;
        if source.contains(':') {
            frame[14 + 7] = 1;
        } else {
            let (mut h, _) = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap();
            h.time_to_live = 1;
            h.header_checksum = h.calc_header_checksum();
            frame[14..34].copy_from_slice(&h.to_bytes());
        }
        let before = node.counters();
        let sent = node.handle(&frame, 0, at(2)).expect("time exceeded");
        let (t, code, src, dst) = icmp_of(&sent);
        assert_eq!(
            (t, code, src, dst),
            (expected.0, expected.1, ip(source), seen(&frame).src.ip())
        );
        let c = node.counters();
        assert_eq!(c.drop_ttl_expired - before.drop_ttl_expired, 1);
        assert_eq!(c.icmp_errors_sent - before.icmp_errors_sent, 1);
    }

    // Without an address of the family, or beyond the rate limit, the drop
    // is counted and nothing is sent.
    let limited = format!("{POLICY}\n[icmp]\nerrors_per_second = 0\n");
    let mut node = solo_router(&limited, 1500);
    let mut frame = udp(sock("10.0.0.9", 4000), sock("10.0.5.5", 9));
    let (mut h, _) = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap();
    h.time_to_live = 0;
    h.header_checksum = h.calc_header_checksum();
    frame[14..34].copy_from_slice(&h.to_bytes());
    assert_eq!(node.handle(&frame, 0, at(1)), None);
    assert_eq!(
        (node.counters().drop_ttl_expired, node.counters().icmp_errors_sent),
        (1, 0)
    );
}

#[test]
fn a_packet_larger_than_the_fabric_takes_gets_fragmentation_needed() {
    let view = pair_view();
    let mut node = Node::routing(POLICY, view.clone(), router(1280));
    // A 1,300-byte packet of a flow node 1 owns: too big for the fabric.
    let big = (1000..u16::MAX)
        .map(|port| packet(sock("10.0.0.7", port), sock("10.0.5.5", 9), L4::Udp, &[7; 1272]))
        .find(|f| view.owner_by_scope(&key_of(f)).node == 1)
        .unwrap();
    assert_eq!(big.len() - 14, 1300);
    let sent = node.handle(&big, 0, at(1)).expect("fragmentation needed");
    let (t, code, src, dst) = icmp_of(&sent);
    assert_eq!((t, code, src, dst), (3, 4, ip("10.0.1.11"), ip("10.0.0.7")));
    assert_eq!(
        u16::from_be_bytes([sent[14 + 20 + 6], sent[14 + 20 + 7]]),
        1280,
        "next-hop MTU"
    );
    let c = node.counters();
    assert_eq!(
        (c.drop_too_big, c.forwarded_to_node, c.icmp_errors_sent),
        (1, 0, 1),
        "{c:?}"
    );
    // One that fits goes over the fabric.
    let fits = (1000..u16::MAX)
        .map(|port| packet(sock("10.0.0.7", port), sock("10.0.5.5", 9), L4::Udp, &[7; 1252]))
        .find(|f| view.owner_by_scope(&key_of(f)).node == 1)
        .unwrap();
    let sent = node.handle(&fits, 0, at(1)).expect("forwarded");
    assert_eq!(fabric_of(&sent).dst_mac, PEER_MAC);
}

#[test]
fn a_priority_tag_is_removed_and_the_frame_handled_as_untagged() {
    let plain = udp(sock("10.0.0.7", 4000), sock("10.0.9.1", 53));
    for pcp_dei in [0u8, 0xe0, 0x10] {
        let mut tagged = plain[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, pcp_dei, 0x00]);
        tagged.extend_from_slice(&plain[12..]);
        let mut node = Node::solo();
        let sent = node.handle(&tagged, 0, at(1)).expect("DNATed");
        let mut untagged_node = Node::solo();
        let expected = untagged_node.handle(&plain, 0, at(1)).unwrap();
        assert_eq!(sent, expected, "PCP/DEI {pcp_dei:#x}");
        assert_eq!(node.counters().priority_tags_removed, 1);
    }
    // A real VLAN keeps its tag.
    let mut tagged = plain[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    tagged.extend_from_slice(&plain[12..]);
    let mut node = Node::solo();
    let sent = node.handle(&tagged, 0, at(1)).expect("DNATed");
    assert_eq!(&sent[12..16], &[0x81, 0x00, 0x00, 0x07]);
    assert_eq!(node.counters().priority_tags_removed, 0);
}

/// An ICMP(v6) error from `src` to `dst` quoting the IP packet of `quoted`
/// (a frame), whole.
fn icmp_error(src: &str, dst: &str, quoted: &[u8], too_big: bool) -> Vec<u8> {
    use etherparse::{icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode, Icmpv4Type, Icmpv6Type};
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC);
    let mut frame = Vec::new();
    match (ip(src), ip(dst)) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let kind = if too_big {
                DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 }
            } else {
                DestUnreachableHeader::Port
            };
            eth.ipv4(s.octets(), d.octets(), 64)
                .icmpv4(Icmpv4Type::DestinationUnreachable(kind))
                .write(&mut frame, &quoted[14..])
                .unwrap()
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let kind = if too_big {
                Icmpv6Type::PacketTooBig { mtu: 1280 }
            } else {
                Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port)
            };
            eth.ipv6(s.octets(), d.octets(), 64)
                .icmpv6(kind)
                .write(&mut frame, &quoted[14..])
                .unwrap()
        }
        _ => panic!("mixed address families"),
    }
    frame
}

/// The packet an ICMP error quotes, as a frame of its own (for `seen`).
fn quote_of(error: &[u8]) -> Vec<u8> {
    let ipv4 = error[14] >> 4 == 4;
    let start = 14 + if ipv4 { 20 } else { 40 } + 8;
    let mut frame = error[..12].to_vec();
    frame.extend_from_slice(if ipv4 { &[0x08, 0x00] } else { &[0x86, 0xdd] });
    frame.extend_from_slice(&error[start..]);
    frame
}

#[test]
fn an_icmp_error_reaches_its_connection_rewritten_inside_and_out() {
    for (client, vip, backend, backend_mac, router) in [
        ("10.0.0.7", "10.0.9.1", "10.1.0.1", BACKEND4_MAC, "10.0.0.254"),
        ("fd00::7", "fd00::9:1", "fd00::1:1", BACKEND6_MAC, "fd00::fe"),
    ] {
        let mut node = Node::solo();
        let request = udp(sock(client, 4000), sock(vip, 53));
        node.handle(&request, 0, at(1)).expect("DNATed");
        let reply = udp(sock(backend, 5353), sock(client, 4000));
        let answered = node.handle(&reply, 0, at(1)).expect("un-DNATed");
        let created = node.counters().created;

        // The client's kernel refuses the reply it got (from the VIP): the
        // error goes to the backend, about the packet the backend sent.
        let error = icmp_error(client, vip, &answered, false);
        let sent = node.handle(&error, 0, at(2)).expect("to the backend");
        let (t, _, src, dst) = icmp_of(&sent);
        assert_eq!((src, dst), (ip(client), ip(backend)), "type {t}");
        assert_eq!(&sent[..6], &backend_mac);
        let inner = seen(&quote_of(&sent));
        assert_eq!((inner.src, inner.dst), (sock(backend, 5353), sock(client, 4000)));

        // A router on the client's side says the VIP's packets are too big:
        // the error keeps the router's address, its quote names the backend.
        let error = icmp_error(router, vip, &answered, true);
        let sent = node.handle(&error, 0, at(2)).expect("to the backend");
        let (_, _, src, dst) = icmp_of(&sent);
        assert_eq!((src, dst), (ip(router), ip(backend)));
        assert_eq!(seen(&quote_of(&sent)).src, sock(backend, 5353));

        // The backend refuses a request (sent to it after DNAT): the error
        // reaches the client from the VIP, about the packet the client sent.
        let dnated = node.handle(&request, 0, at(3)).expect("DNATed");
        let error = icmp_error(backend, client, &dnated, false);
        let sent = node.handle(&error, 0, at(3)).expect("to the client");
        let (_, _, src, dst) = icmp_of(&sent);
        assert_eq!((src, dst), (ip(vip), ip(client)));
        assert_eq!(&sent[..6], &ROUTER_MAC);
        let inner = seen(&quote_of(&sent));
        assert_eq!((inner.src, inner.dst), (sock(client, 4000), sock(vip, 53)));
        assert_eq!(node.counters().created, created, "an error creates no connection");

        // An error about no connection here is dropped, counted.
        let stranger = udp(sock(vip, 53), sock(client, 4999));
        let before = node.counters().drop_no_flow;
        assert_eq!(node.handle(&icmp_error(client, vip, &stranger, false), 0, at(4)), None);
        assert_eq!(node.counters().drop_no_flow, before + 1);
        assert_eq!(node.counters().created, created);
    }
}

/// Splits the IP packet of `frame` into fragments of `chunk` payload bytes
/// (a multiple of 8), identification `id`: IPv4 headers with MF and the
/// offset, or IPv6 fragment headers (RFC 8200 §4.5, written by hand).
fn fragments_of(frame: &[u8], chunk: usize, id: u32) -> Vec<Vec<u8>> {
    let ipv4 = frame[14] >> 4 == 4;
    let ip_len = if ipv4 { 20 } else { 40 };
    let payload = &frame[14 + ip_len..];
    let pieces: Vec<&[u8]> = payload.chunks(chunk).collect();
    pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let offset = i * chunk;
            let more = i + 1 < pieces.len();
            let mut out = frame[..14].to_vec();
            if ipv4 {
                let (mut h, _) = etherparse::Ipv4Header::from_slice(&frame[14..]).unwrap();
                h.identification = id as u16;
                h.more_fragments = more;
                h.dont_fragment = false;
                h.fragment_offset = etherparse::IpFragOffset::try_new((offset / 8) as u16).unwrap();
                h.set_payload_len(piece.len()).unwrap();
                h.header_checksum = h.calc_header_checksum();
                out.extend_from_slice(&h.to_bytes());
            } else {
                let mut h = frame[14..54].to_vec();
                let next = h[6];
                h[6] = 44;
                h[4..6].copy_from_slice(&((8 + piece.len()) as u16).to_be_bytes());
                out.extend_from_slice(&h);
                let field = ((offset / 8) as u16) << 3 | u16::from(more);
                out.extend_from_slice(&[next, 0]);
                out.extend_from_slice(&field.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
            }
            out.extend_from_slice(piece);
            out
        })
        .collect()
}

/// The datagram the fragments (as sent, in any order) carry, put back
/// together as one frame with the first fragment's headers.
fn reassembled(fragments: &[Vec<u8>]) -> Vec<u8> {
    let ipv4 = fragments[0][14] >> 4 == 4;
    let mut pieces: Vec<(usize, &[u8])> = fragments
        .iter()
        .map(|f| {
            let h = parse_frame(f.as_slice()).unwrap();
            assert!(h.fragment);
            (h.frag.offset as usize, &f[h.upper_offset..h.l3_end])
        })
        .collect();
    pieces.sort_by_key(|p| p.0);
    let payload: Vec<u8> = pieces.iter().flat_map(|p| p.1.iter().copied()).collect();
    let first = fragments
        .iter()
        .find(|f| parse_frame(f.as_slice()).unwrap().frag.offset == 0)
        .unwrap();
    let mut out = first[..14].to_vec();
    if ipv4 {
        let (mut h, _) = etherparse::Ipv4Header::from_slice(&first[14..]).unwrap();
        h.more_fragments = false;
        h.fragment_offset = etherparse::IpFragOffset::ZERO;
        h.set_payload_len(payload.len()).unwrap();
        h.header_checksum = h.calc_header_checksum();
        out.extend_from_slice(&h.to_bytes());
    } else {
        let mut h = first[14..54].to_vec();
        h[6] = first[54];
        h[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(&h);
    }
    out.extend_from_slice(&payload);
    out
}

#[test]
fn every_fragment_of_a_datagram_follows_its_connection_and_is_rewritten() {
    for (client, vip, backend, backend_mac) in [
        ("10.0.0.7", "10.0.9.1", "10.1.0.1", BACKEND4_MAC),
        ("fd00::7", "fd00::9:1", "fd00::1:1", BACKEND6_MAC),
    ] {
        for (size, reversed) in [(3000, false), (3000, true), (8900, false), (8900, true)] {
            let payload: Vec<u8> = (0..size).map(|i| (i * 7) as u8).collect();
            let datagram = packet(sock(client, 4000), sock(vip, 53), L4::Udp, &payload);
            let mut fragments = fragments_of(&datagram, 1448, 0x0abc_0001);
            if reversed {
                fragments.reverse();
            }
            let mut node = Node::solo();
            let mut sent = Vec::new();
            for f in &fragments {
                if let Some(out) = node.handle(f, 0, at(1)) {
                    sent.push(out);
                }
            }
            // Parked fragments run again once their first came.
            for released in std::mem::take(&mut node.out.released) {
                if let Some(out) = node.handle(&released.data[..released.len as usize], released.hops, at(1)) {
                    sent.push(out);
                }
            }
            assert_eq!(sent.len(), fragments.len(), "{client} {size} reversed {reversed}");
            for f in &sent {
                assert_eq!(&f[..6], &backend_mac, "every fragment to the backend");
                let h = parse_frame(f.as_slice()).unwrap();
                assert_eq!(h.key.dst_ip(), ip(backend));
            }
            let whole = seen(&reassembled(&sent));
            assert_eq!((whole.src, whole.dst), (sock(client, 4000), sock(backend, 5353)));
            let c = node.counters();
            assert_eq!(c.created, 1, "one connection for the datagram");
            assert_eq!(
                c.fragments_parked,
                if reversed { fragments.len() as u64 - 1 } else { 0 },
                "{c:?}"
            );
        }
    }
}

#[test]
fn a_fragmented_reply_is_undone_by_its_connection_and_strays_are_bounded() {
    let mut node = Node::solo();
    node.handle(&udp(sock("10.0.0.7", 4000), sock("10.0.9.1", 53)), 0, at(1))
        .expect("DNATed");
    let reply = packet(sock("10.1.0.1", 5353), sock("10.0.0.7", 4000), L4::Udp, &[9; 4000]);
    let fragments = fragments_of(&reply, 1480, 77);
    let sent: Vec<Vec<u8>> = fragments.iter().filter_map(|f| node.handle(f, 0, at(1))).collect();
    assert_eq!(sent.len(), fragments.len());
    let whole = seen(&reassembled(&sent));
    assert_eq!((whole.src, whole.dst), (sock("10.0.9.1", 53), sock("10.0.0.7", 4000)));
    assert!(sent.iter().all(|f| f[..6] == ROUTER_MAC));

    // Later fragments whose first never comes wait, then are dropped, counted.
    let stray = fragments_of(
        &packet(sock("10.0.0.8", 1), sock("10.0.9.1", 53), L4::Udp, &[1; 3000]),
        1480,
        78,
    );
    for f in &stray[1..] {
        assert_eq!(node.handle(f, 0, at(2)), None);
    }
    assert_eq!(node.counters().fragments_parked, 2);
    node.pipeline.expire(at(2), 16);
    assert_eq!(node.counters().drop_fragment_timeout, 0);
    node.pipeline.expire(at(8), 16);
    assert_eq!(node.counters().drop_fragment_timeout, 2);
}

/// `frame` with its IP length field (IPv4 Total Length, header checksum
/// computed anew; IPv6 Payload Length) saying the packet ends where the
/// frame does.
fn with_ip_len(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let ip_len = out.len() - 14;
    if out[14] >> 4 == 4 {
        let (mut h, _) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
        h.total_len = ip_len as u16;
        h.header_checksum = h.calc_header_checksum();
        out[14..34].copy_from_slice(&h.to_bytes());
    } else {
        out[18..20].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
    }
    out
}

/// An untagged fragment from [`fragments_of`] moved to `offset` bytes.
fn at_offset(fragment: &[u8], offset: u16) -> Vec<u8> {
    let mut out = fragment.to_vec();
    if out[14] >> 4 == 4 {
        let (mut h, _) = etherparse::Ipv4Header::from_slice(&out[14..]).unwrap();
        h.fragment_offset = etherparse::IpFragOffset::try_new(offset / 8).unwrap();
        h.header_checksum = h.calc_header_checksum();
        out[14..34].copy_from_slice(&h.to_bytes());
    } else {
        let more = u16::from_be_bytes([out[56], out[57]]) & 1;
        out[56..58].copy_from_slice(&(offset | more).to_be_bytes());
    }
    out
}

/// What the malformed-frame storm (`handoff-bench storm`) brings a node
/// that its parser lets through: each one a counted drop, nothing sent,
/// nothing parked, nothing installed, and no panic.
#[test]
fn cut_icmp_headers_tiny_and_oversized_fragments_are_malformed() {
    let mut node = Node::solo();
    let mut malformed = 0;
    for (client, vip) in [("10.0.0.7", "10.0.9.1"), ("fd00::7", "fd00::9:1")] {
        // An echo request to a VIP that ends inside its ICMP header (the
        // IP length agrees): the node used to index past the frame's end.
        let echo = echo_request(client, vip);
        let icmp = parse_frame(echo.as_slice()).unwrap().upper_offset;
        for len in [icmp, icmp + 1, icmp + 4, icmp + 7] {
            assert_eq!(node.handle(&with_ip_len(&echo[..len]), 0, at(1)), None, "{vip} {len}");
            malformed += 1;
        }
        // First fragments holding half a UDP header, 8 bytes of a TCP one
        // (RFC 1858 §3): their ports would come from a later fragment.
        let udp_first = &fragments_of(&udp(sock(client, 40000), sock(vip, 53)), 8, 7)[0];
        let tcp_first = &fragments_of(&tcp(sock(client, 40000), sock(vip, 80), SYN), 8, 8)[0];
        for tiny in [with_ip_len(&udp_first[..udp_first.len() - 4]), tcp_first.clone()] {
            assert_eq!(node.handle(&tiny, 0, at(1)), None, "{vip}");
            malformed += 1;
        }
        // A last fragment ending past 65,535 bytes; and its first
        // fragment, whole, is still forwarded.
        let pieces = fragments_of(&udp(sock(client, 40001), sock(vip, 53)), 8, 9);
        assert_eq!(node.handle(&at_offset(&pieces[1], 65_528), 0, at(1)), None, "{vip}");
        malformed += 1;
        assert!(node.handle(&pieces[0], 0, at(1)).is_some(), "{vip}");
    }
    let c = node.counters();
    assert_eq!(
        (c.drop_malformed, c.dropped(), c.tx),
        (malformed, malformed, 2),
        "{c:?}"
    );
    assert_eq!((c.fragments_parked, c.echo_replies, c.created), (0, 0, 2), "{c:?}");
}

#[test]
fn a_fabric_frame_not_from_the_member_it_names_is_a_bad_fabric_drop() {
    let view = pair_view();
    let mut node = Node::new(POLICY, view.clone(), 0);
    let plain = first_owned_by(&view, Owner { node: 0, worker: 0 });
    let genuine = encapsulated(&plain, 1, 0);
    // From a MAC no member has; from node 1's MAC but naming node 0.
    let mut stranger = genuine.clone();
    stranger[6..12].copy_from_slice(&CLIENT_MAC);
    let mut impostor = genuine.clone();
    impostor[18..20].copy_from_slice(&0u16.to_be_bytes());
    // A drain marker from a stranger would end node 1's drain path.
    let mut marker = [0u8; INNER_OFFSET];
    let claimed = Marker {
        sender: 1,
        lane: 0,
        lanes: 1,
        serial: 42,
    };
    fabric::write_marker(&mut marker, CLIENT_MAC, NODE_MAC, &claimed, ANY_WORKER);
    for forged in [stranger, impostor, marker.to_vec()] {
        assert_eq!(node.handle(&forged, 0, at(1)), None);
    }
    // Strangers fail the membership check first; the impostor is a member
    // naming another member.
    let c = node.counters();
    assert_eq!(
        (
            c.drop_fabric_non_member,
            c.drop_bad_fabric,
            c.markers,
            c.received_from_node,
            c.tx
        ),
        (2, 1, 0, 0, 0),
        "{c:?}"
    );
    assert!(node.out.to_cores.is_empty());
    // The member's own frame is still handled.
    assert!(node.handle(&genuine, 0, at(1)).is_some());
    assert_eq!(node.counters().received_from_node, 1);
}

/// Two backends per service, so a live change has somewhere to move flows.
const TWO_BACKENDS: &str = r#"
[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "forward"
gateway = "router"

[[service]]
name = "dns"
vip = "10.0.9.1"
protocol = "udp"
port = 53
[[service.backend]]
address = "10.1.0.1"
port = 5353
mac = "02:00:00:00:01:01"
[[service.backend]]
address = "10.1.0.2"
port = 5353
mac = "02:00:00:00:01:02"

[[service]]
name = "web"
vip = "10.0.9.1"
protocol = "tcp"
port = 80
[[service.backend]]
address = "10.1.0.1"
port = 8080
mac = "02:00:00:00:01:01"
[[service.backend]]
address = "10.1.0.2"
port = 8080
mac = "02:00:00:00:01:02"
"#;

/// The node after the live change `edit`, adopted by its worker.
fn after_edit(node: &mut Node, edit: handoff::flow::edit::PolicyEdit) {
    let next = edit.apply(node.pipeline.policy().config()).unwrap();
    let policy = Arc::new(node.pipeline.policy().reload(next).unwrap());
    node.pipeline.set_policy(policy);
}

fn backend_ref(service: &str, address: &str, port: u16) -> handoff::flow::edit::BackendRef {
    handoff::flow::edit::BackendRef {
        service: service.into(),
        address: ip(address),
        port,
    }
}

/// Client ports whose first packet of `l4` to VIP:`port` goes to backend
/// `address` (and the others), found by running them through `node`.
fn clients_by_backend(node: &mut Node, port: u16, tcp_service: bool, address: &str) -> (Vec<u16>, Vec<u16>) {
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for client_port in 40_000..40_064 {
        let (client, vip) = (sock("10.0.0.1", client_port), sock("10.0.9.1", port));
        let frame = if tcp_service {
            tcp(client, vip, SYN)
        } else {
            udp(client, vip)
        };
        let sent = node.handle(&frame, 0, at(1)).unwrap();
        if seen(&sent).dst.ip() == ip(address) {
            on.push(client_port);
        } else {
            off.push(client_port);
        }
    }
    assert!(!on.is_empty() && !off.is_empty(), "64 flows all on one side");
    (on, off)
}

/// TCP flags of a frame, read by etherparse.
fn tcp_flags_of(frame: &[u8]) -> (bool, bool, u32) {
    let p = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let Some(TransportHeader::Tcp(t)) = p.transport else {
        panic!("not TCP");
    };
    (t.rst, t.syn, t.sequence_number)
}

#[test]
fn a_removed_backends_udp_flows_move_and_its_tcp_connections_are_reset() {
    let mut node = Node::new(TWO_BACKENDS, solo_view(), 0);
    let (udp_on, udp_off) = clients_by_backend(&mut node, 53, false, "10.1.0.1");
    let (tcp_on, tcp_off) = clients_by_backend(&mut node, 80, true, "10.1.0.1");
    after_edit(
        &mut node,
        handoff::flow::edit::PolicyEdit::Remove(backend_ref("dns", "10.1.0.1", 5353)),
    );
    after_edit(
        &mut node,
        handoff::flow::edit::PolicyEdit::Remove(backend_ref("web", "10.1.0.1", 8080)),
    );
    let vip_udp = sock("10.0.9.1", 53);
    for &p in &udp_on {
        let sent = seen(&node.handle(&udp(sock("10.0.0.1", p), vip_udp), 0, at(2)).unwrap());
        assert_eq!(
            (sent.dst, sent.dst_mac),
            (sock("10.1.0.2", 5353), [2, 0, 0, 0, 1, 2]),
            "moved"
        );
        // And it stays there.
        let again = seen(&node.handle(&udp(sock("10.0.0.1", p), vip_udp), 0, at(2)).unwrap());
        assert_eq!(again.dst, sock("10.1.0.2", 5353));
    }
    for &p in &udp_off {
        let sent = seen(&node.handle(&udp(sock("10.0.0.1", p), vip_udp), 0, at(2)).unwrap());
        assert_eq!(sent.dst, sock("10.1.0.2", 5353), "an unaffected flow keeps its backend");
    }
    assert_eq!(node.counters().backend_moved, udp_on.len() as u64);
    // A stray datagram of the removed backend is no client's traffic.
    let stray = udp(sock("10.1.0.1", 5353), sock("10.0.0.1", udp_on[0]));
    assert_eq!(node.handle(&stray, 0, at(2)), None);
    assert_eq!(node.counters().drop_no_service, 1);

    let vip_tcp = sock("10.0.9.1", 80);
    for &p in &tcp_on {
        let client = sock("10.0.0.1", p);
        let rst = node.handle(&tcp(client, vip_tcp, ACK), 0, at(2)).unwrap();
        let s = seen(&rst);
        assert_eq!((s.src, s.dst, s.dst_mac), (vip_tcp, client, ROUTER_MAC));
        assert!(s.payload.is_empty());
        // The segment acknowledged 1: the reset is at that number.
        assert_eq!(tcp_flags_of(&rst), (true, false, 1));
        // The connection is gone: a later segment finds no flow.
        assert_eq!(node.handle(&tcp(client, vip_tcp, ACK), 0, at(2)), None);
    }
    for &p in &tcp_off {
        let sent = seen(&node.handle(&tcp(sock("10.0.0.1", p), vip_tcp, ACK), 0, at(2)).unwrap());
        assert_eq!(sent.dst, sock("10.1.0.2", 8080));
    }
    assert_eq!(node.counters().backend_resets, tcp_on.len() as u64);
    assert_eq!(node.counters().drop_no_flow, tcp_on.len() as u64);
}

#[test]
fn a_removed_backend_keeps_its_tcp_connections_when_the_policy_says_keep() {
    let policy = format!("on_backend_removed = \"keep\"\n{TWO_BACKENDS}");
    let mut node = Node::new(&policy, solo_view(), 0);
    let (tcp_on, _) = clients_by_backend(&mut node, 80, true, "10.1.0.1");
    after_edit(
        &mut node,
        handoff::flow::edit::PolicyEdit::Remove(backend_ref("web", "10.1.0.1", 8080)),
    );
    let vip = sock("10.0.9.1", 80);
    for &p in &tcp_on {
        let sent = seen(&node.handle(&tcp(sock("10.0.0.1", p), vip, ACK), 0, at(2)).unwrap());
        assert_eq!(
            (sent.dst, sent.dst_mac),
            (sock("10.1.0.1", 8080), [2, 0, 0, 0, 1, 1]),
            "kept"
        );
        // Its replies are still un-rewritten to the VIP.
        let reply = seen(
            &node
                .handle(&tcp(sock("10.1.0.1", 8080), sock("10.0.0.1", p), ACK), 0, at(2))
                .unwrap(),
        );
        assert_eq!(reply.src, vip);
    }
    // A new connection never goes there.
    for p in 50_000..50_064 {
        let sent = seen(&node.handle(&tcp(sock("10.0.0.1", p), vip, SYN), 0, at(2)).unwrap());
        assert_eq!(sent.dst, sock("10.1.0.2", 8080));
    }
    assert_eq!(node.counters().backend_resets, 0);
}

#[test]
fn a_draining_backend_keeps_its_connections_and_gets_no_new_one() {
    let mut node = Node::new(TWO_BACKENDS, solo_view(), 0);
    let (tcp_on, _) = clients_by_backend(&mut node, 80, true, "10.1.0.1");
    after_edit(
        &mut node,
        handoff::flow::edit::PolicyEdit::Drain(backend_ref("web", "10.1.0.1", 8080)),
    );
    let vip = sock("10.0.9.1", 80);
    for &p in &tcp_on {
        let sent = seen(&node.handle(&tcp(sock("10.0.0.1", p), vip, ACK), 0, at(2)).unwrap());
        assert_eq!(
            sent.dst,
            sock("10.1.0.1", 8080),
            "a connection keeps its draining backend"
        );
    }
    for p in 50_000..50_064 {
        let sent = seen(&node.handle(&tcp(sock("10.0.0.1", p), vip, SYN), 0, at(2)).unwrap());
        assert_eq!(sent.dst, sock("10.1.0.2", 8080), "a new connection avoids it");
    }
    assert_eq!((node.counters().backend_resets, node.counters().backend_moved), (0, 0));
}
