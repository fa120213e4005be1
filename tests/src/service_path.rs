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
    cluster::{arg, node_name, read_json, wait_until, Cluster, NsRef, EDGE_FABRIC_IP, MANAGER_PORT, VIP},
    netns::mac_string,
};
use anyhow::{bail, Context, Result};
use handoff_bench::{
    report::{GenReport, SinkReport},
    tcp::TcpClientReport,
};
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
/// The client's address for generated UDP flows (owned by the client's
/// kernel so the edge can resolve it, steered to the generator's socket).
pub const CLIENT_UDP_SRC: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);

impl Cluster {
    /// The whole service path, up: three nodes with `node_queues` workers
    /// each behind the edge (spraying requests and replies), three services.
    pub fn service_path(node_queues: u32) -> Result<Self> {
        Self::service_path_with(node_queues, false)
    }

    /// [`Self::service_path`] with the edge's sprayer pinned in a bpffs of
    /// this run, so it keeps forwarding while the edge daemon is down.
    pub fn pinned_service_path(node_queues: u32) -> Result<Self> {
        Self::service_path_with(node_queues, true)
    }

    fn service_path_with(node_queues: u32, pinned: bool) -> Result<Self> {
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
        cluster.start_nodes(node_queues)?;
        Ok(cluster)
    }

    /// The policy every node runs: the VIP's UDP and TCP ports DNAT to the
    /// services, everything else and every reply goes to the edge.
    pub fn node_policy(&self) -> String {
        let mut text = format!(
            "[[neighbor]]\nname = \"edge\"\nmac = {:?}\n\n[default]\naction = \"forward\"\ngateway = \"edge\"\n",
            mac_string(self.edge_fabric_port.mac)
        );
        for (protocol, port) in [("udp", UDP_PORT), ("tcp", TCP_PORT)] {
            text.push_str(&format!(
                "\n[[service]]\nname = \"{protocol}-{port}\"\nvip = \"{VIP}\"\nprotocol = \"{protocol}\"\nport = {port}\n"
            ));
            for svc in &self.services {
                text.push_str(&format!(
                    "\n[[service.backend]]\naddress = \"{}\"\nport = {port}\nmac = {:?}\n",
                    svc.port.ip,
                    mac_string(svc.port.mac)
                ));
            }
        }
        text
    }

    /// The admin socket of node `i`.
    pub fn node_admin_socket(&self, i: usize) -> PathBuf {
        self.log_dir.join(format!("{}.sock", node_name(i)))
    }

    /// The configuration of node `i`, one worker per queue of its veth.
    pub fn node_config(&self, i: usize, queues: u32, policy: &Path) -> String {
        let node = &self.nodes[i];
        let queue_list: Vec<String> = (0..queues).map(|q| q.to_string()).collect();
        let mut text = format!(
            "[node]\nname = {:?}\nid = {i}\ninterface = {:?}\nqueues = [{}]\nxdp_mode = \"skb\"\nbind_mode = \"copy\"\nlocal_addresses = [\"{}\"]\npolicy = {:?}\nadmin_socket = {:?}\ncontrol_listen = \"{}:{CONTROL_PORT}\"\nmanager = \"{EDGE_FABRIC_IP}:{MANAGER_PORT}\"\n",
            node.name,
            node.port.ifname,
            queue_list.join(", "),
            node.port.ip,
            policy.display().to_string(),
            self.node_admin_socket(i).display().to_string(),
            node.port.ip,
        );
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
        let handoff = crate::binaries::binary("handoff")?;
        let policy = self.write_file("policy.toml", &self.node_policy())?;
        let mut started = Vec::new();
        for i in 0..self.nodes.len() {
            let config = self.write_file(&format!("{}.toml", node_name(i)), &self.node_config(i, queues, &policy))?;
            let idx = self.spawn(
                &node_name(i),
                NsRef::Node(i),
                &handoff,
                &[arg("node"), arg("--config"), arg(config.display())],
            )?;
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
    pub fn start_client_traffic(&mut self, flows: u32, rate: u64, count: u64) -> Result<(usize, PathBuf, PathBuf)> {
        let bench = crate::binaries::binary("handoff-bench")?;
        self.client.ip(&[
            "addr",
            "add",
            &format!("{CLIENT_UDP_SRC}/24"),
            "dev",
            &self.client_port.ifname,
        ])?;
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
            arg(10_000),
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
        let idx = self.spawn("traffic", NsRef::Client, &bench, &args)?;
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
        let (traffic, gen_json, sink_json) = self.start_client_traffic(load.flows, load.rate, load.count)?;
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
