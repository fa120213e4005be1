//! The shared packet parser (`handoff_common::parse`), the flow key and the
//! flow hash, on arbitrary bytes taken as an Ethernet frame.
//!
//! Invariants: no panic; every offset a parse hands out lies inside the
//! frame and the IP packet, in header order; a key's reverse of its reverse
//! is itself; the symmetric hash of a key and of its reverse agree; an ICMP
//! error's quote lies inside the error; where `etherparse` (an independent
//! parser) reads the same TCP/UDP packet, it reads the same addresses and
//! ports.
#![no_main]

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use handoff_common::{
    flow_key::{FlowKey, IP_V4, IP_V6},
    hash::{bucket_of, flow_hash, HashMode},
    net::ipproto,
    parse::{icmp_error_key, parse_ethernet, parse_frame, Headers, ETH_HLEN, ICMP_HLEN, MAX_VLAN_TAGS, VLAN_HLEN},
};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;

/// Bytes of a UDP header, and of the ports and more an ICMP error must quote.
const L4_MIN: usize = 8;

fuzz_target!(|frame: &[u8]| {
    let Ok(l2) = parse_ethernet(frame) else {
        assert!(
            parse_frame(frame).is_err(),
            "parse_frame succeeded where parse_ethernet failed"
        );
        return;
    };
    assert!(l2.l3_offset >= ETH_HLEN && l2.l3_offset <= ETH_HLEN + MAX_VLAN_TAGS * VLAN_HLEN);
    assert!(l2.l3_offset <= frame.len());
    let Ok(h) = parse_frame(frame) else { return };
    check_headers(frame, &h, l2.l3_offset);
    check_key(&h.key);
    check_quote(frame, &h);
    agree_with_etherparse(frame, &h);
});

fn check_headers(frame: &[u8], h: &Headers, l3: usize) {
    assert_eq!(h.l3_offset, l3);
    let ip_min = if h.key.ip_version == IP_V4 { 20 } else { 40 };
    assert!(h.l3_offset + ip_min <= h.upper_offset, "{h:?}");
    assert!(h.upper_offset <= h.l3_end && h.l3_end <= frame.len(), "{h:?}");
    if h.has_ports() {
        assert!(!h.fragment);
        assert_eq!(h.l4_offset, h.upper_offset);
        assert!(h.l4_offset + L4_MIN <= h.l3_end, "{h:?}");
        assert!(matches!(h.key.protocol, ipproto::TCP | ipproto::UDP));
    } else {
        assert_eq!((h.key.src_port.get(), h.key.dst_port.get()), (0, 0), "{h:?}");
    }
    if h.tcp_flags != 0 {
        assert_eq!(h.key.protocol, ipproto::TCP);
    }
    if h.fragment {
        assert!(!h.has_ports());
        if h.frag.first_l4_offset != 0 {
            assert_eq!(h.frag.offset, 0);
            assert_eq!(h.frag.first_l4_offset, h.upper_offset);
            assert!(h.frag.first_l4_offset + L4_MIN <= h.l3_end, "{h:?}");
        }
        if h.frag.header_offset != 0 {
            assert_eq!(h.key.ip_version, IP_V6);
            assert!(h.frag.header_offset + 8 <= h.upper_offset, "{h:?}");
        }
    } else {
        assert_eq!(h.frag, Default::default());
    }
}

fn check_key(key: &FlowKey) {
    assert!(key.ip_version == IP_V4 || key.ip_version == IP_V6);
    if key.ip_version == IP_V4 {
        assert_eq!(key.src_addr[1..], [0; 3]);
        assert_eq!(key.dst_addr[1..], [0; 3]);
    }
    assert_eq!(key.pad, [0; 2]);
    assert_eq!(key.reversed().reversed(), *key);
    for seed in [0, 0x5eed] {
        let symmetric = flow_hash(key, HashMode::Symmetric, seed);
        assert_eq!(symmetric, flow_hash(&key.reversed(), HashMode::Symmetric, seed));
        assert_eq!(
            flow_hash(key, HashMode::Directional, seed),
            flow_hash(&{ *key }, HashMode::Directional, seed)
        );
        assert!(bucket_of(symmetric, 0xffff) <= 0xffff);
    }
    // The key's address words read back as the addresses of its family.
    let rebuilt = FlowKey::new(
        key.src_ip(),
        key.dst_ip(),
        key.src_port.get(),
        key.dst_port.get(),
        key.protocol,
    );
    assert_eq!(rebuilt, *key);
}

fn check_quote(frame: &[u8], h: &Headers) {
    let Ok(Some(q)) = icmp_error_key(frame, h) else { return };
    assert!(!h.fragment);
    assert!(matches!(h.key.protocol, ipproto::ICMP | ipproto::ICMPV6));
    assert_eq!(q.l3_offset, h.upper_offset + ICMP_HLEN);
    assert_eq!(q.key.ip_version, h.key.ip_version);
    assert!(q.l3_offset <= h.l3_end);
    if q.has_ports() {
        assert!(q.l4_offset > q.l3_offset);
        assert!(q.l4_offset + L4_MIN <= h.l3_end, "{q:?} {h:?}");
    } else {
        assert_eq!((q.key.src_port.get(), q.key.dst_port.get()), (0, 0));
    }
    check_key(&q.key);
}

/// Where both parsers read an unfragmented TCP or UDP packet, they read the
/// same addresses and ports.
fn agree_with_etherparse(frame: &[u8], h: &Headers) {
    if !h.has_ports() {
        return;
    }
    let Ok(theirs) = PacketHeaders::from_ethernet_slice(frame) else {
        return;
    };
    let (src, dst): (IpAddr, IpAddr) = match &theirs.net {
        Some(NetHeaders::Ipv4(ip, _)) => (ip.source.into(), ip.destination.into()),
        Some(NetHeaders::Ipv6(ip, _)) => (ip.source.into(), ip.destination.into()),
        None => return,
    };
    let ports = match &theirs.transport {
        Some(TransportHeader::Udp(u)) => (u.source_port, u.destination_port),
        Some(TransportHeader::Tcp(t)) => (t.source_port, t.destination_port),
        _ => return,
    };
    assert_eq!((h.key.src_ip(), h.key.dst_ip()), (src, dst));
    assert_eq!((h.key.src_port.get(), h.key.dst_port.get()), ports);
}
