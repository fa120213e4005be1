//! `make demo`: the namespace cluster with the full service path (edge
//! sprayer, three `handoff node`s, three services), UDP and kernel TCP
//! traffic through it, fd-a disengaged mid-run (phases printed live) and
//! engaged again, a report, and a plot (`results/demo.svg`): packets/s per
//! node and their total, and below it the UDP and the TCP packets/s at the
//! services, with the disengage's phases shaded and the engage marked.
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

/// One sample of the counters the plot shows.
#[derive(Clone, Debug, Default)]
struct Sample {
    /// Seconds since the demo's start.
    t: f64,
    /// Each node's received packets.
    rx: Vec<u64>,
    /// UDP datagrams the services' kernels received and sent.
    udp: u64,
    /// TCP segments the services' kernels received and sent.
    tcp: u64,
}

/// `(udp, tcp)`: the datagrams and segments in and out counted in
/// `/proc/<pid>/net/snmp` (RFC 4113 `udpInDatagrams` + `udpOutDatagrams`,
/// RFC 4022 `tcpInSegs` + `tcpOutSegs`), of the network namespace of the
/// process `pid`. `None` when it cannot be read.
fn snmp_packets(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/snmp")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    // Each protocol has a line of names, then a line of values.
    let field = |proto: &str, names: [&str; 2]| -> Option<u64> {
        let at = lines.iter().position(|l| l.starts_with(proto))?;
        let header: Vec<&str> = lines[at].split_whitespace().collect();
        let values: Vec<&str> = lines.get(at + 1)?.split_whitespace().collect();
        names
            .iter()
            .map(|n| values.get(header.iter().position(|h| h == n)?)?.parse::<u64>().ok())
            .sum()
    };
    Some((
        field("Udp:", ["InDatagrams", "OutDatagrams"])?,
        field("Tcp:", ["InSegs", "OutSegs"])?,
    ))
}

/// Every node's received-packet counter, and the UDP and TCP packets of
/// the services (one process `pid` in each service's namespace), sampled
/// until `done` is set.
fn sample(sockets: Vec<PathBuf>, service_pids: Vec<u32>, t0: Instant, done: Arc<AtomicBool>) -> Vec<Sample> {
    let mut samples = Vec::new();
    while !done.load(Ordering::Relaxed) {
        let rx: Vec<u64> = sockets
            .iter()
            .map(|s| match admin::call(s, &AdminRequest::Stats, Duration::from_secs(2)) {
                Ok(AdminResponse::Stats(v)) => v["totals"]["rx"].as_u64().unwrap_or(0),
                _ => 0,
            })
            .collect();
        let (udp, tcp) = service_pids
            .iter()
            .filter_map(|&pid| snmp_packets(pid))
            .fold((0, 0), |(u, t), (du, dt)| (u + du, t + dt));
        samples.push(Sample {
            t: t0.elapsed().as_secs_f64(),
            rx,
            udp,
            tcp,
        });
        std::thread::sleep(SAMPLE);
    }
    samples
}

/// The phases of a migration, as `(phase, seconds since the demo's
/// start)`, from the CLI's lines (`[   12.3 ms] Copy: started`) and the
/// time `started` the command was run.
fn phase_starts(lines: &[String], started: f64) -> Vec<(String, f64)> {
    lines
        .iter()
        .filter_map(|line| {
            let (ms, rest) = line.strip_prefix('[')?.split_once(" ms] ")?;
            let (phase, _) = rest.split_once(':')?;
            Some((phase.to_string(), started + ms.trim().parse::<f64>().ok()? / 1e3))
        })
        .collect()
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

/// Per second between consecutive samples of `counter`.
fn rate_series(samples: &[Sample], counter: impl Fn(&Sample) -> u64) -> Vec<(f64, f64)> {
    samples
        .windows(2)
        .map(|w| {
            (
                w[1].t,
                counter(&w[1]).saturating_sub(counter(&w[0])) as f64 / (w[1].t - w[0].t).max(1e-3),
            )
        })
        .collect()
}

/// A line of the plot: its label, its colour, its points (seconds, packets/s).
type Series = (String, plotters::style::RGBColor, Vec<(f64, f64)>);

/// The plot: packets/s received per node and their total above, the
/// services' UDP and TCP packets/s and their sum below; the disengage's
/// `phases` shaded (each from its start to the next, the last to
/// `disengage_done`) and labelled, the engage a labelled line.
fn plot(
    samples: &[Sample],
    phases: &[(String, f64)],
    disengage_done: f64,
    engage: f64,
    out: &std::path::Path,
) -> Result<()> {
    use plotters::prelude::*;
    let nodes = samples.first().map_or(0, |s| s.rx.len());
    let mut upper: Vec<Series> = (0..nodes)
        .zip([RED, BLUE, GREEN].into_iter().cycle())
        .map(|(n, color)| (node_name(n), color, rate_series(samples, |s| s.rx[n])))
        .collect();
    upper.push(("all nodes".into(), BLACK, rate_series(samples, |s| s.rx.iter().sum())));
    let lower = [
        (
            "UDP (datagrams in+out)".to_string(),
            RGBColor(230, 120, 0),
            rate_series(samples, |s| s.udp),
        ),
        (
            "TCP (segments in+out)".to_string(),
            RGBColor(120, 0, 160),
            rate_series(samples, |s| s.tcp),
        ),
        ("UDP + TCP".to_string(), BLACK, rate_series(samples, |s| s.udp + s.tcp)),
    ];
    let t_max = samples.last().map_or(1.0, |s| s.t);
    let root = SVGBackend::new(out, (900, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(380);
    let panels = [
        (
            top,
            "packets/s received per node (fd-a disengaged, then engaged)",
            &upper[..],
        ),
        (bottom, "packets/s at the services, by protocol", &lower[..]),
    ];
    for (area, caption, series) in panels {
        let y_max = series.iter().flat_map(|s| &s.2).map(|p| p.1).fold(1.0, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(&area)
            .caption(caption, ("sans-serif", 18))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..t_max, 0.0..y_max)?;
        chart.configure_mesh().x_desc("seconds").y_desc("packets/s").draw()?;
        // The phases first, under the lines: a shaded span each, named at the top.
        let ends = phases.iter().skip(1).map(|p| p.1).chain([disengage_done]);
        for (i, ((name, from), to)) in phases.iter().zip(ends).enumerate() {
            let shade = if i % 2 == 0 {
                RGBColor(200, 200, 200)
            } else {
                RGBColor(230, 230, 230)
            };
            let to = to.max(from + 0.02);
            chart.draw_series([Rectangle::new([(*from, 0.0), (to, y_max)], shade.mix(0.6).filled())])?;
            let row = y_max * (0.97 - 0.05 * (i % 3) as f64);
            chart.draw_series([Text::new(name.clone(), (*from, row), ("sans-serif", 11))])?;
        }
        chart.draw_series(LineSeries::new([(engage, 0.0), (engage, y_max)], BLACK.mix(0.6)))?;
        chart.draw_series([Text::new("engage", (engage, y_max * 0.97), ("sans-serif", 11))])?;
        for (label, color, points) in series {
            let color = *color;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
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
    let service_names: Vec<String> = cluster.services.iter().map(|s| s.name.clone()).collect();
    let service_pids: Vec<u32> = service_names
        .iter()
        .filter_map(|name| cluster.process_named(&format!("{name}-udp")).map(|p| p.pid()))
        .collect();
    let t0 = Instant::now();
    let sampler = {
        let done = Arc::clone(&sampling);
        std::thread::spawn(move || sample(sockets, service_pids, t0, done))
    };
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
    let disengage_lines = migrate(cluster, "disengage", "fd-a", t0)?;
    let disengage_done = t0.elapsed().as_secs_f64();
    sleep_unless(&stop, Duration::from_secs(4))?;
    println!("t={:.2}s: engaging fd-a again", t0.elapsed().as_secs_f64());
    let engaged_at = t0.elapsed().as_secs_f64();
    let engage_lines = migrate(cluster, "engage", "fd-a", t0)?;

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
    let engage_flip = phase_starts(&engage_lines, engaged_at)
        .first()
        .map_or(engaged_at, |p| p.1);
    plot(
        &samples,
        &phase_starts(&disengage_lines, disengaged_at),
        disengage_done,
        engage_flip,
        &svg,
    )?;
    println!(
        "plot of packets/s per node and by protocol, the migration's phases marked: {}",
        svg.display()
    );
    let ok = lost == 0 && sink.reordered == 0 && sink.duplicated == 0 && tcp.ok();
    lab.down()?;
    println!("test bed removed.");
    if !ok {
        bail!("packets were lost, reordered or duplicated, or a TCP connection broke");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_starts_come_from_the_clis_lines_and_other_lines_are_skipped() {
        let lines: Vec<String> = [
            "[      0.0 ms] Select: buckets_by_inheritor {1: 10923, 2: 10923}",
            "[     10.8 ms] Copy: started",
            "fd-a: Disengaged after 835.2 ms (migration 1)",
            "Copy       118.4  bytes_sent 207023",
            "[    834.7 ms] Purge: started",
        ]
        .map(String::from)
        .to_vec();
        let phases = phase_starts(&lines, 4.0);
        let names: Vec<&str> = phases.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(names, ["Select", "Copy", "Purge"]);
        assert!((phases[1].1 - 4.0108).abs() < 1e-9 && (phases[2].1 - 4.8347).abs() < 1e-9);
    }

    #[test]
    fn this_process_namespace_counts_udp_and_tcp() {
        // Every Linux namespace has both lines, with the four fields.
        assert!(snmp_packets(std::process::id()).is_some());
        assert!(snmp_packets(u32::MAX).is_none(), "no such process");
    }
}
