//! The lab: the test bed's service path (client, edge, flow-distributor
//! nodes, services) kept running for one's own tools until it is taken
//! down, and removed whole even when whatever runs it is killed.
//!
//! ```text
//! handoff-lab up ──spawns, detached──► supervisor (holds the Cluster) ──► edge, nodes, services
//!                                          │ pipe (write end)
//!                                          ▼
//!                                        reaper: on EOF (the supervisor ended, however it
//!                                        ended) kills what runs in the lab's namespaces,
//!                                        deletes them and the lab's files
//! ```
//! Every namespace is `handoff-<prefix>-<role>` with a per-run prefix
//! ([`RunPrefix`]); the lab's logs, configurations and keys are in
//! [`log_dir_of`]; a lab started by `handoff-lab up` describes itself in
//! `<state dir>/<prefix>.json` ([`LabState`]).

use crate::{
    cluster::{log_dir_of, node_name, wait_until, Cluster, ClusterSpec, CLIENT_IP, CLIENT_IP6, VIP, VIP6},
    netns::{ip, sweep_stale_bpffs, RunPrefix},
    process::alive,
    real::HttpObjects,
    service_path::{HTTP_PORT, IPERF_PORT, SOCAT_UDP_PORT, TCP_PORT, UDP_PORT},
};
use anyhow::{bail, Context, Result};
use handoff::admin::{self, AdminRequest, AdminResponse};
use serde::{Deserialize, Serialize};
use std::{
    io::Read,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Where `handoff-lab up` writes its state files unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/run/handoff-lab";
/// The most nodes a lab has: node i is 10.77.1.(11 + i), below the
/// services' 10.77.1.21.
pub const MAX_NODES: usize = 10;
/// The most services a lab has (10.77.1.21 to .30).
pub const MAX_SERVICES: usize = 10;
/// The most workers (veth queue pairs) per node.
pub const MAX_WORKERS: u32 = 4;
/// How long the members have to register and enter the scope.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the reaper waits for the processes it killed to end.
const KILL_TIMEOUT: Duration = Duration::from_secs(5);
/// The seed of the objects nginx serves (the real-traffic tests' seed).
const OBJECTS_SEED: u64 = 0x0068_616e_646f_6666;

/// The shape of a lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    /// Flow-distributor nodes (fd-a, fd-b, ...), 1 to [`MAX_NODES`].
    pub nodes: usize,
    /// Service nodes (svc-1, ...), 1 to [`MAX_SERVICES`].
    pub services: usize,
    /// Workers (AF_XDP sockets, one per veth queue) per node, 1 to [`MAX_WORKERS`].
    pub workers: u32,
    /// Whether the services also run the real programs of
    /// [`Cluster::start_real_services`] (nginx on port 80, a `socat` UDP
    /// echo, `iperf3` on svc-1) beside handoff-bench's UDP echo and TCP server.
    pub real_servers: bool,
}

impl Default for LabSpec {
    fn default() -> Self {
        Self {
            nodes: 3,
            services: 3,
            workers: 1,
            real_servers: true,
        }
    }
}

impl LabSpec {
    /// Fails, saying which and why, unless every count is in its range.
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_NODES).contains(&self.nodes) {
            bail!(
                "--nodes {}: a lab has 1 to {MAX_NODES} nodes (their fabric addresses are 10.77.1.11 to .20)",
                self.nodes
            );
        }
        if !(1..=MAX_SERVICES).contains(&self.services) {
            bail!(
                "--services {}: a lab has 1 to {MAX_SERVICES} services (10.77.1.21 to .30)",
                self.services
            );
        }
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            bail!("--workers {}: a node has 1 to {MAX_WORKERS} workers", self.workers);
        }
        Ok(())
    }
}

/// A namespace of a lab and how to reach what is in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    /// `client`, `edge`, `fabric`, `fd-a`, `svc-1`, ...
    pub role: String,
    /// The namespace's name (`ip netns exec <name> ...`).
    pub name: String,
    /// Its interface on the lab's networks (the edge's: client side, then fabric side).
    pub interfaces: Vec<String>,
    /// Its addresses.
    pub addresses: Vec<String>,
    /// Its daemon's admin socket (the edge's, a node's).
    pub admin_socket: Option<PathBuf>,
}

/// A port served on the VIPs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The port, on both VIPs.
    pub port: u16,
    /// What answers it.
    pub served_by: String,
}

/// A process the lab started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    /// `edge`, `fd-a`, `svc-1-nginx`, ...
    pub name: String,
    /// Its pid (in the root namespace's pid space).
    pub pid: u32,
}

/// What a running lab is: `<state dir>/<prefix>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabState {
    /// The per-run prefix every name of the lab carries.
    pub prefix: String,
    /// Its shape.
    pub spec: LabSpec,
    /// The process that holds the lab; the lab ends with it.
    pub supervisor_pid: u32,
    /// The process that removes the lab when the supervisor ends.
    pub reaper_pid: u32,
    /// This file.
    pub state_file: PathBuf,
    /// Logs, configurations and keys.
    pub log_dir: PathBuf,
    /// The IPv4 VIP.
    pub vip: Ipv4Addr,
    /// The IPv6 VIP.
    pub vip6: Ipv6Addr,
    /// What the VIPs serve.
    pub ports: Vec<ServicePort>,
    /// The edge's admin socket (`handoff status --admin ...`).
    pub edge_admin_socket: PathBuf,
    /// Every namespace: client, edge, fabric, the nodes, the services.
    pub namespaces: Vec<NamespaceInfo>,
    /// Every process the supervisor started.
    pub processes: Vec<ProcessInfo>,
}

/// `1 worker`, `2 workers`.
fn workers(n: u32) -> String {
    format!("{n} worker{}", if n == 1 { "" } else { "s" })
}

/// The VIPs' ports for `spec`.
fn service_ports(spec: &LabSpec) -> Vec<ServicePort> {
    let port = |protocol: &str, port: u16, served_by: &str| ServicePort {
        protocol: protocol.into(),
        port,
        served_by: served_by.into(),
    };
    let mut ports = vec![
        port("udp", UDP_PORT, "UDP echo (handoff-bench udp-echo), every service"),
        port(
            "tcp",
            TCP_PORT,
            "request/response (handoff-bench tcp-server), every service",
        ),
    ];
    if spec.real_servers {
        ports.extend([
            port("tcp", HTTP_PORT, "HTTP (nginx; /object-<size>.bin), every service"),
            port("udp", SOCAT_UDP_PORT, "UDP echo (socat), every service"),
            port("tcp", IPERF_PORT, "iperf3 -s, svc-1 only"),
        ]);
    }
    ports
}

/// The reaper of a lab: a process of its own session that waits for EOF on
/// a pipe whose only write end this process holds, then removes every
/// trace of the lab ([`remove_lab`]). EOF comes when this process closes
/// the pipe (a normal teardown) or the kernel does, because it ended
/// (even by SIGKILL).
#[derive(Debug)]
struct Reaper {
    child: Child,
    /// Dropping it sends the reaper its EOF.
    pipe: Option<std::io::PipeWriter>,
}

impl Reaper {
    /// Starts `handoff-lab reap` for `prefix`.
    fn spawn(prefix: &RunPrefix, state_file: Option<&Path>) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        let program = crate::binaries::binary("handoff-lab")?;
        // Both ends are close-on-exec: no other child inherits the write end.
        let (reader, writer) = std::io::pipe().context("creating the reaper's pipe")?;
        let mut cmd = Command::new(program);
        cmd.args(["reap", "--prefix", prefix.as_str()]);
        if let Some(file) = state_file {
            cmd.arg("--state-file").arg(file);
        }
        cmd.stdin(reader).stdout(Stdio::null()).stderr(Stdio::null());
        // SAFETY: setsid(2) is async-signal-safe and allocates nothing; a
        // session of its own keeps the reaper out of reach of the
        // terminal's Ctrl-C and hangup.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting the lab's reaper (handoff-lab reap)")?;
        Ok(Self {
            child,
            pipe: Some(writer),
        })
    }

    /// Sends the EOF and waits up to `timeout` for the reaper to end.
    fn release(&mut self, timeout: Duration) {
        self.pipe = None;
        let _ = wait_until(timeout, || matches!(self.child.try_wait(), Ok(Some(_))));
    }
}

/// What a removal removed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Removed {
    /// Namespaces deleted (their veths and bridge went with them).
    pub namespaces: Vec<String>,
    /// Processes ended.
    pub processes: Vec<ProcessInfo>,
    /// Files and directories deleted.
    pub files: Vec<PathBuf>,
}

impl Removed {
    /// Adds what `other` removed.
    pub fn merge(&mut self, other: Removed) {
        for ns in other.namespaces {
            if !self.namespaces.contains(&ns) {
                self.namespaces.push(ns);
            }
        }
        for p in other.processes {
            if !self.processes.iter().any(|q| q.pid == p.pid) {
                self.processes.push(p);
            }
        }
        for f in other.files {
            if !self.files.contains(&f) {
                self.files.push(f);
            }
        }
    }

    /// One line per kind, for a person.
    pub fn describe(&self) -> String {
        let processes: Vec<String> = self
            .processes
            .iter()
            .map(|p| format!("{} ({})", p.name, p.pid))
            .collect();
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        format!(
            "  {} namespaces (with their veths and bridge): {}\n  {} processes: {}\n  {} files: {}",
            self.namespaces.len(),
            self.namespaces.join(" "),
            processes.len(),
            processes.join(" "),
            files.len(),
            files.join(" ")
        )
    }
}

/// Whether `prefix` is one [`RunPrefix`] makes: a short run of lowercase
/// letters and digits, never something that matches other runs' names.
pub fn valid_prefix(prefix: &str) -> bool {
    (3..=10).contains(&prefix.len()) && prefix.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// The namespaces named `handoff-<prefix>-*` that exist now.
pub fn namespaces_of(prefix: &str) -> Result<Vec<String>> {
    let out = ip(&["netns", "list"])?;
    let head = format!("handoff-{prefix}-");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&head))
        .map(str::to_string)
        .collect())
}

/// The processes that run inside `namespace` (`ip netns pids`), with
/// their command names.
fn processes_in(namespace: &str) -> Vec<ProcessInfo> {
    let Ok(out) = ip(&["netns", "pids", namespace]) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .map(|pid| ProcessInfo {
            name: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default(),
            pid,
        })
        .collect()
}

/// Removes every trace of the lab `prefix`: SIGKILL to every process in
/// its namespaces (all of them started by the lab), then the namespaces
/// (their veths and bridge go with them), its log directory and
/// `state_file`. Idempotent: what is already gone is skipped.
pub fn remove_lab(prefix: &str, state_file: Option<&Path>) -> Result<Removed> {
    if !valid_prefix(prefix) {
        bail!("{prefix:?} is not a lab's prefix (3 to 10 lowercase letters and digits)");
    }
    let mut removed = Removed::default();
    let namespaces = namespaces_of(prefix)?;
    for ns in &namespaces {
        for p in processes_in(ns) {
            // SAFETY: kill(2) on a pid that runs inside one of this lab's
            // namespaces, which only the lab's processes enter.
            unsafe { libc::kill(p.pid as libc::pid_t, libc::SIGKILL) };
            removed.processes.push(p);
        }
    }
    if !wait_until(KILL_TIMEOUT, || removed.processes.iter().all(|p| !alive(p.pid))) {
        let left: Vec<u32> = removed
            .processes
            .iter()
            .filter(|p| alive(p.pid))
            .map(|p| p.pid)
            .collect();
        bail!("processes {left:?} of lab {prefix} did not end on SIGKILL");
    }
    for ns in namespaces {
        if let Err(e) = ip(&["netns", "del", &ns]) {
            // Someone else (the reaper, `down`) may have deleted it meanwhile.
            if namespaces_of(prefix)?.contains(&ns) {
                return Err(e);
            }
            continue;
        }
        removed.namespaces.push(ns);
    }
    sweep_stale_bpffs();
    let log_dir = log_dir_of(&RunPrefix::from_existing(prefix));
    if log_dir.exists() {
        std::fs::remove_dir_all(&log_dir).with_context(|| format!("removing {}", log_dir.display()))?;
        removed.files.push(log_dir);
    }
    if let Some(file) = state_file.filter(|f| f.exists()) {
        std::fs::remove_file(file).with_context(|| format!("removing {}", file.display()))?;
        removed.files.push(file.to_path_buf());
    }
    Ok(removed)
}

/// `handoff-lab reap`: waits for EOF on stdin (the supervisor's pipe),
/// then [`remove_lab`].
pub fn reap(prefix: &str, state_file: Option<&Path>) -> Result<Removed> {
    let mut sink = [0u8; 64];
    let mut stdin = std::io::stdin().lock();
    // Nothing is ever written: a read returns at EOF (0) or on an error,
    // and either means the supervisor's end is closed.
    while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
    remove_lab(prefix, state_file)
}

/// A running lab, held by this process: dropping it takes it down.
#[derive(Debug)]
pub struct Lab {
    cluster: Option<Cluster>,
    reaper: Reaper,
    prefix: RunPrefix,
    spec: LabSpec,
    state_file: Option<PathBuf>,
}

impl Lab {
    /// Creates the lab of `spec` and waits until it is ready: every
    /// service listens, every node is ACTIVE in the edge's scope. A reaper
    /// starts first, so the lab goes even if this process is killed from
    /// here on. `state_dir`: where [`Self::write_state`] will write.
    /// `step` hears what is being done, one line at a time; an error it
    /// returns (no one listens any more) stops the start and removes the lab.
    pub fn start(spec: &LabSpec, state_dir: Option<&Path>, step: &mut dyn FnMut(&str) -> Result<()>) -> Result<Self> {
        spec.validate()?;
        let prefix = RunPrefix::new();
        let state_file = state_dir.map(|d| d.join(format!("{prefix}.json")));
        let reaper = Reaper::spawn(&prefix, state_file.as_deref())?;
        let mut lab = Self {
            cluster: None,
            reaper,
            prefix: prefix.clone(),
            spec: spec.clone(),
            state_file,
        };
        step(&format!(
            "creating namespaces handoff-{prefix}-*: client, edge, fabric, {} nodes, {} services",
            spec.nodes, spec.services
        ))?;
        let mut cluster = Cluster::create_with_prefix(
            &ClusterSpec {
                nodes: spec.nodes,
                services: spec.services,
                queues: 1,
                node_queues: spec.workers,
            },
            prefix,
        )?;
        cluster.kill_processes_with_this_one();
        let cluster = lab.cluster.insert(cluster);
        step("starting the edge (XDP sprayer, migration manager)")?;
        let edge = cluster.edge_config(true);
        cluster.start_edge(&edge)?;
        step("starting the services")?;
        cluster.start_services()?;
        if spec.real_servers {
            let objects = HttpObjects::generate(&cluster.log_dir.join("www"), OBJECTS_SEED)?;
            cluster.start_real_services(&objects)?;
        }
        step(&format!(
            "starting {} nodes (AF_XDP, {} each)",
            spec.nodes,
            workers(spec.workers)
        ))?;
        cluster.start_nodes(spec.workers)?;
        step("waiting until every node is ACTIVE in the edge's scope")?;
        let socket = cluster.admin_socket();
        let mut last = serde_json::Value::Null;
        if !wait_until(READY_TIMEOUT, || {
            last = edge_members(&socket).unwrap_or_default();
            members_ready(&last, spec.nodes)
        }) {
            bail!("the nodes did not all become ACTIVE in the scope: {last}");
        }
        Ok(lab)
    }

    /// The running cluster.
    pub fn cluster(&mut self) -> &mut Cluster {
        self.cluster
            .as_mut()
            .expect("a started lab holds its cluster until dropped")
    }

    /// The lab's prefix.
    pub fn prefix(&self) -> &RunPrefix {
        &self.prefix
    }

    /// What the lab is, as the state file has it.
    pub fn state(&self) -> Result<LabState> {
        let cluster = self.cluster.as_ref().context("the lab is down")?;
        let host = |role: &str, ns: &crate::Netns, ifs: Vec<String>, addrs: Vec<String>, sock: Option<PathBuf>| {
            NamespaceInfo {
                role: role.into(),
                name: ns.name().into(),
                interfaces: ifs,
                addresses: addrs,
                admin_socket: sock,
            }
        };
        let mut namespaces = vec![
            host(
                "client",
                &cluster.client,
                vec![cluster.client_port.ifname.clone()],
                vec![CLIENT_IP.to_string(), CLIENT_IP6.to_string()],
                None,
            ),
            host(
                "edge",
                &cluster.edge,
                vec![
                    cluster.edge_client_port.ifname.clone(),
                    cluster.edge_fabric_port.ifname.clone(),
                ],
                vec![
                    cluster.edge_client_port.ip.to_string(),
                    cluster.edge_fabric_port.ip.to_string(),
                    cluster.edge_client_port.ip6.to_string(),
                    cluster.edge_fabric_port.ip6.to_string(),
                ],
                Some(cluster.admin_socket()),
            ),
            host(
                "fabric",
                &cluster.fabric,
                vec![cluster.prefix.ifname("br")],
                Vec::new(),
                None,
            ),
        ];
        for (i, node) in cluster.nodes.iter().enumerate() {
            namespaces.push(host(
                &node.name,
                &node.ns,
                vec![node.port.ifname.clone()],
                vec![node.port.ip.to_string(), node.port.ip6.to_string()],
                Some(cluster.node_admin_socket(i)),
            ));
        }
        for svc in &cluster.services {
            namespaces.push(host(
                &svc.name,
                &svc.ns,
                vec![svc.port.ifname.clone()],
                vec![svc.port.ip.to_string(), svc.port.ip6.to_string()],
                None,
            ));
        }
        Ok(LabState {
            prefix: self.prefix.to_string(),
            spec: self.spec.clone(),
            supervisor_pid: std::process::id(),
            reaper_pid: self.reaper.child.id(),
            state_file: self.state_file.clone().unwrap_or_default(),
            log_dir: cluster.log_dir.clone(),
            vip: VIP,
            vip6: VIP6,
            ports: service_ports(&self.spec),
            edge_admin_socket: cluster.admin_socket(),
            namespaces,
            processes: cluster
                .process_pids()
                .into_iter()
                .map(|(name, pid)| ProcessInfo { name, pid })
                .collect(),
        })
    }

    /// Writes the state file (atomically: a temporary file renamed) and
    /// returns its path.
    pub fn write_state(&self) -> Result<PathBuf> {
        let file = self.state_file.clone().context("this lab has no state directory")?;
        let state = self.state()?;
        let temporary = file.with_extension("json.tmp");
        std::fs::write(&temporary, serde_json::to_string_pretty(&state)?)
            .with_context(|| format!("writing {}", temporary.display()))?;
        std::fs::rename(&temporary, &file).with_context(|| format!("writing {}", file.display()))?;
        Ok(file)
    }

    /// Takes the lab down: its processes stopped (SIGTERM, then SIGKILL),
    /// whatever else runs in its namespaces killed, the namespaces, log
    /// directory and state file removed, and the reaper released (it
    /// finds nothing left). Returns what was removed.
    pub fn down(mut self) -> Result<Removed> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<Removed> {
        let mut removed = Removed::default();
        if let Some(mut cluster) = self.cluster.take() {
            removed.processes = cluster
                .process_pids()
                .into_iter()
                .map(|(name, pid)| ProcessInfo { name, pid })
                .collect();
            cluster.stop_processes();
            drop(cluster);
        }
        let rest = remove_lab(self.prefix.as_str(), self.state_file.as_deref());
        self.reaper.release(KILL_TIMEOUT * 2);
        removed.merge(rest?);
        Ok(removed)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.cluster.is_some() || self.reaper.pipe.is_some() {
            if let Err(e) = self.teardown() {
                eprintln!("warning: taking lab {} down: {e:#}", self.prefix);
            }
        }
    }
}

/// The edge's `status` answer.
pub fn edge_members(socket: &Path) -> Result<serde_json::Value> {
    match admin::call(socket, &AdminRequest::Status, Duration::from_secs(2))? {
        AdminResponse::Status(status) => Ok(status["members"].clone()),
        other => bail!("the edge answered status with {other:?}"),
    }
}

/// Whether `members` (the edge's status) has `nodes` members, each
/// registered, ACTIVE and in the scope.
pub fn members_ready(members: &serde_json::Value, nodes: usize) -> bool {
    members.as_array().is_some_and(|m| {
        m.len() == nodes
            && m.iter()
                .all(|m| m["status"] == "Active" && m["in_scope"] == true && m["registered"] == true)
    })
}

/// The state files in `dir`, parsed (an unreadable one is an error that names it).
pub fn load_states(dir: &Path) -> Vec<(PathBuf, Result<LabState>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut states: Vec<(PathBuf, Result<LabState>)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let state = std::fs::read_to_string(&p)
                .with_context(|| format!("reading {}", p.display()))
                .and_then(|t| serde_json::from_str(&t).with_context(|| format!("parsing {}", p.display())));
            (p, state)
        })
        .collect();
    states.sort_by(|a, b| a.0.cmp(&b.0));
    states
}

/// Whether `pid` is a running `handoff-lab` (a supervisor whose pid was
/// not taken by another program since).
pub fn is_lab_process(pid: u32) -> bool {
    alive(pid)
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("handoff-lab"))
}

/// How to reach the lab, for a person: its namespaces, VIPs and ports,
/// admin sockets, and commands to copy.
pub fn describe(state: &LabState) -> String {
    use handoff::render::{table, Align};
    let ns = |role: &str| {
        state
            .namespaces
            .iter()
            .find(|n| n.role == role)
            .map_or_else(String::new, |n| n.name.clone())
    };
    let rows: Vec<Vec<String>> = state
        .namespaces
        .iter()
        .map(|n| {
            vec![
                n.role.clone(),
                n.name.clone(),
                n.interfaces.join(" "),
                n.addresses.join(" "),
                n.admin_socket
                    .as_ref()
                    .map_or_else(String::new, |s| s.display().to_string()),
            ]
        })
        .collect();
    let namespaces = table(
        &["role", "namespace", "interfaces", "addresses", "admin socket"],
        &rows,
        &[Align::Left],
    );
    let ports: Vec<Vec<String>> = state
        .ports
        .iter()
        .map(|p| vec![p.protocol.clone(), p.port.to_string(), p.served_by.clone()])
        .collect();
    let ports = table(&["proto", "port", "served by"], &ports, &[Align::Left, Align::Right]);
    let client = ns("client");
    let first_node = node_name(0);
    // Where a capture sees a packet both ways: the client's interface and a
    // service's. XDP on the edge and on the nodes takes frames before
    // tcpdump's hook, so captures there miss what the dataplane forwards.
    let client_if = state
        .namespaces
        .iter()
        .find(|n| n.role == "client")
        .and_then(|n| n.interfaces.first().cloned())
        .unwrap_or_default();
    let svc = state.namespaces.iter().find(|n| n.role == "svc-1");
    let node_sock = state
        .namespaces
        .iter()
        .find(|n| n.role == first_node)
        .and_then(|n| n.admin_socket.clone())
        .unwrap_or_default();
    let edge_sock = state.edge_admin_socket.display();
    // Full paths: the binaries are seldom on the PATH, and never on `ip netns exec`'s.
    let bin = |name: &str| crate::binaries::binary(name).map_or_else(|_| name.to_string(), |p| p.display().to_string());
    let (handoff, bench) = (bin("handoff"), bin("handoff-bench"));
    let mut examples = vec![
        format!("ip netns exec {client} ping -c 3 {}", state.vip),
        format!("ip netns exec {client} ping -6 -c 3 {}", state.vip6),
    ];
    if state.spec.real_servers {
        examples.push(format!(
            "ip netns exec {client} curl -sS -o /dev/null -w '%{{http_code}} %{{size_download}}\\n' http://{}/{}",
            state.vip,
            HttpObjects::name(27_000)
        ));
        examples.push(format!(
            "ip netns exec {client} curl -sS -o /dev/null -w '%{{http_code}}\\n' 'http://[{}]/{}'",
            state.vip6,
            HttpObjects::name(1_400)
        ));
    }
    examples.push(format!(
        "ip netns exec {client} {bench} tcp-client --connect {}:{TCP_PORT} --connections 10 --requests-per-connection 0 --duration 30 --json /tmp/tcp.json",
        state.vip
    ));
    examples.push(format!("ip netns exec {client} tcpdump -ni {client_if} -c 20 not arp"));
    if let Some(svc) = svc {
        let ifname = svc.interfaces.first().cloned().unwrap_or_default();
        examples.push(format!("ip netns exec {} tcpdump -ni {ifname} -c 20 not arp", svc.name));
    }
    examples.extend([
        format!("{handoff} status --admin {edge_sock}"),
        format!("{handoff} stats --admin {}", node_sock.display()),
        format!("{handoff} disengage {first_node} --admin {edge_sock}"),
        format!("{handoff} engage {first_node} --admin {edge_sock}"),
    ]);
    // Where the state file is, when it is not where `lab` looks by default.
    let place = match state.state_file.parent() {
        Some(dir) if dir != Path::new(DEFAULT_STATE_DIR) => format!(" --state-dir {}", dir.display()),
        _ => String::new(),
    };
    examples.extend([
        format!("{handoff} lab status{place}"),
        format!("{handoff} lab down --prefix {}{place}", state.prefix),
    ]);
    format!(
        "lab {prefix} is up: client, edge, {nodes} nodes ({workers} each), {services} services; supervisor pid {sup}, reaper pid {reaper}\nlogs, configurations and keys: {logs}\nstate: {file}\n\n{namespaces}\n\nVIPs {vip} and {vip6}:\n{ports}\n\ntry:\n{examples}",
        prefix = state.prefix,
        nodes = state.spec.nodes,
        workers = workers(state.spec.workers),
        services = state.spec.services,
        sup = state.supervisor_pid,
        reaper = state.reaper_pid,
        logs = state.log_dir.display(),
        file = state.state_file.display(),
        vip = state.vip,
        vip6 = state.vip6,
        examples = examples.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"),
    )
}

/// A lab's processes and members, as `lab status` shows them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabStatus {
    /// The state file's content.
    pub lab: LabState,
    /// Whether the supervisor runs.
    pub supervisor_alive: bool,
    /// Whether the reaper runs.
    pub reaper_alive: bool,
    /// Every process of the lab and whether it runs.
    pub processes: Vec<ProcessStatus>,
    /// The edge's members (its `status`), when the edge answered.
    pub members: Option<serde_json::Value>,
    /// Why the edge did not answer.
    pub members_error: Option<String>,
}

/// A process of a lab and whether it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStatus {
    /// Its name.
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Whether it runs (a zombie does not).
    pub alive: bool,
}

/// The status of the lab described by `state`.
pub fn status_of(state: LabState) -> LabStatus {
    let (members, members_error) = match edge_members(&state.edge_admin_socket) {
        Ok(m) => (Some(m), None),
        Err(e) => (None, Some(format!("{e:#}"))),
    };
    LabStatus {
        supervisor_alive: is_lab_process(state.supervisor_pid),
        reaper_alive: is_lab_process(state.reaper_pid),
        processes: state
            .processes
            .iter()
            .map(|p| ProcessStatus {
                name: p.name.clone(),
                pid: p.pid,
                alive: alive(p.pid),
            })
            .collect(),
        members,
        members_error,
        lab: state,
    }
}

/// `lab status` for a person: per lab, a summary line, its members and
/// any process that is not running.
pub fn describe_status(status: &LabStatus) -> String {
    use handoff::render::{cell, table, Align};
    let up = status.processes.iter().filter(|p| p.alive).count();
    let yes_no = |b: bool| if b { "alive" } else { "DEAD" };
    let mut text = format!(
        "lab {}: {} nodes, {} services; supervisor {} ({}), reaper {} ({}); processes {up} of {} running\n  edge admin socket {}",
        status.lab.prefix,
        status.lab.spec.nodes,
        status.lab.spec.services,
        status.lab.supervisor_pid,
        yes_no(status.supervisor_alive),
        status.lab.reaper_pid,
        yes_no(status.reaper_alive),
        status.processes.len(),
        status.lab.edge_admin_socket.display()
    );
    for p in status.processes.iter().filter(|p| !p.alive) {
        text.push_str(&format!("\n  {} (pid {}) is not running", p.name, p.pid));
    }
    match (&status.members, &status.members_error) {
        (Some(members), _) => {
            let rows: Vec<Vec<String>> = members
                .as_array()
                .map(|m| {
                    m.iter()
                        .map(|m| {
                            ["name", "status", "in_scope", "buckets", "flows", "scope_version"]
                                .iter()
                                .map(|k| cell(&m[*k]))
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            let t = table(
                &["member", "status", "in scope", "buckets", "flows", "scope version"],
                &rows,
                &[
                    Align::Left,
                    Align::Left,
                    Align::Left,
                    Align::Right,
                    Align::Right,
                    Align::Right,
                ],
            );
            text.push_str(&format!("\n\n{t}"));
        }
        (None, Some(e)) => text.push_str(&format!("\n  the edge did not answer: {e}")),
        (None, None) => {}
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_out_of_range_are_refused_with_the_flag_named() {
        assert!(LabSpec::default().validate().is_ok());
        let e = LabSpec {
            nodes: 0,
            ..LabSpec::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().starts_with("--nodes 0"), "{e}");
        let e = LabSpec {
            nodes: MAX_NODES + 1,
            ..LabSpec::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("--nodes 11"), "{e}");
        assert!(LabSpec {
            services: 0,
            ..LabSpec::default()
        }
        .validate()
        .is_err());
        assert!(LabSpec {
            workers: MAX_WORKERS + 1,
            ..LabSpec::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn only_run_prefixes_are_prefixes() {
        assert!(valid_prefix(RunPrefix::new().as_str()));
        for bad in ["", "h", "h1-x", "H12345", "h12345/..", "abcdefghijkl"] {
            assert!(!valid_prefix(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_description_names_namespaces_vips_sockets_and_commands_to_copy() {
        let ns = |role: &str, ifname: &str, sock: Option<&str>| NamespaceInfo {
            role: role.into(),
            name: format!("handoff-habcde0-{role}"),
            interfaces: vec![ifname.into()],
            addresses: vec!["10.77.0.2".into()],
            admin_socket: sock.map(PathBuf::from),
        };
        let state = LabState {
            prefix: "habcde0".into(),
            spec: LabSpec::default(),
            supervisor_pid: 10,
            reaper_pid: 11,
            state_file: PathBuf::from("/tmp/labs/habcde0.json"),
            log_dir: PathBuf::from("/tmp/handoff-habcde0"),
            vip: VIP,
            vip6: VIP6,
            ports: service_ports(&LabSpec::default()),
            edge_admin_socket: PathBuf::from("/tmp/handoff-habcde0/edge.sock"),
            namespaces: vec![
                ns("client", "habcde0c0", None),
                ns("edge", "habcde0e0", Some("/tmp/handoff-habcde0/edge.sock")),
                ns("fd-a", "habcde0n0", Some("/tmp/handoff-habcde0/fd-a.sock")),
                ns("svc-1", "habcde0s0", None),
            ],
            processes: Vec::new(),
        };
        let text = describe(&state);
        for want in [
            "ip netns exec handoff-habcde0-client ping -c 3 10.77.9.1",
            "ip netns exec handoff-habcde0-client ping -6 -c 3 fd77:9::1",
            "curl -sS -o /dev/null -w '%{http_code} %{size_download}\\n' http://10.77.9.1/object-27000.bin",
            "ip netns exec handoff-habcde0-client tcpdump -ni habcde0c0 -c 20 not arp",
            "--requests-per-connection 0 --duration 30",
            "ip netns exec handoff-habcde0-svc-1 tcpdump -ni habcde0s0",
            "status --admin /tmp/handoff-habcde0/edge.sock",
            "stats --admin /tmp/handoff-habcde0/fd-a.sock",
            "lab down --prefix habcde0 --state-dir /tmp/labs",
            "VIPs 10.77.9.1 and fd77:9::1",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        let http = text
            .lines()
            .find(|l| l.starts_with("tcp") && l.contains(" 80 "))
            .unwrap_or_default();
        assert!(http.contains("nginx"), "{text}");
    }

    #[test]
    fn members_are_ready_only_when_all_are_active_registered_and_in_scope() {
        let member = |status: &str, in_scope: bool| serde_json::json!({"name": "fd-a", "status": status, "in_scope": in_scope, "registered": true});
        let ready = serde_json::json!([member("Active", true), member("Active", true)]);
        assert!(members_ready(&ready, 2));
        assert!(!members_ready(&ready, 3));
        assert!(!members_ready(
            &serde_json::json!([member("Active", true), member("Joining", false)]),
            2
        ));
        assert!(!members_ready(
            &serde_json::json!([member("Active", true), member("Active", false)]),
            2
        ));
        assert!(!members_ready(&serde_json::Value::Null, 2));
    }
}
