//! `make bench`: the same generated traffic through four paths on one
//! namespace test bed, interleaved and repeated, so the ratios hold on a
//! shared, noisy host:
//!
//! * null sink: the generator into an XDP program that drops everything (the
//!   generator's own rate: the ceiling of every other row);
//! * sprayer: handoff's edge program (parse, hash, scope lookup, MAC rewrite, redirect);
//! * baseline: a minimal XDP program that only rewrites MACs and redirects;
//! * kernel: plain Linux IP forwarding.
//!
//! `gen (g0) ── (f0) fwd (f1) ── (s0) sink`. Results: a table on stdout, JSON
//! and an SVG plot under `results/` (not committed).

use anyhow::{bail, Context, Result};
use handoff_bench::{
    measure,
    report::{GenReport, SinkReport},
};
use handoff_testbed::{
    cluster::read_json,
    netns::{mac_string, veth, Netns, RunPrefix, VethEnd},
    privilege::missing_privilege,
    wait_until, Spawned,
};
use serde::Serialize;
use std::{path::PathBuf, time::Duration};

const FLOWS: u32 = 1024;
const QUEUES: u32 = 2;
const GEN_MAC: [u8; 6] = [0x02, 0x68, 0x6f, 0x20, 0, 1];
const FWD_IN_MAC: [u8; 6] = [0x02, 0x68, 0x6f, 0x20, 0, 2];
const FWD_OUT_MAC: [u8; 6] = [0x02, 0x68, 0x6f, 0x20, 0, 3];
const SINK_MAC: [u8; 6] = [0x02, 0x68, 0x6f, 0x20, 0, 4];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Path {
    NullSink,
    Sprayer,
    Baseline,
    Kernel,
}

#[derive(Debug, Serialize)]
struct Run {
    path: Path,
    sent: u64,
    generator_pps: f64,
    received: u64,
    forwarded_pps: f64,
    lost: u64,
}

struct Bed {
    prefix: RunPrefix,
    log: PathBuf,
    gen: Netns,
    fwd: Netns,
    sink: Netns,
}

fn bed() -> Result<Bed> {
    let prefix = RunPrefix::new();
    let log = std::env::temp_dir().join(format!("handoff-bench-{prefix}"));
    std::fs::create_dir_all(&log)?;
    let gen = Netns::create(&prefix, "bgen")?;
    let fwd = Netns::create(&prefix, "bfwd")?;
    let sink = Netns::create(&prefix, "bsink")?;
    let end = |ns, role: &str, mac| VethEnd {
        ns,
        name: prefix.ifname(role),
        mac: Some(mac),
    };
    veth(&end(&gen, "g0", GEN_MAC), &end(&fwd, "f0", FWD_IN_MAC), QUEUES)?;
    veth(&end(&fwd, "f1", FWD_OUT_MAC), &end(&sink, "s0", SINK_MAC), QUEUES)?;
    gen.ip(&["addr", "add", "10.66.0.2/24", "dev", &prefix.ifname("g0")])?;
    fwd.ip(&["addr", "add", "10.66.0.1/24", "dev", &prefix.ifname("f0")])?;
    fwd.ip(&["addr", "add", "10.66.1.1/24", "dev", &prefix.ifname("f1")])?;
    sink.ip(&["addr", "add", "10.66.1.2/24", "dev", &prefix.ifname("s0")])?;
    fwd.ip(&["route", "add", "10.66.9.0/24", "via", "10.66.1.2"])?;
    fwd.ip(&[
        "neigh",
        "replace",
        "10.66.1.2",
        "lladdr",
        &mac_string(SINK_MAC),
        "dev",
        &prefix.ifname("f1"),
    ])?;
    fwd.sysctl("net.ipv4.ip_forward", "1")?;
    fwd.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
    Ok(Bed {
        prefix,
        log,
        gen,
        fwd,
        sink,
    })
}

fn bench_bin() -> Result<PathBuf> {
    handoff_testbed::binaries::binary("handoff-bench")
}

impl Bed {
    fn forwarder(&self, path: Path) -> Result<Option<Spawned>> {
        let f0 = self.prefix.ifname("f0");
        let f1 = self.prefix.ifname("f1");
        let (name, cmd) = match path {
            Path::Kernel => return Ok(None),
            Path::NullSink => {
                let mut cmd = self.fwd.command(bench_bin()?);
                cmd.args(["baseline", "--interface", &f0]);
                ("null-sink", cmd)
            }
            Path::Baseline => {
                let mut cmd = self.fwd.command(bench_bin()?);
                cmd.args([
                    "baseline",
                    "--interface",
                    &f0,
                    "--out",
                    &f1,
                    "--dst-mac",
                    &mac_string(SINK_MAC),
                ]);
                ("baseline", cmd)
            }
            Path::Sprayer => {
                let config = format!(
                    "[edge]\ninterfaces = [{f0:?}]\nadmin_socket = {:?}\nlocal_addresses = [\"10.66.0.1\", \"10.66.1.1\"]\n\n[cluster]\ndestinations = [\"10.66.9.0/24\"]\n\n[[members]]\nname = \"sink\"\nid = 0\nmac = {:?}\ninterface = {f1:?}\n",
                    self.log.join("edge.sock").display().to_string(),
                    mac_string(SINK_MAC)
                );
                let path = self.log.join("edge.toml");
                std::fs::write(&path, config)?;
                let mut cmd = self.fwd.command(handoff_testbed::binaries::binary("handoff")?);
                cmd.arg("edge").arg("--config").arg(path);
                ("sprayer", cmd)
            }
        };
        let mut p = Spawned::start(name, cmd, &self.log)?;
        if !wait_until(Duration::from_secs(15), || p.stderr().contains("attached")) || !p.running() {
            bail!("{name} did not start: {}", p.stderr());
        }
        Ok(Some(p))
    }

    fn run(&self, path: Path, count: u64) -> Result<Run> {
        let forwarder = self.forwarder(path)?;
        let sink_json = self.log.join("sink.json");
        let _ = std::fs::remove_file(&sink_json);
        let sink = if path == Path::NullSink {
            None
        } else {
            let mut cmd = self.sink.command(bench_bin()?);
            cmd.args([
                "sink",
                "--interface",
                &self.prefix.ifname("s0"),
                "--queues",
                "0,1",
                "--flows",
            ])
            .arg(FLOWS.to_string())
            .args([
                "--idle",
                "1.5",
                "--duration",
                "120",
                "--sent",
                &count.to_string(),
                "--json",
            ])
            .arg(&sink_json);
            let s = Spawned::start("sink", cmd, &self.log)?;
            if !wait_until(Duration::from_secs(15), || s.stderr().contains("attached")) {
                bail!("sink did not start: {}", s.stderr());
            }
            Some(s)
        };
        let gen_json = self.log.join("gen.json");
        let mut cmd = self.gen.command(bench_bin()?);
        cmd.args([
            "gen",
            "--interface",
            &self.prefix.ifname("g0"),
            "--queues",
            "0,1",
            "--dst-mac",
        ])
        .arg(mac_string(FWD_IN_MAC))
        .args([
            "--flows",
            &FLOWS.to_string(),
            "--src",
            "10.66.0.2",
            "--dst",
            "10.66.9.1",
        ])
        .args(["--count", &count.to_string(), "--duration", "20", "--json"])
        .arg(&gen_json);
        let mut gen = Spawned::start("gen", cmd, &self.log)?;
        if !gen.wait_timeout(Duration::from_secs(60))?.is_some_and(|s| s.success()) {
            bail!("generator failed: {}", gen.stderr());
        }
        let gen: GenReport = read_json(&gen_json)?;
        let (received, forwarded_pps) = match sink {
            None => (gen.sent, gen.rate_pps),
            Some(mut s) => {
                if s.wait_timeout(Duration::from_secs(60))?.is_none() {
                    bail!("sink did not finish");
                }
                let r: SinkReport = read_json(&sink_json)?;
                (r.received, r.rate_pps)
            }
        };
        drop(forwarder);
        Ok(Run {
            path,
            sent: gen.sent,
            generator_pps: gen.rate_pps,
            received,
            forwarded_pps,
            lost: gen.sent.saturating_sub(received),
        })
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    host_cpus: usize,
    packets_per_run: u64,
    repeats: usize,
    frame_len: usize,
    median_pps: Vec<(Path, f64)>,
    sprayer_over_baseline: f64,
    sprayer_over_kernel: f64,
    generator_bound: Vec<Path>,
    runs: Vec<Run>,
}

fn plot(summary: &Summary, out: &std::path::Path) -> Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(out, (720, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let max = summary.median_pps.iter().map(|(_, v)| *v).fold(1.0, f64::max) * 1.15 / 1000.0;
    let labels: Vec<String> = summary.median_pps.iter().map(|(p, _)| format!("{p:?}")).collect();
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "handoff: forwarded packets/s (median, 60-byte frames)",
            ("sans-serif", 18),
        )
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(60)
        .build_cartesian_2d((0..labels.len()).into_segmented(), 0.0..max)?;
    chart
        .configure_mesh()
        .y_desc("kpps")
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()?;
    chart.draw_series(summary.median_pps.iter().enumerate().map(|(i, (_, v))| {
        Rectangle::new(
            [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v / 1000.0)],
            BLUE.mix(0.6).filled(),
        )
    }))?;
    root.present()?;
    Ok(())
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
    let bed = bed().context("building the benchmark test bed")?;
    println!("handoff dataplane benchmark: {count} packets x {repeats} rounds per path, {FLOWS} flows, 60-byte frames");
    let order = [Path::NullSink, Path::Sprayer, Path::Baseline, Path::Kernel];
    let mut runs = Vec::new();
    for round in 0..repeats {
        for path in order {
            let run = bed
                .run(path, count)
                .with_context(|| format!("round {round}, {path:?}"))?;
            println!(
                "  round {round} {:<9} generator {:>9.0} pps  forwarded {:>9.0} pps  lost {}",
                format!("{path:?}"),
                run.generator_pps,
                run.forwarded_pps,
                run.lost
            );
            runs.push(run);
        }
    }
    let med = |p: Path| {
        measure::median(runs.iter().filter(|r| r.path == p).map(|r| r.forwarded_pps).collect()).unwrap_or(0.0)
    };
    let gen_ceiling = med(Path::NullSink);
    let median_pps: Vec<(Path, f64)> = order.iter().map(|&p| (p, med(p))).collect();
    let generator_bound: Vec<Path> = order[1..]
        .iter()
        .copied()
        .filter(|&p| med(p) >= 0.95 * gen_ceiling)
        .collect();
    let summary = Summary {
        host_cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        packets_per_run: count,
        repeats,
        frame_len: 60,
        sprayer_over_baseline: med(Path::Sprayer) / med(Path::Baseline).max(1.0),
        sprayer_over_kernel: med(Path::Sprayer) / med(Path::Kernel).max(1.0),
        median_pps,
        generator_bound,
        runs,
    };
    println!("\n{:<10} {:>14}", "path", "median pps");
    for (p, v) in &summary.median_pps {
        println!("{:<10} {:>14.0}", format!("{p:?}"), v);
    }
    println!("sprayer / baseline = {:.2}", summary.sprayer_over_baseline);
    println!("sprayer / kernel   = {:.2}", summary.sprayer_over_kernel);
    if summary.generator_bound.is_empty() {
        println!(
            "bottleneck: the forwarders (each path stayed below 95% of the generator's own rate, {gen_ceiling:.0} pps)"
        );
    } else {
        println!(
            "bottleneck: the generator for {:?} (within 5% of its own rate, {gen_ceiling:.0} pps): those ratios understate the gap",
            summary.generator_bound
        );
    }
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../results");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("dataplane.json"),
        serde_json::to_string_pretty(&summary)? + "\n",
    )?;
    plot(&summary, &dir.join("dataplane.svg"))?;
    println!("wrote results/dataplane.json and results/dataplane.svg");
    Ok(())
}
