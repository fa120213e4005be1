//! Generator and sink in one process on one AF_XDP socket: what the client
//! of the test bed runs when traffic goes out to the cluster and the echo
//! comes back on the same interface (one socket per queue cannot be shared
//! between two processes).

use crate::{
    capture::CaptureLimits,
    gen::{drain, GenConfig, PacedSender},
    report::{GenReport, SinkReport, GEN_SCHEMA},
    sink::{now_ns, Sink},
};
use anyhow::{Context, Result};
use handoff::io::{
    afxdp::{AfXdpConfig, AfXdpPort, BindMode},
    FrameBuf, PacketIo, Verdict,
};
use handoff_loader::{AttachMode, XskProgram};
use std::{
    sync::atomic::AtomicBool,
    time::{Duration, Instant},
};

/// How the client's interface is attached.
#[derive(Clone, Debug)]
pub struct Steering {
    /// XDP attach mode.
    pub mode: AttachMode,
    /// AF_XDP binding.
    pub bind_mode: BindMode,
    /// Addresses whose frames go to the kernel instead of the sink.
    pub local_addresses: Vec<std::net::IpAddr>,
}

/// Sends `config` out of `ifname` queue 0 and accounts every frame that comes
/// back; frames for `local_addresses` stay with the kernel. Receiving goes on after sending until `limits.idle` passes without a
/// frame (or `limits.max_duration` in all).
pub fn run_traffic(
    ifname: &str,
    steering: &Steering,
    config: &GenConfig,
    limits: CaptureLimits,
    per_flow: bool,
    stop: &AtomicBool,
) -> Result<(GenReport, SinkReport)> {
    let ifindex = handoff_loader::interface_index(ifname)?;
    let mut program = XskProgram::load().context("loading the steering program")?;
    for addr in &steering.local_addresses {
        program.add_local_address(*addr)?;
    }
    let mut port = AfXdpPort::open(
        ifindex,
        0,
        AfXdpConfig {
            bind_mode: steering.bind_mode,
            ..AfXdpConfig::default()
        },
    )?;
    program.register_socket(0, &port)?;
    program.attach(ifname, steering.mode)?;
    let mut sink = Sink::new(config.frames.flows().count);
    let mut sender = PacedSender::whole(config);
    let started = Instant::now();
    let mut send_done: Option<Instant> = None;
    let mut last_rx = Instant::now();
    let (mut first_rx, mut final_rx) = (None, None);
    let idle = limits.idle.unwrap_or(Duration::from_secs(2));
    loop {
        let sending = !sender.done(stop);
        if sending {
            sender.step(&mut port)?;
        } else if send_done.is_none() {
            send_done = Some(Instant::now());
        }
        let now = now_ns();
        let got = port.poll_rx(|frame| {
            sink.frame(frame.bytes(), now);
            Verdict::Drop
        });
        port.flush()?;
        if got > 0 {
            last_rx = Instant::now();
            first_rx.get_or_insert(last_rx);
            final_rx = Some(last_rx);
        }
        let quiet_since_send = send_done.is_some_and(|t| t.elapsed() >= idle && last_rx.elapsed() >= idle);
        if quiet_since_send || started.elapsed() >= limits.max_duration {
            break;
        }
        if got == 0 && !sending {
            port.wait_rx(Duration::from_millis(10))?;
        } else if got == 0 {
            std::thread::sleep(Duration::from_micros(20));
        }
    }
    drain(&mut port)?;
    let send_s = send_done
        .unwrap_or_else(Instant::now)
        .duration_since(started)
        .as_secs_f64();
    let gen = GenReport {
        schema: GEN_SCHEMA.to_string(),
        backend: "af_xdp".to_string(),
        sent: sender.sent(),
        flows: config.frames.flows().count,
        frame_len: config.frames.frame_len(),
        duration_s: send_s,
        rate_pps: if send_s > 0.0 {
            sender.sent() as f64 / send_s
        } else {
            0.0
        },
        target_pps: config.rate,
        backpressure_waits: sender.waits(),
    };
    let active_s = match (first_rx, final_rx) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    };
    Ok((gen, sink.report(active_s, Some(sender.sent()), per_flow)))
}
