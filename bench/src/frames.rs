//! A packet builder for tests: valid frames from `etherparse` (an independent,
//! maintained implementation), and the surgical edits that make them malformed.

use etherparse::PacketBuilder;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Source MAC of built frames.
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Destination MAC of built frames.
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
/// Offset of the IP header in an untagged frame.
pub const L3: usize = 14;

/// UDP over IPv4.
pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    write(b, payload)
}

/// TCP over IPv4 with the SYN flag.
pub fn tcp4_syn(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 65535)
        .syn();
    write(b, &[])
}

/// TCP over IPv4 with the ACK flag (acknowledging sequence number 1).
pub fn tcp4_ack(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1001, 65535)
        .ack(1);
    write(b, &[])
}

/// ICMP echo request over IPv4.
pub fn icmp4(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(7, 1);
    write(b, b"ping")
}

/// UDP over IPv6.
pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .udp(sport, dport);
    write(b, payload)
}

/// TCP over IPv6 with the SYN flag.
pub fn tcp6_syn(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .tcp(sport, dport, 1000, 65535)
        .syn();
    write(b, &[])
}

fn write<B: Writable>(b: B, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    b.write_to(&mut out, payload);
    out
}

trait Writable {
    fn write_to(self, out: &mut Vec<u8>, payload: &[u8]);
}

macro_rules! writable {
    ($($t:ty),*) => {$(
        impl Writable for etherparse::PacketBuilderStep<$t> {
            fn write_to(self, out: &mut Vec<u8>, payload: &[u8]) {
                self.write(out, payload).expect("etherparse builds a valid frame");
            }
        }
    )*};
}
writable!(
    etherparse::UdpHeader,
    etherparse::TcpHeader,
    etherparse::Icmpv4Header,
    etherparse::Icmpv6Header
);

/// An ARP request.
pub fn arp() -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 10, 0, 0, 2]);
    f
}

/// Inserts VLAN tags after the MAC addresses, outermost first (`0x88a8` for
/// an 802.1ad service tag, `0x8100` for 802.1Q).
pub fn with_tags(frame: &[u8], tpids: &[u16]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (i, tpid) in tpids.iter().enumerate() {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&(100 + i as u16).to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// Rewrites an IPv4 header byte at `offset` (relative to the IP header of an
/// untagged frame) and fixes the header checksum.
pub fn ipv4_set(frame: &mut [u8], offset: usize, value: u8) {
    frame[L3 + offset] = value;
    fix_ipv4_checksum(frame);
}

/// Recomputes the IPv4 header checksum of an untagged frame.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let ihl = ((frame[L3] & 0x0f) as usize * 4).max(20).min(frame.len() - L3);
    frame[L3 + 10] = 0;
    frame[L3 + 11] = 0;
    let mut sum = 0u32;
    for c in frame[L3..L3 + ihl].chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    frame[L3 + 10..L3 + 12].copy_from_slice(&csum.to_be_bytes());
}

/// Adds IPv4 options (`words` 4-byte NOP words) to an untagged IPv4 frame.
pub fn with_ipv4_options(frame: &[u8], words: usize) -> Vec<u8> {
    let mut out = frame[..L3 + 20].to_vec();
    out.extend(std::iter::repeat_n(1u8, words * 4));
    out.extend_from_slice(&frame[L3 + 20..]);
    out[L3] = 0x40 | (5 + words as u8);
    let total = u16::from_be_bytes([out[L3 + 2], out[L3 + 3]]) + (words * 4) as u16;
    out[L3 + 2..L3 + 4].copy_from_slice(&total.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// Marks an untagged IPv4 frame as a fragment: `more` sets MF, `offset8` is
/// the fragment offset in 8-byte units.
pub fn as_ipv4_fragment(frame: &[u8], more: bool, offset8: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    let bits = (if more { 0x2000 } else { 0 }) | (offset8 & 0x1fff);
    out[L3 + 6..L3 + 8].copy_from_slice(&bits.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// Inserts IPv6 extension headers (each `(next_header_kind, 8-byte units - 1)`)
/// between the IPv6 header and the payload of an untagged IPv6 frame. Kinds:
/// 0 hop-by-hop, 43 routing, 44 fragment, 60 destination options.
pub fn with_ipv6_extensions(frame: &[u8], headers: &[(u8, u8)]) -> Vec<u8> {
    let upper = frame[L3 + 6];
    let mut out = frame[..L3 + 40].to_vec();
    let mut added = 0usize;
    for (i, &(kind, len_units)) in headers.iter().enumerate() {
        let next = headers.get(i + 1).map_or(upper, |h| h.0);
        let len = if kind == 44 { 8 } else { (len_units as usize + 1) * 8 };
        let mut h = vec![0u8; len];
        h[0] = next;
        if kind != 44 {
            h[1] = len_units;
            // PadN option filling the rest, so the header is valid.
            h[2] = 1;
            h[3] = (len - 4) as u8;
        }
        out.extend_from_slice(&h);
        added += len;
    }
    out.extend_from_slice(&frame[L3 + 40..]);
    if let Some(first) = headers.first() {
        out[L3 + 6] = first.0;
    }
    let payload = u16::from_be_bytes([out[L3 + 4], out[L3 + 5]]) + added as u16;
    out[L3 + 4..L3 + 6].copy_from_slice(&payload.to_be_bytes());
    out
}

/// An ICMP message over IPv4 of type `kind` (an error, or any other) whose
/// payload is `quoted`: for an error, the start of the packet it reports
/// ([`ip_quote`]).
pub fn icmp4_message(src: Ipv4Addr, dst: Ipv4Addr, kind: etherparse::Icmpv4Type, quoted: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4(kind);
    write(b, quoted)
}

/// An ICMPv6 message of type `kind` whose payload is `quoted`.
pub fn icmp6_message(src: Ipv6Addr, dst: Ipv6Addr, kind: etherparse::Icmpv6Type, quoted: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv6(src.octets(), dst.octets(), 64)
        .icmpv6(kind);
    write(b, quoted)
}

/// What an ICMP error quotes of an untagged `frame`: its IP header (IPv4
/// options included; IPv6's fixed 40 bytes, so extension headers count as
/// `l4_bytes`) and the first `l4_bytes` bytes after it (RFC 792 asks for 8).
pub fn ip_quote(frame: &[u8], l4_bytes: usize) -> Vec<u8> {
    let ip_len = if frame[L3] >> 4 == 4 {
        (frame[L3] & 0x0f) as usize * 4
    } else {
        40
    };
    frame[L3..(L3 + ip_len + l4_bytes).min(frame.len())].to_vec()
}

/// Inserts VLAN tags `(tpid, tci)` after the MAC addresses, outermost
/// first; a TCI is PCP (3 bits), DEI (1 bit), VID (12 bits).
pub fn with_tag_tcis(frame: &[u8], tags: &[(u16, u16)]) -> Vec<u8> {
    let mut out = frame[..12].to_vec();
    for (tpid, tci) in tags {
        out.extend_from_slice(&tpid.to_be_bytes());
        out.extend_from_slice(&tci.to_be_bytes());
    }
    out.extend_from_slice(&frame[12..]);
    out
}

/// The frame with another source MAC.
pub fn with_src_mac(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[6..12].copy_from_slice(&mac);
    out
}

/// A TCP SYN with the options a client sends (MSS, window scale, SACK
/// permitted, timestamps: 20 bytes, data offset 10), over IPv4 or IPv6.
///
/// # Panics
/// If `src` and `dst` are of different families.
pub fn tcp_syn_with_options(src: std::net::IpAddr, dst: std::net::IpAddr, sport: u16, dport: u16) -> Vec<u8> {
    use etherparse::TcpOptionElement::{
        MaximumSegmentSize, Noop, SelectiveAcknowledgementPermitted, Timestamp, WindowScale,
    };
    let options = [
        MaximumSegmentSize(1460),
        Noop,
        WindowScale(7),
        SelectiveAcknowledgementPermitted,
        Timestamp(1, 0),
    ];
    let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
    let ip = match (src, dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("{src} and {dst} are of different families"),
    };
    let b = ip
        .tcp(sport, dport, 1000, 65535)
        .syn()
        .options(&options)
        .expect("20 bytes of options fit");
    write(b, &[])
}

/// ICMPv6 echo request.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let echo = etherparse::IcmpEchoHeader { id: 7, seq: 1 };
    icmp6_message(src, dst, etherparse::Icmpv6Type::EchoRequest(echo), b"ping")
}

/// The frame with other MAC addresses.
pub fn with_macs(frame: &[u8], dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    let mut out = with_src_mac(frame, src);
    out[..6].copy_from_slice(&dst);
    out
}

/// An untagged IP frame whose IP length field (IPv4 Total Length, with
/// the header checksum fixed; IPv6 Payload Length) says the packet ends
/// where the frame does. Frames too short to hold the field are returned
/// as they are.
pub fn with_ip_len(frame: &[u8]) -> Vec<u8> {
    let mut out = frame.to_vec();
    let ip_len = out.len().saturating_sub(L3);
    match out.get(L3).map(|b| b >> 4) {
        Some(4) if ip_len >= 20 => {
            out[L3 + 2..L3 + 4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            fix_ipv4_checksum(&mut out);
        }
        Some(6) if ip_len >= 40 => {
            out[L3 + 4..L3 + 6].copy_from_slice(&((ip_len - 40) as u16).to_be_bytes());
        }
        _ => {}
    }
    out
}

/// An untagged IPv4 frame with another Identification (RFC 791 §3.1).
pub fn with_ipv4_id(frame: &[u8], id: u16) -> Vec<u8> {
    let mut out = frame.to_vec();
    out[L3 + 4..L3 + 6].copy_from_slice(&id.to_be_bytes());
    fix_ipv4_checksum(&mut out);
    out
}

/// An untagged IPv6 frame made a fragment: a fragment header (RFC 8200
/// §4.5) right after the IPv6 header, with `offset` (bytes, a multiple of
/// 8), the M flag `more` and Identification `id`; the rest of the packet
/// becomes the fragment's data.
pub fn as_ipv6_fragment(frame: &[u8], offset: u16, more: bool, id: u32) -> Vec<u8> {
    let mut out = with_ipv6_extensions(frame, &[(44, 0)]);
    let field = (offset & !0x7) | u16::from(more);
    out[L3 + 42..L3 + 44].copy_from_slice(&field.to_be_bytes());
    out[L3 + 44..L3 + 48].copy_from_slice(&id.to_be_bytes());
    out
}
