//! Bounds-checked header parsing shared by the XDP programs and userspace.
//!
//! The parser is generic over [`PacketBytes`]: in the kernel it reads through
//! `data`/`data_end` pointers (every read is checked against `data_end`, as the
//! verifier demands), in userspace through a byte slice. Every offset it hands
//! out is bounded by [`MAX_PARSE_OFFSET`], which keeps the verifier's range
//! tracking finite.
//!
//! [`parse_frame`] reads a frame down to its ports; [`icmp_error_key`] (module
//! `icmp`) reads the packet an ICMP or ICMPv6 error quotes, so that errors can
//! be sent where their connection goes.

mod icmp;
#[cfg(test)]
mod tests;

/// The bound of [`PacketBytes::load`], re-exported so implementors name the same trait.
pub use bytemuck::AnyBitPattern;
pub use icmp::{icmp_error_key, QuotedPacket, ICMP_HLEN};

use crate::{
    flow_key::{FlowKey, IP_V4, IP_V6},
    net::{ethertype, ipproto, NetU16},
};

/// No header the parser reads starts beyond this offset.
pub const MAX_PARSE_OFFSET: usize = 1 << 12;
/// VLAN tags (802.1Q / 802.1ad) skipped; a frame with more is
/// [`ParseError::VlanDepth`].
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers skipped before the packet counts as malformed.
pub const MAX_IPV6_EXT_HEADERS: usize = 6;

/// Length of an Ethernet header without tags.
pub const ETH_HLEN: usize = 14;
/// Length of one 802.1Q / 802.1ad tag.
pub const VLAN_HLEN: usize = 4;
pub(crate) const IPV4_MIN_HLEN: usize = 20;
/// Length of the IPv6 header without extension headers (RFC 8200 §3).
pub const IPV6_HLEN: usize = 40;
/// Every IPv6 extension header is at least this long (RFC 8200 §4: lengths
/// count 8-octet units beyond the first 8; AH, RFC 4302 §2.2, 4-octet units
/// beyond the first 8); the fragment header is exactly this long.
const IPV6_EXT_MIN_HLEN: usize = 8;
/// Length of the IPv6 fragment header (RFC 8200 §4.5).
pub const IPV6_FRAGMENT_HLEN: usize = IPV6_EXT_MIN_HLEN;
pub(crate) const UDP_HLEN: usize = 8;
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
    ///
    /// `T` is plain old data ([`AnyBitPattern`]: integers and arrays of them),
    /// so any bytes a peer sends are a valid `T`; a `bool` or a reference
    /// cannot be read this way.
    fn load<T: AnyBitPattern>(&self, offset: usize) -> Option<T>;
}

impl PacketBytes for [u8] {
    #[inline]
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    #[inline]
    fn load<T: AnyBitPattern>(&self, offset: usize) -> Option<T> {
        let end = offset.checked_add(core::mem::size_of::<T>())?;
        self.get(offset..end).map(bytemuck::pod_read_unaligned)
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
    /// Not IPv4 or IPv6 (ARP, LLDP, ...).
    NotIp,
    /// More than [`MAX_VLAN_TAGS`] VLAN tags: the EtherType after the last
    /// tag skipped is a VLAN TPID again (0x8100 or 0x88a8).
    VlanDepth,
}

/// Where the Ethernet header ends and what follows it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct L2 {
    /// EtherType after any VLAN tags, host order.
    pub ethertype: u16,
    /// Offset of the header that follows the Ethernet header and its tags.
    pub l3_offset: usize,
}

/// The result of parsing an IP packet. Offsets are in bytes from the start
/// of the frame (the first byte of the destination MAC).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Headers {
    /// The flow key (ports zero for port-less protocols and fragments).
    pub key: FlowKey,
    /// Offset of the IP header.
    pub l3_offset: usize,
    /// Offset of the TCP/UDP header, or 0 when none was parsed (other
    /// protocols, fragments).
    pub l4_offset: usize,
    /// Offset of the upper-layer header (RFC 8200 §4 calls it so): just past
    /// the IPv4 header and its options, or past the IPv6 header and every
    /// extension header. Set for every packet, whatever its protocol: the
    /// ICMP header of an ICMP message, the TCP/UDP header (then equal to
    /// `l4_offset`), the start of a later fragment's data. It may equal
    /// `l3_end` (nothing follows the IP headers).
    pub upper_offset: usize,
    /// Offset just past the IP packet (frames may carry padding after it).
    pub l3_end: usize,
    /// TCP flags, 0 for other protocols.
    pub tcp_flags: u8,
    /// The packet is an IP fragment (first or later): IPv4 with MF set or a
    /// non-zero fragment offset, or IPv6 with a fragment header (an atomic
    /// fragment, RFC 6946, included).
    pub fragment: bool,
    /// What a fragment says about its datagram; all zero unless `fragment`.
    pub frag: FragmentInfo,
}

/// The fragmentation fields of an IP fragment, for the nodes (reassembly,
/// rewriting a first fragment). The edge never uses them: all fragments of
/// a datagram hash on addresses and protocol alone.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FragmentInfo {
    /// The datagram's identification, host order: IPv4's 16-bit
    /// Identification (RFC 791 §3.1) zero-extended, or the 32-bit
    /// Identification of the IPv6 fragment header (RFC 8200 §4.5).
    pub id: u32,
    /// Where this fragment's data starts in the original datagram, in bytes
    /// (the 13-bit Fragment Offset times 8): counted from the end of the
    /// IPv4 header (RFC 791 §3.1), or from the start of the IPv6 packet's
    /// Fragmentable Part (RFC 8200 §4.5). At most 65,528.
    pub offset: u16,
    /// More fragments follow (IPv4 MF flag, IPv6 M flag).
    pub more: bool,
    /// First fragment (`offset` 0) of TCP or UDP only: offset in the frame of
    /// its TCP/UDP header, where its ports are, when that header's fixed
    /// part (8 bytes for UDP; 20 for TCP, whose data offset is not checked)
    /// lies inside the frame and the IP packet; else 0. Never reflected in
    /// `Headers::l4_offset` or the key's ports: a fragment has no ports for
    /// hashing ([`Headers::has_ports`] is false).
    pub first_l4_offset: usize,
    /// IPv6: offset in the frame of the fragment header itself (RFC 8200
    /// §4.5; the last one, should a malformed chain hold several). 0 for IPv4.
    pub header_offset: usize,
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
pub(crate) fn header<P: PacketBytes + ?Sized, const N: usize>(p: &P, offset: usize) -> Result<[u8; N], ParseError> {
    p.load::<[u8; N]>(offset).ok_or(ParseError::Truncated)
}

/// Parses the Ethernet header and up to [`MAX_VLAN_TAGS`] VLAN tags. A tag's
/// TCI (PCP, DEI, VID; IEEE 802.1Q §9.6) is never read: a VID-0 priority
/// tag is skipped like any other, and no tag bit reaches the flow key.
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
        return Err(ParseError::VlanDepth);
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
    // Flags (reserved, DF, MF) and the fragment offset in 8-byte units.
    let flags_offset = u16::from_be_bytes([h[6], h[7]]);
    let fragment = flags_offset & (IPV4_MF | IPV4_OFFSET_MASK) != 0;
    let frag = if fragment {
        FragmentInfo {
            id: u16::from_be_bytes([h[4], h[5]]) as u32,
            offset: (flags_offset & IPV4_OFFSET_MASK) << 3,
            more: flags_offset & IPV4_MF != 0,
            ..FragmentInfo::default()
        }
    } else {
        FragmentInfo::default()
    };
    let key = FlowKey {
        src_addr: [u32::from_ne_bytes([h[12], h[13], h[14], h[15]]), 0, 0, 0],
        dst_addr: [u32::from_ne_bytes([h[16], h[17], h[18], h[19]]), 0, 0, 0],
        protocol: h[9],
        ip_version: IP_V4,
        ..FlowKey::default()
    };
    finish_l4(p, key, l3, l3 + header_len, l3_end, fragment, frag)
}

/// IPv4 more-fragments flag in the flags/offset word (RFC 791 §3.1).
pub(crate) const IPV4_MF: u16 = 0x2000;
/// IPv4 fragment offset (8-byte units) in the flags/offset word.
pub(crate) const IPV4_OFFSET_MASK: u16 = 0x1fff;

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
    let chain = ipv6_extensions(p, fixed[6], l3 + IPV6_HLEN, l3_end)?;
    let key = FlowKey {
        src_addr: [addrs[0], addrs[1], addrs[2], addrs[3]],
        dst_addr: [addrs[4], addrs[5], addrs[6], addrs[7]],
        protocol: chain.next,
        ip_version: IP_V6,
        ..FlowKey::default()
    };
    finish_l4(p, key, l3, chain.end, l3_end, chain.fragment, chain.frag)
}

/// An IPv6 extension header chain, walked.
#[derive(Clone, Copy)]
pub(crate) struct Ipv6Chain {
    /// The upper-layer protocol (the last Next Header).
    pub(crate) next: u8,
    /// Offset just past the last extension header.
    pub(crate) end: usize,
    /// A fragment header was seen.
    pub(crate) fragment: bool,
    /// What the fragment header said (zero without one).
    pub(crate) frag: FragmentInfo,
}

/// Walks up to [`MAX_IPV6_EXT_HEADERS`] extension headers starting at
/// `offset` with Next Header `next`; no header may end beyond `end` (the IP
/// packet's end, or the end of an ICMPv6 error's quote). More headers than
/// that, or one that crosses `end`, is [`ParseError::BadHeader`]. Each
/// header is read whole-width (8 bytes, the shortest there is).
#[inline(always)]
pub(crate) fn ipv6_extensions<P: PacketBytes + ?Sized>(
    p: &P,
    mut next: u8,
    mut offset: usize,
    end: usize,
) -> Result<Ipv6Chain, ParseError> {
    let mut fragment = false;
    let mut frag = FragmentInfo::default();
    let mut skipped = 0;
    while skipped < MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next) {
            break;
        }
        // Every extension header starts with (next header, length).
        let ext: [u8; IPV6_EXT_MIN_HLEN] = header(p, offset)?;
        let len = match next {
            ipproto::AH => (ext[1] as usize + 2) * 4,
            ipproto::FRAGMENT => {
                // Next Header, Reserved, Fragment Offset (13 bits, 8-byte
                // units) + Res (2) + M (1), Identification (RFC 8200 §4.5).
                let offset_m = u16::from_be_bytes([ext[2], ext[3]]);
                fragment = true;
                frag = FragmentInfo {
                    id: u32::from_be_bytes([ext[4], ext[5], ext[6], ext[7]]),
                    offset: offset_m & !0x7,
                    more: offset_m & 1 != 0,
                    first_l4_offset: 0,
                    header_offset: offset,
                };
                IPV6_EXT_MIN_HLEN
            }
            _ => (ext[1] as usize + 1) * 8,
        };
        next = ext[0];
        offset += len;
        if offset > end || offset > MAX_PARSE_OFFSET {
            return Err(ParseError::BadHeader);
        }
        skipped += 1;
    }
    if is_ipv6_extension(next) {
        return Err(ParseError::BadHeader);
    }
    Ok(Ipv6Chain {
        next,
        end: offset,
        fragment,
        frag,
    })
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
    mut frag: FragmentInfo,
) -> Result<Headers, ParseError> {
    let mut headers = Headers {
        key,
        l3_offset: l3,
        l4_offset: 0,
        upper_offset: l4,
        l3_end,
        tcp_flags: 0,
        fragment,
        frag,
    };
    if fragment {
        if frag.offset == 0 {
            let fixed = match key.protocol {
                ipproto::UDP => UDP_HLEN,
                ipproto::TCP => TCP_MIN_HLEN,
                _ => return Ok(headers),
            };
            // l3_end lies inside the frame: both parsers checked it.
            if l4 + fixed <= l3_end {
                frag.first_l4_offset = l4;
                headers.frag = frag;
            }
        }
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
