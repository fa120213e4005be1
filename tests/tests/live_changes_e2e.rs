//! Live changes to the nodes' services and backends under load, on the
//! netns cluster (three nodes, three services, `Cluster::service_path`):
//! kernel TCP connections (the bench's `tcp-client` against its
//! `tcp-server` on every svc-*) and UDP echo flows run while the test
//! drains a backend, removes one, adds it back and re-weights it, reloads
//! the policy file by SIGHUP, and makes changes that are refused.
//!
//! Which backend holds which connection is read from the backends' own
//! kernels (`ss` in each svc-* namespace: the peer is the client's address
//! and port, as the nodes only DNAT). Every outcome asserted is exact:
//! counts of connections per backend, resets, moved flows, table shares.

use handoff::flow::{config::PolicyConfig, Decision, FlowActions, NetworkAction, Policy};
use handoff_bench::{report::SinkReport, tcp::TcpClientReport};
use handoff_common::{flow_key::FlowKey, net::ipproto};
use handoff_testbed::{
    cluster::{arg, read_json, wait_until, VIP},
    netns::mac_string,
    privileged,
    service_path::{LoadSpec, TCP_PORT, UDP_PORT},
    Cluster, NsRef,
};
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

/// The TCP and UDP services of the IPv4 VIP, as the test bed names them.
const TCP_SERVICE: &str = "tcp-7100";
const UDP_SERVICE: &str = "udp-7000";
/// Connections of the first, long client: each lives about 25 s (a request
/// every 10 ms), through every change but the last.
const LONG_CONNECTIONS: u32 = 30;
const LONG_REQUESTS: u32 = 2500;
/// Connections of each short client opened after a change.
const SHORT_CONNECTIONS: u32 = 20;
const SHORT_REQUESTS: u32 = 200;
/// UDP echo flows and their rate: every flow sends within 64 ms.
const UDP_FLOWS: u32 = 64;
const UDP_RATE: u64 = 1000;

/// Runs `handoff args` with `--admin` for every node and `--json`:
/// whether it succeeded, and what it printed.
fn handoff_on_nodes(cluster: &Cluster, args: &[&str]) -> (bool, String) {
    let handoff = handoff_testbed::binaries::binary("handoff").unwrap();
    let mut cmd = std::process::Command::new(handoff);
    cmd.args(args).arg("--json");
    for i in 0..cluster.nodes.len() {
        cmd.arg("--admin").arg(cluster.node_admin_socket(i));
    }
    let out = cmd.output().unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// Makes a change on every node; fails the test if it is refused.
fn change(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let (ok, printed) = handoff_on_nodes(cluster, args);
    assert!(ok, "handoff {args:?} failed: {printed}");
    let answers: serde_json::Value = serde_json::from_str(&printed).unwrap_or_else(|e| panic!("{e}: {printed}"));
    assert_eq!(answers.as_array().map(Vec::len), Some(cluster.nodes.len()), "{printed}");
    answers
}

/// `handoff services` of every node (the services only, without the
/// answer's envelope).
fn listings(cluster: &Cluster) -> Vec<serde_json::Value> {
    (0..cluster.nodes.len())
        .map(|i| {
            let v = cluster.admin_at(&cluster.node_admin_socket(i), &["services"]).unwrap();
            serde_json::json!({"services": v["services"], "removed_backends": v["removed_backends"]})
        })
        .collect()
}

/// The backend `address`:`port` of `service` in a listing.
fn backend<'a>(listing: &'a serde_json::Value, service: &str, address: &str) -> &'a serde_json::Value {
    listing["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == service)
        .and_then(|s| {
            s["backends"]
                .as_array()
                .unwrap()
                .iter()
                .find(|b| b["address"] == address)
        })
        .unwrap_or_else(|| panic!("no backend {address} of {service} in {listing}"))
}

/// The client ports of the TCP connections service `i` has established
/// on the test's port, by its own kernel.
fn connections_on(cluster: &Cluster, i: usize) -> BTreeSet<u16> {
    let out = cluster
        .ns(NsRef::Service(i))
        .exec(
            "ss",
            &["-Htn", "state", "established", &format!("( sport = :{TCP_PORT} )")],
        )
        .unwrap();
    out.lines()
        .filter_map(|line| {
            let peer = line.split_whitespace().last()?;
            peer.rsplit_once(':')?.1.parse().ok()
        })
        .collect()
}

/// Every service's connections.
fn all_connections(cluster: &Cluster) -> Vec<BTreeSet<u16>> {
    (0..cluster.services.len())
        .map(|i| connections_on(cluster, i))
        .collect()
}

/// Starts the bench's TCP client: `connections` kernel connections to the
/// VIP, `requests` each, one every 10 ms.
fn start_tcp_client(cluster: &mut Cluster, name: &str, connections: u32, requests: u32) -> (usize, PathBuf) {
    let bench = handoff_testbed::binaries::binary("handoff-bench").unwrap();
    let json = cluster.log_dir.join(format!("{name}.json"));
    let args = [
        arg("tcp-client"),
        arg("--connect"),
        arg(format!("{VIP}:{TCP_PORT}")),
        arg("--connections"),
        arg(connections),
        arg("--requests-per-connection"),
        arg(requests),
        arg("--interval-ms"),
        arg(10),
        arg("--ramp-ms"),
        arg(500),
        arg("--duration"),
        arg(60),
        arg("--json"),
        arg(json.display()),
    ];
    let idx = cluster.spawn(name, NsRef::Client, &bench, &args).unwrap();
    (idx, json)
}

/// Waits (bounded) for the TCP client at `idx` to end and reads its report.
fn tcp_report(cluster: &mut Cluster, idx: usize, json: &Path) -> TcpClientReport {
    let status = cluster.process(idx).wait_timeout(Duration::from_secs(70)).unwrap();
    assert!(
        status.is_some(),
        "the TCP client did not end: {}",
        cluster.process(idx).stderr()
    );
    read_json(json).unwrap()
}

/// Watches the backends while a short client runs: every client port
/// seen, by backend. Bounded by `limit` and by the client's end.
fn watch_short_client(cluster: &mut Cluster, idx: usize, limit: Duration) -> Vec<BTreeSet<u16>> {
    let mut seen = vec![BTreeSet::new(); cluster.services.len()];
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline && cluster.process(idx).running() {
        for (i, ports) in all_connections(cluster).into_iter().enumerate() {
            seen[i].extend(ports);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    seen
}

/// The sum of a counter over every node's workers.
fn node_total(cluster: &Cluster, counter: &str) -> u64 {
    (0..cluster.nodes.len())
        .map(|i| cluster.node_stats(i).unwrap()["totals"][counter].as_u64().unwrap_or(0))
        .sum()
}

/// Packets service `i`'s interface received so far (read in its namespace).
fn rx_packets(cluster: &Cluster, i: usize) -> u64 {
    let ifname = &cluster.services[i].port.ifname;
    cluster
        .ns(NsRef::Service(i))
        .exec("cat", &[&format!("/sys/class/net/{ifname}/statistics/rx_packets")])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The client's UDP flows whose backend (by the initial policy) is `address`.
fn udp_flows_on(cluster: &Cluster, address: std::net::IpAddr) -> u64 {
    let policy = Policy::new(PolicyConfig::parse(&cluster.node_policy(), Path::new("policy.toml")).unwrap()).unwrap();
    let set = Cluster::client_flows(UDP_FLOWS);
    (0..UDP_FLOWS)
        .filter(|&flow| {
            let (src, port) = set.source(flow);
            let key = FlowKey::new(src.into(), VIP.into(), port, UDP_PORT, ipproto::UDP);
            matches!(
                policy.decide(&key),
                Decision::Install {
                    actions: FlowActions {
                        forward: NetworkAction::Rewrite(rw),
                        ..
                    },
                    ..
                } if rw.address == address
            )
        })
        .count() as u64
}

#[test]
fn backends_drain_leave_return_and_reweigh_under_load_and_bad_changes_change_nothing() {
    if !privileged("backends_drain_leave_return_and_reweigh_under_load_and_bad_changes_change_nothing") {
        return;
    }
    let mut cluster = Cluster::service_path(1).unwrap();
    let svc: Vec<String> = cluster.services.iter().map(|s| s.port.ip.to_string()).collect();
    let macs: Vec<String> = cluster.services.iter().map(|s| mac_string(s.port.mac)).collect();
    let initial = listings(&cluster);
    for listing in &initial {
        for address in &svc {
            assert_eq!(backend(listing, TCP_SERVICE, address)["state"], "active");
        }
    }

    // Load: UDP echo flows for the whole test, and the long TCP client.
    let (udp, _gen_json, sink_json) = cluster
        .start_client_traffic(&LoadSpec {
            flows: UDP_FLOWS,
            rate: UDP_RATE,
            count: UDP_RATE * 45,
            connections: 0,
            requests: 0,
            per_flow: false,
        })
        .unwrap();
    let (long, long_json) = start_tcp_client(&mut cluster, "tcp-long", LONG_CONNECTIONS, LONG_REQUESTS);
    assert!(
        wait_until(Duration::from_secs(15), || all_connections(&cluster)
            .iter()
            .map(BTreeSet::len)
            .sum::<usize>()
            == LONG_CONNECTIONS as usize),
        "the long client's connections did not all open: {:?}\n{}",
        all_connections(&cluster),
        cluster.process(long).stderr()
    );
    let long_on = all_connections(&cluster);
    let long_ports: BTreeSet<u16> = long_on.iter().flatten().copied().collect();
    println!(
        "long connections per backend: {:?}",
        long_on.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    assert!(
        long_on.iter().all(|c| !c.is_empty()),
        "every backend should hold some of {LONG_CONNECTIONS} connections: {long_on:?}"
    );

    // Drain svc-1 (index 0): its connections stay, new ones avoid it.
    let drain = [
        "backend",
        "drain",
        "--service",
        TCP_SERVICE,
        "--address",
        &svc[0],
        "--port",
        "7100",
    ];
    let answers = change(&cluster, &drain);
    for answer in answers.as_array().unwrap() {
        assert_eq!(answer["dry_run"], false);
        assert_eq!(backend(answer, TCP_SERVICE, &svc[0])["state"], "draining");
        assert_eq!(backend(answer, TCP_SERVICE, &svc[0])["table_entries"], 0);
    }
    let (short, short_json) = start_tcp_client(&mut cluster, "tcp-after-drain", SHORT_CONNECTIONS, SHORT_REQUESTS);
    let seen = watch_short_client(&mut cluster, short, Duration::from_secs(20));
    let report = tcp_report(&mut cluster, short, &short_json);
    assert_eq!(report.completed, u64::from(SHORT_CONNECTIONS), "{report:?}");
    let new_on: Vec<BTreeSet<u16>> = seen
        .iter()
        .map(|s| s.difference(&long_ports).copied().collect())
        .collect();
    println!(
        "new connections seen per backend after the drain: {:?}",
        new_on.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    assert!(
        new_on[0].is_empty(),
        "new connections reached the draining backend: {new_on:?}"
    );
    assert!(
        !new_on[1].is_empty() || !new_on[2].is_empty(),
        "the new connections were never seen: {new_on:?}"
    );
    assert_eq!(
        connections_on(&cluster, 0),
        long_on[0],
        "the draining backend's connections are the ones it had"
    );

    // Remove svc-2 (index 1) from the TCP and the UDP service: its TCP
    // connections get an RST (the default), its UDP flows move.
    let udp_on_removed = udp_flows_on(&cluster, cluster.services[1].port.ip.into());
    assert!(udp_on_removed > 0, "no UDP flow on the backend to remove");
    let rx_before = rx_packets(&cluster, 1);
    std::thread::sleep(Duration::from_secs(1));
    let rx_while_live = rx_packets(&cluster, 1) - rx_before;
    let resets_before = node_total(&cluster, "backend_resets");
    for service in [TCP_SERVICE, UDP_SERVICE] {
        let port = if service == TCP_SERVICE { "7100" } else { "7000" };
        let answers = change(
            &cluster,
            &[
                "backend",
                "remove",
                "--service",
                service,
                "--address",
                &svc[1],
                "--port",
                port,
            ],
        );
        for answer in answers.as_array().unwrap() {
            assert!(
                answer["removed_backends"]
                    .as_array()
                    .unwrap()
                    .contains(&format!("{}:{port}/{}", svc[1], &service[..3]).into()),
                "{answer}"
            );
        }
    }
    // Every connection it held is reset at its next request (10 ms).
    let expected_resets = long_on[1].len() as u64;
    assert!(
        wait_until(Duration::from_secs(5), || node_total(&cluster, "backend_resets")
            - resets_before
            >= expected_resets),
        "resets: {} of {expected_resets}",
        node_total(&cluster, "backend_resets") - resets_before
    );
    std::thread::sleep(Duration::from_millis(500));
    let rx_before = rx_packets(&cluster, 1);
    std::thread::sleep(Duration::from_secs(1));
    let rx_after_removal = rx_packets(&cluster, 1) - rx_before;
    println!("svc-2 received {rx_while_live} packets in 1 s while live, {rx_after_removal} after its removal");
    assert!(
        rx_while_live > 200,
        "the removed backend had little traffic before: {rx_while_live}"
    );
    // Neighbor discovery may still reach it; no flow does.
    assert!(
        rx_after_removal < 10,
        "the removed backend still gets traffic: {rx_after_removal}"
    );
    assert_eq!(
        node_total(&cluster, "backend_moved"),
        udp_on_removed,
        "each UDP flow of the removed backend moves exactly once"
    );
    assert_eq!(node_total(&cluster, "backend_resets") - resets_before, expected_resets);

    // Add it back, re-weight it: new connections reach it.
    change(
        &cluster,
        &[
            "backend",
            "add",
            "--service",
            TCP_SERVICE,
            "--address",
            &svc[1],
            "--port",
            "7100",
            "--mac",
            &macs[1],
        ],
    );
    let answers = change(
        &cluster,
        &[
            "backend",
            "weight",
            "--service",
            TCP_SERVICE,
            "--address",
            &svc[1],
            "--port",
            "7100",
            "--weight",
            "3",
        ],
    );
    for answer in answers.as_array().unwrap() {
        let back = backend(answer, TCP_SERVICE, &svc[1]);
        assert_eq!(
            (back["state"].as_str(), back["weight"].as_u64()),
            (Some("active"), Some(3))
        );
        // svc-1 drains: svc-2 has 3 of the 4 weights, svc-3 the last one.
        assert_eq!(back["table_entries"], 3072);
        assert_eq!(backend(answer, TCP_SERVICE, &svc[2])["table_entries"], 1024);
    }
    let (short, short_json) = start_tcp_client(&mut cluster, "tcp-after-add", SHORT_CONNECTIONS, SHORT_REQUESTS);
    let seen = watch_short_client(&mut cluster, short, Duration::from_secs(20));
    let report = tcp_report(&mut cluster, short, &short_json);
    assert_eq!(report.completed, u64::from(SHORT_CONNECTIONS), "{report:?}");
    let new_on: Vec<BTreeSet<u16>> = seen
        .iter()
        .map(|s| s.difference(&long_ports).copied().collect())
        .collect();
    println!(
        "new connections seen per backend after the add: {:?}",
        new_on.iter().map(BTreeSet::len).collect::<Vec<_>>()
    );
    assert!(
        new_on[0].is_empty(),
        "new connections reached the draining backend: {new_on:?}"
    );
    assert!(
        !new_on[1].is_empty(),
        "no new connection reached the added backend: {new_on:?}"
    );

    // The long client: the removed backend's connections were reset, all
    // others (the draining backend's too) completed.
    let report = tcp_report(&mut cluster, long, &long_json);
    println!("long client: {report:?}");
    assert_eq!(report.reset, expected_resets, "{report:?}");
    assert_eq!(
        report.completed,
        u64::from(LONG_CONNECTIONS) - expected_resets,
        "{report:?}"
    );

    // A refused change changes nothing, on any node: a weight of 0, an
    // unknown backend, and a policy file that does not parse.
    let before = listings(&cluster);
    for args in [
        vec![
            "backend",
            "weight",
            "--service",
            TCP_SERVICE,
            "--address",
            &svc[2],
            "--port",
            "7100",
            "--weight",
            "0",
        ],
        vec![
            "backend",
            "remove",
            "--service",
            TCP_SERVICE,
            "--address",
            "10.99.99.99",
            "--port",
            "7100",
        ],
        vec![
            "backend",
            "drain",
            "--service",
            "no-such-service",
            "--address",
            &svc[2],
            "--port",
            "7100",
        ],
    ] {
        let (ok, printed) = handoff_on_nodes(&cluster, &args);
        assert!(!ok, "{args:?} was accepted: {printed}");
        assert!(printed.contains("no node was changed"), "{args:?}: {printed}");
        assert_eq!(listings(&cluster), before, "{args:?} changed something");
    }
    let policy_file = cluster.log_dir.join("policy.toml");
    let good = std::fs::read_to_string(&policy_file).unwrap();
    std::fs::write(&policy_file, good.replacen("port = 7100", "port = 0", 1)).unwrap();
    let (ok, printed) = handoff_on_nodes(&cluster, &["policy", "reload"]);
    assert!(!ok && printed.contains("port"), "a bad file was accepted: {printed}");
    assert_eq!(listings(&cluster), before, "a refused reload changed something");
    std::fs::write(&policy_file, &good).unwrap();
    // A dry run validates and changes nothing.
    let answers = change(&cluster, &["policy", "reload", "--dry-run"]);
    assert!(answers.as_array().unwrap().iter().all(|a| a["dry_run"] == true));
    assert_eq!(listings(&cluster), before, "a dry run changed something");

    // SIGHUP: every node re-reads the file, which undoes the live changes.
    for i in 0..cluster.nodes.len() {
        let name = cluster.nodes[i].name.clone();
        cluster.process_named(&name).unwrap().signal(libc::SIGHUP);
    }
    let same = |cluster: &Cluster| {
        listings(cluster)
            .iter()
            .zip(&initial)
            .all(|(now, then)| now["services"] == then["services"])
    };
    assert!(
        wait_until(Duration::from_secs(10), || same(&cluster)),
        "after SIGHUP: {:?}\ninitially: {initial:?}",
        listings(&cluster)
    );
    let status = cluster.process(udp).wait_timeout(Duration::from_secs(60)).unwrap();
    assert!(status.is_some(), "the UDP traffic did not end");
    let sink: SinkReport = read_json(&sink_json).unwrap();
    println!("UDP echoes: {} received, lost {:?}", sink.received, sink.lost);
    assert_eq!(sink.flows_seen, u64::from(UDP_FLOWS), "every UDP flow was echoed");
    for i in 0..cluster.nodes.len() {
        let name = cluster.nodes[i].name.clone();
        assert!(cluster.process_named(&name).unwrap().running(), "{name} stopped");
    }
}
