//! `make demo`: the namespace cluster, traffic sprayed over three nodes, one
//! node flipped out of the hash scope mid-run, and a report.
//!
//! Everything it creates carries a per-run prefix and is removed on every
//! exit path, including Ctrl-C.

use anyhow::{bail, Result};
use handoff_bench::report::{GenReport, SinkReport};
use handoff_testbed::{
    cluster::{node_name, read_json},
    privilege::missing_privilege,
    Cluster, ClusterSpec,
};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const FLOWS: u32 = 10_000;
const RATE: u64 = 20_000;
const SECONDS: u64 = 8;

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

fn main() -> Result<()> {
    if let Some(reason) = missing_privilege() {
        bail!("the demo builds network namespaces and loads XDP programs: {reason}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))?;
    }
    println!("== handoff demo: client -> edge (XDP sprayer) -> fd-a, fd-b, fd-c");
    let mut cluster = Cluster::create(&ClusterSpec {
        nodes: 3,
        services: 0,
        ..ClusterSpec::default()
    })?;
    println!(
        "test bed up: namespaces prefixed handoff-{}-*, logs in {}",
        cluster.prefix,
        cluster.log_dir.display()
    );
    let config = cluster.edge_config(false);
    cluster.start_edge(&config)?;
    let sinks: Vec<_> = (0..3)
        .map(|i| cluster.start_node_sink(i, FLOWS, 2))
        .collect::<Result<_>>()?;
    let count = RATE * SECONDS;
    let (gen, gen_json) = cluster.start_client_gen(FLOWS, RATE, count)?;
    println!("sending {count} UDP packets over {FLOWS} flows at {RATE} pps ...");

    sleep_unless(&stop, Duration::from_secs(SECONDS / 2))?;
    let before = cluster.admin(&["stats"])?;
    let flip = cluster.admin(&["scope", "remove", "fd-a"])?;
    println!(
        "t={}s: scope flipped without fd-a: version {}, {} buckets moved, generation {}",
        SECONDS / 2,
        flip["version"],
        flip["moved_buckets"],
        flip["generation"]
    );
    let deadline = Instant::now() + Duration::from_secs(SECONDS + 30);
    while cluster.process(gen).running() {
        if Instant::now() > deadline {
            bail!("the generator did not finish");
        }
        sleep_unless(&stop, Duration::from_millis(200))?;
    }
    let after = cluster.admin(&["stats"])?;
    for &(idx, _) in &sinks {
        if cluster.process(idx).wait_timeout(Duration::from_secs(30))?.is_none() {
            bail!("a sink did not finish");
        }
    }
    let gen: GenReport = read_json(&gen_json)?;
    let reports: Vec<SinkReport> = sinks.iter().map(|(_, json)| read_json(json)).collect::<Result<_>>()?;

    println!(
        "\n{:<6} {:>16} {:>16} {:>10}",
        "member", "sprayed before", "sprayed after", "received"
    );
    for (i, r) in reports.iter().enumerate() {
        let sprayed = |v: &serde_json::Value| v["members"][i]["packets"].as_u64().unwrap_or(0);
        println!(
            "{:<6} {:>16} {:>16} {:>10}",
            node_name(i),
            sprayed(&before),
            sprayed(&after) - sprayed(&before),
            r.received
        );
    }
    let received: u64 = reports.iter().map(|r| r.received).sum();
    let reordered: u64 = reports.iter().map(|r| r.reordered).sum();
    let duplicated: u64 = reports.iter().map(|r| r.duplicated).sum();
    println!(
        "\nsent {} received {} lost {} reordered {} duplicated {} (generator {:.0} pps)",
        gen.sent,
        received,
        gen.sent.saturating_sub(received),
        reordered,
        duplicated,
        gen.rate_pps
    );
    println!("edge verdicts: {}", after["reasons"]);
    println!(
        "\nNote: a bare scope flip moves fd-a's flows without their state; `handoff disengage` migrates it first."
    );
    let ok = received == gen.sent && duplicated == 0;
    drop(cluster);
    println!("test bed removed.");
    if !ok {
        bail!("packets were lost or duplicated");
    }
    Ok(())
}
