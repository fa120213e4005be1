//! The edge daemon's configuration file (TOML).
//!
//! ```toml
//! [edge]
//! interfaces = ["eth1", "eth2"]     # where cluster traffic enters
//! xdp_mode = "driver"               # or "skb"
//! buckets = 65536
//! symmetric_hash = false
//! hash_seed = 0
//! admin_socket = "/run/handoff/edge.sock"
//! pin_dir = "/sys/fs/bpf/handoff-edge"  # optional: the sprayer outlives the daemon
//!
//! [cluster]
//! destinations = ["10.77.9.0/24"]   # VIPs
//! sources = ["10.77.1.21/32"]       # backends whose replies return through the edge
//!
//! [manager]                         # the migration manager (all optional)
//! migration_timeout_ms = 60000      # a migration's whole budget
//! hold_down_ms = 5000               # after a migration, before automatic actions
//! failover_after_ms = 3000          # a FAILED member in the scope is removed after this; 0 = never
//! max_connections = 64              # concurrent control connections at most
//! max_connections_per_source = 4    # ... from one address
//!
//! [tls]                             # required with control_listen: mutual TLS under the cluster CA
//! ca = "keys/ca.pem"                # relative to this file
//! cert = "keys/manager.pem"         # `handoff keys issue --dir keys --manager`
//! key = "keys/manager.key"
//!
//! [api]                             # optional: the HTTP API (docs/openapi.json)
//! listen = "127.0.0.1:9480"         # not loopback: HTTPS with client certificates, needs [tls]
//!
//! [[members]]
//! name = "fd-a"
//! id = 0
//! mac = "02:68:6f:00:03:01"
//! interface = "eth2"                # egress towards the member
//! ```

use crate::{
    control::{
        session::{ConnectionLimits, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_SOURCE},
        tls::{TlsIdentity, TlsPaths, MANAGER_NAME},
    },
    scope::HashParams,
};
use handoff_loader::{AttachMode, Prefix};
use serde::Deserialize;
use std::{
    collections::HashSet,
    path::{Path, PathBuf},
};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or a field of the wrong type (the message has line and column).
    #[error("{path}: {message}")]
    Syntax {
        /// File.
        path: PathBuf,
        /// The parser's message, with line, column and field.
        message: String,
    },
    /// A value is invalid.
    #[error("{path}:{line}: field `{field}`: {detail}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Line of the field, or 0 when unknown.
        line: usize,
        /// Field path.
        field: String,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    edge: RawEdge,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    manager: RawManager,
    #[serde(default)]
    members: Vec<RawMember>,
    #[serde(default)]
    tls: Option<RawTls>,
    #[serde(default)]
    metrics: Option<crate::metrics::RawMetrics>,
    #[serde(default)]
    api: Option<crate::api::RawApi>,
}

/// A `[tls]` section: the party's certificate and key, the cluster CA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl RawTls {
    /// The paths, relative ones taken from the configuration file's directory.
    pub(crate) fn paths(&self, config: &Path) -> TlsPaths {
        let dir = config.parent().unwrap_or(Path::new("."));
        TlsPaths {
            ca: dir.join(&self.ca),
            cert: dir.join(&self.cert),
            key: dir.join(&self.key),
        }
    }
}

/// Loads and checks the `[tls]` files of the configuration at `path` for
/// the identity `name`; `issue` is the `handoff keys issue` argument that
/// creates them (`--node 3`, `--manager`).
pub(crate) fn load_tls(
    files: Option<&TlsPaths>,
    path: &Path,
    text: &str,
    name: &str,
    issue: &str,
) -> Result<TlsIdentity, ConfigError> {
    let Some(files) = files else {
        return Err(ConfigError::Invalid {
            path: path.into(),
            line: 0,
            field: "tls".into(),
            detail: format!(
                "missing: control connections are mutual TLS under the cluster CA; create the keys with `handoff keys init --dir DIR` (once per cluster) and `handoff keys issue --dir DIR {issue}`, then add a [tls] section with ca = \"DIR/ca.pem\", cert and key"
            ),
        });
    };
    TlsIdentity::load(files, name).map_err(|e| ConfigError::Invalid {
        path: path.into(),
        line: line_of(text, "[tls]", "cert"),
        field: "tls".into(),
        detail: e.to_string(),
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManager {
    #[serde(default = "default_migration_timeout_ms")]
    migration_timeout_ms: u64,
    #[serde(default = "default_hold_down_ms")]
    hold_down_ms: u64,
    #[serde(default = "default_failover_after_ms")]
    failover_after_ms: u64,
    #[serde(default = "default_max_connections")]
    max_connections: usize,
    #[serde(default = "default_max_connections_per_source")]
    max_connections_per_source: usize,
}

impl Default for RawManager {
    fn default() -> Self {
        Self {
            migration_timeout_ms: default_migration_timeout_ms(),
            hold_down_ms: default_hold_down_ms(),
            failover_after_ms: default_failover_after_ms(),
            max_connections: default_max_connections(),
            max_connections_per_source: default_max_connections_per_source(),
        }
    }
}

pub(crate) fn default_max_connections() -> usize {
    DEFAULT_MAX_CONNECTIONS
}

pub(crate) fn default_max_connections_per_source() -> usize {
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE
}

/// Checks connection caps: both at least 1, the per-source one at most the total.
pub(crate) fn connection_limits(
    total: usize,
    per_source: usize,
    invalid: impl Fn(String) -> ConfigError,
) -> Result<ConnectionLimits, ConfigError> {
    if total == 0 || per_source == 0 || per_source > total {
        return Err(invalid(format!(
            "{total} connections in all, {per_source} per source: both must be at least 1, the second at most the first"
        )));
    }
    Ok(ConnectionLimits { total, per_source })
}

fn default_migration_timeout_ms() -> u64 {
    60_000
}

fn default_hold_down_ms() -> u64 {
    5_000
}

fn default_failover_after_ms() -> u64 {
    3_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    interfaces: Vec<String>,
    #[serde(default = "default_mode")]
    xdp_mode: String,
    #[serde(default = "default_buckets")]
    buckets: u32,
    #[serde(default)]
    symmetric_hash: bool,
    #[serde(default)]
    hash_seed: u32,
    #[serde(default)]
    local_addresses: Vec<String>,
    admin_socket: PathBuf,
    #[serde(default)]
    control_listen: Option<String>,
    #[serde(default)]
    pin_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default)]
    destinations: Vec<String>,
    #[serde(default)]
    sources: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: String,
    id: u32,
    mac: String,
    interface: String,
}

fn default_mode() -> String {
    "driver".into()
}

fn default_buckets() -> u32 {
    handoff_common::names::limits::DEFAULT_BUCKETS
}

/// A statically configured member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberConfig {
    /// Name, e.g. `fd-a`.
    pub name: String,
    /// Id (index in the edge maps and the value in scope tables).
    pub id: u32,
    /// MAC address.
    pub mac: [u8; 6],
    /// Egress interface towards it.
    pub interface: String,
}

/// The migration manager's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManagerConfig {
    /// A migration's whole budget; past it, it aborts (before the flip) or
    /// reports the step that did not finish (after).
    pub migration_timeout: std::time::Duration,
    /// After a migration ends, automatic actions wait this long.
    pub hold_down: std::time::Duration,
    /// A member FAILED this long while in the scope is removed from it;
    /// `None` leaves that to the operator.
    pub failover_after: Option<std::time::Duration>,
    /// Caps on concurrent connections to the control port.
    pub connection_limits: ConnectionLimits,
}

/// A validated edge configuration.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    /// Interfaces the sprayer attaches to.
    pub interfaces: Vec<String>,
    /// Attach mode.
    pub xdp_mode: AttachMode,
    /// How flows map to buckets.
    pub hash: HashParams,
    /// The host's own addresses (always passed to the kernel).
    pub local_addresses: Vec<std::net::IpAddr>,
    /// Destination prefixes of cluster traffic.
    pub destinations: Vec<Prefix>,
    /// Source prefixes of cluster traffic.
    pub sources: Vec<Prefix>,
    /// Static members.
    pub members: Vec<MemberConfig>,
    /// Where the admin socket listens.
    pub admin_socket: PathBuf,
    /// Where the migration manager listens for nodes, if anywhere.
    pub control_listen: Option<std::net::SocketAddr>,
    /// The migration manager's limits.
    pub manager: ManagerConfig,
    /// Where on a bpffs the sprayer's links and maps are pinned. Set, the
    /// sprayer keeps forwarding by the last published scope while the daemon
    /// is down, and the next start takes it over; `handoff edge-detach`
    /// removes it. Unset, the sprayer stops with the daemon.
    pub pin_dir: Option<PathBuf>,
    /// The `[tls]` files as the file names them (relative to it).
    pub tls_files: Option<TlsPaths>,
    /// The manager's TLS identity: set by [`EdgeConfig::load`], which
    /// refuses a file with a `control_listen` and no valid `[tls]` section.
    pub tls: Option<TlsIdentity>,
    /// Where the Prometheus metrics listener binds (`[metrics] listen`);
    /// `None`: no listener.
    pub metrics: Option<std::net::SocketAddr>,
    /// Where the HTTP API listens (`[api] listen`); `None`: no API. Not
    /// loopback: HTTPS with the `[tls]` identity ([`crate::api`]).
    pub api: Option<std::net::SocketAddr>,
}

/// The line in `text` where `needle` first appears after `section`, for error messages.
pub(crate) fn line_of(text: &str, section: &str, needle: &str) -> usize {
    let start = text.find(section).unwrap_or(0);
    text[start..]
        .find(needle)
        .map(|i| text[..start + i].matches('\n').count() + 1)
        .unwrap_or(0)
}

/// Validates the `[[members]]` entries every config shares (name, id and
/// MAC), each against the entries before it.
#[derive(Debug, Default)]
pub(crate) struct MemberChecks {
    ids: HashSet<u32>,
    names: HashSet<String>,
}

impl MemberChecks {
    /// Checks entry `i`; returns its MAC. `invalid` builds the error from a
    /// section, a field, the text to find its line by, and a detail.
    pub(crate) fn check(
        &mut self,
        i: usize,
        name: &str,
        id: u32,
        mac: &str,
        invalid: &impl Fn(&str, &str, &str, String) -> ConfigError,
    ) -> Result<[u8; 6], ConfigError> {
        let field = |f: &str| format!("members[{i}].{f}");
        let mac = parse_mac(mac).ok_or_else(|| {
            invalid(
                "[[members]]",
                &field("mac"),
                mac,
                format!("{mac:?} is not a MAC address"),
            )
        })?;
        let id_text = format!("id = {id}");
        if id >= handoff_common::names::limits::MAX_MEMBERS {
            return Err(invalid(
                "[[members]]",
                &field("id"),
                &id_text,
                format!("{id} is not below {}", handoff_common::names::limits::MAX_MEMBERS),
            ));
        }
        if !self.ids.insert(id) {
            return Err(invalid(
                "[[members]]",
                &field("id"),
                &id_text,
                format!("id {id} is used twice"),
            ));
        }
        if !self.names.insert(name.to_string()) {
            return Err(invalid(
                "[[members]]",
                &field("name"),
                name,
                format!("name {name:?} is used twice"),
            ));
        }
        Ok(mac)
    }
}

/// Parses a MAC address `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

impl EdgeConfig {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut config = Self::parse(&text, path)?;
        if config.control_listen.is_some() || config.tls_files.is_some() {
            config.tls = Some(load_tls(
                config.tls_files.as_ref(),
                path,
                &text,
                MANAGER_NAME,
                "--manager",
            )?);
        }
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
        let xdp_mode: AttachMode = raw
            .edge
            .xdp_mode
            .parse()
            .map_err(|e| invalid("[edge]", "edge.xdp_mode", "xdp_mode", e))?;
        if raw.edge.interfaces.is_empty() {
            return Err(invalid(
                "[edge]",
                "edge.interfaces",
                "interfaces",
                "at least one interface is needed".into(),
            ));
        }
        let buckets = raw.edge.buckets;
        if !buckets.is_power_of_two() || !(2..=handoff_common::names::limits::MAX_BUCKETS).contains(&buckets) {
            return Err(invalid(
                "[edge]",
                "edge.buckets",
                "buckets",
                format!(
                    "{buckets} is not a power of two in 2..={}",
                    handoff_common::names::limits::MAX_BUCKETS
                ),
            ));
        }
        let mut local_addresses = Vec::new();
        for a in &raw.edge.local_addresses {
            local_addresses.push(a.parse().map_err(|_| {
                invalid(
                    "[edge]",
                    "edge.local_addresses",
                    a,
                    format!("{a:?} is not an IP address"),
                )
            })?);
        }
        let prefixes = |list: &[String], field: &str| -> Result<Vec<Prefix>, ConfigError> {
            list.iter()
                .map(|p| p.parse::<Prefix>().map_err(|e| invalid("[cluster]", field, p, e)))
                .collect()
        };
        let destinations = prefixes(&raw.cluster.destinations, "cluster.destinations")?;
        let metrics = raw
            .metrics
            .as_ref()
            .map(|m| {
                crate::metrics::parse_listen(&m.listen).map_err(|e| invalid("[metrics]", "metrics.listen", "listen", e))
            })
            .transpose()?;
        let api = raw
            .api
            .as_ref()
            .map(|a| {
                crate::api::parse_listen(&a.listen, raw.tls.is_some())
                    .map_err(|e| invalid("[api]", "api.listen", "listen", e))
            })
            .transpose()?;
        let sources = prefixes(&raw.cluster.sources, "cluster.sources")?;
        let mut members = Vec::new();
        let mut checks = MemberChecks::default();
        for (i, m) in raw.members.iter().enumerate() {
            let mac = checks.check(i, &m.name, m.id, &m.mac, &invalid)?;
            members.push(MemberConfig {
                name: m.name.clone(),
                id: m.id,
                mac,
                interface: m.interface.clone(),
            });
        }
        let control_listen = match &raw.edge.control_listen {
            Some(a) => Some(a.parse().map_err(|_| {
                invalid(
                    "[edge]",
                    "edge.control_listen",
                    a,
                    format!("{a:?} is not an address:port"),
                )
            })?),
            None => None,
        };
        if let Some(dir) = &raw.edge.pin_dir {
            if !dir.is_absolute() || dir.parent().is_none() {
                return Err(invalid(
                    "[edge]",
                    "edge.pin_dir",
                    "pin_dir",
                    format!(
                        "{:?} is not an absolute directory below a bpffs mount (e.g. \"/sys/fs/bpf/handoff-edge\")",
                        dir.display().to_string()
                    ),
                ));
            }
        }
        if raw.manager.migration_timeout_ms == 0 {
            return Err(invalid(
                "[manager]",
                "manager.migration_timeout_ms",
                "migration_timeout_ms",
                "a migration needs a time budget above 0".into(),
            ));
        }
        let manager = ManagerConfig {
            migration_timeout: std::time::Duration::from_millis(raw.manager.migration_timeout_ms),
            hold_down: std::time::Duration::from_millis(raw.manager.hold_down_ms),
            failover_after: (raw.manager.failover_after_ms > 0)
                .then(|| std::time::Duration::from_millis(raw.manager.failover_after_ms)),
            connection_limits: connection_limits(
                raw.manager.max_connections,
                raw.manager.max_connections_per_source,
                |detail| invalid("[manager]", "manager.max_connections", "max_connections", detail),
            )?,
        };
        Ok(Self {
            manager,
            interfaces: raw.edge.interfaces,
            xdp_mode,
            hash: HashParams {
                buckets,
                symmetric: raw.edge.symmetric_hash,
                seed: raw.edge.hash_seed,
            },
            local_addresses,
            destinations,
            sources,
            members,
            admin_socket: raw.edge.admin_socket,
            control_listen,
            pin_dir: raw.edge.pin_dir,
            tls_files: raw.tls.as_ref().map(|t| t.paths(path)),
            tls: None,
            metrics,
            api,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[edge]
interfaces = ["e0"]
admin_socket = "/tmp/x.sock"

[cluster]
destinations = ["10.0.9.0/24", "fd00::/64"]

[[members]]
name = "fd-a"
id = 0
mac = "02:00:00:00:00:01"
interface = "e1"
"#;

    fn err(text: &str) -> String {
        EdgeConfig::parse(text, Path::new("edge.toml")).unwrap_err().to_string()
    }

    #[test]
    fn the_metrics_listener_is_optional_and_checked() {
        let c = EdgeConfig::parse(GOOD, Path::new("edge.toml")).unwrap();
        assert_eq!(c.metrics, None, "off unless asked");
        let with = |listen: &str| GOOD.replace("[cluster]", &format!("[metrics]\nlisten = {listen:?}\n\n[cluster]"));
        let c = EdgeConfig::parse(&with("10.0.1.1:9464"), Path::new("edge.toml")).unwrap();
        assert_eq!(c.metrics, Some("10.0.1.1:9464".parse().unwrap()));
        let e = err(&with("10.0.1.1:0"));
        assert!(
            e.starts_with("edge.toml:7: field `metrics.listen`") && e.contains("other than 0"),
            "{e}"
        );
        let e = err(&with("localhost"));
        assert!(e.contains("metrics.listen") && e.contains("address:port"), "{e}");
        let e = err(&GOOD.replace("[cluster]", "[metrics]\nport = 9464\n\n[cluster]"));
        assert!(e.contains("port"), "{e}");
    }

    #[test]
    fn the_api_listener_is_loopback_unless_tls_is_configured() {
        let c = EdgeConfig::parse(GOOD, Path::new("edge.toml")).unwrap();
        assert_eq!(c.api, None, "off unless asked");
        let with = |listen: &str, tls: &str| {
            GOOD.replace("[cluster]", &format!("[api]\nlisten = {listen:?}\n{tls}\n[cluster]"))
        };
        let c = EdgeConfig::parse(&with("127.0.0.1:9480", ""), Path::new("edge.toml")).unwrap();
        assert_eq!(c.api, Some("127.0.0.1:9480".parse().unwrap()));
        let e = err(&with("10.0.1.1:9480", ""));
        assert!(
            e.starts_with("edge.toml:7: field `api.listen`")
                && e.contains("not a loopback address")
                && e.contains("[tls]"),
            "{e}"
        );
        let tls = "\n[tls]\nca = \"ca.pem\"\ncert = \"m.pem\"\nkey = \"m.key\"\n";
        let c = EdgeConfig::parse(&with("10.0.1.1:9480", tls), Path::new("edge.toml")).unwrap();
        assert_eq!(c.api, Some("10.0.1.1:9480".parse().unwrap()));
        assert!(err(&with("127.0.0.1:0", "")).contains("other than 0"));
    }

    #[test]
    fn a_good_file_parses() {
        let c = EdgeConfig::parse(GOOD, Path::new("edge.toml")).unwrap();
        assert_eq!(c.hash.buckets, 65536);
        assert_eq!(c.members[0].mac, [2, 0, 0, 0, 0, 1]);
        assert_eq!(c.destinations.len(), 2);
        assert_eq!(c.manager.failover_after, Some(std::time::Duration::from_secs(3)));
        let c = EdgeConfig::parse(
            &GOOD.replace(
                "[cluster]",
                "[manager]\nfailover_after_ms = 0\nhold_down_ms = 10\n\n[cluster]",
            ),
            Path::new("edge.toml"),
        )
        .unwrap();
        assert_eq!(c.manager.failover_after, None);
        assert_eq!(c.manager.hold_down, std::time::Duration::from_millis(10));
        assert_eq!(c.pin_dir, None, "unpinned unless asked");
    }

    #[test]
    fn the_pin_dir_is_an_absolute_directory() {
        let c = EdgeConfig::parse(
            &GOOD.replace("admin_socket", "pin_dir = \"/sys/fs/bpf/handoff-edge\"\nadmin_socket"),
            Path::new("edge.toml"),
        )
        .unwrap();
        assert_eq!(c.pin_dir, Some(PathBuf::from("/sys/fs/bpf/handoff-edge")));
        for bad in ["bpf/handoff-edge", "/", ""] {
            let e = err(&GOOD.replace("admin_socket", &format!("pin_dir = {bad:?}\nadmin_socket")));
            assert!(
                e.starts_with("edge.toml:4: field `edge.pin_dir`") && e.contains("not an absolute directory"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err(&GOOD.replace("02:00:00:00:00:01", "02:00:zz"));
        assert!(e.starts_with("edge.toml:12: field `members[0].mac`"), "{e}");
        let e = err(&GOOD.replace("10.0.9.0/24", "10.0.9.0/33"));
        assert!(e.starts_with("edge.toml:7: field `cluster.destinations`"), "{e}");
        let e = err(&GOOD.replace("admin_socket", "buckets = 1000\nadmin_socket"));
        assert!(e.contains("field `edge.buckets`") && e.contains("edge.toml:4"), "{e}");
        let e = err(&GOOD.replace("interfaces", "interfacez"));
        assert!(e.contains("unknown field `interfacez`") && e.contains("line 3"), "{e}");
        let e = err(&format!(
            "{GOOD}\n[[members]]\nname = \"fd-b\"\nid = 0\nmac = \"02:00:00:00:00:02\"\ninterface = \"e1\"\n"
        ));
        assert!(e.contains("members[1].id") && e.contains("used twice"), "{e}");
        let e = err(&GOOD.replace("[cluster]", "[manager]\nmigration_timeout_ms = 0\n\n[cluster]"));
        assert!(
            e.contains("manager.migration_timeout_ms") && e.contains("edge.toml:7"),
            "{e}"
        );
    }

    #[test]
    fn mac_parsing() {
        assert_eq!(parse_mac("aa:BB:cc:00:01:ff"), Some([0xaa, 0xbb, 0xcc, 0, 1, 0xff]));
        assert_eq!(parse_mac("aa:bb:cc:00:01"), None);
        assert_eq!(parse_mac("aa:bb:cc:00:01:ff:00"), None);
    }
}
