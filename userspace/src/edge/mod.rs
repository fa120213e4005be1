//! The edge daemon: loads and attaches the sprayer, keeps the hash scope and
//! answers the admin socket. It owns the `EdgeProgram`; every change goes
//! through its single loop, so no lock guards the maps.

pub mod config;
pub mod manager;
pub mod membership;

use crate::{
    admin::{self, AdminCall, AdminRequest, AdminResponse},
    control::ids::Incarnation,
    scope::Scope,
};
use anyhow::{bail, Context, Result};
use config::{EdgeConfig, MemberConfig};
use handoff_loader::EdgeProgram;
use manager::ManagerState;
use membership::Membership;
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// The running edge.
#[derive(Debug)]
pub struct Edge {
    config: EdgeConfig,
    program: EdgeProgram,
    scope: Scope,
    /// Members currently in the scope.
    active: Vec<u32>,
    /// The migration manager's member table and what it tells nodes.
    manager: Arc<Mutex<ManagerState>>,
}

impl Edge {
    /// Loads the program, configures members and match sets, publishes the
    /// first scope and attaches.
    pub fn start(config: EdgeConfig) -> Result<Self> {
        let mut program = EdgeProgram::load(config.hash.buckets).context("loading the edge sprayer")?;
        program.set_hash(config.hash.mode(), config.hash.seed)?;
        for prefix in &config.destinations {
            program.add_destination_match(*prefix)?;
        }
        for prefix in &config.sources {
            program.add_source_match(*prefix)?;
        }
        for addr in &config.local_addresses {
            program.add_local_address(*addr)?;
        }
        for m in &config.members {
            configure_member(&mut program, m)?;
        }
        let active: Vec<u32> = config.members.iter().map(|m| m.id).collect();
        let scope = Scope::initial(config.hash.buckets, &active)?;
        program.publish_scope(&scope.table)?;
        for interface in &config.interfaces {
            program.attach(interface, config.xdp_mode)?;
        }
        tracing::info!(members = active.len(), buckets = config.hash.buckets, "edge up");
        let manager = Arc::new(Mutex::new(ManagerState {
            membership: Membership::new(manager::FAILURE_AFTER),
            hash: config.hash,
            scope: scope.clone(),
            configured: config
                .members
                .iter()
                .filter_map(|m| Some((u16::try_from(m.id).ok()?, m.name.clone())))
                .collect(),
            registrations: BTreeMap::new(),
        }));
        Ok(Self {
            config,
            program,
            scope,
            active,
            manager,
        })
    }

    fn member(&self, name: &str) -> Result<&MemberConfig> {
        self.config
            .members
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("no member named {name:?}"))
    }

    /// Publishes a scope over `members`, moving as few buckets as possible.
    pub fn rescope(&mut self, members: Vec<u32>) -> Result<AdminResponse> {
        if members.is_empty() {
            bail!("refusing to leave every bucket without an owner");
        }
        let next = self.scope.rebuilt(&members)?;
        let moved = self.scope.moves(&next).count();
        let write = self.program.publish_scope(&next.table)?;
        tracing::info!(
            version = next.version,
            moved,
            generation = write.generation,
            "scope flipped"
        );
        {
            let mut m = manager::lock(&self.manager);
            m.scope = next.clone();
            m.membership.scope_changed(&members);
        }
        self.scope = next;
        self.active = members;
        Ok(AdminResponse::ScopeChanged {
            version: self.scope.version,
            moved_buckets: moved,
            generation: write.generation,
        })
    }

    fn status(&self) -> serde_json::Value {
        let registered = manager::lock(&self.manager).membership.view(Instant::now());
        let members: Vec<_> = self
            .config
            .members
            .iter()
            .map(|m| {
                let member = registered.iter().find(|r| u32::from(r.node) == m.id);
                serde_json::json!({
                    "name": m.name,
                    "id": m.id,
                    "in_scope": self.active.contains(&m.id),
                    "buckets": self.scope.buckets_of(m.id).count(),
                    "status": member.map(|r| r.status),
                    "last_seen_ms": member.map(|r| r.last_seen_ms),
                    "flows": member.map(|r| r.flows),
                })
            })
            .collect();
        serde_json::json!({
            "scope_version": self.scope.version,
            "generation": self.program.active_generation(),
            "buckets": self.config.hash.buckets,
            "members": members,
        })
    }

    fn stats(&self) -> Result<serde_json::Value> {
        let reasons = self.program.reason_counts()?;
        let members = self.program.member_counts()?;
        let named: serde_json::Map<String, serde_json::Value> =
            reasons.named().map(|(n, v)| (n.to_string(), v.into())).collect();
        let per_member: Vec<_> = members
            .iter()
            .map(|(id, c)| {
                let name = self
                    .config
                    .members
                    .iter()
                    .find(|m| m.id == *id)
                    .map_or("?", |m| m.name.as_str());
                serde_json::json!({"name": name, "id": id, "packets": c.packets, "bytes": c.bytes})
            })
            .collect();
        Ok(serde_json::json!({"reasons": named, "members": per_member}))
    }

    fn handle(&mut self, request: AdminRequest) -> AdminResponse {
        let result = match request {
            AdminRequest::Status => Ok(AdminResponse::Status(self.status())),
            AdminRequest::Stats => self.stats().map(AdminResponse::Stats),
            AdminRequest::ScopeRemove { member } => self.member(&member).map(|m| m.id).and_then(|id| {
                let rest: Vec<u32> = self.active.iter().copied().filter(|&m| m != id).collect();
                if rest.len() == self.active.len() {
                    bail!("{member} is not in the scope");
                }
                self.rescope(rest)
            }),
            AdminRequest::ScopeAdd { member } => self.member(&member).map(|m| m.id).and_then(|id| {
                if self.active.contains(&id) {
                    bail!("{member} is already in the scope");
                }
                let mut with = self.active.clone();
                with.push(id);
                self.rescope(with)
            }),
            AdminRequest::HandOver | AdminRequest::Release => Err(anyhow::anyhow!(
                "the edge has no connections to hand over; ask the node"
            )),
        };
        result.unwrap_or_else(|e| AdminResponse::Error {
            message: format!("{e:#}"),
        })
    }

    /// Serves the admin socket until `stop` is set, then detaches.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<()> {
        let (tx, rx) = crossbeam::channel::unbounded::<AdminCall>();
        let _socket = admin::serve(&self.config.admin_socket, tx, Arc::clone(&stop))?;
        if let Some(address) = self.config.control_listen {
            let listener = std::net::TcpListener::bind(address)
                .with_context(|| format!("binding the manager's control port {address}"))?;
            listener.set_nonblocking(true)?;
            let incarnation = Incarnation(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            );
            let (state, stop) = (Arc::clone(&self.manager), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("manager".into())
                .spawn(move || manager::run_listener(listener, state, incarnation, stop))?;
            tracing::info!(%address, "manager control port ready");
        }
        tracing::info!(socket = %self.config.admin_socket.display(), "admin socket ready");
        while !stop.load(Ordering::Relaxed) {
            if let Ok((request, reply)) = rx.recv_timeout(Duration::from_millis(100)) {
                let response = self.handle(request);
                let _ = reply.send(response);
            }
            for node in manager::lock(&self.manager).membership.tick(Instant::now()) {
                tracing::warn!(node, "member FAILED: no heartbeat");
            }
        }
        self.program.detach()?;
        tracing::info!("edge stopped");
        Ok(())
    }
}

fn configure_member(program: &mut EdgeProgram, m: &MemberConfig) -> Result<()> {
    let src_mac = handoff_loader::interface_mac(&m.interface)?;
    let ifindex = handoff_loader::interface_index(&m.interface)?;
    program
        .set_member(m.id, m.mac, src_mac, ifindex)
        .with_context(|| format!("configuring member {}", m.name))
}
