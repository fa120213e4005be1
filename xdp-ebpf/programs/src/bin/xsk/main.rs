//! The node's steering program: data-plane frames go to the AF_XDP socket of
//! their RX queue; ARP, multicast and traffic for the host's own addresses
//! (its control plane) go to the kernel.
#![no_std]
#![no_main]

mod maps;

use aya_ebpf::{macros::xdp, programs::XdpContext};
use handoff_common::{
    counters::Reason,
    edge::match_key,
    fabric::FABRIC_ETHERTYPE,
    parse::{parse_ethernet, parse_ip, PacketBytes},
};
use handoff_ebpf::{action, count, parse_failure_action, XdpFrame};
use maps::*;

#[xdp]
pub fn handoff_xsk(ctx: XdpContext) -> u32 {
    let frame = XdpFrame::new(&ctx);
    let (verdict, reason) = steer(&ctx, &frame);
    count(&REASON_STATS, reason);
    verdict
}

#[inline(always)]
fn steer(ctx: &XdpContext, frame: &XdpFrame) -> (u32, Reason) {
    let l2 = match parse_ethernet(frame) {
        Ok(l2) => l2,
        Err(e) => {
            let reason = Reason::from(e);
            return (parse_failure_action(reason), reason);
        }
    };
    // Broadcast and multicast destinations (I/G bit) belong to the kernel.
    match frame.load::<[u8; 2]>(0) {
        Some([first, _]) if first & 1 == 0 => {}
        _ => return (action::PASS, Reason::PassNotCluster),
    }
    if l2.ethertype != FABRIC_ETHERTYPE {
        let headers = match parse_ip(frame, l2) {
            Ok(h) => h,
            Err(e) => {
                let reason = Reason::from(e);
                return (parse_failure_action(reason), reason);
            }
        };
        let dst = match_key(&headers.key.dst_addr, headers.key.ip_version);
        if LOCAL_ADDRS.get_ptr(dst).is_some() {
            return (action::PASS, Reason::PassLocal);
        }
    }
    match XSKS.redirect(ctx.rx_queue_index(), 0) {
        Ok(verdict) => (verdict, Reason::Steered),
        Err(_) => (action::PASS, Reason::PassNoSocket),
    }
}
