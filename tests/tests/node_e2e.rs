//! The node's whole path on real namespaces: client -> edge (sprayer) ->
//! fd-a/fd-b/fd-c (`handoff node`, AF_XDP, DNAT) -> svc-1..3, and the replies
//! back through the edge, which sprays them by their own 5-tuple so most
//! land on a node that must forward them to the connection's owner. Mid-run
//! fd-a leaves the scope without handing over its connections: all their
//! packets then arrive elsewhere and must still reach it.

use handoff_testbed::{
    privileged,
    service_path::{assert_every_echo, LoadReports, LoadSpec},
    Cluster,
};
use std::time::Duration;

const FLOWS: u32 = 10_000;
const COUNT: u64 = 40_000;
const TCP_CONNECTIONS: u32 = 200;
const TCP_REQUESTS: u32 = 20;
const LOAD: LoadSpec = LoadSpec {
    flows: FLOWS,
    rate: 4_000,
    count: COUNT,
    connections: TCP_CONNECTIONS,
    requests: TCP_REQUESTS,
    per_flow: false,
};

#[test]
fn udp_echo_and_kernel_tcp_cross_the_nodes_with_no_loss_and_owner_forwarding() {
    if !privileged("udp_echo_and_kernel_tcp_cross_the_nodes_with_no_loss_and_owner_forwarding") {
        return;
    }
    let mut cluster = Cluster::service_path(2).unwrap();
    let load = cluster.start_client_load(&LOAD).unwrap();

    // Mid-run, fd-a leaves the scope (edge and nodes) without handing over
    // its connections: its packets now reach other nodes, which must forward
    // them to fd-a, their owner.
    std::thread::sleep(Duration::from_secs(4));
    let flip = cluster.scope_remove("fd-a").unwrap();
    assert_eq!(flip["result"], "scope_changed", "{flip}");
    let edge_at_flip = cluster.admin(&["stats"]).unwrap();
    let fd_a_at_flip = cluster.node_stats(0).unwrap();

    let LoadReports { gen, sink, tcp } = cluster.finish_client_load(&load, Duration::from_secs(90)).unwrap();
    let stats: Vec<serde_json::Value> = (0..3).map(|i| cluster.node_stats(i).unwrap()).collect();
    let context = format!("sink {sink:?}\ntcp {tcp:?}\nnodes {stats:#?}");

    // Every UDP packet came back once, in order.
    assert_eq!(gen.sent, COUNT);
    assert_every_echo(&sink, COUNT, &context);
    assert_eq!(sink.flows_seen, FLOWS as u64, "{context}");
    // Every kernel TCP connection completed every exchange.
    assert!(tcp.ok(), "{context}");
    assert_eq!(tcp.responses, u64::from(TCP_CONNECTIONS * TCP_REQUESTS), "{context}");
    assert_eq!((tcp.reset, tcp.timed_out, tcp.corrupted), (0, 0, 0), "{context}");

    // The owner-forwarding paths were taken, and nothing was dropped.
    let total = |field: &str| stats.iter().map(|s| s["totals"][field].as_u64().unwrap()).sum::<u64>();
    assert!(total("forwarded_to_node") > 0, "{context}");
    assert_eq!(total("forwarded_to_node"), total("received_from_node"), "{context}");
    assert!(total("forwarded_to_core") > 0, "{context}");
    assert_eq!(total("dropped"), 0, "{context}");
    assert_eq!(
        total("created"),
        u64::from(FLOWS) + u64::from(TCP_CONNECTIONS),
        "one connection per UDP flow and per TCP connection: {context}"
    );
    // After the flip the edge sent fd-a nothing new (at most what was in
    // flight when the stats were read), yet fd-a kept serving its
    // connections through the other nodes.
    let edge_after = cluster.admin(&["stats"]).unwrap();
    let sprayed_to_fd_a = |v: &serde_json::Value| v["members"][0]["packets"].as_u64().unwrap();
    assert!(
        sprayed_to_fd_a(&edge_after) - sprayed_to_fd_a(&edge_at_flip) < 100,
        "{edge_at_flip}\n{edge_after}"
    );
    let from_node = |v: &serde_json::Value| v["totals"]["received_from_node"].as_u64().unwrap();
    assert!(
        from_node(&stats[0]) - from_node(&fd_a_at_flip) > 1000,
        "fd-a got no forwarded traffic after the flip: {context}"
    );
    // Announcements reached the peers.
    let announced: u64 = stats
        .iter()
        .map(|s| s["control"]["flows_announced"].as_u64().unwrap())
        .sum();
    assert_eq!(announced, total("created"), "{context}");
    for s in &stats {
        assert_eq!(s["control"]["announce_failures"], 0, "{context}");
        assert!(s["control"]["announces_received"].as_u64().unwrap() > 0, "{context}");
    }
}
