//! `make bench`, service path: the same generated UDP traffic through the
//! test bed's service path, with the flow-distributor node being either
//!
//! * handoff: `handoff node` (AF_XDP, per-core flow table, DNAT with
//!   incremental checksums, owner lookups), or
//! * nftables: the Linux kernel forwarding with an nftables DNAT rule and
//!   conntrack, what an operator would otherwise deploy.
//!
//! `client ── edge (XDP sprayer) ── fd-a ── svc-1 (AF_XDP sink)`. The
//! generator offers more than either node can forward, so the sink's rate is
//! the node's forwarding rate. Rounds alternate between the two and the
//! medians are compared: the ratio is what holds on a shared, noisy host.
//!
//! Then bulk TCP with real programs: `iperf3 -c VIP -P 8` from the client
//! to `iperf3 -s` on svc-1, through each node kind in alternating rounds
//! (`HANDOFF_BENCH_TCP_SECONDS` per run, 10 by default). Each path is the
//! one its operator would build: through handoff the service's replies go
//! back through the edge, which sprays them to the node (which undoes the
//! DNAT); through nftables they are routed to fd-a, whose conntrack undoes
//! it.
//! Results: a table on stdout and `results/service-path.json`.

use anyhow::{bail, Context, Result};
use handoff_bench::{
    measure,
    report::{GenReport, SinkReport},
};
use handoff_testbed::{
    cluster::{read_json, CLIENT_NET, VIP},
    netns::mac_string,
    privilege::missing_privilege,
    real::{iperf3_client_args, parse_iperf3},
    service_path::{IPERF_PORT, UDP_PORT},
    Cluster, ClusterSpec, NsRef,
};
use serde::Serialize;
use std::{path::PathBuf, time::Duration};

const FLOWS: u32 = 10_000;
/// Offered load: above what either node forwards on this kind of host.
const OFFERED_PPS: u64 = 2_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum NodeKind {
    Handoff,
    Nftables,
}

#[derive(Debug, Serialize)]
struct Run {
    node: NodeKind,
    sent: u64,
    generator_pps: f64,
    received: u64,
    forwarded_pps: f64,
    reordered: u64,
}

/// Turns fd-a into a kernel router that DNATs the VIP's UDP port and its
/// iperf3 port to svc-1.
fn kernel_dnat(cluster: &Cluster) -> Result<()> {
    let node = &cluster.nodes[0];
    let svc = &cluster.services[0];
    for (key, value) in [
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.send_redirects", "0"),
        ("net.ipv4.conf.default.send_redirects", "0"),
        ("net.ipv4.conf.all.rp_filter", "0"),
    ] {
        node.ns.sysctl(key, value)?;
    }
    node.ns.exec(
        "sysctl",
        &["-qw", &format!("net.ipv4.conf.{}.send_redirects=0", node.port.ifname)],
    )?;
    // A permanent neighbour, as handoff's policy names the backend's MAC:
    // ARP resolution is not what this compares.
    node.ns.ip(&[
        "neigh",
        "replace",
        &svc.port.ip.to_string(),
        "lladdr",
        &mac_string(svc.port.mac),
        "nud",
        "permanent",
        "dev",
        &node.port.ifname,
    ])?;
    let rules = format!(
        "table ip handoff_bench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP} udp dport {UDP_PORT} dnat to {svc}:{UDP_PORT}\n    ip daddr {VIP} tcp dport {IPERF_PORT} dnat to {svc}:{IPERF_PORT}\n  }}\n}}\n",
        svc = svc.port.ip
    );
    let path = cluster.write_file("dnat.nft", &rules)?;
    node.ns
        .exec("nft", &["-f", &path.display().to_string()])
        .context("loading the nftables DNAT rule (is nftables installed?)")?;
    Ok(())
}

fn run(node: NodeKind, count: u64) -> Result<Run> {
    let mut cluster = Cluster::create(&ClusterSpec {
        nodes: 1,
        services: 1,
        ..ClusterSpec::default()
    })?;
    let edge = cluster.edge_config(false);
    cluster.start_edge(&edge)?;
    match node {
        NodeKind::Handoff => {
            cluster.start_nodes(1)?;
        }
        NodeKind::Nftables => kernel_dnat(&cluster)?,
    }
    let ifname = cluster.services[0].port.ifname.clone();
    let (sink, sink_json) = cluster.start_sink(NsRef::Service(0), "sink-svc-1", &ifname, FLOWS, 2)?;
    let (gen, gen_json) = cluster.start_client_gen(FLOWS, OFFERED_PPS, count)?;
    for (idx, what) in [(gen, "generator"), (sink, "sink")] {
        let status = cluster.process(idx).wait_timeout(Duration::from_secs(120))?;
        if !status.is_some_and(|s| s.success()) {
            bail!("the {what} failed: {}", cluster.process(idx).stderr());
        }
    }
    let gen: GenReport = read_json(&gen_json)?;
    let sink: SinkReport = read_json(&sink_json)?;
    Ok(Run {
        node,
        sent: gen.sent,
        generator_pps: gen.rate_pps,
        received: sink.received,
        forwarded_pps: sink.rate_pps,
        reordered: sink.reordered,
    })
}

/// One iperf3 run.
#[derive(Debug, Serialize)]
struct TcpRun {
    node: NodeKind,
    received_bps: f64,
    bytes: u64,
    retransmits: u64,
}

/// `iperf3 -c VIP -P 8 -t seconds` from the client through `node` to svc-1.
fn run_tcp(node: NodeKind, seconds: u32) -> Result<TcpRun> {
    let mut cluster = Cluster::create(&ClusterSpec {
        nodes: 1,
        services: 1,
        ..ClusterSpec::default()
    })?;
    match node {
        NodeKind::Handoff => {
            // Replies through the edge, sprayed to the node like requests.
            let edge = cluster.edge_config(true);
            cluster.start_edge(&edge)?;
            cluster.start_nodes(1)?;
        }
        NodeKind::Nftables => {
            let edge = cluster.edge_config(false);
            cluster.start_edge(&edge)?;
            kernel_dnat(&cluster)?;
            // Replies to fd-a, whose conntrack undoes the DNAT.
            let via = cluster.nodes[0].port.ip.to_string();
            cluster.services[0]
                .ns
                .ip(&["route", "replace", CLIENT_NET, "via", &via])?;
        }
    }
    cluster.start_iperf3_servers(0)?;
    let run = cluster.run_bounded(
        NsRef::Client,
        Duration::from_secs(u64::from(seconds) + 30),
        "iperf3",
        &iperf3_client_args(VIP.into(), seconds),
    )?;
    let report = parse_iperf3(&run.stdout).map_err(|e| anyhow::anyhow!("{node:?}: {e}: {}", run.describe()))?;
    if !run.success() {
        bail!("{node:?}: {}", run.describe());
    }
    Ok(TcpRun {
        node,
        received_bps: report.received_bps,
        bytes: report.bytes,
        retransmits: report.retransmits,
    })
}

#[derive(Debug, Serialize)]
struct Summary {
    host_cpus: usize,
    flows: u32,
    packets_per_run: u64,
    repeats: usize,
    median_pps: Vec<(NodeKind, f64)>,
    handoff_over_nftables: f64,
    /// Node kinds that forwarded within 5% of what the generator managed to
    /// send: for them the generator, not the node, was the limit.
    generator_bound: Vec<NodeKind>,
    runs: Vec<Run>,
    /// Bulk TCP (iperf3, 8 streams): seconds per run.
    tcp_seconds: u32,
    /// Median received bits per second per node kind.
    tcp_median_bps: Vec<(NodeKind, f64)>,
    tcp_handoff_over_nftables: f64,
    tcp_runs: Vec<TcpRun>,
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if let Some(reason) = missing_privilege() {
        bail!("the benchmark builds network namespaces and loads XDP programs: {reason}");
    }
    let count = measure::packets_per_run(1_000_000);
    let repeats = measure::repeats(3);
    println!(
        "handoff service-path benchmark: {count} packets x {repeats} rounds per node kind, {FLOWS} flows, offered {OFFERED_PPS} pps"
    );
    let order = [NodeKind::Handoff, NodeKind::Nftables];
    let mut runs = Vec::new();
    for round in 0..repeats {
        for node in order {
            let run = run(node, count).with_context(|| format!("round {round}, {node:?}"))?;
            println!(
                "  round {round} {:<9} generator {:>9.0} pps  forwarded {:>9.0} pps  received {} of {}  reordered {}",
                format!("{node:?}"),
                run.generator_pps,
                run.forwarded_pps,
                run.received,
                run.sent,
                run.reordered
            );
            runs.push(run);
        }
    }
    let med = |n: NodeKind| {
        measure::median(runs.iter().filter(|r| r.node == n).map(|r| r.forwarded_pps).collect()).unwrap_or(0.0)
    };
    let gen_med = |n: NodeKind| {
        measure::median(runs.iter().filter(|r| r.node == n).map(|r| r.generator_pps).collect()).unwrap_or(0.0)
    };
    let generator_bound: Vec<NodeKind> = order.iter().copied().filter(|&n| med(n) >= 0.95 * gen_med(n)).collect();

    let tcp_seconds: u32 = std::env::var("HANDOFF_BENCH_TCP_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    println!("\nbulk TCP: iperf3 -P 8 -t {tcp_seconds} x {repeats} rounds per node kind");
    let mut tcp_runs = Vec::new();
    for round in 0..repeats {
        for node in order {
            let run = run_tcp(node, tcp_seconds).with_context(|| format!("TCP round {round}, {node:?}"))?;
            println!(
                "  round {round} {:<9} {:>9.1} Mbit/s  {} bytes  {} retransmits",
                format!("{node:?}"),
                run.received_bps / 1e6,
                run.bytes,
                run.retransmits
            );
            tcp_runs.push(run);
        }
    }
    let tcp_med = |n: NodeKind| {
        measure::median(
            tcp_runs
                .iter()
                .filter(|r| r.node == n)
                .map(|r| r.received_bps)
                .collect(),
        )
        .unwrap_or(0.0)
    };
    let summary = Summary {
        host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        flows: FLOWS,
        packets_per_run: count,
        repeats,
        median_pps: order.iter().map(|&n| (n, med(n))).collect(),
        handoff_over_nftables: med(NodeKind::Handoff) / med(NodeKind::Nftables).max(1.0),
        generator_bound,
        runs,
        tcp_seconds,
        tcp_median_bps: order.iter().map(|&n| (n, tcp_med(n))).collect(),
        tcp_handoff_over_nftables: tcp_med(NodeKind::Handoff) / tcp_med(NodeKind::Nftables).max(1.0),
        tcp_runs,
    };
    println!("\n{:<10} {:>14}", "node", "median pps");
    for (n, v) in &summary.median_pps {
        println!("{:<10} {:>14.0}", format!("{n:?}"), v);
    }
    println!("handoff / nftables = {:.2}", summary.handoff_over_nftables);
    if !summary.generator_bound.is_empty() {
        println!(
            "bottleneck: the generator for {:?} (forwarded within 5% of what it sent): the ratio is a lower bound",
            summary.generator_bound
        );
    }
    println!("\n{:<10} {:>14}", "node", "TCP Mbit/s");
    for (n, v) in &summary.tcp_median_bps {
        println!("{:<10} {:>14.1}", format!("{n:?}"), v / 1e6);
    }
    println!("bulk TCP handoff / nftables = {:.2}", summary.tcp_handoff_over_nftables);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("service-path.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!("wrote results/service-path.json");
    Ok(())
}
