//! The full service path on the test bed: `handoff node` on every fd-*
//! namespace with a DNAT policy towards the services, UDP echo and TCP
//! servers on every svc-*, and the client's traffic through the VIP.
//!
//! ```text
//! client ─► edge ─sprays─► fd-x ─DNAT─► svc-n
//! client ◄─ edge ◄─ fd-owner ◄─(fabric)─ fd-y ◄─sprays─ edge ◄─ svc-n
//! ```
//! Replies go back through the edge, which sprays them by their own 5-tuple,
//! so they often land on a node that does not own the connection and must be
//! forwarded to its owner.

use crate::{
    cluster::{arg, node_name, read_json, wait_until, Cluster, Family, NsRef, EDGE_FABRIC_IP, MANAGER_PORT, VIP},
    netns::mac_string,
};
use anyhow::{bail, Context, Result};
use handoff::{
    control::keys::Party,
    flow::{config::PolicyConfig, Decision, Policy},
    scope::{HashParams, Scope},
};
use handoff_bench::{
    flows::FlowSet,
    report::{GenReport, SinkReport},
    tcp::TcpClientReport,
};
use handoff_common::{flow_key::FlowKey, net::ipproto};
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

/// UDP echo port on the services and on the VIP.
pub const UDP_PORT: u16 = 7000;
/// TCP request/response port on the services and on the VIP.
pub const TCP_PORT: u16 = 7100;
/// Node control port.
pub const CONTROL_PORT: u16 = 7700;
/// HTTP on the services and on the VIPs (every service).
pub const HTTP_PORT: u16 = 80;
/// iperf3 on the VIPs: one backend only (svc-1), because `iperf3 -s` runs
/// one test at a time and a test's control and data connections must reach
/// the same server.
pub const IPERF_PORT: u16 = 5201;
/// The service that serves [`IPERF_PORT`].
pub const IPERF_SERVICE: usize = 0;
/// UDP echo by a real program (`socat`) on the services and on the VIPs.
pub const SOCAT_UDP_PORT: u16 = 7001;
/// The client's address for generated UDP flows (owned by the client's
/// kernel so the edge can resolve it, steered to the generator's socket).
pub const CLIENT_UDP_SRC: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// The first source port of the client's UDP flows.
pub const CLIENT_FIRST_PORT: u16 = 10_000;

impl Cluster {
    /// The whole service path, up: three nodes with `node_queues` workers
    /// each behind the edge (spraying requests and replies), three services.
    pub fn service_path(node_queues: u32) -> Result<Self> {
        Self::build_service_path(node_queues, false, &NodeTuning::default())
    }

    /// [`Cluster::service_path`] with `tuning` in every node's files.
    pub fn service_path_with(node_queues: u32, tuning: &NodeTuning) -> Result<Self> {
        Self::build_service_path(node_queues, false, tuning)
    }

    /// [`Self::service_path`] with the edge's sprayer pinned in a bpffs of
    /// this run, so it keeps forwarding while the edge daemon is down.
    pub fn pinned_service_path(node_queues: u32) -> Result<Self> {
        Self::build_service_path(node_queues, true, &NodeTuning::default())
    }

    fn build_service_path(node_queues: u32, pinned: bool, tuning: &NodeTuning) -> Result<Self> {
        let mut cluster = Cluster::create(&crate::ClusterSpec {
            node_queues,
            ..crate::ClusterSpec::default()
        })?;
        if pinned {
            cluster.mount_bpffs()?;
        }
        let edge = cluster.edge_config(true);
        cluster.start_edge(&edge)?;
        cluster.start_services()?;
        cluster.start_nodes_with(node_queues, tuning)?;
        Ok(cluster)
    }

    /// The client's UDP flows (see [`Cluster::start_client_traffic`]).
    pub fn client_flows(flows: u32) -> FlowSet {
        FlowSet {
            count: flows,
            src_base: CLIENT_UDP_SRC,
            first_port: CLIENT_FIRST_PORT,
            dst: VIP,
            dst_port: UDP_PORT,
        }
    }

    /// For each of the client's `flows` UDP flows, whether `member` owns
    /// the bucket of its requests or of its replies while the edge's scope
    /// is its first one over `members`: the nodes its echoes cross, worked
    /// out with the edge's hash and the nodes' own backend choice.
    pub fn flows_crossing(&self, flows: u32, members: &[u32], member: u32) -> Result<Vec<bool>> {
        let policy = PolicyConfig::parse(&self.node_policy(), Path::new("policy.toml"))?;
        let policy = Policy::new(policy)?;
        let hash = HashParams::default();
        let scope = Scope::initial(hash.buckets, members)?;
        let set = Self::client_flows(flows);
        (0..flows)
            .map(|flow| {
                let (src, port) = set.source(flow);
                let request = FlowKey::new(src.into(), VIP.into(), port, UDP_PORT, ipproto::UDP);
                let Decision::Install { reverse_key, .. } = policy.decide(&request) else {
                    bail!("the node policy drops flow {flow}");
                };
                Ok([request, reverse_key]
                    .iter()
                    .any(|key| scope.owner(hash.bucket(key)) == member))
            })
            .collect()
    }

    /// The policy every node runs, on the IPv4 VIP and on the IPv6 VIP alike
    /// (each with backends of its family): the bench's UDP echo and TCP
    /// request/response ports, HTTP and a `socat` UDP echo DNAT to every
    /// service, iperf3 to [`IPERF_SERVICE`] only; everything else and
    /// every reply goes to the edge.
    pub fn node_policy(&self) -> String {
        let mut text = format!(
            "[[neighbor]]\nname = \"edge\"\nmac = {:?}\n\n[default]\naction = \"forward\"\ngateway = \"edge\"\n",
            mac_string(self.edge_fabric_port.mac)
        );
        let all: Vec<usize> = (0..self.services.len()).collect();
        let services: [(&str, u16, &[usize]); 5] = [
            ("udp", UDP_PORT, &all),
            ("tcp", TCP_PORT, &all),
            ("tcp", HTTP_PORT, &all),
            ("tcp", IPERF_PORT, &[IPERF_SERVICE]),
            ("udp", SOCAT_UDP_PORT, &all),
        ];
        for family in Family::BOTH {
            for (protocol, port, backends) in services {
                let suffix = if family == Family::V4 { "" } else { "-v6" };
                text.push_str(&format!(
                    "\n[[service]]\nname = \"{protocol}-{port}{suffix}\"\nvip = \"{}\"\nprotocol = \"{protocol}\"\nport = {port}\n",
                    family.vip()
                ));
                for &i in backends {
                    let svc = &self.services[i];
                    text.push_str(&format!(
                        "\n[[service.backend]]\naddress = \"{}\"\nport = {port}\nmac = {:?}\n",
                        svc.port.addr(family),
                        mac_string(svc.port.mac)
                    ));
                }
            }
        }
        text
    }

    /// The admin socket of node `i`.
    pub fn node_admin_socket(&self, i: usize) -> PathBuf {
        self.log_dir.join(format!("{}.sock", node_name(i)))
    }

    /// The configuration of node `i`, one worker per queue of its veth,
    /// with `node_settings` (TOML lines) added to its `[node]` section.
    pub fn node_config(&self, i: usize, queues: u32, policy: &Path, node_settings: &str) -> String {
        let node = &self.nodes[i];
        let queue_list: Vec<String> = (0..queues).map(|q| q.to_string()).collect();
        let mut text = format!(
            "[node]\nname = {:?}\nid = {i}\ninterface = {:?}\nqueues = [{}]\nxdp_mode = \"skb\"\nbind_mode = \"copy\"\nlocal_addresses = [\"{}\", \"{}\"]\npolicy = {:?}\nadmin_socket = {:?}\ncontrol_listen = \"{}:{CONTROL_PORT}\"\nmanager = \"{EDGE_FABRIC_IP}:{MANAGER_PORT}\"\n",
            node.name,
            node.port.ifname,
            queue_list.join(", "),
            node.port.ip,
            node.port.ip6,
            policy.display().to_string(),
            self.node_admin_socket(i).display().to_string(),
            node.port.ip,
        );
        text.push_str(node_settings);
        text.push_str(&self.tls_section(Party::Node(i as u16)));
        for (j, member) in self.nodes.iter().enumerate() {
            text.push_str(&format!(
                "\n[[members]]\nname = {:?}\nid = {j}\nmac = {:?}\ncontrol = \"{}:{CONTROL_PORT}\"\n",
                member.name,
                mac_string(member.port.mac),
                member.port.ip
            ));
        }
        text
    }

    /// Starts `handoff node` on every node and waits until each is ready.
    pub fn start_nodes(&mut self, queues: u32) -> Result<Vec<usize>> {
        self.start_nodes_with(queues, &NodeTuning::default())
    }

    /// [`Cluster::start_nodes`] with `tuning` in every node's files.
    pub fn start_nodes_with(&mut self, queues: u32, tuning: &NodeTuning) -> Result<Vec<usize>> {
        let handoff = crate::binaries::binary("handoff")?;
        let policy = format!("{}{}", tuning.policy, self.node_policy());
        let policy = self.write_file("policy.toml", &policy)?;
        let mut started = Vec::new();
        for i in 0..self.nodes.len() {
            let text = self.node_config(i, queues, &policy, tuning.node);
            let config = self.write_file(&format!("{}.toml", node_name(i)), &text)?;
            let args = [arg("node"), arg("--config"), arg(config.display())];
            let idx = match tuning.wall_clock {
                Some((skewed, offset)) if skewed == i => {
                    self.spawn_with_env(&node_name(i), NsRef::Node(i), &handoff, &args, &skewed_clock(offset)?)?
                }
                _ => self.spawn(&node_name(i), NsRef::Node(i), &handoff, &args)?,
            };
            started.push(idx);
        }
        for (i, &idx) in started.iter().enumerate() {
            if !wait_until(Duration::from_secs(20), || {
                self.process(idx).stderr().contains("node: ready")
            }) {
                bail!("{} did not start: {}", node_name(i), self.process(idx).stderr());
            }
        }
        Ok(started)
    }

    /// Starts a UDP echo and a TCP server on every service and waits until each listens.
    pub fn start_services(&mut self) -> Result<()> {
        let bench = crate::binaries::binary("handoff-bench")?;
        for i in 0..self.services.len() {
            let name = self.services[i].name.clone();
            let udp = self.spawn(
                &format!("{name}-udp"),
                NsRef::Service(i),
                &bench,
                &[arg("udp-echo"), arg("--listen"), arg(format!("0.0.0.0:{UDP_PORT}"))],
            )?;
            let tcp = self.spawn(
                &format!("{name}-tcp"),
                NsRef::Service(i),
                &bench,
                &[arg("tcp-server"), arg("--listen"), arg(format!("0.0.0.0:{TCP_PORT}"))],
            )?;
            for idx in [udp, tcp] {
                if !wait_until(Duration::from_secs(10), || self.process(idx).stderr().contains("ready")) {
                    bail!("a service on {name} did not start: {}", self.process(idx).stderr());
                }
            }
        }
        Ok(())
    }

    /// Starts the client's UDP traffic to the VIP's echo port: `count`
    /// packets over `flows` flows at `rate` pps, the echoes counted by the
    /// same process. Returns its index and its gen and sink JSON paths.
    pub fn start_client_traffic(&mut self, load: &LoadSpec) -> Result<(usize, PathBuf, PathBuf)> {
        let LoadSpec { flows, rate, count, .. } = *load;
        let bench = crate::binaries::binary("handoff-bench")?;
        // The client owns every source address of its flows (one per
        // 55,536 flows), so the edge resolves the echoes' destination.
        let set = Self::client_flows(flows);
        for i in 0..set.source_addresses() {
            let address = Ipv4Addr::from(u32::from(CLIENT_UDP_SRC) + i);
            self.client
                .ip(&["addr", "add", &format!("{address}/24"), "dev", &self.client_port.ifname])?;
        }
        let gen_json = self.log_dir.join("traffic-gen.json");
        let sink_json = self.log_dir.join("traffic-sink.json");
        let args = [
            arg("traffic"),
            arg("--interface"),
            self.client_port.ifname.clone(),
            arg("--xdp-mode"),
            arg("skb"),
            arg("--local-address"),
            arg(self.client_port.ip),
            arg("--dst-mac"),
            mac_string(self.edge_client_port.mac),
            arg("--flows"),
            arg(flows),
            arg("--src"),
            arg(CLIENT_UDP_SRC),
            arg("--first-port"),
            arg(CLIENT_FIRST_PORT),
            arg("--dst"),
            arg(VIP),
            arg("--dst-port"),
            arg(UDP_PORT),
            arg("--rate"),
            arg(rate),
            arg("--count"),
            arg(count),
            arg("--duration"),
            arg(count / rate.max(1) + 30),
            arg("--idle"),
            arg(3),
            arg("--json"),
            arg(gen_json.display()),
            arg("--sink-json"),
            arg(sink_json.display()),
        ];
        let per_flow = load.per_flow.then(|| arg("--per-flow"));
        let idx = self.spawn(
            "traffic",
            NsRef::Client,
            &bench,
            args.iter().cloned().chain(per_flow).collect::<Vec<_>>().as_slice(),
        )?;
        if !wait_until(Duration::from_secs(15), || self.process(idx).stderr().contains("ready")) {
            bail!("the client traffic did not start: {}", self.process(idx).stderr());
        }
        Ok((idx, gen_json, sink_json))
    }

    /// Starts `connections` kernel TCP connections from the client to the
    /// VIP, each doing `requests` request/response exchanges.
    pub fn start_tcp_clients(&mut self, connections: u32, requests: u32) -> Result<(usize, PathBuf)> {
        let bench = crate::binaries::binary("handoff-bench")?;
        let json = self.log_dir.join("tcp-client.json");
        let args = [
            arg("tcp-client"),
            arg("--connect"),
            arg(format!("{VIP}:{TCP_PORT}")),
            arg("--connections"),
            arg(connections),
            arg("--requests-per-connection"),
            arg(requests),
            arg("--interval-ms"),
            arg(10),
            arg("--ramp-ms"),
            arg(1000),
            arg("--duration"),
            arg(60),
            arg("--json"),
            arg(json.display()),
        ];
        let idx = self.spawn("tcp-client", NsRef::Client, &bench, &args)?;
        Ok((idx, json))
    }

    /// Starts the client's UDP echo traffic and its kernel TCP connections.
    pub fn start_client_load(&mut self, load: &LoadSpec) -> Result<ClientLoad> {
        let (tcp, tcp_json) = self.start_tcp_clients(load.connections, load.requests)?;
        let (traffic, gen_json, sink_json) = self.start_client_traffic(load)?;
        Ok(ClientLoad {
            traffic,
            tcp,
            gen_json,
            sink_json,
            tcp_json,
        })
    }

    /// Waits up to `timeout` for both parts of `load` to end, fails unless
    /// both succeeded, and returns their reports.
    pub fn finish_client_load(&mut self, load: &ClientLoad, timeout: Duration) -> Result<LoadReports> {
        for (idx, what) in [(load.traffic, "traffic"), (load.tcp, "tcp-client")] {
            let status = self.process(idx).wait_timeout(timeout)?;
            if !status.is_some_and(|s| s.success()) {
                bail!("{what} failed: {}", self.process(idx).stderr());
            }
        }
        load.reports()
    }

    /// `handoff stats` of node `i`.
    pub fn node_stats(&self, i: usize) -> Result<serde_json::Value> {
        self.admin_at(&self.node_admin_socket(i), &["stats"])
    }

    /// Runs `handoff <args> --admin <edge socket>` (a `disengage` or
    /// `engage`) and returns what it printed; fails when it fails.
    pub fn migrate(&self, args: &[&str]) -> Result<String> {
        let handoff = crate::binaries::binary("handoff")?;
        let out = std::process::Command::new(handoff)
            .args(args)
            .arg("--admin")
            .arg(self.admin_socket())
            .output()?;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            bail!("handoff {args:?} failed: {printed}");
        }
        Ok(printed)
    }

    /// Flips the edge's scope without `member` (no state moves) and waits
    /// until every node forwards by it: the manager sends it to them.
    pub fn scope_remove(&self, member: &str) -> Result<serde_json::Value> {
        let flip = self.admin(&["scope", "remove", member])?;
        let version = flip["version"].as_u64().context("the flip has no version")?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let status = self.admin(&["status"])?;
            let behind: Vec<_> = status["members"]
                .as_array()
                .context("no members")?
                .iter()
                .filter(|m| m["scope_version"].as_u64().unwrap_or(0) < version)
                .map(|m| m["name"].clone())
                .collect();
            if behind.is_empty() {
                return Ok(flip);
            }
            if std::time::Instant::now() > deadline {
                bail!("nodes {behind:?} did not take scope version {version}");
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

/// Fails unless every one of `count` echoes came back exactly once and in
/// order; `context` is printed on failure.
pub fn assert_every_echo(sink: &SinkReport, count: u64, context: &str) {
    assert_eq!(
        (sink.received, sink.lost, sink.reordered, sink.duplicated),
        (count, Some(0), 0, 0),
        "{sink:?}\n{context}"
    );
}

/// libfaketime (Debian's `libfaketime`, installed by `scripts/bootstrap`).
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// The environment that runs a program with its wall clock `offset` off
/// (libfaketime's form, `+1h`), its monotonic clock untouched.
fn skewed_clock(offset: &str) -> Result<Vec<(String, String)>> {
    if !Path::new(LIBFAKETIME).exists() {
        bail!("{LIBFAKETIME} is missing: run scripts/bootstrap (it installs libfaketime)");
    }
    Ok(vec![
        ("LD_PRELOAD".into(), LIBFAKETIME.into()),
        ("FAKETIME".into(), offset.into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
        ("FAKETIME_NO_CACHE".into(), "0".into()),
    ])
}

/// Settings added to the test bed's node files, for a test or a benchmark
/// that needs other limits than the defaults.
#[derive(Clone, Copy, Debug, Default)]
pub struct NodeTuning<'a> {
    /// TOML lines for every node's `[node]` section.
    pub node: &'a str,
    /// TOML for the top of the policy (`[table]`, `[timeouts]`).
    pub policy: &'a str,
    /// A node whose host's wall clock is off: its index and the offset, in
    /// libfaketime's form (`+1h`). Its process sees the skewed time in
    /// every wall-clock call; its monotonic clock stays true.
    pub wall_clock: Option<(usize, &'a str)>,
}

/// The client's load: UDP flows echoed by the services, and kernel TCP
/// connections doing request/response.
#[derive(Clone, Copy, Debug)]
pub struct LoadSpec {
    /// UDP flows.
    pub flows: u32,
    /// UDP packets per second.
    pub rate: u64,
    /// UDP packets in all.
    pub count: u64,
    /// TCP connections.
    pub connections: u32,
    /// Requests per TCP connection.
    pub requests: u32,
    /// The echo report counts every flow on its own (`SinkReport::per_flow`).
    pub per_flow: bool,
}

/// A running [`LoadSpec`]: its processes and where they report.
#[derive(Clone, Debug)]
pub struct ClientLoad {
    /// The UDP traffic process.
    pub traffic: usize,
    /// The TCP client process.
    pub tcp: usize,
    gen_json: PathBuf,
    sink_json: PathBuf,
    tcp_json: PathBuf,
}

/// What the client's load saw.
#[derive(Debug)]
pub struct LoadReports {
    /// The UDP generator.
    pub gen: GenReport,
    /// The echoes.
    pub sink: SinkReport,
    /// The TCP connections.
    pub tcp: TcpClientReport,
}

impl ClientLoad {
    /// The reports, once both processes have ended.
    pub fn reports(&self) -> Result<LoadReports> {
        Ok(LoadReports {
            gen: read_json(&self.gen_json)?,
            sink: read_json(&self.sink_json)?,
            tcp: read_json(&self.tcp_json)?,
        })
    }
}
