//! The parser against frames built by `etherparse` (an independent,
//! maintained implementation): VLAN tags, fragment details and the packets
//! ICMP errors quote.

extern crate std;

use super::*;
use crate::counters::Reason;
use etherparse::{
    icmpv4, icmpv6, ip_number, IcmpEchoHeader, Icmpv4Type, Icmpv6Type, IpFragOffset, IpHeaders, IpNumber, Ipv4Header,
    Ipv4Options, Ipv6Extensions, Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, PacketBuilder,
};
use std::{vec, vec::Vec};

const VIP: [u8; 4] = [10, 0, 9, 1];
const CLIENT: [u8; 4] = [10, 0, 0, 2];
const ROUTER: [u8; 4] = [10, 0, 5, 1];
const VIP6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 1];
const CLIENT6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
const ROUTER6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1];
/// Offset of the IP header in an untagged frame.
const L3: usize = ETH_HLEN;

/// What follows the IP header (and its extensions).
#[derive(Clone)]
enum L4 {
    Udp(u16, u16),
    Tcp(u16, u16),
    Icmp4(Icmpv4Type),
    Icmp6(Icmpv6Type),
}

fn frame(ip: IpHeaders, l4: L4, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]).ip(ip);
    let mut out = Vec::new();
    match l4 {
        L4::Udp(s, d) => b.udp(s, d).write(&mut out, payload),
        L4::Tcp(s, d) => b.tcp(s, d, 1, 1000).write(&mut out, payload),
        L4::Icmp4(t) => b.icmpv4(t).write(&mut out, payload),
        L4::Icmp6(t) => b.icmpv6(t).write(&mut out, payload),
    }
    .expect("etherparse builds the frame");
    out
}

fn ipv4(src: [u8; 4], dst: [u8; 4]) -> Ipv4Header {
    Ipv4Header::new(0, 64, ip_number::UDP, src, dst).expect("valid header")
}

fn v4(src: [u8; 4], dst: [u8; 4]) -> IpHeaders {
    IpHeaders::Ipv4(ipv4(src, dst), Default::default())
}

fn v6(src: [u8; 16], dst: [u8; 16], extensions: Ipv6Extensions) -> IpHeaders {
    let header = Ipv6Header {
        hop_limit: 64,
        source: src,
        destination: dst,
        ..Default::default()
    };
    IpHeaders::Ipv6(header, extensions)
}

/// IPv4 fragment: identification, more-fragments flag, offset in 8-byte units.
fn v4_fragment(src: [u8; 4], dst: [u8; 4], id: u16, more: bool, offset8: u16) -> IpHeaders {
    let mut h = ipv4(src, dst);
    h.identification = id;
    h.more_fragments = more;
    h.fragment_offset = IpFragOffset::try_new(offset8).expect("13 bits");
    IpHeaders::Ipv4(h, Default::default())
}

/// An IPv6 fragment header with offset 0 and M clear; [`set_fragment`]
/// writes the offset and M flag. etherparse 0.16 encodes those two fields
/// with the wrong bit positions (its issue #150, fixed in 0.20), so they are
/// written here by hand, as RFC 8200 §4.5 lays them out.
fn fragment_header(protocol: IpNumber, id: u32) -> Ipv6FragmentHeader {
    Ipv6FragmentHeader::new(protocol, IpFragOffset::ZERO, false, id)
}

/// Writes Fragment Offset (`offset8`, 8-byte units: the top 13 bits), Res
/// (0) and M (the lowest bit) into the fragment header at `at`.
fn set_fragment(mut f: Vec<u8>, at: usize, offset8: u16, more: bool) -> Vec<u8> {
    f[at + 2..at + 4].copy_from_slice(&((offset8 << 3) | more as u16).to_be_bytes());
    f
}

/// A hop-by-hop options header of 8 bytes (PadN filling it).
fn hop_by_hop() -> Ipv6RawExtHeader {
    Ipv6RawExtHeader::new_raw(ip_number::UDP, &[1, 4, 0, 0, 0, 0]).expect("valid length")
}

fn key4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, protocol: u8) -> FlowKey {
    FlowKey {
        src_addr: [u32::from_ne_bytes(src), 0, 0, 0],
        dst_addr: [u32::from_ne_bytes(dst), 0, 0, 0],
        src_port: NetU16::from_host(sport),
        dst_port: NetU16::from_host(dport),
        protocol,
        ip_version: IP_V4,
        pad: [0; 2],
    }
}

fn words(a: [u8; 16]) -> [u32; 4] {
    core::array::from_fn(|i| u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]))
}

fn key6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, protocol: u8) -> FlowKey {
    FlowKey {
        src_addr: words(src),
        dst_addr: words(dst),
        src_port: NetU16::from_host(sport),
        dst_port: NetU16::from_host(dport),
        protocol,
        ip_version: IP_V6,
        pad: [0; 2],
    }
}

fn parse(f: &[u8]) -> Headers {
    parse_frame(f).expect("valid frame")
}

/// Inserts VLAN tags `(tpid, tci)` after the MACs, outermost first.
fn with_tags(f: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = f[..12].to_vec();
    for (tpid, tci) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&tci.to_be_bytes());
    }
    out.extend_from_slice(&f[12..]);
    out
}

/// Sets the length field of the IP packet of an untagged frame to `len`
/// bytes of IP packet (IPv4 total length, or IPv6 payload length plus 40)
/// and cuts the frame there.
fn cut_ip_packet(f: &[u8], len: usize) -> Vec<u8> {
    let mut out = f[..L3 + len].to_vec();
    if out[L3] >> 4 == 4 {
        out[L3 + 2..L3 + 4].copy_from_slice(&(len as u16).to_be_bytes());
    } else {
        out[L3 + 4..L3 + 6].copy_from_slice(&((len - IPV6_HLEN) as u16).to_be_bytes());
    }
    out
}

// ---- VLAN tags ----

#[test]
fn vid_0_priority_tags_and_any_pcp_or_dei_parse_like_untagged() {
    let untagged = frame(v4(CLIENT, VIP), L4::Udp(40000, 7000), b"x");
    let plain = parse(&untagged);
    // PCP (3 bits), DEI (1 bit), VID (12 bits): priority tags (VID 0) with
    // every PCP and both DEI values, and ordinary VIDs.
    let mut tcis: Vec<u16> = (0..16u16).map(|pcp_dei| pcp_dei << 12).collect();
    tcis.extend([100, 0xe064, 0x1fff]);
    for tci in tcis {
        for tpids in [&[0x8100][..], &[0x88a8, 0x8100], &[0x8100, 0x8100]] {
            let tags: Vec<(u16, u16)> = tpids.iter().map(|&t| (t, tci)).collect();
            let tagged = with_tags(&untagged, &tags);
            let shift = 4 * tags.len();
            let l2 = parse_ethernet(tagged.as_slice()).unwrap();
            assert_eq!((l2.ethertype, l2.l3_offset), (ethertype::IPV4, L3 + shift));
            let h = parse(&tagged);
            assert_eq!(h.key, plain.key, "tci {tci:#06x} tags {tpids:x?}");
            assert_eq!(
                (h.l3_offset, h.l4_offset, h.upper_offset, h.l3_end),
                (
                    plain.l3_offset + shift,
                    plain.l4_offset + shift,
                    plain.upper_offset + shift,
                    plain.l3_end + shift
                )
            );
        }
    }
}

#[test]
fn more_vlan_tags_than_supported_is_its_own_error_and_a_drop() {
    let f = frame(v4(CLIENT, VIP), L4::Udp(40000, 7000), b"x");
    let two = with_tags(&f, &[(0x88a8, 0), (0x8100, 5)]);
    assert!(parse_frame(two.as_slice()).is_ok());
    for tpids in [[0x88a8, 0x8100, 0x8100], [0x8100, 0x8100, 0x88a8], [0x8100; 3]] {
        let three = with_tags(&f, &tpids.map(|t| (t, 0)));
        assert_eq!(parse_frame(three.as_slice()), Err(ParseError::VlanDepth), "{tpids:x?}");
    }
    assert_eq!(Reason::from(ParseError::VlanDepth), Reason::DropVlanDepth);
    // Cut inside the third tag: the tags are counted before the frame ends.
    let three = with_tags(&f, &[(0x8100, 0); 3]);
    assert_eq!(parse_frame(&three[..24]), Err(ParseError::VlanDepth));
    assert_eq!(parse_frame(&three[..21]), Err(ParseError::Truncated));
}

// ---- fragments ----

#[test]
fn an_ipv4_first_fragment_reports_its_datagram_and_where_its_ports_are() {
    let f = frame(
        v4_fragment(CLIENT, VIP, 0xbeef, true, 0),
        L4::Udp(40000, 7000),
        b"first",
    );
    let h = parse(&f);
    assert!(h.fragment && !h.has_ports());
    assert_eq!(h.key, key4(CLIENT, VIP, 0, 0, 17), "fragments hash without ports");
    assert_eq!((h.l4_offset, h.upper_offset), (0, L3 + 20));
    assert_eq!(
        h.frag,
        FragmentInfo {
            id: 0xbeef,
            offset: 0,
            more: true,
            first_l4_offset: L3 + 20,
            header_offset: 0,
        }
    );
    // The first fragment's ports are where first_l4_offset says.
    assert_eq!(
        f[h.frag.first_l4_offset..h.frag.first_l4_offset + 4],
        [0x9c, 0x40, 0x1b, 0x58]
    );

    // With options (IHL 7), TCP.
    let mut header = ipv4(CLIENT, VIP);
    header.identification = 7;
    header.more_fragments = true;
    header.options = Ipv4Options::from([1u8; 8]);
    let f = frame(IpHeaders::Ipv4(header, Default::default()), L4::Tcp(40001, 80), b"");
    let h = parse(&f);
    assert_eq!(
        (h.frag.id, h.frag.first_l4_offset, h.upper_offset),
        (7, L3 + 28, L3 + 28)
    );
    assert_eq!(h.key, key4(CLIENT, VIP, 0, 0, 6));
}

#[test]
fn later_ipv4_fragments_give_offset_in_bytes_and_the_same_key_as_the_first() {
    let first = parse(&frame(
        v4_fragment(CLIENT, VIP, 0x1234, true, 0),
        L4::Udp(40000, 7000),
        b"a",
    ));
    for (more, offset8) in [(true, 185u16), (false, 370), (false, 0x1fff)] {
        let f = frame(v4_fragment(CLIENT, VIP, 0x1234, more, offset8), L4::Udp(1, 2), b"b");
        let h = parse(&f);
        assert!(h.fragment && !h.has_ports());
        assert_eq!(h.key, first.key, "every fragment of a datagram hashes alike");
        assert_eq!(
            h.frag,
            FragmentInfo {
                id: 0x1234,
                offset: offset8 * 8,
                more,
                first_l4_offset: 0,
                header_offset: 0,
            }
        );
    }
}

#[test]
fn a_first_fragment_too_short_for_its_l4_header_has_no_l4_offset() {
    let udp = frame(v4_fragment(CLIENT, VIP, 1, true, 0), L4::Udp(1, 2), b"");
    let h = parse(&cut_ip_packet(&udp, 20 + 7));
    assert!(h.fragment);
    assert_eq!(h.frag.first_l4_offset, 0);
    assert_eq!(parse(&cut_ip_packet(&udp, 20 + 8)).frag.first_l4_offset, L3 + 20);
    let tcp = frame(v4_fragment(CLIENT, VIP, 1, true, 0), L4::Tcp(1, 2), b"");
    assert_eq!(parse(&cut_ip_packet(&tcp, 20 + 19)).frag.first_l4_offset, 0);
    assert_eq!(parse(&cut_ip_packet(&tcp, 20 + 20)).frag.first_l4_offset, L3 + 20);
    // Padding after the IP packet is not part of it.
    let mut padded = cut_ip_packet(&udp, 20 + 4);
    padded.resize(60, 0);
    assert_eq!(parse(&padded).frag.first_l4_offset, 0);
    // Protocols without ports have none to point at.
    let icmp = frame(
        v4_fragment(CLIENT, VIP, 1, true, 0),
        L4::Icmp4(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 })),
        b"ping",
    );
    assert_eq!(parse(&icmp).frag.first_l4_offset, 0);
}

#[test]
fn unfragmented_packets_have_no_fragment_info() {
    let mut header = ipv4(CLIENT, VIP);
    header.dont_fragment = true;
    header.identification = 99;
    let h = parse(&frame(IpHeaders::Ipv4(header, Default::default()), L4::Udp(1, 2), b""));
    assert!(!h.fragment && h.has_ports());
    assert_eq!(h.frag, FragmentInfo::default());
    let h = parse(&frame(v6(CLIENT6, VIP6, Default::default()), L4::Udp(1, 2), b""));
    assert_eq!(h.frag, FragmentInfo::default());
}

#[test]
fn an_ipv6_fragment_header_gives_id_offset_flag_and_its_own_position() {
    let exts = Ipv6Extensions {
        fragment: Some(fragment_header(ip_number::UDP, 0xdead_beef)),
        ..Default::default()
    };
    let f = set_fragment(
        frame(v6(CLIENT6, VIP6, exts), L4::Udp(40000, 7000), b"first"),
        L3 + 40,
        0,
        true,
    );
    let h = parse(&f);
    assert!(h.fragment && !h.has_ports());
    assert_eq!(h.key, key6(CLIENT6, VIP6, 0, 0, 17));
    assert_eq!(
        h.frag,
        FragmentInfo {
            id: 0xdead_beef,
            offset: 0,
            more: true,
            first_l4_offset: L3 + 48,
            header_offset: L3 + 40,
        }
    );
    assert_eq!(h.upper_offset, L3 + 48);

    // Behind a hop-by-hop header, a later fragment.
    let exts = Ipv6Extensions {
        hop_by_hop_options: Some(hop_by_hop()),
        fragment: Some(fragment_header(ip_number::UDP, 0x0102_0304)),
        ..Default::default()
    };
    let h = parse(&set_fragment(
        frame(v6(CLIENT6, VIP6, exts), L4::Udp(1, 2), b"last"),
        L3 + 48,
        0x1fff,
        false,
    ));
    assert_eq!(h.key, key6(CLIENT6, VIP6, 0, 0, 17));
    assert_eq!(
        h.frag,
        FragmentInfo {
            id: 0x0102_0304,
            offset: 0xfff8,
            more: false,
            first_l4_offset: 0,
            header_offset: L3 + 48,
        }
    );
}

// ---- ICMP errors ----

/// The IP header and the first `l4_bytes` bytes after it, from an untagged
/// IPv4 frame (IHL honoured) or an IPv6 frame without extension headers.
fn quote(f: &[u8], l4_bytes: usize) -> Vec<u8> {
    let ip_len = if f[L3] >> 4 == 4 {
        (f[L3] & 0x0f) as usize * 4
    } else {
        IPV6_HLEN
    };
    f[L3..(L3 + ip_len + l4_bytes).min(f.len())].to_vec()
}

fn error4(src: [u8; 4], dst: [u8; 4], kind: Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
    frame(v4(src, dst), L4::Icmp4(kind), quoted)
}

fn error6(src: [u8; 16], dst: [u8; 16], kind: Icmpv6Type, quoted: &[u8]) -> Vec<u8> {
    frame(v6(src, dst, Default::default()), L4::Icmp6(kind), quoted)
}

fn quoted_of(f: &[u8]) -> Result<Option<QuotedPacket>, ParseError> {
    icmp_error_key(f, &parse(f))
}

fn icmpv4_errors() -> [Icmpv4Type; 5] {
    [
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }),
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Host),
        Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
        Icmpv4Type::ParameterProblem(icmpv4::ParameterProblemHeader::PointerIndicatesError(9)),
    ]
}

fn icmpv6_errors() -> [Icmpv6Type; 4] {
    [
        Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        Icmpv6Type::TimeExceeded(icmpv6::TimeExceededCode::HopLimitExceeded),
        Icmpv6Type::ParameterProblem(icmpv6::ParameterProblemHeader {
            code: icmpv6::ParameterProblemCode::ErroneousHeaderField,
            pointer: 6,
        }),
    ]
}

#[test]
fn an_icmp4_port_unreachable_names_the_quoted_connection_reversed_for_its_direction() {
    // The reply VIP:7000 -> client:40000 was refused by the client.
    let reply = frame(v4(VIP, CLIENT), L4::Udp(7000, 40000), b"reply");
    let error = error4(
        CLIENT,
        VIP,
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        &quote(&reply, 8),
    );
    let quoted = quoted_of(&error).unwrap().expect("an error with a readable quote");
    assert_eq!(
        quoted,
        QuotedPacket {
            key: key4(VIP, CLIENT, 7000, 40000, 17),
            l3_offset: L3 + 20 + ICMP_HLEN,
            l4_offset: L3 + 20 + ICMP_HLEN + 20,
            // The quoted UDP header's ports sit at l4_offset.
        }
    );
    assert!(quoted.has_ports());
    assert_eq!(error[quoted.l4_offset..quoted.l4_offset + 4], [0x1b, 0x58, 0x9c, 0x40]);
    // Reversed, it is the key of the connection's packets going the error's way.
    let request = frame(v4(CLIENT, VIP), L4::Udp(40000, 7000), b"q");
    assert_eq!(quoted.key.reversed(), parse(&request).key);
}

#[test]
fn every_icmpv4_error_type_reads_its_quote_however_much_of_it_there_is() {
    let mut with_options = ipv4(VIP, CLIENT);
    with_options.options = Ipv4Options::from([1u8; 12]);
    let originals = [
        (
            frame(v4(VIP, CLIENT), L4::Udp(7000, 40000), b"reply payload"),
            key4(VIP, CLIENT, 7000, 40000, 17),
        ),
        (
            frame(v4(VIP, CLIENT), L4::Tcp(80, 40001), b"data"),
            key4(VIP, CLIENT, 80, 40001, 6),
        ),
        (
            frame(
                IpHeaders::Ipv4(with_options, Default::default()),
                L4::Udp(7000, 40002),
                b"",
            ),
            key4(VIP, CLIENT, 7000, 40002, 17),
        ),
    ];
    for kind in icmpv4_errors() {
        for (original, key) in &originals {
            let ip_len = (original[L3] & 0x0f) as usize * 4;
            for l4_bytes in [8, 12, original.len()] {
                // From the client, or (frag-needed, time exceeded) a router on the way.
                for src in [CLIENT, ROUTER] {
                    let error = error4(src, VIP, kind.clone(), &quote(original, l4_bytes));
                    let quoted = quoted_of(&error).unwrap().expect("readable");
                    assert_eq!(quoted.key, *key, "{kind:?}");
                    assert_eq!(quoted.l3_offset, L3 + 28);
                    assert_eq!(quoted.l4_offset, L3 + 28 + ip_len);
                }
            }
        }
    }
}

#[test]
fn every_icmpv6_error_type_reads_its_quote_extension_headers_included() {
    let reply = frame(v6(VIP6, CLIENT6, Default::default()), L4::Udp(7000, 40000), b"reply");
    let request = frame(v6(CLIENT6, VIP6, Default::default()), L4::Udp(40000, 7000), b"q");
    let behind_hop_by_hop = frame(
        v6(
            VIP6,
            CLIENT6,
            Ipv6Extensions {
                hop_by_hop_options: Some(hop_by_hop()),
                ..Default::default()
            },
        ),
        L4::Udp(7000, 40000),
        b"reply",
    );
    for kind in icmpv6_errors() {
        for src in [CLIENT6, ROUTER6] {
            for (original, l4_bytes, extensions) in
                [(&reply, 8, 0), (&reply, reply.len(), 0), (&behind_hop_by_hop, 16, 8)]
            {
                let error = error6(src, VIP6, kind, &quote(original, l4_bytes));
                let quoted = quoted_of(&error).unwrap().expect("readable");
                assert_eq!(quoted.key, key6(VIP6, CLIENT6, 7000, 40000, 17), "{kind:?}");
                assert_eq!(quoted.key.reversed(), parse(&request).key);
                assert_eq!(quoted.l3_offset, L3 + 48);
                assert_eq!(quoted.l4_offset, L3 + 48 + 40 + extensions);
            }
        }
    }
}

#[test]
fn echo_and_other_messages_are_not_errors() {
    let echo = IcmpEchoHeader { id: 1, seq: 2 };
    let frames = [
        frame(v4(CLIENT, VIP), L4::Icmp4(Icmpv4Type::EchoRequest(echo)), b"ping"),
        frame(v4(VIP, CLIENT), L4::Icmp4(Icmpv4Type::EchoReply(echo)), b"ping"),
        // Redirect (5) quotes a packet too, but is no error.
        frame(
            v4(ROUTER, VIP),
            L4::Icmp4(Icmpv4Type::Unknown {
                type_u8: 5,
                code_u8: 1,
                bytes5to8: ROUTER,
            }),
            &quote(&frame(v4(VIP, CLIENT), L4::Udp(1, 2), b""), 8),
        ),
        frame(
            v6(CLIENT6, VIP6, Default::default()),
            L4::Icmp6(Icmpv6Type::EchoRequest(echo)),
            b"ping",
        ),
        // Neighbor solicitation (135).
        frame(
            v6(CLIENT6, VIP6, Default::default()),
            L4::Icmp6(Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0; 4],
            }),
            &VIP6,
        ),
        frame(v4(CLIENT, VIP), L4::Udp(1, 2), b""),
        frame(v4(CLIENT, VIP), L4::Tcp(1, 2), b""),
    ];
    for f in &frames {
        assert_eq!(quoted_of(f), Ok(None), "{:?}", parse(f).key);
    }
    // A fragment of an error: its fragments must hash alike, later ones have no quote.
    let fragment = frame(
        v4_fragment(CLIENT, VIP, 3, true, 0),
        L4::Icmp4(icmpv4_errors()[0].clone()),
        &quote(&frame(v4(VIP, CLIENT), L4::Udp(1, 2), b""), 8),
    );
    assert_eq!(quoted_of(&fragment), Ok(None));
}

#[test]
fn a_quoted_packet_without_ports_keeps_its_addresses_and_protocol() {
    // An echo request that timed out: ICMP has no ports.
    let ping = frame(
        v4(VIP, CLIENT),
        L4::Icmp4(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 9, seq: 1 })),
        b"ping",
    );
    let error = error4(ROUTER, VIP, icmpv4_errors()[3].clone(), &quote(&ping, 8));
    let quoted = quoted_of(&error).unwrap().unwrap();
    assert_eq!(quoted.key, key4(VIP, CLIENT, 0, 0, 1));
    assert!(!quoted.has_ports());
    // A quoted later fragment carries no ports either, like the fragment itself.
    let fragment = frame(v4_fragment(VIP, CLIENT, 5, false, 10), L4::Udp(7000, 40000), b"");
    let error = error4(CLIENT, VIP, icmpv4_errors()[0].clone(), &quote(&fragment, 8));
    assert_eq!(quoted_of(&error).unwrap().unwrap().key, parse(&fragment).key);
    let exts = Ipv6Extensions {
        fragment: Some(fragment_header(ip_number::UDP, 1)),
        ..Default::default()
    };
    let fragment6 = set_fragment(
        frame(v6(VIP6, CLIENT6, exts), L4::Udp(7000, 40000), b""),
        L3 + 40,
        0,
        true,
    );
    let error = error6(CLIENT6, VIP6, icmpv6_errors()[1], &quote(&fragment6, 16));
    let quoted = quoted_of(&error).unwrap().unwrap();
    assert_eq!((quoted.key, quoted.l4_offset), (key6(VIP6, CLIENT6, 0, 0, 17), 0));
}

#[test]
fn a_short_quote_is_truncated_whatever_padding_follows() {
    let reply = frame(v4(VIP, CLIENT), L4::Udp(7000, 40000), b"");
    let full = quote(&reply, 8);
    for len in 0..full.len() {
        let error = error4(CLIENT, VIP, icmpv4_errors()[0].clone(), &full[..len]);
        assert_eq!(quoted_of(&error), Err(ParseError::Truncated), "{len} bytes quoted");
        // Ethernet padding past the IP packet is no quote.
        let mut padded = error.clone();
        padded.extend_from_slice(&full[len..]);
        assert_eq!(
            quoted_of(&padded),
            Err(ParseError::Truncated),
            "{len} bytes quoted, padded"
        );
    }
    let reply6 = frame(v6(VIP6, CLIENT6, Default::default()), L4::Udp(7000, 40000), b"");
    let full6 = quote(&reply6, 8);
    for len in 0..full6.len() {
        let error = error6(CLIENT6, VIP6, icmpv6_errors()[1], &full6[..len]);
        assert!(quoted_of(&error).is_err(), "{len} bytes quoted");
    }
    // An ICMP message shorter than its own header.
    let short = cut_ip_packet(&error4(CLIENT, VIP, icmpv4_errors()[0].clone(), &[]), 20 + 4);
    assert_eq!(quoted_of(&short), Err(ParseError::Truncated));
}

#[test]
fn a_quote_that_is_no_ip_header_of_the_right_version_is_a_bad_header() {
    let reply = frame(v4(VIP, CLIENT), L4::Udp(7000, 40000), b"");
    let reply6 = frame(v6(VIP6, CLIENT6, Default::default()), L4::Udp(7000, 40000), b"");
    let mut ihl_4 = quote(&reply, 8);
    ihl_4[0] = 0x44;
    let cases = [
        error4(CLIENT, VIP, icmpv4_errors()[0].clone(), &ihl_4),
        error4(CLIENT, VIP, icmpv4_errors()[0].clone(), &quote(&reply6, 8)),
        error6(
            CLIENT6,
            VIP6,
            icmpv6_errors()[0],
            &[quote(&reply, 8), vec![0; 20]].concat(),
        ),
    ];
    for error in cases {
        assert_eq!(quoted_of(&error), Err(ParseError::BadHeader));
    }
    // An extension chain longer than the bound.
    let mut chained = quote(&reply6, 0);
    chained[6] = ipproto::DSTOPTS;
    for i in 0..=MAX_IPV6_EXT_HEADERS {
        let next = if i == MAX_IPV6_EXT_HEADERS {
            ipproto::UDP
        } else {
            ipproto::DSTOPTS
        };
        chained.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    chained.extend_from_slice(&quote(&reply6, 8)[IPV6_HLEN..]);
    let error = error6(CLIENT6, VIP6, icmpv6_errors()[0], &chained);
    assert_eq!(quoted_of(&error), Err(ParseError::BadHeader));
}
