//! The generator's flow set and the frames it sends.
//!
//! Flow `i` is `src_ip(i):src_port(i) -> dst:dst_port` over UDP. Source ports
//! cycle through `first_port..=65535`; each full cycle moves to the next
//! source address, so a million flows need 16 consecutive source addresses.

use crate::payload::{BenchHeader, HEADER_LEN};
use std::net::Ipv4Addr;

/// Ethernet + IPv4 + UDP header bytes.
pub const HEADERS_LEN: usize = 14 + 20 + 8;
/// Smallest frame the generator builds (60 bytes, 64 on the wire with FCS).
pub const MIN_FRAME: usize = 60;

/// The flows a generator cycles through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlowSet {
    /// Number of flows.
    pub count: u32,
    /// First source address.
    pub src_base: Ipv4Addr,
    /// First source port.
    pub first_port: u16,
    /// Destination address (a VIP).
    pub dst: Ipv4Addr,
    /// Destination port.
    pub dst_port: u16,
}

impl FlowSet {
    fn ports_per_address(&self) -> u32 {
        65536 - self.first_port as u32
    }

    /// Source addresses the set uses (the client must own them to get replies).
    pub fn source_addresses(&self) -> u32 {
        self.count.div_ceil(self.ports_per_address())
    }

    /// Source address and port of flow `flow`.
    pub fn source(&self, flow: u32) -> (Ipv4Addr, u16) {
        let per = self.ports_per_address();
        let addr = u32::from(self.src_base).wrapping_add(flow / per);
        (Ipv4Addr::from(addr), (self.first_port as u32 + flow % per) as u16)
    }

    /// The flow index of a reply addressed to `dst:dst_port`, if it is one of ours.
    pub fn flow_of_reply(&self, dst: Ipv4Addr, dst_port: u16) -> Option<u32> {
        let offset = u32::from(dst).checked_sub(u32::from(self.src_base))?;
        let port = (dst_port as u32).checked_sub(self.first_port as u32)?;
        let flow = offset.checked_mul(self.ports_per_address())?.checked_add(port)?;
        (flow < self.count).then_some(flow)
    }
}

/// Builds frames of one size for a flow set, with full checksums.
#[derive(Clone, Debug)]
pub struct FrameBuilder {
    flows: FlowSet,
    frame_len: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
}

/// Why a frame size is unusable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("frame size {size} is outside {min}..={max}")]
pub struct FrameSizeError {
    /// Requested size.
    pub size: usize,
    /// Smallest allowed.
    pub min: usize,
    /// Largest allowed.
    pub max: usize,
}

impl FrameBuilder {
    /// Largest frame: a 1500-byte MTU plus the Ethernet header.
    pub const MAX_FRAME: usize = 1514;

    /// A builder for `frame_len`-byte frames (without FCS).
    pub fn new(flows: FlowSet, frame_len: usize, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Result<Self, FrameSizeError> {
        if !(MIN_FRAME..=Self::MAX_FRAME).contains(&frame_len) {
            return Err(FrameSizeError {
                size: frame_len,
                min: MIN_FRAME,
                max: Self::MAX_FRAME,
            });
        }
        Ok(Self {
            flows,
            frame_len,
            src_mac,
            dst_mac,
        })
    }

    /// Frame length.
    pub fn frame_len(&self) -> usize {
        self.frame_len
    }

    /// The flow set.
    pub fn flows(&self) -> &FlowSet {
        &self.flows
    }

    /// Writes the frame of `header` into `out` (exactly `frame_len` bytes).
    pub fn write(&self, header: &BenchHeader, out: &mut [u8]) {
        let (src, sport) = self.flows.source(header.flow);
        let ip_len = (self.frame_len - 14) as u16;
        let udp_len = ip_len - 20;
        out[0..6].copy_from_slice(&self.dst_mac);
        out[6..12].copy_from_slice(&self.src_mac);
        out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = &mut out[14..34];
        ip.copy_from_slice(&[0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[12..16].copy_from_slice(&src.octets());
        ip[16..20].copy_from_slice(&self.flows.dst.octets());
        let ip_csum = !fold(sum16(ip, 0));
        ip[10..12].copy_from_slice(&ip_csum.to_be_bytes());
        let udp = &mut out[34..self.frame_len];
        udp[0..2].copy_from_slice(&sport.to_be_bytes());
        udp[2..4].copy_from_slice(&self.flows.dst_port.to_be_bytes());
        udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
        udp[6..8].fill(0);
        let payload = &mut udp[8..];
        // The header is followed by zero padding up to the frame size.
        payload[HEADER_LEN..].fill(0);
        header.write(payload);
        let pseudo = sum16(&src.octets(), 0) + sum16(&self.flows.dst.octets(), 0) + 17 + udp_len as u32;
        let mut csum = !fold(sum16(udp, pseudo));
        if csum == 0 {
            csum = 0xffff;
        }
        udp[6..8].copy_from_slice(&csum.to_be_bytes());
    }

    /// The same frame as an IPv4 packet (no Ethernet header), for raw sockets.
    pub fn ip_packet<'a>(&self, header: &BenchHeader, scratch: &'a mut [u8]) -> &'a [u8] {
        self.write(header, scratch);
        &scratch[14..self.frame_len]
    }
}

fn sum16(bytes: &[u8], initial: u32) -> u32 {
    let mut sum = initial;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u32) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};

    fn set(count: u32) -> FlowSet {
        FlowSet {
            count,
            src_base: Ipv4Addr::new(10, 77, 0, 100),
            first_port: 1024,
            dst: Ipv4Addr::new(10, 77, 9, 1),
            dst_port: 7000,
        }
    }

    #[test]
    fn flow_sources_round_trip_and_span_addresses() {
        let s = set(1_000_000);
        assert_eq!(s.source_addresses(), 16);
        for flow in [0, 1, 64511, 64512, 999_999] {
            let (addr, port) = s.source(flow);
            assert_eq!(s.flow_of_reply(addr, port), Some(flow));
        }
        assert_eq!(s.source(64512), (Ipv4Addr::new(10, 77, 0, 101), 1024));
        assert_eq!(s.flow_of_reply(Ipv4Addr::new(10, 77, 0, 99), 2000), None);
        assert_eq!(s.flow_of_reply(Ipv4Addr::new(10, 77, 0, 100), 80), None);
        assert_eq!(s.flow_of_reply(Ipv4Addr::new(10, 77, 0, 116), 1024), None);
    }

    #[test]
    fn frames_are_valid_with_correct_checksums_at_every_size() {
        for len in [60, 61, 64, 128, 1514] {
            let b = FrameBuilder::new(set(10), len, [2; 6], [4; 6]).unwrap();
            let mut frame = vec![0u8; len];
            let h = BenchHeader {
                flow: 7,
                seq: 42,
                sent_ns: 123456789,
            };
            b.write(&h, &mut frame);
            let p = SlicedPacket::from_ethernet(&frame).unwrap();
            let Some(etherparse::NetSlice::Ipv4(ip)) = &p.net else {
                panic!("not ipv4")
            };
            assert_eq!(
                ip.header().header_checksum(),
                ip.header().to_header().calc_header_checksum()
            );
            let Some(TransportSlice::Udp(udp)) = &p.transport else {
                panic!("not udp")
            };
            let expected = udp
                .to_header()
                .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
                .unwrap();
            assert_eq!(udp.checksum(), expected, "len {len}");
            assert_eq!(BenchHeader::read(udp.payload()), Some(h));
        }
        assert!(FrameBuilder::new(set(1), 59, [0; 6], [0; 6]).is_err());
        assert!(FrameBuilder::new(set(1), 1515, [0; 6], [0; 6]).is_err());
    }
}
