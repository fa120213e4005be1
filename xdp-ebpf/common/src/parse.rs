//! Bounds-checked header parsing shared by the XDP programs and userspace.
//!
//! The parser is generic over [`PacketBytes`]: in the kernel it reads through
//! `data`/`data_end` pointers (every read is checked against `data_end`, as the
//! verifier demands), in userspace through a byte slice. Every offset it hands
//! out is bounded by [`MAX_PARSE_OFFSET`], which keeps the verifier's range
//! tracking finite.

use crate::{
    flow_key::{FlowKey, IP_V4, IP_V6},
    net::{ethertype, ipproto, NetU16},
};

/// No header the parser reads starts beyond this offset.
pub const MAX_PARSE_OFFSET: usize = 1 << 12;
/// VLAN tags (802.1Q / 802.1ad) skipped before giving up.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers skipped before the packet counts as malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Length of an Ethernet header without tags.
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: usize = 4;
const IPV4_MIN_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
const TCP_MIN_HLEN: usize = 20;

/// Read access to a frame. Implementations must return `None` for any read
/// that would cross the end of the frame.
pub trait PacketBytes {
    /// Frame length in bytes.
    fn len(&self) -> usize;
    /// True for an empty frame.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads a `T` at `offset` without alignment requirements.
    fn load<T: Copy>(&self, offset: usize) -> Option<T>;
}

impl PacketBytes for [u8] {
    #[inline]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    #[inline]
    fn load<T: Copy>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        let bytes = self.get(offset..end)?;
        // SAFETY: `bytes` is exactly `size_of::<T>()` readable bytes; `T: Copy` is
        // only instantiated with plain integer/array header types, valid for any bits.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
    }
}

/// Why a frame was not parsed into a flow.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ParseError {
    /// The frame ends inside a header.
    Truncated,
    /// A header field is impossible (bad version, IHL < 5, lengths that do not
    /// fit the frame, too many extension headers, TCP data offset < 5, ...).
    BadHeader,
    /// Not IPv4 or IPv6 (ARP, LLDP, more VLAN tags than supported, ...).
    NotIp,
}

/// Where the Ethernet header ends and what follows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct L2 {
    /// EtherType after any VLAN tags, host order.
    pub ethertype: u16,
    /// Offset of the header that follows the Ethernet header and its tags.
    pub l3_offset: usize,
}

/// The result of parsing an IP packet.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Headers {
    /// The flow key (ports zero for port-less protocols and fragments).
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the TCP/UDP header, or 0 when none was parsed.
    pub l4_offset: usize,
    /// Offset just past the IP packet (frames may carry padding after it).
    pub l3_end: usize,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    /// The packet is an IP fragment (first or later).
    pub fragment: bool,
}

impl Headers {
    /// True if the key carries ports (a TCP or UDP packet that is not a fragment).
    #[inline(always)]
    pub fn has_ports(&self) -> bool {
        self.l4_offset != 0
    }
}

/// TCP flag bits (byte 13 of the TCP header).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// ACK.
    pub const ACK: u8 = 0x10;
}

#[inline(always)]
fn be16<P: PacketBytes + ?Sized>(p: &P, offset: usize) -> Result<u16, ParseError> {
    p.load::<u16>(offset).map(u16::from_be).ok_or(ParseError::Truncated)
}

/// Loads a header as a byte array. Whole-header loads (never single bytes)
/// also keep the verifier able to follow every bounds check: LLVM turns a
/// one-byte check `ptr + 1 > end` into `ptr >= end`, from which the verifier
/// learns no range (kernel/bpf/verifier.c, find_good_pkt_pointers).
#[inline(always)]
fn header<P: PacketBytes + ?Sized, const N: usize>(p: &P, offset: usize) -> Result<[u8; N], ParseError> {
    p.load::<[u8; N]>(offset).ok_or(ParseError::Truncated)
}

/// Parses the Ethernet header and up to [`MAX_VLAN_TAGS`] VLAN tags.
#[inline(always)]
pub fn parse_ethernet<P: PacketBytes + ?Sized>(p: &P) -> Result<L2, ParseError> {
    let mut ethertype = be16(p, 12)?;
    let mut offset = ETH_HLEN;
    let mut tags = 0;
    while tags < MAX_VLAN_TAGS {
        if ethertype != ethertype::VLAN && ethertype != ethertype::QINQ {
            break;
        }
        ethertype = be16(p, offset + 2)?;
        offset += VLAN_HLEN;
        tags += 1;
    }
    if ethertype == ethertype::VLAN || ethertype == ethertype::QINQ {
        return Err(ParseError::NotIp);
    }
    Ok(L2 {
        ethertype,
        l3_offset: offset,
    })
}

/// Parses the IP packet that starts at `l2.l3_offset`.
#[inline(always)]
pub fn parse_ip<P: PacketBytes + ?Sized>(p: &P, l2: L2) -> Result<Headers, ParseError> {
    match l2.ethertype {
        ethertype::IPV4 => parse_ipv4(p, l2.l3_offset),
        ethertype::IPV6 => parse_ipv6(p, l2.l3_offset),
        _ => Err(ParseError::NotIp),
    }
}

/// Parses a whole Ethernet frame down to the transport ports.
#[inline(always)]
pub fn parse_frame<P: PacketBytes + ?Sized>(p: &P) -> Result<Headers, ParseError> {
    let l2 = parse_ethernet(p)?;
    parse_ip(p, l2)
}

#[inline(always)]
fn parse_ipv4<P: PacketBytes + ?Sized>(p: &P, l3: usize) -> Result<Headers, ParseError> {
    let h: [u8; IPV4_MIN_HLEN] = header(p, l3)?;
    if h[0] >> 4 != 4 {
        return Err(ParseError::BadHeader);
    }
    let header_len = ((h[0] & 0x0f) as usize) * 4;
    if header_len < IPV4_MIN_HLEN {
        return Err(ParseError::BadHeader);
    }
    let total_len = u16::from_be_bytes([h[2], h[3]]) as usize;
    let l3_end = l3 + total_len;
    if total_len < header_len || l3_end > p.len() {
        return Err(ParseError::BadHeader);
    }
    // More-fragments flag or a non-zero fragment offset.
    let fragment = u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0;
    let key = FlowKey {
        src_addr: [u32::from_ne_bytes([h[12], h[13], h[14], h[15]]), 0, 0, 0],
        dst_addr: [u32::from_ne_bytes([h[16], h[17], h[18], h[19]]), 0, 0, 0],
        protocol: h[9],
        ip_version: IP_V4,
        ..FlowKey::default()
    };
    finish_l4(p, key, l3, l3 + header_len, l3_end, fragment)
}

#[inline(always)]
fn parse_ipv6<P: PacketBytes + ?Sized>(p: &P, l3: usize) -> Result<Headers, ParseError> {
    let fixed: [u8; 8] = header(p, l3)?;
    let Some(addrs) = p.load::<[u32; 8]>(l3 + 8) else {
        return Err(ParseError::Truncated);
    };
    if fixed[0] >> 4 != 6 {
        return Err(ParseError::BadHeader);
    }
    let payload_len = u16::from_be_bytes([fixed[4], fixed[5]]) as usize;
    let l3_end = l3 + IPV6_HLEN + payload_len;
    if l3_end > p.len() {
        return Err(ParseError::BadHeader);
    }
    let mut next = fixed[6];
    let mut offset = l3 + IPV6_HLEN;
    let mut fragment = false;
    let mut skipped = 0;
    while skipped < MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next) {
            break;
        }
        // Every extension header starts with (next header, length).
        let [following, units]: [u8; 2] = header(p, offset)?;
        let len = match next {
            ipproto::AH => (units as usize + 2) * 4,
            ipproto::FRAGMENT => {
                fragment = true;
                8
            }
            _ => (units as usize + 1) * 8,
        };
        next = following;
        offset += len;
        if offset > l3_end || offset > MAX_PARSE_OFFSET {
            return Err(ParseError::BadHeader);
        }
        skipped += 1;
    }
    if is_ipv6_extension(next) {
        return Err(ParseError::BadHeader);
    }
    let key = FlowKey {
        src_addr: [addrs[0], addrs[1], addrs[2], addrs[3]],
        dst_addr: [addrs[4], addrs[5], addrs[6], addrs[7]],
        protocol: next,
        ip_version: IP_V6,
        ..FlowKey::default()
    };
    finish_l4(p, key, l3, offset, l3_end, fragment)
}

#[inline(always)]
const fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        ipproto::HOPOPTS | ipproto::ROUTING | ipproto::DSTOPTS | ipproto::AH | ipproto::FRAGMENT
    )
}

#[inline(always)]
fn finish_l4<P: PacketBytes + ?Sized>(
    p: &P,
    mut key: FlowKey,
    l3: usize,
    l4: usize,
    l3_end: usize,
    fragment: bool,
) -> Result<Headers, ParseError> {
    let mut headers = Headers {
        key,
        l3_offset: l3,
        l4_offset: 0,
        l3_end,
        tcp_flags: 0,
        fragment,
    };
    if fragment {
        return Ok(headers);
    }
    match key.protocol {
        ipproto::UDP => {
            let Some(udp) = p.load::<[u16; 4]>(l4) else {
                return Err(ParseError::Truncated);
            };
            let udp_len = u16::from_be(udp[2]) as usize;
            if udp_len < UDP_HLEN || l4 + udp_len > l3_end {
                return Err(ParseError::BadHeader);
            }
            key.src_port = NetU16(udp[0]);
            key.dst_port = NetU16(udp[1]);
        }
        ipproto::TCP => {
            let tcp: [u8; TCP_MIN_HLEN] = header(p, l4)?;
            let data_offset = ((tcp[12] >> 4) as usize) * 4;
            if data_offset < TCP_MIN_HLEN || l4 + data_offset > l3_end {
                return Err(ParseError::BadHeader);
            }
            key.src_port = NetU16(u16::from_ne_bytes([tcp[0], tcp[1]]));
            key.dst_port = NetU16(u16::from_ne_bytes([tcp[2], tcp[3]]));
            headers.tcp_flags = tcp[13];
        }
        _ => return Ok(headers),
    }
    headers.key = key;
    headers.l4_offset = l4;
    Ok(headers)
}
