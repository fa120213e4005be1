//! The Prometheus metrics of the edge and of every node, on the netns test
//! bed: UDP and TCP load through the VIP and a disengage/engage of fd-a,
//! then each `/metrics` is scraped and checked by `promtool check metrics`,
//! the Grafana dashboard's every metric is found in those scrapes, and a
//! real Prometheus server (Debian's, started here in the edge's namespace
//! on its loopback, with its own storage directory) scrapes the cluster
//! and answers a query for each node's packet counter.

use handoff_testbed::{
    cluster::{arg, wait_until, EDGE_FABRIC_IP},
    privileged,
    service_path::{LoadReports, LoadSpec, NodeTuning},
    Cluster, ClusterSpec, NsRef,
};
use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

/// The metrics port of the edge and of the nodes (each in its namespace).
const METRICS_PORT: u16 = 9464;
/// Where the test's Prometheus serves its API, on the edge namespace's loopback.
const PROMETHEUS_LISTEN: &str = "127.0.0.1:9090";
const NODES: [&str; 3] = ["fd-a", "fd-b", "fd-c"];
const LOAD: LoadSpec = LoadSpec {
    flows: 1_000,
    rate: 2_000,
    count: 8_000,
    connections: 20,
    requests: 10,
    per_flow: false,
};

fn dashboard_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/handoff.json")
}

/// Every `handoff_*` metric name the dashboard's PromQL expressions and
/// variable queries use (label values in quotes are skipped).
fn dashboard_metrics(dashboard: &serde_json::Value) -> BTreeSet<String> {
    fn walk(value: &serde_json::Value, out: &mut BTreeSet<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "query" | "definition", serde_json::Value::String(promql)) => {
                            out.extend(metric_names(promql))
                        }
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(dashboard, &mut out);
    out
}

/// The `handoff_*` identifiers of a PromQL expression, outside quotes.
fn metric_names(promql: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut word = String::new();
    let mut quote: Option<char> = None;
    for c in promql.chars().chain([' ']) {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if word.starts_with("handoff_") {
            names.push(std::mem::take(&mut word));
        }
        word.clear();
        if c == '"' || c == '\'' || c == '`' {
            quote = Some(c);
        }
    }
    names
}

/// The sample names of an exposition (`x_total`, `x_bucket`, ...).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The sum of the samples of `name` whose labels include every `labels` pair.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else { continue };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue;
        }
        if labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))) {
            let value: f64 = rest.rsplit(' ').next()?.parse().ok()?;
            *found.get_or_insert(0.0) += value;
        }
    }
    found
}

/// GETs `url` with curl from inside the edge's namespace.
fn curl(cluster: &Cluster, url: &str, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec!["-sS", "--fail", "--max-time", "5"];
    args.extend_from_slice(extra);
    args.push(url);
    cluster.edge.exec("curl", &args)
}

/// Runs `promtool check metrics` on `text`; returns its exit success and output.
fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; run scripts/bootstrap)");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("writing to promtool");
    let out = child.wait_with_output().expect("promtool");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), printed)
}

/// A Prometheus instant query's result: `(labels, value)` per series.
fn query(cluster: &Cluster, promql: &str) -> anyhow::Result<Vec<(serde_json::Value, f64)>> {
    let out = curl(
        cluster,
        &format!("http://{PROMETHEUS_LISTEN}/api/v1/query"),
        &["-G", "--data-urlencode", &format!("query={promql}")],
    )?;
    let answer: serde_json::Value = serde_json::from_str(&out)?;
    anyhow::ensure!(answer["status"] == "success", "{answer}");
    Ok(answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            let value = r["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
            (r["metric"].clone(), value)
        })
        .collect())
}

#[test]
fn a_real_dashboard_metric_set_reaches_prometheus_from_the_edge_and_every_node() {
    if !privileged("a_real_dashboard_metric_set_reaches_prometheus_from_the_edge_and_every_node") {
        return;
    }
    let started = Instant::now();
    for tool in ["prometheus", "promtool", "curl"] {
        assert!(
            Command::new(tool)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing: run scripts/bootstrap"
        );
    }
    let mut cluster = Cluster::create(&ClusterSpec {
        node_queues: 2,
        ..ClusterSpec::default()
    })
    .unwrap();
    let edge_metrics = format!("{EDGE_FABRIC_IP}:{METRICS_PORT}");
    let edge = format!(
        "{}\n[metrics]\nlisten = \"{edge_metrics}\"\n",
        cluster.edge_config(true)
    );
    cluster.start_edge(&edge).unwrap();
    cluster.start_services().unwrap();
    // Each node in its own namespace: every address there is the test bed's.
    let node_metrics = format!("\n[metrics]\nlisten = \"0.0.0.0:{METRICS_PORT}\"\n");
    cluster
        .start_nodes_with(
            2,
            &NodeTuning {
                node: &node_metrics,
                ..NodeTuning::default()
            },
        )
        .unwrap();
    let targets: Vec<String> = std::iter::once(edge_metrics.clone())
        .chain(cluster.nodes.iter().map(|n| format!("{}:{METRICS_PORT}", n.port.ip)))
        .collect();

    // A real Prometheus in the edge's namespace, on its loopback, storing
    // in this run's directory.
    let storage = cluster.log_dir.join("prometheus-data");
    let quoted: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let config = cluster
        .write_file(
            "prometheus.yml",
            &format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: handoff\n    static_configs:\n      - targets: [{}]\n",
                quoted.join(", ")
            ),
        )
        .unwrap();
    let prometheus = cluster
        .spawn(
            "prometheus",
            NsRef::Edge,
            Path::new("/usr/bin/prometheus"),
            &[
                arg(format!("--config.file={}", config.display())),
                arg(format!("--storage.tsdb.path={}", storage.display())),
                arg(format!("--web.listen-address={PROMETHEUS_LISTEN}")),
                arg("--storage.tsdb.retention.time=1h"),
            ],
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || curl(
            &cluster,
            &format!("http://{PROMETHEUS_LISTEN}/-/ready"),
            &[]
        )
        .is_ok()),
        "prometheus did not get ready: {}",
        cluster.process(prometheus).stderr()
    );

    // Load through the VIP, then a migration, so every family has samples
    // (the phase and handover histograms are observed by migrations).
    let load = cluster.start_client_load(&LOAD).unwrap();
    let LoadReports { gen, sink, tcp } = cluster.finish_client_load(&load, Duration::from_secs(60)).unwrap();
    assert_eq!(gen.sent, LOAD.count);
    assert!(sink.received > 0 && tcp.ok(), "sink {sink:?}\ntcp {tcp:?}");
    let out = cluster.migrate(&["disengage", "fd-a"]).unwrap();
    assert!(out.contains("fd-a: Disengaged after"), "{out}");
    let out = cluster.migrate(&["engage", "fd-a"]).unwrap();
    assert!(out.contains("fd-a: Active after"), "{out}");

    // Each endpoint: the Prometheus text format passes promtool's checks
    // (syntax and lint: names, units, help), and OpenMetrics is served to
    // a client that asks for it.
    let mut scraped = BTreeSet::new();
    let mut texts = Vec::new();
    for target in &targets {
        let url = format!("http://{target}/metrics");
        let text = curl(&cluster, &url, &[]).unwrap();
        let (ok, printed) = promtool_check(&text);
        assert!(ok && printed.trim().is_empty(), "promtool on {url}: {printed}");
        let open = curl(
            &cluster,
            &url,
            &["-H", "Accept: application/openmetrics-text; version=1.0.0"],
        )
        .unwrap();
        assert!(open.ends_with("# EOF\n"), "{url} in OpenMetrics: {open}");
        let refused = curl(&cluster, &format!("http://{target}/"), &[]);
        assert!(refused.is_err(), "{target}/ answered: {refused:?}");
        scraped.extend(sample_names(&text));
        texts.push(text);
    }
    let (edge_text, node_texts) = texts.split_first().unwrap();
    assert!(
        sample(edge_text, "handoff_xdp_frames_total", &[("reason", "sprayed")]).unwrap_or(0.0) >= LOAD.count as f64,
        "{edge_text}"
    );
    for member in NODES {
        assert!(
            sample(edge_text, "handoff_sprayed_packets_total", &[("member", member)]).unwrap_or(0.0) > 0.0,
            "nothing sprayed to {member}: {edge_text}"
        );
    }
    for (mode, outcome) in [("disengage", "completed"), ("engage", "completed")] {
        assert_eq!(
            sample(
                edge_text,
                "handoff_migrations_total",
                &[("mode", mode), ("outcome", outcome)]
            ),
            Some(1.0),
            "{edge_text}"
        );
    }
    assert!(
        sample(
            edge_text,
            "handoff_migration_phase_duration_seconds_count",
            &[("mode", "disengage"), ("phase", "copy")]
        ) == Some(1.0),
        "{edge_text}"
    );
    for (text, node) in node_texts.iter().zip(NODES) {
        let rx = sample(text, "handoff_rx_packets_total", &[("node", node)]).unwrap_or(0.0);
        assert!(rx > 0.0, "{node}: {text}");
        assert!(
            sample(
                text,
                "handoff_xdp_frames_total",
                &[("node", node), ("reason", "steered")]
            )
            .unwrap_or(0.0)
                > 0.0,
            "{node}: {text}"
        );
        assert!(
            sample(text, "handoff_drops_total", &[("node", node), ("reason", "no_flow")]).is_some(),
            "{node}: {text}"
        );
    }
    assert!(
        sample(&node_texts[0], "handoff_handover_bytes_count", &[("node", "fd-a")]).unwrap_or(0.0) >= 1.0,
        "fd-a's handover rounds: {}",
        node_texts[0]
    );
    // The scrape matches `handoff stats` for a counter that no longer moves.
    let stats = cluster.node_stats(0).unwrap();
    assert_eq!(
        sample(&node_texts[0], "handoff_handover_sent_bytes_total", &[("node", "fd-a")]),
        stats["control"]["handover_bytes_sent"].as_f64(),
        "{stats}"
    );

    // Every metric the dashboard queries exists in a real scrape.
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_path()).unwrap()).unwrap();
    let used = dashboard_metrics(&dashboard);
    assert!(used.len() >= 10, "the dashboard queries only {used:?}");
    let missing: Vec<&String> = used.iter().filter(|m| !scraped.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which no scrape has"
    );

    // Prometheus scraped every target and has each node's packet counter.
    let mut last = String::new();
    let scraped_all = wait_until(Duration::from_secs(60), || {
        let up = query(&cluster, "up").unwrap_or_default();
        let by_node = query(&cluster, "sum by (node) (handoff_rx_packets_total)").unwrap_or_default();
        last = format!("up {up:?}\nrx {by_node:?}");
        up.len() == targets.len()
            && up.iter().all(|(_, v)| *v == 1.0)
            && NODES.iter().all(|node| {
                by_node
                    .iter()
                    .any(|(labels, value)| labels["node"] == *node && *value > 0.0)
            })
    });
    assert!(
        scraped_all,
        "Prometheus never had a non-zero handoff_rx_packets_total for every node: {last}\n{}",
        cluster.process(prometheus).stderr()
    );
    let sprayed = query(&cluster, "sum(handoff_xdp_frames_total{reason=\"sprayed\", node=\"\"})").unwrap();
    assert!(sprayed.first().is_some_and(|(_, v)| *v > 0.0), "{sprayed:?}");

    cluster.process(prometheus).stop().unwrap();
    std::fs::remove_dir_all(&storage).unwrap();
    eprintln!("metrics_e2e: {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn metric_names_are_read_from_promql_outside_quotes() {
    assert_eq!(
        metric_names(
            "histogram_quantile(0.5, sum by (le) (rate(handoff_handover_bytes_bucket{node=~\"handoff_x\"}[5m]))) / handoff_flows"
        ),
        ["handoff_handover_bytes_bucket", "handoff_flows"]
    );
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard_path()).unwrap()).unwrap();
    let used = dashboard_metrics(&dashboard);
    assert!(used.contains("handoff_rx_packets_total"), "{used:?}");
    assert!(
        used.contains("handoff_migration_phase_duration_seconds_bucket"),
        "{used:?}"
    );
}
