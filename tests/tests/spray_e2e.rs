//! End to end on the namespace test bed: a client sprays 10,000 UDP flows
//! through the edge's XDP sprayer to three members, then the scope is flipped
//! to remove one member while traffic runs.

use handoff::scope::{HashParams, Scope};
use handoff_bench::{
    flows::FlowSet,
    report::{GenReport, SinkReport},
};
use handoff_common::flow_key::FlowKey;
use handoff_testbed::{
    cluster::{read_json, VIP},
    privileged, Cluster, ClusterSpec,
};
use std::{collections::HashMap, time::Duration};

const FLOWS: u32 = 10_000;
const RATE: u64 = 20_000;
const COUNT: u64 = 120_000;

#[test]
fn spray_then_flip_a_member_out_with_no_loss_and_only_its_flows_moving() {
    if !privileged("spray_then_flip_a_member_out_with_no_loss_and_only_its_flows_moving") {
        return;
    }
    let mut cluster = Cluster::create(&ClusterSpec {
        nodes: 3,
        services: 0,
        ..ClusterSpec::default()
    })
    .unwrap();
    let config = cluster.edge_config(false);
    cluster.start_edge(&config).unwrap();
    let sinks: Vec<_> = (0..3).map(|i| cluster.start_node_sink(i, FLOWS, 2).unwrap()).collect();
    let (gen, gen_json) = cluster.start_client_gen(FLOWS, RATE, COUNT).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let flip = cluster.admin(&["scope", "remove", "fd-a"]).unwrap();
    assert_eq!(flip["result"], "scope_changed", "{flip}");
    assert!(
        cluster
            .process(gen)
            .wait_timeout(Duration::from_secs(30))
            .unwrap()
            .is_some_and(|s| s.success()),
        "gen failed: {}",
        cluster.process(gen).stderr()
    );
    let gen: GenReport = read_json(&gen_json).unwrap();
    assert_eq!(gen.sent, COUNT);
    let stats = cluster.admin(&["stats"]).unwrap();
    for &(idx, _) in &sinks {
        assert!(
            cluster
                .process(idx)
                .wait_timeout(Duration::from_secs(30))
                .unwrap()
                .is_some(),
            "sink did not finish"
        );
    }
    let reports: Vec<SinkReport> = sinks.iter().map(|(_, json)| read_json(json).unwrap()).collect();
    let src = cluster.client_port.ip;

    // No packet lost or duplicated at the edge: every packet reached exactly one member.
    let received: u64 = reports.iter().map(|r| r.received).sum();
    assert_eq!(received, COUNT, "sum over members");
    for (member, r) in reports.iter().enumerate() {
        assert_eq!((r.duplicated, r.reordered, r.malformed), (0, 0, 0), "member {member}");
    }
    assert_eq!(stats["result"], "stats");
    assert_eq!(stats["reasons"]["sprayed"], COUNT, "edge counters: {stats}");
    for drop in [
        "drop_truncated",
        "drop_bad_header",
        "drop_no_member",
        "drop_redirect_failed",
    ] {
        assert_eq!(stats["reasons"][drop], 0, "{drop}: {stats}");
    }

    // Where each flow went, and in which sequence ranges.
    let mut seen: HashMap<u32, Vec<(usize, u64, u32)>> = HashMap::new();
    for (member, r) in reports.iter().enumerate() {
        for f in r.per_flow.as_ref().unwrap() {
            seen.entry(f.flow).or_default().push((member, f.received, f.highest));
        }
    }
    assert_eq!(seen.len(), FLOWS as usize, "every flow arrived somewhere");
    let flows = FlowSet {
        count: FLOWS,
        src_base: src,
        first_port: 1024,
        dst: VIP,
        dst_port: 7000,
    };
    let before = Scope::initial(65536, &[0, 1, 2]).unwrap();
    let after = before.rebuilt(&[1, 2]).unwrap();
    let params = HashParams::default();
    let mut initial_share = [0u32; 3];
    for (flow, places) in &seen {
        let (addr, port) = flows.source(*flow);
        let key = FlowKey::new(addr.into(), VIP.into(), port, 7000, 17);
        let bucket = params.bucket(&key);
        let (first, then) = (before.owner(bucket) as usize, after.owner(bucket) as usize);
        initial_share[first] += 1;
        if first != 0 {
            // A flow of a surviving member never moved.
            assert_eq!(places.len(), 1, "flow {flow} of member {first} moved: {places:?}");
            assert_eq!(places[0].0, first, "flow {flow} at the wrong member");
        } else {
            // fd-a's flows: first at fd-a, then at their new owner, every packet once.
            assert!(
                places.iter().all(|p| p.0 == 0 || p.0 == then),
                "flow {flow}: {places:?}"
            );
            let total: u64 = places.iter().map(|p| p.1).sum();
            assert_eq!(
                total,
                places.iter().map(|p| p.2 as u64).max().unwrap() + 1,
                "flow {flow}: {places:?}"
            );
        }
    }
    let even = FLOWS as f64 / 3.0;
    for (member, &n) in initial_share.iter().enumerate() {
        assert!(
            (n as f64 - even).abs() / even <= 0.05,
            "member {member} had {n} of {FLOWS} flows"
        );
    }
    // The removed member got traffic before the flip and none after.
    assert!(reports[0].received > 0);
    assert!(reports[1].received + reports[2].received > 2 * COUNT / 3);
    drop(cluster);
}
