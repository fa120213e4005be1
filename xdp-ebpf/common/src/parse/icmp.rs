//! The packet an ICMP or ICMPv6 error quotes.
//!
//! An error carries, after its 8-byte ICMP header, the start of the packet
//! that caused it: its IP header and at least the first 8 bytes of what
//! followed (RFC 792; RFC 1812 §4.3.2.3 lets routers quote more; ICMPv6
//! quotes as much as fits in 1,280 bytes, RFC 4443 §2.4 (c)). Those 8 bytes
//! hold TCP's and UDP's ports, so the quote names the connection the error
//! belongs to. The quote is read with the same bounds discipline as the
//! packet itself, and never beyond the error's own IP packet.

use super::{
    header, ipv6_extensions, Headers, PacketBytes, ParseError, IPV4_MF, IPV4_MIN_HLEN, IPV4_OFFSET_MASK, IPV6_HLEN,
    UDP_HLEN,
};
use crate::{
    flow_key::{FlowKey, IP_V4, IP_V6},
    net::{ipproto, NetU16},
};

/// Length of an ICMP and an ICMPv6 header: type, code, checksum and four
/// bytes whose meaning depends on the type (RFC 792, RFC 4443 §2.1). The
/// quoted packet follows it.
pub const ICMP_HLEN: usize = 8;

/// Bytes of the quoted upper-layer header an error must hold for its ports
/// to count: the first 64 bits of the original datagram's data (RFC 792).
const QUOTED_L4_LEN: usize = UDP_HLEN;

/// ICMPv4 error types (RFC 792): destination unreachable (code 4 is
/// fragmentation needed, RFC 1191), time exceeded, parameter problem.
mod icmpv4_type {
    pub const DEST_UNREACHABLE: u8 = 3;
    pub const TIME_EXCEEDED: u8 = 11;
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// ICMPv6 error types (RFC 4443 §3): destination unreachable, packet too
/// big, time exceeded, parameter problem.
mod icmpv6_type {
    pub const DEST_UNREACHABLE: u8 = 1;
    pub const PARAMETER_PROBLEM: u8 = 4;
}

/// The packet an ICMP error quotes. Offsets are in bytes from the start of
/// the frame, like those of [`Headers`]. The quote ends at the error's own
/// `Headers::l3_end`; the quoted packet's length fields (IPv4 Total Length,
/// IPv6 Payload Length, UDP length) describe the original packet, not the
/// quote, and are not checked. Neither are its checksums. Whoever rewrites
/// the quote must also fix the error's own checksum, at
/// `Headers::upper_offset + 2` (ICMPv6's covers a pseudo-header as well,
/// RFC 4443 §2.3).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct QuotedPacket {
    /// The quoted packet's flow key as that packet reads: the source is its
    /// original sender (for an error about a reply VIP → client, the VIP).
    /// Ports as [`super::parse_frame`] would give them for that packet: zero
    /// for protocols without ports and for fragments. The error travels the
    /// other way: [`FlowKey::reversed`] is the key of the connection's
    /// packets going the error's way.
    pub key: FlowKey,
    /// Offset of the quoted IP header: the error's `Headers::upper_offset`
    /// (its ICMP header) plus [`ICMP_HLEN`].
    pub l3_offset: usize,
    /// Offset of the quoted TCP/UDP header, past the quoted IPv4 options or
    /// IPv6 extension headers; the quote holds at least its first 8 bytes
    /// (ports; then UDP's length and checksum, or TCP's sequence number;
    /// TCP's checksum may lie beyond the quote). 0 when the key has no ports.
    pub l4_offset: usize,
}

impl QuotedPacket {
    /// True if the key carries the quoted packet's ports.
    #[inline(always)]
    pub fn has_ports(&self) -> bool {
        self.l4_offset != 0
    }
}

/// The packet quoted by the ICMP or ICMPv6 error `h` describes, read from
/// `p` (the frame `h` was parsed from).
///
/// - `Ok(None)`: not an ICMP error: another protocol, an ICMP message of
///   another type (echo request and reply, ...), ICMP over the other IP
///   version, or a fragment (its fragments must hash alike, and later ones
///   carry no header).
/// - `Ok(Some(_))`: an ICMPv4 error of type 3, 11 or 12, or an ICMPv6 error
///   of type 1 to 4, whose quote holds a whole IP header of the same version
///   (IPv4 options and IPv6 extension headers included) and, for an
///   unfragmented TCP or UDP packet, the first 8 bytes of its header.
/// - `Err(Truncated)`: the ICMP header, the quoted IP header or the quoted
///   ports end beyond the error's IP packet or the frame.
/// - `Err(BadHeader)`: the quote is no IP header of the error's version
///   (version, IHL < 5), or its extension chain is too long or crosses the
///   end of the quote.
#[inline(always)]
pub fn icmp_error_key<P: PacketBytes + ?Sized>(p: &P, h: &Headers) -> Result<Option<QuotedPacket>, ParseError> {
    let v4 = match (h.key.ip_version, h.key.protocol) {
        (IP_V4, ipproto::ICMP) => true,
        (IP_V6, ipproto::ICMPV6) => false,
        _ => return Ok(None),
    };
    if h.fragment {
        return Ok(None);
    }
    let quote = h.upper_offset + ICMP_HLEN;
    if quote > h.l3_end {
        return Err(ParseError::Truncated);
    }
    let icmp: [u8; ICMP_HLEN] = header(p, h.upper_offset)?;
    let error = if v4 {
        matches!(
            icmp[0],
            icmpv4_type::DEST_UNREACHABLE | icmpv4_type::TIME_EXCEEDED | icmpv4_type::PARAMETER_PROBLEM
        )
    } else {
        (icmpv6_type::DEST_UNREACHABLE..=icmpv6_type::PARAMETER_PROBLEM).contains(&icmp[0])
    };
    if !error {
        return Ok(None);
    }
    let quoted = if v4 {
        quoted_ipv4(p, quote, h.l3_end)
    } else {
        quoted_ipv6(p, quote, h.l3_end)
    };
    quoted.map(Some)
}

/// The IPv4 packet quoted at `l3`; the quote ends at `end`.
#[inline(always)]
fn quoted_ipv4<P: PacketBytes + ?Sized>(p: &P, l3: usize, end: usize) -> Result<QuotedPacket, ParseError> {
    let h: [u8; IPV4_MIN_HLEN] = header(p, l3)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::BadHeader);
    }
    let header_len = ((h[0] & 0x0f) as usize) * 4;
    if header_len < IPV4_MIN_HLEN {
        return Err(ParseError::BadHeader);
    }
    let l4 = l3 + header_len;
    if l4 > end {
        return Err(ParseError::Truncated);
    }
    let fragment = u16::from_be_bytes([h[6], h[7]]) & (IPV4_MF | IPV4_OFFSET_MASK) != 0;
    let key = FlowKey {
        src_addr: [u32::from_ne_bytes([h[12], h[13], h[14], h[15]]), 0, 0, 0],
        dst_addr: [u32::from_ne_bytes([h[16], h[17], h[18], h[19]]), 0, 0, 0],
        protocol: h[9],
        ip_version: IP_V4,
        ..FlowKey::default()
    };
    quoted_ports(p, key, l3, l4, end, fragment)
}

/// The IPv6 packet quoted at `l3`; the quote ends at `end`.
#[inline(always)]
fn quoted_ipv6<P: PacketBytes + ?Sized>(p: &P, l3: usize, end: usize) -> Result<QuotedPacket, ParseError> {
    let fixed: [u8; 8] = header(p, l3)?;
    let Some(addrs) = p.load::<[u32; 8]>(l3 + 8) else {
        return Err(ParseError::Truncated);
    };
    if fixed[0] >> 4 != 6 {
        return Err(ParseError::BadHeader);
    }
    if l3 + IPV6_HLEN > end {
        return Err(ParseError::Truncated);
    }
    let chain = ipv6_extensions(p, fixed[6], l3 + IPV6_HLEN, end)?;
    let key = FlowKey {
        src_addr: [addrs[0], addrs[1], addrs[2], addrs[3]],
        dst_addr: [addrs[4], addrs[5], addrs[6], addrs[7]],
        protocol: chain.next,
        ip_version: IP_V6,
        ..FlowKey::default()
    };
    quoted_ports(p, key, l3, chain.end, end, chain.fragment)
}

/// Adds the ports of a quoted unfragmented TCP or UDP packet to `key`.
#[inline(always)]
fn quoted_ports<P: PacketBytes + ?Sized>(
    p: &P,
    mut key: FlowKey,
    l3: usize,
    l4: usize,
    end: usize,
    fragment: bool,
) -> Result<QuotedPacket, ParseError> {
    let mut quoted = QuotedPacket {
        key,
        l3_offset: l3,
        l4_offset: 0,
    };
    if fragment || !matches!(key.protocol, ipproto::TCP | ipproto::UDP) {
        return Ok(quoted);
    }
    if l4 + QUOTED_L4_LEN > end {
        return Err(ParseError::Truncated);
    }
    let l4_header: [u8; QUOTED_L4_LEN] = header(p, l4)?;
    key.src_port = NetU16(u16::from_ne_bytes([l4_header[0], l4_header[1]]));
    key.dst_port = NetU16(u16::from_ne_bytes([l4_header[2], l4_header[3]]));
    quoted.key = key;
    quoted.l4_offset = l4;
    Ok(quoted)
}
