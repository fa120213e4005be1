//! Table-driven BPF_PROG_TEST_RUN tests of the edge sprayer: every frame is
//! run through the verified kernel program, and the verdict, the reason
//! counter and the chosen member are checked against the shared userspace
//! parser and hash (the same code the nodes use to find a flow's owner).

use etherparse::{icmpv4, icmpv6, IcmpEchoHeader, Icmpv4Type, Icmpv6Type};
use handoff::scope::Scope;
use handoff_common::{
    counters::Reason,
    edge::NO_MEMBER,
    hash::HashMode,
    parse::{icmp_error_key, parse_frame, ParseError},
};
use handoff_loader::{EdgeProgram, Prefix};
use handoff_testbed::{frames::*, privileged};
use std::net::{Ipv4Addr, Ipv6Addr};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 9, 0, 0, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const BACKEND: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 21);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 1, 0, 0, 0, 0x21);
/// A router on the path, neither client nor cluster.
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 5, 1);
const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const BUCKETS: u32 = 1024;
const SEED: u32 = 0x5eed;
const MEMBERS: [u32; 3] = [0, 1, 2];

fn member_mac(id: u32) -> [u8; 6] {
    [0x02, 0xaa, 0, 0, 0, id as u8]
}

struct Edge {
    program: EdgeProgram,
    scope: Scope,
    mode: HashMode,
}

fn edge(mode: HashMode) -> Edge {
    let mut program = EdgeProgram::load(BUCKETS).expect("load edge program (verifier)");
    program.set_hash(mode, SEED).unwrap();
    for id in MEMBERS {
        // Loopback (ifindex 1) is a valid devmap target; test runs never transmit.
        program
            .set_member(id, member_mac(id), [0x02, 0xee, 0, 0, 0, 1], 1)
            .unwrap();
    }
    program
        .add_destination_match("10.0.9.0/24".parse::<Prefix>().unwrap())
        .unwrap();
    program
        .add_destination_match("fd00:0:0:9::/64".parse::<Prefix>().unwrap())
        .unwrap();
    program
        .add_source_match(Prefix {
            addr: BACKEND.into(),
            len: 32,
        })
        .unwrap();
    program
        .add_source_match(Prefix {
            addr: BACKEND6.into(),
            len: 128,
        })
        .unwrap();
    program.add_local_address(LOCAL.into()).unwrap();
    let scope = Scope::initial(BUCKETS, &MEMBERS).unwrap();
    program.publish_scope(scope.version, &scope.table).unwrap();
    Edge { program, scope, mode }
}

impl Edge {
    /// The member userspace expects for a frame: shared parser, shared hash;
    /// an ICMP error by the connection it quotes, its key reversed.
    fn expected_member(&self, frame: &[u8]) -> u32 {
        let headers = parse_frame(frame).expect("valid frame");
        let key = match icmp_error_key(frame, &headers) {
            Ok(Some(quoted)) => quoted.key.reversed(),
            Ok(None) | Err(_) => headers.key,
        };
        let params = handoff::scope::HashParams {
            buckets: BUCKETS,
            symmetric: self.mode == HashMode::Symmetric,
            seed: SEED,
        };
        self.scope.owner(params.bucket(&key))
    }

    /// Runs one frame; returns (action, reasons counted, output frame).
    fn run(&self, frame: &[u8]) -> (u32, Vec<Reason>, Vec<u8>) {
        let before = self.program.reason_counts().unwrap();
        let out = self.program.test_run(frame).unwrap();
        let delta = self.program.reason_counts().unwrap().since(&before);
        let reasons = Reason::ALL.iter().copied().filter(|r| delta.get(*r) > 0).collect();
        for r in Reason::ALL {
            assert!(
                delta.get(r) <= 1,
                "reason {r:?} counted {} times for one frame",
                delta.get(r)
            );
        }
        (out.action, reasons, out.frame)
    }
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    reasons: Vec<Reason>,
}

fn sprayed(name: &'static str, frame: Vec<u8>) -> Case {
    Case {
        name,
        frame,
        action: XDP_REDIRECT,
        reasons: vec![Reason::Sprayed],
    }
}

fn sprayed_by_address(name: &'static str, frame: Vec<u8>) -> Case {
    Case {
        name,
        frame,
        action: XDP_REDIRECT,
        reasons: vec![Reason::Sprayed, Reason::SprayedAddressesOnly],
    }
}

fn sprayed_with(name: &'static str, frame: Vec<u8>, reasons: &[Reason]) -> Case {
    Case {
        name,
        frame,
        action: XDP_REDIRECT,
        reasons: reasons.to_vec(),
    }
}

fn verdict(name: &'static str, frame: Vec<u8>, action: u32, reason: Reason) -> Case {
    Case {
        name,
        frame,
        action,
        reasons: vec![reason],
    }
}

fn port_unreachable() -> Icmpv4Type {
    Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port)
}

fn cases() -> Vec<Case> {
    let udp = udp4(CLIENT, VIP, 40000, 7000, b"hello");
    let udp_v6 = udp6(CLIENT6, VIP6, 40000, 7000, b"hello");
    let reply = udp4(VIP, CLIENT, 7000, 40000, b"reply");
    let ping_reply = icmp4_message(
        VIP,
        CLIENT,
        Icmpv4Type::EchoReply(IcmpEchoHeader { id: 7, seq: 1 }),
        b"ping",
    );
    let from_member = |f: &[u8]| with_src_mac(f, member_mac(1));
    let solicited_node: Ipv6Addr = "ff02::1:ff00:1".parse().unwrap();
    let neighbor_solicitation = icmp6_message(
        BACKEND6,
        solicited_node,
        Icmpv6Type::Unknown {
            type_u8: 135,
            code_u8: 0,
            bytes5to8: [0; 4],
        },
        &[0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1],
    );
    let mut cases = vec![
        // A backend's own link traffic belongs to the edge host, never sprayed.
        verdict(
            "neighbor solicitation from a backend",
            neighbor_solicitation,
            XDP_PASS,
            Reason::PassNotCluster,
        ),
        verdict(
            "udp6 from a backend to a link-local address",
            udp6(BACKEND6, "fe80::1".parse().unwrap(), 5353, 5353, b"x"),
            XDP_PASS,
            Reason::PassNotCluster,
        ),
        verdict(
            "udp4 from a backend to multicast",
            udp4(BACKEND, Ipv4Addr::new(224, 0, 0, 251), 5353, 5353, b"x"),
            XDP_PASS,
            Reason::PassNotCluster,
        ),
        verdict(
            "udp4 from a backend to the limited broadcast",
            udp4(BACKEND, Ipv4Addr::BROADCAST, 68, 67, b"x"),
            XDP_PASS,
            Reason::PassNotCluster,
        ),
        sprayed(
            "udp6 from a backend to a client",
            udp6(BACKEND6, CLIENT6, 7000, 40000, b"reply"),
        ),
        sprayed("udp4", udp.clone()),
        sprayed("tcp4 syn", tcp4_syn(CLIENT, VIP, 40001, 80)),
        sprayed("udp6", udp_v6.clone()),
        sprayed("tcp6 syn", tcp6_syn(CLIENT6, VIP6, 40002, 80)),
        sprayed("udp4 zero-length payload", udp4(CLIENT, VIP, 40003, 7000, b"")),
        sprayed("802.1Q tagged", with_tags(&udp, &[0x8100])),
        sprayed("802.1ad + 802.1Q tagged", with_tags(&udp, &[0x88a8, 0x8100])),
        sprayed("ipv4 with options", with_ipv4_options(&udp, 3)),
        sprayed(
            "ipv6 hop-by-hop + dstopts",
            with_ipv6_extensions(&udp_v6, &[(0, 0), (60, 1)]),
        ),
        sprayed(
            "ipv6 six extension headers",
            with_ipv6_extensions(&udp_v6, &[(0, 0), (60, 0), (43, 0), (60, 0), (60, 0), (60, 0)]),
        ),
        sprayed("reply from a backend", udp4(BACKEND, CLIENT, 7000, 40000, b"reply")),
        sprayed_by_address("icmp4", icmp4(CLIENT, VIP)),
        sprayed_by_address("ipv4 first fragment", as_ipv4_fragment(&udp, true, 0)),
        sprayed_by_address("ipv4 later fragment", as_ipv4_fragment(&udp, false, 100)),
        sprayed_by_address("ipv6 fragment header", with_ipv6_extensions(&udp_v6, &[(44, 0)])),
        verdict(
            "not cluster traffic",
            udp4(CLIENT, Ipv4Addr::new(10, 0, 0, 9), 1, 2, b"x"),
            XDP_PASS,
            Reason::PassNotCluster,
        ),
        verdict(
            "to the host itself",
            udp4(CLIENT, LOCAL, 1, 2, b"x"),
            XDP_PASS,
            Reason::PassLocal,
        ),
        verdict("arp", arp(), XDP_PASS, Reason::PassNotIp),
        sprayed("vid 0 priority tag", with_tag_tcis(&udp, &[(0x8100, 0xa000)])),
        verdict(
            "three vlan tags",
            with_tags(&udp, &[0x88a8, 0x8100, 0x8100]),
            XDP_DROP,
            Reason::DropVlanDepth,
        ),
        verdict(
            "three vid 0 priority tags",
            with_tag_tcis(&udp, &[(0x8100, 0); 3]),
            XDP_DROP,
            Reason::DropVlanDepth,
        ),
        sprayed_with(
            "icmp4 port unreachable quoting a udp reply",
            icmp4_message(CLIENT, VIP, port_unreachable(), &ip_quote(&reply, 8)),
            &[Reason::Sprayed, Reason::SprayedIcmpQuoted],
        ),
        sprayed_with(
            "icmp6 packet too big quoting a whole udp reply",
            icmp6_message(
                CLIENT6,
                VIP6,
                Icmpv6Type::PacketTooBig { mtu: 1280 },
                &ip_quote(&udp6(VIP6, CLIENT6, 7000, 40000, b"reply"), 100),
            ),
            &[Reason::Sprayed, Reason::SprayedIcmpQuoted],
        ),
        sprayed_with(
            "icmp4 time exceeded quoting an echo reply",
            icmp4_message(
                ROUTER,
                VIP,
                Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
                &ip_quote(&ping_reply, 8),
            ),
            &[Reason::Sprayed, Reason::SprayedAddressesOnly, Reason::SprayedIcmpQuoted],
        ),
        sprayed_with(
            "icmp4 error quoting 4 bytes of udp",
            icmp4_message(CLIENT, VIP, port_unreachable(), &ip_quote(&reply, 4)),
            &[
                Reason::Sprayed,
                Reason::SprayedAddressesOnly,
                Reason::SprayedIcmpBadQuote,
            ],
        ),
        sprayed_with(
            "icmp4 error quoting an ipv6 header",
            icmp4_message(CLIENT, VIP, port_unreachable(), &ip_quote(&udp_v6, 8)),
            &[
                Reason::Sprayed,
                Reason::SprayedAddressesOnly,
                Reason::SprayedIcmpBadQuote,
            ],
        ),
        sprayed_by_address(
            "icmp6 echo request",
            icmp6_message(
                CLIENT6,
                VIP6,
                Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }),
                b"ping",
            ),
        ),
        verdict(
            "cluster traffic from a member",
            from_member(&udp),
            XDP_DROP,
            Reason::DropFromMember,
        ),
        verdict(
            "a backend's reply from a member",
            from_member(&udp4(BACKEND, CLIENT, 7000, 40000, b"reply")),
            XDP_DROP,
            Reason::DropFromMember,
        ),
        verdict(
            "an icmp error from a member",
            from_member(&icmp4_message(CLIENT, VIP, port_unreachable(), &ip_quote(&reply, 8))),
            XDP_DROP,
            Reason::DropFromMember,
        ),
        verdict(
            "an echo request from a member",
            from_member(&icmp4(CLIENT, VIP)),
            XDP_DROP,
            Reason::DropFromMember,
        ),
        verdict(
            "an un-NATed reply from a member",
            from_member(&reply),
            XDP_PASS,
            Reason::PassNotCluster,
        ),
        verdict(
            "a member to the host itself",
            from_member(&udp4(CLIENT, LOCAL, 1, 2, b"x")),
            XDP_PASS,
            Reason::PassLocal,
        ),
        verdict("arp from a member", from_member(&arp()), XDP_PASS, Reason::PassNotIp),
        verdict(
            "ethernet header only",
            udp[..14].to_vec(),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        verdict(
            "ipv6 extension chain over the bound",
            with_ipv6_extensions(
                &udp_v6,
                &[(60, 0), (60, 0), (60, 0), (60, 0), (60, 0), (60, 0), (60, 0)],
            ),
            XDP_DROP,
            Reason::DropBadHeader,
        ),
    ];
    let mut bad = |name, edit: &dyn Fn(&mut Vec<u8>)| {
        let mut f = udp.clone();
        edit(&mut f);
        cases.push(verdict(name, f, XDP_DROP, Reason::DropBadHeader));
    };
    bad("ihl 4", &|f| ipv4_set(f, 0, 0x44));
    bad("ihl 0", &|f| ipv4_set(f, 0, 0x40));
    bad("ip version 6 in an ipv4 ethertype", &|f| ipv4_set(f, 0, 0x65));
    bad("total length beyond the frame", &|f| ipv4_set(f, 2, 0x05));
    bad("total length below the header", &|f| {
        f[L3 + 2] = 0;
        ipv4_set(f, 3, 19);
    });
    bad("udp length below 8", &|f| f[L3 + 20 + 5] = 7);
    bad("udp length beyond the ip packet", &|f| f[L3 + 20 + 4] = 0x10);
    let mut tcp = tcp4_syn(CLIENT, VIP, 1, 2);
    tcp[L3 + 20 + 12] = 0x40; // data offset 4
    cases.push(verdict("tcp data offset 4", tcp, XDP_DROP, Reason::DropBadHeader));
    let mut v6 = udp_v6.clone();
    v6[L3 + 4] = 0x10; // payload length beyond the frame
    cases.push(verdict(
        "ipv6 payload length beyond the frame",
        v6,
        XDP_DROP,
        Reason::DropBadHeader,
    ));
    cases
}

#[test]
fn table_of_frames_gets_the_expected_verdict_reason_and_member() {
    if !privileged("table_of_frames_gets_the_expected_verdict_reason_and_member") {
        return;
    }
    let edge = edge(HashMode::Directional);
    for case in cases() {
        let (action, reasons, out) = edge.run(&case.frame);
        assert_eq!(action, case.action, "{}: action", case.name);
        assert_eq!(reasons, case.reasons, "{}: reasons", case.name);
        if action == XDP_REDIRECT {
            let member = edge.expected_member(&case.frame);
            assert_eq!(
                out[..6],
                member_mac(member),
                "{}: kernel and userspace disagree on the member",
                case.name
            );
            assert_eq!(out[6..12], [0x02, 0xee, 0, 0, 0, 1], "{}: source MAC", case.name);
            assert_eq!(out[12..], case.frame[12..], "{}: only the MACs may change", case.name);
        } else {
            assert_eq!(out, case.frame, "{}: unsprayed frames are untouched", case.name);
        }
    }
}

/// The member of a connection's own packets: hashed by their parsed key,
/// with no ICMP logic involved.
fn member_of_connection(edge: &Edge, packet: &[u8]) -> u32 {
    let key = parse_frame(packet).expect("valid frame").key;
    let params = handoff::scope::HashParams {
        buckets: BUCKETS,
        symmetric: edge.mode == HashMode::Symmetric,
        seed: SEED,
    };
    edge.scope.owner(params.bucket(&key))
}

#[test]
fn icmp_errors_reach_the_member_of_the_connection_they_quote() {
    if !privileged("icmp_errors_reach_the_member_of_the_connection_they_quote") {
        return;
    }
    let edge = edge(HashMode::Directional);
    // An error quotes a packet that went the other way; the member must be
    // the one the connection's packets going the error's way reach.
    struct Error {
        name: &'static str,
        error: Vec<u8>,
        connection: Vec<u8>,
    }
    let mut errors = Vec::new();
    for port in 40000..40032u16 {
        let reply = udp4(VIP, CLIENT, 7000, port, b"reply payload");
        let to_vip = udp4(CLIENT, VIP, port, 7000, b"q");
        errors.push(Error {
            name: "icmp4 port unreachable from the client, 8 bytes quoted",
            error: icmp4_message(CLIENT, VIP, port_unreachable(), &ip_quote(&reply, 8)),
            connection: to_vip.clone(),
        });
        errors.push(Error {
            name: "icmp4 frag needed from a router, all quoted",
            error: icmp4_message(
                ROUTER,
                VIP,
                Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded {
                    next_hop_mtu: 1400,
                }),
                &ip_quote(&reply, 1500),
            ),
            connection: to_vip.clone(),
        });
        errors.push(Error {
            name: "icmp4 time exceeded quoting tcp, with a vlan tag",
            error: with_tags(
                &icmp4_message(
                    ROUTER,
                    VIP,
                    Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
                    &ip_quote(&tcp4_syn(VIP, CLIENT, 80, port), 8),
                ),
                &[0x8100],
            ),
            connection: tcp4_syn(CLIENT, VIP, port, 80),
        });
        errors.push(Error {
            name: "icmp6 packet too big from the client",
            error: icmp6_message(
                CLIENT6,
                VIP6,
                Icmpv6Type::PacketTooBig { mtu: 1280 },
                &ip_quote(&udp6(VIP6, CLIENT6, 7000, port, b"reply"), 8),
            ),
            connection: udp6(CLIENT6, VIP6, port, 7000, b"q"),
        });
        errors.push(Error {
            name: "icmp6 port unreachable",
            error: icmp6_message(
                CLIENT6,
                VIP6,
                Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
                &ip_quote(&udp6(VIP6, CLIENT6, 7000, port, b"reply"), 1000),
            ),
            connection: udp6(CLIENT6, VIP6, port, 7000, b"q"),
        });
    }
    let mut moved_by_the_quote = 0;
    for e in &errors {
        let (action, reasons, out) = edge.run(&e.error);
        assert_eq!(action, XDP_REDIRECT, "{}", e.name);
        assert_eq!(reasons, [Reason::Sprayed, Reason::SprayedIcmpQuoted], "{}", e.name);
        let member = member_of_connection(&edge, &e.connection);
        assert_eq!(out[..6], member_mac(member), "{}: not the connection's member", e.name);
        // The same error hashed by its own addresses, as before.
        let outer = parse_frame(e.error.as_slice()).unwrap().key;
        let params = handoff::scope::HashParams {
            buckets: BUCKETS,
            symmetric: false,
            seed: SEED,
        };
        if edge.scope.owner(params.bucket(&outer)) != member {
            moved_by_the_quote += 1;
        }
    }
    assert!(
        moved_by_the_quote > 0,
        "no error in {} would have gone elsewhere by its addresses: the test proves nothing",
        errors.len()
    );
}

#[test]
fn priority_tags_and_pcp_or_dei_bits_never_change_the_member() {
    if !privileged("priority_tags_and_pcp_or_dei_bits_never_change_the_member") {
        return;
    }
    let edge = edge(HashMode::Directional);
    for port in 40000..40016u16 {
        let untagged = udp4(CLIENT, VIP, port, 7000, b"x");
        let (_, _, plain) = edge.run(&untagged);
        // Every PCP/DEI combination on a VID-0 tag, and on VID 100.
        for tci in (0..16u16).flat_map(|pcp_dei| [pcp_dei << 12, (pcp_dei << 12) | 100]) {
            for tpids in [&[0x8100u16][..], &[0x88a8, 0x8100]] {
                let tags: Vec<(u16, u16)> = tpids.iter().map(|&t| (t, tci)).collect();
                let tagged = with_tag_tcis(&untagged, &tags);
                let (action, reasons, out) = edge.run(&tagged);
                assert_eq!(
                    (action, reasons),
                    (XDP_REDIRECT, vec![Reason::Sprayed]),
                    "tci {tci:#06x} {tpids:x?}"
                );
                assert_eq!(out[..6], plain[..6], "tci {tci:#06x} {tpids:x?}: another member");
                assert_eq!(out[12..], tagged[12..], "tags and packet are untouched");
            }
        }
    }
}

#[test]
fn member_macs_follow_set_and_remove_member() {
    if !privileged("member_macs_follow_set_and_remove_member") {
        return;
    }
    let mut edge = edge(HashMode::Directional);
    let frame = udp4(CLIENT, VIP, 40000, 7000, b"x");
    let (x, y) = ([0x02, 0xbb, 0, 0, 0, 1], [0x02, 0xbb, 0, 0, 0, 2]);
    let verdict = |edge: &Edge, mac| edge.run(&with_src_mac(&frame, mac)).1;
    let sprayed = vec![Reason::Sprayed];
    let dropped = vec![Reason::DropFromMember];
    assert_eq!(verdict(&edge, x), sprayed);
    let egress = [0x02, 0xee, 0, 0, 0, 1];
    edge.program.set_member(5, x, egress, 1).unwrap();
    assert_eq!(verdict(&edge, x), dropped);
    // A member's new MAC replaces its old one.
    edge.program.set_member(5, y, egress, 1).unwrap();
    assert_eq!(
        (verdict(&edge, x), verdict(&edge, y)),
        (sprayed.clone(), dropped.clone())
    );
    edge.program.remove_member(5).unwrap();
    assert_eq!(verdict(&edge, y), sprayed);
    // Two members sharing a MAC: it stays a member's until both are gone.
    edge.program.set_member(6, x, egress, 1).unwrap();
    edge.program.set_member(7, x, egress, 1).unwrap();
    edge.program.remove_member(6).unwrap();
    assert_eq!(verdict(&edge, x), dropped);
    edge.program.remove_member(7).unwrap();
    assert_eq!(verdict(&edge, x), sprayed);
    // The scope's members are still recognised.
    for id in MEMBERS {
        assert_eq!(verdict(&edge, member_mac(id)), dropped, "member {id}");
    }
}

#[test]
fn every_truncation_is_counted_and_agrees_with_the_userspace_parser() {
    if !privileged("every_truncation_is_counted_and_agrees_with_the_userspace_parser") {
        return;
    }
    let edge = edge(HashMode::Directional);
    let full = [
        with_tags(&udp4(CLIENT, VIP, 1, 7000, b"payload"), &[0x8100]),
        with_ipv6_extensions(&udp6(CLIENT6, VIP6, 1, 7000, b"payload"), &[(0, 0)]),
        tcp4_syn(CLIENT, VIP, 1, 80),
    ];
    for frame in full {
        // The kernel needs at least an Ethernet header for a test run.
        for cut in 14..frame.len() {
            let f = &frame[..cut];
            let (action, reasons, _) = edge.run(f);
            let expected = match parse_frame(f) {
                Ok(_) => Reason::Sprayed,
                Err(ParseError::Truncated) => Reason::DropTruncated,
                Err(ParseError::BadHeader) => Reason::DropBadHeader,
                Err(ParseError::NotIp) => Reason::PassNotIp,
                Err(ParseError::VlanDepth) => Reason::DropVlanDepth,
            };
            assert_eq!(reasons.first(), Some(&expected), "cut at {cut}");
            assert_ne!(expected, Reason::Sprayed, "a truncated frame parsed as valid at {cut}");
            assert_eq!(action, XDP_DROP, "cut at {cut}");
        }
    }
}

#[test]
fn symmetric_mode_sends_both_directions_to_the_same_member() {
    if !privileged("symmetric_mode_sends_both_directions_to_the_same_member") {
        return;
    }
    let edge = edge(HashMode::Symmetric);
    let mut differ_directional = 0;
    for port in 0..64u16 {
        let request = udp4(CLIENT, VIP, 20000 + port, 7000, b"q");
        let reply = udp4(BACKEND, CLIENT, 7000, 20000 + port, b"r");
        let reply_to_vip = udp4(VIP, CLIENT, 7000, 20000 + port, b"r");
        let (_, _, a) = edge.run(&request);
        let (_, _, b) = edge.run(&reply);
        assert_eq!(a[..6], member_mac(edge.expected_member(&request)));
        assert_eq!(b[..6], member_mac(edge.expected_member(&reply)));
        // The un-rewritten reply (VIP -> client) is the exact reverse 5-tuple.
        assert_eq!(edge.expected_member(&request), edge.expected_member(&reply_to_vip));
        if edge.expected_member(&request) != edge.expected_member(&reply) {
            differ_directional += 1;
        }
    }
    // DNAT replies are a different 5-tuple and may land elsewhere: nodes fix that.
    assert!(differ_directional > 0);
}

#[test]
fn a_flip_switches_every_bucket_at_once_and_writes_only_changed_slots() {
    if !privileged("a_flip_switches_every_bucket_at_once_and_writes_only_changed_slots") {
        return;
    }
    let mut edge = edge(HashMode::Directional);
    let next = edge.scope.rebuilt(&[0, 2]).unwrap();
    let write = edge.program.publish_scope(next.version, &next.table).unwrap();
    assert_eq!(write.generation, 0);
    // Generation 0 was all zeros (member 0): the write touched every slot that
    // is not member 0's in the new table, and nothing else.
    assert_eq!(write.slots_written, next.table.iter().filter(|&&m| m != 0).count());
    edge.scope = next;
    for port in 0..200u16 {
        let f = udp4(CLIENT, VIP, port, 7000, b"x");
        let (_, _, out) = edge.run(&f);
        let member = edge.expected_member(&f);
        assert_ne!(member, 1);
        assert_eq!(out[..6], member_mac(member));
    }
    // Publishing the same table again writes nothing into the other generation
    // beyond what differs from what it held.
    let again = edge
        .program
        .publish_scope(edge.scope.version, &edge.scope.table.clone())
        .unwrap();
    assert_eq!(again.generation, 1);
    let old_gen1 = Scope::initial(BUCKETS, &MEMBERS).unwrap();
    assert_eq!(again.slots_written, old_gen1.moves(&edge.scope).count());
}

#[test]
fn unowned_buckets_and_an_unready_program_are_handled() {
    if !privileged("unowned_buckets_and_an_unready_program_are_handled") {
        return;
    }
    let mut program = EdgeProgram::load(BUCKETS).unwrap();
    program.add_destination_match("10.0.9.0/24".parse().unwrap()).unwrap();
    let frame = udp4(CLIENT, VIP, 1, 2, b"x");
    // Before the first scope, everything goes to the kernel.
    assert_eq!(program.test_run(&frame).unwrap().action, XDP_PASS);
    program.publish_scope(1, &vec![NO_MEMBER; BUCKETS as usize]).unwrap();
    assert_eq!(program.test_run(&frame).unwrap().action, XDP_DROP);
    assert_eq!(program.reason_counts().unwrap().get(Reason::DropNoMember), 1);
    // A table naming an unconfigured member is refused, nothing written.
    assert!(program.publish_scope(1, &vec![7; BUCKETS as usize]).is_err());
    assert!(program.publish_scope(1, &[0; 3]).is_err());
}

#[test]
fn bad_bucket_counts_are_refused() {
    if !privileged("bad_bucket_counts_are_refused") {
        return;
    }
    for buckets in [0, 3, 1000, 1 << 21] {
        assert!(EdgeProgram::load(buckets).is_err(), "{buckets}");
    }
}

#[test]
fn a_pinned_sprayer_is_taken_over_as_published_and_refused_when_it_does_not_fit() {
    if !privileged("a_pinned_sprayer_is_taken_over_as_published_and_refused_when_it_does_not_fit") {
        return;
    }
    let run = std::env::temp_dir().join(format!("handoff-{}", handoff_testbed::RunPrefix::new()));
    let bpffs = handoff_testbed::netns::BpfFs::mount(&run.join("bpf")).unwrap();
    let dir = bpffs.path().join("edge");
    let e = EdgeProgram::load_pinned(BUCKETS, &run).unwrap_err().to_string();
    assert!(e.contains("not on a bpffs"), "{e}");

    let mut first = EdgeProgram::load_pinned(BUCKETS, &dir).unwrap();
    assert_eq!(first.published(), None, "nothing was pinned before");
    first.set_hash(HashMode::Symmetric, SEED).unwrap();
    first.set_member(0, member_mac(0), [0x02, 0xee, 0, 0, 0, 1], 1).unwrap();
    first.set_member(2, member_mac(2), [0x02, 0xee, 0, 0, 0, 1], 1).unwrap();
    first
        .set_destination_matches(&["10.0.9.0/24".parse().unwrap(), "10.0.8.0/24".parse().unwrap()])
        .unwrap();
    let s1 = Scope::initial(BUCKETS, &[0]).unwrap();
    let s2 = s1.rebuilt(&[0, 2]).unwrap();
    first.publish_scope(s1.version, &s1.table).unwrap();
    first.publish_scope(s2.version, &s2.table).unwrap();
    drop(first);

    // The maps outlive the process's handles: the next load finds the scope
    // last published, its version and generation, and the same hash.
    let mut second = EdgeProgram::load_pinned(BUCKETS, &dir).unwrap();
    let published = second.published().cloned().unwrap();
    assert_eq!(
        (
            published.version,
            published.generation,
            published.hash_mode,
            published.hash_seed
        ),
        (2, 0, HashMode::Symmetric, SEED)
    );
    assert_eq!(published.table, s2.table);
    assert_eq!(second.active_table(), s2.table.as_slice());
    let frame = udp4(CLIENT, VIP, 40000, 7000, b"x");
    let out = second.test_run(&frame).unwrap();
    assert_eq!(out.action, XDP_REDIRECT, "members, matches and scope came along");
    let from_member = with_src_mac(&frame, member_mac(2));
    assert_eq!(
        second.test_run(&from_member).unwrap().action,
        XDP_DROP,
        "the member MACs came along too"
    );
    let params = handoff::scope::HashParams {
        buckets: BUCKETS,
        symmetric: true,
        seed: SEED,
    };
    let key = parse_frame(frame.as_slice()).unwrap().key;
    assert_eq!(out.frame[..6], member_mac(s2.owner(params.bucket(&key))));
    // A match the configuration dropped is removed from the taken-over trie.
    second
        .set_destination_matches(&["10.0.8.0/24".parse().unwrap()])
        .unwrap();
    assert_eq!(second.test_run(&frame).unwrap().action, XDP_PASS);
    drop(second);

    let e = EdgeProgram::load_pinned(BUCKETS * 2, &dir).unwrap_err().to_string();
    assert!(
        e.contains(&format!("{BUCKETS} buckets per scope generation")) && e.contains("edge-detach"),
        "{e}"
    );
    let removed = handoff_loader::pins::remove(&dir).unwrap();
    assert_eq!(removed.maps.len(), handoff_loader::pins::edge_map_shapes(BUCKETS).len());
    assert!(removed.links.is_empty());
    assert!(!dir.exists());
    drop(bpffs);
    let _ = std::fs::remove_dir(&run);
}
