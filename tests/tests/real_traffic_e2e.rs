//! Real, unmodified programs through the whole service path, over IPv4 and
//! IPv6: `ping` to the VIPs, nginx serving objects of 1 B to 10 MiB to
//! `curl` and `wrk` (keep-alive), `iperf3` bulk TCP over 8 streams, a
//! `socat` UDP echo of every datagram size up to the MTU and beyond it
//! (fragments), and all of them across a disengage and engage of fd-a.
//!
//! ```text
//! client ─► edge ─sprays─► fd-x ─DNAT─► svc-n (nginx :80, socat :7001, iperf3 :5201 on svc-1)
//! client ◄─ edge ◄─ fd-owner ◄─(fabric)─ fd-y ◄─sprays─ edge ◄─ svc-n
//! ```
//! Each test builds its own cluster (`Cluster::service_path`, one worker per
//! node) and removes it, with every process it started, when it ends. Every
//! client program runs under `timeout`. Throughput is printed, never
//! asserted.

use handoff_bench::udp_probe::ProbeReport;
use handoff_testbed::{
    cluster::{arg, read_json, Family, IP_MTU},
    privileged,
    real::{
        fingerprint, iperf3_client_args, parse_iperf3, parse_ping, parse_wrk, udp_probe_args, HttpObjects, HTTP_SIZES,
    },
    service_path::IPERF_PORT,
    Cluster, NsRef,
};
use std::time::Duration;

/// The cluster with the real servers up, and the objects nginx serves.
fn real_cluster() -> (Cluster, HttpObjects) {
    let mut cluster = Cluster::service_path(1).unwrap();
    let objects = HttpObjects::generate(&cluster.log_dir.join("www"), 0x0068_616e_646f_6666).unwrap();
    cluster.start_real_services(&objects).unwrap();
    (cluster, objects)
}

/// Whether process `pid` (a child not yet reaped) still runs: a zombie
/// has ended.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(") ")?.1.starts_with(|c| c != 'Z' && c != 'X')))
        .unwrap_or(false)
}

/// Prints the nodes' counters, then fails with every failure if any.
fn finish(cluster: &Cluster, failures: &[String]) {
    let nodes = cluster.node_counters_summary();
    println!("nodes (non-zero rx, tx, drops, kernel drops):\n{nodes}");
    assert!(failures.is_empty(), "{}\nnodes:\n{nodes}", failures.join("\n"));
}

/// `ping -c 3` to the VIP of each family: every echo answered (by a node,
/// by policy: a VIP has no host of its own).
#[test]
fn ping_to_the_vip_gets_every_echo_answered_over_ipv4_and_ipv6() {
    if !privileged("ping_to_the_vip_gets_every_echo_answered_over_ipv4_and_ipv6") {
        return;
    }
    let (cluster, _) = real_cluster();
    let mut failures = Vec::new();
    for family in Family::BOTH {
        let flag = if family == Family::V4 { "-4" } else { "-6" };
        let run = cluster
            .run_bounded(
                NsRef::Client,
                Duration::from_secs(12),
                "ping",
                &[arg(flag), arg("-c"), arg(3), arg("-W"), arg(2), arg(family.vip())],
            )
            .unwrap();
        let counts = parse_ping(&run.stdout);
        println!(
            "ping {} {}: {:?} (transmitted, received)",
            family.name(),
            family.vip(),
            counts
        );
        if counts != Some((3, 3)) || !run.success() {
            failures.push(format!(
                "{}: ping {}: {counts:?} (transmitted, received); {}\nstdout: {}",
                family.name(),
                family.vip(),
                run.describe(),
                run.stdout.trim()
            ));
        }
    }
    finish(&cluster, &failures);
}

/// curl fetches every object through each VIP, each compared byte for
/// byte with what nginx serves; then wrk, keep-alive, 16 connections for
/// 5 s on the 27 KB object: no socket error, no non-2xx, requests done.
#[test]
fn http_objects_of_every_size_arrive_byte_exact_and_keepalive_load_has_no_errors() {
    if !privileged("http_objects_of_every_size_arrive_byte_exact_and_keepalive_load_has_no_errors") {
        return;
    }
    let (cluster, objects) = real_cluster();
    let mut failures = Vec::new();
    for family in Family::BOTH {
        for size in HTTP_SIZES {
            match cluster.fetch(&objects, family, size, "sizes") {
                Ok(took) => println!(
                    "curl {} {size} B: byte-exact (fnv {:016x}) in {:.3} s",
                    family.name(),
                    fingerprint(&objects.content(size).unwrap()),
                    took.as_secs_f64()
                ),
                Err(e) => {
                    println!("curl FAILED: {e}");
                    failures.push(e);
                }
            }
        }
    }
    for family in Family::BOTH {
        let url = HttpObjects::url(family, 27_000);
        let run = cluster
            .run_bounded(
                NsRef::Client,
                Duration::from_secs(20),
                "wrk",
                &[
                    arg("--threads"),
                    arg(2),
                    arg("--connections"),
                    arg(16),
                    arg("--duration"),
                    arg("5s"),
                    arg("--timeout"),
                    arg("3s"),
                    arg(&url),
                ],
            )
            .unwrap();
        let report = parse_wrk(&run.stdout);
        println!("wrk {} {url}: {report:?}", family.name());
        match report {
            Some(r) if run.success() && r.requests > 0 && r.non_2xx == 0 && r.socket_errors == [0; 4] => {}
            other => failures.push(format!(
                "{}: wrk keep-alive on {url}: {other:?} (want requests > 0, no socket errors, no non-2xx); {}\nstdout: {}",
                family.name(),
                run.describe(),
                run.stdout.trim()
            )),
        }
    }
    finish(&cluster, &failures);
}

/// Runs iperf3 against the VIP of `family`; returns the received bitrate
/// (bits/s) or what went wrong.
fn iperf3(cluster: &Cluster, family: Family, extra: &[String], seconds: u32) -> Result<f64, String> {
    let mut args = iperf3_client_args(family.vip(), seconds);
    args.extend(extra.iter().cloned());
    let run = cluster
        .run_bounded(
            NsRef::Client,
            Duration::from_secs(u64::from(seconds) + 30),
            "iperf3",
            &args,
        )
        .map_err(|e| format!("{e:#}"))?;
    interpret_iperf3(family, &run.stdout, &run.describe(), run.success())
}

fn interpret_iperf3(family: Family, stdout: &str, describe: &str, success: bool) -> Result<f64, String> {
    let report = parse_iperf3(stdout).map_err(|e| format!("{}: {e}: {describe}\nstdout: {stdout}", family.name()))?;
    println!(
        "iperf3 {} -P 8: {:.1} Mbit/s received, {} bytes, {} retransmits",
        family.name(),
        report.received_bps / 1e6,
        report.bytes,
        report.retransmits
    );
    if !success {
        return Err(format!("{}: iperf3 failed: {describe}", family.name()));
    }
    Ok(report.received_bps)
}

/// `iperf3 -c VIP -P 8 -t 10` over each family: exits 0 with a JSON report
/// and no error. The rate is printed only.
#[test]
fn iperf3_bulk_tcp_with_8_streams_completes_over_ipv4_and_ipv6() {
    if !privileged("iperf3_bulk_tcp_with_8_streams_completes_over_ipv4_and_ipv6") {
        return;
    }
    let (cluster, _) = real_cluster();
    let mut failures = Vec::new();
    for family in Family::BOTH {
        if let Err(e) = iperf3(&cluster, family, &[], 10) {
            println!("iperf3 FAILED: {e}");
            failures.push(e);
        }
    }
    finish(&cluster, &failures);
}

/// Runs `udp-probe` over `sizes` (with `extra` arguments) against the
/// socat echo on the VIP of `family`; returns its report or what went wrong.
fn probe(cluster: &Cluster, family: Family, sizes: &str, tag: &str, extra: &[String]) -> Result<ProbeReport, String> {
    let json = cluster.log_dir.join(format!("udp-probe-{tag}-{}.json", family.name()));
    let bench = handoff_testbed::binaries::binary("handoff-bench").map_err(|e| format!("{e:#}"))?;
    let run = cluster
        .run_bounded(
            NsRef::Client,
            Duration::from_secs(200),
            &bench.display().to_string(),
            &[udp_probe_args(family, sizes, &json, 0, 180), extra.to_vec()].concat(),
        )
        .map_err(|e| format!("{e:#}"))?;
    let report: ProbeReport = read_json(&json).map_err(|e| format!("{}: {e:#}: {}", family.name(), run.describe()))?;
    println!(
        "udp-probe {} sizes {sizes}: {} of {} echoed whole ({} after a retry), {} unexpected, max rtt {} us, {:.1} s",
        family.name(),
        report.echoed,
        report.probed,
        report.retried,
        report.unexpected,
        report.max_rtt_us,
        report.duration_s
    );
    if !report.ok() || !run.success() {
        return Err(format!(
            "{}: sizes {sizes} to socat on {}: {} sizes not echoed (first: {:?}), {} not tried; failures {:?}; {}",
            family.name(),
            report.target,
            report.failed.len(),
            report.failed.iter().take(20).collect::<Vec<_>>(),
            report.not_tried,
            report.failures.iter().take(5).collect::<Vec<_>>(),
            run.describe()
        ));
    }
    Ok(report)
}

/// Probes the VIP of each family with the sizes `sizes` gives it, then
/// fails with every family's failure, if any.
fn probe_every_family(cluster: &Cluster, tag: &str, extra: &[String], sizes: impl Fn(Family) -> String) {
    let failures: Vec<String> = Family::BOTH
        .into_iter()
        .filter_map(|family| probe(cluster, family, &sizes(family), tag, extra).err())
        .collect();
    finish(cluster, &failures);
}

/// The largest UDP payload that fits the IP MTU unfragmented.
fn largest_unfragmented(family: Family) -> u32 {
    IP_MTU - family.udp_overhead()
}

/// Every UDP datagram size from 1 byte to the MTU's worth (1,472 over
/// IPv4, 1,452 over IPv6) is echoed whole by socat through the VIP.
#[test]
fn udp_datagrams_of_every_size_up_to_the_mtu_are_echoed_whole_by_socat() {
    if !privileged("udp_datagrams_of_every_size_up_to_the_mtu_are_echoed_whole_by_socat") {
        return;
    }
    let (cluster, _) = real_cluster();
    probe_every_family(&cluster, "unfragmented", &[], |family| {
        format!("1-{}", largest_unfragmented(family))
    });
}

/// Datagrams sent as frames with an 802.1Q priority tag (VID 0, PCP 5),
/// which carries only a priority: the edge sprays them like untagged ones
/// and socat's echo (untagged) comes back whole. (On this bed the fabric
/// bridge's kernel takes the tag off into the skb's metadata before the
/// node's generic XDP sees the frame; a node that does see one removes it,
/// see `a_priority_tag_is_removed_and_the_frame_handled_as_untagged`.)
#[test]
fn priority_tagged_datagrams_are_echoed_like_untagged_ones() {
    if !privileged("priority_tagged_datagrams_are_echoed_like_untagged_ones") {
        return;
    }
    let (cluster, _) = real_cluster();
    let edge_mac = handoff_testbed::netns::mac_string(cluster.edge_client_port.mac);
    let tagged = [
        arg("--priority-tag-on"),
        cluster.client_port.ifname.clone(),
        arg("--dst-mac"),
        edge_mac,
    ];
    // Frames sent on a packet socket skip the client's neighbor discovery,
    // which is what teaches the edge the client's MAC: one datagram
    // through the client's own stack first, as any client talks before.
    probe_every_family(&cluster, "untagged-first", &[], |_| "1".into());
    probe_every_family(&cluster, "vid0", &tagged, |_| "1-64,1000-1024,1400".into());
}

/// Datagrams too big for one packet (1,473 to 8,972 bytes over IPv4, 1,453
/// to 8,952 over IPv6: up to a 9,000-byte IP packet) leave the client in
/// fragments; every one is echoed whole (the echo is fragmented too).
#[test]
fn fragmented_udp_datagrams_up_to_9000_bytes_are_echoed_whole_by_socat() {
    if !privileged("fragmented_udp_datagrams_up_to_9000_bytes_are_echoed_whole_by_socat") {
        return;
    }
    let (cluster, _) = real_cluster();
    probe_every_family(&cluster, "fragmented", &[], |family| {
        format!("{}-{}", largest_unfragmented(family) + 1, 9_000 - family.udp_overhead())
    });
}

/// Every real program across a disengage and an engage of fd-a: curl
/// fetches (each compared byte for byte), iperf3 over 8 streams per family
/// and the UDP probe of every size up to the MTU, per family, all started
/// before the disengage and ended after the engage. Every fetch complete,
/// every iperf3 run without error, every datagram echoed, and no TCP
/// connection of the client reset.
#[test]
fn real_programs_run_whole_across_a_disengage_and_engage_of_fd_a() {
    if !privileged("real_programs_run_whole_across_a_disengage_and_engage_of_fd_a") {
        return;
    }
    let (mut cluster, objects) = real_cluster();
    let bench = handoff_testbed::binaries::binary("handoff-bench").unwrap();
    let resets_before = cluster.client_tcp_counters().unwrap();

    // iperf3, one per family (svc-1 runs a server per address), paced so
    // that the two cores of the test machine still run the migration.
    const IPERF_SECONDS: u32 = 20;
    let mut iperfs = Vec::new();
    for family in Family::BOTH {
        let idx = cluster
            .spawn_bounded(
                &format!("iperf3-client-{}", family.name()),
                NsRef::Client,
                Duration::from_secs(u64::from(IPERF_SECONDS) + 30),
                "iperf3",
                &[
                    arg("--client"),
                    arg(family.vip()),
                    arg("--port"),
                    arg(IPERF_PORT),
                    arg("--parallel"),
                    arg(8),
                    arg("--bitrate"),
                    arg("25M"),
                    arg("--time"),
                    arg(IPERF_SECONDS),
                    arg("--connect-timeout"),
                    arg(5000),
                    arg("--json"),
                ],
            )
            .unwrap();
        iperfs.push((family, idx));
    }
    // The UDP probe, every size up to the MTU, round after round for 15 s.
    let mut probes = Vec::new();
    for family in Family::BOTH {
        let json = cluster
            .log_dir
            .join(format!("udp-probe-migration-{}.json", family.name()));
        let sizes = format!("1-{}", largest_unfragmented(family));
        let idx = cluster
            .spawn_bounded(
                &format!("udp-probe-{}", family.name()),
                NsRef::Client,
                Duration::from_secs(120),
                &bench.display().to_string(),
                &udp_probe_args(family, &sizes, &json, 15, 100),
            )
            .unwrap();
        probes.push((family, idx, json));
    }

    let spawned: Vec<(String, u32)> = iperfs
        .iter()
        .map(|&(family, idx)| (format!("iperf3 {}", family.name()), idx))
        .chain(
            probes
                .iter()
                .map(|&(family, idx, _)| (format!("udp-probe {}", family.name()), idx)),
        )
        .map(|(name, idx)| (name, cluster.process(idx).pid()))
        .collect();
    let spawned = &spawned;
    let done = std::sync::atomic::AtomicBool::new(false);
    let (fetches, migration) = std::thread::scope(|s| {
        let cluster = &cluster;
        let objects = &objects;
        let done = &done;
        // curl, both families in turn, 1 MiB and 27 KB objects, until the
        // migration is over (at most 400 fetches).
        let fetcher = s.spawn(move || {
            let mut results = Vec::new();
            for n in 0..400 {
                if done.load(std::sync::atomic::Ordering::Relaxed) && n >= 8 {
                    break;
                }
                let family = Family::BOTH[n % 2];
                let size = if (n / 2) % 2 == 0 { 1_048_576 } else { 27_000 };
                results.push((family, size, cluster.fetch(objects, family, size, "migration")));
            }
            results
        });
        std::thread::sleep(Duration::from_secs(3));
        let disengage = cluster.migrate(&["disengage", "fd-a"]);
        std::thread::sleep(Duration::from_secs(3));
        let engage = cluster.migrate(&["engage", "fd-a"]);
        // Every load must still be running: it spans the migration.
        let ended: Vec<String> = spawned
            .iter()
            .filter(|&&(_, pid)| !alive(pid))
            .map(|(name, _)| name.clone())
            .collect();
        std::thread::sleep(Duration::from_secs(2));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (fetcher.join().unwrap(), (disengage, engage, ended))
    });

    let mut failures = Vec::new();
    if !migration.2.is_empty() {
        failures.push(format!(
            "{:?} ended before the engage was over: the run did not span the migration",
            migration.2
        ));
    }
    match &migration.0 {
        Ok(out) if out.contains("fd-a: Disengaged after") => println!("disengage:\n{out}"),
        other => failures.push(format!("disengage of fd-a: {other:?}")),
    }
    match &migration.1 {
        Ok(out) if out.contains("fd-a: Active after") => println!("engage:\n{out}"),
        other => failures.push(format!("engage of fd-a: {other:?}")),
    }
    let ok = fetches.iter().filter(|(_, _, r)| r.is_ok()).count();
    println!(
        "curl across the migration: {ok} of {} fetches byte-exact",
        fetches.len()
    );
    for (_, _, result) in &fetches {
        if let Err(e) = result {
            failures.push(format!("curl across the migration: {e}"));
        }
    }
    for (family, idx) in iperfs {
        let status = cluster.process(idx).wait_timeout(Duration::from_secs(60)).unwrap();
        let stdout = cluster.process(idx).stdout();
        let describe = format!(
            "iperf3 -P 8 -b 25M -t {IPERF_SECONDS} exited {status:?}\nstderr: {}",
            cluster.process(idx).stderr().trim()
        );
        if let Err(e) = interpret_iperf3(family, &stdout, &describe, status.is_some_and(|s| s.success())) {
            failures.push(format!("iperf3 across the migration: {e}"));
        }
    }
    for (family, idx, json) in probes {
        let status = cluster.process(idx).wait_timeout(Duration::from_secs(130)).unwrap();
        match read_json::<ProbeReport>(&json) {
            Ok(report) => {
                println!(
                    "udp-probe {} across the migration: {} of {} echoed whole ({} after a retry), {:.1} s",
                    family.name(),
                    report.echoed,
                    report.probed,
                    report.retried,
                    report.duration_s
                );
                if !report.ok() || !status.is_some_and(|s| s.success()) {
                    failures.push(format!(
                        "{}: udp-probe across the migration: {} sizes not echoed (first {:?}), failures {:?}, exit {status:?}",
                        family.name(),
                        report.failed.len(),
                        report.failed.iter().take(20).collect::<Vec<_>>(),
                        report.failures.iter().take(5).collect::<Vec<_>>()
                    ));
                }
            }
            Err(e) => failures.push(format!(
                "{}: udp-probe across the migration: {e:#}, exit {status:?}: {}",
                family.name(),
                cluster.process(idx).stderr()
            )),
        }
    }
    let resets_after = cluster.client_tcp_counters().unwrap();
    for counter in ["EstabResets", "AttemptFails"] {
        let delta = resets_after.get(counter).copied().unwrap_or(0) - resets_before.get(counter).copied().unwrap_or(0);
        println!("client Tcp {counter}: +{delta}");
        if delta != 0 {
            failures.push(format!("the client's Tcp {counter} rose by {delta}"));
        }
    }
    finish(&cluster, &failures);
}
