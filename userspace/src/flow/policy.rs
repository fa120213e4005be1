//! What the first packet of a flow gets.
//!
//! A packet for a service (VIP, protocol, port) is DNATed to one of the
//! service's backends, its reply SNATed back to the VIP. The backend is
//! picked by consistent hashing: each service has a table of
//! [`BACKEND_TABLE_SIZE`] entries filled by [`maglev::build`] with the
//! backends' weights, indexed by the flow hash. Every node with the same
//! config picks the same backend for a flow, and a config reload
//! ([`Policy::reload`]) moves only the flows whose backend left (or whose
//! table entries go to a new backend). Everything else gets the config's
//! default action.

use super::{
    config::{DefaultAction, Neighbor, PolicyConfig, ServiceConfig},
    AppId, FlowActions, NetworkAction, Rewrite, Side, TableConfig,
};
use crate::scope::maglev::{self, BuildError, WeightedMember, UNOWNED};
use handoff_common::{
    flow_key::{addr_words, FlowKey},
    hash::{flow_hash, HashMode},
    net::NetU16,
};
use std::net::IpAddr;

/// The policy's lookup maps, read for every new flow and every reply without
/// state: a fast hasher (ahash) rather than std's SipHash. They hold only
/// configured keys (packets look up, never insert), so no peer can flood
/// them with colliding keys.
type FastMap<K, V> = hashbrown::HashMap<K, V, ahash::RandomState>;

/// Entries in a service's backend table (a power of two). With up to a few
/// dozen backends, shares stay within a fraction of a percent of the weights.
pub const BACKEND_TABLE_SIZE: u32 = 4096;

/// What to do with the first packet of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Install a connection with these actions.
    Install {
        /// The key replies will carry (after the forward rewrite).
        reverse_key: FlowKey,
        /// The forward action, the reverse action (undoing the rewrite) and
        /// the app.
        actions: FlowActions,
    },
    /// Drop the packet and install nothing.
    Drop,
    /// Install nothing and never forward it: it is addressed to a VIP that
    /// no service matches, or comes from a backend and answers no
    /// connection. The gateway (the edge) would spray it straight back to
    /// a node: forwarded, it would loop. See [`PolicyConfig::unmatched_vip`].
    NoService,
}

/// Why a policy cannot be built from a validated config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A reload changed the flow-table settings, which a running worker's
    /// table was sized and timed by at start.
    #[error(
        "the [table] and [timeouts] settings cannot change while the node runs \
         (was {was:?}, now {now:?}): put the old values back, or restart the node to apply them"
    )]
    TableChanged {
        /// The running settings.
        was: Box<TableConfig>,
        /// The new ones.
        now: Box<TableConfig>,
    },
    /// A service's backend table could not be built.
    #[error("service {service}: {source}")]
    Backends {
        /// The service.
        service: String,
        /// Why.
        #[source]
        source: BuildError,
    },
}

/// A service as operators see it (`handoff services`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceView {
    /// Its name.
    pub name: String,
    /// Its VIP.
    pub vip: IpAddr,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Its port.
    pub port: u16,
    /// Its backends, in config order.
    pub backends: Vec<BackendView>,
}

/// A backend as operators see it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackendView {
    /// Its address.
    pub address: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its weight.
    pub weight: u32,
    /// `active` (takes new flows) or `draining` (only its connections).
    pub state: String,
    /// Entries of the service's backend table (of [`BACKEND_TABLE_SIZE`])
    /// that pick it: its share of new flows.
    pub table_entries: u32,
}

/// Identifies a service by a flow's destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ServiceKey {
    addr: [u32; 4],
    ip_version: u8,
    protocol: u8,
    port: u16,
}

impl ServiceKey {
    fn of_service(s: &ServiceConfig) -> Self {
        Self {
            addr: addr_words(s.vip),
            ip_version: if s.vip.is_ipv4() { 4 } else { 6 },
            protocol: s.protocol.number(),
            port: s.port,
        }
    }

    fn of_destination(key: &FlowKey) -> Self {
        Self {
            addr: key.dst_addr,
            ip_version: key.ip_version,
            protocol: key.protocol,
            port: key.dst_port.get(),
        }
    }
}

/// The decision logic built from a [`PolicyConfig`]. Read-only, so workers
/// can share one behind an `Arc` and swap it on reload.
#[derive(Clone)]
pub struct Policy {
    config: PolicyConfig,
    services: FastMap<ServiceKey, usize>,
    /// Per service: backend index of each table entry.
    tables: Vec<Vec<u32>>,
    /// Backend (address, port, protocol) -> the one service it serves, or
    /// `None` when several share it (then replies cannot be traced back).
    backends: FastMap<(IpAddr, u16, u8), Option<usize>>,
    /// Every VIP and every backend address: the edge sprays traffic to the
    /// former and from the latter.
    sprayed: SprayedAddresses,
    /// Backends (address, port, protocol) that earlier policies had and
    /// this one has not: connections still pinned to them are moved, reset
    /// or kept (see [`Policy::is_retired`]). Sorted; empty unless a reload
    /// removed a backend.
    retired: Vec<(IpAddr, u16, u8)>,
}

/// The addresses whose traffic the edge sprays to the nodes.
#[derive(Clone, Debug, Default)]
struct SprayedAddresses {
    vips: Vec<[u32; 4]>,
    backends: Vec<[u32; 4]>,
}

impl SprayedAddresses {
    /// The VIPs and backends of `config`, and the `retired` backends: what
    /// they still send is no client's traffic, never to be forwarded as such.
    fn of(config: &PolicyConfig, retired: &[(IpAddr, u16, u8)]) -> Self {
        let mut sprayed = Self::default();
        for &(address, ..) in retired {
            let address = addr_words(address);
            if !sprayed.backends.contains(&address) {
                sprayed.backends.push(address);
            }
        }
        for service in &config.services {
            let vip = addr_words(service.vip);
            if !sprayed.vips.contains(&vip) {
                sprayed.vips.push(vip);
            }
            for backend in &service.backends {
                let address = addr_words(backend.address);
                if !sprayed.backends.contains(&address) {
                    sprayed.backends.push(address);
                }
            }
        }
        sprayed
    }
}

/// The config only: the backend tables are 4096 numbers per service.
impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Builds the backend tables of `config` from scratch.
    pub fn new(config: PolicyConfig) -> Result<Self, PolicyError> {
        Self::build(config, None)
    }

    /// Builds a policy for `config` that keeps as many backend-table entries
    /// of `self` as the new weights allow, so flows without state (picked up
    /// mid-stream) mostly keep their backend across the reload.
    ///
    /// The result is what running workers can adopt: the neighbor table
    /// keeps every next hop of `self` at its index (installed connections
    /// name next hops by index), backends `config` drops are remembered as
    /// retired, and a change of the flow-table settings is refused
    /// ([`PolicyError::TableChanged`]).
    pub fn reload(&self, config: PolicyConfig) -> Result<Self, PolicyError> {
        if config.table != self.config.table {
            return Err(PolicyError::TableChanged {
                was: Box::new(self.config.table),
                now: Box::new(config.table),
            });
        }
        Self::build(config.with_neighbors_of(&self.config), Some(self))
    }

    fn build(config: PolicyConfig, previous: Option<&Policy>) -> Result<Self, PolicyError> {
        let mut services = FastMap::with_capacity_and_hasher(config.services.len(), ahash::RandomState::new());
        let mut tables = Vec::with_capacity(config.services.len());
        let mut backends: FastMap<(IpAddr, u16, u8), Option<usize>> = FastMap::default();
        for (i, service) in config.services.iter().enumerate() {
            for b in &service.backends {
                backends
                    .entry((b.address, b.port, service.protocol.number()))
                    .and_modify(|s| *s = None)
                    .or_insert(Some(i));
            }
            let key = ServiceKey::of_service(service);
            services.insert(key, i);
            // A draining backend keeps its index (its connections' replies
            // are still traced back) but leaves the table.
            let members: Vec<WeightedMember> = service
                .backends
                .iter()
                .enumerate()
                .filter(|(_, b)| !b.draining)
                .map(|(id, b)| WeightedMember {
                    id: id as u32,
                    weight: b.weight,
                })
                .collect();
            let kept = previous.and_then(|p| p.translated_table(key, service));
            let table = maglev::build(BACKEND_TABLE_SIZE, &members, kept.as_deref()).map_err(|source| {
                PolicyError::Backends {
                    service: service.name.clone(),
                    source,
                }
            })?;
            tables.push(table);
        }
        let retired = previous.map_or_else(Vec::new, |p| p.retired_by(&backends));
        Ok(Self {
            sprayed: SprayedAddresses::of(&config, &retired),
            config,
            services,
            tables,
            backends,
            retired,
        })
    }

    /// The backends of `self` (current or retired) that `next` (the backend
    /// map of the next policy) lacks, sorted.
    fn retired_by(&self, next: &FastMap<(IpAddr, u16, u8), Option<usize>>) -> Vec<(IpAddr, u16, u8)> {
        let mut retired: Vec<(IpAddr, u16, u8)> = self
            .backends
            .keys()
            .chain(&self.retired)
            .filter(|&b| !next.contains_key(b))
            .copied()
            .collect();
        retired.sort_unstable();
        retired.dedup();
        retired
    }

    /// The services, their backends, weights, states and table shares.
    pub fn services(&self) -> Vec<ServiceView> {
        self.config
            .services
            .iter()
            .zip(&self.tables)
            .map(|(service, table)| ServiceView {
                name: service.name.clone(),
                vip: service.vip,
                protocol: match service.protocol {
                    super::config::Protocol::Tcp => "tcp".into(),
                    super::config::Protocol::Udp => "udp".into(),
                },
                port: service.port,
                backends: service
                    .backends
                    .iter()
                    .enumerate()
                    .map(|(i, b)| BackendView {
                        address: b.address,
                        port: b.port,
                        weight: b.weight,
                        state: if b.draining { "draining" } else { "active" }.into(),
                        table_entries: table.iter().filter(|&&e| e == i as u32).count() as u32,
                    })
                    .collect(),
            })
            .collect()
    }

    /// Whether some backend was removed by a reload (then established
    /// connections are checked with [`Policy::is_retired`]).
    pub fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// Whether `address`:`port` over `protocol` was a backend an earlier
    /// policy had and this one has not.
    pub fn is_retired(&self, address: IpAddr, port: u16, protocol: u8) -> bool {
        self.retired.binary_search(&(address, port, protocol)).is_ok()
    }

    /// The retired backends (address, port, protocol number), sorted.
    pub fn retired(&self) -> &[(IpAddr, u16, u8)] {
        &self.retired
    }

    /// This policy's table for the service `key`, with backend indices
    /// translated to their positions in `next` (backends are matched by
    /// address and port; a backend `next` lacks becomes unowned).
    fn translated_table(&self, key: ServiceKey, next: &ServiceConfig) -> Option<Vec<u32>> {
        let &i = self.services.get(&key)?;
        let old_backends = &self.config.services[i].backends;
        let new_index: Vec<u32> = old_backends
            .iter()
            .map(|old| {
                next.backends
                    .iter()
                    .position(|b| (b.address, b.port) == (old.address, old.port))
                    .map_or(UNOWNED, |j| j as u32)
            })
            .collect();
        Some(
            self.tables[i]
                .iter()
                .map(|&b| new_index.get(b as usize).copied().unwrap_or(UNOWNED))
                .collect(),
        )
    }

    /// Whether `key`'s destination is one of the services' VIPs.
    pub fn is_vip(&self, key: &FlowKey) -> bool {
        self.sprayed.vips.contains(&key.dst_addr)
    }

    /// Whether `key`'s source is a backend address (of any service).
    pub fn is_from_backend(&self, key: &FlowKey) -> bool {
        self.sprayed.backends.contains(&key.src_addr)
    }

    /// The config this policy was built from.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// The flow-table settings of the config.
    pub fn table_config(&self) -> &TableConfig {
        &self.config.table
    }

    /// The next hops that actions' `next_hop` indices refer to.
    pub fn neighbors(&self) -> &[Neighbor] {
        &self.config.neighbors
    }

    /// If `key` is a reply from a backend (backend -> client), the key of the
    /// forward packets of its connection (client -> VIP), whose owner holds
    /// the connection. `None` for anything else, and for a backend that
    /// serves several services (the reply alone cannot tell which).
    pub fn forward_key_of_reply(&self, key: &FlowKey) -> Option<FlowKey> {
        let src = key.src_ip();
        let &service = self.backends.get(&(src, key.src_port.get(), key.protocol))?.as_ref()?;
        let service = &self.config.services[service];
        Some(FlowKey {
            src_addr: key.dst_addr,
            src_port: key.dst_port,
            dst_addr: addr_words(service.vip),
            dst_port: NetU16::from_host(service.port),
            ..*key
        })
    }

    /// The reply direction of a connection whose forward direction has `key`
    /// and `forward`: its key and its action (the rewrite undone, towards the
    /// gateway). `None` for a redirect, which has no reply direction of its own.
    pub fn reverse_of(&self, key: &FlowKey, forward: &NetworkAction) -> Option<(FlowKey, NetworkAction)> {
        let gateway = self.config.gateway;
        match *forward {
            NetworkAction::Forward { .. } => Some((key.reversed(), NetworkAction::Forward { next_hop: gateway })),
            NetworkAction::Rewrite(rw) => {
                let (side, restored_addr, restored_port, reverse_key) = match rw.side {
                    Side::Destination => (
                        Side::Source,
                        key.dst_ip(),
                        key.dst_port.get(),
                        FlowKey {
                            src_addr: addr_words(rw.address),
                            src_port: NetU16::from_host(rw.port),
                            dst_addr: key.src_addr,
                            dst_port: key.src_port,
                            ..*key
                        },
                    ),
                    Side::Source => (
                        Side::Destination,
                        key.src_ip(),
                        key.src_port.get(),
                        FlowKey {
                            src_addr: key.dst_addr,
                            src_port: key.dst_port,
                            dst_addr: addr_words(rw.address),
                            dst_port: NetU16::from_host(rw.port),
                            ..*key
                        },
                    ),
                };
                let reverse = NetworkAction::Rewrite(Rewrite {
                    side,
                    address: restored_addr,
                    port: restored_port,
                    next_hop: gateway,
                });
                Some((reverse_key, reverse))
            }
            NetworkAction::Redirect { .. } => None,
        }
    }

    /// The actions for a flow whose first packet has `key`.
    pub fn decide(&self, key: &FlowKey) -> Decision {
        let gateway = self.config.gateway;
        let install = |forward: NetworkAction| match self.reverse_of(key, &forward) {
            Some((reverse_key, reverse)) => Decision::Install {
                reverse_key,
                actions: FlowActions {
                    forward,
                    reverse,
                    app: AppId::NONE,
                },
            },
            None => Decision::Drop,
        };
        let Some(&i) = self.services.get(&ServiceKey::of_destination(key)) else {
            if self.is_vip(key) || self.is_from_backend(key) {
                return Decision::NoService;
            }
            return match self.config.default_action {
                DefaultAction::Forward => install(NetworkAction::Forward { next_hop: gateway }),
                DefaultAction::Drop => Decision::Drop,
            };
        };
        let service = &self.config.services[i];
        let hash = flow_hash(key, HashMode::Directional, self.config.hash_seed);
        let entry = hash & (BACKEND_TABLE_SIZE - 1);
        let Some(backend) = self.tables[i]
            .get(entry as usize)
            .and_then(|&b| service.backends.get(b as usize))
        else {
            return Decision::Drop;
        };
        install(NetworkAction::Rewrite(Rewrite {
            side: Side::Destination,
            address: backend.address,
            port: backend.port,
            next_hop: backend.next_hop,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::config::BackendConfig;
    use std::{
        collections::BTreeMap,
        net::{IpAddr, Ipv4Addr},
        path::Path,
    };

    const CONFIG: &str = r#"
[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "forward"
gateway = "router"

[[service]]
vip = "10.0.9.1"
protocol = "tcp"
port = 80
[[service.backend]]
address = "10.1.0.1"
port = 8080
mac = "02:00:00:00:01:01"
[[service.backend]]
address = "10.1.0.2"
port = 8080
[[service.backend]]
address = "10.1.0.3"
port = 8080
[[service.backend]]
address = "10.1.0.4"
port = 8080
"#;

    fn config() -> PolicyConfig {
        PolicyConfig::parse(CONFIG, Path::new("test.toml")).unwrap()
    }

    fn client(n: u32, dport: u16, proto: u8) -> FlowKey {
        FlowKey::new(
            Ipv4Addr::from(0x0a64_0000 + (n >> 16)).into(),
            "10.0.9.1".parse().unwrap(),
            (n & 0xffff) as u16,
            dport,
            proto,
        )
    }

    fn backend_of(policy: &Policy, key: &FlowKey) -> IpAddr {
        match policy.decide(key) {
            Decision::Install {
                actions:
                    FlowActions {
                        forward: NetworkAction::Rewrite(r),
                        ..
                    },
                ..
            } => r.address,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_service_flow_is_dnated_and_its_reply_snated_back() {
        let policy = Policy::new(config()).unwrap();
        let key = client(1234, 80, 6);
        let Decision::Install { reverse_key, actions } = policy.decide(&key) else {
            panic!("service flow dropped");
        };
        let NetworkAction::Rewrite(forward) = actions.forward else {
            panic!("{actions:?}");
        };
        assert_eq!(forward.side, Side::Destination);
        assert_eq!(forward.port, 8080);
        assert_eq!(reverse_key.src_ip(), forward.address);
        assert_eq!(reverse_key.src_port.get(), 8080);
        assert_eq!(reverse_key.dst_ip(), key.src_ip());
        assert_eq!(reverse_key.dst_port, key.src_port);
        assert_eq!(reverse_key.protocol, 6);
        let backend = policy.config().services[0]
            .backends
            .iter()
            .find(|b| b.address == forward.address)
            .unwrap();
        assert_eq!(forward.next_hop, backend.next_hop);
        assert_eq!(
            actions.reverse,
            NetworkAction::Rewrite(Rewrite {
                side: Side::Source,
                address: "10.0.9.1".parse().unwrap(),
                port: 80,
                next_hop: policy.config().gateway,
            })
        );
    }

    /// A key from client `n` to a host that is no VIP.
    fn elsewhere(n: u32, dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            dst_addr: addr_words("10.0.5.5".parse().unwrap()),
            ..client(n, dport, proto)
        }
    }

    #[test]
    fn other_traffic_gets_the_default_action() {
        let policy = Policy::new(config()).unwrap();
        let gateway = policy.config().gateway;
        for key in [elsewhere(1, 81, 6), elsewhere(1, 80, 17)] {
            assert_eq!(
                policy.decide(&key),
                Decision::Install {
                    reverse_key: key.reversed(),
                    actions: FlowActions {
                        forward: NetworkAction::Forward { next_hop: gateway },
                        reverse: NetworkAction::Forward { next_hop: gateway },
                        app: AppId::NONE,
                    },
                }
            );
        }
        let mut drop = config();
        drop.default_action = DefaultAction::Drop;
        assert_eq!(Policy::new(drop).unwrap().decide(&elsewhere(1, 81, 6)), Decision::Drop);
    }

    #[test]
    fn traffic_the_edge_would_spray_back_is_never_forwarded() {
        let policy = Policy::new(config()).unwrap();
        // To the VIP, but no service: another port, another protocol, ICMP.
        for key in [client(1, 81, 6), client(1, 80, 17), client(0, 0, 1)] {
            assert!(policy.is_vip(&key));
            assert_eq!(policy.decide(&key), Decision::NoService, "{key:?}");
        }
        // From a backend, not a reply of its service (another port).
        let from_backend = FlowKey::new(
            "10.1.0.2".parse().unwrap(),
            "10.100.0.1".parse().unwrap(),
            9999,
            5000,
            17,
        );
        assert!(policy.is_from_backend(&from_backend));
        assert_eq!(policy.decide(&from_backend), Decision::NoService);
        assert!(!policy.is_vip(&elsewhere(1, 80, 6)) && !policy.is_from_backend(&elsewhere(1, 80, 6)));
    }

    #[test]
    fn flows_spread_by_weight_and_the_choice_is_stable() {
        let mut c = config();
        c.services[0].backends[0].weight = 2;
        let policy = Policy::new(c.clone()).unwrap();
        let again = Policy::new(c).unwrap();
        let mut counts: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let flows = 50_000;
        for n in 0..flows {
            let key = client(n, 80, 6);
            let b = backend_of(&policy, &key);
            assert_eq!(b, backend_of(&again, &key));
            *counts.entry(b).or_default() += 1;
        }
        let heavy = counts[&"10.1.0.1".parse::<IpAddr>().unwrap()] as f64 / flows as f64;
        assert!((heavy - 0.4).abs() < 0.02, "{counts:?}");
        for (b, &c) in &counts {
            if b.to_string() != "10.1.0.1" {
                assert!((c as f64 / flows as f64 - 0.2).abs() < 0.02, "{counts:?}");
            }
        }
    }

    #[test]
    fn removing_one_of_four_backends_moves_only_its_flows() {
        let before = Policy::new(config()).unwrap();
        let mut next = config();
        let removed: BackendConfig = next.services[0].backends.remove(2);
        let after = before.reload(next).unwrap();
        let flows = 40_000;
        let mut moved = 0;
        for n in 0..flows {
            let key = client(n, 80, 6);
            let (old, new) = (backend_of(&before, &key), backend_of(&after, &key));
            if old != new {
                assert_eq!(old, removed.address, "a flow left a surviving backend");
                moved += 1;
            }
            assert_ne!(new, removed.address);
        }
        let share = moved as f64 / flows as f64;
        assert!((share - 0.25).abs() < 0.02, "moved {share}");
    }

    #[test]
    fn adding_a_backend_moves_flows_only_to_it() {
        let mut small = config();
        let added = small.services[0].backends.pop().unwrap();
        let before = Policy::new(small).unwrap();
        let after = before.reload(config()).unwrap();
        for n in 0..20_000 {
            let key = client(n, 80, 6);
            let (old, new) = (backend_of(&before, &key), backend_of(&after, &key));
            if old != new {
                assert_eq!(new, added.address);
            }
        }
    }

    #[test]
    fn a_reply_leads_back_to_its_forward_key() {
        let policy = Policy::new(config()).unwrap();
        let forward = client(77, 80, 6);
        let Decision::Install { reverse_key, .. } = policy.decide(&forward) else {
            panic!("service traffic is installed");
        };
        assert_eq!(policy.forward_key_of_reply(&reverse_key), Some(forward));
        // Not from a backend port, or not the service's protocol: not a reply.
        let mut other = reverse_key;
        other.src_port = NetU16::from_host(9999);
        assert_eq!(policy.forward_key_of_reply(&other), None);
        other = reverse_key;
        other.protocol = 17;
        assert_eq!(policy.forward_key_of_reply(&other), None);
        assert_eq!(policy.forward_key_of_reply(&forward), None);
    }

    #[test]
    fn a_backend_shared_by_two_services_is_ambiguous() {
        let text = format!("{CONFIG}\n[[service]]\nvip = \"10.0.9.2\"\nprotocol = \"tcp\"\nport = 80\n[[service.backend]]\naddress = \"10.1.0.1\"\nport = 8080\n");
        let policy = Policy::new(PolicyConfig::parse(&text, Path::new("t.toml")).unwrap()).unwrap();
        let reply = FlowKey::new(
            "10.1.0.1".parse().unwrap(),
            "10.100.0.1".parse().unwrap(),
            8080,
            5000,
            6,
        );
        assert_eq!(policy.forward_key_of_reply(&reply), None);
    }
}
