//! Live changes to a running policy's backends: add, remove, re-weight and
//! drain one backend of one service.
//!
//! An edit turns a validated [`PolicyConfig`] into another one, checking
//! everything the file's validation checks for the backend it touches; the
//! node then builds the next [`super::Policy`] from it with
//! [`super::Policy::reload`] (which keeps every other flow's backend) before
//! any worker sees it. An edit that fails changes nothing.

use super::config::{BackendConfig, Neighbor, PolicyConfig, ServiceConfig};
use crate::flow::policy::BACKEND_TABLE_SIZE;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;

/// One backend of one service, as an operator names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRef {
    /// The service's name (`handoff services` lists them; by default
    /// `vip:port/protocol`).
    pub service: String,
    /// The backend's address.
    pub address: IpAddr,
    /// The backend's port.
    pub port: u16,
}

/// A change to one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyEdit {
    /// Add the backend (or take a draining one back into service).
    Add {
        /// The backend.
        backend: BackendRef,
        /// Its weight (default 1; a draining backend keeps its own).
        weight: Option<u32>,
        /// Its MAC, like `02:00:00:00:00:01` (default: via the gateway).
        mac: Option<String>,
    },
    /// Remove the backend: no new flow goes there; its UDP flows move to a
    /// live backend, its TCP connections are reset or kept
    /// ([`super::config::OnBackendRemoved`]).
    Remove(BackendRef),
    /// Give the backend another weight (> 0).
    Weight {
        /// The backend.
        backend: BackendRef,
        /// The new weight.
        weight: u32,
    },
    /// Drain the backend: no new flows, its connections go on.
    Drain(BackendRef),
}

/// Why an edit cannot be made. Each says what to do instead.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// No service has that name.
    #[error("no service is named {service:?} (there are: {known}); `handoff services` lists them")]
    UnknownService {
        /// The name given.
        service: String,
        /// The services' names, comma separated.
        known: String,
    },
    /// The service has no such backend.
    #[error("service {service:?} has no backend {address}:{port}; `handoff services` lists its backends")]
    UnknownBackend {
        /// The service.
        service: String,
        /// The address given.
        address: IpAddr,
        /// The port given.
        port: u16,
    },
    /// The backend is already there and takes new flows.
    #[error("service {service:?} already has backend {address}:{port}; use `backend weight` to change its weight")]
    BackendExists {
        /// The service.
        service: String,
        /// The backend's address.
        address: IpAddr,
        /// The backend's port.
        port: u16,
    },
    /// A backend of the other address family than the VIP (no NAT64).
    #[error("{address} is not of the same family as the VIP {vip} of service {service:?}")]
    FamilyMismatch {
        /// The service.
        service: String,
        /// The address given.
        address: IpAddr,
        /// The VIP.
        vip: IpAddr,
    },
    /// Weight 0 (use `backend drain` to stop new flows).
    #[error("a weight must be at least 1; to stop new flows to a backend, drain it")]
    ZeroWeight,
    /// Port 0.
    #[error("port 0 is no backend port")]
    ZeroPort,
    /// Not a MAC address.
    #[error("{value:?} is not a MAC address (like 02:00:00:00:00:01)")]
    BadMac {
        /// The value given.
        value: String,
    },
    /// The change would leave no backend to take new flows.
    #[error("service {service:?} would have no backend left for new flows: add or undrain another backend first")]
    NoActiveBackend {
        /// The service.
        service: String,
    },
    /// The service has as many backends as its table has entries.
    #[error("service {service:?} has {max} backends, the most it can have")]
    TooManyBackends {
        /// The service.
        service: String,
        /// The limit.
        max: usize,
    },
    /// The backend already drains.
    #[error("backend {address}:{port} of service {service:?} already drains")]
    AlreadyDraining {
        /// The service.
        service: String,
        /// The backend's address.
        address: IpAddr,
        /// The backend's port.
        port: u16,
    },
}

impl std::fmt::Display for PolicyEdit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = self.backend();
        let at = std::net::SocketAddr::new(b.address, b.port);
        match self {
            Self::Add { weight: Some(w), .. } => write!(f, "add {at} to {} (weight {w})", b.service),
            Self::Add { weight: None, .. } => write!(f, "add {at} to {}", b.service),
            Self::Remove(_) => write!(f, "remove {at} from {}", b.service),
            Self::Weight { weight, .. } => write!(f, "weight {weight} for {at} of {}", b.service),
            Self::Drain(_) => write!(f, "drain {at} of {}", b.service),
        }
    }
}

impl PolicyEdit {
    /// The backend this edit is about.
    pub fn backend(&self) -> &BackendRef {
        match self {
            Self::Add { backend, .. } | Self::Weight { backend, .. } => backend,
            Self::Remove(backend) | Self::Drain(backend) => backend,
        }
    }

    /// `config` with this edit made, validated; `config` itself is untouched.
    pub fn apply(&self, config: &PolicyConfig) -> Result<PolicyConfig, EditError> {
        let target = self.backend();
        if target.port == 0 {
            return Err(EditError::ZeroPort);
        }
        let mut next = config.clone();
        let Some(s) = next.services.iter().position(|s| s.name == target.service) else {
            return Err(EditError::UnknownService {
                service: target.service.clone(),
                known: config
                    .services
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        };
        let found = next.services[s]
            .backends
            .iter()
            .position(|b| (b.address, b.port) == (target.address, target.port));
        let unknown = || EditError::UnknownBackend {
            service: target.service.clone(),
            address: target.address,
            port: target.port,
        };
        match self {
            Self::Add { weight, mac, .. } => {
                if *weight == Some(0) {
                    return Err(EditError::ZeroWeight);
                }
                let next_hop = match mac {
                    Some(text) => neighbor_for(&mut next.neighbors, text, target)?,
                    None => next.gateway,
                };
                let service = &mut next.services[s];
                if target.address.is_ipv4() != service.vip.is_ipv4() {
                    return Err(EditError::FamilyMismatch {
                        service: target.service.clone(),
                        address: target.address,
                        vip: service.vip,
                    });
                }
                match found {
                    Some(i) if !service.backends[i].draining => {
                        return Err(EditError::BackendExists {
                            service: target.service.clone(),
                            address: target.address,
                            port: target.port,
                        })
                    }
                    Some(i) => {
                        let backend = &mut service.backends[i];
                        backend.draining = false;
                        backend.weight = weight.unwrap_or(backend.weight);
                        if mac.is_some() {
                            backend.next_hop = next_hop;
                        }
                    }
                    None => {
                        let max = BACKEND_TABLE_SIZE as usize;
                        if service.backends.len() >= max {
                            return Err(EditError::TooManyBackends {
                                service: target.service.clone(),
                                max,
                            });
                        }
                        service.backends.push(BackendConfig {
                            address: target.address,
                            port: target.port,
                            weight: weight.unwrap_or(1),
                            draining: false,
                            next_hop,
                        });
                    }
                }
            }
            Self::Remove(_) => {
                let i = found.ok_or_else(unknown)?;
                next.services[s].backends.remove(i);
                require_active(&next.services[s])?;
            }
            Self::Weight { weight, .. } => {
                if *weight == 0 {
                    return Err(EditError::ZeroWeight);
                }
                let i = found.ok_or_else(unknown)?;
                next.services[s].backends[i].weight = *weight;
            }
            Self::Drain(_) => {
                let i = found.ok_or_else(unknown)?;
                let backend = &mut next.services[s].backends[i];
                if backend.draining {
                    return Err(EditError::AlreadyDraining {
                        service: target.service.clone(),
                        address: target.address,
                        port: target.port,
                    });
                }
                backend.draining = true;
                require_active(&next.services[s])?;
            }
        }
        Ok(next)
    }
}

/// Refuses a service none of whose backends takes new flows.
fn require_active(service: &ServiceConfig) -> Result<(), EditError> {
    if service.backends.iter().any(|b| !b.draining) {
        Ok(())
    } else {
        Err(EditError::NoActiveBackend {
            service: service.name.clone(),
        })
    }
}

/// The index of the neighbor with MAC `text`, appended (named after the
/// backend) if new.
fn neighbor_for(neighbors: &mut Vec<Neighbor>, text: &str, backend: &BackendRef) -> Result<u16, EditError> {
    let bad = || EditError::BadMac { value: text.to_owned() };
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next().filter(|p| p.len() == 2).ok_or_else(bad)?;
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if let Some(i) = neighbors.iter().position(|n| n.mac == mac) {
        return Ok(i as u16);
    }
    let index = u16::try_from(neighbors.len()).map_err(|_| bad())?;
    neighbors.push(Neighbor {
        name: format!("{}/{}:{}", backend.service, backend.address, backend.port),
        mac,
    });
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{config::OnBackendRemoved, Decision, FlowActions, NetworkAction, Policy};
    use handoff_common::flow_key::FlowKey;
    use std::{collections::BTreeMap, net::Ipv4Addr, path::Path};

    const CONFIG: &str = r#"
[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "forward"
gateway = "router"

[[service]]
name = "web"
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
mac = "02:00:00:00:01:02"
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

    fn web(address: &str) -> BackendRef {
        BackendRef {
            service: "web".into(),
            address: address.parse().unwrap(),
            port: 8080,
        }
    }

    fn client(n: u32) -> FlowKey {
        FlowKey::new(
            Ipv4Addr::from(0x0a64_0000 + (n >> 16)).into(),
            "10.0.9.1".parse().unwrap(),
            (n & 0xffff) as u16,
            80,
            6,
        )
    }

    fn backend_of(policy: &Policy, key: &FlowKey) -> (IpAddr, [u8; 6]) {
        match policy.decide(key) {
            Decision::Install {
                actions:
                    FlowActions {
                        forward: NetworkAction::Rewrite(r),
                        ..
                    },
                ..
            } => (r.address, policy.neighbors()[usize::from(r.next_hop)].mac),
            other => panic!("{other:?}"),
        }
    }

    /// Backend (and its next hop's MAC) of each of `flows` flows.
    fn choices(policy: &Policy, flows: u32) -> Vec<(IpAddr, [u8; 6])> {
        (0..flows).map(|n| backend_of(policy, &client(n))).collect()
    }

    #[test]
    fn draining_moves_only_its_new_flows_and_keeps_its_replies() {
        let before = Policy::new(config()).unwrap();
        let next = PolicyEdit::Drain(web("10.1.0.2")).apply(before.config()).unwrap();
        let after = before.reload(next).unwrap();
        let drained: IpAddr = "10.1.0.2".parse().unwrap();
        let (old, new) = (choices(&before, 40_000), choices(&after, 40_000));
        let mut moved = 0;
        for (o, n) in old.iter().zip(&new) {
            assert_ne!(n.0, drained, "a new flow went to the draining backend");
            if o != n {
                assert_eq!(o.0, drained, "a flow left a backend that did not change");
                moved += 1;
            }
        }
        let share = f64::from(moved) / 40_000.0;
        assert!((share - 0.25).abs() < 0.02, "moved {share}");
        // Its connections' replies are still traced back to their VIP, and
        // it is not retired (its connections go on).
        let reply = FlowKey::new(drained, "10.100.0.1".parse().unwrap(), 8080, 5000, 6);
        assert!(after.forward_key_of_reply(&reply).is_some());
        assert!(!after.has_retired());
    }

    #[test]
    fn removing_retires_the_backend_and_adding_it_back_unretires_it() {
        let before = Policy::new(config()).unwrap();
        let removed = PolicyEdit::Remove(web("10.1.0.1")).apply(before.config()).unwrap();
        let after = before.reload(removed).unwrap();
        let address: IpAddr = "10.1.0.1".parse().unwrap();
        assert!(after.is_retired(address, 8080, 6));
        assert!(
            !after.is_retired(address, 8080, 17),
            "another protocol is another backend"
        );
        assert!(!after.is_retired("10.1.0.2".parse().unwrap(), 8080, 6));
        // Its stray replies are no client's traffic: never forwarded.
        let stray = FlowKey::new(address, "10.100.0.1".parse().unwrap(), 8080, 5000, 6);
        assert_eq!(after.decide(&stray), Decision::NoService);
        // Its next hop keeps its index (connections kept name it).
        assert_eq!(after.neighbors()[1].mac, [2, 0, 0, 0, 1, 1]);
        // A later reload without it keeps it retired.
        let again = after.reload(after.config().clone()).unwrap();
        assert!(again.is_retired(address, 8080, 6));
        let back = PolicyEdit::Add {
            backend: web("10.1.0.1"),
            weight: Some(2),
            mac: Some("02:00:00:00:01:01".into()),
        }
        .apply(again.config())
        .unwrap();
        let restored = again.reload(back).unwrap();
        assert!(!restored.has_retired());
        let mut counts: BTreeMap<IpAddr, u32> = BTreeMap::new();
        for (b, mac) in choices(&restored, 50_000) {
            if b == address {
                assert_eq!(mac, [2, 0, 0, 0, 1, 1], "its own MAC, at its old index");
            }
            *counts.entry(b).or_default() += 1;
        }
        let share = f64::from(counts[&address]) / 50_000.0;
        assert!((share - 0.4).abs() < 0.02, "weight 2 of 5: {counts:?}");
    }

    #[test]
    fn reweighting_moves_flows_only_towards_the_heavier_backend() {
        let before = Policy::new(config()).unwrap();
        let next = PolicyEdit::Weight {
            backend: web("10.1.0.3"),
            weight: 3,
        }
        .apply(before.config())
        .unwrap();
        let after = before.reload(next).unwrap();
        let heavier: IpAddr = "10.1.0.3".parse().unwrap();
        let (old, new) = (choices(&before, 40_000), choices(&after, 40_000));
        let mut on_heavier = 0;
        for (o, n) in old.iter().zip(&new) {
            if o != n {
                assert_eq!(n.0, heavier, "a flow moved elsewhere than to the heavier backend");
            }
            on_heavier += u32::from(n.0 == heavier);
        }
        let share = f64::from(on_heavier) / 40_000.0;
        assert!((share - 0.5).abs() < 0.02, "weight 3 of 6: {share}");
    }

    #[test]
    fn a_new_backend_takes_only_new_flows_of_its_own_share() {
        let before = Policy::new(config()).unwrap();
        let next = PolicyEdit::Add {
            backend: web("10.1.0.9"),
            weight: None,
            mac: Some("02:00:00:00:01:09".into()),
        }
        .apply(before.config())
        .unwrap();
        let after = before.reload(next).unwrap();
        let added: IpAddr = "10.1.0.9".parse().unwrap();
        let mut moved = 0;
        for (o, n) in choices(&before, 40_000).iter().zip(&choices(&after, 40_000)) {
            if o != n {
                assert_eq!(n, &(added, [2, 0, 0, 0, 1, 9]));
                moved += 1;
            }
        }
        let share = f64::from(moved) / 40_000.0;
        assert!((share - 0.2).abs() < 0.02, "moved {share}");
    }

    #[test]
    fn invalid_edits_are_refused_and_say_why() {
        let c = config();
        type Case = (PolicyEdit, fn(&EditError) -> bool);
        let cases: Vec<Case> = vec![
            (
                PolicyEdit::Drain(BackendRef {
                    service: "nope".into(),
                    ..web("10.1.0.1")
                }),
                |e| matches!(e, EditError::UnknownService { known, .. } if known == "web"),
            ),
            (PolicyEdit::Remove(web("10.1.0.7")), |e| {
                matches!(e, EditError::UnknownBackend { .. })
            }),
            (
                PolicyEdit::Add {
                    backend: web("10.1.0.1"),
                    weight: None,
                    mac: None,
                },
                |e| matches!(e, EditError::BackendExists { .. }),
            ),
            (
                PolicyEdit::Add {
                    backend: web("fd00::1"),
                    weight: None,
                    mac: None,
                },
                |e| matches!(e, EditError::FamilyMismatch { .. }),
            ),
            (
                PolicyEdit::Add {
                    backend: web("10.1.0.9"),
                    weight: None,
                    mac: Some("02:00:00:01".into()),
                },
                |e| matches!(e, EditError::BadMac { .. }),
            ),
            (
                PolicyEdit::Weight {
                    backend: web("10.1.0.1"),
                    weight: 0,
                },
                |e| *e == EditError::ZeroWeight,
            ),
            (
                PolicyEdit::Remove(BackendRef {
                    port: 0,
                    ..web("10.1.0.1")
                }),
                |e| *e == EditError::ZeroPort,
            ),
        ];
        for (edit, expected) in cases {
            let error = edit.apply(&c).unwrap_err();
            assert!(expected(&error), "{edit:?}: {error}");
        }
        // Draining all but one is fine; the last one is refused, as is
        // removing it, and draining twice.
        let mut next = c.clone();
        for b in ["10.1.0.1", "10.1.0.2", "10.1.0.3"] {
            next = PolicyEdit::Drain(web(b)).apply(&next).unwrap();
        }
        assert!(matches!(
            PolicyEdit::Drain(web("10.1.0.4")).apply(&next),
            Err(EditError::NoActiveBackend { .. })
        ));
        assert!(matches!(
            PolicyEdit::Remove(web("10.1.0.4")).apply(&next),
            Err(EditError::NoActiveBackend { .. })
        ));
        assert!(matches!(
            PolicyEdit::Drain(web("10.1.0.1")).apply(&next),
            Err(EditError::AlreadyDraining { .. })
        ));
        // Adding a draining backend back takes it into service again.
        let back = PolicyEdit::Add {
            backend: web("10.1.0.1"),
            weight: None,
            mac: None,
        }
        .apply(&next)
        .unwrap();
        assert!(!back.services[0].backends[0].draining);
        assert_eq!(
            back.services[0].backends[0].next_hop,
            c.services[0].backends[0].next_hop
        );
        assert_eq!(c, config(), "a refused edit leaves the config as it was");
    }

    #[test]
    fn a_reload_that_changes_the_table_is_refused() {
        let before = Policy::new(config()).unwrap();
        let mut next = config();
        next.table.capacity *= 2;
        let error = before.reload(next).unwrap_err().to_string();
        assert!(error.contains("restart the node"), "{error}");
    }

    #[test]
    fn a_reload_keeps_every_next_hop_at_its_index() {
        let before = Policy::new(config()).unwrap();
        // The file without backend 1 and with a new backend MAC first: the
        // inline neighbors are renumbered by the parser.
        let text = CONFIG.replacen(
            "address = \"10.1.0.1\"\nport = 8080\nmac = \"02:00:00:00:01:01\"\n",
            "address = \"10.1.0.8\"\nport = 8080\nmac = \"02:00:00:00:01:08\"\n",
            1,
        );
        let after = before
            .reload(PolicyConfig::parse(&text, Path::new("t.toml")).unwrap())
            .unwrap();
        for (i, n) in before.neighbors().iter().enumerate() {
            assert_eq!(after.neighbors()[i].mac, n.mac, "neighbor {i} moved");
        }
        assert_eq!(after.neighbors()[3].mac, [2, 0, 0, 0, 1, 8]);
        let b = &after.config().services[0].backends;
        assert_eq!(after.neighbors()[usize::from(b[0].next_hop)].mac, [2, 0, 0, 0, 1, 8]);
        assert_eq!(after.neighbors()[usize::from(b[1].next_hop)].mac, [2, 0, 0, 0, 1, 2]);
        assert_eq!(after.config().on_backend_removed, OnBackendRemoved::Reset);
    }
}
