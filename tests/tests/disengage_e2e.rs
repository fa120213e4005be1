//! Taking a node out of service and back while traffic runs: `handoff
//! disengage fd-a` asks the edge's migration manager, which has fd-a hand its
//! connections to their inheritors, flips the scope, has fd-a drain and purge;
//! `handoff engage fd-a` puts it back. UDP echo over 10,000 flows and 200
//! kernel TCP connections run throughout.

use handoff::scope::{HashParams, Scope};
use handoff_testbed::{
    privileged,
    service_path::{assert_every_echo, LoadReports, LoadSpec, NodeTuning},
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
    per_flow: false,
};

/// Fails unless the node dropped nothing and held nothing for too long.
fn assert_no_drops(stats: &serde_json::Value, context: &str) {
    assert_eq!(stats["totals"]["dropped"], 0, "{context}");
    // The packets held between a cut and its confirmation all waited for
    // it: none left a full pen early, no pen gave up waiting.
    assert_eq!(stats["totals"]["held_released_early"], 0, "{context}");
    assert_eq!(stats["totals"]["hold_timeouts"], 0, "{context}");
}

fn rx_of(stats: &serde_json::Value) -> u64 {
    stats["totals"]["rx"].as_u64().unwrap()
}

/// The status of member `i` as the manager reports it.
fn status_of(cluster: &Cluster, i: usize) -> String {
    cluster.admin(&["status"]).unwrap()["members"][i]["status"]
        .as_str()
        .unwrap_or("unregistered")
        .to_string()
}

fn disengaged(out: &str) -> bool {
    out.contains("fd-a: Disengaged after")
}

fn engaged(out: &str) -> bool {
    out.contains("fd-a: Active after")
}

#[test]
fn a_node_leaves_and_rejoins_under_load_with_no_loss_and_no_broken_connection() {
    if !privileged("a_node_leaves_and_rejoins_under_load_with_no_loss_and_no_broken_connection") {
        return;
    }
    let cluster = Cluster::service_path(2).unwrap();
    leave_and_rejoin_under_load(cluster);
}

/// The minute of the day of the wall-clock time stamped on the first log
/// line of `stderr` that contains `needle` (tracing's RFC 3339 stamps).
fn logged_minute(stderr: &str, needle: &str) -> Option<u32> {
    let line = stderr.lines().find(|l| l.contains(needle))?;
    let time = line.split_once('T')?.1;
    let hours: u32 = time.get(..2)?.parse().ok()?;
    let minutes: u32 = time.get(3..5)?.parse().ok()?;
    Some(hours * 60 + minutes)
}

/// Ownership versions come from a logical clock, so a node whose host's
/// clock runs an hour ahead (injected with libfaketime) leaves and rejoins
/// like the others. With wall-clock versions its announcements outranked
/// the inheritors' for an hour, and its peers kept sending its former
/// connections' replies to it.
#[test]
fn a_node_whose_clock_runs_an_hour_ahead_leaves_and_rejoins_with_no_loss() {
    if !privileged("a_node_whose_clock_runs_an_hour_ahead_leaves_and_rejoins_with_no_loss") {
        return;
    }
    let tuning = NodeTuning {
        wall_clock: Some((0, "+1h")),
        ..NodeTuning::default()
    };
    let mut cluster = Cluster::service_path_with(2, &tuning).unwrap();
    let [ahead, true_time] = ["fd-a", "fd-b"].map(|name| {
        let stderr = cluster.process_named(name).expect("started").stderr();
        logged_minute(&stderr, "node up").unwrap_or_else(|| panic!("{name} logged no time: {stderr}"))
    });
    let skew = (ahead + 24 * 60 - true_time) % (24 * 60);
    assert!((59..=61).contains(&skew), "fd-a's clock is {skew} min ahead of fd-b's");
    leave_and_rejoin_under_load(cluster);
}

/// Disengages fd-a under the client's load, checks every phase and that it
/// got nothing while out, engages it again, and checks that the load lost
/// nothing and broke no connection.
fn leave_and_rejoin_under_load(mut cluster: Cluster) {
    let load = cluster.start_client_load(&LOAD).unwrap();

    std::thread::sleep(Duration::from_secs(4));
    let before = cluster.node_stats(0).unwrap();
    assert!(before["totals"]["active"].as_u64().unwrap() > 1000, "{before}");
    // Requests that cannot be carried out get a clear answer and change nothing.
    for (args, expected) in [
        (&["disengage", "fd-z"][..], "no member named \"fd-z\""),
        (
            &["disengage", "fd-a", "--inheritor", "fd-a"][..],
            "node 0 cannot inherit",
        ),
        (
            &["disengage", "fd-a", "--inheritor", "nobody"][..],
            "no member named \"nobody\"",
        ),
        (&["engage", "fd-a"][..], "node 0 is Active; Engage needs it DISENGAGED"),
    ] {
        let err = cluster.migrate(args).unwrap_err().to_string();
        assert!(err.contains(expected), "{args:?}: {err}");
    }
    assert_eq!(status_of(&cluster, 0), "Active");
    let out = std::thread::scope(|s| {
        let running = s.spawn(|| cluster.migrate(&["disengage", "fd-a"]));
        // While it runs, fd-a is DISENGAGING and a second migration is refused.
        let mut seen = Vec::new();
        while !running.is_finished() {
            let status = status_of(&cluster, 0);
            if status == "Disengaging" && !seen.contains(&status) {
                let busy = cluster.migrate(&["disengage", "fd-b"]).unwrap_err().to_string();
                assert!(busy.contains("busy"), "{busy}");
            }
            seen.push(status);
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(seen.iter().any(|s| s == "Disengaging"), "{seen:?}");
        running.join().unwrap().unwrap()
    });
    assert!(disengaged(&out), "{out}");
    for phase in ["Select", "Copy", "Broadcast", "Flip", "Drain", "Purge"] {
        assert!(out.contains(&format!("] {phase}: ")), "phase {phase} printed: {out}");
    }
    assert_eq!(status_of(&cluster, 0), "Disengaged");
    let released = cluster.node_stats(0).unwrap();
    assert_eq!(released["totals"]["active"], 0, "fd-a's table is empty: {released}");
    // fd-a ended its drain paths: each gainer's receiving core got one end
    // marker per lane of fd-a (2), and handed each core a copy.
    let markers: u64 = (1..3)
        .map(|i| cluster.node_stats(i).unwrap()["totals"]["markers"].as_u64().unwrap())
        .sum();
    assert!(markers >= 2, "the gainers got fd-a's end markers: {markers}");

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
    let out = cluster.migrate(&["engage", "fd-a"]).unwrap();
    assert!(engaged(&out), "{out}");
    assert_eq!(status_of(&cluster, 0), "Active");

    let LoadReports { gen, sink, tcp } = cluster.finish_client_load(&load, Duration::from_secs(120)).unwrap();
    let stats: Vec<serde_json::Value> = (0..3).map(|i| cluster.node_stats(i).unwrap()).collect();
    let context = format!("sink {sink:?}\ntcp {tcp:?}\nnodes {stats:#?}");
    assert_eq!(gen.sent, COUNT);
    assert_every_echo(&sink, COUNT, &context);
    assert!(tcp.ok(), "{context}");
    assert_eq!((tcp.reset, tcp.timed_out, tcp.corrupted), (0, 0, 0), "{context}");
    for s in &stats {
        assert_no_drops(s, &context);
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
    // fd-b is the named inheritor: every bucket of fd-a would go to it.
    let err = cluster
        .migrate(&["disengage", "fd-a", "--inheritor", "fd-b"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("aborted, nothing changed") && err.contains("inheritor node 1 was lost"),
        "{err}"
    );
    assert_eq!(status_of(&cluster, 0), "Active");
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
    let out = cluster.migrate(&["disengage", "fd-a", "--inheritor", "fd-b"]).unwrap();
    assert!(disengaged(&out), "{out}");

    let LoadReports { sink, tcp, .. } = cluster.finish_client_load(&load, Duration::from_secs(120)).unwrap();
    assert_every_echo(&sink, COUNT, "");
    assert!(tcp.ok(), "{tcp:?}");
}

#[test]
fn an_inheritor_killed_during_the_copy_aborts_it_and_fd_a_serves_on_with_no_loss() {
    if !privileged("an_inheritor_killed_during_the_copy_aborts_it_and_fd_a_serves_on_with_no_loss") {
        return;
    }
    // A paced copy (fd-a holds about 3,400 connections: some 3 s of it), so
    // the kill lands in the middle of it.
    let tuning = NodeTuning {
        node: "copy_rate_limit = 1000\n",
        ..NodeTuning::default()
    };
    let mut cluster = Cluster::service_path_with(2, &tuning).unwrap();
    let load = cluster.start_client_load(&LoadSpec { per_flow: true, ..LOAD }).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let crossing_fd_b = cluster.flows_crossing(FLOWS, &[0, 1, 2], 1).unwrap();
    let before = cluster.admin(&["status"]).unwrap();
    let first_scope = Scope::initial(HashParams::default().buckets, &[0, 1, 2]).unwrap();
    for (i, member) in before["members"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            member["buckets"].as_u64().unwrap(),
            first_scope.buckets_of(i as u32).count() as u64,
            "the test works out owners with the edge's own scope: {before}"
        );
    }
    let held = cluster.node_stats(0).unwrap()["totals"]["active"].as_u64().unwrap();
    let fd_b = cluster.process_named("fd-b").unwrap().pid() as libc::pid_t;
    let err = std::thread::scope(|s| {
        let running = s.spawn(|| cluster.migrate(&["disengage", "fd-a", "--inheritor", "fd-b"]));
        while cluster.admin(&["status"]).unwrap()["migration"]["phase"] != "Copy" && !running.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: fd_b is the pid of the node process this test started and
        // has not yet reaped.
        assert_eq!(unsafe { libc::kill(fd_b, libc::SIGKILL) }, 0);
        running.join().unwrap()
    });
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains("aborted, nothing changed") && err.contains("inheritor node 1 was lost"),
        "{err}"
    );
    assert_eq!(status_of(&cluster, 0), "Active");
    let after = cluster.admin(&["status"]).unwrap();
    assert_eq!(
        after["members"][0]["buckets"], before["members"][0]["buckets"],
        "the abort left fd-a's buckets: {after}"
    );
    let fd_a = cluster.node_stats(0).unwrap();
    assert!(
        fd_a["totals"]["active"].as_u64().unwrap() >= held,
        "fd-a kept its connections: {fd_a}"
    );

    // Failover then gives fd-b's buckets to the others.
    for idx in [load.traffic, load.tcp] {
        cluster.process(idx).wait_timeout(Duration::from_secs(120)).unwrap();
    }
    let LoadReports { gen, sink, tcp } = load.reports().unwrap();
    assert_eq!(gen.sent, COUNT);
    let per_flow = sink.per_flow.as_ref().expect("per-flow counts");
    let mut received = vec![0u64; FLOWS as usize];
    for f in per_flow {
        received[f.flow as usize] = f.received;
        assert_eq!((f.reordered, f.duplicated), (0, 0), "{f:?}");
    }
    let sent_per_flow = COUNT / u64::from(FLOWS);
    let (mut spared, mut hit) = (0, 0);
    for (flow, &crosses_fd_b) in crossing_fd_b.iter().enumerate() {
        if crosses_fd_b {
            hit += u64::from(received[flow] < sent_per_flow);
        } else {
            assert_eq!(
                received[flow], sent_per_flow,
                "flow {flow} crosses only fd-a and fd-c, and lost echoes"
            );
            spared += 1;
        }
    }
    assert!(spared > 1000 && hit > 0, "{spared} flows spared, {hit} hit: {sink:?}");
    assert!(tcp.completed > 0, "{tcp:?}");
    let fd_a = cluster.node_stats(0).unwrap();
    assert_eq!(fd_a["totals"]["held_released_early"], 0, "{fd_a}");
    assert_eq!(fd_a["totals"]["hold_timeouts"], 0, "{fd_a}");
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
    // Every way of choosing inheritors takes its turn.
    let inheritors = ["auto", "least-flows", "fd-b", "fd-c", "spread"];
    for cycle in 0..CYCLES {
        let inheritor = inheritors[cycle % inheritors.len()];
        let out = cluster
            .migrate(&["disengage", "fd-a", "--inheritor", inheritor])
            .unwrap();
        assert!(disengaged(&out), "cycle {cycle}: {out}");
        std::thread::sleep(Duration::from_millis(500));
        let out = cluster.migrate(&["engage", "fd-a"]).unwrap();
        assert!(engaged(&out), "cycle {cycle}: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let LoadReports { sink, tcp, .. } = cluster.finish_client_load(&load, Duration::from_secs(180)).unwrap();
    let stats: Vec<serde_json::Value> = (0..3).map(|i| cluster.node_stats(i).unwrap()).collect();
    let context = format!("{stats:#?}");
    assert_every_echo(&sink, CYCLE_COUNT, &context);
    assert!(tcp.ok(), "{tcp:?}");
    for s in &stats {
        assert_no_drops(s, &context);
    }
}

#[test]
fn a_node_killed_while_disengaging_is_failed_and_the_others_take_its_buckets() {
    if !privileged("a_node_killed_while_disengaging_is_failed_and_the_others_take_its_buckets") {
        return;
    }
    let mut cluster = Cluster::service_path(2).unwrap();
    let load = cluster.start_client_load(&LOAD).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let fd_a = cluster.process_named("fd-a").unwrap().pid() as libc::pid_t;
    let err = std::thread::scope(|s| {
        let running = s.spawn(|| cluster.migrate(&["disengage", "fd-a"]));
        while status_of(&cluster, 0) != "Disengaging" && !running.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SAFETY: fd_a is the pid of the node process this test started and
        // has not yet reaped.
        assert_eq!(unsafe { libc::kill(fd_a, libc::SIGKILL) }, 0);
        running.join().unwrap()
    });
    // Killed before its purge finished: the migration reports the loss (if
    // fd-a had finished first, the disengage would have succeeded instead).
    let err = err.unwrap_err().to_string();
    assert!(err.contains("node lost") && err.contains("FAILED"), "{err}");
    assert_eq!(status_of(&cluster, 0), "Failed");

    // Failover takes fd-a out of the scope (if the flip had not already), and
    // the survivors serve everything.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while cluster.admin(&["status"]).unwrap()["members"][0]["in_scope"] != false {
        assert!(std::time::Instant::now() < deadline, "fd-a stayed in the scope");
        std::thread::sleep(Duration::from_millis(100));
    }
    let survivors_before: Vec<u64> = (1..3).map(|i| rx_of(&cluster.node_stats(i).unwrap())).collect();
    // The TCP connections fd-a owned die with it; wait for both clients and
    // read their reports whatever their exit status.
    for idx in [load.traffic, load.tcp] {
        cluster.process(idx).wait_timeout(Duration::from_secs(120)).unwrap();
    }
    let LoadReports { gen, sink, tcp } = load.reports().unwrap();
    assert_eq!(gen.sent, COUNT);
    // What fd-a held when it died, and what reached it until the failover
    // flip, is lost; everything else comes back.
    assert!(sink.received > COUNT * 8 / 10, "{sink:?}\n{tcp:?}");
    assert!(
        tcp.completed > 0 && tcp.reset + tcp.timed_out < u64::from(TCP_CONNECTIONS),
        "{tcp:?}"
    );
    for (i, before) in (1..3).zip(survivors_before) {
        let after = rx_of(&cluster.node_stats(i).unwrap());
        assert!(after > before, "fd-{i} kept forwarding: {before} -> {after}");
    }
}
