//! The standard test bed of the design note: a client, an edge, flow
//! distributor nodes and service nodes, all in namespaces of this run.
//!
//! ```text
//!  client ──veth── edge ──veth── [bridge in `fabric`] ──veth── fd-a, fd-b, fd-c
//!  10.77.0.2    .0.1  1.1                                ├──veth── svc-1, svc-2, svc-3
//! ```
//! The edge routes between the client network (10.77.0.0/24, fd77::/64) and
//! the fabric (10.77.1.0/24, fd77:1::/64). Services answer through the edge
//! (their default routes), so replies are sprayed like requests. The VIPs
//! 10.77.9.1 and fd77:9::1 are routed to the edge.
//!
//! Links are set up as an operator would: the client, the edge and the
//! services have the usual 1,500-byte IP MTU; the nodes' links (and their
//! bridge ports) carry [`FABRIC_MTU`], room for the fabric header that a node
//! puts in front of a full-size packet it forwards to another node.

use crate::{
    netns::{sweep_stale, sweep_stale_bpffs, veth, BpfFs, Netns, RunPrefix, VethEnd},
    process::Spawned,
};
use anyhow::{Context, Result};
use handoff::control::keys::Party;
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

/// The client network.
pub const CLIENT_NET: &str = "10.77.0.0/24";
/// The fabric network.
pub const FABRIC_NET: &str = "10.77.1.0/24";
/// The service VIP.
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 1);
/// The client's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// The edge's client-side address.
pub const EDGE_CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
/// The edge's fabric-side address.
pub const EDGE_FABRIC_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 1, 1);
/// The migration manager's control port on the edge.
pub const MANAGER_PORT: u16 = 7600;

/// The client network, IPv6.
pub const CLIENT_NET6: &str = "fd77::/64";
/// The fabric network, IPv6.
pub const FABRIC_NET6: &str = "fd77:1::/64";
/// The network of the IPv6 VIPs.
pub const VIP_NET6: &str = "fd77:9::/64";
/// The service VIP, IPv6.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 9, 0, 0, 0, 0, 0, 1);
/// The client's IPv6 address.
pub const CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);
/// The edge's client-side IPv6 address.
pub const EDGE_CLIENT_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
/// The edge's fabric-side IPv6 address.
pub const EDGE_FABRIC_IP6: Ipv6Addr = Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 1);

/// The IP MTU of every host on the test bed (Ethernet's).
pub const IP_MTU: u32 = 1500;
/// The MTU of the nodes' links: a node that forwards a packet to the node
/// owning its connection puts a [`handoff_common::fabric::FabricHeader`]
/// between the Ethernet header and the packet, so a full-size packet from
/// the client or a service (IP MTU bytes) needs that much more room on the
/// node-to-node path. `handoff node` refuses an interface with less.
pub const FABRIC_MTU: u32 = IP_MTU + core::mem::size_of::<handoff_common::fabric::FabricHeader>() as u32;

/// Shape of the test bed.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Flow-distributor nodes (fd-a, fd-b, ...).
    pub nodes: usize,
    /// Service nodes (svc-1, ...).
    pub services: usize,
    /// RX/TX queues on every veth but the nodes'.
    pub queues: u32,
    /// RX/TX queues on the nodes' veths (a node runs one worker per queue).
    pub node_queues: u32,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self {
            nodes: 3,
            services: 3,
            queues: 1,
            node_queues: 1,
        }
    }
}

/// A host's interface on the test bed.
#[derive(Clone, Debug)]
pub struct Port {
    /// Interface name inside its namespace.
    pub ifname: String,
    /// MAC address.
    pub mac: [u8; 6],
    /// IPv4 address.
    pub ip: Ipv4Addr,
    /// IPv6 address.
    pub ip6: Ipv6Addr,
}

impl Port {
    /// Its address of `family` (4 or 6).
    pub fn addr(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.ip.into(),
            Family::V6 => self.ip6.into(),
        }
    }
}

/// An IP version on the test bed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both, IPv4 first.
    pub const BOTH: [Family; 2] = [Family::V4, Family::V6];

    /// The VIP of this family.
    pub fn vip(self) -> IpAddr {
        match self {
            Self::V4 => VIP.into(),
            Self::V6 => VIP6.into(),
        }
    }

    /// `ipv4` or `ipv6`, for messages and file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::V4 => "ipv4",
            Self::V6 => "ipv6",
        }
    }

    /// The IP and transport header bytes of a UDP datagram: what the MTU
    /// leaves of itself for the payload is `IP_MTU - udp_overhead()`.
    pub fn udp_overhead(self) -> u32 {
        match self {
            Self::V4 => 20 + 8,
            Self::V6 => 40 + 8,
        }
    }
}

/// `address:port`, bracketed for IPv6 (`[fd77:9::1]:80`).
pub fn socket_string(address: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(address, port).to_string()
}

/// An address as it goes in a URL's host (`10.77.9.1`, `[fd77:9::1]`).
pub fn url_host(address: IpAddr) -> String {
    match address {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => format!("[{a}]"),
    }
}

/// A namespace with one interface on the fabric.
#[derive(Debug)]
pub struct Host {
    /// Role name: `fd-a`, `svc-1`, ...
    pub name: String,
    /// Its interface.
    pub port: Port,
    /// Its namespace.
    pub ns: Netns,
}

/// The running test bed. Processes stop before namespaces are deleted
/// (fields drop in declaration order).
#[derive(Debug)]
pub struct Cluster {
    processes: Vec<Spawned>,
    /// Whether processes started from now on get SIGKILL when this
    /// process ends ([`Self::kill_processes_with_this_one`]).
    die_with_parent: bool,
    /// This run's bpffs, when the edge pins its sprayer ([`Self::mount_bpffs`]):
    /// unmounted once the processes are gone, which drops every pin.
    bpffs: Option<BpfFs>,
    /// Per-run name prefix.
    pub prefix: RunPrefix,
    /// Where process logs go.
    pub log_dir: PathBuf,
    /// The client's interface.
    pub client_port: Port,
    /// The edge's client-side interface.
    pub edge_client_port: Port,
    /// The edge's fabric-side interface.
    pub edge_fabric_port: Port,
    /// Flow-distributor nodes.
    pub nodes: Vec<Host>,
    /// Service nodes.
    pub services: Vec<Host>,
    /// The client namespace.
    pub client: Netns,
    /// The edge namespace.
    pub edge: Netns,
    /// The namespace holding the fabric bridge.
    pub fabric: Netns,
}

fn mac(kind: u8, index: u8) -> [u8; 6] {
    [0x02, 0x68, 0x6f, 0x00, kind, index]
}

/// The directory of a run's logs, configurations and keys.
pub fn log_dir_of(prefix: &RunPrefix) -> PathBuf {
    std::env::temp_dir().join(format!("handoff-{prefix}"))
}

/// The role name of the bridge end of node `i`'s veth (before the run prefix).
fn node_bridge_role(i: usize) -> String {
    format!("pn{i}")
}

/// The name of the i-th node: fd-a, fd-b, ...
pub fn node_name(i: usize) -> String {
    format!("fd-{}", (b'a' + i as u8) as char)
}

impl Cluster {
    /// Creates every namespace, link, address and route of `spec`.
    pub fn create(spec: &ClusterSpec) -> Result<Self> {
        Self::create_with_prefix(spec, RunPrefix::new())
    }

    /// [`Self::create`] under a prefix the caller made (with
    /// [`RunPrefix::new`], in this process): one that something else, such
    /// as a reaper of the lab, already knows before the first namespace exists.
    pub fn create_with_prefix(spec: &ClusterSpec, prefix: RunPrefix) -> Result<Self> {
        sweep_stale();
        sweep_stale_bpffs();
        let log_dir = log_dir_of(&prefix);
        std::fs::create_dir_all(&log_dir)?;
        create_keys(&log_dir.join(KEYS_DIR), spec.nodes)?;
        let client = Netns::create(&prefix, "client")?;
        let edge = Netns::create(&prefix, "edge")?;
        let fabric = Netns::create(&prefix, "fabric")?;
        let bridge = prefix.ifname("br");
        fabric.ip(&["link", "add", &bridge, "type", "bridge"])?;
        fabric.ip(&["link", "set", &bridge, "up"])?;
        let q = spec.queues;

        let client_port = Port {
            ifname: prefix.ifname("c0"),
            mac: mac(1, 2),
            ip: CLIENT_IP,
            ip6: CLIENT_IP6,
        };
        let edge_client_port = Port {
            ifname: prefix.ifname("e0"),
            mac: mac(1, 1),
            ip: EDGE_CLIENT_IP,
            ip6: EDGE_CLIENT_IP6,
        };
        veth(
            &VethEnd {
                ns: &client,
                name: client_port.ifname.clone(),
                mac: Some(client_port.mac),
            },
            &VethEnd {
                ns: &edge,
                name: edge_client_port.ifname.clone(),
                mac: Some(edge_client_port.mac),
            },
            q,
        )?;
        let edge_fabric_port = Port {
            ifname: prefix.ifname("e1"),
            mac: mac(2, 1),
            ip: EDGE_FABRIC_IP,
            ip6: EDGE_FABRIC_IP6,
        };
        attach_to_bridge(
            &prefix,
            &fabric,
            &bridge,
            &edge,
            &edge_fabric_port,
            "pe",
            q,
            BridgePort::RedirectTarget,
        )?;

        addr(&client, &client_port, 24)?;
        full_checksums(&client, &client_port.ifname)?;
        addr(&edge, &edge_client_port, 24)?;
        addr(&edge, &edge_fabric_port, 24)?;
        client.ip(&["route", "add", "10.77.9.0/24", "via", &EDGE_CLIENT_IP.to_string()])?;
        client.ip(&["route", "add", FABRIC_NET, "via", &EDGE_CLIENT_IP.to_string()])?;
        client.ip(&["-6", "route", "add", VIP_NET6, "via", &EDGE_CLIENT_IP6.to_string()])?;
        client.ip(&["-6", "route", "add", FABRIC_NET6, "via", &EDGE_CLIENT_IP6.to_string()])?;
        edge.sysctl("net.ipv4.ip_forward", "1")?;
        edge.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        for ns in [&client, &edge] {
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }

        let mut nodes = Vec::new();
        for i in 0..spec.nodes {
            let name = node_name(i);
            let ns = Netns::create(&prefix, &name)?;
            let port = Port {
                ifname: prefix.ifname(&format!("n{i}")),
                mac: mac(3, i as u8 + 1),
                ip: Ipv4Addr::new(10, 77, 1, 11 + i as u8),
                ip6: Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x11 + i as u16),
            };
            attach_to_bridge(
                &prefix,
                &fabric,
                &bridge,
                &ns,
                &port,
                &node_bridge_role(i),
                spec.node_queues,
                BridgePort::Plain,
            )?;
            // Node to node, a full-size packet travels with a fabric
            // header in front: both ends of the node's link take it. The
            // bridge checks each egress port's MTU, so the client's,
            // edge's and services' ports stay at the IP MTU on the same
            // bridge.
            let mtu = FABRIC_MTU.to_string();
            ns.ip(&["link", "set", &port.ifname, "mtu", &mtu])?;
            fabric.ip(&["link", "set", &prefix.ifname(&node_bridge_role(i)), "mtu", &mtu])?;
            addr(&ns, &port, 24)?;
            ns.ip(&["route", "add", CLIENT_NET, "via", &EDGE_FABRIC_IP.to_string()])?;
            ns.ip(&["-6", "route", "add", CLIENT_NET6, "via", &EDGE_FABRIC_IP6.to_string()])?;
            nodes.push(Host { name, port, ns });
        }
        let mut services = Vec::new();
        for i in 0..spec.services {
            let name = format!("svc-{}", i + 1);
            let ns = Netns::create(&prefix, &name)?;
            let port = Port {
                ifname: prefix.ifname(&format!("s{i}")),
                mac: mac(4, i as u8 + 1),
                ip: Ipv4Addr::new(10, 77, 1, 21 + i as u8),
                ip6: Ipv6Addr::new(0xfd77, 1, 0, 0, 0, 0, 0, 0x21 + i as u16),
            };
            attach_to_bridge(
                &prefix,
                &fabric,
                &bridge,
                &ns,
                &port,
                &format!("ps{i}"),
                q,
                BridgePort::Plain,
            )?;
            addr(&ns, &port, 24)?;
            ns.ip(&["route", "add", "default", "via", &EDGE_FABRIC_IP.to_string()])?;
            ns.ip(&["-6", "route", "add", "default", "via", &EDGE_FABRIC_IP6.to_string()])?;
            full_checksums(&ns, &port.ifname)?;
            services.push(Host { name, port, ns });
        }
        Ok(Self {
            processes: Vec::new(),
            die_with_parent: false,
            bpffs: None,
            prefix,
            log_dir,
            client_port,
            edge_client_port,
            edge_fabric_port,
            nodes,
            services,
            client,
            edge,
            fabric,
        })
    }

    /// Starts `program args...` inside `ns` and keeps it until the cluster
    /// is dropped (or [`Self::stop`] is called). Returns its index.
    pub fn spawn(&mut self, name: &str, ns: NsRef, program: &Path, args: &[String]) -> Result<usize> {
        self.spawn_with_env(name, ns, program, args, &[])
    }

    /// [`Self::spawn`] with `env` added to the program's environment.
    pub fn spawn_with_env(
        &mut self,
        name: &str,
        ns: NsRef,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> Result<usize> {
        let mut cmd = self.ns(ns).command(program);
        cmd.args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().map(|(k, v)| (k, v)));
        if self.die_with_parent {
            crate::process::die_with_parent(&mut cmd);
        }
        let spawned = Spawned::start(name, cmd, &self.log_dir)?;
        self.processes.push(spawned);
        Ok(self.processes.len() - 1)
    }

    /// From now on, every process [`Self::spawn`] starts gets SIGKILL when
    /// the thread that started it ends (PR_SET_PDEATHSIG): a supervisor
    /// that is killed takes its daemons with it. Only for a cluster driven
    /// from one long-lived thread, such as the lab's supervisor.
    pub fn kill_processes_with_this_one(&mut self) {
        self.die_with_parent = true;
    }

    /// Stops every process started with [`Self::spawn`], the last started
    /// first ([`Spawned::stop`]: SIGTERM, then SIGKILL after two seconds).
    pub fn stop_processes(&mut self) {
        for p in self.processes.iter_mut().rev() {
            if let Err(e) = p.stop() {
                eprintln!("warning: stopping {} (pid {}): {e:#}", p.name(), p.pid());
            }
        }
    }

    /// Every process started with [`Self::spawn`], as (name, pid), in the
    /// order they started.
    pub fn process_pids(&self) -> Vec<(String, u32)> {
        self.processes.iter().map(|p| (p.name().to_string(), p.pid())).collect()
    }

    /// The processes started with [`Self::spawn`] that are no longer
    /// running, as `name (pid N)`.
    pub fn not_running(&mut self) -> Vec<String> {
        self.processes
            .iter_mut()
            .filter_map(|p| (!p.running()).then(|| format!("{} (pid {})", p.name(), p.pid())))
            .collect()
    }

    /// The bridge end (in [`NsRef::Fabric`]) of node `i`'s veth: a frame
    /// sent on it arrives on the node's interface and nowhere else.
    pub fn node_bridge_port(&self, i: usize) -> String {
        self.prefix.ifname(&node_bridge_role(i))
    }

    /// The process started with [`Self::spawn`] under `name`, if any.
    pub fn process_named(&mut self, name: &str) -> Option<&mut Spawned> {
        self.processes.iter_mut().find(|p| p.name() == name)
    }

    /// Mounts a bpffs of this run (at `<log dir>/bpf`, removed with the
    /// cluster); from now on [`Self::edge_config`] pins the sprayer in it.
    pub fn mount_bpffs(&mut self) -> Result<PathBuf> {
        let mounted = BpfFs::mount(&self.log_dir.join("bpf"))?;
        let path = mounted.path().to_path_buf();
        self.bpffs = Some(mounted);
        Ok(path)
    }

    /// The edge's pin directory, when this run has a bpffs.
    pub fn edge_pin_dir(&self) -> Option<PathBuf> {
        self.bpffs.as_ref().map(|b| b.path().join("edge"))
    }

    /// A process started with [`Self::spawn`].
    pub fn process(&mut self, index: usize) -> &mut Spawned {
        &mut self.processes[index]
    }

    /// The namespace `ns` refers to.
    pub fn ns(&self, ns: NsRef) -> &Netns {
        match ns {
            NsRef::Client => &self.client,
            NsRef::Edge => &self.edge,
            NsRef::Node(i) => &self.nodes[i].ns,
            NsRef::Service(i) => &self.services[i].ns,
            NsRef::Fabric => &self.fabric,
        }
    }

    /// Writes `contents` to a file in the run's log directory.
    pub fn write_file(&self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = self.log_dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

/// Whether a process name is one of the edge daemon's runs.
fn is_edge(name: &str) -> bool {
    name == "edge" || name.strip_prefix("edge-").is_some_and(|n| n.parse::<u32>().is_ok())
}

/// Names one of the cluster's namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsRef {
    /// The client.
    Client,
    /// The edge.
    Edge,
    /// A flow-distributor node.
    Node(usize),
    /// A service node.
    Service(usize),
    /// The namespace holding the fabric bridge and the bridge ends of the
    /// fabric's veths (`pn<i>` faces node i).
    Fabric,
}

/// Makes the kernel write complete checksums (no offload) and segment
/// nothing on `ifname`. Frames from these hosts cross AF_XDP sockets, which
/// carry bytes, not the skb's checksum-offload state: a partial checksum
/// would arrive as a bad one.
fn full_checksums(ns: &Netns, ifname: &str) -> Result<()> {
    ns.exec("ethtool", &["-K", ifname, "tx", "off", "tso", "off", "gso", "off"])
        .map(drop)
}

/// Gives `port` its IPv4 address (/`len`) and its IPv6 address (/64,
/// without duplicate address detection: every address on the bed is
/// unique, and DAD would hold the address back for a second or more).
fn addr(ns: &Netns, port: &Port, len: u8) -> Result<()> {
    ns.ip(&["addr", "add", &format!("{}/{len}", port.ip), "dev", &port.ifname])?;
    ns.ip(&[
        "-6",
        "addr",
        "add",
        &format!("{}/64", port.ip6),
        "dev",
        &port.ifname,
        "nodad",
    ])
    .map(drop)
}

/// What the bridge end of a host's veth must accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BridgePort {
    /// Frames the host's kernel or its AF_XDP sockets send.
    Plain,
    /// Also frames an XDP program on the host's end redirects into the
    /// pair (the edge's sprayer).
    RedirectTarget,
}

/// Connects `port` in `ns` to the bridge through a veth whose bridge end is
/// `<prefix><bridge_role>`.
///
/// The bridge stands for a switch, and a switch port passes frames as they
/// come: no bridge end aggregates (GRO), because an aggregated TCP packet
/// carries only a partial checksum (the pseudo-header's) and a sprayer in
/// XDP forwards those bytes as they are, to a receiver that then drops
/// them, and because an aggregate is larger than any AF_XDP frame. The
/// veth under a [`BridgePort::RedirectTarget`] port still needs NAPI to
/// take frames redirected into the pair (veth drops them when the peer has
/// neither an XDP program nor NAPI; drivers/net/veth.c, veth_xdp_xmit), and
/// veth turns NAPI on with GRO: there GRO is on with a maximum aggregate of
/// 0 bytes (`gro_max_size`, which from kernel 6.3 also sets the IPv4
/// limit), so nothing is ever merged.
#[allow(clippy::too_many_arguments)]
fn attach_to_bridge(
    prefix: &RunPrefix,
    fabric: &Netns,
    bridge: &str,
    ns: &Netns,
    port: &Port,
    bridge_role: &str,
    queues: u32,
    kind: BridgePort,
) -> Result<()> {
    let bridge_end = prefix.ifname(bridge_role);
    veth(
        &VethEnd {
            ns,
            name: port.ifname.clone(),
            mac: Some(port.mac),
        },
        &VethEnd {
            ns: fabric,
            name: bridge_end.clone(),
            mac: None,
        },
        queues,
    )?;
    fabric.ip(&["link", "set", &bridge_end, "master", bridge])?;
    match kind {
        BridgePort::Plain => {
            fabric.exec("ethtool", &["-K", &bridge_end, "gro", "off"])?;
        }
        BridgePort::RedirectTarget => {
            fabric.ip(&["link", "set", &bridge_end, "gro_max_size", "0"])?;
            fabric.exec("ethtool", &["-K", &bridge_end, "gro", "on"])?;
        }
    }
    Ok(())
}

/// The run's key directory, under its log directory.
const KEYS_DIR: &str = "keys";

/// Creates a cluster CA in `dir` and certificates for the manager and
/// `nodes` nodes (ids 0..nodes) with the built `handoff keys` commands.
fn create_keys(dir: &Path, nodes: usize) -> Result<()> {
    let handoff = crate::binaries::binary("handoff")?;
    let dir_arg = dir.display().to_string();
    let mut runs = vec![
        vec!["keys", "init", "--dir", &dir_arg],
        vec!["keys", "issue", "--dir", &dir_arg, "--manager"],
    ];
    let ids: Vec<String> = (0..nodes).map(|i| i.to_string()).collect();
    for id in &ids {
        runs.push(vec!["keys", "issue", "--dir", &dir_arg, "--node", id]);
    }
    for args in runs {
        let out = std::process::Command::new(&handoff).args(&args).output()?;
        if !out.status.success() {
            anyhow::bail!("handoff {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
        }
    }
    Ok(())
}

impl Cluster {
    /// The run's key directory (its cluster CA and every party's certificate).
    pub fn keys_dir(&self) -> PathBuf {
        self.log_dir.join(KEYS_DIR)
    }

    /// The `[tls]` section of `party`'s configuration.
    pub fn tls_section(&self, party: Party) -> String {
        let paths = party.paths(&self.keys_dir());
        format!(
            "\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            paths.ca.display().to_string(),
            paths.cert.display().to_string(),
            paths.key.display().to_string()
        )
    }

    /// The admin socket path of this run's edge daemon.
    pub fn admin_socket(&self) -> PathBuf {
        self.log_dir.join("edge.sock")
    }

    /// An edge configuration for this test bed: the sprayer on the client
    /// side (and on the fabric side when `spray_replies`), every node a
    /// member, the VIP as cluster destination and the services as sources;
    /// pinned in this run's bpffs if it has one.
    pub fn edge_config(&self, spray_replies: bool) -> String {
        let mut interfaces = vec![format!("{:?}", self.edge_client_port.ifname)];
        if spray_replies {
            interfaces.push(format!("{:?}", self.edge_fabric_port.ifname));
        }
        let sources: Vec<String> = self
            .services
            .iter()
            .flat_map(|s| [format!("\"{}/32\"", s.port.ip), format!("\"{}/128\"", s.port.ip6)])
            .collect();
        let mut text = format!(
            "[edge]\ninterfaces = [{}]\nadmin_socket = {:?}\nlocal_addresses = [\"{}\", \"{}\", \"{}\", \"{}\"]\ncontrol_listen = \"{EDGE_FABRIC_IP}:{MANAGER_PORT}\"\n\n[manager]\nhold_down_ms = 1000\nfailover_after_ms = 1000\n\n[cluster]\ndestinations = [\"{}/32\", \"{}/128\"]\nsources = [{}]\n",
            interfaces.join(", "),
            self.admin_socket().display().to_string(),
            EDGE_CLIENT_IP,
            EDGE_FABRIC_IP,
            EDGE_CLIENT_IP6,
            EDGE_FABRIC_IP6,
            VIP,
            VIP6,
            sources.join(", "),
        );
        if let Some(dir) = self.edge_pin_dir() {
            text = text.replace(
                "[edge]\n",
                &format!("[edge]\npin_dir = {:?}\n", dir.display().to_string()),
            );
        }
        text.push_str(&self.tls_section(Party::Manager));
        for (i, node) in self.nodes.iter().enumerate() {
            text.push_str(&format!(
                "\n[[members]]\nname = {:?}\nid = {i}\nmac = {:?}\ninterface = {:?}\n",
                node.name,
                crate::netns::mac_string(node.port.mac),
                self.edge_fabric_port.ifname
            ));
        }
        text
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: std::time::Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// A process argument.
pub fn arg(s: impl ToString) -> String {
    s.to_string()
}

impl Cluster {
    /// Starts the edge daemon with `config` and waits until it serves its
    /// admin socket. A restart gets a name of its own (`edge-2`, ...), so
    /// each run keeps its log.
    pub fn start_edge(&mut self, config: &str) -> Result<usize> {
        let handoff = crate::binaries::binary("handoff")?;
        let path = self.write_file("edge.toml", config)?;
        let name = match self.processes.iter().filter(|p| is_edge(p.name())).count() {
            0 => "edge".to_string(),
            runs => format!("edge-{}", runs + 1),
        };
        let idx = self.spawn(
            &name,
            NsRef::Edge,
            &handoff,
            &[arg("edge"), arg("--config"), arg(path.display())],
        )?;
        // An answer, not the file: a killed edge leaves its file behind.
        let admin = self.admin_socket();
        if !wait_until(std::time::Duration::from_secs(15), || {
            handoff::admin::call(
                &admin,
                &handoff::admin::AdminRequest::Status,
                std::time::Duration::from_secs(1),
            )
            .is_ok()
        }) {
            anyhow::bail!("the edge daemon did not start: {}", self.process(idx).stderr());
        }
        Ok(idx)
    }

    /// The edge daemon started last, if it still runs.
    pub fn running_edge(&mut self) -> Option<&mut Spawned> {
        self.processes
            .iter_mut()
            .rev()
            .filter(|p| is_edge(p.name()))
            .find_map(|p| p.running().then_some(p))
    }

    /// Starts an AF_XDP sink on node `i`'s interface; returns its process
    /// index and JSON path once its program is attached.
    pub fn start_node_sink(&mut self, i: usize, flows: u32, idle_s: u32) -> Result<(usize, PathBuf)> {
        let ifname = self.nodes[i].port.ifname.clone();
        self.start_sink(
            NsRef::Node(i),
            &format!("sink-{}", node_name(i)),
            &ifname,
            flows,
            idle_s,
        )
    }

    /// Starts an AF_XDP sink named `name` on `ifname` in `ns`; returns its
    /// process index and JSON path once its program is attached.
    pub fn start_sink(
        &mut self,
        ns: NsRef,
        name: &str,
        ifname: &str,
        flows: u32,
        idle_s: u32,
    ) -> Result<(usize, PathBuf)> {
        let bench = crate::binaries::binary("handoff-bench")?;
        let json = self.log_dir.join(format!("{name}.json"));
        let idx = self.spawn(
            name,
            ns,
            &bench,
            &[
                arg("sink"),
                arg("--interface"),
                arg(ifname),
                arg("--flows"),
                arg(flows),
                arg("--per-flow"),
                arg("--idle"),
                arg(idle_s),
                arg("--duration"),
                arg(120),
                arg("--json"),
                arg(json.display()),
            ],
        )?;
        if !wait_until(std::time::Duration::from_secs(15), || {
            self.process(idx).stderr().contains("attached")
        }) {
            anyhow::bail!("the sink {name} did not start: {}", self.process(idx).stderr());
        }
        Ok((idx, json))
    }

    /// Starts the AF_XDP generator in the client towards the VIP.
    pub fn start_client_gen(&mut self, flows: u32, rate: u64, count: u64) -> Result<(usize, PathBuf)> {
        let bench = crate::binaries::binary("handoff-bench")?;
        let json = self.log_dir.join("gen.json");
        let args = [
            arg("gen"),
            arg("--interface"),
            self.client_port.ifname.clone(),
            arg("--dst-mac"),
            crate::netns::mac_string(self.edge_client_port.mac),
            arg("--flows"),
            arg(flows),
            arg("--src"),
            arg(self.client_port.ip),
            arg("--dst"),
            arg(VIP),
            arg("--rate"),
            arg(rate),
            arg("--count"),
            arg(count),
            arg("--duration"),
            arg(count / rate.max(1) + 30),
            arg("--json"),
            arg(json.display()),
        ];
        let idx = self.spawn("gen", NsRef::Client, &bench, &args)?;
        Ok((idx, json))
    }

    /// Runs `handoff <args> --json --admin <edge socket>` and returns its parsed JSON output.
    pub fn admin(&self, args: &[&str]) -> Result<serde_json::Value> {
        self.admin_at(&self.admin_socket(), args)
    }

    /// Runs `handoff <args> --json --admin <socket>` and returns its parsed JSON output.
    pub fn admin_at(&self, socket: &Path, args: &[&str]) -> Result<serde_json::Value> {
        let handoff = crate::binaries::binary("handoff")?;
        let out = std::process::Command::new(handoff)
            .args(args)
            .arg("--json")
            .arg("--admin")
            .arg(socket)
            .output()?;
        if !out.status.success() {
            anyhow::bail!(
                "handoff {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }
}

/// Reads a JSON report written by a process.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
