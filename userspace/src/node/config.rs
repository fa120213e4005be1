//! The node's configuration file (TOML), validated whole at start. Errors
//! name the file, the line and the field.
//!
//! ```toml
//! [node]
//! name = "fd-a"
//! id = 0                          # the edge's member id of this node
//! interface = "eth1"              # data plane and fabric
//! queues = [0]                    # one worker per RX queue
//! cpus = [1]                      # optional: pin worker i to cpus[i]
//! xdp_mode = "driver"             # "driver" | "skb"
//! bind_mode = "auto"              # "auto" | "copy" | "zero-copy"
//! local_addresses = ["10.0.1.11"] # the host's own (control-plane) addresses
//! policy = "policy.toml"          # relative to this file
//! admin_socket = "/run/handoff/fd-a.sock"
//! control_listen = "10.0.1.11:7700"
//! manager = "10.0.1.1:7600"       # optional: the edge's control port
//! copy_rate_limit = 0             # optional: connections per second a
//!                                 # handover copies at most (0: no limit)
//! ip_mtu = 1500                   # optional: the largest IP packet the
//!                                 # cluster carries; the interface's MTU
//!                                 # must be at least ip_mtu + 16 (fabric)
//! offloads = "fix"                # optional: GRO/LRO found on at start are
//!                                 # turned off ("fix") or refused ("check")
//! max_control_connections = 64    # optional: concurrent control connections
//! max_control_connections_per_source = 4  # optional: ... from one address
//!
//! [tls]                           # required: mutual TLS under the cluster CA
//! ca = "keys/ca.pem"              # relative to this file
//! cert = "keys/node-0.pem"        # `handoff keys issue --dir keys --node 0`
//! key = "keys/node-0.key"
//!
//! [api]                           # optional: the HTTP API (docs/openapi.json)
//! listen = "127.0.0.1:9480"       # not loopback: HTTPS with client certificates
//!
//! [hash]                          # must equal the edge's
//! buckets = 65536
//! symmetric_hash = false
//! hash_seed = 0
//!
//! [[members]]                     # every node of the cluster, this one too
//! name = "fd-a"
//! id = 0
//! mac = "02:00:00:00:00:01"       # its fabric MAC
//! control = "10.0.1.11:7700"      # where its control port listens
//! ```

use crate::metrics::{parse_listen, RawMetrics};
use crate::node::fabric::FABRIC_HLEN;
use crate::{
    control::{
        session::ConnectionLimits,
        tls::{node_name, TlsIdentity, TlsPaths},
    },
    edge::config::{
        connection_limits, default_max_connections, default_max_connections_per_source, line_of, load_tls, ConfigError,
        MemberChecks, RawTls,
    },
    io::afxdp::{AfXdpConfig, BindMode},
    scope::HashParams,
};
use handoff_common::{
    names::limits::{DEFAULT_BUCKETS, MAX_BUCKETS, MAX_MEMBERS},
    parse::ETH_HLEN,
};
use handoff_loader::AttachMode;
use serde::Deserialize;
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

/// The smallest IP MTU: IPv6's minimum link MTU (RFC 8200 §5).
pub const MIN_IP_MTU: u32 = 1280;

/// Most workers per node (worker ids travel as `u8`).
pub const MAX_WORKERS: usize = 64;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    node: RawNode,
    #[serde(default)]
    hash: RawHash,
    #[serde(default)]
    members: Vec<RawMember>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    metrics: Option<RawMetrics>,
    #[serde(default)]
    api: Option<crate::api::RawApi>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    id: u32,
    interface: String,
    #[serde(default = "default_queues")]
    queues: Vec<u32>,
    #[serde(default)]
    cpus: Vec<usize>,
    #[serde(default = "default_mode")]
    xdp_mode: String,
    #[serde(default)]
    bind_mode: BindMode,
    #[serde(default)]
    local_addresses: Vec<String>,
    policy: PathBuf,
    admin_socket: PathBuf,
    control_listen: String,
    #[serde(default)]
    manager: Option<String>,
    #[serde(default = "default_ownership_capacity")]
    ownership_capacity: usize,
    #[serde(default)]
    frame_count: Option<u32>,
    #[serde(default)]
    copy_rate_limit: u64,
    #[serde(default = "default_ip_mtu")]
    ip_mtu: u32,
    #[serde(default)]
    offloads: OffloadPolicy,
    #[serde(default = "default_max_connections")]
    max_control_connections: usize,
    #[serde(default = "default_max_connections_per_source")]
    max_control_connections_per_source: usize,
}

/// What the node does about receive offloads (GRO, LRO) that merge
/// segments into frames larger than an AF_XDP frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OffloadPolicy {
    /// Turn them off, with a log line naming each.
    #[default]
    Fix,
    /// Refuse to start while any is on, naming the ethtool command.
    Check,
}

fn default_ip_mtu() -> u32 {
    u32::from(crate::node::pipeline::DEFAULT_IP_MTU)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHash {
    #[serde(default = "default_buckets")]
    buckets: u32,
    #[serde(default)]
    symmetric_hash: bool,
    #[serde(default)]
    hash_seed: u32,
}

impl Default for RawHash {
    fn default() -> Self {
        Self {
            buckets: DEFAULT_BUCKETS,
            symmetric_hash: false,
            hash_seed: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: String,
    id: u32,
    mac: String,
    control: String,
}

fn default_queues() -> Vec<u32> {
    vec![0]
}

fn default_mode() -> String {
    "driver".into()
}

fn default_buckets() -> u32 {
    DEFAULT_BUCKETS
}

fn default_ownership_capacity() -> usize {
    1 << 20
}

/// A cluster member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeMember {
    /// Name, e.g. `fd-b`.
    pub name: String,
    /// Member id (the edge's and the scope's).
    pub id: u16,
    /// Fabric MAC.
    pub mac: [u8; 6],
    /// Control address.
    pub control: SocketAddr,
}

/// A validated node configuration.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node's name.
    pub name: String,
    /// This node's member id.
    pub id: u16,
    /// Data-plane interface.
    pub interface: String,
    /// RX queues, one worker each.
    pub queues: Vec<u32>,
    /// CPU of each worker, if pinned.
    pub cpus: Vec<usize>,
    /// XDP attach mode.
    pub xdp_mode: AttachMode,
    /// AF_XDP socket settings.
    pub afxdp: AfXdpConfig,
    /// The host's own addresses, always passed to the kernel.
    pub local_addresses: Vec<IpAddr>,
    /// The policy file (see [`crate::flow::PolicyConfig`]).
    pub policy: PathBuf,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// Where the control port listens.
    pub control_listen: SocketAddr,
    /// The migration manager's control port (in the edge), if any.
    pub manager: Option<SocketAddr>,
    /// Flow ownership entries each worker keeps for flows it does not hold.
    pub ownership_capacity: usize,
    /// Connections per second a handover's snapshot streams at most, so a
    /// large copy does not take the control link and the CPU from the data
    /// path all at once; `None` streams as fast as the link takes it.
    pub copy_rate_limit: Option<u64>,
    /// The largest IP packet the cluster carries (bytes): the node's
    /// interface must take it plus the fabric header.
    pub ip_mtu: u16,
    /// Receive offloads found on at start.
    pub offloads: OffloadPolicy,
    /// How flows map to buckets.
    pub hash: HashParams,
    /// Every member, this node included.
    pub members: Vec<NodeMember>,
    /// Caps on concurrent connections to the control port.
    pub connection_limits: ConnectionLimits,
    /// The `[tls]` files as the file names them (relative to it).
    pub tls_files: Option<TlsPaths>,
    /// The node's TLS identity: set by [`NodeConfig::load`], which refuses
    /// a file without a valid `[tls]` section.
    pub tls: Option<TlsIdentity>,
    /// Where the Prometheus metrics listener binds (`[metrics] listen`);
    /// `None`: no listener.
    pub metrics: Option<SocketAddr>,
    /// Where the HTTP API listens (`[api] listen`); `None`: no API. Not
    /// loopback: HTTPS with the `[tls]` identity ([`crate::api`]).
    pub api: Option<SocketAddr>,
}

impl NodeMember {
    /// The member as a control-protocol peer.
    pub fn peer(&self) -> crate::node::peers::Peer {
        crate::node::peers::Peer {
            id: self.id,
            address: self.control,
        }
    }
}

impl NodeConfig {
    /// Reads and validates `path`; a relative policy path is taken from the
    /// file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        config.policy = path.parent().unwrap_or(Path::new(".")).join(&config.policy);
        config.tls = Some(load_tls(
            config.tls_files.as_ref(),
            path,
            &text,
            &node_name(config.id),
            &format!("--node {}", config.id),
        )?);
        Ok(config)
    }

    /// Validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let raw: RawFile = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.into(),
            message: e.to_string(),
        })?;
        let invalid = |section: &str, field: &str, needle: &str, detail: String| ConfigError::Invalid {
            path: path.into(),
            line: line_of(text, section, needle),
            field: field.to_string(),
            detail,
        };
        let node = raw.node;
        let xdp_mode: AttachMode = node
            .xdp_mode
            .parse()
            .map_err(|e| invalid("[node]", "node.xdp_mode", "xdp_mode", e))?;
        let id = u16::try_from(node.id)
            .ok()
            .filter(|&id| u32::from(id) < MAX_MEMBERS)
            .ok_or_else(|| {
                invalid(
                    "[node]",
                    "node.id",
                    "id",
                    format!("{} is not below {MAX_MEMBERS}", node.id),
                )
            })?;
        if node.queues.is_empty() || node.queues.len() > MAX_WORKERS {
            return Err(invalid(
                "[node]",
                "node.queues",
                "queues",
                format!("{} queues; give 1..={MAX_WORKERS}", node.queues.len()),
            ));
        }
        if node.queues.iter().collect::<HashSet<_>>().len() != node.queues.len() {
            return Err(invalid(
                "[node]",
                "node.queues",
                "queues",
                "a queue is listed twice".into(),
            ));
        }
        if !node.cpus.is_empty() && node.cpus.len() != node.queues.len() {
            return Err(invalid(
                "[node]",
                "node.cpus",
                "cpus",
                format!(
                    "{} cpus for {} queues; give one per queue or none",
                    node.cpus.len(),
                    node.queues.len()
                ),
            ));
        }
        let local_addresses = node
            .local_addresses
            .iter()
            .map(|a| {
                a.parse().map_err(|_| {
                    invalid(
                        "[node]",
                        "node.local_addresses",
                        a,
                        format!("{a:?} is not an IP address"),
                    )
                })
            })
            .collect::<Result<Vec<IpAddr>, _>>()?;
        let control_listen: SocketAddr = node.control_listen.parse().map_err(|_| {
            invalid(
                "[node]",
                "node.control_listen",
                "control_listen",
                format!("{:?} is not an address:port", node.control_listen),
            )
        })?;
        let manager = match &node.manager {
            Some(m) => Some(m.parse().map_err(|_| {
                invalid(
                    "[node]",
                    "node.manager",
                    "manager",
                    format!("{m:?} is not an address:port"),
                )
            })?),
            None => None,
        };
        if node.ownership_capacity == 0 {
            return Err(invalid(
                "[node]",
                "node.ownership_capacity",
                "ownership_capacity",
                "must be positive".into(),
            ));
        }
        let mut afxdp = AfXdpConfig {
            bind_mode: node.bind_mode,
            ..AfXdpConfig::default()
        };
        if let Some(frames) = node.frame_count {
            afxdp.frame_count = frames;
        }
        afxdp
            .validate()
            .map_err(|e| invalid("[node]", "node.frame_count", "frame_count", e.to_string()))?;
        // A fabric frame (Ethernet, fabric header, the IP packet) must fit
        // one AF_XDP frame: larger needs multi-buffer AF_XDP.
        let max_ip_mtu = afxdp.frame_capacity() - ETH_HLEN - FABRIC_HLEN;
        if !(MIN_IP_MTU..=max_ip_mtu as u32).contains(&node.ip_mtu) {
            return Err(invalid(
                "[node]",
                "node.ip_mtu",
                "ip_mtu",
                format!(
                    "{} is outside {MIN_IP_MTU}..={max_ip_mtu}: a fabric frame ({ETH_HLEN}-byte Ethernet header, {FABRIC_HLEN}-byte fabric header, the IP packet) must fit one {}-byte AF_XDP frame (jumbo frames need multi-buffer AF_XDP, not supported)",
                    node.ip_mtu,
                    afxdp.frame_capacity()
                ),
            ));
        }
        let buckets = raw.hash.buckets;
        if !buckets.is_power_of_two() || !(2..=MAX_BUCKETS).contains(&buckets) {
            return Err(invalid(
                "[hash]",
                "hash.buckets",
                "buckets",
                format!("{buckets} is not a power of two in 2..={MAX_BUCKETS}"),
            ));
        }
        let metrics = raw
            .metrics
            .as_ref()
            .map(|m| parse_listen(&m.listen).map_err(|e| invalid("[metrics]", "metrics.listen", "listen", e)))
            .transpose()?;
        let api = raw
            .api
            .as_ref()
            .map(|a| {
                crate::api::parse_listen(&a.listen, raw.tls.is_some())
                    .map_err(|e| invalid("[api]", "api.listen", "listen", e))
            })
            .transpose()?;
        let members = members(&raw.members, &invalid)?;
        if !members.iter().any(|m| m.id == id) {
            return Err(invalid(
                "[node]",
                "node.id",
                "id",
                format!("no [[members]] entry has this node's id {id}"),
            ));
        }
        Ok(Self {
            name: node.name,
            id,
            interface: node.interface,
            queues: node.queues,
            cpus: node.cpus,
            ip_mtu: node.ip_mtu as u16,
            offloads: node.offloads,
            xdp_mode,
            afxdp,
            local_addresses,
            policy: node.policy,
            admin_socket: node.admin_socket,
            control_listen,
            manager,
            ownership_capacity: node.ownership_capacity,
            copy_rate_limit: (node.copy_rate_limit > 0).then_some(node.copy_rate_limit),
            hash: HashParams {
                buckets,
                symmetric: raw.hash.symmetric_hash,
                seed: raw.hash.hash_seed,
            },
            members,
            connection_limits: connection_limits(
                node.max_control_connections,
                node.max_control_connections_per_source,
                |detail| {
                    invalid(
                        "[node]",
                        "node.max_control_connections",
                        "max_control_connections",
                        detail,
                    )
                },
            )?,
            tls_files: raw.tls.as_ref().map(|t| t.paths(path)),
            tls: None,
            metrics,
            api,
        })
    }

    /// The members other than this node.
    pub fn peers(&self) -> impl Iterator<Item = &NodeMember> {
        self.members.iter().filter(move |m| m.id != self.id)
    }

    /// Fabric MAC of every member id, `None` where no member has that id.
    pub fn peer_macs(&self) -> Vec<Option<[u8; 6]>> {
        let len = self.members.iter().map(|m| m.id as usize + 1).max().unwrap_or(0);
        let mut macs = vec![None; len];
        for m in &self.members {
            macs[m.id as usize] = Some(m.mac);
        }
        macs
    }
}

fn members(
    raw: &[RawMember],
    invalid: &impl Fn(&str, &str, &str, String) -> ConfigError,
) -> Result<Vec<NodeMember>, ConfigError> {
    let mut checks = MemberChecks::default();
    let mut members = Vec::with_capacity(raw.len());
    for (i, m) in raw.iter().enumerate() {
        let field = |f: &str| format!("members[{i}].{f}");
        let mac = checks.check(i, &m.name, m.id, &m.mac, invalid)?;
        // The checks bound ids by MAX_MEMBERS, far below u16::MAX.
        let id = m.id as u16;
        let control = m.control.parse().map_err(|_| {
            invalid(
                "[[members]]",
                &field("control"),
                &m.control,
                format!("{:?} is not an address:port", m.control),
            )
        })?;
        members.push(NodeMember {
            name: m.name.clone(),
            id,
            mac,
            control,
        });
    }
    if members.is_empty() {
        return Err(invalid(
            "[[members]]",
            "members",
            "",
            "at least one member is needed".into(),
        ));
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "fd-a"
id = 0
interface = "n0"
queues = [0, 1]
xdp_mode = "skb"
bind_mode = "copy"
local_addresses = ["10.0.1.11"]
policy = "policy.toml"
admin_socket = "/tmp/fd-a.sock"
control_listen = "10.0.1.11:7700"

[[members]]
name = "fd-a"
id = 0
mac = "02:00:00:00:00:01"
control = "10.0.1.11:7700"

[[members]]
name = "fd-b"
id = 2
mac = "02:00:00:00:00:02"
control = "10.0.1.12:7700"
"#;

    fn err(text: &str) -> String {
        NodeConfig::parse(text, Path::new("node.toml")).unwrap_err().to_string()
    }

    #[test]
    fn a_good_file_parses() {
        let c = NodeConfig::parse(GOOD, Path::new("node.toml")).unwrap();
        assert_eq!(c.policy, PathBuf::from("policy.toml"));
        assert_eq!(c.queues, vec![0, 1]);
        assert_eq!(c.afxdp.bind_mode, BindMode::Copy);
        assert_eq!(c.hash.buckets, DEFAULT_BUCKETS);
        assert_eq!(c.copy_rate_limit, None);
        let limited = GOOD.replace(
            "[[members]]\nname = \"fd-a\"",
            "copy_rate_limit = 2000\n\n[[members]]\nname = \"fd-a\"",
        );
        let limited = NodeConfig::parse(&limited, Path::new("node.toml")).unwrap();
        assert_eq!(limited.copy_rate_limit, Some(2000));
        assert_eq!(c.peers().map(|m| m.id).collect::<Vec<_>>(), vec![2]);
        assert_eq!(
            c.peer_macs(),
            vec![Some([2, 0, 0, 0, 0, 1]), None, Some([2, 0, 0, 0, 0, 2])]
        );
    }

    #[test]
    fn the_metrics_listener_is_optional_and_checked() {
        let c = NodeConfig::parse(GOOD, Path::new("node.toml")).unwrap();
        assert_eq!(c.metrics, None, "off unless asked");
        let with = |listen: &str| format!("{GOOD}\n[metrics]\nlisten = {listen:?}\n");
        let c = NodeConfig::parse(&with("0.0.0.0:9464"), Path::new("node.toml")).unwrap();
        assert_eq!(c.metrics, Some("0.0.0.0:9464".parse().unwrap()));
        let e = err(&with("10.0.1.11:0"));
        assert!(
            e.contains("field `metrics.listen`") && e.contains("other than 0"),
            "{e}"
        );
        let e = err(&with("nowhere:80"));
        assert!(e.contains("metrics.listen") && e.contains("address:port"), "{e}");
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err(&GOOD.replace("02:00:00:00:00:02", "02:zz"));
        assert!(e.starts_with("node.toml:23: field `members[1].mac`"), "{e}");
        let e = err(&GOOD.replace("queues = [0, 1]", "queues = [1, 1]"));
        assert!(e.contains("node.queues") && e.contains("twice"), "{e}");
        let e = err(&GOOD.replace("id = 2", "id = 0"));
        assert!(e.contains("members[1].id") && e.contains("used twice"), "{e}");
        let e = err(&GOOD.replace(
            "name = \"fd-a\"\nid = 0\ninterface",
            "name = \"fd-a\"\nid = 5\ninterface",
        ));
        assert!(e.contains("node.id") && e.contains("no [[members]]"), "{e}");
        let e = err(&GOOD.replace("\"10.0.1.11:7700\"\n\n[[members]]", "\"nowhere\"\n\n[[members]]"));
        assert!(e.contains("node.control_listen"), "{e}");
        let e = err(&GOOD.replace("xdp_mode = \"skb\"", "xdp_mode = \"fast\""));
        assert!(e.contains("node.xdp_mode"), "{e}");
        let e = err(&GOOD.replace("bind_mode = \"copy\"", "bind_mode = \"turbo\""));
        assert!(e.contains("bind_mode"), "{e}");
        let e = err(&GOOD.replace("[node]", "[node]\ncolour = 1"));
        assert!(e.contains("colour"), "{e}");
    }
}
