//! The migration manager's member table: every node registers with the edge
//! and sends heartbeats; a node whose process dies is marked FAILED, the
//! others stay ACTIVE.

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
    // Still failed a while later: nothing revives a dead node but its own heartbeat.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(statuses(&cluster), ["Active", "Active", "Failed"]);
}
