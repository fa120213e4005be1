//! `make bench`, migration under load: the test bed's service path with the
//! client's UDP echo flows and 200 kernel TCP connections running, fd-a
//! disengaged by the manager once it holds its share of the flows, for
//! several flow counts. Each row sits beside a baseline run of the same load
//! in which nothing moves, so a loss the migration causes stands out from
//! one the host causes. Reports per row: connections fd-a held, time per
//! phase, bytes its handover streams sent, and lost / reordered /
//! duplicated echoes and TCP failures. A million flows take about 2 minutes
//! to start at this rate (each flow echoes once every 125 s), and need
//! larger flow and ownership tables than the defaults.
//! Results: a table on stdout, `results/migration-load.json`, and
//! `results/migration-load.svg`: each phase's time and the handover's bytes
//! against the connections fd-a held, on log axes.

use anyhow::{bail, Context, Result};
use handoff_bench::plot;
use handoff_testbed::{
    privilege::missing_privilege,
    service_path::{LoadReports, LoadSpec, NodeTuning},
    Cluster,
};
use serde::Serialize;
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

const FLOW_COUNTS: [u32; 4] = [1_000, 10_000, 100_000, 1_000_000];
/// Node settings for a million flows: fd-b and fd-c each end with about
/// 500,000 connections over 2 workers, and every worker keeps ownership
/// entries (two per connection) for the others' connections.
const MILLION: NodeTuning = NodeTuning {
    node: "ownership_capacity = 4194304\n",
    policy: "[table]\ncapacity = 2097152\n\n",
    wall_clock: None,
};
const RATE: u64 = 8_000;
const TCP_CONNECTIONS: u32 = 200;

#[derive(Debug, Serialize)]
struct Run {
    flows: u32,
    migrated: bool,
    held_by_fd_a: u64,
    total_ms: Option<f64>,
    handover_bytes: u64,
    phases: Vec<(String, f64)>,
    sent: u64,
    lost: u64,
    reordered: u64,
    duplicated: u64,
    tcp_completed: u64,
    tcp_failed: u64,
    /// Packets each node dropped (fd-a, fd-b, fd-c): its workers' drops,
    /// and the kernel's for a full RX ring or other reasons.
    node_drops: Vec<u64>,
    /// Packets the nodes' pens let go early or by timeout.
    held_unordered: u64,
}

/// One run over `flows` flows; disengages fd-a mid-run when `migrate`.
fn run(flows: u32, migrate: bool) -> Result<Run> {
    // Long enough for every flow to start and for a few seconds after.
    let seconds = 2 * u64::from(flows) / RATE + 8;
    let tuning = if flows >= 1_000_000 {
        MILLION
    } else {
        NodeTuning::default()
    };
    let mut cluster = Cluster::service_path_with(2, &tuning)?;
    let load = cluster.start_client_load(&LoadSpec {
        flows,
        rate: RATE,
        count: RATE * seconds,
        connections: TCP_CONNECTIONS,
        requests: u32::try_from(seconds * 70).unwrap_or(u32::MAX),
        per_flow: false,
    })?;
    // Every flow has started once its first round of packets went out.
    std::thread::sleep(Duration::from_millis(1000 * u64::from(flows) / RATE + 2000));
    let held_by_fd_a = cluster.node_stats(0)?["totals"]["active"].as_u64().unwrap_or(0);
    let (mut total_ms, mut phases) = (None, Vec::new());
    if migrate {
        // --json: the admin socket's lines, the last one the report.
        let printed = cluster.migrate(&["disengage", "fd-a", "--json"])?;
        let report: serde_json::Value = printed
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .context("no report line")?;
        total_ms = report["total_ms"].as_f64();
        phases = report["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["phase"].as_str().unwrap_or("?").to_string(),
                    p["ms"].as_f64().unwrap_or(0.0),
                )
            })
            .collect();
    }
    let handover_bytes = cluster.node_stats(0)?["control"]["handover_bytes_sent"]
        .as_u64()
        .unwrap_or(0);
    let LoadReports { gen, sink, tcp } = cluster.finish_client_load(&load, Duration::from_secs(seconds + 120))?;
    let mut node_drops = Vec::new();
    let mut held_unordered = 0;
    for i in 0..cluster.nodes.len() {
        let totals = &cluster.node_stats(i)?["totals"];
        node_drops.push(
            ["dropped", "kernel_rx_ring_full", "kernel_rx_dropped"]
                .iter()
                .map(|c| totals[c].as_u64().unwrap_or(0))
                .sum(),
        );
        held_unordered +=
            totals["held_released_early"].as_u64().unwrap_or(0) + totals["hold_timeouts"].as_u64().unwrap_or(0);
    }
    Ok(Run {
        flows,
        migrated: migrate,
        held_by_fd_a,
        total_ms,
        handover_bytes,
        phases,
        sent: gen.sent,
        lost: sink.lost.unwrap_or(gen.sent),
        reordered: sink.reordered,
        duplicated: sink.duplicated,
        tcp_completed: tcp.completed,
        tcp_failed: tcp.reset + tcp.timed_out + tcp.corrupted,
        node_drops,
        held_unordered,
    })
}

/// Writes the disengage runs' plot to `out` (SVG): left, each phase's
/// duration (ms) and the whole migration's against the connections fd-a
/// held; right, the bytes its handover streams sent against the same; both
/// axes logarithmic. Runs or values of 0 have no place on a log axis and
/// are left out.
fn plot(runs: &[Run], out: &Path) -> Result<()> {
    let migrated: Vec<&Run> = runs.iter().filter(|r| r.migrated && r.held_by_fd_a > 0).collect();
    if migrated.is_empty() {
        println!("no disengage moved a connection: nothing to plot");
        return Ok(());
    }
    let mut phases: Vec<String> = Vec::new();
    for (name, _) in migrated.iter().flat_map(|r| &r.phases) {
        if !phases.contains(name) {
            phases.push(name.clone());
        }
    }
    let mut series: Vec<(String, Vec<(f64, f64)>)> = phases
        .iter()
        .map(|phase| {
            let points = migrated
                .iter()
                .filter_map(|r| {
                    let ms = r.phases.iter().find(|(p, _)| p == phase)?.1;
                    (ms > 0.0).then_some((r.held_by_fd_a as f64, ms))
                })
                .collect();
            (phase.clone(), points)
        })
        .collect();
    series.push((
        "total".into(),
        migrated
            .iter()
            .filter_map(|r| Some((r.held_by_fd_a as f64, r.total_ms.filter(|t| *t > 0.0)?)))
            .collect(),
    ));
    let bytes: Vec<(f64, f64)> = migrated
        .iter()
        .filter(|r| r.handover_bytes > 0)
        .map(|r| (r.held_by_fd_a as f64, r.handover_bytes as f64))
        .collect();
    let series: Vec<plot::Series> = series
        .into_iter()
        .map(|(name, points)| plot::Series { name, points })
        .collect();
    plot::log_log_panels(
        out,
        &[
            (
                plot::Labels {
                    title: "time per phase of a disengage",
                    x: "connections fd-a held",
                    y: "ms",
                },
                series,
            ),
            (
                plot::Labels {
                    title: "bytes the handover sent",
                    x: "connections fd-a held",
                    y: "bytes",
                },
                vec![plot::Series {
                    name: "snapshot, deltas, cut".into(),
                    points: bytes,
                }],
            ),
        ],
    )
}

fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    if let Some(reason) = missing_privilege() {
        bail!("the benchmark builds network namespaces and loads XDP programs: {reason}");
    }
    println!(
        "handoff migration under load: UDP echo at {RATE} pps over N flows and {TCP_CONNECTIONS} TCP connections; fd-a disengaged, beside a run where nothing moves"
    );
    println!(
        "{:>9} {:>9} {:>9} {:>10} {:>11} {:>9} {:>6} {:>9} {:>10} {:>8}  phases (ms)",
        "flows", "run", "fd-a held", "total ms", "bytes", "sent", "lost", "reordered", "duplicated", "tcp fail"
    );
    let mut runs = Vec::new();
    // HANDOFF_BENCH_FLOWS=100000,1000000 runs only those rows.
    let only: Option<Vec<u32>> = std::env::var("HANDOFF_BENCH_FLOWS")
        .ok()
        .map(|v| v.split(',').filter_map(|f| f.trim().parse().ok()).collect());
    for flows in FLOW_COUNTS
        .into_iter()
        .filter(|f| only.as_ref().is_none_or(|o| o.contains(f)))
    {
        for migrate in [false, true] {
            let r = run(flows, migrate).with_context(|| format!("{flows} flows, migrate {migrate}"))?;
            println!(
                "{:>9} {:>9} {:>9} {:>10} {:>11} {:>9} {:>6} {:>9} {:>10} {:>8}  {}",
                r.flows,
                if migrate { "disengage" } else { "baseline" },
                r.held_by_fd_a,
                r.total_ms.map_or("-".into(), |t| format!("{t:.1}")),
                r.handover_bytes,
                r.sent,
                r.lost,
                r.reordered,
                r.duplicated,
                r.tcp_failed,
                r.phases
                    .iter()
                    .map(|(p, ms)| format!("{p} {ms:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if r.node_drops.iter().any(|&d| d > 0) || r.held_unordered > 0 {
                println!(
                    "{:>9} node drops {:?}, held packets let go unordered {}",
                    "", r.node_drops, r.held_unordered
                );
            }
            runs.push(r);
        }
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results/migration-load.json");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&runs)?)?;
    println!("results: {}", out.display());
    let svg = out.with_extension("svg");
    plot(&runs, &svg)?;
    println!(
        "plot of time per phase and bytes against connections (log axes): {}",
        svg.display()
    );
    Ok(())
}
