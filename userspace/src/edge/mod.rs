//! The edge daemon: loads and attaches the sprayer, keeps the hash scope and
//! answers the admin socket. It owns the `EdgeProgram`; every change goes
//! through its single loop, so no lock guards the maps.

pub mod config;
pub mod driver;
pub mod manager;
pub mod members;
pub mod membership;
pub mod migration;

use crate::{
    admin::{self, AdminCall, AdminRequest, AdminResponse},
    control::{
        ids::{Incarnation, NodeId},
        message::{InheritorChoice, MemberStatus, MigrationMode},
        session::{Gate, SessionCounters},
    },
    metrics::{self, Exposition, MigrationMetrics, ScrapeCall},
    node::metrics as node_metrics,
    scope::Scope,
};
use anyhow::{bail, Context, Result};
use config::{EdgeConfig, MemberConfig};
use crossbeam::channel::{unbounded, Receiver, Sender};
use driver::{Driver, FlipRequest};
use handoff_loader::{EdgeProgram, PublishedScope};
use manager::ManagerState;
use membership::Membership;
use migration::{Candidate, Coordinator};
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// Which nodes a flip tells right away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tell {
    /// Every node.
    All,
    /// Only the nodes that take buckets over; the migration tells the
    /// others once these forward by the new scope (see [`driver`]).
    Gainers,
}

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
    /// Migration drivers ask the loop to flip here.
    flips: (Sender<FlipRequest>, Receiver<FlipRequest>),
    /// Since when each FAILED member in the scope has been failed.
    failed_since: BTreeMap<u32, Instant>,
    /// The control port's admissions and refusals.
    sessions: Arc<SessionCounters>,
}

impl Edge {
    /// Loads the program, configures members and match sets, publishes the
    /// first scope and attaches. With `pin_dir`, a sprayer an earlier run
    /// pinned there is taken over instead: it keeps forwarding by the scope
    /// it holds, which becomes the manager's (nothing is published), and
    /// the members in it are expected to register again.
    pub fn start(config: EdgeConfig) -> Result<Self> {
        let buckets = config.hash.buckets;
        let mut program = match &config.pin_dir {
            Some(dir) => EdgeProgram::load_pinned(buckets, dir)
                .with_context(|| format!("loading the edge sprayer pinned in {}", dir.display()))?,
            None => EdgeProgram::load(buckets).context("loading the edge sprayer")?,
        };
        // What a taken-over sprayer holds is checked before anything is
        // written: a refused start leaves it forwarding as it was.
        let taken_over = match program.published().cloned() {
            Some(published) => {
                check_same_hash(&published, &config)?;
                let scope = Scope {
                    version: published.version,
                    table: published.table,
                };
                if let Some(gone) = scope
                    .members()
                    .into_iter()
                    .find(|id| !config.members.iter().any(|m| m.id == *id))
                {
                    bail!(
                        "the pinned sprayer gives buckets to member id {gone}, which the configuration no longer has: add it back, or remove the pins with `handoff edge-detach` (forwarding stops) to start with a new scope"
                    );
                }
                tracing::info!(
                    version = scope.version,
                    generation = published.generation,
                    members = ?scope.members(),
                    "took over the pinned sprayer: forwarding by its last published scope"
                );
                Some(scope)
            }
            None => {
                program.set_hash(config.hash.mode(), config.hash.seed)?;
                None
            }
        };
        program.set_destination_matches(&config.destinations)?;
        program.set_source_matches(&config.sources)?;
        program.set_local_addresses(&config.local_addresses)?;
        for m in &config.members {
            configure_member(&mut program, m)?;
        }
        let scope = match taken_over {
            Some(scope) => scope,
            None => {
                let ids: Vec<u32> = config.members.iter().map(|m| m.id).collect();
                let scope = Scope::initial(buckets, &ids)?;
                program.publish_scope(scope.version, &scope.table)?;
                scope
            }
        };
        for interface in &config.interfaces {
            program.attach(interface, config.xdp_mode)?;
        }
        for interface in program.detach_others(&config.interfaces)? {
            tracing::warn!(
                interface,
                "detached the pinned sprayer from an interface the configuration no longer lists"
            );
        }
        let active = scope.members();
        tracing::info!(
            members = active.len(),
            buckets,
            pinned = config.pin_dir.is_some(),
            "edge up"
        );
        let mut membership = Membership::new(manager::FAILURE_AFTER);
        if program.published().is_some() {
            let now = Instant::now();
            for m in config.members.iter().filter(|m| active.contains(&m.id)) {
                if let Ok(id) = u16::try_from(m.id) {
                    membership.expect(id, &m.name, now, manager::REREGISTER_GRACE);
                }
            }
        }
        let manager = Arc::new(Mutex::new(ManagerState {
            membership,
            hash: config.hash,
            scope: scope.clone(),
            configured: config
                .members
                .iter()
                .filter_map(|m| Some((u16::try_from(m.id).ok()?, m.name.clone())))
                .collect(),
            registrations: BTreeMap::new(),
            outboxes: BTreeMap::new(),
            coordinator: Coordinator::new(config.manager.hold_down),
            migration_events: None,
            refused: 0,
            migration_metrics: MigrationMetrics::default(),
        }));
        Ok(Self {
            config,
            program,
            scope,
            active,
            manager,
            flips: unbounded(),
            failed_since: BTreeMap::new(),
            sessions: Arc::default(),
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
    pub fn rescope(&mut self, members: &[u32]) -> Result<AdminResponse> {
        if members.is_empty() {
            bail!("refusing to leave every bucket without an owner");
        }
        let next = self.scope.rebuilt(members)?;
        self.publish(next, Tell::All)
    }

    /// Publishes `next` as the scope. Refuses a table with an unowned bucket
    /// or an owner that is not a member.
    pub fn publish(&mut self, next: Scope, nodes: Tell) -> Result<AdminResponse> {
        if next.table.len() != self.scope.table.len() {
            bail!(
                "a scope of {} buckets, the edge has {}",
                next.table.len(),
                self.scope.table.len()
            );
        }
        if let Some(bad) = next
            .table
            .iter()
            .find(|&&owner| !self.config.members.iter().any(|m| m.id == owner))
        {
            bail!("refusing a scope with bucket owner {bad}, not a member");
        }
        let members = next.members();
        let moved = self.scope.moves(&next).count();
        let write = self.program.publish_scope(next.version, &next.table)?;
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
            // Nodes forward by the edge's scope: they find owners by it.
            match nodes {
                Tell::All => m.tell_scope(&next, |_| true),
                Tell::Gainers => {
                    let gains = self.scope.gains(&next);
                    m.tell_scope(&next, |node| gains.contains_key(&u32::from(node)));
                }
            }
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
        let (registered, migration, refused) = {
            let m = manager::lock(&self.manager);
            (m.membership.view(Instant::now()), m.coordinator.report(), m.refused)
        };
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
                    "scope_version": member.map(|r| r.scope_version),
                    "registered": member.is_some_and(|r| r.registered),
                })
            })
            .collect();
        serde_json::json!({
            "scope_version": self.scope.version,
            "scope_digest": format!("{:016x}", self.scope.digest()),
            "generation": self.program.active_generation(),
            "buckets": self.config.hash.buckets,
            "pinned": self.program.pin_dir().map(|d| d.display().to_string()),
            "members": members,
            "migration": migration,
            "control_messages_refused": refused,
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
        Ok(serde_json::json!({"reasons": named, "members": per_member, "control": self.sessions.to_json()}))
    }

    /// The metrics of a scrape, from the sources of [`Edge::stats`] and
    /// `status`.
    fn exposition(&self) -> Result<Exposition> {
        let reasons = self.program.reason_counts()?;
        let members = self.program.member_counts()?;
        let mut e = Exposition::default();
        node_metrics::add_xdp_reasons(&mut e, &reasons, &[]);
        let name_of = |id: u32| {
            self.config
                .members
                .iter()
                .find(|m| m.id == id)
                .map_or_else(|| id.to_string(), |m| m.name.clone())
        };
        for (id, counter) in &members {
            let name = name_of(*id);
            let member = [("member", name.as_str())];
            e.counter(
                "handoff_sprayed_packets_total",
                "Packets the sprayer sent to each member",
                &member,
                counter.packets,
            );
            e.counter(
                "handoff_sprayed_bytes_total",
                "Bytes (frame lengths as XDP sees them) the sprayer sent to each member",
                &member,
                counter.bytes,
            );
        }
        node_metrics::add_sessions(&mut e, &self.sessions, &[]);
        let (registered, refused, migration_metrics) = {
            let m = manager::lock(&self.manager);
            (
                m.membership.view(Instant::now()),
                m.refused,
                m.migration_metrics.clone(),
            )
        };
        e.counter(
            "handoff_control_messages_refused_total",
            node_metrics::MESSAGES_REFUSED_HELP,
            &[],
            refused,
        );
        for m in &self.config.members {
            let member = [("member", m.name.as_str())];
            e.gauge(
                "handoff_member_buckets",
                "Buckets the edge's scope gives each member",
                &member,
                self.scope.buckets_of(m.id).count() as u64,
            );
            if let Some(r) = registered.iter().find(|r| u32::from(r.node) == m.id) {
                e.gauge(
                    "handoff_member_flows",
                    "Connections each registered member reported in its last heartbeat",
                    &member,
                    r.flows,
                );
            }
        }
        e.gauge(
            "handoff_scope_version",
            "The scope version the edge sprays by",
            &[],
            self.scope.version,
        );
        migration_metrics.expose(&mut e);
        Ok(e)
    }

    /// Answers `request`; a migration's driver answers it later itself.
    fn handle(&mut self, request: AdminRequest, reply: Sender<AdminResponse>) {
        let result = match request {
            AdminRequest::Status => Ok(AdminResponse::Status(self.status())),
            AdminRequest::Stats => self.stats().map(AdminResponse::Stats),
            AdminRequest::ScopeRemove { member } => self.member(&member).map(|m| m.id).and_then(|id| {
                let rest: Vec<u32> = self.active.iter().copied().filter(|&m| m != id).collect();
                if rest.len() == self.active.len() {
                    bail!("{member} is not in the scope");
                }
                self.rescope(&rest)
            }),
            AdminRequest::ScopeAdd { member } => self.member(&member).map(|m| m.id).and_then(|id| {
                if self.active.contains(&id) {
                    bail!("{member} is already in the scope");
                }
                let mut with = self.active.clone();
                with.push(id);
                self.rescope(&with)
            }),
            AdminRequest::Disengage { node, inheritor } => {
                match self.start_migration(MigrationMode::Disengage, &node, &inheritor, &reply) {
                    Ok(()) => return,
                    Err(e) => Err(e),
                }
            }
            AdminRequest::Engage { node } => match self.start_migration(MigrationMode::Engage, &node, "", &reply) {
                Ok(()) => return,
                Err(e) => Err(e),
            },
            AdminRequest::MemberAdd {
                member,
                id,
                mac,
                interface,
            } => self.member_add(&member, id, &mac, &interface),
            AdminRequest::MemberRemove { member } => self.member_remove(&member),
            AdminRequest::Services
            | AdminRequest::PolicyReload { .. }
            | AdminRequest::BackendAdd { .. }
            | AdminRequest::BackendRemove { .. }
            | AdminRequest::BackendWeight { .. }
            | AdminRequest::BackendDrain { .. } => Err(anyhow::anyhow!(
                "services and backends are each node's policy: ask the nodes' admin sockets"
            )),
        };
        let _ = reply.send(result.unwrap_or_else(|e| AdminResponse::Error {
            message: format!("{e:#}"),
        }));
    }

    fn inheritor_choice(&self, inheritor: &str) -> Result<InheritorChoice> {
        Ok(match inheritor {
            "auto" | "spread" => InheritorChoice::Spread,
            "least-flows" => InheritorChoice::LeastFlows,
            name => InheritorChoice::Named(NodeId::new(u16::try_from(self.member(name)?.id)?)?),
        })
    }

    /// Admits a migration of `node` and starts its driver, which answers `reply`.
    fn start_migration(
        &mut self,
        mode: MigrationMode,
        node: &str,
        inheritor: &str,
        reply: &Sender<AdminResponse>,
    ) -> Result<()> {
        if self.config.control_listen.is_none() {
            bail!("the migration manager is off: set edge.control_listen so nodes can register");
        }
        let target = u16::try_from(self.member(node)?.id)?;
        let choice = match mode {
            MigrationMode::Disengage => Some(self.inheritor_choice(inheritor)?),
            MigrationMode::Engage => None,
        };
        let now = Instant::now();
        let mut state = manager::lock(&self.manager);
        let status = state
            .membership
            .member(target)
            .filter(|m| m.registered)
            .map(|m| m.status)
            .ok_or(migration::Refusal::NotRegistered(target))?;
        let in_scope = self.active.contains(&u32::from(target));
        let plan = match choice {
            Some(choice) => {
                if status != MemberStatus::Active || !in_scope {
                    return Err(migration::Refusal::WrongStatus {
                        node: target,
                        status,
                        mode,
                        needed: "ACTIVE and in the scope",
                    }
                    .into());
                }
                // A member a restarted manager still waits for reports no
                // flows: it inherits nothing until it registers.
                let candidates: Vec<Candidate> = state
                    .membership
                    .view(now)
                    .into_iter()
                    .filter(|m| m.registered)
                    .map(|m| Candidate {
                        node: m.node,
                        status: m.status,
                        flows: m.flows,
                    })
                    .collect();
                migration::plan_disengage(&self.scope, target, choice, &candidates)?
            }
            None => {
                if status != MemberStatus::Disengaged || in_scope || !state.outboxes.contains_key(&target) {
                    return Err(migration::Refusal::WrongStatus {
                        node: target,
                        status,
                        mode,
                        needed: "DISENGAGED, out of the scope, with a live session",
                    }
                    .into());
                }
                migration::plan_engage(&self.scope, target)?
            }
        };
        let running = state
            .coordinator
            .begin(mode, target, now, self.config.manager.migration_timeout)?;
        let (events_tx, events) = crossbeam::channel::bounded(1024);
        state.migration_events = Some(events_tx);
        state.membership.set_status(
            target,
            match mode {
                MigrationMode::Disengage => MemberStatus::Disengaging,
                MigrationMode::Engage => MemberStatus::Joining,
            },
        );
        drop(state);
        tracing::info!(serial = %running.serial, ?mode, node, "migration admitted");
        let driver = Driver::new(
            Arc::clone(&self.manager),
            self.flips.0.clone(),
            reply.clone(),
            running,
            events,
        );
        let spawned = std::thread::Builder::new()
            .name("migration".into())
            .spawn(move || driver.run(&plan));
        if let Err(e) = spawned {
            let mut state = manager::lock(&self.manager);
            state.coordinator.end(running.serial, Instant::now());
            state.migration_events = None;
            state.membership.set_status(target, status);
            bail!("cannot start the migration thread: {e}");
        }
        Ok(())
    }

    /// Removes from the scope every member FAILED for longer than the
    /// failover limit, when no migration runs and the hold-down is over.
    fn fail_over(&mut self, now: Instant) {
        let Some(after) = self.config.manager.failover_after else {
            return;
        };
        let (failed, quiet): (Vec<u32>, bool) = {
            let m = manager::lock(&self.manager);
            let failed = m
                .membership
                .view(now)
                .into_iter()
                .filter(|v| v.status == MemberStatus::Failed)
                .map(|v| u32::from(v.node))
                .filter(|id| self.active.contains(id))
                .collect();
            (failed, m.coordinator.quiet(now))
        };
        self.failed_since.retain(|id, _| failed.contains(id));
        for &id in &failed {
            self.failed_since.entry(id).or_insert(now);
        }
        let due: Vec<u32> = self
            .failed_since
            .iter()
            .filter(|(_, &since)| now.saturating_duration_since(since) >= after)
            .map(|(&id, _)| id)
            .collect();
        if due.is_empty() || !quiet {
            return;
        }
        let rest: Vec<u32> = self.active.iter().copied().filter(|id| !due.contains(id)).collect();
        if rest.is_empty() {
            tracing::error!(?due, "every member in the scope FAILED; keeping the scope");
            return;
        }
        match self.rescope(&rest) {
            Ok(flip) => tracing::warn!(?due, ?flip, "failover: FAILED members removed from the scope"),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "failover flip failed"),
        }
    }

    /// Serves the admin socket until `stop` is set, then detaches.
    pub fn run(mut self, stop: Arc<AtomicBool>) -> Result<()> {
        let (tx, rx) = crossbeam::channel::unbounded::<AdminCall>();
        let _socket = admin::serve(&self.config.admin_socket, tx.clone(), Arc::clone(&stop))?;
        let (scrape_tx, scrapes) = crossbeam::channel::bounded::<ScrapeCall>(metrics::HTTP_THREADS);
        let metrics_server = match self.config.metrics {
            Some(listen) => Some(metrics::serve(listen, scrape_tx, Arc::clone(&stop))?),
            None => None,
        };
        let api_server = match self.config.api {
            Some(listen) => Some(crate::api::serve(
                listen,
                self.config.tls.clone(),
                tx.clone(),
                Arc::clone(&stop),
            )?),
            None => None,
        };
        if let Some(address) = self.config.control_listen {
            let listener = std::net::TcpListener::bind(address)
                .with_context(|| format!("binding the manager's control port {address}"))?;
            listener.set_nonblocking(true)?;
            let incarnation = Incarnation(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
            );
            let tls = self.config.tls.clone().context(
                "no TLS identity: the configuration must be loaded with EdgeConfig::load, which reads [tls]",
            )?;
            let gate = Gate::new(self.config.manager.connection_limits, tls, Arc::clone(&self.sessions));
            let (state, stop) = (Arc::clone(&self.manager), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("manager".into())
                .spawn(move || manager::run_listener(listener, gate, state, incarnation, stop))?;
            tracing::info!(%address, "manager control port ready");
        }
        tracing::info!(socket = %self.config.admin_socket.display(), "admin socket ready");
        let flips = self.flips.1.clone();
        while !stop.load(Ordering::Relaxed) {
            crossbeam::channel::select! {
                recv(rx) -> call => if let Ok((request, reply)) = call {
                    self.handle(request, reply);
                },
                recv(flips) -> flip => if let Ok(FlipRequest { plan, done }) = flip {
                    let result = self.publish(plan, Tell::Gainers).map_err(|e| format!("{e:#}")).map(|r| match r {
                        AdminResponse::ScopeChanged { moved_buckets, .. } => moved_buckets,
                        _ => 0,
                    });
                    let _ = done.send(result);
                },
                recv(scrapes) -> call => if let Ok(reply) = call {
                    let _ = reply.send(self.exposition());
                },
                default(Duration::from_millis(100)) => {}
            }
            let now = Instant::now();
            {
                let mut m = manager::lock(&self.manager);
                for node in m.membership.tick(now) {
                    tracing::warn!(node, "member FAILED: no heartbeat");
                    m.member_failed(node);
                }
            }
            self.fail_over(now);
        }
        for server in [metrics_server, api_server].into_iter().flatten() {
            server.join();
        }
        match self.program.pin_dir() {
            // Pinned, the sprayer keeps forwarding by the last published
            // scope until the next run takes it over (or edge-detach).
            Some(dir) => tracing::info!(pins = %dir.display(), "edge stopped; the sprayer stays attached"),
            None => {
                self.program.detach()?;
                tracing::info!("edge stopped");
            }
        }
        Ok(())
    }
}

/// Fails unless `config` hashes like the sprayer it takes over: the nodes
/// find owners by the running hash, so it changes only with a fresh start.
fn check_same_hash(published: &PublishedScope, config: &EdgeConfig) -> Result<()> {
    if published.hash_mode != config.hash.mode() || published.hash_seed != config.hash.seed {
        bail!(
            "the pinned sprayer hashes {:?} with seed {}, the configuration asks for {:?} with seed {}: keep the running hash, or remove the pins with `handoff edge-detach` (forwarding stops) to start with the new one",
            published.hash_mode,
            published.hash_seed,
            config.hash.mode(),
            config.hash.seed
        );
    }
    Ok(())
}

/// Removes the sprayer pinned in `dir`: its links (which detaches it) and
/// its maps. Refused while an edge daemon answers on `admin_socket`, which
/// would keep running with nothing attached.
pub fn detach_pinned(dir: &std::path::Path, admin_socket: &std::path::Path) -> Result<handoff_loader::pins::Removed> {
    if admin::call(admin_socket, &AdminRequest::Status, Duration::from_secs(2)).is_ok() {
        bail!("an edge daemon answers on {}: stop it first", admin_socket.display());
    }
    handoff_loader::pins::remove(dir).with_context(|| format!("removing the pins in {}", dir.display()))
}

fn configure_member(program: &mut EdgeProgram, m: &MemberConfig) -> Result<()> {
    let src_mac = handoff_loader::interface_mac(&m.interface)?;
    let ifindex = handoff_loader::interface_index(&m.interface)?;
    program
        .set_member(m.id, m.mac, src_mac, ifindex)
        .with_context(|| format!("configuring member {}", m.name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use handoff_common::hash::HashMode;

    fn config(extra: &str) -> EdgeConfig {
        let text = format!("[edge]\ninterfaces = [\"e0\"]\nadmin_socket = \"/tmp/x.sock\"\n{extra}\n");
        EdgeConfig::parse(&text, std::path::Path::new("edge.toml")).unwrap()
    }

    #[test]
    fn a_taken_over_sprayer_must_hash_as_configured() {
        let published = PublishedScope {
            generation: 1,
            version: 4,
            table: vec![0; 4],
            hash_mode: HashMode::Directional,
            hash_seed: 7,
        };
        check_same_hash(&published, &config("hash_seed = 7")).unwrap();
        let e = check_same_hash(&published, &config("hash_seed = 8"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("seed 7") && e.contains("seed 8") && e.contains("edge-detach"),
            "{e}"
        );
        let e = check_same_hash(&published, &config("hash_seed = 7\nsymmetric_hash = true"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("Directional") && e.contains("Symmetric"), "{e}");
    }
}
