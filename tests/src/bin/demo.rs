//! `make demo`: the namespace cluster with the full service path (edge
//! sprayer, three `handoff node`s, three services), UDP and kernel TCP
//! traffic through it, fd-a disengaged mid-run (phases printed live) and
//! engaged again, a report, and a plot of packets/s per node.
//!
//! The cluster is a lab (`handoff_testbed::lab`, as `handoff lab up` builds
//! it, held in this process): everything it creates carries a per-run
//! prefix and is removed on every exit path, including Ctrl-C, and by the
//! lab's reaper if the demo is killed.

use anyhow::{bail, Result};
use handoff::{
    admin::{self, AdminRequest, AdminResponse},
    render::{cell, table, Align},
};
use handoff_testbed::{
    cluster::node_name,
    lab::{Lab, LabSpec},
    privilege::missing_privilege,
    service_path::{LoadReports, LoadSpec},
    Cluster,
};
use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const FLOWS: u32 = 10_000;
const RATE: u64 = 6_000;
const SECONDS: u64 = 14;
const TCP_CONNECTIONS: u32 = 200;
const TCP_REQUESTS: u32 = 700;
const SAMPLE: Duration = Duration::from_millis(250);

fn sleep_unless(stop: &AtomicBool, total: Duration) -> Result<()> {
    let end = Instant::now() + total;
    while Instant::now() < end {
        if stop.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Every node's received-packet counter, sampled until `done` is set.
fn sample(sockets: Vec<PathBuf>, done: Arc<AtomicBool>) -> Vec<(f64, Vec<u64>)> {
    let start = Instant::now();
    let mut samples = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let rx: Vec<u64> = sockets
            .iter()
            .map(|s| match admin::call(s, &AdminRequest::Stats, Duration::from_secs(2)) {
                Ok(AdminResponse::Stats(v)) => v["totals"]["rx"].as_u64().unwrap_or(0),
                _ => 0,
            })
            .collect();
        samples.push((start.elapsed().as_secs_f64(), rx));
        std::thread::sleep(SAMPLE);
    }
    samples
}

/// Runs `handoff <verb> fd-a` and prints its lines as they come; returns them.
fn migrate(cluster: &Cluster, verb: &str, node: &str, t0: Instant) -> Result<Vec<String>> {
    let mut cmd = std::process::Command::new(handoff_testbed::binaries::binary("handoff")?);
    cmd.args([verb, node]).arg("--admin").arg(cluster.admin_socket());
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    let mut lines = Vec::new();
    if let Some(out) = child.stdout.take() {
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)) {
            let line = line?;
            println!("  t={:>5.2}s  {line}", t0.elapsed().as_secs_f64());
            lines.push(line);
        }
    }
    if !child.wait()?.success() {
        bail!("handoff {verb} {node} failed");
    }
    Ok(lines)
}

fn plot(samples: &[(f64, Vec<u64>)], marks: &[(f64, &str)], out: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;
    let rates: Vec<Vec<(f64, f64)>> = (0..3)
        .map(|n| {
            samples
                .windows(2)
                .map(|w| {
                    (
                        w[1].0,
                        (w[1].1[n].saturating_sub(w[0].1[n])) as f64 / (w[1].0 - w[0].0).max(1e-3),
                    )
                })
                .collect()
        })
        .collect();
    let t_max = samples.last().map_or(1.0, |s| s.0);
    let y_max = rates.iter().flatten().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let root = SVGBackend::new(out, (800, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "packets/s received per node (fd-a disengaged, then engaged)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
    chart.configure_mesh().x_desc("seconds").y_desc("packets/s").draw()?;
    for (n, (series, color)) in rates.iter().zip([RED, BLUE, GREEN]).enumerate() {
        chart
            .draw_series(LineSeries::new(series.iter().copied(), color.stroke_width(2)))?
            .label(node_name(n))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    for &(t, _) in marks {
        chart.draw_series(LineSeries::new([(t, 0.0), (t, y_max)], BLACK.mix(0.4)))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn main() -> Result<()> {
    if let Some(reason) = missing_privilege() {
        bail!("the demo builds network namespaces and loads XDP programs: {reason}");
    }
    let stop = handoff::shutdown::stop_on_signals()?;
    println!("== handoff demo: client -> edge (XDP sprayer) -> fd-a, fd-b, fd-c (handoff node) -> svc-1..3, and back");
    let mut lab = Lab::start(
        &LabSpec {
            nodes: 3,
            services: 3,
            workers: 2,
            real_servers: false,
        },
        None,
        &mut |_| Ok(()),
    )?;
    let cluster = lab.cluster();
    println!(
        "test bed up: namespaces prefixed handoff-{}-*, logs in {}",
        cluster.prefix,
        cluster.log_dir.display()
    );
    println!("edge, 3 nodes (2 workers each, AF_XDP) and 3 services (UDP echo, TCP server) are up");
    let sampling = Arc::new(AtomicBool::new(false));
    let sockets: Vec<PathBuf> = (0..3).map(|i| cluster.node_admin_socket(i)).collect();
    let sampler = {
        let done = Arc::clone(&sampling);
        std::thread::spawn(move || sample(sockets, done))
    };
    let t0 = Instant::now();
    let count = RATE * SECONDS;
    let load = cluster.start_client_load(&LoadSpec {
        flows: FLOWS,
        rate: RATE,
        count,
        connections: TCP_CONNECTIONS,
        requests: TCP_REQUESTS,
        per_flow: false,
    })?;
    println!(
        "client: {count} UDP echo requests over {FLOWS} flows at {RATE} pps, and {TCP_CONNECTIONS} kernel TCP connections x {TCP_REQUESTS} requests, to VIP {}",
        handoff_testbed::cluster::VIP
    );

    sleep_unless(&stop, Duration::from_secs(4))?;
    let held = cluster.node_stats(0)?["totals"]["active"].clone();
    println!(
        "t={:.2}s: disengaging fd-a, which holds {held} connections",
        t0.elapsed().as_secs_f64()
    );
    let disengaged_at = t0.elapsed().as_secs_f64();
    migrate(cluster, "disengage", "fd-a", t0)?;
    sleep_unless(&stop, Duration::from_secs(4))?;
    println!("t={:.2}s: engaging fd-a again", t0.elapsed().as_secs_f64());
    let engaged_at = t0.elapsed().as_secs_f64();
    migrate(cluster, "engage", "fd-a", t0)?;

    let deadline = Instant::now() + Duration::from_secs(SECONDS + 60);
    for idx in [load.traffic, load.tcp] {
        while cluster.process(idx).running() {
            if Instant::now() > deadline {
                bail!("the client traffic did not finish");
            }
            sleep_unless(&stop, Duration::from_millis(200))?;
        }
    }
    sampling.store(true, Ordering::Relaxed);
    let samples = sampler.join().map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
    let nodes: Vec<serde_json::Value> = (0..3).map(|i| cluster.node_stats(i)).collect::<Result<_>>()?;
    let LoadReports { gen, sink, tcp } = load.reports()?;

    let rows: Vec<Vec<String>> = nodes
        .iter()
        .enumerate()
        .map(|(i, stats)| {
            let t = &stats["totals"];
            let imported: u64 = stats["workers"].as_array().map_or(0, |w| {
                w.iter().map(|w| w["table"]["imported"].as_u64().unwrap_or(0)).sum()
            });
            std::iter::once(node_name(i))
                .chain([
                    cell(&t["rx"]),
                    cell(&t["created"]),
                    imported.to_string(),
                    cell(&t["active"]),
                    cell(&t["forwarded_to_core"]),
                    cell(&t["forwarded_to_node"]),
                    cell(&t["received_from_node"]),
                    cell(&t["dropped"]),
                ])
                .collect()
        })
        .collect();
    let mut align = vec![Align::Left];
    align.resize(9, Align::Right);
    println!(
        "\n{}",
        table(
            &[
                "node",
                "rx",
                "created",
                "imported",
                "active",
                "to core",
                "to node",
                "from node",
                "dropped"
            ],
            &rows,
            &align
        )
    );
    let lost = sink.lost.unwrap_or(u64::MAX);
    println!(
        "\nUDP: sent {} echoed back {} lost {} reordered {} duplicated {} (p50 {:.0} us, p99 {:.0} us round trip)",
        gen.sent, sink.received, lost, sink.reordered, sink.duplicated, sink.latency_us.p50, sink.latency_us.p99
    );
    println!(
        "TCP: {} of {} connections completed {} exchanges; reset {}, timed out {} (p50 {:.0} us, p99 {:.0} us)",
        tcp.completed, tcp.connections, tcp.responses, tcp.reset, tcp.timed_out, tcp.latency_us.p50, tcp.latency_us.p99
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir)?;
    let svg = dir.join("demo.svg");
    plot(&samples, &[(disengaged_at, "disengage"), (engaged_at, "engage")], &svg)?;
    println!("plot of packets/s per node: {}", svg.display());
    let ok = lost == 0 && sink.reordered == 0 && sink.duplicated == 0 && tcp.ok();
    lab.down()?;
    println!("test bed removed.");
    if !ok {
        bail!("packets were lost, reordered or duplicated, or a TCP connection broke");
    }
    Ok(())
}
