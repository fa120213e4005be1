//! The edge sprayer (US9088584 layer 1, the hash-based forwarding engine).
//!
//! Cluster traffic (destination in `DST_MATCH` or source in `SRC_MATCH`) is
//! hashed on its 5-tuple into a bucket; the active generation of the scope maps
//! the bucket to a member; the frame's MACs are rewritten and it is redirected
//! to the member's egress interface. Everything else goes to the kernel.
#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{macros::xdp, maps::lpm_trie::Key, programs::XdpContext};
use handoff_common::{
    counters::Reason,
    edge::{match_key, MEMBER_ENABLED},
    hash::{bucket_of, flow_hash, HashMode},
    parse::{parse_frame, PacketBytes},
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
    if LOCAL_ADDRS.get_ptr(&dst).is_some() {
        return (action::PASS, Reason::PassLocal);
    }
    let src = match_key(&key.src_addr, key.ip_version);
    let cluster =
        DST_MATCH.get(Key::new(128, dst)).is_some() || SRC_MATCH.get(Key::new(128, src)).is_some();
    if !cluster {
        return (action::PASS, Reason::PassNotCluster);
    }

    let hash = flow_hash(key, HashMode::from_raw(settings.hash_mode), settings.hash_seed);
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
    if !headers.has_ports() {
        count(&REASON_STATS, Reason::SprayedAddressesOnly);
    }
    (verdict, Reason::Sprayed)
}
