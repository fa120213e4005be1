//! The operator's live views against a running cluster with traffic:
//! `handoff top` shows each node's packets/s, and a disengage reports its
//! copy while it runs, not only at phase boundaries.

use handoff_testbed::{
    binaries::binary,
    privileged,
    service_path::{assert_every_echo, LoadReports, LoadSpec, NodeTuning},
    Cluster,
};
use std::time::Duration;

const FLOWS: u32 = 10_000;
const COUNT: u64 = 48_000;
const LOAD: LoadSpec = LoadSpec {
    flows: FLOWS,
    rate: 4_000,
    count: COUNT,
    connections: 50,
    requests: 400,
    per_flow: false,
};

#[test]
fn top_shows_the_traffic_and_a_paced_copy_reports_while_it_runs() {
    if !privileged("top_shows_the_traffic_and_a_paced_copy_reports_while_it_runs") {
        return;
    }
    // A paced copy: fd-a holds about 3,400 connections, some 3 s of it.
    let tuning = NodeTuning {
        node: "copy_rate_limit = 1000\n",
        ..NodeTuning::default()
    };
    let mut cluster = Cluster::service_path_with(2, &tuning).unwrap();
    let load = cluster.start_client_load(&LOAD).unwrap();
    std::thread::sleep(Duration::from_secs(4));

    let mut top = std::process::Command::new(binary("handoff").unwrap());
    top.args(["top", "--count", "3", "--json", "--interval", "0.5", "--admin"])
        .arg(cluster.admin_socket());
    for i in 0..3 {
        top.arg("--node").arg(cluster.node_admin_socket(i));
    }
    let out = top.output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{printed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames: Vec<serde_json::Value> = printed.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(frames.len(), 3, "one line per refresh: {printed}");
    for frame in &frames {
        let node = frame["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == "fd-a")
            .unwrap_or_else(|| panic!("fd-a in {frame}"));
        assert!(
            node["total"]["rx_pps"].as_f64().unwrap() > 0.0,
            "fd-a carries traffic: {frame}"
        );
        assert!(node["total"]["flows"].as_u64().unwrap() > 0, "{frame}");
        assert_eq!(node["workers"].as_array().unwrap().len(), 2, "{frame}");
        let member = &frame["members"][0];
        assert_eq!(member["name"], "fd-a", "{frame}");
        assert!(member["sprayed_pps"].as_f64().unwrap() > 0.0, "{frame}");
    }

    // For people: a table with a line for each node and one per worker.
    let mut human = std::process::Command::new(binary("handoff").unwrap());
    human
        .args(["top", "--count", "1", "--interval", "0.5", "--admin"])
        .arg(cluster.admin_socket())
        .arg("--node")
        .arg(cluster.node_admin_socket(0));
    let out = human.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for row in [["fd-a", "Active"], ["fd-a", "all"], ["fd-a", "0"], ["fd-a", "1"]] {
        assert!(
            text.lines().any(|l| l.split_whitespace().take(2).eq(row)),
            "a row {row:?}: {text}"
        );
    }

    let printed = cluster.migrate(&["disengage", "fd-a", "--json"]).unwrap();
    let lines: Vec<serde_json::Value> = printed.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let done = lines
        .iter()
        .position(|l| l["result"] == "done")
        .unwrap_or_else(|| panic!("no done line: {printed}"));
    let within: Vec<&serde_json::Value> = lines[..done]
        .iter()
        .filter(|l| l["result"] == "progress")
        // The admin lines carry their object's fields beside `result`.
        .filter_map(|l| l.get("progress"))
        .collect();
    assert!(
        within.iter().any(|p| {
            let copied = p["flows_copied"].as_u64().unwrap_or(0);
            copied > 0 && copied < p["flows_total"].as_u64().unwrap_or(0) && p["bytes_sent"].as_u64().unwrap_or(0) > 0
        }),
        "a report in the middle of the copy, with its bytes: {printed}"
    );
    let copy = lines[done]["phases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["phase"] == "Copy")
        .unwrap_or_else(|| panic!("{printed}"));
    assert!(
        copy["bytes_sent"].as_u64().unwrap() > 0,
        "the copy's bytes on its own phase: {copy}"
    );

    let LoadReports { sink, tcp, .. } = cluster.finish_client_load(&load, Duration::from_secs(120)).unwrap();
    assert_every_echo(&sink, COUNT, "");
    assert!(tcp.ok(), "{tcp:?}");
}
