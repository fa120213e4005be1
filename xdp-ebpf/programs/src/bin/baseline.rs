//! The benchmark baseline: rewrite the MACs and redirect, with no parsing, no
//! lookup and no counters. What any XDP forwarder costs at least on this host.
//! Unconfigured, it drops every frame: the benchmarks' null sink.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, xdp},
    maps::{Array, DevMap},
    programs::XdpContext,
};
use handoff_common::edge::Member;
use handoff_ebpf::{action, XdpFrame};

#[map]
static BASELINE_EGRESS: DevMap = DevMap::with_max_entries(1, 0);

#[map]
static BASELINE_MEMBER: Array<Member> = Array::with_max_entries(1, 0);

#[xdp]
pub fn handoff_baseline(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    let Some(member) = BASELINE_MEMBER.get(0) else {
        return action::DROP;
    };
    if member.flags == 0 {
        return action::DROP;
    }
    if frame.store(0, member.dst_mac).is_none() || frame.store(6, member.src_mac).is_none() {
        return action::DROP;
    }
    BASELINE_EGRESS.redirect(0, 0).unwrap_or(action::DROP)
}
