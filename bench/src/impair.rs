//! A relay that forwards frames from one interface to another and impairs
//! chosen bench packets: drops some, swaps others with their successor. The
//! kernel here has no netem; this is how tests prove that the sink detects
//! loss and reordering exactly.

use crate::{capture::CaptureLimits, payload::BenchHeader};
use anyhow::{Context, Result};
use handoff::io::{
    afxdp::{AfXdpConfig, AfXdpPort, BindMode},
    FrameBuf, PacketIo, Verdict,
};
use handoff_common::parse::parse_frame;
use handoff_loader::{AttachMode, XskProgram};
use serde::{Deserialize, Serialize};
use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

/// Which bench packets to impair, by their 0-based arrival index at the relay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Impairment {
    /// Dropped.
    pub drop: BTreeSet<u64>,
    /// Held back and sent right after the next bench packet of the same flow
    /// (a reordering within the flow, which is what the sink must detect).
    pub swap: BTreeSet<u64>,
}

/// What the relay did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayReport {
    /// Frames forwarded.
    pub forwarded: u64,
    /// Bench packets dropped on purpose.
    pub dropped: u64,
    /// Bench packets swapped with their successor.
    pub swapped: u64,
    /// Frames that could not be forwarded (no free TX frame).
    pub failed: u64,
}

fn bench_flow(frame: &[u8]) -> Option<u32> {
    parse_frame(frame)
        .ok()
        .filter(|h| h.has_ports())
        .and_then(|h| frame.get(h.l4_offset + 8..h.l3_end).and_then(BenchHeader::read))
        .map(|h| h.flow)
}

/// Relays from `rx_if` to `tx_if`, rewriting the destination MAC to `dst_mac`.
pub fn relay(
    rx_if: &str,
    tx_if: &str,
    dst_mac: [u8; 6],
    impairment: &Impairment,
    limits: CaptureLimits,
    stop: &AtomicBool,
) -> Result<RelayReport> {
    let config = AfXdpConfig {
        bind_mode: BindMode::Auto,
        ..AfXdpConfig::default()
    };
    let mut rx = AfXdpPort::open(handoff_loader::interface_index(rx_if)?, 0, config.clone())?;
    let mut tx = AfXdpPort::open(handoff_loader::interface_index(tx_if)?, 0, config)?;
    let src_mac = handoff_loader::interface_mac(tx_if)?;
    let mut program = XskProgram::load().context("loading the steering program")?;
    program.register_socket(0, &rx)?;
    program.attach(rx_if, AttachMode::Driver)?;
    let mut report = RelayReport {
        forwarded: 0,
        dropped: 0,
        swapped: 0,
        failed: 0,
    };
    let mut index = 0u64;
    let mut held: Option<(u32, Vec<u8>)> = None;
    let started = Instant::now();
    let mut last = None::<Instant>;
    // A test tool: copying frames keeps the impairment logic simple.
    let mut out: Vec<Vec<u8>> = Vec::with_capacity(64);
    loop {
        if stop.load(Ordering::Relaxed) || started.elapsed() >= limits.max_duration {
            break;
        }
        if let (Some(idle), Some(l)) = (limits.idle, last) {
            if l.elapsed() >= idle {
                break;
            }
        }
        let got = rx.poll_rx(|frame| {
            let bytes = frame.bytes_mut();
            bytes[0..6].copy_from_slice(&dst_mac);
            bytes[6..12].copy_from_slice(&src_mac);
            let flow = bench_flow(bytes);
            let this = flow.map(|_| {
                index += 1;
                index - 1
            });
            match (this, flow) {
                (Some(i), _) if impairment.drop.contains(&i) => report.dropped += 1,
                (Some(i), Some(f)) if impairment.swap.contains(&i) && held.is_none() => {
                    held = Some((f, bytes.to_vec()))
                }
                _ => {
                    out.push(bytes.to_vec());
                    if let (Some(f), Some((held_flow, _))) = (flow, &held) {
                        if *held_flow == f {
                            report.swapped += 1;
                            out.extend(held.take().map(|(_, b)| b));
                        }
                    }
                }
            }
            Verdict::Drop
        });
        for frame in out.drain(..) {
            let mut sent = tx.send(&frame).is_ok();
            let deadline = Instant::now() + Duration::from_millis(100);
            while !sent && Instant::now() < deadline {
                tx.flush()?;
                sent = tx.send(&frame).is_ok();
            }
            if sent {
                report.forwarded += 1;
            } else {
                report.failed += 1;
            }
        }
        tx.flush()?;
        rx.flush()?;
        if got > 0 {
            last = Some(Instant::now());
        } else {
            rx.wait_rx(Duration::from_millis(5))?;
        }
    }
    crate::gen::drain(&mut tx)?;
    Ok(report)
}
