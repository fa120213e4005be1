//! The policy config file (TOML), validated as a whole when it is loaded.
//!
//! Every error names the file, the line and the field, so an operator can fix
//! a config before a node with it ever takes traffic:
//!
//! ```toml
//! hash_seed = 7                 # optional: seed of the backend choice
//! on_backend_removed = "reset"  # optional: a TCP connection to a backend a live
//!                               # change removed: "reset" (RST to the client) | "keep"
//!
//! [table]                       # optional
//! capacity = 262144             # entries per worker; a connection takes two
//! miss_policy = "drop"          # TCP without SYN and no flow: "drop" | "create"
//!
//! [timeouts]                    # optional, seconds
//! tcp_established = 7440
//! tcp_transitory = 240
//! tcp_closing = 10
//! udp = 300
//! other = 60
//!
//! [[neighbor]]                  # next hops by name
//! name = "router"
//! mac = "02:00:00:00:00:fe"
//!
//! [default]                     # required
//! action = "forward"            # traffic for no service: "forward" | "drop"
//! gateway = "router"            # next hop of that traffic and of all replies
//! vip = "drop"                  # traffic to a VIP that no service matches:
//!                               # "drop" | "reject" (ICMP unreachable)
//!
//! [icmp]                        # optional
//! echo = "reply"                # echo requests to a VIP: "reply" | "drop"
//! errors_per_second = 100       # ICMP errors each worker may originate (0: none)
//!
//! [[service]]
//! name = "web"                  # optional
//! vip = "10.0.9.1"
//! protocol = "tcp"              # "tcp" | "udp"
//! port = 80
//!
//! [[service.backend]]
//! address = "10.1.0.1"
//! port = 8080
//! weight = 2                    # optional, default 1
//! drain = true                  # optional, default false: no new flows
//! mac = "02:00:00:00:01:01"     # or neighbor = "name"; neither: via the gateway
//! ```
//!
//! Parsing has two stages: serde reads the text into raw types whose leaves
//! are [`toml::Spanned`] strings and integers (so that syntax, unknown fields
//! and wrong types are reported by `toml`, with a span), then validation
//! turns them into [`PolicyConfig`] and reports everything else with the span
//! of the offending value.

use super::{MissPolicy, TableConfig, MAX_CAPACITY};
use crate::flow::policy::BACKEND_TABLE_SIZE;
use handoff_common::net::ipproto;
use serde::{Deserialize, Serialize};
use std::{
    collections::HashMap,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
    time::Duration,
};
use toml::Spanned;

/// The default seed of the backend choice. Differs from the edge's default
/// seed (0) so that a node's share of edge buckets does not line up with a
/// subset of backend-table entries.
pub const DEFAULT_HASH_SEED: u32 = 0x6261_636b;
/// The longest configurable timeout (30 days).
pub const MAX_TIMEOUT_SECS: i64 = 30 * 24 * 3600;

/// A validated policy config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Capacity, timeouts and miss policy of each worker's flow table.
    pub table: TableConfig,
    /// Seed of the flow hash that picks backends.
    pub hash_seed: u32,
    /// The next hops; actions refer to them by index.
    pub neighbors: Vec<Neighbor>,
    /// Index of the gateway in `neighbors`.
    pub gateway: u16,
    /// What happens to traffic for no service.
    pub default_action: DefaultAction,
    /// What happens to traffic for a VIP that matches no service. It is
    /// never forwarded: the gateway would spray it straight back.
    pub unmatched_vip: UnmatchedVip,
    /// Echo requests to a VIP, and the ICMP errors a node originates.
    pub icmp: IcmpConfig,
    /// The services.
    pub services: Vec<ServiceConfig>,
    /// What happens to a TCP connection whose backend a live change removed.
    pub on_backend_removed: OnBackendRemoved,
}

/// What happens to an established TCP connection whose backend was removed
/// by a live change (a UDP flow always moves to a live backend).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendRemoved {
    /// At its next packet (either direction) the client gets a TCP RST
    /// from the VIP (RFC 9293 §3.10.7.1) and the connection is forgotten.
    #[default]
    Reset,
    /// It keeps going to the removed backend until it ends or times out.
    Keep,
}

/// A next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Neighbor {
    /// Its name (for a MAC given inline, the backend's field path).
    pub name: String,
    /// Its MAC address.
    pub mac: [u8; 6],
}

/// What happens to traffic that matches no service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultAction {
    /// Forward it unchanged to the gateway.
    Forward,
    /// Drop it.
    Drop,
}

/// What happens to traffic for a VIP that matches no service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnmatchedVip {
    /// Drop it, counted (`drop_no_service`).
    Drop,
    /// Drop it, counted, and answer with ICMP port (or protocol)
    /// unreachable from the VIP, within `icmp.errors_per_second`.
    Reject,
}

/// What happens to echo requests for a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoPolicy {
    /// The node that gets it answers (as Katran's edge does).
    Reply,
    /// Drop it, counted (`drop_policy`).
    Drop,
}

/// ICMP settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpConfig {
    /// Echo requests for a VIP.
    pub echo: EchoPolicy,
    /// ICMP errors (time exceeded, too big, unreachable) one worker may
    /// originate per second, in bursts of as many (RFC 1812 §4.3.2.8); 0
    /// sends none (the drops are counted all the same).
    pub errors_per_second: u32,
}

impl Default for IcmpConfig {
    fn default() -> Self {
        Self {
            echo: EchoPolicy::Reply,
            errors_per_second: 100,
        }
    }
}

/// A transport protocol a service listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => ipproto::TCP,
            Self::Udp => ipproto::UDP,
        }
    }
}

/// A virtual service and its backend pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Its name (by default `vip:port/protocol`).
    pub name: String,
    /// The virtual IP.
    pub vip: IpAddr,
    /// The protocol.
    pub protocol: Protocol,
    /// The port.
    pub port: u16,
    /// The backends (at least one).
    pub backends: Vec<BackendConfig>,
}

/// A backend of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendConfig {
    /// Its address (same family as the VIP).
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its relative share of new flows (> 0).
    pub weight: u32,
    /// Draining: it takes no new flows, its connections go on.
    pub draining: bool,
    /// Index of its next hop in the neighbor table.
    pub next_hop: u16,
}

/// What is wrong with a config value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The TOML does not parse or a value has the wrong type.
    #[error("{message}")]
    Toml {
        /// What `toml` said.
        message: String,
    },
    /// A field this config does not have (a typo?).
    #[error("unknown field")]
    UnknownField,
    /// A required field is absent.
    #[error("missing field")]
    MissingField,
    /// Not an IP address.
    #[error("{value:?} is not an IP address")]
    BadAddress {
        /// The value.
        value: String,
    },
    /// Not a MAC address.
    #[error("{value:?} is not a MAC address (like 02:00:00:00:00:01)")]
    BadMac {
        /// The value.
        value: String,
    },
    /// A number out of range.
    #[error("{value} is outside {min}..={max}")]
    OutOfRange {
        /// The value.
        value: i64,
        /// The least allowed.
        min: i64,
        /// The most allowed.
        max: i64,
    },
    /// A word that is none of the allowed ones.
    #[error("{value:?} is not one of {expected}")]
    UnknownValue {
        /// The value.
        value: String,
        /// The allowed words.
        expected: &'static str,
    },
    /// A service without backends.
    #[error("the backend pool is empty")]
    EmptyPool,
    /// A service whose every backend drains: new flows would have nowhere to go.
    #[error("every backend drains: at least one must take new flows")]
    AllDraining,
    /// More backends than the backend table has entries.
    #[error("{count} backends, at most {max}")]
    TooManyBackends {
        /// Backends given.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// More neighbors than a next-hop index can address.
    #[error("{count} neighbors, at most {max}")]
    TooManyNeighbors {
        /// Neighbors in the table.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A second service with the same VIP, protocol and port.
    #[error("the same VIP, protocol and port as the service on line {first_line}")]
    DuplicateService {
        /// Where the first one is.
        first_line: usize,
    },
    /// A second backend with the same address and port in one service.
    #[error("the same address and port as the backend on line {first_line}")]
    DuplicateBackend {
        /// Where the first one is.
        first_line: usize,
    },
    /// A second neighbor with the same name.
    #[error("a neighbor of this name is already defined on line {first_line}")]
    DuplicateNeighbor {
        /// Where the first one is.
        first_line: usize,
    },
    /// A reference to a neighbor that is not defined.
    #[error("no neighbor is named {name:?}")]
    UnknownNeighbor {
        /// The name.
        name: String,
    },
    /// A backend of another address family than its VIP (no NAT64).
    #[error("{address} is not of the same family as the VIP {vip}")]
    FamilyMismatch {
        /// The backend address.
        address: IpAddr,
        /// The VIP.
        vip: IpAddr,
    },
    /// Both `mac` and `neighbor` are given.
    #[error("give `mac` or `neighbor`, not both")]
    MacAndNeighbor,
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("{}: cannot read: {source}", file.display())]
    Read {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A value is wrong.
    #[error("{}:{line}: {field}: {problem}", file.display())]
    Invalid {
        /// The file.
        file: PathBuf,
        /// The line (from 1).
        line: usize,
        /// The field, as a path like `service[1].backend[0].port`.
        field: String,
        /// What is wrong.
        problem: Problem,
    },
    /// A required section is absent.
    #[error("{}: missing section [{section}]", file.display())]
    MissingSection {
        /// The file.
        file: PathBuf,
        /// The section.
        section: &'static str,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    hash_seed: Option<Spanned<i64>>,
    on_backend_removed: Option<Spanned<String>>,
    table: Option<RawTable>,
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    neighbor: Vec<RawNeighbor>,
    default: Option<RawDefault>,
    icmp: Option<RawIcmp>,
    #[serde(default)]
    service: Vec<RawService>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIcmp {
    echo: Option<Spanned<String>>,
    errors_per_second: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    capacity: Option<Spanned<i64>>,
    miss_policy: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_established: Option<Spanned<i64>>,
    tcp_transitory: Option<Spanned<i64>>,
    tcp_closing: Option<Spanned<i64>>,
    udp: Option<Spanned<i64>>,
    other: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNeighbor {
    name: Spanned<String>,
    mac: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefault {
    action: Spanned<String>,
    gateway: Spanned<String>,
    vip: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Option<Spanned<String>>,
    vip: Spanned<String>,
    protocol: Spanned<String>,
    port: Spanned<i64>,
    #[serde(default)]
    backend: Vec<RawBackend>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: Spanned<String>,
    port: Spanned<i64>,
    weight: Option<Spanned<i64>>,
    drain: Option<bool>,
    mac: Option<Spanned<String>>,
    neighbor: Option<Spanned<String>>,
}

impl PolicyConfig {
    /// Reads and validates the config at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Validates config `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let source = Source { text, file };
        let raw: RawConfig = toml::from_str(text).map_err(|e| source.toml_error(&e))?;
        source.validate(raw)
    }
}

impl PolicyConfig {
    /// This config with its neighbor table laid out so that every neighbor
    /// of `previous` keeps its index (matched by MAC, the only thing a next
    /// hop is used for): connections installed under `previous` name next
    /// hops by index. Neighbors only this config has come after them; the
    /// gateway and the backends' next hops are renumbered to match.
    /// Neighbors only `previous` has stay, so its connections keep their
    /// next hop.
    pub fn with_neighbors_of(mut self, previous: &PolicyConfig) -> Self {
        let mut neighbors = previous.neighbors.clone();
        let renumbered: Vec<u16> = self
            .neighbors
            .iter()
            .map(|n| match neighbors.iter().position(|p| p.mac == n.mac) {
                Some(i) => i as u16,
                None => {
                    neighbors.push(n.clone());
                    (neighbors.len() - 1) as u16
                }
            })
            .collect();
        let map = |index: u16| renumbered.get(usize::from(index)).copied().unwrap_or(index);
        self.gateway = map(self.gateway);
        for backend in self.services.iter_mut().flat_map(|s| s.backends.iter_mut()) {
            backend.next_hop = map(backend.next_hop);
        }
        self.neighbors = neighbors;
        self
    }
}

/// The text being validated, to turn spans into errors.
struct Source<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Source<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        1 + self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count()
    }

    fn invalid(&self, span: Range<usize>, field: impl Into<String>, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_owned(),
            line: self.line_of(span.start),
            field: field.into(),
            problem,
        }
    }

    /// Maps a `toml` error to the line and the field it concerns. Serde names
    /// the field of unknown- and missing-field errors in backticks; for other
    /// errors the field is the key whose value the span covers.
    fn toml_error(&self, error: &toml::de::Error) -> ConfigError {
        let span = error.span().unwrap_or(0..0);
        let message = error.message().trim().to_owned();
        let named = |prefix: &str| {
            message
                .strip_prefix(prefix)
                .and_then(|rest| rest.split('`').nth(1))
                .map(str::to_owned)
        };
        let (field, problem) = if let Some(field) = named("unknown field") {
            (field, Problem::UnknownField)
        } else if let Some(field) = named("missing field") {
            (field, Problem::MissingField)
        } else {
            (self.key_at(span.start), Problem::Toml { message })
        };
        self.invalid(span, field, problem)
    }

    /// The key of the `key = value` on the line of `offset`, or that line's
    /// table header.
    fn key_at(&self, offset: usize) -> String {
        let before = &self.text.as_bytes()[..offset.min(self.text.len())];
        // Just after a newline (or 0) is always a char boundary.
        let start = before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let line = self
            .text
            .get(start..)
            .and_then(|rest| rest.lines().next())
            .unwrap_or("");
        line.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .trim_matches(|c| c == '[' || c == ']')
            .to_owned()
    }

    fn validate(&self, raw: RawConfig) -> Result<PolicyConfig, ConfigError> {
        let table = self.table(raw.table, raw.timeouts)?;
        let hash_seed = match raw.hash_seed {
            Some(seed) => self.int(&seed, "hash_seed", 0, u32::MAX as i64)? as u32,
            None => DEFAULT_HASH_SEED,
        };
        let mut neighbors = Neighbors::default();
        for (i, n) in raw.neighbor.iter().enumerate() {
            let field = format!("neighbor[{i}]");
            let mac = self.mac(&n.mac, &format!("{field}.mac"))?;
            if let Some(&first) = neighbors.by_name.get(n.name.get_ref().as_str()) {
                let first_line = self.line_of(neighbors.spans[first].start);
                return Err(self.invalid(
                    n.name.span(),
                    format!("{field}.name"),
                    Problem::DuplicateNeighbor { first_line },
                ));
            }
            neighbors.add(self, n.name.get_ref(), n.name.span(), mac, &field)?;
        }
        let Some(default) = raw.default else {
            return Err(ConfigError::MissingSection {
                file: self.file.to_owned(),
                section: "default",
            });
        };
        let default_action = match default.action.get_ref().as_str() {
            "forward" => DefaultAction::Forward,
            "drop" => DefaultAction::Drop,
            other => {
                return Err(self.invalid(
                    default.action.span(),
                    "default.action",
                    Problem::UnknownValue {
                        value: other.to_owned(),
                        expected: "forward, drop",
                    },
                ))
            }
        };
        let gateway = neighbors.named(self, &default.gateway, "default.gateway")?;
        let unmatched_vip = match &default.vip {
            None => UnmatchedVip::Drop,
            Some(v) => self.choice(
                v,
                "default.vip",
                &[("drop", UnmatchedVip::Drop), ("reject", UnmatchedVip::Reject)],
                "drop, reject",
            )?,
        };
        let mut icmp = IcmpConfig::default();
        if let Some(raw) = &raw.icmp {
            if let Some(echo) = &raw.echo {
                icmp.echo = self.choice(
                    echo,
                    "icmp.echo",
                    &[("reply", EchoPolicy::Reply), ("drop", EchoPolicy::Drop)],
                    "reply, drop",
                )?;
            }
            if let Some(rate) = &raw.errors_per_second {
                icmp.errors_per_second = self.int(rate, "icmp.errors_per_second", 0, 1_000_000)? as u32;
            }
        }
        let on_backend_removed = match &raw.on_backend_removed {
            None => OnBackendRemoved::default(),
            Some(v) => self.choice(
                v,
                "on_backend_removed",
                &[("reset", OnBackendRemoved::Reset), ("keep", OnBackendRemoved::Keep)],
                "reset, keep",
            )?,
        };
        let mut services = Vec::with_capacity(raw.service.len());
        let mut seen: HashMap<(IpAddr, Protocol, u16), usize> = HashMap::new();
        for (i, s) in raw.service.iter().enumerate() {
            services.push(self.service(s, i, gateway, &mut neighbors, &mut seen)?);
        }
        Ok(PolicyConfig {
            table,
            hash_seed,
            neighbors: neighbors.list,
            gateway,
            default_action,
            unmatched_vip,
            icmp,
            services,
            on_backend_removed,
        })
    }

    /// One of `choices` by name, or an error listing `expected`.
    fn choice<T: Copy>(
        &self,
        value: &Spanned<String>,
        field: &str,
        choices: &[(&str, T)],
        expected: &'static str,
    ) -> Result<T, ConfigError> {
        let name = value.get_ref().as_str();
        choices
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(_, v)| v)
            .ok_or_else(|| {
                self.invalid(
                    value.span(),
                    field,
                    Problem::UnknownValue {
                        value: name.to_owned(),
                        expected,
                    },
                )
            })
    }

    fn table(&self, table: Option<RawTable>, timeouts: Option<RawTimeouts>) -> Result<TableConfig, ConfigError> {
        let mut config = TableConfig::default();
        if let Some(t) = table {
            if let Some(c) = &t.capacity {
                config.capacity = self.int(c, "table.capacity", 2, MAX_CAPACITY as i64)? as usize;
            }
            if let Some(p) = &t.miss_policy {
                config.miss_policy = match p.get_ref().as_str() {
                    "drop" => MissPolicy::Drop,
                    "create" => MissPolicy::Create,
                    other => {
                        return Err(self.invalid(
                            p.span(),
                            "table.miss_policy",
                            Problem::UnknownValue {
                                value: other.to_owned(),
                                expected: "drop, create",
                            },
                        ))
                    }
                };
            }
        }
        if let Some(t) = timeouts {
            let c = &mut config.timeouts;
            let fields: [(&Option<Spanned<i64>>, &mut Duration, &str); 5] = [
                (&t.tcp_established, &mut c.tcp_established, "timeouts.tcp_established"),
                (&t.tcp_transitory, &mut c.tcp_transitory, "timeouts.tcp_transitory"),
                (&t.tcp_closing, &mut c.tcp_closing, "timeouts.tcp_closing"),
                (&t.udp, &mut c.udp, "timeouts.udp"),
                (&t.other, &mut c.other, "timeouts.other"),
            ];
            for (value, target, field) in fields {
                if let Some(v) = value {
                    *target = Duration::from_secs(self.int(v, field, 1, MAX_TIMEOUT_SECS)? as u64);
                }
            }
        }
        Ok(config)
    }

    fn service(
        &self,
        s: &RawService,
        i: usize,
        gateway: u16,
        neighbors: &mut Neighbors,
        seen: &mut HashMap<(IpAddr, Protocol, u16), usize>,
    ) -> Result<ServiceConfig, ConfigError> {
        let field = format!("service[{i}]");
        let vip = self.address(&s.vip, &format!("{field}.vip"))?;
        let protocol = match s.protocol.get_ref().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(self.invalid(
                    s.protocol.span(),
                    format!("{field}.protocol"),
                    Problem::UnknownValue {
                        value: other.to_owned(),
                        expected: "tcp, udp",
                    },
                ))
            }
        };
        let port = self.port(&s.port, &format!("{field}.port"))?;
        if let Some(first) = seen.insert((vip, protocol, port), s.vip.span().start) {
            return Err(self.invalid(
                s.vip.span(),
                field,
                Problem::DuplicateService {
                    first_line: self.line_of(first),
                },
            ));
        }
        if s.backend.is_empty() {
            return Err(self.invalid(s.vip.span(), format!("{field}.backend"), Problem::EmptyPool));
        }
        let max = BACKEND_TABLE_SIZE as usize;
        if s.backend.len() > max {
            return Err(self.invalid(
                s.vip.span(),
                format!("{field}.backend"),
                Problem::TooManyBackends {
                    count: s.backend.len(),
                    max,
                },
            ));
        }
        let mut backends = Vec::with_capacity(s.backend.len());
        let mut seen_backends = HashMap::with_capacity(s.backend.len());
        for (j, b) in s.backend.iter().enumerate() {
            let field = format!("{field}.backend[{j}]");
            let address = self.address(&b.address, &format!("{field}.address"))?;
            if address.is_ipv4() != vip.is_ipv4() {
                return Err(self.invalid(
                    b.address.span(),
                    format!("{field}.address"),
                    Problem::FamilyMismatch { address, vip },
                ));
            }
            let port = self.port(&b.port, &format!("{field}.port"))?;
            if let Some(first) = seen_backends.insert((address, port), b.address.span().start) {
                return Err(self.invalid(
                    b.address.span(),
                    format!("{field}.address"),
                    Problem::DuplicateBackend {
                        first_line: self.line_of(first),
                    },
                ));
            }
            let weight = match &b.weight {
                Some(w) => self.int(w, &format!("{field}.weight"), 1, u32::MAX as i64)? as u32,
                None => 1,
            };
            let next_hop = match (&b.mac, &b.neighbor) {
                (Some(mac), Some(_)) => {
                    return Err(self.invalid(mac.span(), format!("{field}.mac"), Problem::MacAndNeighbor))
                }
                (Some(mac), None) => {
                    let parsed = self.mac(mac, &format!("{field}.mac"))?;
                    neighbors.for_mac(self, parsed, mac.span(), &field)?
                }
                (None, Some(name)) => neighbors.named(self, name, &format!("{field}.neighbor"))?,
                (None, None) => gateway,
            };
            backends.push(BackendConfig {
                address,
                port,
                weight,
                draining: b.drain.unwrap_or(false),
                next_hop,
            });
        }
        if backends.iter().all(|b| b.draining) {
            return Err(self.invalid(s.vip.span(), format!("{field}.backend"), Problem::AllDraining));
        }
        let name = match &s.name {
            Some(n) => n.get_ref().clone(),
            None => format!("{vip}:{port}/{}", s.protocol.get_ref()),
        };
        Ok(ServiceConfig {
            name,
            vip,
            protocol,
            port,
            backends,
        })
    }

    fn int(&self, v: &Spanned<i64>, field: &str, min: i64, max: i64) -> Result<i64, ConfigError> {
        let value = *v.get_ref();
        if (min..=max).contains(&value) {
            Ok(value)
        } else {
            Err(self.invalid(v.span(), field, Problem::OutOfRange { value, min, max }))
        }
    }

    fn port(&self, v: &Spanned<i64>, field: &str) -> Result<u16, ConfigError> {
        Ok(self.int(v, field, 1, u16::MAX as i64)? as u16)
    }

    fn address(&self, v: &Spanned<String>, field: &str) -> Result<IpAddr, ConfigError> {
        v.get_ref().parse().map_err(|_| {
            self.invalid(
                v.span(),
                field,
                Problem::BadAddress {
                    value: v.get_ref().clone(),
                },
            )
        })
    }

    fn mac(&self, v: &Spanned<String>, field: &str) -> Result<[u8; 6], ConfigError> {
        parse_mac(v.get_ref()).ok_or_else(|| {
            self.invalid(
                v.span(),
                field,
                Problem::BadMac {
                    value: v.get_ref().clone(),
                },
            )
        })
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (hex, `:` or `-` separated).
fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The neighbor table under construction.
#[derive(Default)]
struct Neighbors {
    list: Vec<Neighbor>,
    spans: Vec<Range<usize>>,
    by_name: HashMap<String, usize>,
}

impl Neighbors {
    fn add(
        &mut self,
        source: &Source<'_>,
        name: &str,
        span: Range<usize>,
        mac: [u8; 6],
        field: &str,
    ) -> Result<u16, ConfigError> {
        let max = u16::MAX as usize + 1;
        let index = u16::try_from(self.list.len()).map_err(|_| {
            source.invalid(
                span.clone(),
                field,
                Problem::TooManyNeighbors {
                    count: self.list.len() + 1,
                    max,
                },
            )
        })?;
        self.by_name.insert(name.to_owned(), self.list.len());
        self.list.push(Neighbor {
            name: name.to_owned(),
            mac,
        });
        self.spans.push(span);
        Ok(index)
    }

    /// The neighbor a reference names.
    fn named(&self, source: &Source<'_>, name: &Spanned<String>, field: &str) -> Result<u16, ConfigError> {
        self.by_name
            .get(name.get_ref().as_str())
            .map(|&i| i as u16)
            .ok_or_else(|| {
                source.invalid(
                    name.span(),
                    field,
                    Problem::UnknownNeighbor {
                        name: name.get_ref().clone(),
                    },
                )
            })
    }

    /// The neighbor with `mac`, added under the backend's field path if new.
    fn for_mac(
        &mut self,
        source: &Source<'_>,
        mac: [u8; 6],
        span: Range<usize>,
        field: &str,
    ) -> Result<u16, ConfigError> {
        match self.list.iter().position(|n| n.mac == mac) {
            Some(i) => Ok(i as u16),
            None => self.add(source, field, span, mac, &format!("{field}.mac")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::Timeouts;

    const GOOD: &str = r#"
hash_seed = 7

[table]
capacity = 1024
miss_policy = "create"

[timeouts]
tcp_established = 3600
udp = 30

[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[[neighbor]]
name = "svc-2"
mac = "02:00:00:00:01:02"

[default]
action = "drop"
gateway = "router"

[[service]]
name = "web"
vip = "10.0.9.1"
protocol = "tcp"
port = 80

[[service.backend]]
address = "10.1.0.1"
port = 8080
weight = 3
mac = "02:00:00:00:01:01"

[[service.backend]]
address = "10.1.0.2"
port = 8080
neighbor = "svc-2"

[[service]]
vip = "fd00::9:1"
protocol = "udp"
port = 53

[[service.backend]]
address = "fd00::1:1"
port = 5353
"#;

    fn parse(text: &str) -> Result<PolicyConfig, ConfigError> {
        PolicyConfig::parse(text, Path::new("policy.toml"))
    }

    /// Replaces the first `from` in GOOD by `to` and returns the error.
    fn error_after(from: &str, to: &str) -> (usize, String, Problem, String) {
        assert!(GOOD.contains(from), "{from}");
        let error = parse(&GOOD.replacen(from, to, 1)).unwrap_err();
        let text = error.to_string();
        match error {
            ConfigError::Invalid {
                line, field, problem, ..
            } => (line, field, problem, text),
            other => panic!("expected an invalid value, got {other:?}"),
        }
    }

    fn line_of(needle: &str) -> usize {
        let at = GOOD.find(needle).unwrap();
        1 + GOOD[..at].matches('\n').count()
    }

    #[test]
    fn a_good_config_is_read_in_full() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.hash_seed, 7);
        assert_eq!(c.table.capacity, 1024);
        assert_eq!(c.table.miss_policy, MissPolicy::Create);
        assert_eq!(c.table.timeouts.tcp_established, Duration::from_secs(3600));
        assert_eq!(c.table.timeouts.udp, Duration::from_secs(30));
        assert_eq!(c.table.timeouts.tcp_closing, Timeouts::default().tcp_closing);
        assert_eq!(c.default_action, DefaultAction::Drop);
        assert_eq!(c.neighbors[c.gateway as usize].name, "router");
        let web = &c.services[0];
        assert_eq!((web.name.as_str(), web.protocol, web.port), ("web", Protocol::Tcp, 80));
        assert_eq!(web.backends[0].weight, 3);
        assert_eq!(c.neighbors[web.backends[0].next_hop as usize].mac, [2, 0, 0, 0, 1, 1]);
        assert_eq!(c.neighbors[web.backends[1].next_hop as usize].name, "svc-2");
        assert_eq!(web.backends[1].weight, 1);
        let dns = &c.services[1];
        assert_eq!(dns.name, "fd00::9:1:53/udp");
        assert_eq!(dns.backends[0].next_hop, c.gateway);
        assert_eq!(c.neighbors.len(), 3);
    }

    #[test]
    fn defaults_apply_when_sections_are_absent() {
        let c = parse("[[neighbor]]\nname = \"r\"\nmac = \"02:00:00:00:00:01\"\n[default]\naction = \"forward\"\ngateway = \"r\"\n").unwrap();
        assert_eq!(c.table, TableConfig::default());
        assert_eq!(c.hash_seed, DEFAULT_HASH_SEED);
        assert!(c.services.is_empty());
        assert_eq!(c.default_action, DefaultAction::Forward);
    }

    #[test]
    fn a_bad_address_names_its_line_and_field() {
        let (line, field, problem, text) = error_after("\"10.1.0.2\"", "\"10.1.0.256\"");
        assert_eq!(line, line_of("address = \"10.1.0.2\""));
        assert_eq!(field, "service[0].backend[1].address");
        assert_eq!(
            problem,
            Problem::BadAddress {
                value: "10.1.0.256".into()
            }
        );
        assert!(
            text.starts_with(&format!("policy.toml:{line}: service[0].backend[1].address: ")),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_field_names_its_line_and_field() {
        let (line, field, problem, text) = error_after("weight = 3", "wieght = 3");
        assert_eq!(line, line_of("weight = 3"));
        assert_eq!(field, "wieght");
        assert_eq!(problem, Problem::UnknownField);
        assert!(
            text.starts_with(&format!("policy.toml:{line}: wieght: unknown field")),
            "{text}"
        );
    }

    #[test]
    fn a_zero_weight_names_its_line_and_field() {
        let (line, field, problem, _) = error_after("weight = 3", "weight = 0");
        assert_eq!(line, line_of("weight = 3"));
        assert_eq!(field, "service[0].backend[0].weight");
        assert_eq!(
            problem,
            Problem::OutOfRange {
                value: 0,
                min: 1,
                max: u32::MAX as i64
            }
        );
    }

    #[test]
    fn an_empty_pool_names_its_service() {
        let text = GOOD.replacen("[[service.backend]]\naddress = \"fd00::1:1\"\nport = 5353\n", "", 1);
        match parse(&text) {
            Err(ConfigError::Invalid {
                line, field, problem, ..
            }) => {
                assert_eq!(line, line_of("vip = \"fd00::9:1\""));
                assert_eq!(field, "service[1].backend");
                assert_eq!(problem, Problem::EmptyPool);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_duplicate_service_names_both_lines() {
        let (line, field, problem, _) = error_after(
            "vip = \"fd00::9:1\"\nprotocol = \"udp\"\nport = 53",
            "vip = \"10.0.9.1\"\nprotocol = \"tcp\"\nport = 80",
        );
        assert_eq!(line, line_of("vip = \"fd00::9:1\""));
        assert_eq!(field, "service[1]");
        assert_eq!(
            problem,
            Problem::DuplicateService {
                first_line: line_of("vip = \"10.0.9.1\"")
            }
        );
    }

    #[test]
    fn a_port_out_of_range_names_its_line_and_field() {
        let (line, field, problem, _) = error_after("port = 8080", "port = 65536");
        assert_eq!(line, line_of("port = 8080"));
        assert_eq!(field, "service[0].backend[0].port");
        assert_eq!(
            problem,
            Problem::OutOfRange {
                value: 65536,
                min: 1,
                max: 65535
            }
        );
        let (_, field, ..) = error_after("port = 80\n", "port = 0\n");
        assert_eq!(field, "service[0].port");
    }

    #[test]
    fn other_mistakes_are_caught() {
        type Case = (&'static str, &'static str, &'static str, fn(&Problem) -> bool);
        let cases: [Case; 10] = [
            (
                "\"02:00:00:00:01:01\"",
                "\"02:00:00:01:01\"",
                "service[0].backend[0].mac",
                |p| matches!(p, Problem::BadMac { .. }),
            ),
            (
                "neighbor = \"svc-2\"",
                "neighbor = \"svc-9\"",
                "service[0].backend[1].neighbor",
                |p| matches!(p, Problem::UnknownNeighbor { .. }),
            ),
            (
                "neighbor = \"svc-2\"",
                "mac = \"02:00:00:00:00:09\"\nneighbor = \"svc-2\"",
                "service[0].backend[1].mac",
                |p| *p == Problem::MacAndNeighbor,
            ),
            (
                "address = \"fd00::1:1\"",
                "address = \"10.1.1.1\"",
                "service[1].backend[0].address",
                |p| matches!(p, Problem::FamilyMismatch { .. }),
            ),
            ("\"10.1.0.2\"", "\"10.1.0.1\"", "service[0].backend[1].address", |p| {
                matches!(p, Problem::DuplicateBackend { .. })
            }),
            ("\"udp\"", "\"sctp\"", "service[1].protocol", |p| {
                matches!(p, Problem::UnknownValue { .. })
            }),
            ("\"create\"", "\"accept\"", "table.miss_policy", |p| {
                matches!(p, Problem::UnknownValue { .. })
            }),
            ("capacity = 1024", "capacity = 1", "table.capacity", |p| {
                matches!(p, Problem::OutOfRange { .. })
            }),
            ("udp = 30", "udp = 0", "timeouts.udp", |p| {
                matches!(p, Problem::OutOfRange { .. })
            }),
            ("name = \"svc-2\"", "name = \"router\"", "neighbor[1].name", |p| {
                matches!(p, Problem::DuplicateNeighbor { .. })
            }),
        ];
        for (from, to, expect, is_expected) in cases {
            let (line, field, problem, text) = error_after(from, to);
            assert_eq!(field, expect, "{text}");
            assert!(is_expected(&problem), "{text}");
            assert_eq!(line, line_of(from), "{text}");
        }
    }

    #[test]
    fn type_errors_and_missing_fields_name_the_field() {
        let (line, field, problem, _) = error_after("port = 8080", "port = \"8080\"");
        assert_eq!(line, line_of("port = 8080"));
        assert_eq!(field, "port");
        assert!(matches!(problem, Problem::Toml { .. }));
        // A missing field is reported at its table's header.
        let (line, field, problem, _) = error_after("protocol = \"tcp\"\n", "");
        assert_eq!((field.as_str(), problem), ("protocol", Problem::MissingField));
        assert_eq!(line, line_of("[[service]]"));
        let (line, field, problem, _) = error_after("capacity = 1024", "capcity = 1024");
        assert_eq!((field.as_str(), problem), ("capcity", Problem::UnknownField));
        assert_eq!(line, line_of("capacity = 1024"));
        let (line, _, problem, _) = error_after("[default]", "[default");
        assert_eq!(line, line_of("[default]"));
        assert!(matches!(problem, Problem::Toml { .. }));
    }

    #[test]
    fn the_live_change_settings_parse_and_are_checked() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.on_backend_removed, OnBackendRemoved::Reset);
        assert!(c.services.iter().flat_map(|s| &s.backends).all(|b| !b.draining));
        let keep = parse(&format!("on_backend_removed = \"keep\"\n{GOOD}")).unwrap();
        assert_eq!(keep.on_backend_removed, OnBackendRemoved::Keep);
        let draining = parse(&GOOD.replacen("weight = 3", "weight = 3\ndrain = true", 1)).unwrap();
        assert!(draining.services[0].backends[0].draining);
        assert!(!draining.services[0].backends[1].draining);
        let (_, field, problem, _) = error_after("port = 5353", "port = 5353\ndrain = true");
        assert_eq!((field.as_str(), problem), ("service[1].backend", Problem::AllDraining));
        let bad = parse(&format!("on_backend_removed = \"drop\"\n{GOOD}")).unwrap_err();
        assert!(
            matches!(&bad, ConfigError::Invalid { field, problem: Problem::UnknownValue { .. }, .. } if field == "on_backend_removed"),
            "{bad}"
        );
    }

    #[test]
    fn a_missing_default_section_is_named() {
        let text = GOOD.replacen("[default]\naction = \"drop\"\ngateway = \"router\"\n", "", 1);
        let e = parse(&text).unwrap_err();
        assert!(matches!(e, ConfigError::MissingSection { section: "default", .. }));
        assert_eq!(e.to_string(), "policy.toml: missing section [default]");
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let e = PolicyConfig::load(Path::new("/nonexistent/policy.toml")).unwrap_err();
        assert!(e.to_string().starts_with("/nonexistent/policy.toml: cannot read"));
    }

    #[test]
    fn macs_parse_strictly() {
        assert_eq!(parse_mac("02:00:0a:0B:ff:10"), Some([2, 0, 10, 11, 255, 16]));
        assert_eq!(parse_mac("02-00-0a-0b-ff-10"), Some([2, 0, 10, 11, 255, 16]));
        for bad in [
            "02:00:0a:0b:ff",
            "02:00:0a:0b:ff:10:11",
            "2:00:0a:0b:ff:10",
            "zz:00:0a:0b:ff:10",
            "",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }
}
