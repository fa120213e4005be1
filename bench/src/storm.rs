//! `storm`: a malformed-frame storm. Every frame starts valid, built by
//! `etherparse` ([`crate::frames`]), and is then broken in one way: cut at
//! every header boundary, lying lengths, too many VLAN tags or IPv6
//! extension headers, tiny, overlapping and oversized fragments, fabric
//! frames from a stranger, random bytes. Frames are grouped in named
//! classes and sent as they are on one interface through an `AF_PACKET`
//! socket (packet(7)), paced, bounded in count and time.
//!
//! Each frame knows what it must move in `handoff stats` where it lands
//! ([`Aim`]): the edge sprayer's reason counters (`reasons.*`, one per
//! frame), a node steering program's (`steering.*`), and, for the frames
//! the XDP parser lets through, the node workers' drop counters
//! (`totals.*`, summed over the nodes, since a node may hand a packet to
//! the node owning its flow before it is dropped). The report lists, per
//! class, the frames sent and the counters they move, split into
//! [`StormReport::exact`] (only malformed input moves those: the change
//! must equal the count) and [`StormReport::at_least`] (other traffic
//! moves those too).

use crate::{frames, link_sender::PacketSocket};
use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use handoff_common::{
    counters::Reason,
    fabric::{kind, ANY_WORKER, FABRIC_ETHERTYPE, FABRIC_VERSION},
    net::ethertype,
    parse::{parse_ethernet, parse_frame, ETH_HLEN, MAX_IPV6_EXT_HEADERS, MAX_VLAN_TAGS},
};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::{Duration, Instant},
};

/// Schema name of [`StormReport`].
pub const STORM_SCHEMA: &str = "handoff-storm/1";

/// Source port of every TCP and UDP packet of the storm.
pub const STORM_SRC_PORT: u16 = 40_000;

/// Offset of the IP header in the untagged frames classes are built from.
const L3: usize = frames::L3;
/// IPv4 header without options, IPv6 header without extension headers.
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = handoff_common::parse::IPV6_HLEN;

/// Where the storm is sent: decides which counters its frames move.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Aim {
    /// The edge's ingress interface: the sprayer parses every frame.
    Edge,
    /// A node's interface: its steering program parses every frame.
    Node,
}

/// Arguments of `handoff-bench storm`.
#[derive(Args, Debug, Clone)]
pub struct StormArgs {
    /// Interface to send on.
    #[arg(long)]
    pub interface: String,
    /// Destination MAC of every frame (the edge's or the node's interface).
    #[arg(long, value_parser = crate::link_sender::parse_mac)]
    pub dst_mac: [u8; 6],
    /// What the frames land on.
    #[arg(long, value_enum)]
    pub aim: Aim,
    /// IPv4 source of the frames.
    #[arg(long)]
    pub src4: Ipv4Addr,
    /// IPv4 destination: a cluster address (a VIP), so that the frames
    /// the parser lets through are sprayed.
    #[arg(long)]
    pub dst4: Ipv4Addr,
    /// IPv6 source.
    #[arg(long)]
    pub src6: Ipv6Addr,
    /// IPv6 destination (a VIP).
    #[arg(long)]
    pub dst6: Ipv6Addr,
    /// A destination port no service has: the overlapping fragments'
    /// datagrams go there, so a node drops them as `drop_no_service`.
    #[arg(long, default_value_t = 9)]
    pub closed_port: u16,
    /// Node id the forged fabric frames claim to come from.
    #[arg(long, default_value_t = 1)]
    pub fabric_sender: u16,
    /// Frames of random bytes per round.
    #[arg(long, default_value_t = 64)]
    pub random: u32,
    /// Seed of the random frames (the same seed, the same frames).
    #[arg(long, default_value_t = 0x5eed)]
    pub seed: u64,
    /// How many times every frame is sent.
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Frames per second.
    #[arg(long, default_value_t = 2_000)]
    pub rate: u64,
    /// Stop after this many seconds, whatever is left (reported incomplete).
    #[arg(long, default_value_t = 60.0)]
    pub deadline_s: f64,
    /// Write the report here (else to stdout).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Addresses of the storm's frames.
#[derive(Clone, Copy, Debug)]
pub struct Endpoints {
    /// Source MAC (the sending interface's: no member's).
    pub src_mac: [u8; 6],
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// IPv4 source and destination.
    pub v4: (Ipv4Addr, Ipv4Addr),
    /// IPv6 source and destination.
    pub v6: (Ipv6Addr, Ipv6Addr),
    /// See [`StormArgs::closed_port`].
    pub closed_port: u16,
    /// See [`StormArgs::fabric_sender`].
    pub fabric_sender: u16,
}

/// What a frame does where it lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The XDP parser refuses it: this reason (`drop_*`; `pass_not_ip`
    /// for what is not IP), at the edge and at a node alike.
    Refused(Reason),
    /// Parsed, cluster traffic: the edge sprays it by addresses, a node
    /// steers it to a worker, which drops it for this reason (a field of
    /// `totals`).
    Worker(&'static str),
    /// A fabric frame: not IP to the edge, which passes it to its kernel;
    /// a node steers it to a worker, which drops it for this reason.
    Fabric(&'static str),
    /// Parsed, not cluster traffic (random addresses): the edge passes it;
    /// a node steers it, and what its worker does is not predicted.
    Unpredicted,
}

impl Outcome {
    /// The counters this frame moves where it lands (`section.name`), each
    /// with whether only malformed input moves it (see [`StormReport::exact`]).
    pub fn counters(self, aim: Aim) -> Vec<(String, bool)> {
        let sprayed = ("reasons.sprayed_addresses_only".to_string(), false);
        let steered = ("steering.steered".to_string(), false);
        let worker = |name: &str| (format!("totals.{name}"), true);
        match (self, aim) {
            (Self::Refused(r), Aim::Edge) => vec![(format!("reasons.{}", r.name()), is_drop(r))],
            (Self::Refused(r), Aim::Node) => vec![(format!("steering.{}", r.name()), is_drop(r))],
            (Self::Worker(name), Aim::Edge) => vec![sprayed, worker(name)],
            (Self::Worker(name) | Self::Fabric(name), Aim::Node) => vec![steered, worker(name)],
            (Self::Fabric(_), Aim::Edge) => vec![("reasons.pass_not_ip".to_string(), false)],
            (Self::Unpredicted, Aim::Edge) => vec![("reasons.pass_not_cluster".to_string(), false)],
            (Self::Unpredicted, Aim::Node) => vec![steered],
        }
    }
}

/// Drop reasons only malformed frames reach; the pass reasons count
/// ordinary traffic (ARP, the kernels' own) as well.
fn is_drop(reason: Reason) -> bool {
    matches!(
        reason,
        Reason::DropTruncated | Reason::DropBadHeader | Reason::DropVlanDepth
    )
}

/// One frame of the storm.
#[derive(Clone, Debug)]
pub struct StormFrame {
    /// Its class.
    pub class: &'static str,
    /// The bytes sent, Ethernet header first.
    pub bytes: Vec<u8>,
    /// What it does where it lands.
    pub outcome: Outcome,
}

/// Frames of one class.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClassReport {
    /// Class name.
    pub class: String,
    /// Frames sent.
    pub sent: u64,
    /// Frames whose sending failed (not counted in `sent` nor `counters`).
    pub send_failed: u64,
    /// Counter (`section.name`) → frames of this class sent that move it.
    pub counters: BTreeMap<String, u64>,
}

/// What `handoff-bench storm` sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StormReport {
    /// [`STORM_SCHEMA`].
    pub schema: String,
    /// Where it was aimed (`edge` or `node`).
    pub aim: String,
    /// Interface it was sent on.
    pub interface: String,
    /// Seed of the random frames.
    pub seed: u64,
    /// Frames in one round.
    pub frames_per_round: u64,
    /// Rounds sent whole.
    pub rounds: u32,
    /// Frames sent.
    pub sent: u64,
    /// Every round was sent before the deadline.
    pub complete: bool,
    /// Seconds spent sending.
    pub elapsed_s: f64,
    /// Per class.
    pub classes: Vec<ClassReport>,
    /// Counters only malformed frames move: each must change by exactly
    /// this many (given nothing else malformed was sent meanwhile).
    pub exact: BTreeMap<String, u64>,
    /// Counters other traffic moves too: each must change by at least
    /// this many.
    pub at_least: BTreeMap<String, u64>,
}

/// Every class, in the order sent. Random frames are drawn from `rng`.
pub fn storm_frames(e: &Endpoints, random: u32, rng: &mut fastrand::Rng) -> Vec<StormFrame> {
    let mut out = Vec::new();
    let mut push = |class: &'static str, frames: Vec<Vec<u8>>, outcome: Outcome| {
        out.extend(frames.into_iter().map(|f| StormFrame {
            class,
            bytes: frames::with_macs(&f, e.dst_mac, e.src_mac),
            outcome,
        }));
    };
    let truncated = Outcome::Refused(Reason::DropTruncated);
    let bad = Outcome::Refused(Reason::DropBadHeader);
    let malformed = Outcome::Worker("drop_malformed");

    for family in [Family::V4, Family::V6] {
        let b = Bases::new(e, family);
        let v6 = family == Family::V6;
        let name = |v4: &'static str, v6n: &'static str| if v6 { v6n } else { v4 };
        let l3 = b.ip_hlen;

        // Truncations at every header boundary and inside every header.
        // Past the fixed IP header the IP length is set to the cut, so the
        // frame ends inside the next header rather than the IP header lying.
        push(
            name("trunc-ethernet-v4", "trunc-ethernet-v6"),
            vec![b.udp[..ETH_HLEN].to_vec()],
            truncated,
        );
        let mut tagged = Vec::new();
        for tags in 1..=MAX_VLAN_TAGS {
            let f = frames::with_tags(&b.udp, &[ethertype::QINQ, ethertype::VLAN][..tags]);
            // Inside each tag (its TCI read, the next type missing), and
            // right after the last one.
            for tag in 0..tags {
                tagged.push(f[..ETH_HLEN + 4 * tag + 2].to_vec());
            }
            tagged.push(f[..ETH_HLEN + 4 * tags].to_vec());
        }
        push(name("trunc-vlan-v4", "trunc-vlan-v6"), tagged, truncated);
        let fixed_header = if v6 { vec![1, 7, 8, 39] } else { vec![1, 10, 19] };
        push(
            name("trunc-ip-header-v4", "trunc-ip-header-v6"),
            fixed_header.iter().map(|&n| b.udp[..L3 + n].to_vec()).collect(),
            truncated,
        );
        if v6 {
            // Hop-by-hop (16 bytes), destination options, routing: cut at
            // each one's start and inside its first 8 bytes.
            let chained = frames::with_ipv6_extensions(&b.udp, &[(0, 1), (60, 0), (43, 0)]);
            let starts = [L3 + 40, L3 + 56, L3 + 64];
            let cuts = starts
                .iter()
                .flat_map(|&s| [s, s + 4])
                .map(|n| frames::with_ip_len(&chained[..n]));
            push("trunc-ipv6-extension", cuts.collect(), truncated);
        } else {
            // The options are missing, or cut: the IHL claims more header
            // than the packet has.
            let optioned = frames::with_ipv4_options(&b.udp, 2);
            let cuts = [L3 + 20, L3 + 26].map(|n| frames::with_ip_len(&optioned[..n]));
            push("trunc-ipv4-options", cuts.to_vec(), bad);
        }
        let cut = |frame: &[u8], offsets: &[usize]| -> Vec<Vec<u8>> {
            offsets
                .iter()
                .map(|&n| frames::with_ip_len(&frame[..L3 + l3 + n]))
                .collect()
        };
        push(name("trunc-udp-v4", "trunc-udp-v6"), cut(&b.udp, &[0, 4, 7]), truncated);
        push(
            name("trunc-tcp-v4", "trunc-tcp-v6"),
            cut(&b.tcp, &[0, 10, 19]),
            truncated,
        );
        // The data offset covers options the packet no longer holds.
        push(
            name("trunc-tcp-options-v4", "trunc-tcp-options-v6"),
            cut(&b.tcp, &[20, 32]),
            bad,
        );
        // The parser reads no ICMP header; the node must.
        push(
            name("trunc-icmp-v4", "trunc-icmp-v6"),
            cut(&b.icmp, &[0, 1, 4, 7]),
            malformed,
        );

        // Lying lengths.
        let udp_len = b.udp.len() - L3 - l3;
        let set16 = |frame: &[u8], at: usize, value: u16| {
            let mut f = frame.to_vec();
            f[at..at + 2].copy_from_slice(&value.to_be_bytes());
            if !v6 {
                frames::fix_ipv4_checksum(&mut f);
            }
            f
        };
        let udp_length_at = L3 + l3 + 4;
        push(
            name("udp-length-long-v4", "udp-length-long-v6"),
            vec![
                set16(&b.udp, udp_length_at, udp_len as u16 + 1),
                set16(&b.udp, udp_length_at, u16::MAX),
            ],
            bad,
        );
        push(
            name("udp-length-short-v4", "udp-length-short-v6"),
            vec![set16(&b.udp, udp_length_at, 0), set16(&b.udp, udp_length_at, 7)],
            bad,
        );
        let offset_byte = L3 + l3 + 12;
        let with_offset = |frame: &[u8], words: u8| {
            let mut f = frame.to_vec();
            f[offset_byte] = words << 4;
            f
        };
        push(
            name("tcp-offset-short-v4", "tcp-offset-short-v6"),
            vec![with_offset(&b.tcp, 0), with_offset(&b.tcp, 4)],
            bad,
        );
        // The SYN without options is 20 bytes: 24 and 60 lie beyond.
        push(
            name("tcp-offset-long-v4", "tcp-offset-long-v6"),
            vec![with_offset(&b.tcp_plain, 6), with_offset(&b.tcp_plain, 15)],
            bad,
        );
        let ip_len = (b.udp.len() - L3) as u16;
        if v6 {
            push(
                "ipv6-payload-long",
                vec![set16(&b.udp, L3 + 4, ip_len - 40 + 1), set16(&b.udp, L3 + 4, u16::MAX)],
                bad,
            );
            // Version 4 under the IPv6 EtherType.
            let mut v4_inside = b.udp.clone();
            v4_inside[L3] = 0x40 | (v4_inside[L3] & 0x0f);
            push("ip-version-v6", vec![v4_inside], bad);
        } else {
            let with_ihl = |ihl: u8| {
                let mut f = b.udp.clone();
                frames::ipv4_set(&mut f, 0, 0x40 | ihl);
                f
            };
            push("ipv4-ihl-short", vec![with_ihl(0), with_ihl(1), with_ihl(4)], bad);
            // 44 and 60 bytes of header in a 41-byte packet.
            push("ipv4-ihl-long", vec![with_ihl(11), with_ihl(15)], bad);
            push(
                "ipv4-total-long",
                vec![set16(&b.udp, L3 + 2, ip_len + 1), set16(&b.udp, L3 + 2, u16::MAX)],
                bad,
            );
            push(
                "ipv4-total-short",
                vec![set16(&b.udp, L3 + 2, 0), set16(&b.udp, L3 + 2, IPV4_HLEN as u16 - 1)],
                bad,
            );
            let mut v6_inside = b.udp.clone();
            frames::ipv4_set(&mut v6_inside, 0, 0x65);
            push("ip-version-v4", vec![v6_inside], bad);
        }

        // One tag more than the parser skips, and more still.
        let deep = (MAX_VLAN_TAGS + 1..=MAX_VLAN_TAGS + 3)
            .map(|n| {
                let tpids: Vec<u16> = (0..n)
                    .map(|i| if i == 0 { ethertype::QINQ } else { ethertype::VLAN })
                    .collect();
                frames::with_tags(&b.udp, &tpids)
            })
            .collect();
        push(
            name("vlan-depth-v4", "vlan-depth-v6"),
            deep,
            Outcome::Refused(Reason::DropVlanDepth),
        );

        if v6 {
            // One and two extension headers over the limit, and a header
            // whose length runs past the packet.
            let over: Vec<Vec<u8>> = [MAX_IPV6_EXT_HEADERS + 1, MAX_IPV6_EXT_HEADERS + 2]
                .iter()
                .map(|&n| frames::with_ipv6_extensions(&b.udp, &vec![(60, 0); n]))
                .collect();
            push("ipv6-extensions-over-limit", over, bad);
            let mut long = frames::with_ipv6_extensions(&b.udp, &[(0, 0)]);
            long[L3 + IPV6_HLEN + 1] = u8::MAX;
            push("ipv6-extension-long", vec![long], bad);
        }

        // Fragments (the parser reads no further than their IP headers).
        // Each class has its own Identification, so no class's fragment
        // completes another's datagram.
        let fragment = |frame: &[u8], offset: u16, more: bool, id: u16| {
            if v6 {
                frames::as_ipv6_fragment(frame, offset, more, u32::from(id))
            } else {
                frames::as_ipv4_fragment(&frames::with_ipv4_id(frame, id), more, offset / 8)
            }
        };
        let frag_l4 = L3 + l3 + if v6 { 8 } else { 0 };
        // First fragments with 4 bytes of a UDP header, 12 of a TCP one.
        let tiny_udp = fragment(&b.closed_udp(24), 0, true, 0x5101);
        let tiny_tcp = fragment(&b.tcp_plain, 0, true, 0x5102);
        push(
            name("fragment-tiny-v4", "fragment-tiny-v6"),
            vec![
                frames::with_ip_len(&tiny_udp[..frag_l4 + 4]),
                frames::with_ip_len(&tiny_tcp[..frag_l4 + 12]),
            ],
            malformed,
        );
        // The first 24 bytes, then 16 bytes at offset 8 over them.
        let first = fragment(&b.closed_udp(16), 0, true, 0x5103);
        let overlapping = fragment(&b.closed_udp(8), 8, false, 0x5103);
        push(
            name("fragment-overlap-v4", "fragment-overlap-v6"),
            vec![first, overlapping],
            Outcome::Worker("drop_no_service"),
        );
        // 24 bytes at offset 65,528: the datagram would pass 65,535 bytes.
        let last_offset = 0x1fff * 8;
        push(
            name("fragment-offset-overflow-v4", "fragment-offset-overflow-v6"),
            vec![
                fragment(&b.closed_udp(16), last_offset, false, 0x5104),
                fragment(&b.closed_udp(16), last_offset, true, 0x5105),
            ],
            malformed,
        );
    }

    // Fabric frames from a MAC no member has: a datagram and a drain marker
    // that claim to come from a member.
    let inner = Bases::new(e, Family::V4).closed_udp(8);
    push(
        "fabric-foreign-mac",
        vec![
            fabric_frame(e.fabric_sender, kind::DATA, ethertype::IPV4, &inner[L3..]),
            fabric_frame(e.fabric_sender, kind::MARKER, 0, &[]),
        ],
        Outcome::Fabric("drop_fabric_non_member"),
    );

    // Random bytes after an Ethernet header of an IP or VLAN EtherType.
    let types = [ethertype::IPV4, ethertype::IPV6, ethertype::VLAN, ethertype::QINQ];
    let mut drawn = Vec::new();
    while drawn.len() < random as usize {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&types[rng.usize(..types.len())].to_be_bytes());
        f.extend((0..rng.usize(..=160)).map(|_| rng.u8(..)));
        // Random tags may hide the fabric EtherType: such a frame would
        // be neither refused nor plain IP; draw another.
        if parse_ethernet(f.as_slice()).is_ok_and(|l2| l2.ethertype == FABRIC_ETHERTYPE) {
            continue;
        }
        let outcome = match parse_frame(f.as_slice()) {
            Err(error) => Outcome::Refused(Reason::from(error)),
            Ok(_) => Outcome::Unpredicted,
        };
        drawn.push((f, outcome));
    }
    for (f, outcome) in drawn {
        push("random", vec![f], outcome);
    }
    out
}

/// A fabric frame (`handoff_common::fabric::FabricHeader`, its fields in
/// order, network byte order) of `kind` from node `sender`, carrying
/// `inner` of EtherType `inner_ethertype`; the MACs are set by the caller.
fn fabric_frame(sender: u16, kind: u8, inner_ethertype: u16, inner: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&FABRIC_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(&[FABRIC_VERSION, kind, 0, ANY_WORKER]);
    f.extend_from_slice(&sender.to_be_bytes());
    f.extend_from_slice(&inner_ethertype.to_be_bytes());
    // Serial 1, lane 0 of 1: a marker as a member's last one would read.
    let (serial, lanes) = if kind == kind::MARKER { (1u32, 1u16) } else { (0, 0) };
    f.extend_from_slice(&serial.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.extend_from_slice(&lanes.to_be_bytes());
    f.extend_from_slice(inner);
    f
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

/// The valid untagged frames of one family classes are cut from.
struct Bases {
    family: Family,
    e: Endpoints,
    /// IP header length (no options, no extension headers).
    ip_hlen: usize,
    /// UDP with 13 bytes of payload.
    udp: Vec<u8>,
    /// TCP SYN with 20 bytes of options.
    tcp: Vec<u8>,
    /// TCP SYN without options.
    tcp_plain: Vec<u8>,
    /// ICMP or ICMPv6 echo request.
    icmp: Vec<u8>,
}

impl Bases {
    fn new(e: &Endpoints, family: Family) -> Self {
        let port = STORM_SRC_PORT;
        let payload = b"storm payload";
        let (src, dst): (IpAddr, IpAddr) = match family {
            Family::V4 => (e.v4.0.into(), e.v4.1.into()),
            Family::V6 => (e.v6.0.into(), e.v6.1.into()),
        };
        let tcp = frames::tcp_syn_with_options(src, dst, port, e.closed_port);
        match family {
            Family::V4 => Self {
                family,
                e: *e,
                ip_hlen: IPV4_HLEN,
                udp: frames::udp4(e.v4.0, e.v4.1, port, e.closed_port, payload),
                tcp,
                tcp_plain: frames::tcp4_syn(e.v4.0, e.v4.1, port, e.closed_port),
                icmp: frames::icmp4(e.v4.0, e.v4.1),
            },
            Family::V6 => Self {
                family,
                e: *e,
                ip_hlen: IPV6_HLEN,
                udp: frames::udp6(e.v6.0, e.v6.1, port, e.closed_port, payload),
                tcp,
                tcp_plain: frames::tcp6_syn(e.v6.0, e.v6.1, port, e.closed_port),
                icmp: frames::icmp6(e.v6.0, e.v6.1),
            },
        }
    }

    /// UDP to the closed port with `payload_len` bytes of payload.
    fn closed_udp(&self, payload_len: usize) -> Vec<u8> {
        let payload = vec![0x5a; payload_len];
        let (port, closed) = (STORM_SRC_PORT, self.e.closed_port);
        match self.family {
            Family::V4 => frames::udp4(self.e.v4.0, self.e.v4.1, port, closed, &payload),
            Family::V6 => frames::udp6(self.e.v6.0, self.e.v6.1, port, closed, &payload),
        }
    }
}

/// Sends the storm: every frame of [`storm_frames`] `args.rounds` times,
/// paced at `args.rate`, until done or `args.deadline_s` passed.
///
/// # Errors
/// The socket cannot be opened (needs CAP_NET_RAW), or the arguments are
/// out of range. A frame that fails to send is counted, not an error.
pub fn run(args: &StormArgs) -> Result<StormReport> {
    if args.rate == 0 || args.rounds == 0 {
        bail!("--rate and --rounds must be at least 1");
    }
    let socket = PacketSocket::open(&args.interface)?;
    let endpoints = Endpoints {
        src_mac: socket.mac(),
        dst_mac: args.dst_mac,
        v4: (args.src4, args.dst4),
        v6: (args.src6, args.dst6),
        closed_port: args.closed_port,
        fabric_sender: args.fabric_sender,
    };
    let mut rng = fastrand::Rng::with_seed(args.seed);
    let storm = storm_frames(&endpoints, args.random, &mut rng);
    let mut classes: Vec<ClassReport> = Vec::new();
    let gap = Duration::from_secs_f64(1.0 / args.rate as f64);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.deadline_s);
    let mut next = start;
    let mut rounds = 0;
    'rounds: for _ in 0..args.rounds {
        for frame in &storm {
            let now = Instant::now();
            if now >= deadline {
                break 'rounds;
            }
            if next > now {
                std::thread::sleep(next - now);
            }
            next += gap;
            let index = match classes.iter().position(|c| c.class == frame.class) {
                Some(i) => i,
                None => {
                    classes.push(ClassReport {
                        class: frame.class.to_string(),
                        ..ClassReport::default()
                    });
                    classes.len() - 1
                }
            };
            let class = &mut classes[index];
            if socket.send(&frame.bytes, args.dst_mac).is_err() {
                class.send_failed += 1;
                continue;
            }
            class.sent += 1;
            for (counter, _) in frame.outcome.counters(args.aim) {
                *class.counters.entry(counter).or_default() += 1;
            }
        }
        rounds += 1;
    }
    let exactness: BTreeMap<String, bool> = storm.iter().flat_map(|f| f.outcome.counters(args.aim)).collect();
    let mut exact = BTreeMap::new();
    let mut at_least = BTreeMap::new();
    for class in &classes {
        for (counter, n) in &class.counters {
            let into = if exactness[counter] { &mut exact } else { &mut at_least };
            *into.entry(counter.clone()).or_default() += n;
        }
    }
    Ok(StormReport {
        schema: STORM_SCHEMA.to_string(),
        aim: format!("{:?}", args.aim).to_lowercase(),
        interface: args.interface.clone(),
        seed: args.seed,
        frames_per_round: storm.len() as u64,
        rounds,
        sent: classes.iter().map(|c| c.sent).sum(),
        complete: rounds == args.rounds,
        elapsed_s: start.elapsed().as_secs_f64(),
        classes,
        exact,
        at_least,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_common::parse::ParseError;

    fn endpoints() -> Endpoints {
        Endpoints {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            v4: (Ipv4Addr::new(10, 77, 0, 2), Ipv4Addr::new(10, 77, 9, 1)),
            v6: ("fd77::2".parse().unwrap(), "fd77:9::1".parse().unwrap()),
            closed_port: 9,
            fabric_sender: 1,
        }
    }

    fn storm() -> Vec<StormFrame> {
        storm_frames(&endpoints(), 200, &mut fastrand::Rng::with_seed(7))
    }

    /// The XDP programs run this very parser: each class's frames must get
    /// from it what the class says, or the class (or the parser) is wrong.
    #[test]
    fn every_frame_gets_from_the_parser_the_outcome_its_class_names() {
        for frame in storm() {
            let parsed = parse_frame(frame.bytes.as_slice());
            let l2 = parse_ethernet(frame.bytes.as_slice());
            match frame.outcome {
                Outcome::Refused(reason) => {
                    assert_eq!(parsed.map(|_| ()).map_err(Reason::from), Err(reason), "{}", frame.class)
                }
                Outcome::Worker(_) => {
                    let h = parsed.unwrap_or_else(|e| panic!("{}: {e:?}", frame.class));
                    // Not every packet the parser takes is whole: these
                    // are left to the node's worker.
                    assert!(h.fragment || !h.has_ports(), "{}", frame.class);
                }
                Outcome::Fabric(_) => {
                    assert_eq!(parsed.err(), Some(ParseError::NotIp), "{}", frame.class);
                    assert_eq!(l2.map(|l| l.ethertype), Ok(FABRIC_ETHERTYPE), "{}", frame.class);
                }
                Outcome::Unpredicted => assert!(parsed.is_ok(), "{}", frame.class),
            }
            assert!(frame.bytes.len() >= ETH_HLEN, "{}", frame.class);
            assert_eq!(&frame.bytes[..6], &endpoints().dst_mac, "{}", frame.class);
        }
    }

    #[test]
    fn the_storm_covers_every_class_both_families_and_every_drop_reason() {
        let storm = storm();
        let mut classes: Vec<&str> = storm.iter().map(|f| f.class).collect();
        classes.dedup();
        for needed in [
            "trunc-ethernet-v4",
            "trunc-vlan-v6",
            "trunc-ip-header-v6",
            "trunc-ipv4-options",
            "trunc-ipv6-extension",
            "trunc-udp-v4",
            "trunc-tcp-v6",
            "trunc-tcp-options-v4",
            "trunc-icmp-v6",
            "ipv4-ihl-short",
            "ipv4-ihl-long",
            "ipv4-total-long",
            "ipv4-total-short",
            "udp-length-long-v6",
            "udp-length-short-v4",
            "tcp-offset-short-v4",
            "tcp-offset-long-v6",
            "vlan-depth-v4",
            "ipv6-extensions-over-limit",
            "fragment-tiny-v6",
            "fragment-overlap-v4",
            "fragment-offset-overflow-v6",
            "fabric-foreign-mac",
            "random",
        ] {
            assert!(classes.contains(&needed), "{needed} missing from {classes:?}");
        }
        let refused: Vec<Reason> = storm
            .iter()
            .filter_map(|f| match f.outcome {
                Outcome::Refused(r) => Some(r),
                _ => None,
            })
            .collect();
        for reason in [Reason::DropTruncated, Reason::DropBadHeader, Reason::DropVlanDepth] {
            assert!(refused.contains(&reason), "{reason:?}");
        }
    }

    #[test]
    fn the_same_seed_draws_the_same_random_frames_and_another_does_not() {
        let random = |seed| -> Vec<Vec<u8>> {
            storm_frames(&endpoints(), 50, &mut fastrand::Rng::with_seed(seed))
                .into_iter()
                .filter(|f| f.class == "random")
                .map(|f| f.bytes)
                .collect()
        };
        assert_eq!(random(1).len(), 50);
        assert_eq!(random(1), random(1));
        assert_ne!(random(1), random(2));
    }

    #[test]
    fn outcomes_map_to_the_counters_of_their_aim() {
        let truncated = Outcome::Refused(Reason::DropTruncated);
        assert_eq!(
            truncated.counters(Aim::Edge),
            [("reasons.drop_truncated".to_string(), true)]
        );
        assert_eq!(
            truncated.counters(Aim::Node),
            [("steering.drop_truncated".to_string(), true)]
        );
        let not_ip = Outcome::Refused(Reason::PassNotIp);
        assert_eq!(not_ip.counters(Aim::Edge), [("reasons.pass_not_ip".to_string(), false)]);
        assert_eq!(
            Outcome::Worker("drop_malformed").counters(Aim::Edge),
            [
                ("reasons.sprayed_addresses_only".to_string(), false),
                ("totals.drop_malformed".to_string(), true)
            ]
        );
        assert_eq!(
            Outcome::Fabric("drop_bad_fabric").counters(Aim::Node),
            [
                ("steering.steered".to_string(), false),
                ("totals.drop_bad_fabric".to_string(), true)
            ]
        );
    }
}
