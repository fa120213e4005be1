//! Members added and removed while the edge runs (`member_add`,
//! `member_remove` on the admin socket and the API). Each change is checked
//! in full before anything is written; then it touches, in order, the
//! sprayer's maps (the member's MAC, source MAC and egress interface), the
//! edge's member list (status, stats, metrics, scope checks) and the
//! manager's (who may register, the membership table).
//!
//! A change is not written to `edge.toml`: add the member there to keep it
//! across a restart (a pinned sprayer that gives buckets to a member the
//! file lacks is refused at start).

use super::{
    config::{parse_mac, MemberConfig},
    configure_member, manager, Edge,
};
use crate::admin::AdminResponse;
use anyhow::{bail, Context, Result};
use handoff_common::names::limits::MAX_MEMBERS;

impl Edge {
    /// Adds member `name` with `id`, its fabric `mac`, reached through the
    /// edge's `interface`. Refused for a name or id in use, an id at or
    /// above [`MAX_MEMBERS`], a malformed MAC, or an interface this host
    /// lacks.
    pub(super) fn member_add(&mut self, name: &str, id: u32, mac: &str, interface: &str) -> Result<AdminResponse> {
        if name.is_empty() {
            bail!("give the member a name");
        }
        if let Some(m) = self.config.members.iter().find(|m| m.name == name) {
            bail!("a member is named {name:?} already (id {}): choose another name", m.id);
        }
        if let Some(m) = self.config.members.iter().find(|m| m.id == id) {
            bail!("id {id} is {}'s already: choose another id", m.name);
        }
        if id >= MAX_MEMBERS {
            bail!("id {id} is not below {MAX_MEMBERS}, the edge's member limit");
        }
        let node = u16::try_from(id).context("a member id fits in 16 bits")?;
        let Some(mac) = parse_mac(mac) else {
            bail!("{mac:?} is not a MAC address (aa:bb:cc:dd:ee:ff)");
        };
        if handoff_loader::interface_index(interface).is_err() {
            bail!(
                "the edge has no interface {interface:?}: give the interface towards the member (`ip link` lists them)"
            );
        }
        let member = MemberConfig {
            name: name.to_string(),
            id,
            mac,
            interface: interface.to_string(),
        };
        configure_member(&mut self.program, &member)?;
        self.config.members.push(member);
        manager::lock(&self.manager).configured.insert(node, name.to_string());
        tracing::info!(member = name, id, interface, "member added");
        Ok(AdminResponse::MemberChanged {
            member: name.to_string(),
            id,
            change: "added".into(),
        })
    }

    /// Removes member `name`. Refused while it has buckets (disengage it
    /// first) or while its node is connected to the manager (stop it first).
    pub(super) fn member_remove(&mut self, name: &str) -> Result<AdminResponse> {
        let id = self.member(name)?.id;
        if self.active.contains(&id) {
            bail!(
                "{name} is in the scope ({} buckets): take it out first with `handoff disengage {name}` (its connections move), then remove it",
                self.scope.buckets_of(id).count()
            );
        }
        let node = u16::try_from(id).context("a member id fits in 16 bits")?;
        if manager::lock(&self.manager).outboxes.contains_key(&node) {
            bail!("{name}'s node is connected to the manager: stop it first, then remove the member");
        }
        // The sprayer's other scope generation may still name the member
        // (the one before the last flip): writing the current scope into it
        // too leaves no bucket of the member in either. Nodes already have
        // this scope; nothing is sent to them.
        if self.program.remove_member(id).is_err() {
            self.program
                .publish_scope(self.scope.version, &self.scope.table)
                .context("writing the scope into the sprayer's other generation")?;
            self.program
                .remove_member(id)
                .with_context(|| format!("removing {name} from the sprayer"))?;
        }
        self.config.members.retain(|m| m.id != id);
        self.failed_since.remove(&id);
        {
            let mut m = manager::lock(&self.manager);
            m.configured.remove(&node);
            m.registrations.remove(&node);
            m.membership.forget(node);
        }
        tracing::info!(member = name, id, "member removed");
        Ok(AdminResponse::MemberChanged {
            member: name.to_string(),
            id,
            change: "removed".into(),
        })
    }
}
