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
//! Results: a table on stdout and `results/service-path.json`.

use anyhow::{bail, Context, Result};
use handoff_bench::{
    measure,
    report::{GenReport, SinkReport},
};
use handoff_testbed::{
    cluster::{read_json, VIP},
    netns::mac_string,
    privilege::missing_privilege,
    service_path::UDP_PORT,
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

/// Turns fd-a into a kernel router that DNATs the VIP's UDP port to svc-1.
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
        "table ip handoff_bench {{\n  chain prerouting {{\n    type nat hook prerouting priority dstnat; policy accept;\n    ip daddr {VIP} udp dport {UDP_PORT} dnat to {}:{UDP_PORT}\n  }}\n}}\n",
        svc.port.ip
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
    let summary = Summary {
        host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        flows: FLOWS,
        packets_per_run: count,
        repeats,
        median_pps: order.iter().map(|&n| (n, med(n))).collect(),
        handoff_over_nftables: med(NodeKind::Handoff) / med(NodeKind::Nftables).max(1.0),
        generator_bound,
        runs,
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
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("service-path.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    println!("wrote results/service-path.json");
    Ok(())
}
