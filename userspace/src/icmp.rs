//! ICMP (RFC 792) and ICMPv6 (RFC 4443) messages a node answers or
//! originates, written in place into the frame that caused them.
//!
//! * [`answer_echo`] turns an echo request to a VIP into its reply.
//! * [`write_error`] turns a packet the node cannot forward into the ICMP
//!   error about it (time exceeded, destination unreachable, fragmentation
//!   needed / packet too big), quoting as much of it as RFC 1812 §4.3.2.3
//!   (576-byte IPv4 datagram) and RFC 4443 §2.4(c) (1,280-byte IPv6 packet)
//!   allow.
//! * [`RateLimit`] bounds how many errors a worker originates
//!   (RFC 1812 §4.3.2.8, RFC 4443 §2.4(f)).
//!
//! Every offset is checked; on an error the frame is unchanged.

use crate::{
    io::FrameBuf,
    rewrite::{fold, read_u16, sum_words, write_u16, ChecksumDelta, RewriteError},
};
use handoff_common::{
    flow_key::{IP_V4, IP_V6},
    net::{ethertype, ipproto},
    parse::{Headers, ETH_HLEN, ICMP_HLEN},
};
use std::net::IpAddr;

/// TTL / hop limit of the messages a node writes (Linux's default).
pub const DEFAULT_TTL: u8 = 64;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
/// RFC 1812 §4.3.2.3: an IPv4 error is at most a 576-byte datagram.
const IPV4_ERROR_MAX: usize = 576;
/// RFC 4443 §2.4(c): an ICMPv6 error is at most the minimum IPv6 MTU.
const IPV6_ERROR_MAX: usize = 1280;

mod icmpv4 {
    pub const ECHO_REPLY: u8 = 0;
    pub const UNREACHABLE: u8 = 3;
    pub const ECHO_REQUEST: u8 = 8;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const CODE_PROTOCOL_UNREACHABLE: u8 = 2;
    pub const CODE_PORT_UNREACHABLE: u8 = 3;
    pub const CODE_FRAGMENTATION_NEEDED: u8 = 4;
}

mod icmpv6 {
    pub const UNREACHABLE: u8 = 1;
    pub const PACKET_TOO_BIG: u8 = 2;
    pub const TIME_EXCEEDED: u8 = 3;
    pub const ECHO_REQUEST: u8 = 128;
    pub const ECHO_REPLY: u8 = 129;
    pub const CODE_ADMIN_PROHIBITED: u8 = 1;
    pub const CODE_PORT_UNREACHABLE: u8 = 4;
}

/// The offset of the header after the IP headers
/// ([`Headers::upper_offset`]); `None` for a non-first fragment, which
/// carries none.
fn transport_offset(headers: &Headers) -> Option<usize> {
    (!headers.fragment || headers.frag.offset == 0).then_some(headers.upper_offset)
}

/// Whether the packet is an ICMP echo request (type 8) or an ICMPv6 one
/// (type 128).
pub fn is_echo_request(frame: &[u8], headers: &Headers) -> bool {
    let expected = match (headers.key.ip_version, headers.key.protocol) {
        (IP_V4, ipproto::ICMP) => icmpv4::ECHO_REQUEST,
        (IP_V6, ipproto::ICMPV6) => icmpv6::ECHO_REQUEST,
        _ => return false,
    };
    transport_offset(headers).and_then(|at| frame.get(at)) == Some(&expected)
}

/// Whether the packet is an ICMP or ICMPv6 error message (or a fragment of
/// one we cannot tell): no error is ever sent about those (RFC 1812
/// §4.3.2.7, RFC 4443 §2.4(e)).
fn is_icmp_error(frame: &[u8], headers: &Headers) -> bool {
    match (headers.key.ip_version, headers.key.protocol) {
        (IP_V4, ipproto::ICMP) => transport_offset(headers)
            .and_then(|at| frame.get(at))
            .is_none_or(|&t| !matches!(t, icmpv4::ECHO_REQUEST | icmpv4::ECHO_REPLY | 13..=18)),
        // ICMPv6 errors are types 0..=127 (RFC 4443 §2.1).
        (IP_V6, ipproto::ICMPV6) => transport_offset(headers)
            .and_then(|at| frame.get(at))
            .is_none_or(|&t| t < 128),
        _ => false,
    }
}

/// Turns the echo request in `frame` into its reply, in place: addresses
/// swapped, type 0 (ICMPv6: 129), TTL / hop limit [`DEFAULT_TTL`], every
/// checksum updated incrementally (RFC 1624; swapping the addresses leaves
/// the sums unchanged). The MACs are the caller's.
///
/// # Errors
/// [`RewriteError::Mismatch`] if the packet is no echo request (see
/// [`is_echo_request`]); [`RewriteError::Truncated`] if it ends early.
pub fn answer_echo(frame: &mut [u8], headers: &Headers) -> Result<(), RewriteError> {
    if !is_echo_request(frame, headers) {
        return Err(RewriteError::Mismatch {
            reason: "not an echo request",
        });
    }
    let at = transport_offset(headers).ok_or(RewriteError::Mismatch {
        reason: "no ICMP header",
    })?;
    let l3 = headers.l3_offset;
    let (reply, addresses, address_len) = match headers.key.ip_version {
        IP_V4 => (icmpv4::ECHO_REPLY, l3 + 12, 4),
        _ => (icmpv6::ECHO_REPLY, l3 + 8, 16),
    };
    let checksum_at = at + 2;
    // Type and code: the read fails on a frame that ends inside them.
    let old_type = read_u16(frame, at)?;
    let new_type = u16::from_be_bytes([reply, old_type as u8]);
    let mut delta = ChecksumDelta::default();
    delta.replace(&old_type.to_be_bytes(), &new_type.to_be_bytes());
    let checksum = delta.apply(read_u16(frame, checksum_at)?);
    if frame.len() < addresses + 2 * address_len {
        return Err(RewriteError::Truncated {
            needed: addresses + 2 * address_len,
            len: frame.len(),
        });
    }
    // From here on every offset is in bounds.
    write_u16(frame, checksum_at, checksum)?;
    write_u16(frame, at, new_type)?;
    let (src, dst) = frame[addresses..addresses + 2 * address_len].split_at_mut(address_len);
    src.swap_with_slice(dst);
    if headers.key.ip_version == IP_V4 {
        let ttl_word = read_u16(frame, l3 + 8)?;
        let new_word = u16::from_be_bytes([DEFAULT_TTL, ttl_word as u8]);
        let mut delta = ChecksumDelta::default();
        delta.replace(&ttl_word.to_be_bytes(), &new_word.to_be_bytes());
        let header_checksum = delta.apply(read_u16(frame, l3 + 10)?);
        write_u16(frame, l3 + 8, new_word)?;
        write_u16(frame, l3 + 10, header_checksum)?;
    } else {
        frame[l3 + 7] = DEFAULT_TTL;
    }
    Ok(())
}

/// An ICMP error a node originates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TTL / hop limit ran out here (ICMP 11/0, ICMPv6 3/0).
    TimeExceeded,
    /// Nothing serves this port (ICMP 3/3, ICMPv6 1/4).
    PortUnreachable,
    /// Nothing serves this protocol (ICMP 3/2; ICMPv6 1/1,
    /// administratively prohibited, as IPv6 has no such code).
    ProtocolUnreachable,
    /// The packet is larger than the next link takes (ICMP 3/4 with the
    /// next-hop MTU, RFC 1191; ICMPv6 2/0, RFC 8201).
    TooBig {
        /// The largest IP packet the next link takes, in bytes.
        mtu: u16,
    },
}

impl ErrorKind {
    fn type_code(self, ipv4: bool) -> (u8, u8) {
        match (self, ipv4) {
            (Self::TimeExceeded, true) => (icmpv4::TIME_EXCEEDED, 0),
            (Self::TimeExceeded, false) => (icmpv6::TIME_EXCEEDED, 0),
            (Self::PortUnreachable, true) => (icmpv4::UNREACHABLE, icmpv4::CODE_PORT_UNREACHABLE),
            (Self::PortUnreachable, false) => (icmpv6::UNREACHABLE, icmpv6::CODE_PORT_UNREACHABLE),
            (Self::ProtocolUnreachable, true) => (icmpv4::UNREACHABLE, icmpv4::CODE_PROTOCOL_UNREACHABLE),
            (Self::ProtocolUnreachable, false) => (icmpv6::UNREACHABLE, icmpv6::CODE_ADMIN_PROHIBITED),
            (Self::TooBig { .. }, true) => (icmpv4::UNREACHABLE, icmpv4::CODE_FRAGMENTATION_NEEDED),
            (Self::TooBig { .. }, false) => (icmpv6::PACKET_TOO_BIG, 0),
        }
    }

    /// The 4 bytes after the checksum: the MTU for a too-big error.
    fn rest(self, ipv4: bool) -> [u8; 4] {
        match (self, ipv4) {
            (Self::TooBig { mtu }, true) => {
                let [hi, lo] = mtu.to_be_bytes();
                [0, 0, hi, lo]
            }
            (Self::TooBig { mtu }, false) => u32::from(mtu).to_be_bytes(),
            _ => [0; 4],
        }
    }
}

/// Whether an error may be sent about this packet at all: not about an
/// ICMP error, a non-first fragment, or a packet from an unspecified,
/// multicast or broadcast-looking source (RFC 1812 §4.3.2.7, RFC 4443
/// §2.4(e)).
pub fn may_answer_with_error(frame: &[u8], headers: &Headers) -> bool {
    let source = headers.key.src_ip();
    let bad_source = match source {
        IpAddr::V4(a) => a.is_unspecified() || a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_unspecified() || a.is_multicast(),
    };
    let first_fragment = !headers.fragment || transport_offset(headers).is_some();
    !bad_source && first_fragment && !is_icmp_error(frame, headers)
}

/// Replaces the packet in `frame` with the ICMP error `kind` about it, from
/// `source` to the packet's source, in an untagged Ethernet frame from
/// `src_mac` to `dst_mac`. The error quotes the packet's start: up to 548
/// bytes of an IPv4 packet, 1,232 of an IPv6 one.
///
/// # Errors
/// [`RewriteError::FamilyMismatch`] if `source` is not of the packet's
/// family; [`RewriteError::Mismatch`] if [`may_answer_with_error`] says no
/// or the headers do not fit the frame; a frame error as
/// [`RewriteError::Truncated`] when it lacks headroom.
pub fn write_error<F: FrameBuf>(
    frame: &mut F,
    headers: &Headers,
    kind: ErrorKind,
    source: IpAddr,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Result<(), RewriteError> {
    let ipv4 = headers.key.ip_version == IP_V4;
    let (ip_hlen, limit, eth_type) = if ipv4 {
        (IPV4_HLEN, IPV4_ERROR_MAX, ethertype::IPV4)
    } else {
        (IPV6_HLEN, IPV6_ERROR_MAX, ethertype::IPV6)
    };
    if source.is_ipv4() != ipv4 {
        return Err(RewriteError::FamilyMismatch {
            address: source,
            ip_version: headers.key.ip_version,
        });
    }
    if !may_answer_with_error(frame.bytes(), headers) {
        return Err(RewriteError::Mismatch {
            reason: "no ICMP error about this packet",
        });
    }
    let (l3, l3_end) = (headers.l3_offset, headers.l3_end);
    if l3 < ETH_HLEN || l3_end > frame.bytes().len() || l3_end <= l3 {
        return Err(RewriteError::Mismatch {
            reason: "IP packet outside the frame",
        });
    }
    let destination = headers.key.src_ip();
    let quoted = (l3_end - l3).min(limit - ip_hlen - ICMP_HLEN);
    let start = ETH_HLEN + ip_hlen + ICMP_HLEN;
    // Move the frame's start so that the packet's IP header lands where the
    // quote begins: nothing of the packet is copied.
    let resize = if start > l3 {
        frame.push_front(start - l3)
    } else {
        frame.pull_front(l3 - start)
    };
    resize.map_err(|_| RewriteError::Truncated { needed: start, len: l3 })?;
    let total = start + quoted;
    frame.truncate(total).map_err(|_| RewriteError::Truncated {
        needed: total,
        len: frame.bytes().len(),
    })?;
    let bytes = frame.bytes_mut();
    bytes[0..6].copy_from_slice(&dst_mac);
    bytes[6..12].copy_from_slice(&src_mac);
    bytes[12..14].copy_from_slice(&eth_type.to_be_bytes());
    let icmp_len = ICMP_HLEN + quoted;
    let (ip, rest) = bytes[ETH_HLEN..].split_at_mut(ip_hlen);
    match (source, destination) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            ip.copy_from_slice(&[0; IPV4_HLEN]);
            ip[0] = 0x45;
            // Internetwork control, as Linux marks its ICMP errors.
            ip[1] = 0xc0;
            ip[2..4].copy_from_slice(&((IPV4_HLEN + icmp_len) as u16).to_be_bytes());
            ip[8] = DEFAULT_TTL;
            ip[9] = ipproto::ICMP;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let checksum = !fold(sum_words(0, ip));
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            ip[4..6].copy_from_slice(&(icmp_len as u16).to_be_bytes());
            ip[6] = ipproto::ICMPV6;
            ip[7] = DEFAULT_TTL;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
        }
        _ => {
            return Err(RewriteError::FamilyMismatch {
                address: source,
                ip_version: headers.key.ip_version,
            })
        }
    }
    let (icmp_type, code) = kind.type_code(ipv4);
    let icmp = &mut rest[..icmp_len];
    icmp[0] = icmp_type;
    icmp[1] = code;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..8].copy_from_slice(&kind.rest(ipv4));
    let mut sum = 0;
    if !ipv4 {
        // The ICMPv6 checksum covers a pseudo-header (RFC 4443 §2.3, RFC 8200 §8.1).
        sum = sum_words(sum, &ip[8..40]);
        sum += icmp_len as u64 + u64::from(ipproto::ICMPV6);
    }
    let checksum = !fold(sum_words(sum, icmp));
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    Ok(())
}

/// A token bucket bounding the ICMP errors one worker originates: at most
/// `per_second` a second, in bursts of at most that many. Time is the
/// worker's monotonic clock, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct RateLimit {
    per_second: u32,
    tokens: u32,
    refilled_ns: u64,
}

impl RateLimit {
    /// A bucket of `per_second` tokens a second (0: never).
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second,
            tokens: per_second,
            refilled_ns: 0,
        }
    }

    /// Takes a token at `now_ns` if there is one.
    pub fn allow(&mut self, now_ns: u64) -> bool {
        if self.per_second == 0 {
            return false;
        }
        let elapsed = now_ns.saturating_sub(self.refilled_ns);
        let earned = elapsed.saturating_mul(u64::from(self.per_second)) / 1_000_000_000;
        if earned > 0 {
            self.tokens = (u64::from(self.tokens) + earned).min(u64::from(self.per_second)) as u32;
            self.refilled_ns = now_ns;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::memory::MemoryFrame;
    use etherparse::{Icmpv4Type, Icmpv6Type, PacketBuilder, PacketHeaders, SlicedPacket, TransportSlice};
    use handoff_common::parse::parse_frame;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
    const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 9, 0, 0, 0, 1);

    fn echo_v4(payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ipv4(CLIENT.octets(), VIP.octets(), 7)
            .icmpv4_echo_request(0x1234, 9)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    fn echo_v6(payload: &[u8]) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ipv6(CLIENT6.octets(), VIP6.octets(), 7)
            .icmpv6_echo_request(0x1234, 9)
            .write(&mut frame, payload)
            .unwrap();
        frame
    }

    fn udp_v4(len: usize, ttl: u8) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ipv4(CLIENT.octets(), VIP.octets(), ttl)
            .udp(40000, 7000)
            .write(&mut frame, &vec![0xab; len])
            .unwrap();
        frame
    }

    fn udp_v6(len: usize) -> Vec<u8> {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, NODE_MAC)
            .ipv6(CLIENT6.octets(), VIP6.octets(), 9)
            .udp(40000, 7000)
            .write(&mut frame, &vec![0xcd; len])
            .unwrap();
        frame
    }

    /// Checks every checksum etherparse knows of and returns the ICMP type.
    fn icmp_checked(frame: &[u8]) -> (PacketHeaders<'_>, Vec<u8>) {
        let sliced = SlicedPacket::from_ethernet(frame).unwrap();
        let headers = PacketHeaders::from_ethernet_slice(frame).unwrap();
        match (&headers.net, sliced.transport.as_ref().unwrap()) {
            (Some(etherparse::NetHeaders::Ipv4(ip, _)), TransportSlice::Icmpv4(icmp)) => {
                assert_eq!(ip.header_checksum, ip.calc_header_checksum());
                let header = icmp.header();
                assert_eq!(header.checksum, header.icmp_type.calc_checksum(icmp.payload()));
                (headers.clone(), icmp.payload().to_vec())
            }
            (Some(etherparse::NetHeaders::Ipv6(ip, _)), TransportSlice::Icmpv6(icmp)) => {
                let header = icmp.header();
                let expected = header
                    .icmp_type
                    .calc_checksum(ip.source, ip.destination, icmp.payload())
                    .unwrap();
                assert_eq!(header.checksum, expected);
                (headers.clone(), icmp.payload().to_vec())
            }
            other => panic!("not ICMP: {other:?}"),
        }
    }

    #[test]
    fn an_echo_request_becomes_its_reply_with_valid_checksums() {
        for (frame, v6) in [(echo_v4(b"ping payload"), false), (echo_v6(b"ping payload 6"), true)] {
            let mut frame = frame;
            let headers = parse_frame(frame.as_slice()).unwrap();
            assert!(is_echo_request(&frame, &headers));
            answer_echo(&mut frame, &headers).unwrap();
            let (parsed, _) = icmp_checked(&frame);
            match (parsed.net.unwrap(), parsed.transport.unwrap()) {
                (etherparse::NetHeaders::Ipv4(ip, _), etherparse::TransportHeader::Icmpv4(icmp)) => {
                    assert!(!v6);
                    assert_eq!(
                        (ip.source, ip.destination, ip.time_to_live),
                        (VIP.octets(), CLIENT.octets(), 64)
                    );
                    assert!(matches!(icmp.icmp_type, Icmpv4Type::EchoReply(e) if e.id == 0x1234 && e.seq == 9));
                }
                (etherparse::NetHeaders::Ipv6(ip, _), etherparse::TransportHeader::Icmpv6(icmp)) => {
                    assert!(v6);
                    assert_eq!(
                        (ip.source, ip.destination, ip.hop_limit),
                        (VIP6.octets(), CLIENT6.octets(), 64)
                    );
                    assert!(matches!(icmp.icmp_type, Icmpv6Type::EchoReply(e) if e.id == 0x1234 && e.seq == 9));
                }
                other => panic!("{other:?}"),
            }
            // A reply is no request: answering again is refused, unchanged.
            let headers = parse_frame(frame.as_slice()).unwrap();
            let before = frame.clone();
            assert!(answer_echo(&mut frame, &headers).is_err());
            assert_eq!(frame, before);
        }
    }

    #[test]
    fn udp_is_no_echo_request() {
        let mut frame = udp_v4(10, 64);
        let headers = parse_frame(frame.as_slice()).unwrap();
        assert!(!is_echo_request(&frame, &headers));
        assert!(answer_echo(&mut frame, &headers).is_err());
    }

    #[test]
    fn an_echo_request_cut_inside_its_icmp_header_is_refused_not_a_panic() {
        for full in [echo_v4(b""), echo_v6(b"")] {
            let at = parse_frame(full.as_slice()).unwrap().upper_offset;
            // The frame ends after the type byte, or inside the checksum.
            for len in [at + 1, at + 3] {
                let mut frame = full[..len].to_vec();
                let headers = parse_frame(full.as_slice()).unwrap();
                assert!(is_echo_request(&frame, &headers), "{len}");
                assert!(
                    matches!(answer_echo(&mut frame, &headers), Err(RewriteError::Truncated { .. })),
                    "{len}"
                );
            }
        }
    }

    fn error_of(frame: &[u8], kind: ErrorKind, source: IpAddr) -> Vec<u8> {
        let headers = parse_frame(frame).unwrap();
        let mut buf = MemoryFrame::new(4096, 64);
        buf.load(frame, 64).unwrap();
        write_error(&mut buf, &headers, kind, source, NODE_MAC, CLIENT_MAC).unwrap();
        buf.bytes().to_vec()
    }

    #[test]
    fn a_too_big_ipv4_packet_gets_fragmentation_needed_quoting_it() {
        let original = udp_v4(1400, 64);
        let node: IpAddr = Ipv4Addr::new(10, 0, 1, 11).into();
        let error = error_of(&original, ErrorKind::TooBig { mtu: 1280 }, node);
        assert_eq!(
            error.len(),
            ETH_HLEN + IPV4_ERROR_MAX,
            "an IPv4 error is a 576-byte datagram"
        );
        let (parsed, quoted) = icmp_checked(&error);
        assert_eq!(&error[..6], &CLIENT_MAC);
        let Some(etherparse::NetHeaders::Ipv4(ip, _)) = parsed.net else {
            panic!("not IPv4")
        };
        assert_eq!((ip.source, ip.destination), ([10, 0, 1, 11], CLIENT.octets()));
        assert!(matches!(
            parsed.transport,
            Some(etherparse::TransportHeader::Icmpv4(ref h))
                if matches!(h.icmp_type, Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 }))
        ));
        assert_eq!(quoted, original[ETH_HLEN..ETH_HLEN + quoted.len()]);
    }

    #[test]
    fn an_ipv6_error_quotes_up_to_the_minimum_mtu() {
        let original = udp_v6(1400);
        let node: IpAddr = Ipv6Addr::new(0xfd00, 0, 1, 0, 0, 0, 0, 11).into();
        let error = error_of(&original, ErrorKind::TooBig { mtu: 1280 }, node);
        assert_eq!(error.len(), ETH_HLEN + IPV6_ERROR_MAX);
        let (parsed, quoted) = icmp_checked(&error);
        assert!(matches!(
            parsed.transport,
            Some(etherparse::TransportHeader::Icmpv6(ref h)) if h.icmp_type == Icmpv6Type::PacketTooBig { mtu: 1280 }
        ));
        assert_eq!(quoted, original[ETH_HLEN..ETH_HLEN + quoted.len()]);
        // A short packet is quoted whole.
        let short = udp_v6(10);
        let error = error_of(&short, ErrorKind::TimeExceeded, node);
        let (_, quoted) = icmp_checked(&error);
        assert_eq!(quoted, short[ETH_HLEN..]);
    }

    #[test]
    fn every_kind_has_its_type_and_code() {
        let v4 = udp_v4(20, 1);
        let v6 = udp_v6(20);
        let node4: IpAddr = Ipv4Addr::new(10, 0, 1, 11).into();
        let node6: IpAddr = Ipv6Addr::new(0xfd00, 0, 1, 0, 0, 0, 0, 11).into();
        for (kind, t4, t6) in [
            (ErrorKind::TimeExceeded, (11, 0), (3, 0)),
            (ErrorKind::PortUnreachable, (3, 3), (1, 4)),
            (ErrorKind::ProtocolUnreachable, (3, 2), (1, 1)),
            (ErrorKind::TooBig { mtu: 1500 }, (3, 4), (2, 0)),
        ] {
            let e4 = error_of(&v4, kind, node4);
            let e6 = error_of(&v6, kind, node6);
            icmp_checked(&e4);
            icmp_checked(&e6);
            assert_eq!((e4[34], e4[35]), t4, "{kind:?}");
            assert_eq!((e6[54], e6[55]), t6, "{kind:?}");
        }
    }

    #[test]
    fn no_error_about_an_error_or_a_wrong_family() {
        let node4: IpAddr = Ipv4Addr::new(10, 0, 1, 11).into();
        let error = error_of(&udp_v4(20, 1), ErrorKind::TimeExceeded, node4);
        let headers = parse_frame(error.as_slice()).unwrap();
        assert!(!may_answer_with_error(&error, &headers));
        let mut buf = MemoryFrame::new(4096, 64);
        buf.load(&error, 64).unwrap();
        assert!(write_error(&mut buf, &headers, ErrorKind::TimeExceeded, node4, NODE_MAC, CLIENT_MAC).is_err());
        assert_eq!(buf.bytes(), error.as_slice(), "a refused error leaves the frame");
        // An echo request may get one.
        let echo = echo_v4(b"x");
        let headers = parse_frame(echo.as_slice()).unwrap();
        assert!(may_answer_with_error(&echo, &headers));
        let v6: IpAddr = Ipv6Addr::LOCALHOST.into();
        let mut buf = MemoryFrame::new(4096, 64);
        buf.load(&echo, 64).unwrap();
        assert!(matches!(
            write_error(&mut buf, &headers, ErrorKind::TimeExceeded, v6, NODE_MAC, CLIENT_MAC),
            Err(RewriteError::FamilyMismatch { .. })
        ));
    }

    #[test]
    fn the_rate_limit_refills_with_time_and_never_exceeds_its_burst() {
        let mut limit = RateLimit::new(10);
        let allowed = (0..100).filter(|_| limit.allow(1_000)).count();
        assert_eq!(allowed, 10);
        assert!(!limit.allow(50_000_000), "5 ms earn nothing at 10/s");
        assert!(limit.allow(101_000_000), "100 ms earn one");
        assert!(!limit.allow(101_000_000));
        let allowed = (0..100).filter(|_| limit.allow(60_000_000_000)).count();
        assert_eq!(allowed, 10, "a long pause refills to the burst, not beyond");
        let mut never = RateLimit::new(0);
        assert!(!never.allow(1));
    }
}
