//! Packets that used to loop between the edge and a node forever, each sent
//! once through the real cluster: the packet counters must stop growing.
//!
//! Before the nodes forwarded like routers, each of these was sent by the
//! node to its gateway (the edge), which sprayed it to a node again, some
//! 300,000 times a second until the test bed was removed:
//! - UDP to a VIP port no service has (a node now drops it: `drop_no_service`);
//! - a backend's datagram that answers no connection (the edge sprays every
//!   packet from a backend; the node drops it: `drop_no_service`);
//! - the ICMP port unreachable a client's kernel sends for an echo reply
//!   that arrives after its socket closed (it now reaches its connection
//!   and the backend).

use handoff_testbed::{cluster::arg, privileged, real::HttpObjects, Cluster, NsRef};
use std::time::Duration;

/// Every node's worker totals, and the edge's sprayed count.
fn counters(cluster: &Cluster) -> (Vec<serde_json::Value>, u64) {
    let nodes = (0..cluster.nodes.len())
        .map(|i| cluster.node_stats(i).unwrap()["totals"].clone())
        .collect();
    let sprayed = cluster.admin(&["stats"]).unwrap()["reasons"]["sprayed"]
        .as_u64()
        .unwrap();
    (nodes, sprayed)
}

fn total(nodes: &[serde_json::Value], field: &str) -> u64 {
    nodes.iter().map(|n| n[field].as_u64().unwrap_or(0)).sum()
}

#[test]
fn packets_that_would_loop_are_dropped_once_and_the_counters_stop_growing() {
    if !privileged("packets_that_would_loop_are_dropped_once_and_the_counters_stop_growing") {
        return;
    }
    let mut cluster = Cluster::service_path(1).unwrap();
    let objects = HttpObjects::generate(&cluster.log_dir.join("www"), 7).unwrap();
    cluster.start_real_services(&objects).unwrap();
    let vip = handoff_testbed::cluster::VIP.to_string();
    let client_ip = cluster.client_port.ip.to_string();
    let send = |ns: NsRef, target: String, extra: &str| {
        let mut address = format!("UDP4-SENDTO:{target}");
        address.push_str(extra);
        let run = cluster
            .run_bounded(
                ns,
                Duration::from_secs(5),
                "sh",
                &[arg("-c"), arg(format!("echo loop | socat -u - {address}"))],
            )
            .unwrap();
        assert!(run.success(), "{}", run.describe());
    };
    let (before, sprayed_before) = counters(&cluster);

    // UDP to a port of the VIP that no service has.
    send(NsRef::Client, format!("{vip}:9"), "");
    // A backend's datagram to the client from a port no service uses.
    send(NsRef::Service(1), format!("{client_ip}:5555"), ",sourceport=4444");
    // A UDP request whose reply finds the client's socket closed: socat
    // sends one datagram and exits at once (-t 0), so the client's kernel
    // answers the echo with ICMP port unreachable, quoting it.
    let run = cluster
        .run_bounded(
            NsRef::Client,
            Duration::from_secs(5),
            "sh",
            &[arg("-c"), arg(format!("echo closed | socat -t 0 - UDP4:{vip}:7001"))],
        )
        .unwrap();
    assert!(run.success(), "{}", run.describe());

    // Whatever these caused is over within a second; then nothing moves.
    std::thread::sleep(Duration::from_secs(1));
    let (settled, sprayed_settled) = counters(&cluster);
    std::thread::sleep(Duration::from_secs(2));
    let (after, sprayed_after) = counters(&cluster);
    for field in ["rx", "tx", "forwarded_to_node", "dropped"] {
        assert_eq!(
            total(&settled, field),
            total(&after, field),
            "{field} still grows: settled {settled:?} after {after:?}"
        );
    }
    assert_eq!(sprayed_settled, sprayed_after, "the edge still sprays");
    // Each loop-prone packet was dropped where it first landed, counted.
    let no_service = total(&after, "drop_no_service") - total(&before, "drop_no_service");
    assert_eq!(no_service, 2, "before {before:?} after {after:?}");
    // The three sends, the echo and its reply, the ICMP error: a handful
    // of sprays, not thousands.
    let sprayed = sprayed_after - sprayed_before;
    assert!(sprayed <= 16, "the edge sprayed {sprayed} packets for 3 sends");
    let rx = total(&after, "rx") - total(&before, "rx");
    assert!(rx <= 32, "the nodes handled {rx} packets for 3 sends");
}
