//! End to end on the namespace test bed: the generator writes a capture
//! addressed to the cluster's VIP from the client's MAC and address,
//! `tcpreplay` replays it at its recorded speed from the client namespace
//! into the edge, and the members' sinks count what arrived.

use handoff_bench::report::SinkReport;
use handoff_testbed::{
    cluster::{arg, read_json, VIP},
    netns::mac_string,
    privileged, Cluster, ClusterSpec, NsRef,
};
use std::time::Duration;

const FLOWS: u32 = 300;
const RATE: u64 = 1_000;
const COUNT: u64 = 3_000;
const FRAME: usize = 128;

/// The number after `label` on the first line of `report` that holds it.
fn number_after(report: &str, label: &str) -> Option<f64> {
    let rest = &report[report.find(label)? + label.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

#[test]
fn a_written_capture_replays_through_the_edge_at_its_recorded_times() {
    if !privileged("a_written_capture_replays_through_the_edge_at_its_recorded_times") {
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

    let pcap = cluster.log_dir.join("replay.pcap");
    let bench = handoff_testbed::binaries::binary("handoff-bench").unwrap();
    let gen = cluster
        .spawn(
            "gen-pcap",
            NsRef::Client,
            &bench,
            &[
                arg("gen"),
                arg("--backend"),
                arg("none"),
                arg("--pcap"),
                arg(pcap.display()),
                arg("--src-mac"),
                mac_string(cluster.client_port.mac),
                arg("--dst-mac"),
                mac_string(cluster.edge_client_port.mac),
                arg("--src"),
                arg(cluster.client_port.ip),
                arg("--dst"),
                arg(VIP),
                arg("--flows"),
                arg(FLOWS),
                arg("--frame-size"),
                arg(FRAME),
                arg("--rate"),
                arg(RATE),
                arg("--count"),
                arg(COUNT),
                arg("--duration"),
                arg(COUNT / RATE + 10),
            ],
        )
        .unwrap();
    let status = cluster.process(gen).wait_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        status.is_some_and(|s| s.success()),
        "gen: {}",
        cluster.process(gen).stderr()
    );

    // The capture itself: every packet, stamped 1/RATE apart.
    let mut reader = pcap_file::pcap::PcapReader::new(std::fs::File::open(&pcap).unwrap()).unwrap();
    let mut stamps = Vec::new();
    while let Some(packet) = reader.next_packet() {
        let packet = packet.unwrap();
        assert_eq!(packet.data.len(), FRAME);
        assert_eq!(packet.data[..6], cluster.edge_client_port.mac);
        assert_eq!(packet.data[6..12], cluster.client_port.mac);
        stamps.push(packet.timestamp);
    }
    assert_eq!(stamps.len() as u64, COUNT);
    let span = stamps[stamps.len() - 1] - stamps[0];
    assert_eq!(span, Duration::from_secs(COUNT - 1) / RATE as u32);

    let sinks: Vec<_> = (0..3).map(|i| cluster.start_node_sink(i, FLOWS, 3).unwrap()).collect();
    // At the recorded speed (no --topspeed, --mbps or --pps); the capture
    // bounds it to COUNT packets in `span`, `timeout` to a minute more.
    let replay = cluster
        .run_bounded(
            NsRef::Client,
            span + Duration::from_secs(60),
            "tcpreplay",
            &[format!("--intf1={}", cluster.client_port.ifname), arg(pcap.display())],
        )
        .unwrap();
    assert!(
        replay.success(),
        "{} (tcpreplay is installed by scripts/bootstrap)",
        replay.describe()
    );
    let report = replay.stdout;
    println!("tcpreplay:\n{report}");
    assert_eq!(
        number_after(&report, "Successful packets:"),
        Some(COUNT as f64),
        "{report}"
    );
    assert_eq!(number_after(&report, "Failed packets:"), Some(0.0), "{report}");
    assert_eq!(number_after(&report, "Actual:"), Some(COUNT as f64), "{report}");
    // At the recorded speed the last packet cannot leave before the
    // capture's span after the first (tcpreplay waits for each timestamp;
    // a busy host only makes it later). As one burst it would be ~0 s.
    // tcpreplay prints the time with two decimals.
    let elapsed = number_after(&report, "sent in").expect("tcpreplay reports its elapsed time");
    assert!(
        elapsed >= span.as_secs_f64() - 0.01,
        "replayed in {elapsed} s, the capture spans {span:?}: {report}"
    );

    for &(idx, _) in &sinks {
        assert!(
            cluster
                .process(idx)
                .wait_timeout(Duration::from_secs(30))
                .unwrap()
                .is_some(),
            "a sink did not finish"
        );
    }
    let reports: Vec<SinkReport> = sinks.iter().map(|(_, json)| read_json(json).unwrap()).collect();
    // Lossless on this path, as spray_e2e shows at 20x this rate: every
    // replayed packet reached exactly one member, in order.
    let received: u64 = reports.iter().map(|r| r.received).sum();
    assert_eq!(received, COUNT, "{reports:?}");
    for (member, r) in reports.iter().enumerate() {
        assert_eq!(
            (r.duplicated, r.reordered, r.malformed),
            (0, 0, 0),
            "member {member}: {r:?}"
        );
        assert!(r.received > 0, "member {member} got none of the {FLOWS} flows");
    }
    let flows_seen: u64 = reports.iter().map(|r| r.flows_seen).sum();
    assert_eq!(flows_seen, u64::from(FLOWS));
    let stats = cluster.admin(&["stats"]).unwrap();
    assert_eq!(stats["reasons"]["sprayed"], COUNT, "edge counters: {stats}");
}
