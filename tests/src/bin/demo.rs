//! `make demo`: the namespace cluster with the full service path (edge
//! sprayer, three `handoff node`s, three services), UDP and kernel TCP
//! traffic through it, one node flipped out of the hash scope mid-run, and a
//! report.
//!
//! Everything it creates carries a per-run prefix and is removed on every
//! exit path, including Ctrl-C.

use anyhow::{bail, Result};
use handoff_bench::{
    report::{GenReport, SinkReport},
    tcp::TcpClientReport,
};
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
const RATE: u64 = 8_000;
const SECONDS: u64 = 8;
const TCP_CONNECTIONS: u32 = 200;
const TCP_REQUESTS: u32 = 300;

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
    println!("== handoff demo: client -> edge (XDP sprayer) -> fd-a, fd-b, fd-c (handoff node) -> svc-1..3, and back");
    let mut cluster = Cluster::create(&ClusterSpec {
        node_queues: 2,
        ..ClusterSpec::default()
    })?;
    println!(
        "test bed up: namespaces prefixed handoff-{}-*, logs in {}",
        cluster.prefix,
        cluster.log_dir.display()
    );
    let config = cluster.edge_config(true);
    cluster.start_edge(&config)?;
    cluster.start_services()?;
    cluster.start_nodes(2)?;
    println!("edge, 3 nodes (2 workers each, AF_XDP) and 3 services (UDP echo, TCP server) are up");
    let (tcp, tcp_json) = cluster.start_tcp_clients(TCP_CONNECTIONS, TCP_REQUESTS)?;
    let count = RATE * SECONDS;
    let (traffic, gen_json, sink_json) = cluster.start_client_traffic(FLOWS, RATE, count)?;
    println!(
        "client: {count} UDP echo requests over {FLOWS} flows at {RATE} pps, and {TCP_CONNECTIONS} kernel TCP connections x {TCP_REQUESTS} requests, to VIP {}",
        handoff_testbed::cluster::VIP
    );

    sleep_unless(&stop, Duration::from_secs(SECONDS / 2))?;
    let before = cluster.admin(&["stats"])?;
    let flip = cluster.scope_remove_everywhere("fd-a")?;
    println!(
        "t={}s: scope flipped without fd-a (edge and nodes): version {}, {} buckets moved; \
         fd-a's connections keep their owner: the other nodes forward their packets to it",
        SECONDS / 2,
        flip["version"],
        flip["moved_buckets"],
    );
    let deadline = Instant::now() + Duration::from_secs(SECONDS + 60);
    for idx in [traffic, tcp] {
        while cluster.process(idx).running() {
            if Instant::now() > deadline {
                bail!("the client traffic did not finish");
            }
            sleep_unless(&stop, Duration::from_millis(200))?;
        }
    }
    let after = cluster.admin(&["stats"])?;
    let nodes: Vec<serde_json::Value> = (0..3).map(|i| cluster.node_stats(i)).collect::<Result<_>>()?;
    let gen: GenReport = read_json(&gen_json)?;
    let sink: SinkReport = read_json(&sink_json)?;
    let tcp: TcpClientReport = read_json(&tcp_json)?;

    println!(
        "\n{:<6} {:>15} {:>15} {:>9} {:>9} {:>11} {:>11} {:>9} {:>8}",
        "node", "sprayed before", "sprayed after", "rx", "created", "to core", "to node", "from node", "dropped"
    );
    for (i, stats) in nodes.iter().enumerate() {
        let sprayed = |v: &serde_json::Value| v["members"][i]["packets"].as_u64().unwrap_or(0);
        let t = &stats["totals"];
        println!(
            "{:<6} {:>15} {:>15} {:>9} {:>9} {:>11} {:>11} {:>9} {:>8}",
            node_name(i),
            sprayed(&before),
            sprayed(&after) - sprayed(&before),
            t["rx"],
            t["created"],
            t["forwarded_to_core"],
            t["forwarded_to_node"],
            t["received_from_node"],
            t["dropped"]
        );
    }
    let lost = sink.lost.unwrap_or(u64::MAX);
    println!(
        "\nUDP: sent {} echoed back {} lost {} reordered {} duplicated {} (p50 {:.0} us, p99 {:.0} us round trip)",
        gen.sent, sink.received, lost, sink.reordered, sink.duplicated, sink.latency_us.p50, sink.latency_us.p99
    );
    println!(
        "TCP: {} of {} connections completed {} exchanges; reset {}, timed out {} (p50 {:.0} us, p99 {:.0} us)",
        tcp.completed, tcp.connections, tcp.responses, tcp.reset, tcp.timed_out, tcp.latency_us.p50, tcp.latency_us.p99
    );
    println!(
        "\nNote: this flip moves buckets, not state; fd-a still owns its connections and serves them \
         through owner forwarding. Migrating them away (so fd-a can leave) is the disengage procedure."
    );
    let ok = lost == 0 && sink.reordered == 0 && sink.duplicated == 0 && tcp.ok();
    drop(cluster);
    println!("test bed removed.");
    if !ok {
        bail!("packets were lost, reordered or duplicated, or a TCP connection broke");
    }
    Ok(())
}
