//! The migration manager's decisions, as plain logic over explicit
//! timestamps: which scope a disengage or engage flips to (the plan), and
//! whether a migration may start now (one at a time, hold-down after each).
//! The edge's driver thread carries the decisions out over the control
//! protocol (see [`super::driver`]).

use crate::{
    control::{
        ids::{MigrationSerial, NodeId},
        message::{InheritorChoice, MemberStatus, MigrationMode, MigrationReport, Phase},
    },
    scope::{maglev::UNOWNED, Scope},
};
use std::time::{Duration, Instant};

/// Why a migration cannot start or cannot be planned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another migration runs.
    #[error("busy: {mode:?} of node {target} is in the {phase:?} phase; one migration runs at a time")]
    Busy {
        /// Its direction.
        mode: MigrationMode,
        /// Its node.
        target: u16,
        /// Where it is.
        phase: Phase,
    },
    /// The node is not in a state this migration starts from.
    #[error("node {node} is {status:?}; {mode:?} needs it {needed}")]
    WrongStatus {
        /// The node.
        node: u16,
        /// Its status.
        status: MemberStatus,
        /// The requested direction.
        mode: MigrationMode,
        /// What it must be.
        needed: &'static str,
    },
    /// The node has not registered with the manager.
    #[error("node {0} is not registered with the manager")]
    NotRegistered(u16),
    /// No live member could inherit.
    #[error("no ACTIVE member besides node {0} could inherit its buckets")]
    NoInheritor(u16),
    /// The operator named an inheritor that cannot inherit.
    #[error("node {0} cannot inherit: it is not an ACTIVE member in the scope")]
    BadInheritor(u16),
}

/// A member as the planner sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Its id.
    pub node: u16,
    /// Its status.
    pub status: MemberStatus,
    /// Flows over all its workers, from its last heartbeat.
    pub flows: u64,
}

/// The scope after disengaging `target`: its buckets go to the inheritors
/// `choice` names, every other bucket keeps its owner. Only ACTIVE members
/// in `scope` inherit.
pub fn plan_disengage(
    scope: &Scope,
    target: u16,
    choice: InheritorChoice,
    members: &[Candidate],
) -> Result<Scope, Refusal> {
    let in_scope = scope.members();
    let heirs: Vec<&Candidate> = members
        .iter()
        .filter(|m| m.node != target && m.status == MemberStatus::Active && in_scope.contains(&u32::from(m.node)))
        .collect();
    let single_heir = match choice {
        InheritorChoice::Spread => None,
        InheritorChoice::LeastFlows => Some(
            heirs
                .iter()
                .min_by_key(|m| (m.flows, m.node))
                .ok_or(Refusal::NoInheritor(target))?
                .node,
        ),
        InheritorChoice::Named(node) => Some(
            heirs
                .iter()
                .find(|m| m.node == node.get())
                .ok_or(Refusal::BadInheritor(node.get()))?
                .node,
        ),
    };
    if heirs.is_empty() {
        return Err(Refusal::NoInheritor(target));
    }
    let plan = match single_heir {
        // The next scope without the target: Maglev moves only its buckets.
        None => scope
            .rebuilt(&heirs.iter().map(|m| u32::from(m.node)).collect::<Vec<_>>())
            .map_err(|_| Refusal::NoInheritor(target))?,
        Some(heir) => Scope {
            version: scope.version + 1,
            table: scope
                .table
                .iter()
                .map(|&owner| {
                    if owner == u32::from(target) {
                        u32::from(heir)
                    } else {
                        owner
                    }
                })
                .collect(),
        },
    };
    debug_assert!(plan.table.iter().all(|&o| o != UNOWNED && o != u32::from(target)));
    Ok(plan)
}

/// The scope with `target` added: Maglev gives it an equal share, taken from
/// every member.
pub fn plan_engage(scope: &Scope, target: u16) -> Result<Scope, Refusal> {
    let mut members = scope.members();
    members.push(u32::from(target));
    scope.rebuilt(&members).map_err(|_| Refusal::NoInheritor(target))
}

/// The migration that runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Running {
    /// Its attempt.
    pub serial: MigrationSerial,
    /// Its direction.
    pub mode: MigrationMode,
    /// Its node.
    pub target: u16,
    /// Where it is.
    pub phase: Phase,
    /// When it must be over.
    pub deadline: Instant,
}

/// Admits migrations one at a time. After each, automatic actions (failover)
/// wait out a hold-down, so the cluster settles before the manager acts on
/// its own; operators' requests do not wait.
#[derive(Debug)]
pub struct Coordinator {
    running: Option<Running>,
    last_ended: Option<Instant>,
    last_serial: u32,
    hold_down: Duration,
}

impl Coordinator {
    /// A coordinator whose automatic actions wait `hold_down` after a migration.
    pub fn new(hold_down: Duration) -> Self {
        Self {
            running: None,
            last_ended: None,
            last_serial: 0,
            hold_down,
        }
    }

    /// Starts a migration of `target` unless one runs.
    pub fn begin(
        &mut self,
        mode: MigrationMode,
        target: u16,
        now: Instant,
        timeout: Duration,
    ) -> Result<Running, Refusal> {
        if let Some(r) = self.running {
            return Err(Refusal::Busy {
                mode: r.mode,
                target: r.target,
                phase: r.phase,
            });
        }
        self.last_serial = self.last_serial.wrapping_add(1).max(1);
        let running = Running {
            serial: MigrationSerial(self.last_serial),
            mode,
            target,
            phase: Phase::Select,
            deadline: now + timeout,
        };
        self.running = Some(running);
        Ok(running)
    }

    /// Records that the running attempt `serial` entered `phase`; a phase
    /// never goes back. Returns false for any other attempt.
    pub fn advance(&mut self, serial: MigrationSerial, phase: Phase) -> bool {
        match &mut self.running {
            Some(r) if r.serial == serial => {
                r.phase = r.phase.max(phase);
                true
            }
            _ => false,
        }
    }

    /// Ends attempt `serial` (done or aborted); the hold-down starts.
    pub fn end(&mut self, serial: MigrationSerial, now: Instant) {
        if self.running.is_some_and(|r| r.serial == serial) {
            self.running = None;
            self.last_ended = Some(now);
        }
    }

    /// The running attempt.
    pub fn running(&self) -> Option<Running> {
        self.running
    }

    /// The running attempt, for operators and `Busy` answers.
    pub fn report(&self) -> Option<MigrationReport> {
        let r = self.running?;
        Some(MigrationReport {
            serial: r.serial,
            mode: r.mode,
            target: NodeId::new(r.target).ok()?,
            phase: r.phase,
        })
    }

    /// Whether automatic actions (failover) may run now: no migration runs
    /// and the hold-down after the last one is over.
    pub fn quiet(&self, now: Instant) -> bool {
        self.running.is_none()
            && self
                .last_ended
                .is_none_or(|ended| now.saturating_duration_since(ended) >= self.hold_down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(node: u16, flows: u64) -> Candidate {
        Candidate {
            node,
            status: MemberStatus::Active,
            flows,
        }
    }

    #[test]
    fn spread_moves_only_the_targets_buckets_over_every_heir() {
        let s = Scope::initial(4096, &[0, 1, 2]).unwrap();
        let plan = plan_disengage(
            &s,
            0,
            InheritorChoice::Spread,
            &[active(0, 9), active(1, 5), active(2, 7)],
        )
        .unwrap();
        assert_eq!(plan.version, s.version + 1);
        assert_eq!(plan.buckets_of(0).count(), 0);
        assert!(s.moves(&plan).all(|(_, old, _)| old == 0));
        let to = |n| s.moves(&plan).filter(|&(_, _, new)| new == n).count();
        assert!(to(1) > 0 && to(2) > 0, "spread over both heirs");
    }

    #[test]
    fn least_flows_and_named_give_everything_to_one_heir() {
        let s = Scope::initial(1024, &[0, 1, 2]).unwrap();
        let members = [active(0, 9), active(1, 5), active(2, 3)];
        let least = plan_disengage(&s, 0, InheritorChoice::LeastFlows, &members).unwrap();
        assert!(s.moves(&least).all(|(_, old, new)| old == 0 && new == 2));
        assert_eq!(s.moves(&least).count(), s.buckets_of(0).count());
        let named = plan_disengage(&s, 0, InheritorChoice::Named(NodeId::new(1).unwrap()), &members).unwrap();
        assert!(s.moves(&named).all(|(_, _, new)| new == 1));
    }

    #[test]
    fn only_active_members_in_the_scope_inherit() {
        let s = Scope::initial(256, &[0, 1, 2]).unwrap();
        let failed = Candidate {
            node: 2,
            status: MemberStatus::Failed,
            flows: 0,
        };
        let members = [active(0, 1), active(1, 50), failed];
        let least = plan_disengage(&s, 0, InheritorChoice::LeastFlows, &members).unwrap();
        assert!(least.table.iter().all(|&o| o == 1 || o == 2), "2 keeps its own buckets");
        assert!(s.moves(&least).all(|(_, _, new)| new == 1));
        assert_eq!(
            plan_disengage(&s, 0, InheritorChoice::Named(NodeId::new(2).unwrap()), &members),
            Err(Refusal::BadInheritor(2))
        );
        assert_eq!(
            plan_disengage(&s, 0, InheritorChoice::Spread, &[active(0, 1)]),
            Err(Refusal::NoInheritor(0))
        );
        assert_eq!(
            plan_disengage(&s, 0, InheritorChoice::Named(NodeId::new(0).unwrap()), &members),
            Err(Refusal::BadInheritor(0)),
            "a node cannot inherit from itself"
        );
    }

    #[test]
    fn engage_gives_the_node_a_share() {
        let s = Scope::initial(1024, &[1, 2]).unwrap();
        let plan = plan_engage(&s, 0).unwrap();
        assert!(plan.buckets_of(0).count() > 300);
        assert!(s.moves(&plan).all(|(_, _, new)| new == 0));
    }

    #[test]
    fn one_migration_at_a_time_and_automatic_actions_hold_down() {
        let t0 = Instant::now();
        let hold = Duration::from_secs(2);
        let mut c = Coordinator::new(hold);
        assert!(c.quiet(t0));
        let first = c
            .begin(MigrationMode::Disengage, 0, t0, Duration::from_secs(30))
            .unwrap();
        assert_eq!(first.deadline, t0 + Duration::from_secs(30));
        assert!(!c.quiet(t0));
        assert!(c.advance(first.serial, Phase::Flip));
        assert!(c.advance(first.serial, Phase::Copy), "known attempt");
        assert_eq!(c.report().unwrap().phase, Phase::Flip, "phases never go back");
        assert_eq!(
            c.begin(MigrationMode::Engage, 1, t0, hold),
            Err(Refusal::Busy {
                mode: MigrationMode::Disengage,
                target: 0,
                phase: Phase::Flip
            })
        );
        assert!(!c.advance(MigrationSerial(first.serial.0 + 1), Phase::Drain));
        let t1 = t0 + Duration::from_secs(1);
        c.end(first.serial, t1);
        assert!(c.running().is_none());
        let t2 = t1 + Duration::from_millis(500);
        assert!(!c.quiet(t2), "inside the hold-down");
        assert!(c.quiet(t1 + hold));
        let second = c.begin(MigrationMode::Engage, 0, t2, hold).unwrap();
        assert!(second.serial > first.serial, "serials only grow");
        assert!(!c.quiet(t1 + hold), "a running migration holds automatic actions");
    }
}
