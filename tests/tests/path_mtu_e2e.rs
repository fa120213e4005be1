//! Path MTU discovery through the cluster (RFC 1191, RFC 8201): the edge's
//! link towards the client takes 1,280-byte packets only, the services'
//! links and the client's take 1,500, and nothing clamps the TCP MSS. A
//! 10 MiB download through the VIP completes only if the edge's
//! fragmentation-needed / packet-too-big, sent towards the VIP, reaches
//! the service that holds the connection, rewritten so that its kernel
//! recognises its own packet.
//!
//! ```text
//! client ═1500═ (1280) edge ─sprays─► fd-x ─DNAT─► svc-n   (MSS 1460 both ways)
//!                 └─ ICMP to the VIP, routed to the nodes ─► fd-y ─► owner ─► svc-n
//! ```
//! The edge's own ICMP does not pass its XDP program (which sees only what
//! arrives), so the edge routes the VIPs to the nodes, as an operator does;
//! any node takes it to the connection's owner.

use handoff_testbed::{
    cluster::{Family, VIP, VIP6},
    privileged,
    real::HttpObjects,
    Cluster, NsRef,
};

/// The hop's MTU: IPv6's minimum.
const HOP_MTU: u32 = 1280;
const SIZE: usize = 10 * 1024 * 1024;

#[test]
fn a_large_download_completes_across_a_smaller_mtu_hop_by_path_mtu_discovery() {
    if !privileged("a_large_download_completes_across_a_smaller_mtu_hop_by_path_mtu_discovery") {
        return;
    }
    let mut cluster = Cluster::service_path(1).unwrap();
    let objects = HttpObjects::generate(&cluster.log_dir.join("www"), 0x706d_7475).unwrap();
    cluster.start_real_services(&objects).unwrap();
    let edge_port = cluster.edge_client_port.ifname.clone();
    cluster
        .edge
        .ip(&["link", "set", "dev", &edge_port, "mtu", &HOP_MTU.to_string()])
        .unwrap();
    for (vip, family) in [(VIP.to_string(), Family::V4), (VIP6.to_string(), Family::V6)] {
        let mut route = vec!["route".to_string(), "add".to_string(), vip];
        for node in &cluster.nodes {
            route.extend(["nexthop".into(), "via".into(), node.port.addr(family).to_string()]);
        }
        let route: Vec<&str> = route.iter().map(String::as_str).collect();
        cluster.edge.ip(&route).unwrap();
    }

    let mut failures = Vec::new();
    for family in Family::BOTH {
        match cluster.fetch(&objects, family, SIZE, "pmtu") {
            Ok(took) => println!("{} {SIZE} B across the {HOP_MTU} hop: {took:?}", family.name()),
            Err(e) => failures.push(e),
        }
        // The service that served it learned the path's MTU.
        let client = cluster.client_port.addr(family).to_string();
        let learned: Vec<String> = (0..cluster.services.len())
            .map(|i| {
                let route = cluster.ns(NsRef::Service(i)).ip(&["route", "get", &client]).unwrap();
                String::from_utf8_lossy(&route.stdout).into_owned()
            })
            .collect();
        if !learned.iter().any(|r| r.contains(&format!("mtu {HOP_MTU}"))) {
            failures.push(format!(
                "{}: no service has a path MTU of {HOP_MTU} towards the client: {learned:?}",
                family.name()
            ));
        }
    }
    println!("nodes: {}", cluster.node_counters_summary());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
