//! Header rewrites (NAT) on a frame in place, with checksum updates.
//!
//! # Which checksum function to use
//! * [`rewrite_destination`], [`rewrite_source`] and [`apply`] update the
//!   IPv4 header checksum and the TCP/UDP checksum **incrementally** (RFC 1624
//!   eqn. 3, `HC' = ~(~HC + ~m + m')`, over the changed 16-bit words,
//!   including the address words of the pseudo-header, RFC 9293 §3.1 and
//!   RFC 768). Constant work whatever the packet size. They are exact when
//!   the checksum in the frame is complete, as it is on anything that came
//!   off a wire.
//! * [`recompute_checksums`] computes both from scratch (RFC 1071), in time
//!   linear in the packet. Use it after rewriting a frame whose L4 checksum
//!   may be *partial*: a frame sent by a local stack through a veth or tap
//!   with TX checksum offload (`CHECKSUM_PARTIAL`) carries only the
//!   pseudo-header sum, which the incremental update would turn into
//!   garbage. Also use it after changing the payload.
//!
//! UDP is special (RFC 768): over IPv4 a checksum of 0 means "none" and stays
//! 0; a computed 0 is sent as 0xffff.
//!
//! Every function checks every offset against the frame and returns a
//! [`RewriteError`] instead of panicking, whatever the [`Headers`] say. After a
//! rewrite the caller's `Headers::key` describes the old packet; the offsets
//! stay valid.
//!
//! Not handled: an IPv6 packet with a Routing header puts its *final*
//! destination into the pseudo-header (RFC 8200 §8.1), so rewriting its
//! destination leaves a wrong L4 checksum.

use crate::{
    flow::{Rewrite, Side},
    io::{FrameBuf, FrameError},
};
use handoff_common::{
    flow_key::{FlowKey, IP_V4, IP_V6},
    net::{ethertype, ipproto},
    parse::{Headers, QuotedPacket, ETH_HLEN, VLAN_HLEN},
};
use std::net::IpAddr;

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;
const UDP_HLEN: usize = 8;
const IPV4_CHECKSUM: usize = 10;
const IPV4_TTL: usize = 8;
const IPV6_HOP_LIMIT: usize = 7;
const TCP_CHECKSUM: usize = 16;
const UDP_CHECKSUM: usize = 6;
const UDP_LENGTH: usize = 4;

/// Why a frame was not rewritten. The frame is unchanged when one is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The frame ends before a byte the rewrite needs.
    #[error("frame of {len} bytes is too short: {needed} needed")]
    Truncated {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        len: usize,
    },
    /// The headers do not describe this frame (wrong IP version, offsets
    /// out of order, lengths that do not fit).
    #[error("headers do not match the frame: {reason}")]
    Mismatch {
        /// What does not match.
        reason: &'static str,
    },
    /// The new address is of the other family than the packet.
    #[error("cannot put {address} into an IPv{ip_version} packet")]
    FamilyMismatch {
        /// The new address.
        address: IpAddr,
        /// The packet's IP version.
        ip_version: u8,
    },
    /// Not TCP or UDP, or a fragment: there are no ports (and no L4 checksum
    /// to keep right).
    #[error("protocol {protocol} packet without ports")]
    NoPorts {
        /// The IP protocol.
        protocol: u8,
    },
}

/// Where the fields of a TCP/UDP-over-IP packet are, all bounds-checked.
#[derive(Clone, Copy, Debug)]
struct Layout {
    l3: usize,
    l4: usize,
    /// End of the L4 segment the checksum covers.
    l4_end: usize,
    ipv4: bool,
    udp: bool,
    l4_checksum: usize,
}

impl Layout {
    fn of(frame: &[u8], headers: &Headers) -> Result<Self, RewriteError> {
        let len = frame.len();
        let (l3, l4, l3_end) = (headers.l3_offset, headers.l4_offset, headers.l3_end);
        if l3_end > len {
            return Err(RewriteError::Truncated { needed: l3_end, len });
        }
        let version = frame.get(l3).map(|b| b >> 4).ok_or(RewriteError::Truncated {
            needed: l3.saturating_add(1),
            len,
        })?;
        let ipv4 = match (headers.key.ip_version, version) {
            (IP_V4, 4) => true,
            (IP_V6, 6) => false,
            _ => return Err(RewriteError::Mismatch { reason: "IP version" }),
        };
        let protocol = headers.key.protocol;
        let (udp, l4_min, checksum) = match protocol {
            _ if l4 == 0 => return Err(RewriteError::NoPorts { protocol }),
            ipproto::TCP => (false, TCP_HLEN, TCP_CHECKSUM),
            ipproto::UDP => (true, UDP_HLEN, UDP_CHECKSUM),
            _ => return Err(RewriteError::NoPorts { protocol }),
        };
        let ip_min = if ipv4 { IPV4_HLEN } else { IPV6_HLEN };
        if l4 < l3.saturating_add(ip_min) {
            return Err(RewriteError::Mismatch {
                reason: "transport header inside the IP header",
            });
        }
        let l4_end = if udp {
            let length = read_u16(frame, l4.saturating_add(UDP_LENGTH))? as usize;
            if length < UDP_HLEN {
                return Err(RewriteError::Mismatch {
                    reason: "UDP length below 8",
                });
            }
            l4.saturating_add(length)
        } else {
            l3_end
        };
        if l4.saturating_add(l4_min) > l4_end || l4_end > l3_end {
            return Err(RewriteError::Mismatch {
                reason: "transport header beyond the IP packet",
            });
        }
        Ok(Self {
            l3,
            l4,
            l4_end,
            ipv4,
            udp,
            l4_checksum: l4 + checksum,
        })
    }

    /// Offset of the source or destination address.
    fn address(&self, side: Side) -> usize {
        self.l3 + address_offset(self.ipv4, side)
    }

    fn address_len(&self) -> usize {
        if self.ipv4 {
            4
        } else {
            16
        }
    }

    /// Offset of the source or destination port.
    fn port(&self, side: Side) -> usize {
        self.l4
            + match side {
                Side::Source => 0,
                Side::Destination => 2,
            }
    }
}

/// Where the source or destination address starts in an IPv4 or IPv6
/// header (RFC 791 §3.1, RFC 8200 §3).
fn address_offset(ipv4: bool, side: Side) -> usize {
    match (ipv4, side) {
        (true, Side::Source) => 12,
        (true, Side::Destination) => 16,
        (false, Side::Source) => 8,
        (false, Side::Destination) => 24,
    }
}

/// `address` as the packet's header holds it: 16 bytes of which the last
/// 4 (IPv4) or all 16 (IPv6) count, and that count.
fn wire_address(address: IpAddr, headers: &Headers) -> Result<([u8; 16], usize), RewriteError> {
    match (address, headers.key.ip_version) {
        (IpAddr::V4(a), IP_V4) => Ok((a.to_ipv6_mapped().octets(), 4)),
        (IpAddr::V6(a), IP_V6) => Ok((a.octets(), 16)),
        _ => Err(RewriteError::FamilyMismatch {
            address,
            ip_version: headers.key.ip_version,
        }),
    }
}

pub(crate) fn read_u16(frame: &[u8], at: usize) -> Result<u16, RewriteError> {
    frame
        .get(at..at.saturating_add(2))
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(RewriteError::Truncated {
            needed: at.saturating_add(2),
            len: frame.len(),
        })
}

pub(crate) fn write_u16(frame: &mut [u8], at: usize, value: u16) -> Result<(), RewriteError> {
    let len = frame.len();
    frame
        .get_mut(at..at.saturating_add(2))
        .ok_or(RewriteError::Truncated {
            needed: at.saturating_add(2),
            len,
        })?
        .copy_from_slice(&value.to_be_bytes());
    Ok(())
}

/// Folds a one's complement sum to 16 bits (end-around carry).
pub(crate) fn fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// The one's complement sum of `bytes` as big-endian 16-bit words, an odd
/// last byte padded with zero (RFC 1071), added to `sum`.
pub(crate) fn sum_words(sum: u64, bytes: &[u8]) -> u64 {
    let mut words = bytes.chunks_exact(2);
    let mut sum = words
        .by_ref()
        .fold(sum, |s, w| s + u16::from_be_bytes([w[0], w[1]]) as u64);
    if let [last] = words.remainder() {
        sum += (*last as u64) << 8;
    }
    sum
}

/// `~m + m'` over the changed words of a field (RFC 1624 eqn. 3).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ChecksumDelta(u64);

impl ChecksumDelta {
    /// Adds the change of a field from `old` to `new` (equal even lengths).
    pub(crate) fn replace(&mut self, old: &[u8], new: &[u8]) {
        for (o, n) in old.chunks_exact(2).zip(new.chunks_exact(2)) {
            self.0 += !u16::from_be_bytes([o[0], o[1]]) as u64 + u16::from_be_bytes([n[0], n[1]]) as u64;
        }
    }

    /// `HC' = ~(~HC + ~m + m')`.
    pub(crate) fn apply(self, checksum: u16) -> u16 {
        !fold(!checksum as u64 + self.0)
    }
}

/// Replaces the destination address and port (DNAT).
pub fn rewrite_destination(
    frame: &mut [u8],
    headers: &Headers,
    address: IpAddr,
    port: u16,
) -> Result<(), RewriteError> {
    rewrite_endpoint(frame, headers, Side::Destination, address, port)
}

/// Replaces the source address and port (SNAT, or un-DNAT of a reply).
pub fn rewrite_source(frame: &mut [u8], headers: &Headers, address: IpAddr, port: u16) -> Result<(), RewriteError> {
    rewrite_endpoint(frame, headers, Side::Source, address, port)
}

/// Applies a flow's [`Rewrite`] (the MACs are separate: [`set_macs`]).
pub fn apply(frame: &mut [u8], headers: &Headers, rewrite: &Rewrite) -> Result<(), RewriteError> {
    rewrite_endpoint(frame, headers, rewrite.side, rewrite.address, rewrite.port)
}

fn rewrite_endpoint(
    frame: &mut [u8],
    headers: &Headers,
    side: Side,
    address: IpAddr,
    port: u16,
) -> Result<(), RewriteError> {
    let layout = Layout::of(frame, headers)?;
    // Layout::of checked that the header's version is the key's.
    let (octets, address_len) = wire_address(address, headers)?;
    let new_address = &octets[16 - address_len..];
    let at = layout.address(side);
    let old_address = frame.get(at..at + new_address.len()).ok_or(RewriteError::Truncated {
        needed: at + new_address.len(),
        len: frame.len(),
    })?;
    let mut address_delta = ChecksumDelta::default();
    address_delta.replace(old_address, new_address);
    let port_at = layout.port(side);
    let old_port = read_u16(frame, port_at)?;
    let mut l4_delta = address_delta;
    l4_delta.replace(&old_port.to_be_bytes(), &port.to_be_bytes());

    // Everything below is in bounds (checked by Layout::of and the reads
    // above), so the frame is either fully rewritten or left as it was.
    if layout.ipv4 {
        let at = layout.l3 + IPV4_CHECKSUM;
        write_u16(frame, at, address_delta.apply(read_u16(frame, at)?))?;
    }
    let old_checksum = read_u16(frame, layout.l4_checksum)?;
    if !(layout.udp && layout.ipv4 && old_checksum == 0) {
        let checksum = l4_delta.apply(old_checksum);
        let checksum = if layout.udp && checksum == 0 { 0xffff } else { checksum };
        write_u16(frame, layout.l4_checksum, checksum)?;
    }
    frame[at..at + new_address.len()].copy_from_slice(new_address);
    write_u16(frame, port_at, port)
}

/// Applies a connection's [`Rewrite`] to an ICMP or ICMPv6 error about it
/// (RFC 5508 §4.2 describes the same for NAT devices): `flow_key` is the
/// connection's key in the direction the error travels, the reverse of the
/// quoted packet's.
///
/// * A destination rewrite (DNAT: the VIP becomes the backend) changes the
///   error's destination if it is the flow key's destination, and the
///   quoted packet's *source* address and port (the quote went the other
///   way).
/// * A source rewrite (the reply's backend becomes the VIP again) changes
///   the error's source only if the connection's endpoint sent it (a router
///   on the path keeps its own address), and the quoted packet's
///   destination address and port.
///
/// Then the quoted IPv4 header checksum and the quoted TCP/UDP checksum
/// (when the quote holds it) are updated incrementally, the outer IPv4
/// header checksum too, and the ICMP checksum (which covers the quote and,
/// for ICMPv6, the outer addresses) is computed anew over the message.
///
/// # Errors
/// [`RewriteError::FamilyMismatch`] for an address of the other family;
/// [`RewriteError::Mismatch`] if the offsets do not describe the frame.
pub fn apply_icmp_error(
    frame: &mut [u8],
    headers: &Headers,
    quoted: &QuotedPacket,
    flow_key: &FlowKey,
    rewrite: &Rewrite,
) -> Result<(), RewriteError> {
    let ipv4 = headers.key.ip_version == IP_V4;
    let (src_at, dst_at) = (
        address_offset(ipv4, Side::Source),
        address_offset(ipv4, Side::Destination),
    );
    let (octets, address_len) = wire_address(rewrite.address, headers)?;
    let new_address = &octets[16 - address_len..];
    let (l3, icmp, end) = (headers.l3_offset, headers.upper_offset, headers.l3_end);
    let q3 = quoted.l3_offset;
    if end > frame.len() || icmp + 4 > end || q3 + dst_at + address_len > end || q3 < icmp {
        return Err(RewriteError::Mismatch {
            reason: "ICMP error offsets outside the packet",
        });
    }
    // The outer and quoted fields the rewrite concerns.
    let (outer_at, outer_matches, quoted_at, quoted_port) = match rewrite.side {
        Side::Destination => (l3 + dst_at, flow_key.dst_addr == headers.key.dst_addr, q3 + src_at, 0),
        Side::Source => (l3 + src_at, flow_key.src_addr == headers.key.src_addr, q3 + dst_at, 2),
    };
    let mut quoted_delta = ChecksumDelta::default();
    quoted_delta.replace(&frame[quoted_at..quoted_at + address_len], new_address);
    if ipv4 {
        let at = q3 + IPV4_CHECKSUM;
        let checksum = quoted_delta.apply(read_u16(frame, at)?);
        write_u16(frame, at, checksum)?;
    }
    frame[quoted_at..quoted_at + address_len].copy_from_slice(new_address);
    if quoted.has_ports() {
        let port_at = quoted.l4_offset + quoted_port;
        let old_port = read_u16(frame, port_at)?;
        let mut l4_delta = quoted_delta;
        l4_delta.replace(&old_port.to_be_bytes(), &rewrite.port.to_be_bytes());
        write_u16(frame, port_at, rewrite.port)?;
        let (checksum_at, udp) = match quoted.key.protocol {
            ipproto::UDP => (quoted.l4_offset + UDP_CHECKSUM, true),
            _ => (quoted.l4_offset + TCP_CHECKSUM, false),
        };
        // Only the first 8 bytes of the quoted transport header are sure
        // to be there (RFC 792); a TCP checksum beyond the quote stays out.
        if checksum_at + 2 <= end {
            let old = read_u16(frame, checksum_at)?;
            if !(udp && ipv4 && old == 0) {
                let new = l4_delta.apply(old);
                write_u16(frame, checksum_at, if udp && new == 0 { 0xffff } else { new })?;
            }
        }
    }
    if outer_matches {
        let mut outer_delta = ChecksumDelta::default();
        outer_delta.replace(&frame[outer_at..outer_at + address_len], new_address);
        if ipv4 {
            let at = l3 + IPV4_CHECKSUM;
            let checksum = outer_delta.apply(read_u16(frame, at)?);
            write_u16(frame, at, checksum)?;
        }
        frame[outer_at..outer_at + address_len].copy_from_slice(new_address);
    }
    // The ICMP checksum anew: the quote changed in several places.
    write_u16(frame, icmp + 2, 0)?;
    let mut sum = 0;
    if !ipv4 {
        // RFC 4443 §2.3: the pseudo-header of the (rewritten) outer packet.
        sum = sum_words(sum, &frame[l3 + 8..l3 + 40]);
        sum += (end - icmp) as u64 + u64::from(ipproto::ICMPV6);
    }
    let checksum = !fold(sum_words(sum, &frame[icmp..end]));
    write_u16(frame, icmp + 2, checksum)
}

/// Applies a flow's [`Rewrite`] to an IP fragment (`headers.fragment`):
/// the address in every fragment, with the IPv4 header checksum; in the
/// first one (`headers.frag.first_l4_offset` set) also the port and the
/// TCP/UDP checksum. That checksum covers the whole datagram, and only the
/// first fragment holds it, so the same incremental update (RFC 1624) the
/// unfragmented packet would get is exact. An IPv4 UDP checksum of 0
/// stays 0 (RFC 768).
///
/// # Errors
/// [`RewriteError::Mismatch`] for a packet that is no fragment or whose
/// offsets do not fit it; [`RewriteError::FamilyMismatch`] for an address
/// of the other family.
pub fn apply_fragment(frame: &mut [u8], headers: &Headers, rewrite: &Rewrite) -> Result<(), RewriteError> {
    let ipv4 = headers.key.ip_version == IP_V4;
    let at = address_offset(ipv4, rewrite.side);
    let (octets, address_len) = wire_address(rewrite.address, headers)?;
    let new_address = &octets[16 - address_len..];
    let (l3, end) = (headers.l3_offset, headers.l3_end);
    let at = l3 + at;
    if !headers.fragment || end > frame.len() || at + address_len > end {
        return Err(RewriteError::Mismatch {
            reason: "no fragment, or offsets outside it",
        });
    }
    let mut delta = ChecksumDelta::default();
    delta.replace(&frame[at..at + address_len], new_address);
    let l4 = headers.frag.first_l4_offset;
    let transport = if l4 == 0 {
        None
    } else {
        let (checksum_at, udp) = match headers.key.protocol {
            ipproto::UDP => (l4 + UDP_CHECKSUM, true),
            ipproto::TCP => (l4 + TCP_CHECKSUM, false),
            protocol => return Err(RewriteError::NoPorts { protocol }),
        };
        if checksum_at + 2 > end {
            return Err(RewriteError::Mismatch {
                reason: "transport header beyond the first fragment",
            });
        }
        let port_at = l4 + if rewrite.side == Side::Source { 0 } else { 2 };
        Some((port_at, checksum_at, udp))
    };
    // Everything below is in bounds (checked above).
    if ipv4 {
        let checksum_at = l3 + IPV4_CHECKSUM;
        write_u16(frame, checksum_at, delta.apply(read_u16(frame, checksum_at)?))?;
    }
    if let Some((port_at, checksum_at, udp)) = transport {
        let old_port = read_u16(frame, port_at)?;
        let mut l4_delta = delta;
        l4_delta.replace(&old_port.to_be_bytes(), &rewrite.port.to_be_bytes());
        let old = read_u16(frame, checksum_at)?;
        if !(udp && ipv4 && old == 0) {
            let new = l4_delta.apply(old);
            write_u16(frame, checksum_at, if udp && new == 0 { 0xffff } else { new })?;
        }
        write_u16(frame, port_at, rewrite.port)?;
    }
    frame[at..at + address_len].copy_from_slice(new_address);
    Ok(())
}

/// What [`decrement_ttl`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// The TTL (hop limit) was above 1 and is now one less.
    Decremented,
    /// The TTL (hop limit) was 0 or 1: the packet must not be forwarded
    /// (RFC 1812 §5.3.1, RFC 8200 §3). The frame is unchanged.
    Expired,
}

/// Decrements the IPv4 TTL (with the header checksum, RFC 1624) or the IPv6
/// hop limit of the packet at `headers.l3_offset`, as a router does on
/// every forward; that is what ends a forwarding loop.
///
/// # Errors
/// [`RewriteError::Truncated`] if the frame ends inside the IP header,
/// [`RewriteError::Mismatch`] if its version is not the key's.
pub fn decrement_ttl(frame: &mut [u8], headers: &Headers) -> Result<Ttl, RewriteError> {
    let l3 = headers.l3_offset;
    let ipv4 = match (headers.key.ip_version, frame.get(l3).map(|b| b >> 4)) {
        (IP_V4, Some(4)) => true,
        (IP_V6, Some(6)) => false,
        (_, None) => {
            return Err(RewriteError::Truncated {
                needed: l3.saturating_add(1),
                len: frame.len(),
            })
        }
        _ => return Err(RewriteError::Mismatch { reason: "IP version" }),
    };
    // IPv4: TTL is byte 8, beside the protocol (one checksum word); IPv6:
    // the hop limit is byte 7 and there is no header checksum.
    let at = l3 + if ipv4 { IPV4_TTL } else { IPV6_HOP_LIMIT };
    let len = frame.len();
    let ttl = *frame.get(at).ok_or(RewriteError::Truncated { needed: at + 1, len })?;
    if ttl <= 1 {
        return Ok(Ttl::Expired);
    }
    if ipv4 {
        let checksum_at = l3 + IPV4_CHECKSUM;
        let old = read_u16(frame, at)?;
        let new = old - 0x0100;
        let mut delta = ChecksumDelta::default();
        delta.replace(&old.to_be_bytes(), &new.to_be_bytes());
        let checksum = delta.apply(read_u16(frame, checksum_at)?);
        write_u16(frame, checksum_at, checksum)?;
    }
    frame[at] = ttl - 1;
    Ok(Ttl::Decremented)
}

/// Whether the frame's first VLAN tag (802.1Q) has VID 0: a priority tag,
/// which carries only PCP and DEI (IEEE 802.1Q §6.9).
pub fn is_priority_tagged(frame: &[u8]) -> bool {
    matches!(read_u16(frame, 12), Ok(ethertype::VLAN | ethertype::QINQ))
        && read_u16(frame, ETH_HLEN).is_ok_and(|tci| tci & 0x0fff == 0)
}

/// Removes the frame's first VLAN tag: the MACs move 4 bytes on and the
/// frame starts 4 bytes later.
///
/// # Errors
/// [`FrameError::TooShort`] if the frame cannot hold a tag.
pub fn pop_vlan_tag<F: FrameBuf>(frame: &mut F) -> Result<(), FrameError> {
    let bytes = frame.bytes_mut();
    if bytes.len() < ETH_HLEN + VLAN_HLEN {
        return Err(FrameError::TooShort {
            len: bytes.len(),
            requested: ETH_HLEN + VLAN_HLEN,
        });
    }
    bytes.copy_within(0..12, VLAN_HLEN);
    frame.pull_front(VLAN_HLEN)
}

/// Sets the Ethernet source and destination MAC.
pub fn set_macs(frame: &mut [u8], source: [u8; 6], destination: [u8; 6]) -> Result<(), RewriteError> {
    let len = frame.len();
    let macs = frame.get_mut(..12).ok_or(RewriteError::Truncated { needed: 12, len })?;
    macs[..6].copy_from_slice(&destination);
    macs[6..].copy_from_slice(&source);
    Ok(())
}

/// Recomputes the IPv4 header checksum and the TCP/UDP checksum from
/// scratch. See the [module docs](self) for when this is needed.
pub fn recompute_checksums(frame: &mut [u8], headers: &Headers) -> Result<(), RewriteError> {
    let layout = Layout::of(frame, headers)?;
    let l3 = layout.l3;
    if layout.ipv4 {
        let header_len = ((frame[l3] & 0x0f) as usize) * 4;
        if header_len < IPV4_HLEN || l3 + header_len > layout.l4 {
            return Err(RewriteError::Mismatch {
                reason: "IPv4 header length",
            });
        }
        write_u16(frame, l3 + IPV4_CHECKSUM, 0)?;
        let sum = sum_words(0, &frame[l3..l3 + header_len]);
        write_u16(frame, l3 + IPV4_CHECKSUM, !fold(sum))?;
    }
    if layout.udp && layout.ipv4 && read_u16(frame, layout.l4_checksum)? == 0 {
        return Ok(());
    }
    let (src, dst) = (layout.address(Side::Source), layout.address(Side::Destination));
    let address_len = layout.address_len();
    let segment_len = layout.l4_end - layout.l4;
    // The pseudo-header (RFC 9293 §3.1, RFC 8200 §8.1): both addresses, the
    // protocol and the segment length. Zero bytes add nothing to the sum.
    let mut sum = sum_words(0, &frame[src..src + address_len]);
    sum = sum_words(sum, &frame[dst..dst + address_len]);
    sum += headers.key.protocol as u64 + segment_len as u64;
    write_u16(frame, layout.l4_checksum, 0)?;
    sum = sum_words(sum, &frame[layout.l4..layout.l4_end]);
    let checksum = !fold(sum);
    let checksum = if layout.udp && checksum == 0 { 0xffff } else { checksum };
    write_u16(frame, layout.l4_checksum, checksum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{
        IpHeaders, IpNumber, Ipv4Header, Ipv6Header, NetHeaders, PacketBuilder, PacketHeaders, TransportHeader, VlanId,
    };
    use handoff_common::parse::parse_frame;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SRC_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const DST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    /// Router alert (RFC 2113), two NOPs and an end-of-options byte.
    const IPV4_OPTIONS: [u8; 8] = [0x94, 0x04, 0, 0, 1, 1, 1, 0];

    /// xorshift64: deterministic, so a failure can be replayed.
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
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
        fn address(&mut self, v6: bool) -> IpAddr {
            if v6 {
                Ipv6Addr::from(((self.next() as u128) << 64) | self.next() as u128).into()
            } else {
                Ipv4Addr::from(self.next() as u32).into()
            }
        }
    }

    #[derive(Clone, Copy, Debug)]
    struct Shape {
        v6: bool,
        tcp: bool,
        ipv4_options: bool,
        vlan: bool,
    }

    const fn shape(v6: bool, tcp: bool, ipv4_options: bool, vlan: bool) -> Shape {
        Shape {
            v6,
            tcp,
            ipv4_options,
            vlan,
        }
    }

    /// IPv4/IPv6 x TCP/UDP, IPv4 with options, some behind a VLAN tag.
    const SHAPES: [Shape; 10] = [
        shape(false, true, false, false),
        shape(false, false, false, false),
        shape(true, true, false, false),
        shape(true, false, false, false),
        shape(false, true, true, false),
        shape(false, false, true, false),
        shape(false, true, false, true),
        shape(true, false, false, true),
        shape(false, false, true, true),
        shape(true, true, false, true),
    ];

    /// A valid frame built by etherparse, checksums included.
    fn build(shape: Shape, src: IpAddr, dst: IpAddr, ports: (u16, u16), payload: &[u8]) -> Vec<u8> {
        let ip = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let mut h = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).unwrap();
                h.identification = 0x1234;
                if shape.ipv4_options {
                    h.options = IPV4_OPTIONS.as_slice().try_into().unwrap();
                }
                IpHeaders::Ipv4(h, Default::default())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => IpHeaders::Ipv6(
                Ipv6Header {
                    hop_limit: 64,
                    source: s.octets(),
                    destination: d.octets(),
                    ..Default::default()
                },
                Default::default(),
            ),
            _ => panic!("mixed families"),
        };
        let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        let ip = if shape.vlan {
            eth.single_vlan(VlanId::try_new(7).unwrap()).ip(ip)
        } else {
            eth.ip(ip)
        };
        let mut frame = Vec::new();
        if shape.tcp {
            ip.tcp(ports.0, ports.1, 0x0102_0304, 512)
                .ack(0x0a0b_0c0d)
                .psh()
                .write(&mut frame, payload)
                .unwrap();
        } else {
            ip.udp(ports.0, ports.1).write(&mut frame, payload).unwrap();
        }
        frame
    }

    /// What etherparse reads from a frame: addresses, ports, and whether every
    /// checksum is what it computes itself.
    #[derive(Debug, PartialEq, Eq)]
    struct Seen {
        src: IpAddr,
        dst: IpAddr,
        ports: (u16, u16),
        l4_checksum: u16,
    }

    fn verify(frame: &[u8]) -> Seen {
        let p = PacketHeaders::from_ethernet_slice(frame).unwrap();
        let payload = p.payload.slice();
        let (src, dst, expected) = match (p.net.as_ref().unwrap(), p.transport.as_ref().unwrap()) {
            (NetHeaders::Ipv4(ip, _), t) => {
                assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "IPv4 header checksum");
                let l4 = match t {
                    TransportHeader::Tcp(t) => t.calc_checksum_ipv4(ip, payload).unwrap(),
                    TransportHeader::Udp(u) if u.checksum == 0 => 0,
                    TransportHeader::Udp(u) => u.calc_checksum_ipv4(ip, payload).unwrap(),
                    _ => panic!("not TCP/UDP"),
                };
                (
                    Ipv4Addr::from(ip.source).into(),
                    Ipv4Addr::from(ip.destination).into(),
                    l4,
                )
            }
            (NetHeaders::Ipv6(ip, _), t) => {
                let l4 = match t {
                    TransportHeader::Tcp(t) => t.calc_checksum_ipv6(ip, payload).unwrap(),
                    TransportHeader::Udp(u) => u.calc_checksum_ipv6(ip, payload).unwrap(),
                    _ => panic!("not TCP/UDP"),
                };
                (
                    Ipv6Addr::from(ip.source).into(),
                    Ipv6Addr::from(ip.destination).into(),
                    l4,
                )
            }
        };
        let (ports, l4_checksum) = match p.transport.unwrap() {
            TransportHeader::Tcp(t) => ((t.source_port, t.destination_port), t.checksum),
            TransportHeader::Udp(u) => ((u.source_port, u.destination_port), u.checksum),
            _ => panic!("not TCP/UDP"),
        };
        assert_eq!(l4_checksum, expected, "L4 checksum");
        Seen {
            src,
            dst,
            ports,
            l4_checksum,
        }
    }

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_shape_is_rewritten_both_ways_with_valid_checksums() {
        for shape in SHAPES {
            let (client, vip, backend) = if shape.v6 {
                (v4("fd00::1"), v4("fd00::9:1"), v4("fd00:1::2"))
            } else {
                (v4("10.0.0.1"), v4("10.0.9.1"), v4("10.1.0.2"))
            };
            for payload_len in [0usize, 1, 7, 64] {
                let payload: Vec<u8> = (0..payload_len as u8).map(|b| b.wrapping_mul(37)).collect();
                let mut frame = build(shape, client, vip, (40000, 80), &payload);
                let headers = parse_frame(frame.as_slice()).unwrap();
                rewrite_destination(&mut frame, &headers, backend, 8080).unwrap();
                let seen = verify(&frame);
                assert_eq!((seen.src, seen.dst, seen.ports), (client, backend, (40000, 8080)));

                let mut reply = build(shape, backend, client, (8080, 40000), &payload);
                let headers = parse_frame(reply.as_slice()).unwrap();
                rewrite_source(&mut reply, &headers, vip, 80).unwrap();
                let seen = verify(&reply);
                assert_eq!(
                    (seen.src, seen.dst, seen.ports),
                    (vip, client, (80, 40000)),
                    "{shape:?}"
                );
                assert_eq!(reply, build(shape, vip, client, (80, 40000), &payload), "{shape:?}");
            }
        }
    }

    /// Random shapes, addresses, ports and payloads. Each incremental update
    /// must equal etherparse's checksum and, byte for byte, a full recompute.
    #[test]
    fn randomized_rewrites_match_etherparse_and_a_full_recompute() {
        let mut rng = Rng(0x0dd_ba11_5eed);
        for round in 0..3000 {
            let shape = SHAPES[rng.below(SHAPES.len() as u64) as usize];
            let payload_len = rng.below(300) as usize;
            let payload = rng.bytes(payload_len);
            let ports = (rng.next() as u16, rng.next() as u16);
            let mut frame = build(shape, rng.address(shape.v6), rng.address(shape.v6), ports, &payload);
            let headers = parse_frame(frame.as_slice()).unwrap();
            let (address, port) = (rng.address(shape.v6), rng.next() as u16);
            let rewrite = Rewrite {
                side: if rng.below(2) == 0 {
                    Side::Source
                } else {
                    Side::Destination
                },
                address,
                port,
                next_hop: 0,
            };
            apply(&mut frame, &headers, &rewrite).unwrap();
            let seen = verify(&frame);
            match rewrite.side {
                Side::Source => assert_eq!((seen.src, seen.ports.0), (address, port)),
                Side::Destination => assert_eq!((seen.dst, seen.ports.1), (address, port)),
            }
            let mut recomputed = frame.clone();
            recompute_checksums(&mut recomputed, &headers).unwrap();
            assert_eq!(frame, recomputed, "round {round}: {shape:?}");
        }
    }

    #[test]
    fn a_udp_checksum_that_comes_out_zero_is_sent_as_ffff() {
        for shape in [SHAPES[1], SHAPES[3]] {
            let (src, dst) = if shape.v6 {
                (v4("fd00::1"), v4("fd00::2"))
            } else {
                (v4("10.0.0.1"), v4("10.0.0.2"))
            };
            let base = build(shape, src, dst, (1, 2), b"odd");
            let headers = parse_frame(base.as_slice()).unwrap();
            let mut ffff = 0;
            for port in 0..=u16::MAX {
                let mut frame = base.clone();
                rewrite_destination(&mut frame, &headers, dst, port).unwrap();
                let seen = verify(&frame);
                assert_ne!(seen.l4_checksum, 0);
                ffff += usize::from(seen.l4_checksum == 0xffff);
            }
            // The checksum takes every value as the port does, 0 (sent as 0xffff) once.
            assert_eq!(ffff, 1, "{shape:?}");
        }
    }

    #[test]
    fn a_udp_ipv4_datagram_without_checksum_keeps_none() {
        let shape = SHAPES[5];
        let mut frame = build(shape, v4("10.0.0.1"), v4("10.0.9.1"), (5, 53), b"query");
        let headers = parse_frame(frame.as_slice()).unwrap();
        let at = headers.l4_offset + UDP_CHECKSUM;
        frame[at..at + 2].fill(0);
        rewrite_destination(&mut frame, &headers, v4("10.1.0.7"), 5353).unwrap();
        let seen = verify(&frame);
        assert_eq!((seen.dst, seen.ports.1, seen.l4_checksum), (v4("10.1.0.7"), 5353, 0));
        recompute_checksums(&mut frame, &headers).unwrap();
        assert_eq!(verify(&frame).l4_checksum, 0);
    }

    /// A frame whose L4 checksum field holds only the pseudo-header sum (as a
    /// stack with TX checksum offload leaves it) is fixed by a recompute.
    #[test]
    fn recompute_repairs_a_partial_checksum() {
        for shape in SHAPES {
            let (src, dst) = if shape.v6 {
                (v4("fd00::1"), v4("fd00::2"))
            } else {
                (v4("10.0.0.1"), v4("10.0.0.2"))
            };
            let good = build(shape, src, dst, (1000, 2000), b"payload!");
            let headers = parse_frame(good.as_slice()).unwrap();
            let mut frame = good.clone();
            let at = headers.l4_offset + if shape.tcp { TCP_CHECKSUM } else { UDP_CHECKSUM };
            frame[at..at + 2].copy_from_slice(&[0x12, 0x34]);
            if !shape.v6 {
                frame[headers.l3_offset + IPV4_CHECKSUM] ^= 0xff;
            }
            recompute_checksums(&mut frame, &headers).unwrap();
            assert_eq!(frame, good, "{shape:?}");
        }
    }

    #[test]
    fn set_macs_writes_both_addresses() {
        let mut frame = build(SHAPES[0], v4("10.0.0.1"), v4("10.0.0.2"), (1, 2), b"");
        set_macs(&mut frame, [2, 0, 0, 0, 0, 0xaa], [2, 0, 0, 0, 0, 0xbb]).unwrap();
        let eth = PacketHeaders::from_ethernet_slice(&frame).unwrap().link.unwrap();
        let eth = eth.ethernet2().unwrap();
        assert_eq!(
            (eth.source, eth.destination),
            ([2, 0, 0, 0, 0, 0xaa], [2, 0, 0, 0, 0, 0xbb])
        );
        assert_eq!(
            set_macs(&mut frame[..11], [0; 6], [0; 6]),
            Err(RewriteError::Truncated { needed: 12, len: 11 })
        );
    }

    #[test]
    fn wrong_family_fragments_and_other_protocols_are_refused_untouched() {
        let mut frame = build(SHAPES[0], v4("10.0.0.1"), v4("10.0.0.2"), (1, 2), b"x");
        let original = frame.clone();
        let headers = parse_frame(frame.as_slice()).unwrap();
        assert_eq!(
            rewrite_destination(&mut frame, &headers, v4("fd00::1"), 1),
            Err(RewriteError::FamilyMismatch {
                address: v4("fd00::1"),
                ip_version: 4
            })
        );
        let fragment = Headers {
            l4_offset: 0,
            fragment: true,
            ..headers
        };
        assert_eq!(
            rewrite_source(&mut frame, &fragment, v4("10.0.0.3"), 1),
            Err(RewriteError::NoPorts { protocol: 6 })
        );
        let mut icmp = headers;
        icmp.key.protocol = ipproto::ICMP;
        assert_eq!(
            recompute_checksums(&mut frame, &icmp),
            Err(RewriteError::NoPorts { protocol: 1 })
        );
        let mut v6 = headers;
        v6.key.ip_version = IP_V6;
        assert!(matches!(
            rewrite_source(&mut frame, &v6, v4("fd00::1"), 1),
            Err(RewriteError::Mismatch { .. })
        ));
        assert_eq!(frame, original);
    }

    /// Every prefix of every shape, with the headers of the whole frame: each
    /// function must return an error and leave the bytes alone.
    #[test]
    fn truncated_frames_are_errors_never_panics() {
        for shape in SHAPES {
            let (src, dst) = if shape.v6 {
                (v4("fd00::1"), v4("fd00::2"))
            } else {
                (v4("10.0.0.1"), v4("10.0.0.2"))
            };
            let full = build(shape, src, dst, (1, 2), b"abc");
            let headers = parse_frame(full.as_slice()).unwrap();
            for len in 0..full.len() {
                let mut frame = full[..len].to_vec();
                assert!(rewrite_destination(&mut frame, &headers, dst, 9).is_err());
                assert!(rewrite_source(&mut frame, &headers, src, 9).is_err());
                assert!(recompute_checksums(&mut frame, &headers).is_err());
                assert_eq!(set_macs(&mut frame, SRC_MAC, DST_MAC).is_err(), len < 12);
                assert_eq!(&frame[12.min(len)..], &full[12.min(len)..len], "{shape:?} {len}");
            }
        }
    }

    /// Random bytes with random (mostly nonsensical) header offsets: any
    /// result is fine as long as nothing panics.
    #[test]
    fn garbage_headers_never_panic() {
        let mut rng = Rng(0xfeed_f00d);
        let template = parse_frame(build(SHAPES[0], v4("10.0.0.1"), v4("10.0.0.2"), (1, 2), b"").as_slice()).unwrap();
        for _ in 0..50_000 {
            let len = rng.below(120) as usize;
            let mut frame = rng.bytes(len);
            let mut offset = || match rng.below(4) {
                0 => usize::MAX - rng.below(4) as usize,
                _ => rng.below(130) as usize,
            };
            let mut headers = Headers {
                l3_offset: offset(),
                l4_offset: offset(),
                l3_end: offset(),
                ..template
            };
            headers.key.ip_version = [IP_V4, IP_V6][rng.below(2) as usize];
            headers.key.protocol = [ipproto::TCP, ipproto::UDP][rng.below(2) as usize];
            if let Some(b) = frame.get_mut(headers.l3_offset) {
                *b = (headers.key.ip_version << 4) | (*b & 0x0f);
            }
            let address = rng.address(headers.key.ip_version == IP_V6);
            let _ = rewrite_destination(&mut frame, &headers, address, 1);
            let _ = rewrite_source(&mut frame, &headers, address, 1);
            let _ = recompute_checksums(&mut frame, &headers);
        }
    }
}
