//! The migration manager's member table: every node registers with the edge
//! and sends heartbeats; a node whose process dies is marked FAILED, the
//! others stay ACTIVE, and failover takes the dead node out of the scope.

use handoff_testbed::{privileged, wait_until, Cluster};
use std::time::Duration;

fn statuses(cluster: &Cluster) -> Vec<String> {
    let status = cluster.admin(&["status"]).unwrap();
    status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["status"].as_str().unwrap_or("unregistered").to_string())
        .collect()
}

#[test]
fn nodes_register_and_a_dead_node_is_marked_failed() {
    if !privileged("nodes_register_and_a_dead_node_is_marked_failed") {
        return;
    }
    let mut cluster = Cluster::service_path(1).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || statuses(&cluster) == ["Active"; 3]),
        "{:?}",
        statuses(&cluster)
    );
    let flows = cluster.admin(&["status"]).unwrap()["members"][0]["last_seen_ms"]
        .as_u64()
        .unwrap();
    assert!(flows < 1000, "heartbeats arrive: last seen {flows} ms ago");

    cluster.process_named("fd-c").unwrap().kill().unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || statuses(&cluster)
            == ["Active", "Active", "Failed"]),
        "{:?}",
        statuses(&cluster)
    );
    // Failover: after 1 s FAILED (the test bed's failover_after_ms), the
    // manager takes fd-c out of the scope and the survivors follow.
    let in_scope = |cluster: &Cluster| cluster.admin(&["status"]).unwrap()["members"][2]["in_scope"] == true;
    assert!(
        wait_until(Duration::from_secs(5), || !in_scope(&cluster)),
        "fd-c is still in the scope"
    );
    let status = cluster.admin(&["status"]).unwrap();
    assert_eq!(status["members"][2]["buckets"], 0, "{status}");
    let version = status["scope_version"].as_u64().unwrap();
    assert!(version > 1, "{status}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let s = cluster.admin(&["status"]).unwrap();
            (0..2).all(|i| s["members"][i]["scope_version"].as_u64() == Some(version))
        }),
        "the survivors forward by scope {version}: {status}"
    );
    // Still failed a while later: nothing revives a dead node but its own heartbeat.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(statuses(&cluster), ["Active", "Active", "Failed"]);
}
