//! `handoff-bench`: the generator, the sink and the service workloads.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use handoff::io::afxdp::BindMode;
use handoff_bench::{
    capture::{capture, CaptureBackend, CaptureLimits},
    flows::{FlowSet, FrameBuilder},
    gen::{self, GenBackend, GenConfig},
    report::SinkReport,
};
use handoff_loader::AttachMode;
use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

#[derive(Parser, Debug)]
#[command(
    name = "handoff-bench",
    version,
    about = "handoff's packet generator, sink and service workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send UDP over N flows, each packet carrying flow id, sequence and send time.
    Gen(GenArgs),
    /// Count received bench packets per flow: loss, reordering, duplicates, latency.
    Sink(SinkArgs),
    /// Generator and sink on one interface: send to the cluster, count the echoes.
    Traffic(TrafficArgs),
    /// Relay between two interfaces, dropping and swapping chosen bench packets.
    Impair(ImpairArgs),
    /// Hold the baseline XDP program on an interface until stopped: redirect
    /// everything to --out with --dst-mac, or drop everything (a null sink).
    Baseline(BaselineArgs),
    /// Echo every UDP datagram back to its sender (a service node's workload).
    UdpEcho(handoff_bench::echo::UdpEchoArgs),
    /// Serve length-prefixed request/response frames over TCP.
    TcpServer(handoff_bench::tcp::TcpServerArgs),
    /// Open many TCP connections, each a checked request/response loop.
    TcpClient(handoff_bench::tcp::TcpClientArgs),
    /// Send one datagram of every size in a range to a UDP echo server and
    /// check each comes back whole (exits non-zero unless all do).
    UdpProbe(handoff_bench::udp_probe::UdpProbeArgs),
    /// Send malformed frames of every class (cut headers, lying lengths,
    /// deep VLAN stacks, long IPv6 extension chains, bad fragments, forged
    /// fabric frames, random bytes) and report, per class, what they must
    /// move in `handoff stats`.
    Storm(handoff_bench::storm::StormArgs),
}

#[derive(Args, Debug)]
struct BaselineArgs {
    /// Interface to attach to.
    #[arg(long)]
    interface: String,
    /// Egress interface; omit to drop every frame.
    #[arg(long, requires = "dst_mac")]
    out: Option<String>,
    /// Destination MAC of redirected frames.
    #[arg(long, value_parser = handoff_bench::link_sender::parse_mac)]
    dst_mac: Option<[u8; 6]>,
    /// XDP attach mode.
    #[arg(long, default_value = "driver")]
    xdp_mode: AttachMode,
}

#[derive(Args, Debug)]
struct TrafficArgs {
    #[command(flatten)]
    gen: GenArgs,
    /// XDP attach mode for the steering program.
    #[arg(long, default_value = "driver")]
    xdp_mode: AttachMode,
    /// Seconds without an echo, after sending ends, before reporting.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Include per-flow counters in the sink report.
    #[arg(long)]
    per_flow: bool,
    /// Write the sink report here (the generator report goes to --json).
    #[arg(long)]
    sink_json: Option<PathBuf>,
    /// Addresses whose traffic stays with the kernel (so kernel sockets on
    /// this interface keep working beside the generator), repeatable.
    #[arg(long)]
    local_address: Vec<std::net::IpAddr>,
}

#[derive(Args, Debug)]
struct ImpairArgs {
    /// Interface to receive on.
    #[arg(long)]
    rx: String,
    /// Interface to send on.
    #[arg(long)]
    tx: String,
    /// Destination MAC of relayed frames.
    #[arg(long, value_parser = handoff_bench::link_sender::parse_mac)]
    dst_mac: [u8; 6],
    /// Bench packet indices to drop, comma separated.
    #[arg(long, value_delimiter = ',')]
    drop: Vec<u64>,
    /// Bench packet indices to swap with their successor, comma separated.
    #[arg(long, value_delimiter = ',')]
    swap: Vec<u64>,
    /// Stop after this many idle seconds once traffic has started.
    #[arg(long, default_value_t = 2.0)]
    idle: f64,
    /// Seconds to run at most.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GenBackendArg {
    AfXdp,
    RawSocket,
    None,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SinkBackendArg {
    AfXdp,
    Packet,
}

#[derive(Args, Debug)]
struct FlowArgs {
    /// Number of flows (distinct 5-tuples).
    #[arg(long, default_value_t = 1000)]
    flows: u32,
    /// First source address (flows beyond one port range use the next addresses).
    #[arg(long, default_value = "10.77.0.2")]
    src: Ipv4Addr,
    /// First source port.
    #[arg(long, default_value_t = 1024)]
    first_port: u16,
    /// Destination address.
    #[arg(long, default_value = "10.77.9.1")]
    dst: Ipv4Addr,
    /// Destination port.
    #[arg(long, default_value_t = 7000)]
    dst_port: u16,
}

impl FlowArgs {
    fn flow_set(&self) -> FlowSet {
        FlowSet {
            count: self.flows,
            src_base: self.src,
            first_port: self.first_port,
            dst: self.dst,
            dst_port: self.dst_port,
        }
    }
}

#[derive(Args, Debug)]
struct GenArgs {
    #[command(flatten)]
    flows: FlowArgs,
    /// Interface to send on (AF_XDP backend).
    #[arg(long)]
    interface: Option<String>,
    #[arg(long, value_enum, default_value = "af-xdp")]
    backend: GenBackendArg,
    /// Queues to send on (AF_XDP), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    queues: Vec<u32>,
    /// AF_XDP bind mode.
    #[arg(long, default_value = "auto", value_parser = parse_bind_mode)]
    bind_mode: BindMode,
    /// Frame size in bytes without FCS (60 to 1514).
    #[arg(long, default_value_t = 60)]
    frame_size: usize,
    /// Packets to send.
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    /// Seconds to send at most.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Packets per second; omit for as fast as possible.
    #[arg(long)]
    rate: Option<u64>,
    /// Destination MAC (the next hop). Resolved from --next-hop if omitted.
    #[arg(long, value_parser = handoff_bench::link_sender::parse_mac)]
    dst_mac: Option<[u8; 6]>,
    /// Source MAC of the frames (the sending host's). Default: the
    /// interface's (af-xdp), 02:00:00:00:00:01 (none: a capture only).
    #[arg(long, value_parser = handoff_bench::link_sender::parse_mac)]
    src_mac: Option<[u8; 6]>,
    /// Next-hop address whose MAC to resolve (AF_XDP backend).
    #[arg(long)]
    next_hop: Option<Ipv4Addr>,
    /// Also write the traffic to this pcap file.
    #[arg(long)]
    pcap: Option<PathBuf>,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct SinkArgs {
    /// Interface to receive on.
    #[arg(long)]
    interface: String,
    #[arg(long, value_enum, default_value = "af-xdp")]
    backend: SinkBackendArg,
    /// Queues to receive on (AF_XDP), comma separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    queues: Vec<u32>,
    /// XDP attach mode for the steering program.
    #[arg(long, default_value = "driver")]
    xdp_mode: AttachMode,
    /// AF_XDP bind mode.
    #[arg(long, default_value = "auto", value_parser = parse_bind_mode)]
    bind_mode: BindMode,
    /// Flows the generator uses (flow ids at or above are counted as unknown).
    #[arg(long, default_value_t = 1000)]
    flows: u32,
    /// Seconds to run at most.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Stop after this many idle seconds once traffic has started.
    #[arg(long)]
    idle: Option<f64>,
    /// Packets the generator sent, to report exact loss.
    #[arg(long)]
    sent: Option<u64>,
    /// Include per-flow counters in the JSON.
    #[arg(long)]
    per_flow: bool,
    /// Write the JSON report here instead of stdout.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn parse_bind_mode(s: &str) -> Result<BindMode, String> {
    match s {
        "auto" => Ok(BindMode::Auto),
        "copy" => Ok(BindMode::Copy),
        "zero-copy" => Ok(BindMode::ZeroCopy),
        _ => Err(format!("unknown bind mode {s:?} (auto, copy, zero-copy)")),
    }
}

/// The MAC of `next_hop` from the kernel's neighbor table, prompting ARP with
/// one datagram to the discard port if needed.
fn resolve_mac(next_hop: Ipv4Addr) -> Result<[u8; 6]> {
    let lookup = || -> Option<[u8; 6]> {
        let table = std::fs::read_to_string("/proc/net/arp").ok()?;
        table.lines().skip(1).find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&next_hop.to_string().as_str()) && cols.get(2) != Some(&"0x0"))
                .then(|| cols.get(3).and_then(|m| handoff_bench::link_sender::parse_mac(m).ok()))
                .flatten()
        })
    };
    if let Some(mac) = lookup() {
        return Ok(mac);
    }
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")?;
    for _ in 0..20 {
        let _ = probe.send_to(&[0], (next_hop, 9));
        std::thread::sleep(Duration::from_millis(50));
        if let Some(mac) = lookup() {
            return Ok(mac);
        }
    }
    bail!("could not resolve the MAC of {next_hop}: pass --dst-mac")
}

fn write_json<T: serde::Serialize>(value: &T, path: Option<&PathBuf>) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    match path {
        Some(p) => std::fs::write(p, text + "\n").with_context(|| format!("writing {}", p.display())),
        None => {
            println!("{text}");
            Ok(())
        }
    }
}

fn positive_seconds(value: f64, flag: &str) -> Result<Duration> {
    if !value.is_finite() || value <= 0.0 {
        bail!("{flag} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(value))
}

fn gen_setup(args: &GenArgs) -> Result<(GenConfig, GenBackend)> {
    let flows = args.flows.flow_set();
    let (backend, src_mac, dst_mac) = match args.backend {
        GenBackendArg::AfXdp => {
            let ifname = args
                .interface
                .as_deref()
                .context("--interface is required for the af-xdp backend")?;
            let ifindex = handoff_loader::interface_index(ifname)?;
            let src_mac = match args.src_mac {
                Some(mac) => mac,
                None => handoff_loader::interface_mac(ifname)?,
            };
            let dst_mac = match (args.dst_mac, args.next_hop) {
                (Some(mac), _) => mac,
                (None, Some(hop)) => resolve_mac(hop)?,
                (None, None) => bail!("the af-xdp backend needs --dst-mac or --next-hop"),
            };
            (
                GenBackend::AfXdp {
                    ifindex,
                    queues: args.queues.clone(),
                    bind_mode: args.bind_mode,
                },
                src_mac,
                dst_mac,
            )
        }
        GenBackendArg::RawSocket => (GenBackend::RawSocket, [0; 6], [0; 6]),
        GenBackendArg::None => (
            GenBackend::None,
            args.src_mac.unwrap_or([0x02, 0, 0, 0, 0, 1]),
            args.dst_mac.unwrap_or([0x02, 0, 0, 0, 0, 2]),
        ),
    };
    let config = GenConfig {
        frames: FrameBuilder::new(flows, args.frame_size, src_mac, dst_mac)?,
        count: args.count,
        duration: positive_seconds(args.duration, "--duration")?,
        rate: args.rate,
        pcap: args.pcap.clone(),
    };
    Ok((config, backend))
}

fn gen_command(args: GenArgs) -> Result<()> {
    let (config, backend) = gen_setup(&args)?;
    let stop = handoff::shutdown::stop_on_signals()?;
    let report = gen::run(&config, &backend, &stop)?;
    eprintln!(
        "gen: sent {} packets over {} flows in {:.2}s = {:.0} pps ({} backend, {}-byte frames)",
        report.sent, report.flows, report.duration_s, report.rate_pps, report.backend, report.frame_len
    );
    write_json(&report, args.json.as_ref())
}

fn print_sink(report: &SinkReport) {
    eprintln!(
        "sink: received {} (lost {}, reordered {}, duplicated {}) over {} flows, {:.0} pps, latency p50 {:.1}us p99 {:.1}us",
        report.received,
        report.lost.map_or("unknown".to_string(), |l| l.to_string()),
        report.reordered,
        report.duplicated,
        report.flows_seen,
        report.rate_pps,
        report.latency_us.p50,
        report.latency_us.p99
    );
}

fn traffic_command(args: TrafficArgs) -> Result<()> {
    let (config, backend) = gen_setup(&args.gen)?;
    let GenBackend::AfXdp { bind_mode, .. } = backend else {
        bail!("traffic needs the af-xdp backend");
    };
    let ifname = args.gen.interface.clone().context("--interface is required")?;
    let limits = CaptureLimits {
        max_duration: config.duration + positive_seconds(args.idle, "--idle")? + Duration::from_secs(30),
        idle: Some(positive_seconds(args.idle, "--idle")?),
    };
    let stop = handoff::shutdown::stop_on_signals()?;
    eprintln!("traffic: ready on {ifname}");
    let (gen, sink) = handoff_bench::traffic::run_traffic(
        &ifname,
        &handoff_bench::traffic::Steering {
            mode: args.xdp_mode,
            bind_mode,
            local_addresses: args.local_address,
        },
        &config,
        limits,
        args.per_flow,
        &stop,
    )?;
    eprintln!(
        "gen: sent {} packets in {:.2}s = {:.0} pps",
        gen.sent, gen.duration_s, gen.rate_pps
    );
    print_sink(&sink);
    write_json(&gen, args.gen.json.as_ref())?;
    write_json(&sink, args.sink_json.as_ref())
}

fn storm_command(args: handoff_bench::storm::StormArgs) -> Result<()> {
    let report = handoff_bench::storm::run(&args)?;
    let failed: u64 = report.classes.iter().map(|c| c.send_failed).sum();
    eprintln!(
        "storm at the {} on {}: {} frames in {} classes, {} rounds of {} in {:.1} s, {failed} failed to send{}",
        report.aim,
        report.interface,
        report.sent,
        report.classes.len(),
        report.rounds,
        report.frames_per_round,
        report.elapsed_s,
        if report.complete {
            ""
        } else {
            ", stopped at the deadline"
        }
    );
    write_json(&report, args.json.as_ref())
}

fn udp_probe_command(args: handoff_bench::udp_probe::UdpProbeArgs) -> Result<()> {
    let report = handoff_bench::udp_probe::run(&args)?;
    eprintln!(
        "udp-probe {}: {} of {} sizes echoed ({} after a retry), {} unexpected datagrams, max rtt {} us, failed sizes {:?}",
        report.target,
        report.echoed,
        report.probed,
        report.retried,
        report.unexpected,
        report.max_rtt_us,
        report.failed.iter().take(20).collect::<Vec<_>>()
    );
    write_json(&report, args.json.as_ref())?;
    if !report.ok() {
        bail!(
            "{} sizes not echoed, {} not tried (first failures: {:?})",
            report.failed.len(),
            report.not_tried,
            report.failures.iter().take(5).collect::<Vec<_>>()
        );
    }
    Ok(())
}

fn impair_command(args: ImpairArgs) -> Result<()> {
    let impairment = handoff_bench::impair::Impairment {
        drop: args.drop.iter().copied().collect(),
        swap: args.swap.iter().copied().collect(),
    };
    let limits = CaptureLimits {
        max_duration: positive_seconds(args.duration, "--duration")?,
        idle: Some(positive_seconds(args.idle, "--idle")?),
    };
    let stop = handoff::shutdown::stop_on_signals()?;
    eprintln!("impair: ready on {} -> {}", args.rx, args.tx);
    let report = handoff_bench::impair::relay(&args.rx, &args.tx, args.dst_mac, &impairment, limits, &stop)?;
    eprintln!(
        "impair: forwarded {}, dropped {}, swapped {}",
        report.forwarded, report.dropped, report.swapped
    );
    write_json(&report, args.json.as_ref())
}

fn baseline_command(args: BaselineArgs) -> Result<()> {
    let mut program = handoff_loader::BaselineProgram::load()?;
    if let (Some(out), Some(dst_mac)) = (&args.out, args.dst_mac) {
        program.set_target(
            dst_mac,
            handoff_loader::interface_mac(out)?,
            handoff_loader::interface_index(out)?,
        )?;
    }
    program.attach(&args.interface, args.xdp_mode)?;
    let stop = handoff::shutdown::stop_on_signals()?;
    eprintln!("baseline: ready on {}", args.interface);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn sink_command(args: SinkArgs) -> Result<()> {
    let backend = match args.backend {
        SinkBackendArg::AfXdp => CaptureBackend::AfXdp {
            queues: args.queues.clone(),
            mode: args.xdp_mode,
            bind_mode: args.bind_mode,
        },
        SinkBackendArg::Packet => CaptureBackend::Packet,
    };
    let limits = CaptureLimits {
        max_duration: positive_seconds(args.duration, "--duration")?,
        idle: args
            .idle
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64),
    };
    let stop = handoff::shutdown::stop_on_signals()?;
    // Readiness line for scripts and tests: the sink is receiving from here on.
    eprintln!("sink: ready on {}", args.interface);
    let captured = capture(&args.interface, &backend, args.flows, limits, &stop)?;
    let report: SinkReport = captured.sink.report(captured.active_s, args.sent, args.per_flow);
    print_sink(&report);
    write_json(&report, args.json.as_ref())
}

fn udp_echo_command(args: handoff_bench::echo::UdpEchoArgs) -> Result<()> {
    let server = handoff_bench::echo::UdpEchoServer::bind(&args)?;
    let stop = handoff::shutdown::stop_on_signals()?;
    eprintln!("udp-echo: ready on {:?}", server.local_addrs()?);
    let report = server.run(&stop)?;
    eprintln!(
        "udp-echo: received {}, echoed {}, errors {}",
        report.received, report.echoed, report.errors
    );
    write_json(&report, args.json.as_ref())
}

fn tcp_server_command(args: handoff_bench::tcp::TcpServerArgs) -> Result<()> {
    let server = handoff_bench::tcp::TcpServer::bind(&args)?;
    let stop = handoff::shutdown::stop_on_signals()?;
    eprintln!("tcp-server: ready on {}", server.local_addr()?);
    let report = server.run(&stop)?;
    eprintln!(
        "tcp-server: accepted {}, responses {}, reset {}",
        report.accepted, report.responses, report.reset
    );
    write_json(&report, args.json.as_ref())
}

fn tcp_client_command(args: handoff_bench::tcp::TcpClientArgs) -> Result<()> {
    let stop = handoff::shutdown::stop_on_signals()?;
    let report = handoff_bench::tcp::run_tcp_client(&args, &stop)?;
    eprintln!(
        "tcp-client: {} of {} connections completed, reset {}, timed out {}",
        report.completed, report.connections, report.reset, report.timed_out
    );
    write_json(&report, args.json.as_ref())?;
    if !report.ok() {
        bail!("not every connection completed");
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Gen(args) => gen_command(args),
        Command::Sink(args) => sink_command(args),
        Command::Traffic(args) => traffic_command(args),
        Command::Impair(args) => impair_command(args),
        Command::Baseline(args) => baseline_command(args),
        Command::UdpEcho(args) => udp_echo_command(args),
        Command::TcpServer(args) => tcp_server_command(args),
        Command::TcpClient(args) => tcp_client_command(args),
        Command::UdpProbe(args) => udp_probe_command(args),
        Command::Storm(args) => storm_command(args),
    }
}
