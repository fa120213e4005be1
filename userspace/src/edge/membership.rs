//! Who is in the cluster and whether it is alive: the migration manager's
//! member table. Pure logic over explicit timestamps; the edge's control
//! listener feeds it registrations and heartbeats, its loop calls [`Membership::tick`].

use crate::control::{ids::Incarnation, message::MemberStatus};
use serde::Serialize;
use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

/// One member as the manager sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its name.
    pub name: String,
    /// The run of the node process that registered.
    pub incarnation: Incarnation,
    /// Its status.
    pub status: MemberStatus,
    /// When it last proved alive.
    pub last_seen: Instant,
    /// Flows in its tables, from its last heartbeat.
    pub flows: u64,
    /// Its workers.
    pub workers: u16,
    /// The scope version it forwards by, from its last heartbeat.
    pub scope_version: u64,
    /// False for a member a restarted manager found in the scope it took
    /// over and that has not registered with it yet.
    pub registered: bool,
}

/// How a registration was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Registration {
    /// First time this node registers.
    New,
    /// A new incarnation of a known node (it restarted): its state is reset.
    Restarted,
    /// The same incarnation again (a reconnect).
    Again,
}

/// Why a heartbeat was not taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeartbeatError {
    /// The node never registered.
    #[error("node {0} is not registered")]
    Unknown(u16),
    /// From another run of the node than the registered one.
    #[error("node {node}: heartbeat from incarnation {got}, registered {registered}")]
    StaleIncarnation {
        /// The node.
        node: u16,
        /// The heartbeat's.
        got: Incarnation,
        /// The registered one.
        registered: Incarnation,
    },
}

/// The member table.
#[derive(Debug)]
pub struct Membership {
    members: BTreeMap<u16, Member>,
    failure_after: Duration,
}

/// A member for operators.
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// Node id.
    pub node: u16,
    /// Name.
    pub name: String,
    /// Status.
    pub status: MemberStatus,
    /// Milliseconds since it last proved alive.
    pub last_seen_ms: u128,
    /// Flows it reported.
    pub flows: u64,
    /// Its workers.
    pub workers: u16,
    /// The scope version it forwards by.
    pub scope_version: u64,
    /// Whether it registered with this run of the manager.
    pub registered: bool,
}

impl Membership {
    /// A table that marks a member FAILED after `failure_after` without a heartbeat.
    pub fn new(failure_after: Duration) -> Self {
        Self {
            members: BTreeMap::new(),
            failure_after,
        }
    }

    /// Takes a registration; `in_scope` says whether the node owns buckets now.
    pub fn register(
        &mut self,
        node: u16,
        name: &str,
        incarnation: Incarnation,
        workers: u16,
        in_scope: bool,
        now: Instant,
    ) -> Registration {
        let status = if in_scope {
            MemberStatus::Active
        } else {
            MemberStatus::Disengaged
        };
        let fresh = Member {
            name: name.to_string(),
            incarnation,
            status,
            last_seen: now,
            flows: 0,
            workers,
            scope_version: 0,
            registered: true,
        };
        match self.members.insert(node, fresh) {
            None => Registration::New,
            Some(old) if !old.registered => Registration::New,
            Some(old) if old.incarnation == incarnation => {
                // A reconnect of the same run: what a migration set stays.
                if let Some(m) = self.members.get_mut(&node) {
                    m.flows = old.flows;
                    m.scope_version = old.scope_version;
                    if matches!(old.status, MemberStatus::Disengaging | MemberStatus::Joining) {
                        m.status = old.status;
                    }
                }
                Registration::Again
            }
            Some(_) => Registration::Restarted,
        }
    }

    /// Forgets `node` (a member the operator removed); whether it was known.
    pub fn forget(&mut self, node: u16) -> bool {
        self.members.remove(&node).is_some()
    }

    /// Enters a member a restarted manager found in the scope it took over,
    /// before the node registers again (nodes reconnect on their own). It
    /// counts as seen `grace` from `now`, time for the control port to come
    /// up and the node's next reconnect: one that does not come back within
    /// `grace` and the failure limit is FAILED, and failed over, like one
    /// that stops sending heartbeats.
    pub fn expect(&mut self, node: u16, name: &str, now: Instant, grace: Duration) {
        self.members.entry(node).or_insert_with(|| Member {
            name: name.to_string(),
            incarnation: Incarnation(0),
            status: MemberStatus::Active,
            last_seen: now + grace,
            flows: 0,
            workers: 0,
            scope_version: 0,
            registered: false,
        });
    }

    /// Takes a heartbeat reporting `flows` and the node's `scope_version`.
    pub fn heartbeat(
        &mut self,
        node: u16,
        incarnation: Incarnation,
        flows: u64,
        scope_version: u64,
        now: Instant,
    ) -> Result<(), HeartbeatError> {
        let member = self.members.get_mut(&node).ok_or(HeartbeatError::Unknown(node))?;
        if member.incarnation != incarnation {
            return Err(HeartbeatError::StaleIncarnation {
                node,
                got: incarnation,
                registered: member.incarnation,
            });
        }
        member.last_seen = now;
        member.flows = flows;
        member.scope_version = scope_version;
        if member.status == MemberStatus::Failed {
            member.status = MemberStatus::Active;
        }
        Ok(())
    }

    /// Marks the members silent for too long FAILED; returns those that just failed.
    pub fn tick(&mut self, now: Instant) -> Vec<u16> {
        let limit = self.failure_after;
        self.members
            .iter_mut()
            .filter(|(_, m)| m.status != MemberStatus::Failed && now.saturating_duration_since(m.last_seen) > limit)
            .map(|(&id, m)| {
                m.status = MemberStatus::Failed;
                id
            })
            .collect()
    }

    /// Records a scope change: members in it are ACTIVE, the others
    /// DISENGAGED. FAILED ones stay FAILED, and a member a migration is
    /// moving (DISENGAGING, JOINING) keeps its status until the migration
    /// sets the final one.
    pub fn scope_changed(&mut self, in_scope: &[u32]) {
        for (&id, m) in &mut self.members {
            if !matches!(
                m.status,
                MemberStatus::Failed | MemberStatus::Disengaging | MemberStatus::Joining
            ) {
                m.status = if in_scope.contains(&u32::from(id)) {
                    MemberStatus::Active
                } else {
                    MemberStatus::Disengaged
                };
            }
        }
    }

    /// Sets `node`'s status (a migration moves it); false if unknown.
    pub fn set_status(&mut self, node: u16, status: MemberStatus) -> bool {
        self.members.get_mut(&node).map(|m| m.status = status).is_some()
    }

    /// `node` as registered.
    pub fn member(&self, node: u16) -> Option<&Member> {
        self.members.get(&node)
    }

    /// Members that are not FAILED and forward by a scope older than
    /// `version`: the ones a flip still waits for.
    pub fn lagging(&self, version: u64) -> Vec<u16> {
        self.members
            .iter()
            .filter(|(_, m)| m.status != MemberStatus::Failed && m.scope_version < version)
            .map(|(&id, _)| id)
            .collect()
    }

    /// Every member, for operators.
    pub fn view(&self, now: Instant) -> Vec<MemberView> {
        self.members
            .iter()
            .map(|(&node, m)| MemberView {
                node,
                name: m.name.clone(),
                status: m.status,
                last_seen_ms: now.saturating_duration_since(m.last_seen).as_millis(),
                flows: m.flows,
                workers: m.workers,
                scope_version: m.scope_version,
                registered: m.registered,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_fails_a_member_and_a_heartbeat_revives_it() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_millis(600));
        assert_eq!(m.register(0, "fd-a", Incarnation(1), 2, true, t0), Registration::New);
        assert_eq!(m.register(1, "fd-b", Incarnation(7), 2, true, t0), Registration::New);
        let t1 = t0 + Duration::from_millis(500);
        m.heartbeat(0, Incarnation(1), 42, 3, t1).unwrap();
        assert!(m.tick(t1).is_empty());
        let t2 = t0 + Duration::from_millis(700);
        assert_eq!(m.tick(t2), vec![1]);
        assert!(m.tick(t2).is_empty(), "reported once");
        let view = m.view(t2);
        assert_eq!((view[0].status, view[0].flows), (MemberStatus::Active, 42));
        assert_eq!(m.lagging(3), Vec::<u16>::new(), "the FAILED member is not waited for");
        assert_eq!(m.lagging(4), vec![0]);
        assert_eq!(view[1].status, MemberStatus::Failed);
        m.heartbeat(1, Incarnation(7), 0, 1, t2).unwrap();
        assert_eq!(m.view(t2)[1].status, MemberStatus::Active);
    }

    #[test]
    fn a_restart_replaces_the_member_and_silences_the_old_run() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_secs(1));
        m.register(0, "fd-a", Incarnation(1), 2, true, t0);
        m.heartbeat(0, Incarnation(1), 10, 1, t0).unwrap();
        m.set_status(0, MemberStatus::Disengaging);
        assert_eq!(m.register(0, "fd-a", Incarnation(1), 2, true, t0), Registration::Again);
        assert_eq!(m.view(t0)[0].flows, 10);
        assert_eq!(
            m.view(t0)[0].status,
            MemberStatus::Disengaging,
            "a reconnect keeps the migration's status"
        );
        assert_eq!(
            m.register(0, "fd-a", Incarnation(2), 2, true, t0),
            Registration::Restarted
        );
        assert_eq!(
            m.heartbeat(0, Incarnation(1), 10, 1, t0),
            Err(HeartbeatError::StaleIncarnation {
                node: 0,
                got: Incarnation(1),
                registered: Incarnation(2)
            })
        );
        assert_eq!(
            m.heartbeat(5, Incarnation(1), 0, 1, t0),
            Err(HeartbeatError::Unknown(5))
        );
    }

    #[test]
    fn a_member_expected_after_a_manager_restart_registers_as_new_or_fails_late() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(2);
        let mut m = Membership::new(Duration::from_secs(1));
        m.expect(0, "fd-a", t0, grace);
        m.expect(1, "fd-b", t0, grace);
        let v = m.view(t0);
        assert_eq!((v[0].status, v[0].registered), (MemberStatus::Active, false));
        assert!(
            m.tick(t0 + Duration::from_millis(2900)).is_empty(),
            "no failure within grace and limit"
        );
        assert_eq!(
            m.register(0, "fd-a", Incarnation(9), 2, true, t0 + Duration::from_millis(2950)),
            Registration::New,
            "a node's first registration with this manager is not a restart"
        );
        let v = m.view(t0);
        assert_eq!((v[0].registered, v[0].workers), (true, 2));
        assert_eq!(
            m.tick(t0 + Duration::from_millis(3100)),
            vec![1],
            "fd-b never came back"
        );
        m.expect(0, "fd-a", t0, grace);
        assert!(
            m.view(t0)[0].registered,
            "expecting a registered member changes nothing"
        );
    }

    #[test]
    fn scope_changes_set_active_and_disengaged_but_not_failed() {
        let t0 = Instant::now();
        let mut m = Membership::new(Duration::from_millis(10));
        m.register(0, "fd-a", Incarnation(1), 1, true, t0);
        m.register(1, "fd-b", Incarnation(1), 1, true, t0);
        m.tick(t0 + Duration::from_millis(20));
        m.heartbeat(0, Incarnation(1), 0, 1, t0 + Duration::from_millis(20))
            .unwrap();
        m.scope_changed(&[1]);
        let v = m.view(t0);
        assert_eq!(
            (v[0].status, v[1].status),
            (MemberStatus::Disengaged, MemberStatus::Failed)
        );
        assert!(m.set_status(0, MemberStatus::Joining));
        m.scope_changed(&[0, 1]);
        assert_eq!(
            m.view(t0)[0].status,
            MemberStatus::Joining,
            "the migration sets the final status"
        );
        assert!(!m.set_status(9, MemberStatus::Active));
    }
}
