//! Taking a node out of service and back while traffic runs: `handoff
//! disengage fd-a` hands its connections to their inheritors, flips the
//! scope, drains and purges it; `handoff engage fd-a` puts it back. UDP echo
//! over 10,000 flows and 200 kernel TCP connections run throughout.

use handoff_testbed::{
    privileged,
    service_path::{LoadReports, LoadSpec},
    Cluster,
};
use std::time::Duration;

const FLOWS: u32 = 10_000;
const COUNT: u64 = 60_000;
const TCP_CONNECTIONS: u32 = 200;
const LOAD: LoadSpec = LoadSpec {
    flows: FLOWS,
    rate: 4_000,
    count: COUNT,
    connections: TCP_CONNECTIONS,
    requests: 600,
};

fn rx_of(stats: &serde_json::Value) -> u64 {
    stats["totals"]["rx"].as_u64().unwrap()
}

#[test]
fn a_node_leaves_and_rejoins_under_load_with_no_loss_and_no_broken_connection() {
    if !privileged("a_node_leaves_and_rejoins_under_load_with_no_loss_and_no_broken_connection") {
        return;
    }
    let mut cluster = Cluster::service_path(2).unwrap();
    let load = cluster.start_client_load(&LOAD).unwrap();

    std::thread::sleep(Duration::from_secs(4));
    let before = cluster.node_stats(0).unwrap();
    assert!(before["totals"]["active"].as_u64().unwrap() > 1000, "{before}");
    let out = cluster.migrate("disengage", "fd-a").unwrap();
    assert!(out.contains("fd-a is disengaged"), "{out}");
    let released = cluster.node_stats(0).unwrap();
    assert_eq!(released["totals"]["active"], 0, "fd-a's table is empty: {released}");

    // Out of the scope, fd-a receives no data-plane packet.
    std::thread::sleep(Duration::from_secs(3));
    let idle = cluster.node_stats(0).unwrap();
    assert_eq!(
        rx_of(&idle),
        rx_of(&released),
        "fd-a got traffic while disengaged: {out}\n{idle}"
    );
    let edge_stats = cluster.admin(&["status"]).unwrap();
    assert_eq!(edge_stats["members"][0]["buckets"], 0, "{edge_stats}");

    // Back in: it takes its buckets again, and the connections it handed over
    // stay where they are.
    let out = cluster.migrate("engage", "fd-a").unwrap();
    assert!(out.contains("back in the scope"), "{out}");

    let LoadReports { gen, sink, tcp } = cluster.finish_client_load(&load, Duration::from_secs(120)).unwrap();
    let stats: Vec<serde_json::Value> = (0..3).map(|i| cluster.node_stats(i).unwrap()).collect();
    let context = format!("sink {sink:?}\ntcp {tcp:?}\nnodes {stats:#?}");
    assert_eq!(gen.sent, COUNT);
    assert_eq!(
        (sink.received, sink.lost, sink.reordered, sink.duplicated),
        (COUNT, Some(0), 0, 0),
        "{context}"
    );
    assert!(tcp.ok(), "{context}");
    assert_eq!((tcp.reset, tcp.timed_out, tcp.corrupted), (0, 0, 0), "{context}");
    for s in &stats {
        assert_eq!(s["totals"]["dropped"], 0, "{context}");
    }
    // After rejoining, fd-a carried traffic again.
    assert!(rx_of(&stats[0]) > rx_of(&idle), "{context}");
}

#[test]
fn an_unreachable_inheritor_aborts_the_handover_and_nothing_changes() {
    if !privileged("an_unreachable_inheritor_aborts_the_handover_and_nothing_changes") {
        return;
    }
    let mut cluster = Cluster::service_path(2).unwrap();
    let load = cluster.start_client_load(&LOAD).unwrap();
    std::thread::sleep(Duration::from_secs(3));

    // fd-b's control port goes silent, as if its host had died.
    let rules = "table inet handoff_test {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    tcp dport 7700 drop\n  }\n}\n";
    let path = cluster.write_file("silence-fd-b.nft", rules).unwrap();
    let fd_b = &cluster.nodes[1].ns;
    fd_b.exec("nft", &["-f", &path.display().to_string()]).unwrap();
    let held = cluster.node_stats(0).unwrap()["totals"]["active"].as_u64().unwrap();
    let err = cluster.migrate("disengage", "fd-a").unwrap_err().to_string();
    assert!(err.contains("nothing was cut"), "{err}");
    let after = cluster.node_stats(0).unwrap();
    assert!(
        after["totals"]["active"].as_u64().unwrap() >= held,
        "fd-a kept its connections: {after}"
    );
    let status = cluster.admin(&["status"]).unwrap();
    assert!(
        status["members"][0]["buckets"].as_u64().unwrap() > 0,
        "the scope is unchanged: {status}"
    );

    // Once fd-b answers again, the same disengage goes through.
    fd_b.exec("nft", &["delete", "table", "inet", "handoff_test"]).unwrap();
    let out = cluster.migrate("disengage", "fd-a").unwrap();
    assert!(out.contains("fd-a is disengaged"), "{out}");

    let LoadReports { sink, tcp, .. } = cluster.finish_client_load(&load, Duration::from_secs(120)).unwrap();
    assert_eq!(
        (sink.received, sink.lost, sink.reordered, sink.duplicated),
        (COUNT, Some(0), 0, 0),
        "{sink:?}"
    );
    assert!(tcp.ok(), "{tcp:?}");
}

#[test]
fn ten_disengage_engage_cycles_in_a_row_lose_nothing() {
    if !privileged("ten_disengage_engage_cycles_in_a_row_lose_nothing") {
        return;
    }
    const CYCLES: usize = 10;
    const CYCLE_RATE: u64 = 3_000;
    const CYCLE_COUNT: u64 = 105_000;
    let mut cluster = Cluster::service_path(2).unwrap();
    let load = cluster
        .start_client_load(&LoadSpec {
            rate: CYCLE_RATE,
            count: CYCLE_COUNT,
            requests: 2_000,
            ..LOAD
        })
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    for cycle in 0..CYCLES {
        let out = cluster.migrate("disengage", "fd-a").unwrap();
        assert!(out.contains("fd-a is disengaged"), "cycle {cycle}: {out}");
        std::thread::sleep(Duration::from_millis(500));
        let out = cluster.migrate("engage", "fd-a").unwrap();
        assert!(out.contains("back in the scope"), "cycle {cycle}: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let LoadReports { sink, tcp, .. } = cluster.finish_client_load(&load, Duration::from_secs(180)).unwrap();
    let stats: Vec<serde_json::Value> = (0..3).map(|i| cluster.node_stats(i).unwrap()).collect();
    assert_eq!(
        (sink.received, sink.lost, sink.reordered, sink.duplicated),
        (CYCLE_COUNT, Some(0), 0, 0),
        "{sink:?}\n{stats:#?}"
    );
    assert!(tcp.ok(), "{tcp:?}");
    for s in &stats {
        assert_eq!(s["totals"]["dropped"], 0, "{stats:#?}");
    }
}
