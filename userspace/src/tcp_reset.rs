//! TCP resets a node writes in place of a packet: for a connection whose
//! backend a live change removed, the client is told at once (RFC 9293
//! §3.5.2, §3.10.7.1) instead of retransmitting into nothing until it
//! times out.
//!
//! Every offset is checked; on an error the frame is unchanged.

use crate::{
    icmp::DEFAULT_TTL,
    io::FrameBuf,
    rewrite::{fold, sum_words, RewriteError},
};
use handoff_common::{
    flow_key::IP_V4,
    net::{ethertype, ipproto},
    parse::{tcp_flags, Headers, ETH_HLEN},
};
use std::net::IpAddr;

const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const TCP_HLEN: usize = 20;

/// Whose sequence space the reset answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetOf {
    /// The packet's own sender is reset, as a closed port answers it
    /// (RFC 9293 §3.10.7.1): `SEQ = SEG.ACK` if it acknowledged, else
    /// `SEQ = 0, ACK = SEG.SEQ + SEG.LEN` with ACK set.
    Sender,
    /// The packet's receiver is reset in its sender's name: `SEQ =
    /// SEG.SEQ`, the next byte the receiver expects from that side.
    Receiver,
}

/// Replaces the TCP packet in `frame` (parsed as `headers`) with a bare
/// RST segment from `from` to `to` (address and port; the family of the
/// packet), in an untagged Ethernet frame from `src_mac` to `dst_mac`.
///
/// # Errors
/// [`RewriteError::NoPorts`] for anything but an unfragmented TCP packet;
/// [`RewriteError::FamilyMismatch`] if an address is of the other family;
/// [`RewriteError::Truncated`] or [`RewriteError::Mismatch`] if the headers
/// do not fit the frame.
pub fn write_reset<F: FrameBuf>(
    frame: &mut F,
    headers: &Headers,
    of: ResetOf,
    from: (IpAddr, u16),
    to: (IpAddr, u16),
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Result<(), RewriteError> {
    let ipv4 = headers.key.ip_version == IP_V4;
    if headers.key.protocol != ipproto::TCP || headers.fragment || headers.l4_offset == 0 {
        return Err(RewriteError::NoPorts {
            protocol: headers.key.protocol,
        });
    }
    for address in [from.0, to.0] {
        if address.is_ipv4() != ipv4 {
            return Err(RewriteError::FamilyMismatch {
                address,
                ip_version: headers.key.ip_version,
            });
        }
    }
    let (l3, l4, l3_end) = (headers.l3_offset, headers.l4_offset, headers.l3_end);
    let bytes = frame.bytes();
    if l3 < ETH_HLEN || l4 < l3 || l3_end > bytes.len() || l4 + TCP_HLEN > l3_end {
        return Err(RewriteError::Mismatch {
            reason: "TCP header outside the frame",
        });
    }
    let word = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let (seq, ack) = (word(l4 + 4), word(l4 + 8));
    let data_offset = usize::from(bytes[l4 + 12] >> 4) * 4;
    let flags = headers.tcp_flags;
    // SYN and FIN take a sequence number each (RFC 9293 §3.4).
    let seg_len = (l3_end.saturating_sub(l4 + data_offset)) as u32
        + u32::from(flags & tcp_flags::SYN != 0)
        + u32::from(flags & tcp_flags::FIN != 0);
    let (out_seq, out_ack, out_flags) = match of {
        ResetOf::Sender if flags & tcp_flags::ACK != 0 => (ack, 0, tcp_flags::RST),
        ResetOf::Sender => (0, seq.wrapping_add(seg_len), tcp_flags::RST | tcp_flags::ACK),
        ResetOf::Receiver => (seq, 0, tcp_flags::RST),
    };
    let ip_hlen = if ipv4 { IPV4_HLEN } else { IPV6_HLEN };
    // The new headers start at the frame's start, untagged: pull a VLAN
    // tag's bytes off the front so the packet shrinks rather than grows.
    frame
        .pull_front(l3 - ETH_HLEN)
        .map_err(|_| RewriteError::Truncated { needed: l3, len: l3 })?;
    let total = ETH_HLEN + ip_hlen + TCP_HLEN;
    frame.truncate(total).map_err(|_| RewriteError::Truncated {
        needed: total,
        len: frame.bytes().len(),
    })?;
    let bytes = frame.bytes_mut();
    bytes[0..6].copy_from_slice(&dst_mac);
    bytes[6..12].copy_from_slice(&src_mac);
    let eth_type = if ipv4 { ethertype::IPV4 } else { ethertype::IPV6 };
    bytes[12..14].copy_from_slice(&eth_type.to_be_bytes());
    let (ip, tcp) = bytes[ETH_HLEN..].split_at_mut(ip_hlen);
    let mut pseudo = 0u64;
    match (from.0, to.0) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            ip.copy_from_slice(&[0; IPV4_HLEN]);
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((IPV4_HLEN + TCP_HLEN) as u16).to_be_bytes());
            // Don't fragment, as Linux sends its resets.
            ip[6] = 0x40;
            ip[8] = DEFAULT_TTL;
            ip[9] = ipproto::TCP;
            ip[12..16].copy_from_slice(&src.octets());
            ip[16..20].copy_from_slice(&dst.octets());
            let checksum = !fold(sum_words(0, ip));
            ip[10..12].copy_from_slice(&checksum.to_be_bytes());
            pseudo = sum_words(pseudo, &ip[12..20]);
        }
        (IpAddr::V6(src), IpAddr::V6(dst)) => {
            ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            ip[4..6].copy_from_slice(&(TCP_HLEN as u16).to_be_bytes());
            ip[6] = ipproto::TCP;
            ip[7] = DEFAULT_TTL;
            ip[8..24].copy_from_slice(&src.octets());
            ip[24..40].copy_from_slice(&dst.octets());
            pseudo = sum_words(pseudo, &ip[8..40]);
        }
        // Both were checked against the packet's family above.
        (address, _) => {
            return Err(RewriteError::FamilyMismatch {
                address,
                ip_version: headers.key.ip_version,
            })
        }
    }
    pseudo += TCP_HLEN as u64 + u64::from(ipproto::TCP);
    let tcp = &mut tcp[..TCP_HLEN];
    tcp[0..2].copy_from_slice(&from.1.to_be_bytes());
    tcp[2..4].copy_from_slice(&to.1.to_be_bytes());
    tcp[4..8].copy_from_slice(&out_seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&out_ack.to_be_bytes());
    tcp[12] = (TCP_HLEN as u8 / 4) << 4;
    tcp[13] = out_flags;
    tcp[14..20].copy_from_slice(&[0; 6]);
    let checksum = !fold(sum_words(pseudo, tcp));
    tcp[16..18].copy_from_slice(&checksum.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::memory::MemoryFrame;
    use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
    use handoff_common::parse::parse_frame;

    fn tcp_frame(src: IpAddr, dst: IpAddr, seq: u32, ack: Option<u32>, syn: bool, payload: &[u8]) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let builder = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => builder.ipv4(s.octets(), d.octets(), 60),
            (IpAddr::V6(s), IpAddr::V6(d)) => builder.ipv6(s.octets(), d.octets(), 60),
            _ => unreachable!("test addresses share a family"),
        };
        let mut tcp = builder.tcp(40_000, 80, seq, 65_000);
        if let Some(a) = ack {
            tcp = tcp.ack(a);
        }
        if syn {
            tcp = tcp.syn();
        }
        let mut out = Vec::new();
        tcp.write(&mut out, payload).unwrap();
        out
    }

    /// The reset written for `frame`: (source, destination, ports, seq,
    /// ack, flags) after checking both checksums with etherparse.
    fn reset_of(frame: &[u8], of: ResetOf) -> (IpAddr, IpAddr, u16, u16, u32, Option<u32>, bool) {
        let headers = parse_frame(frame).unwrap();
        let mut buf = MemoryFrame::new(2048, 64);
        buf.load(frame, 64).unwrap();
        let vip: IpAddr = headers.key.dst_ip();
        let client = headers.key.src_ip();
        write_reset(
            &mut buf,
            &headers,
            of,
            (vip, 80),
            (client, 40_000),
            [2, 0, 0, 0, 0, 9],
            [2, 0, 0, 0, 0, 8],
        )
        .unwrap();
        let out = crate::io::FrameBuf::bytes(&buf).to_vec();
        assert_eq!(&out[0..6], &[2, 0, 0, 0, 0, 8]);
        let sliced = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("no TCP in {out:?}");
        };
        let (src, dst, sum) = match sliced.net.unwrap() {
            etherparse::NetSlice::Ipv4(ip) => {
                let h = ip.header();
                assert_eq!(h.to_header().calc_header_checksum(), h.header_checksum());
                let (s, d) = (IpAddr::from(h.source()), IpAddr::from(h.destination()));
                (s, d, tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap())
            }
            etherparse::NetSlice::Ipv6(ip) => {
                let h = ip.header();
                let (s, d) = (IpAddr::from(h.source()), IpAddr::from(h.destination()));
                (s, d, tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap())
            }
        };
        assert_eq!(sum, tcp.checksum(), "TCP checksum");
        assert!(tcp.rst() && tcp.payload().is_empty());
        (
            src,
            dst,
            tcp.source_port(),
            tcp.destination_port(),
            tcp.sequence_number(),
            tcp.ack().then(|| tcp.acknowledgment_number()),
            tcp.syn(),
        )
    }

    #[test]
    fn an_acknowledging_segment_is_reset_at_its_acknowledgement() {
        for (client, vip) in [("10.0.0.1", "10.0.9.1"), ("fd00::1", "fd00::9:1")] {
            let (client, vip): (IpAddr, IpAddr) = (client.parse().unwrap(), vip.parse().unwrap());
            let frame = tcp_frame(client, vip, 1000, Some(5000), false, b"GET / HTTP/1.1\r\n\r\n");
            let (src, dst, sport, dport, seq, ack, syn) = reset_of(&frame, ResetOf::Sender);
            assert_eq!((src, dst, sport, dport), (vip, client, 80, 40_000));
            assert_eq!((seq, ack, syn), (5000, None, false));
        }
    }

    #[test]
    fn a_segment_without_ack_is_reset_with_an_ack_of_its_length() {
        let (client, vip): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.9.1".parse().unwrap());
        let frame = tcp_frame(client, vip, 7, None, true, b"");
        let (.., seq, ack, _) = reset_of(&frame, ResetOf::Sender);
        assert_eq!((seq, ack), (0, Some(8)), "a SYN takes one sequence number");
    }

    #[test]
    fn the_receiver_is_reset_at_the_senders_sequence_number() {
        let (backend, client): (IpAddr, IpAddr) = ("10.1.0.1".parse().unwrap(), "10.0.0.1".parse().unwrap());
        let frame = tcp_frame(backend, client, 9000, Some(1234), false, b"data");
        let (.., seq, ack, _) = reset_of(&frame, ResetOf::Receiver);
        assert_eq!((seq, ack), (9000, None));
    }

    #[test]
    fn udp_and_mixed_families_are_refused_with_the_frame_unchanged() {
        let frame = tcp_frame(
            "10.0.0.1".parse().unwrap(),
            "10.0.9.1".parse().unwrap(),
            1,
            Some(2),
            false,
            b"x",
        );
        let headers = parse_frame(&frame[..]).unwrap();
        let mut buf = MemoryFrame::new(2048, 64);
        buf.load(&frame, 64).unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let mixed = write_reset(&mut buf, &headers, ResetOf::Sender, (v6, 80), (v6, 1), [0; 6], [0; 6]);
        assert!(matches!(mixed, Err(RewriteError::FamilyMismatch { .. })));
        assert_eq!(crate::io::FrameBuf::bytes(&buf), &frame[..]);
        let mut udp = headers;
        udp.key.protocol = ipproto::UDP;
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let refused = write_reset(&mut buf, &udp, ResetOf::Sender, (v4, 80), (v4, 1), [0; 6], [0; 6]);
        assert!(matches!(refused, Err(RewriteError::NoPorts { .. })));
        assert_eq!(crate::io::FrameBuf::bytes(&buf), &frame[..]);
    }
}
