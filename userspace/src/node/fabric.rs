//! Node-to-node encapsulation (see `handoff_common::fabric` for the header).
//!
//! A packet forwarded to its owner keeps its IP packet byte for byte; its
//! Ethernet header (and any VLAN tags) is replaced by an outer Ethernet
//! header addressed to the owner plus the 16-byte fabric header, which
//! carries the hop count (the loop guard) and the original EtherType.

use crate::io::{FrameBuf, FrameError};
use handoff_common::{
    fabric::{kind, FabricHeader, FABRIC_ETHERTYPE, FABRIC_MAX_HOPS, FABRIC_VERSION},
    net::NetU16,
    parse::ETH_HLEN,
};

/// Size of the fabric header.
pub const FABRIC_HLEN: usize = core::mem::size_of::<FabricHeader>();
/// Offset of the inner IP packet in an encapsulated frame.
pub const INNER_OFFSET: usize = ETH_HLEN + FABRIC_HLEN;

/// Why a frame could not be (de)encapsulated.
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum FabricError {
    /// The frame is shorter than the headers.
    #[error("frame of {len} bytes is too short for the fabric headers")]
    Truncated {
        /// Frame length.
        len: usize,
    },
    /// Unknown header version.
    #[error("fabric header version {0} is not supported")]
    Version(u8),
    /// Unknown frame kind.
    #[error("fabric frame kind {0} is not known")]
    Kind(u8),
    /// The loop guard fired.
    #[error("packet crossed the fabric {0} times")]
    TooManyHops(u8),
    /// Not enough headroom to grow the frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Writes an Ethernet header.
pub fn write_ethernet(frame: &mut [u8], dst: [u8; 6], src: [u8; 6], ethertype: u16) {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

fn header_bytes(h: &FabricHeader) -> [u8; FABRIC_HLEN] {
    let mut b = [0u8; FABRIC_HLEN];
    b[0] = h.version;
    b[1] = h.kind;
    b[2] = h.hops;
    b[3] = h.target_worker;
    b[4..6].copy_from_slice(&h.sender.0.to_ne_bytes());
    b[6..8].copy_from_slice(&h.inner_ethertype.0.to_ne_bytes());
    b[8..12].copy_from_slice(&h.serial.0.to_ne_bytes());
    b[12..14].copy_from_slice(&h.lane.0.to_ne_bytes());
    b[14..16].copy_from_slice(&h.lanes.0.to_ne_bytes());
    b
}

/// Reads and checks the fabric header of an encapsulated frame.
pub fn read_header(frame: &[u8]) -> Result<FabricHeader, FabricError> {
    let b = frame
        .get(ETH_HLEN..INNER_OFFSET)
        .ok_or(FabricError::Truncated { len: frame.len() })?;
    let ne16 = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
    let h = FabricHeader {
        version: b[0],
        kind: b[1],
        hops: b[2],
        target_worker: b[3],
        sender: NetU16(ne16(4)),
        inner_ethertype: NetU16(ne16(6)),
        serial: handoff_common::net::NetU32(u32::from_ne_bytes([b[8], b[9], b[10], b[11]])),
        lane: NetU16(ne16(12)),
        lanes: NetU16(ne16(14)),
    };
    if h.version != FABRIC_VERSION {
        return Err(FabricError::Version(h.version));
    }
    if h.kind != kind::DATA && h.kind != kind::MARKER {
        return Err(FabricError::Kind(h.kind));
    }
    if h.hops > FABRIC_MAX_HOPS {
        return Err(FabricError::TooManyHops(h.hops));
    }
    Ok(h)
}

/// Who sends, to whom.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    /// Our MAC.
    pub src_mac: [u8; 6],
    /// The next node's MAC.
    pub dst_mac: [u8; 6],
    /// Our node id.
    pub sender: u16,
    /// Our worker (lane).
    pub lane: u16,
}

/// Encapsulates the IP packet at `l3_offset` for the node at `hop.dst_mac`.
/// `hops` is how often it crossed the fabric before (0 for a packet that
/// came from the edge); the loop guard refuses more than `FABRIC_MAX_HOPS`.
pub fn encapsulate<F: FrameBuf>(
    frame: &mut F,
    l3_offset: usize,
    ethertype: u16,
    hops: u8,
    target_worker: u8,
    hop: &Hop,
) -> Result<(), FabricError> {
    let hops = hops.saturating_add(1);
    if hops > FABRIC_MAX_HOPS {
        return Err(FabricError::TooManyHops(hops));
    }
    if l3_offset < INNER_OFFSET {
        frame.push_front(INNER_OFFSET - l3_offset)?;
    } else {
        frame.pull_front(l3_offset - INNER_OFFSET)?;
    }
    let bytes = frame.bytes_mut();
    if bytes.len() < INNER_OFFSET {
        return Err(FabricError::Truncated { len: bytes.len() });
    }
    write_ethernet(bytes, hop.dst_mac, hop.src_mac, FABRIC_ETHERTYPE);
    let header = FabricHeader {
        version: FABRIC_VERSION,
        kind: kind::DATA,
        hops,
        target_worker,
        sender: NetU16::from_host(hop.sender),
        inner_ethertype: NetU16::from_host(ethertype),
        lane: NetU16::from_host(hop.lane),
        ..FabricHeader::default()
    };
    bytes[ETH_HLEN..INNER_OFFSET].copy_from_slice(&header_bytes(&header));
    Ok(())
}

/// Strips the fabric header: the frame becomes a plain Ethernet frame
/// (addressed from `src_mac` of the sender to `own_mac`) carrying the inner
/// packet. Returns the header.
pub fn decapsulate<F: FrameBuf>(frame: &mut F, own_mac: [u8; 6]) -> Result<FabricHeader, FabricError> {
    let header = read_header(frame.bytes())?;
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(&frame.bytes()[6..12]);
    frame.pull_front(FABRIC_HLEN)?;
    write_ethernet(frame.bytes_mut(), own_mac, sender_mac, header.inner_ethertype.get());
    Ok(header)
}

/// An end marker: nothing more from `sender`'s lane `lane` (one of its
/// `lanes`) follows it for the flip `serial` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    /// The sending node.
    pub sender: u16,
    /// Its lane (worker).
    pub lane: u16,
    /// How many lanes it drains.
    pub lanes: u16,
    /// The flip it ends (low bits of the scope version).
    pub serial: u32,
}

/// Writes `marker` into `out` (at least [`INNER_OFFSET`] bytes), addressed
/// from `src_mac` to `dst_mac`, for `target_worker` of the receiver.
pub fn write_marker(out: &mut [u8], src_mac: [u8; 6], dst_mac: [u8; 6], marker: &Marker, target_worker: u8) {
    write_ethernet(out, dst_mac, src_mac, FABRIC_ETHERTYPE);
    let header = FabricHeader {
        version: FABRIC_VERSION,
        kind: kind::MARKER,
        hops: 1,
        target_worker,
        sender: NetU16::from_host(marker.sender),
        serial: handoff_common::net::NetU32::from_host(marker.serial),
        lane: NetU16::from_host(marker.lane),
        lanes: NetU16::from_host(marker.lanes),
        ..FabricHeader::default()
    };
    out[ETH_HLEN..INNER_OFFSET].copy_from_slice(&header_bytes(&header));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{memory::MemoryPort, PacketIo, Verdict};

    const HOP: Hop = Hop {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        sender: 7,
        lane: 1,
    };

    fn frame_with(tags: usize) -> Vec<u8> {
        let mut f = vec![0xaa; 12];
        for _ in 0..tags {
            f.extend_from_slice(&[0x81, 0x00, 0, 5]);
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[0x45; 30]);
        f
    }

    #[test]
    fn encapsulate_then_decapsulate_restores_the_ip_packet() {
        for tags in [0, 1, 2] {
            let original = frame_with(tags);
            let l3 = 14 + 4 * tags;
            let mut port = MemoryPort::new(4, 256, 4);
            port.inject(&original).unwrap();
            port.poll_rx(|f| {
                encapsulate(f, l3, 0x0800, 0, 3, &HOP).unwrap();
                assert_eq!(f.bytes().len(), INNER_OFFSET + 30);
                let h = read_header(f.bytes()).unwrap();
                assert_eq!(
                    (h.kind, h.hops, h.target_worker, h.sender.get(), h.lane.get()),
                    (kind::DATA, 1, 3, 7, 1)
                );
                let h = decapsulate(f, [2, 0, 0, 0, 0, 9]).unwrap();
                assert_eq!(h.inner_ethertype.get(), 0x0800);
                Verdict::Transmit
            });
            let out = port.take_transmitted().remove(0);
            assert_eq!(&out[..6], &[2, 0, 0, 0, 0, 9]);
            assert_eq!(&out[6..12], &HOP.src_mac);
            assert_eq!(&out[12..14], &[0x08, 0x00]);
            assert_eq!(&out[14..], &original[l3..]);
        }
    }

    #[test]
    fn the_loop_guard_and_bad_headers_are_errors() {
        let mut port = MemoryPort::new(4, 256, 4);
        port.inject(&frame_with(0)).unwrap();
        port.poll_rx(|f| {
            assert_eq!(
                encapsulate(f, 14, 0x0800, FABRIC_MAX_HOPS, 0, &HOP),
                Err(FabricError::TooManyHops(FABRIC_MAX_HOPS + 1))
            );
            Verdict::Drop
        });
        let mut marker = [0u8; INNER_OFFSET];
        let sent = Marker {
            sender: HOP.sender,
            lane: HOP.lane,
            lanes: 2,
            serial: 42,
        };
        write_marker(&mut marker, HOP.src_mac, HOP.dst_mac, &sent, 3);
        let h = read_header(&marker).unwrap();
        assert_eq!((h.lanes.get(), h.target_worker), (2, 3));
        assert_eq!((h.kind, h.serial.get()), (kind::MARKER, 42));
        assert_eq!(read_header(&marker[..20]), Err(FabricError::Truncated { len: 20 }));
        marker[14] = 9;
        assert_eq!(read_header(&marker), Err(FabricError::Version(9)));
        marker[14] = FABRIC_VERSION;
        marker[15] = 77;
        assert_eq!(read_header(&marker), Err(FabricError::Kind(77)));
    }
}
