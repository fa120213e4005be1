//! The edge sprayer (US9088584 layer 1, the hash-based forwarding engine).
//!
//! Cluster traffic (destination in `DST_MATCH` or source in `SRC_MATCH`) is
//! hashed on its 5-tuple into a bucket; the active generation of the scope maps
//! the bucket to a member; the frame's MACs are rewritten and it is redirected
//! to the member's egress interface. Everything else goes to the kernel.
//!
//! Cluster traffic a member sent (its source MAC is in `MEMBER_MACS`) is
//! dropped: a node forwards what it cannot serve to its default gateway, the
//! edge, and spraying that again would loop. An ICMP or ICMPv6 error is
//! hashed by the connection of the packet it quotes, so it reaches the
//! member that owns that connection.
#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{macros::xdp, maps::lpm_trie::Key, programs::XdpContext};
use handoff_common::{
    counters::Reason,
    edge::{match_key, MEMBER_ENABLED},
    flow_key::FlowKey,
    hash::{bucket_of, flow_hash, HashMode},
    parse::{icmp_error_key, parse_frame, Headers, PacketBytes},
};
use handoff_ebpf::{action, count, parse_failure_action, XdpFrame};
use maps::*;

#[xdp]
pub fn handoff_edge(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    let (verdict, reason) = spray(&frame);
    count(&REASON_STATS, reason);
    verdict
}

#[inline(always)]
fn spray(frame: &XdpFrame) -> (u32, Reason) {
    let Some(settings) = EDGE_SETTINGS.get(0) else {
        return (action::PASS, Reason::PassNotCluster);
    };
    if settings.ready == 0 {
        return (action::PASS, Reason::PassNotCluster);
    }
    let headers = match parse_frame(frame) {
        Ok(h) => h,
        Err(e) => {
            let reason = Reason::from(e);
            return (parse_failure_action(reason), reason);
        }
    };
    let key = &headers.key;
    let dst = match_key(&key.dst_addr, key.ip_version);
    if LOCAL_ADDRS.get_ptr(dst).is_some() {
        return (action::PASS, Reason::PassLocal);
    }
    if key.is_link_scoped() {
        // Neighbor discovery, multicast, link-local: the edge host's own.
        return (action::PASS, Reason::PassNotCluster);
    }
    let src = match_key(&key.src_addr, key.ip_version);
    let cluster = DST_MATCH.get(Key::new(128, dst)).is_some() || SRC_MATCH.get(Key::new(128, src)).is_some();
    if !cluster {
        return (action::PASS, Reason::PassNotCluster);
    }
    // The source MAC (bytes 6..12): the parser has read past it.
    let from_member = frame
        .load::<[u8; 6]>(6)
        .is_some_and(|src_mac| MEMBER_MACS.get_ptr(src_mac).is_some());
    if from_member {
        return (action::DROP, Reason::DropFromMember);
    }

    let hashed = hash_key(frame, &headers);
    let hash = flow_hash(&hashed.key, HashMode::from_raw(settings.hash_mode), settings.hash_seed);
    let bucket = bucket_of(hash, settings.bucket_mask);
    // One read of the generation: the whole lookup uses a single, complete scope.
    let generation = ACTIVE_GENERATION.get(0).copied().unwrap_or(0) & 1;
    let slot = generation * (settings.bucket_mask + 1) + bucket;
    let Some(&member_id) = SCOPE.get(slot) else {
        return (action::DROP, Reason::DropNoMember);
    };
    let Some(member) = MEMBERS.get(member_id) else {
        return (action::DROP, Reason::DropNoMember);
    };
    if member.flags & MEMBER_ENABLED == 0 {
        return (action::DROP, Reason::DropNoMember);
    }
    if frame.store(0, member.dst_mac).is_none() || frame.store(6, member.src_mac).is_none() {
        return (action::DROP, Reason::DropTruncated);
    }
    let verdict = match EGRESS.redirect(member_id, 0) {
        Ok(v) => v,
        Err(_) => return (action::DROP, Reason::DropRedirectFailed),
    };
    if let Some(stats) = MEMBER_STATS.get_ptr_mut(member_id) {
        // SAFETY: per-CPU slot, touched only by this CPU while XDP runs.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += frame.len() as u64;
        }
    }
    if !hashed.ports {
        count(&REASON_STATS, Reason::SprayedAddressesOnly);
    }
    if let Some(icmp) = hashed.icmp {
        count(&REASON_STATS, icmp);
    }
    (verdict, Reason::Sprayed)
}

/// The key a frame is hashed by, and what the counters say about it.
struct Hashed {
    key: FlowKey,
    /// The key carries ports.
    ports: bool,
    /// For an ICMP error: whether its quote was read.
    icmp: Option<Reason>,
}

/// An ICMP error hashes like the connection its quoted packet belongs to:
/// the quoted key reversed is that connection's key going the error's way.
/// An unreadable quote leaves the error hashed by its own addresses, as any
/// other frame.
#[inline(always)]
fn hash_key(frame: &XdpFrame, headers: &Headers) -> Hashed {
    match icmp_error_key(frame, headers) {
        Ok(None) => Hashed {
            key: headers.key,
            ports: headers.has_ports(),
            icmp: None,
        },
        Ok(Some(quoted)) => Hashed {
            key: quoted.key.reversed(),
            ports: quoted.has_ports(),
            icmp: Some(Reason::SprayedIcmpQuoted),
        },
        Err(_) => Hashed {
            key: headers.key,
            ports: false,
            icmp: Some(Reason::SprayedIcmpBadQuote),
        },
    }
}
