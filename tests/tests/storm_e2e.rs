//! A malformed-frame storm (`handoff-bench storm`) at the edge's ingress,
//! from the client side, and at fd-a's interface, from its bridge port,
//! while the client's valid load (UDP echo, kernel TCP) runs through the
//! cluster. Then: every process of the cluster still runs, the drop
//! counters moved by what the storm's reports say, and the valid load lost
//! nothing.

use handoff_bench::storm::StormReport;
use handoff_testbed::{
    cluster::{arg, read_json, CLIENT_IP, CLIENT_IP6, VIP, VIP6},
    netns::mac_string,
    privileged,
    service_path::{assert_every_echo, LoadReports, LoadSpec},
    Cluster, NsRef,
};
use serde_json::Value;
use std::{collections::BTreeMap, time::Duration};

const COUNT: u64 = 16_000;
const LOAD: LoadSpec = LoadSpec {
    flows: 1_000,
    rate: 2_000,
    count: COUNT,
    connections: 20,
    requests: 400,
    per_flow: false,
};
/// Rounds of every storm class, at the storm's rate (2,000 frames/s): a
/// few seconds of storm inside the load's eight.
const ROUNDS: u32 = 10;

/// The edge's stats and every node's.
fn snapshot(cluster: &Cluster) -> (Value, Vec<Value>) {
    let edge = cluster.admin(&["stats"]).unwrap();
    let nodes = (0..cluster.nodes.len())
        .map(|i| cluster.node_stats(i).unwrap())
        .collect();
    (edge, nodes)
}

/// How much `counter` (`section.name`) moved between two snapshots: the
/// edge's `reasons`, or `steering` / `totals` summed over the nodes.
fn delta(before: &(Value, Vec<Value>), after: &(Value, Vec<Value>), counter: &str) -> u64 {
    let (section, name) = counter.split_once('.').expect("section.name");
    let read = |(edge, nodes): &(Value, Vec<Value>)| -> u64 {
        if section == "reasons" {
            edge[section][name].as_u64().unwrap_or(0)
        } else {
            nodes.iter().map(|n| n[section][name].as_u64().unwrap_or(0)).sum()
        }
    };
    read(after) - read(before)
}

/// Starts `handoff-bench storm` in `ns` on `interface` towards `dst_mac`.
fn start_storm(cluster: &mut Cluster, ns: NsRef, aim: &str, interface: String, dst_mac: [u8; 6]) -> usize {
    let bench = handoff_testbed::binaries::binary("handoff-bench").unwrap();
    let json = cluster.log_dir.join(format!("storm-{aim}.json"));
    let args = [
        arg("storm"),
        arg("--aim"),
        arg(aim),
        arg("--interface"),
        interface,
        arg("--dst-mac"),
        mac_string(dst_mac),
        arg("--src4"),
        arg(CLIENT_IP),
        arg("--dst4"),
        arg(VIP),
        arg("--src6"),
        arg(CLIENT_IP6),
        arg("--dst6"),
        arg(VIP6),
        arg("--rounds"),
        arg(ROUNDS),
        arg("--deadline-s"),
        arg(40),
        arg("--json"),
        arg(json.display()),
    ];
    cluster.spawn(&format!("storm-{aim}"), ns, &bench, &args).unwrap()
}

fn finish_storm(cluster: &mut Cluster, idx: usize, aim: &str) -> StormReport {
    let status = cluster.process(idx).wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "storm at the {aim}: {}",
        cluster.process(idx).stderr()
    );
    let report: StormReport = read_json(&cluster.log_dir.join(format!("storm-{aim}.json"))).unwrap();
    assert!(report.complete, "{report:?}");
    assert!(report.classes.iter().all(|c| c.send_failed == 0), "{report:?}");
    report
}

#[test]
fn a_malformed_frame_storm_is_counted_by_reason_and_the_valid_load_loses_nothing() {
    if !privileged("a_malformed_frame_storm_is_counted_by_reason_and_the_valid_load_loses_nothing") {
        return;
    }
    let mut cluster = Cluster::service_path(1).unwrap();
    let before = snapshot(&cluster);
    let load = cluster.start_client_load(&LOAD).unwrap();
    std::thread::sleep(Duration::from_secs(1));

    let client_if = cluster.client_port.ifname.clone();
    let edge_mac = cluster.edge_client_port.mac;
    let edge_storm = start_storm(&mut cluster, NsRef::Client, "edge", client_if, edge_mac);
    let node_port = cluster.node_bridge_port(0);
    let node_mac = cluster.nodes[0].port.mac;
    let node_storm = start_storm(&mut cluster, NsRef::Fabric, "node", node_port, node_mac);
    let storms = [
        finish_storm(&mut cluster, edge_storm, "edge"),
        finish_storm(&mut cluster, node_storm, "node"),
    ];

    let LoadReports { gen, sink, tcp } = cluster.finish_client_load(&load, Duration::from_secs(120)).unwrap();
    // Every drop is counted as the frame is handled; the load's last echo
    // came back, so nothing of the storm is still on its way.
    let after = snapshot(&cluster);

    // Every process the cluster started runs still, but those that end by
    // design: the load and the storms.
    let ended_by_design = ["traffic", "tcp-client", "storm-edge", "storm-node"];
    let stopped: Vec<String> = cluster
        .not_running()
        .into_iter()
        .filter(|p| !ended_by_design.iter().any(|n| p.starts_with(&format!("{n} "))))
        .collect();
    assert!(stopped.is_empty(), "stopped: {stopped:?}");

    // The counters of both storms together: both reach the nodes' workers.
    let mut exact: BTreeMap<String, u64> = BTreeMap::new();
    let mut at_least: BTreeMap<String, u64> = BTreeMap::new();
    for storm in &storms {
        for (counter, n) in &storm.exact {
            *exact.entry(counter.clone()).or_default() += n;
        }
        for (counter, n) in &storm.at_least {
            *at_least.entry(counter.clone()).or_default() += n;
        }
    }
    let context = format!("storms {storms:#?}\nbefore {before:#?}\nafter {after:#?}");
    // Exact: nothing but malformed frames moves these (the valid load
    // drops nothing, see disengage_e2e), and each storm frame is dropped
    // once, by the first XDP program or worker that reads the field it
    // breaks.
    for (counter, expected) in &exact {
        assert_eq!(delta(&before, &after, counter), *expected, "{counter}\n{context}");
    }
    // Lower bounds: the valid load and the hosts' own traffic (ARP,
    // neighbor discovery, ICMP) move these too.
    for (counter, expected) in &at_least {
        let moved = delta(&before, &after, counter);
        assert!(moved >= *expected, "{counter}: {moved} < {expected}\n{context}");
    }
    // No other drop moved: not at the edge, not at a node's steering, not
    // in the workers (whose total is the sum of their drop counters).
    for reason in handoff_common::counters::Reason::ALL {
        let name = reason.name();
        if name.starts_with("drop_") {
            for section in ["reasons", "steering"] {
                let counter = format!("{section}.{name}");
                let expected = exact.get(&counter).copied().unwrap_or(0);
                assert_eq!(delta(&before, &after, &counter), expected, "{counter}\n{context}");
            }
        }
    }
    let worker_drops: u64 = exact
        .iter()
        .filter(|(c, _)| c.starts_with("totals."))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(delta(&before, &after, "totals.dropped"), worker_drops, "{context}");

    // The valid load: every echo back once and in order, every TCP
    // exchange complete.
    let load_context = format!("gen {gen:?}\nsink {sink:?}\ntcp {tcp:?}");
    assert_eq!(gen.sent, COUNT, "{load_context}");
    assert_every_echo(&sink, COUNT, &load_context);
    assert!(tcp.ok(), "{load_context}");
    assert_eq!((tcp.reset, tcp.timed_out, tcp.corrupted), (0, 0, 0), "{load_context}");

    eprintln!(
        "storm: {} frames at the edge, {} at fd-a; load {} sent, {} echoed, lost {:?}, reordered {}",
        storms[0].sent, storms[1].sent, gen.sent, sink.received, sink.lost, sink.reordered
    );
    for storm in &storms {
        for class in &storm.classes {
            eprintln!("storm {} {}: {} sent", storm.aim, class.class, class.sent);
        }
    }
    for counter in exact.keys().chain(at_least.keys()) {
        eprintln!("counter {counter}: moved {}", delta(&before, &after, counter));
    }
}
