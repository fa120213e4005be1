//! The edge daemon (and with it the migration manager) crashes during steady
//! state and comes back: the sprayer is pinned in a bpffs of this run, so it
//! keeps spraying by the last published scope while no daemon runs; the new
//! daemon takes the pins over without publishing anything, the nodes
//! register again on their own, every member is ACTIVE with the same scope,
//! no failover fires, and a disengage/engage of fd-a afterwards still moves
//! it without loss. UDP echo over 10,000 flows and 200 kernel TCP connections
//! run throughout.

use handoff_testbed::{
    privileged,
    service_path::{assert_every_echo, LoadReports, LoadSpec},
    wait_until, Cluster,
};
use std::time::{Duration, Instant};

const FLOWS: u32 = 10_000;
const COUNT: u64 = 80_000;
const LOAD: LoadSpec = LoadSpec {
    flows: FLOWS,
    rate: 4_000,
    count: COUNT,
    connections: 200,
    requests: 1_200,
    per_flow: false,
};

/// What the manager says about the scope and each member.
#[derive(Debug, PartialEq)]
struct Seen {
    version: u64,
    digest: String,
    /// `(name, buckets, status, registered)` per member.
    members: Vec<(String, u64, String, bool)>,
}

fn seen(cluster: &Cluster) -> Seen {
    let status = cluster.admin(&["status"]).unwrap();
    Seen {
        version: status["scope_version"].as_u64().unwrap(),
        digest: status["scope_digest"].as_str().unwrap().to_string(),
        members: status["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap().to_string(),
                    m["buckets"].as_u64().unwrap(),
                    m["status"].as_str().unwrap_or("unregistered").to_string(),
                    m["registered"].as_bool().unwrap(),
                )
            })
            .collect(),
    }
}

fn all_registered_and_active(seen: &Seen) -> bool {
    seen.members
        .iter()
        .all(|(_, _, status, registered)| status == "Active" && *registered)
}

fn sprayed(cluster: &Cluster) -> u64 {
    cluster.admin(&["stats"]).unwrap()["reasons"]["sprayed"]
        .as_u64()
        .unwrap()
}

/// `text` without its ANSI colour sequences.
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|&c| c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn rx_of(stats: &serde_json::Value) -> u64 {
    stats["totals"]["rx"].as_u64().unwrap()
}

#[test]
fn the_edge_restarts_under_load_and_forwarding_never_stops() {
    if !privileged("the_edge_restarts_under_load_and_forwarding_never_stops") {
        return;
    }
    let mut cluster = Cluster::pinned_service_path(2).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || all_registered_and_active(&seen(&cluster))),
        "{:?}",
        seen(&cluster)
    );
    let pins = cluster.edge_pin_dir().unwrap();
    for pin in ["SCOPE", "SCOPE_VERSIONS", "MEMBERS", "EGRESS", "DST_MATCH"] {
        assert!(pins.join(pin).exists(), "{pin} is pinned in {}", pins.display());
    }
    let load = cluster.start_client_load(&LOAD).unwrap();
    std::thread::sleep(Duration::from_secs(3));

    let before = seen(&cluster);
    assert_eq!(before.version, 1, "{before:?}");
    let sprayed_before = sprayed(&cluster);
    let nodes_before: Vec<u64> = (0..3).map(|i| rx_of(&cluster.node_stats(i).unwrap())).collect();
    assert!(sprayed_before > 0);

    let killed_at = Instant::now();
    cluster.running_edge().unwrap().kill().unwrap();
    assert!(cluster.running_edge().is_none());
    // Nothing manages the cluster now; the pinned sprayer still runs.
    std::thread::sleep(Duration::from_secs(3));
    let nodes_down: Vec<u64> = (0..3).map(|i| rx_of(&cluster.node_stats(i).unwrap())).collect();
    for (i, (down, up)) in nodes_down.iter().zip(&nodes_before).enumerate() {
        assert!(down > up, "node {i} received nothing while the edge daemon was down");
    }

    let config = cluster.edge_config(true);
    let restarted_at = Instant::now();
    cluster.start_edge(&config).unwrap();
    let serving_at = Instant::now();
    let sprayed_after = sprayed(&cluster);
    assert!(
        sprayed_after > sprayed_before,
        "the counters were taken over and kept counting: {sprayed_before} -> {sprayed_after}"
    );
    let log = plain(&cluster.running_edge().unwrap().stderr());
    assert!(log.contains("took over the pinned sprayer"), "{log}");
    assert_eq!(
        log.matches("attached through a pinned link").count(),
        log.matches("adopted=true").count(),
        "every link was taken over, none created: {log}"
    );

    assert!(
        wait_until(Duration::from_secs(10), || all_registered_and_active(&seen(&cluster))),
        "{:?}",
        seen(&cluster)
    );
    let registered_at = Instant::now();
    let after = seen(&cluster);
    assert_eq!(after, before, "the same scope, every member back and ACTIVE");
    eprintln!(
        "edge down {:.0} ms (kill to restarted daemon serving; its start took {:.0} ms), sprayed meanwhile {} packets, all {} nodes registered {:.0} ms after it served",
        (serving_at - killed_at).as_secs_f64() * 1e3,
        (serving_at - restarted_at).as_secs_f64() * 1e3,
        sprayed_after - sprayed_before,
        after.members.len(),
        (registered_at - serving_at).as_secs_f64() * 1e3,
    );
    // Past the failure limit and the failover delay (1 s each on the test
    // bed): a restart is no reason to take anyone out of the scope.
    std::thread::sleep(Duration::from_secs(3));
    let later = seen(&cluster);
    assert_eq!(later, before, "no failover after the restart");
    let refreshed = cluster.admin(&["status"]).unwrap();
    for member in refreshed["members"].as_array().unwrap() {
        assert_eq!(member["scope_version"], 1, "{refreshed}");
        assert!(member["last_seen_ms"].as_u64().unwrap() < 1000, "{refreshed}");
    }

    // The restarted manager still runs migrations.
    let out = cluster.migrate(&["disengage", "fd-a"]).unwrap();
    assert!(out.contains("fd-a: Disengaged after"), "{out}");
    let out = cluster.migrate(&["engage", "fd-a"]).unwrap();
    assert!(out.contains("fd-a: Active after"), "{out}");
    let moved = seen(&cluster);
    assert!(all_registered_and_active(&moved), "{moved:?}");
    assert_eq!(moved.version, before.version + 2, "{moved:?}");

    let LoadReports { gen, sink, tcp } = cluster.finish_client_load(&load, Duration::from_secs(120)).unwrap();
    let stats: Vec<serde_json::Value> = (0..3).map(|i| cluster.node_stats(i).unwrap()).collect();
    let context = format!("sink {sink:?}\ntcp {tcp:?}\nnodes {stats:#?}");
    assert_eq!(gen.sent, COUNT);
    assert_every_echo(&sink, COUNT, &context);
    assert!(tcp.ok(), "{context}");
    assert_eq!(
        (tcp.completed, tcp.reset, tcp.timed_out, tcp.corrupted),
        (u64::from(LOAD.connections), 0, 0, 0),
        "{context}"
    );
    for s in &stats {
        assert_eq!(s["totals"]["dropped"], 0, "{context}");
    }
}

/// Whether the edge's client-side interface has an XDP program attached.
fn sprayer_attached(cluster: &Cluster) -> bool {
    let ifname = cluster.edge_client_port.ifname.clone();
    cluster
        .edge
        .ip(&["link", "show", "dev", &ifname])
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("prog/xdp"))
}

#[test]
fn a_member_gone_while_the_edge_was_down_fails_over_and_edge_detach_removes_the_sprayer() {
    if !privileged("a_member_gone_while_the_edge_was_down_fails_over_and_edge_detach_removes_the_sprayer") {
        return;
    }
    let mut cluster = Cluster::pinned_service_path(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || all_registered_and_active(&seen(&cluster))),
        "{:?}",
        seen(&cluster)
    );
    // Scope version 3 before the restart: the version survives it.
    cluster.scope_remove("fd-c").unwrap();
    cluster.admin(&["scope", "add", "fd-c"]).unwrap();
    let node_versions = |cluster: &Cluster| -> Vec<u64> {
        let status = cluster.admin(&["status"]).unwrap();
        status["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["scope_version"].as_u64().unwrap_or(0))
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(10), || node_versions(&cluster) == [3, 3, 3]),
        "{:?}",
        node_versions(&cluster)
    );
    let before = seen(&cluster);
    cluster.running_edge().unwrap().kill().unwrap();
    cluster.process_named("fd-c").unwrap().kill().unwrap();
    let config = cluster.edge_config(true);
    cluster.start_edge(&config).unwrap();
    let restarted = seen(&cluster);
    assert_eq!(
        (restarted.version, &restarted.digest),
        (3, &before.digest),
        "{restarted:?}"
    );
    assert!(restarted.members[2].1 > 0, "fd-c is still in the scope it took over");
    assert!(
        wait_until(Duration::from_secs(10), || node_versions(&cluster)[..2] == [3, 3]),
        "the survivors registered again and forward by the version they had: {:?}",
        node_versions(&cluster)
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = seen(&cluster);
            s.members[2].1 == 0 && s.version == 4
        }),
        "fd-c never came back and was failed over: {:?}",
        seen(&cluster)
    );
    let after = seen(&cluster);
    assert_eq!(
        after
            .members
            .iter()
            .map(|(_, _, status, registered)| (status.as_str(), *registered))
            .collect::<Vec<_>>(),
        [("Active", true), ("Active", true), ("Failed", false)],
        "{after:?}"
    );

    // A clean stop leaves the sprayer attached; edge-detach removes it, but
    // not while an edge daemon runs.
    let handoff = handoff_testbed::binaries::binary("handoff").unwrap();
    let config_path = cluster.log_dir.join("edge.toml");
    let detach = || {
        std::process::Command::new(&handoff)
            .args(["edge-detach", "--json", "--config"])
            .arg(&config_path)
            .output()
            .unwrap()
    };
    let refused = detach();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("stop it first"),
        "{refused:?}"
    );
    assert!(cluster.running_edge().unwrap().stop().unwrap().success());
    let pins = cluster.edge_pin_dir().unwrap();
    assert!(sprayer_attached(&cluster), "SIGTERM leaves the pinned sprayer attached");
    assert!(pins.join(format!("link-{}", cluster.edge_client_port.ifname)).exists());
    let done = detach();
    assert!(done.status.success(), "{done:?}");
    let report: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(report["links"].as_array().unwrap().len(), 2, "{report}");
    assert!(!pins.exists(), "{report}");
    assert!(!sprayer_attached(&cluster));
    let again = detach();
    assert!(again.status.success(), "nothing left to remove is no error: {again:?}");
}
