//! The HTTP API of the edge and of a node on the netns test bed, with
//! Debian's `curl` and the CLI's `--api` transport: status and stats, a
//! disengage and engage of fd-a under UDP and TCP load with no loss, bad
//! requests, HTTPS with client certificates on a node's non-loopback
//! listener, the refusal of a non-loopback listener without TLS, and edge
//! members added and removed live.

use handoff::control::{keys::Party, tls::node_name as identity};
use handoff_testbed::{
    cluster::Family,
    privileged,
    service_path::{assert_every_echo, LoadReports, LoadSpec, NodeTuning, UDP_PORT},
    Cluster, ClusterSpec,
};
use std::{process::Command, time::Duration};

/// The API port (the edge on its namespace's loopback, each node on all
/// its namespace's addresses).
const API_PORT: u16 = 9480;
const LOAD: LoadSpec = LoadSpec {
    flows: 1_000,
    rate: 2_000,
    count: 24_000,
    connections: 20,
    requests: 300,
    per_flow: false,
};

/// Runs curl in the edge's namespace; its stdout (curl's own failures are errors).
fn curl(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let mut all = vec!["-sS", "--max-time", "60"];
    all.extend_from_slice(args);
    cluster.edge.exec("curl", &all)
}

/// `curl -w` output split into the body and the HTTP status.
fn body_and_status(out: &str) -> (serde_json::Value, u16) {
    let (body, status) = out.rsplit_once('\n').unwrap();
    (
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}")),
        status.trim().parse().unwrap(),
    )
}

/// A request to the edge's API: its JSON body and HTTP status.
fn edge_api(cluster: &Cluster, method: &str, cmd: &str, body: &str) -> (serde_json::Value, u16) {
    let url = format!("http://127.0.0.1:{API_PORT}/v1/{cmd}");
    let mut args = vec!["-X", method, "-w", "\n%{http_code}", &url];
    if !body.is_empty() {
        args.extend_from_slice(&["-H", "Content-Type: application/json", "-d", body]);
    }
    body_and_status(&curl(cluster, &args).unwrap())
}

/// `handoff <args> --json` run in the edge's namespace; its parsed output,
/// or its stderr as the error.
fn cli(cluster: &Cluster, args: &[&str]) -> Result<serde_json::Value, String> {
    let handoff = handoff_testbed::binaries::binary("handoff").unwrap();
    let out = cluster.edge.command(handoff).args(args).arg("--json").output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The fields of an edge status that do not move while nothing changes.
fn settled(status: &serde_json::Value) -> serde_json::Value {
    let members: Vec<_> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| serde_json::json!([m["name"], m["id"], m["in_scope"], m["buckets"], m["status"]]))
        .collect();
    serde_json::json!({"scope_version": status["scope_version"], "scope_digest": status["scope_digest"], "members": members})
}

#[test]
fn the_http_api_serves_the_admin_verbs_over_http_and_https() {
    if !privileged("the_http_api_serves_the_admin_verbs_over_http_and_https") {
        return;
    }
    assert!(
        Command::new("curl")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "curl is missing: run scripts/bootstrap"
    );
    // Four nodes; the edge's file names only fd-a..fd-c: fd-d is added live.
    let mut cluster = Cluster::create(&ClusterSpec {
        nodes: 4,
        node_queues: 2,
        ..ClusterSpec::default()
    })
    .unwrap();
    let handoff = handoff_testbed::binaries::binary("handoff").unwrap();

    // A non-loopback API without TLS is refused at load, before anything
    // is attached.
    let full = cluster.edge_config(true);
    let plain = full[..full.find("\n[[members]]\nname = \"fd-d\"").unwrap()].to_string();
    let tls_at = plain.find("\n[tls]").unwrap();
    let members_at = plain.find("\n[[members]]").unwrap();
    let without_tls = format!(
        "{}{}\n[api]\nlisten = \"{}:{API_PORT}\"\n",
        plain[..tls_at].replace(
            &format!(
                "control_listen = \"{}:7600\"\n",
                handoff_testbed::cluster::EDGE_FABRIC_IP
            ),
            ""
        ),
        &plain[members_at..],
        handoff_testbed::cluster::EDGE_FABRIC_IP
    );
    let bad = cluster.write_file("edge-no-tls.toml", &without_tls).unwrap();
    let out = cluster
        .edge
        .command(&handoff)
        .args(["edge", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("api.listen") && stderr.contains("not a loopback address"),
        "{stderr}"
    );

    let edge = format!("{plain}\n[api]\nlisten = \"127.0.0.1:{API_PORT}\"\n");
    cluster.start_edge(&edge).unwrap();
    cluster.start_services().unwrap();
    let node_api = format!("\n[api]\nlisten = \"0.0.0.0:{API_PORT}\"\n");
    let nodes = cluster
        .start_nodes_with(
            2,
            &NodeTuning {
                node: &node_api,
                ..NodeTuning::default()
            },
        )
        .unwrap();
    assert!(
        handoff_testbed::cluster::wait_until(Duration::from_secs(20), || {
            edge_api(&cluster, "GET", "status", "").0["members"]
                .as_array()
                .is_some_and(|m| m.len() == 3 && m.iter().all(|m| m["registered"] == true))
        }),
        "the nodes did not register"
    );

    // Status and stats with curl.
    let (status, code) = edge_api(&cluster, "GET", "status", "");
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["result"], "status");
    let names: Vec<&str> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["fd-a", "fd-b", "fd-c"], "{status}");
    assert!(status["scope_version"].as_u64().is_some() && status["members"][0]["in_scope"] == true);
    let (stats, code) = edge_api(&cluster, "GET", "stats", "");
    assert_eq!(code, 200, "{stats}");
    assert!(stats["reasons"].is_object() && stats["members"].is_array(), "{stats}");

    // Bad requests: 4xx with a message.
    let (refused, code) = edge_api(&cluster, "POST", "engage", r#"{"nod": "fd-a"}"#);
    assert_eq!(code, 400, "{refused}");
    assert!(
        refused["error"].as_str().unwrap().contains("unknown field `nod`"),
        "{refused}"
    );
    let (refused, code) = edge_api(&cluster, "GET", "frobnicate", "");
    assert!(
        code == 404 && refused["error"].as_str().unwrap().contains("disengage"),
        "{refused}"
    );
    let (refused, code) = edge_api(&cluster, "GET", "engage", "");
    assert!(
        code == 405 && refused["error"].as_str().unwrap().contains("POST"),
        "{refused}"
    );
    let (refused, code) = edge_api(&cluster, "POST", "engage", r#"{"node": "fd-a"}"#);
    assert!(
        code == 409 && !refused["error"].as_str().unwrap().is_empty(),
        "{refused}"
    );

    // The CLI over the API answers as over the admin socket.
    let api = format!("http://127.0.0.1:{API_PORT}");
    let admin = cluster.admin_socket().display().to_string();
    let over_api = cli(&cluster, &["status", "--api", &api]).unwrap();
    let over_socket = cli(&cluster, &["status", "--admin", &admin]).unwrap();
    assert_eq!(settled(&over_api), settled(&over_socket));

    // A node's API on its fabric address: HTTPS, a client certificate of
    // the cluster CA required.
    let keys = cluster.keys_dir();
    let node0 = Party::Node(0).paths(&keys);
    let name = identity(0);
    let node_ip = cluster.nodes[0].port.ip;
    let resolve = format!("{name}:{API_PORT}:{node_ip}");
    let url = format!("https://{name}:{API_PORT}/v1/status");
    let ca = node0.ca.display().to_string();
    let anonymous = curl(&cluster, &["--fail", "--resolve", &resolve, "--cacert", &ca, &url]);
    assert!(
        anonymous.is_err(),
        "a client without a certificate was served: {anonymous:?}"
    );
    let http = curl(&cluster, &["--fail", &format!("http://{node_ip}:{API_PORT}/v1/status")]);
    assert!(http.is_err(), "plain HTTP was served: {http:?}");
    let manager = Party::Manager.paths(&keys);
    let (cert, key) = (manager.cert.display().to_string(), manager.key.display().to_string());
    let served = curl(
        &cluster,
        &[
            "--fail",
            "--resolve",
            &resolve,
            "--cacert",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            &url,
        ],
    )
    .unwrap();
    let node_status: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(
        (&node_status["result"], &node_status["node"]),
        (&"status".into(), &"fd-a".into())
    );
    let https = format!("https://{node_ip}:{API_PORT}");
    let over_https = cli(
        &cluster,
        &[
            "status",
            "--api",
            &https,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
            "--server-name",
            &name,
        ],
    )
    .unwrap();
    let node_socket = cluster.node_admin_socket(0).display().to_string();
    assert_eq!(over_https, cli(&cluster, &["status", "--admin", &node_socket]).unwrap());

    // A backend change through the node's HTTPS API: a dry run is
    // validated there and changes nothing; a refused change names the API
    // and says nothing changed; the listing is the same after both.
    let tls = [
        "--ca",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
        "--server-name",
        name.as_str(),
    ];
    let listing = || cli(&cluster, &["services", "--admin", &node_socket]).unwrap();
    let before_changes = listing();
    let backend = cluster.services[0].port.addr(Family::V4).to_string();
    let udp_service = format!("udp-{UDP_PORT}");
    let change = |verb: &str, extra: &[&str]| {
        let mut args = vec![
            "backend",
            verb,
            "--service",
            &udp_service,
            "--address",
            &backend,
            "--port",
        ];
        let port = UDP_PORT.to_string();
        args.push(&port);
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--api", &https]);
        args.extend_from_slice(&tls);
        cli(&cluster, &args)
    };
    let dry = change("drain", &["--dry-run"]).unwrap();
    assert_eq!(
        (&dry[0]["result"], &dry[0]["dry_run"]),
        (&"policy_changed".into(), &true.into()),
        "{dry}"
    );
    let refused = change("weight", &["--weight", "0"]).unwrap_err();
    assert!(
        // The API is named by the identity its certificate carries.
        refused.contains(&format!("https://{name}:{API_PORT}")) && refused.contains("no node was changed"),
        "{refused}"
    );
    assert_eq!(listing(), before_changes);

    // Members, live: bad additions and the removal of a member in the
    // scope are refused and change nothing; fd-d, added, registers and is
    // engaged, and carries its share of the load below; out of the scope
    // again and its node stopped, it is removed.
    let before = settled(&cli(&cluster, &["status", "--api", &api]).unwrap());
    let fabric = cluster.edge_fabric_port.ifname.clone();
    let fd_d_mac = handoff_testbed::netns::mac_string(cluster.nodes[3].port.mac);
    let add = |name: &str, id: &str, interface: &str| {
        cli(
            &cluster,
            &[
                "member",
                "add",
                name,
                "--id",
                id,
                "--mac",
                &fd_d_mac,
                "--interface",
                interface,
                "--api",
                &api,
            ],
        )
    };
    let e = add("fd-d", "0", &fabric).unwrap_err();
    assert!(e.contains("id 0 is fd-a's"), "{e}");
    let e = add("fd-a", "3", &fabric).unwrap_err();
    assert!(e.contains("named \"fd-a\" already"), "{e}");
    let e = add("fd-d", "3", "nosuchif0").unwrap_err();
    assert!(e.contains("no interface \"nosuchif0\""), "{e}");
    let e = add("fd-d", "256", &fabric).unwrap_err();
    assert!(e.contains("not below 256"), "{e}");
    let (refused, code) = edge_api(&cluster, "POST", "member_remove", r#"{"member": "fd-a"}"#);
    assert!(
        code == 409 && refused["error"].as_str().unwrap().contains("handoff disengage fd-a"),
        "{refused}"
    );
    assert_eq!(settled(&cli(&cluster, &["status", "--api", &api]).unwrap()), before);
    let added = add("fd-d", "3", &fabric).unwrap();
    assert_eq!(
        (&added["change"], &added["id"]),
        (&"added".into(), &3.into()),
        "{added}"
    );
    let member = |name: &str| {
        cli(&cluster, &["status", "--api", &api]).unwrap()["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .cloned()
    };
    let mut last = None;
    assert!(
        handoff_testbed::cluster::wait_until(Duration::from_secs(20), || {
            last = member("fd-d");
            last.as_ref()
                .is_some_and(|m| m["registered"] == true && m["status"] == "Disengaged")
        }),
        "fd-d did not register once added: {last:?}"
    );
    let engage = format!("http://127.0.0.1:{API_PORT}/v1/engage");
    let out = curl(&cluster, &["--fail", "-d", r#"{"node": "fd-d"}"#, &engage]).unwrap();
    assert!(
        out.trim_end().lines().last().unwrap().contains("\"result\":\"done\""),
        "{out}"
    );
    let d = member("fd-d").unwrap();
    assert!(d["in_scope"] == true && d["buckets"].as_u64().unwrap() > 0, "{d}");
    // A disengage and an engage of fd-a through the API under load (fd-d
    // in the scope): each streams its phases and ends `done`; no echo is
    // lost, no connection breaks.
    let load = cluster.start_client_load(&LOAD).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    for (cmd, body) in [
        ("disengage", r#"{"node": "fd-a", "inheritor": "auto"}"#),
        ("engage", r#"{"node": "fd-a"}"#),
    ] {
        let url = format!("http://127.0.0.1:{API_PORT}/v1/{cmd}");
        let out = curl(
            &cluster,
            &["--fail", "-N", "-H", "Content-Type: application/json", "-d", body, &url],
        )
        .unwrap();
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(lines.len() >= 2, "{cmd}: {out}");
        assert!(
            lines[..lines.len() - 1].iter().all(|l| l["result"] == "progress"),
            "{cmd}: {out}"
        );
        assert_eq!(lines.last().unwrap()["result"], "done", "{cmd}: {out}");
    }
    let LoadReports { gen, sink, tcp } = cluster.finish_client_load(&load, Duration::from_secs(60)).unwrap();
    assert_eq!(gen.sent, LOAD.count);
    assert_every_echo(
        &sink,
        LOAD.count,
        "UDP echoes across a disengage and engage through the API",
    );
    assert!(tcp.ok(), "{tcp:?}");
    let stats = cli(&cluster, &["stats", "--api", &api]).unwrap();
    let sprayed = stats["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "fd-d")
        .cloned();
    assert!(sprayed.is_some_and(|m| m["packets"].as_u64().unwrap() > 0), "{stats}");
    let disengage = format!("http://127.0.0.1:{API_PORT}/v1/disengage");
    let out = curl(&cluster, &["--fail", "-d", r#"{"node": "fd-d"}"#, &disengage]).unwrap();
    assert!(
        out.trim_end().lines().last().unwrap().contains("\"result\":\"done\""),
        "{out}"
    );
    let e = cli(&cluster, &["member", "remove", "fd-d", "--api", &api]).unwrap_err();
    assert!(e.contains("connected to the manager: stop it first"), "{e}");
    cluster.process(nodes[3]).stop().unwrap();
    let mut removed = Err(String::new());
    assert!(
        handoff_testbed::cluster::wait_until(Duration::from_secs(20), || {
            removed = cli(&cluster, &["member", "remove", "fd-d", "--admin", &admin]);
            removed.is_ok()
        }),
        "fd-d was not removed once its node stopped: {removed:?}"
    );
    assert_eq!(removed.unwrap()["change"], "removed");
    let after = cli(&cluster, &["status", "--api", &api]).unwrap();
    let left: Vec<_> = after["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap(), m["in_scope"] == true))
        .collect();
    assert_eq!(left, [("fd-a", true), ("fd-b", true), ("fd-c", true)], "{after}");
    let stats = cli(&cluster, &["stats", "--api", &api]).unwrap();
    assert!(
        !stats["members"].as_array().unwrap().iter().any(|m| m["name"] == "fd-d"),
        "{stats}"
    );
}
