//! Writes the packet seed corpora of the fuzz targets (`fuzz/`): valid IPv4
//! and IPv6 UDP, TCP and ICMP frames from the project's packet builder
//! (`handoff_testbed::frames`), VLAN-tagged ones, fragments, ICMP errors
//! with their quotes, fabric-encapsulated frames and end markers.
//!
//! `fuzz/corpus/parse_frame/` gets one frame per file; `fuzz/corpus/pipeline/`
//! gets bursts in the pipeline target's record format (see
//! `fuzz/fuzz_targets/pipeline.rs`), addressed to the services of its
//! policy. Run by `make fuzz-seeds`; the seeds are committed, so this runs
//! only when they should change.
//!
//! Usage: `handoff-fuzz-seeds [FUZZ_DIR]` (default `fuzz`).

use anyhow::{Context, Result};
use etherparse::{icmpv4, icmpv6, IcmpEchoHeader, Icmpv4Type, Icmpv6Type};
use handoff::{
    io::{memory::MemoryFrame, FrameBuf},
    node::fabric::{encapsulate, write_marker, Hop, Marker, INNER_OFFSET},
};
use handoff_common::{fabric::ANY_WORKER, net::ethertype, parse::ETH_HLEN};
use handoff_testbed::frames::{self, L3};
use std::{
    fs,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

/// The node's and its peer's MACs in the pipeline target.
const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0xfd, 0];
const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0xfd, 1];
/// Headroom that encapsulation pushes into.
const HEADROOM: usize = 64;

/// The pipeline target's addresses: a client, the VIPs, the backends.
const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 7);
const VIP4: Ipv4Addr = Ipv4Addr::new(10, 0, 9, 1);
const BACKEND4: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 7);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 9, 1);
const BACKEND6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 1, 1);

fn main() -> Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "fuzz".into()));
    let frames = frames_by_name();
    let parse_dir = dir.join("corpus/parse_frame");
    for (name, frame) in &frames {
        write(&parse_dir, name, frame)?;
    }
    let pipeline_dir = dir.join("corpus/pipeline");
    for (name, frame) in &frames {
        write(&pipeline_dir, name, &record(0, 0, frame))?;
    }
    for (name, burst) in bursts() {
        write(&pipeline_dir, name, &burst)?;
    }
    println!(
        "wrote {} parse_frame and {} pipeline seeds under {}",
        frames.len(),
        frames.len() + bursts().len(),
        dir.display()
    );
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(name);
    fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// One pipeline record: `[control, len_hi, len_lo, frame]`; `control` is
/// the hops (bits 0-2) and the seconds the clock moves first (bits 3-7).
fn record(hops: u8, seconds: u8, frame: &[u8]) -> Vec<u8> {
    let len = u16::try_from(frame.len()).expect("seed frames are short");
    let mut out = vec![(seconds << 3) | (hops & 0x7)];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    out
}

fn burst(records: &[Vec<u8>]) -> Vec<u8> {
    records.concat()
}

fn udp4(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Vec<u8> {
    frames::udp4(src, dst, sport, dport, b"request")
}

fn udp6(src: Ipv6Addr, dst: Ipv6Addr, sport: u16, dport: u16) -> Vec<u8> {
    frames::udp6(src, dst, sport, dport, b"request")
}

/// A UDP datagram of `len` payload bytes over IPv4 cut into two fragments
/// at `first` payload bytes (a multiple of 8): the first and the second.
fn fragments4(len: usize, first: usize) -> (Vec<u8>, Vec<u8>) {
    let whole = frames::udp4(CLIENT4, VIP4, 40000, 53, &vec![0x5a; len]);
    let cut = L3 + 20 + first;
    let mut head = frames::as_ipv4_fragment(&whole[..cut], true, 0);
    set_ipv4_total_length(&mut head);
    let mut tail = whole[..L3 + 20].to_vec();
    tail.extend_from_slice(&whole[cut..]);
    let mut tail = frames::as_ipv4_fragment(&tail, false, (first / 8) as u16);
    set_ipv4_total_length(&mut tail);
    (head, tail)
}

fn set_ipv4_total_length(frame: &mut [u8]) {
    let total = (frame.len() - L3) as u16;
    frame[L3 + 2..L3 + 4].copy_from_slice(&total.to_be_bytes());
    frames::fix_ipv4_checksum(frame);
}

/// `frame` as node 1 sends it to node 0 over the fabric.
fn over_fabric(frame: &[u8], ether: u16, hops: u8) -> Vec<u8> {
    let mut f = MemoryFrame::new(frame.len() + HEADROOM, HEADROOM);
    f.load(frame, HEADROOM).expect("the frame fits");
    let hop = Hop {
        src_mac: PEER_MAC,
        dst_mac: NODE_MAC,
        sender: 1,
        lane: 0,
    };
    encapsulate(&mut f, ETH_HLEN, ether, hops, ANY_WORKER, &hop).expect("encapsulates");
    f.bytes().to_vec()
}

fn marker() -> Vec<u8> {
    let mut out = vec![0u8; INNER_OFFSET];
    let m = Marker {
        sender: 1,
        lane: 0,
        lanes: 2,
        serial: 1,
    };
    write_marker(&mut out, PEER_MAC, NODE_MAC, &m, ANY_WORKER);
    out
}

fn frames_by_name() -> Vec<(&'static str, Vec<u8>)> {
    let udp = udp4(CLIENT4, VIP4, 40000, 53);
    let tcp = frames::tcp4_syn(CLIENT4, VIP4, 40000, 80);
    let udp_v6 = udp6(CLIENT6, VIP6, 40000, 53);
    let tcp_v6 = frames::tcp6_syn(CLIENT6, VIP6, 40000, 80);
    let reply = udp4(BACKEND4, CLIENT4, 5353, 40000);
    let (head, tail) = fragments4(64, 32);
    let port_unreachable = frames::icmp4_message(
        CLIENT4,
        VIP4,
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::Port),
        &frames::ip_quote(&reply, 8),
    );
    let frag_needed = frames::icmp4_message(
        Ipv4Addr::new(10, 0, 5, 1),
        BACKEND4,
        Icmpv4Type::DestinationUnreachable(icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 }),
        &frames::ip_quote(&reply, 8),
    );
    let time_exceeded = frames::icmp4_message(
        Ipv4Addr::new(10, 0, 5, 1),
        CLIENT4,
        Icmpv4Type::TimeExceeded(icmpv4::TimeExceededCode::TtlExceededInTransit),
        &frames::ip_quote(&udp, 8),
    );
    let reply6 = udp6(BACKEND6, CLIENT6, 5353, 40000);
    let port_unreachable6 = frames::icmp6_message(
        CLIENT6,
        VIP6,
        Icmpv6Type::DestinationUnreachable(icmpv6::DestUnreachableCode::Port),
        &frames::ip_quote(&reply6, 8),
    );
    let too_big6 = frames::icmp6_message(
        Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 5, 1),
        BACKEND6,
        Icmpv6Type::PacketTooBig { mtu: 1280 },
        &frames::ip_quote(&reply6, 8),
    );
    let echo6 = frames::icmp6_message(
        CLIENT6,
        VIP6,
        Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 7, seq: 1 }),
        b"ping",
    );
    vec![
        ("udp4", udp.clone()),
        ("tcp4_syn", tcp.clone()),
        ("icmp4_echo", frames::icmp4(CLIENT4, VIP4)),
        ("udp6", udp_v6.clone()),
        ("tcp6_syn", tcp_v6),
        ("icmp6_echo", echo6),
        ("udp4_reply", reply),
        ("arp", frames::arp()),
        ("udp4_vlan", frames::with_tags(&udp, &[0x8100])),
        ("udp4_qinq", frames::with_tags(&udp, &[0x88a8, 0x8100])),
        ("udp4_three_tags", frames::with_tags(&udp, &[0x88a8, 0x8100, 0x8100])),
        ("udp4_priority_tag", frames::with_tag_tcis(&udp, &[(0x8100, 5 << 13)])),
        ("tcp4_options", frames::with_ipv4_options(&tcp, 3)),
        ("udp4_first_fragment", head),
        ("udp4_later_fragment", tail),
        (
            "udp6_extensions",
            frames::with_ipv6_extensions(&udp_v6, &[(0, 0), (43, 1), (60, 0)]),
        ),
        (
            "udp6_fragment_header",
            frames::with_ipv6_extensions(&udp_v6, &[(44, 0)]),
        ),
        ("icmp4_port_unreachable", port_unreachable),
        ("icmp4_frag_needed", frag_needed),
        ("icmp4_time_exceeded", time_exceeded),
        ("icmp6_port_unreachable", port_unreachable6),
        ("icmp6_too_big", too_big6),
        ("fabric_udp4", over_fabric(&udp, ethertype::IPV4, 1)),
        ("fabric_udp6", over_fabric(&udp_v6, ethertype::IPV6, 2)),
        ("fabric_marker", marker()),
    ]
}

/// Conversations: each is one pipeline input.
fn bursts() -> Vec<(&'static str, Vec<u8>)> {
    let syn = frames::tcp4_syn(CLIENT4, VIP4, 40001, 80);
    let ack = frames::tcp4_ack(CLIENT4, VIP4, 40001, 80);
    let request = udp4(CLIENT4, VIP4, 40002, 53);
    let reply = udp4(BACKEND4, CLIENT4, 5353, 40002);
    let request6 = udp6(CLIENT6, VIP6, 40002, 53);
    let reply6 = udp6(BACKEND6, CLIENT6, 5353, 40002);
    let (head, tail) = fragments4(64, 32);
    let mut expiring = udp4(CLIENT4, VIP4, 40003, 53);
    frames::ipv4_set(&mut expiring, 8, 1);
    vec![
        ("burst_tcp_handshake", burst(&[record(0, 0, &syn), record(0, 1, &ack)])),
        (
            "burst_udp_request_reply",
            burst(&[record(0, 0, &request), record(0, 1, &reply)]),
        ),
        (
            "burst_udp6_request_reply",
            burst(&[record(0, 0, &request6), record(0, 1, &reply6)]),
        ),
        (
            "burst_fragments_in_order",
            burst(&[record(0, 0, &head), record(0, 0, &tail)]),
        ),
        (
            "burst_fragments_reordered",
            burst(&[record(0, 0, &tail), record(0, 1, &head)]),
        ),
        (
            "burst_fragment_times_out",
            burst(&[record(0, 0, &tail), record(0, 6, &head)]),
        ),
        ("burst_ttl_expires", burst(&[record(0, 0, &expiring)])),
        (
            "burst_from_the_fabric",
            burst(&[
                record(1, 0, &over_fabric(&request, ethertype::IPV4, 1)),
                record(1, 0, &marker()),
            ]),
        ),
        (
            "burst_flow_expires",
            burst(&[record(0, 0, &request), record(0, 31, &reply), record(0, 31, &request)]),
        ),
    ]
}
