//! Carries out one migration the manager admitted, on its own thread, over
//! the nodes' control sessions:
//!
//! - disengage: `MigrateStart` (the plan) → the node copies, cuts and
//!   broadcasts, answers `ReadyToFlip` → the edge flips to the plan, every
//!   node gets `ScopeUpdate` and the driver waits until their heartbeats
//!   report it → `Flipped` → the node drains and purges, answers `Drained`
//!   and `Purged` → DISENGAGED.
//! - engage: the edge flips to the plan, the nodes follow → ACTIVE. The
//!   connections of moved buckets stay with their owners (their ownership
//!   entries steer them there); the node takes new ones.
//!
//! Every phase is reported to the operator as it starts, and the copy as
//! the node reports it (every 100 ms at most, [`copy_progress`]). Before the flip a
//! failure aborts: the scope is unchanged and the node keeps serving. After
//! the flip nothing is undone; the failure is reported as it is.

use super::manager::{lock, ManagerState};
use crate::{
    admin::AdminResponse,
    control::{
        ids::{Capabilities, Incarnation, NodeId},
        message::{Abort, AbortReason, Body, Flipped, MemberStatus, MigrateStart, MigrationMode, Phase, Progress},
        scope_wire::WireScope,
    },
    edge::migration::Running,
    metrics,
    scope::Scope,
};
use crossbeam::channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// How often a wait checks the deadline and the node's liveness.
const POLL: Duration = Duration::from_millis(10);

/// A request to the edge's loop, which owns the program: publish `plan`.
#[derive(Debug)]
pub struct FlipRequest {
    /// The scope to spray by.
    pub plan: Scope,
    /// Buckets that changed owner, or why the flip failed.
    pub done: Sender<Result<usize, String>>,
}

/// Why a migration did not complete.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// Nothing changed: the scope is the old one.
    #[error("aborted, nothing changed: {0}")]
    Aborted(String),
    /// The node died or its session broke.
    #[error("node lost in the {0:?} phase: marked FAILED")]
    TargetLost(Phase),
    /// After the flip: the scope changed, a later step failed.
    #[error("the scope flipped, then: {0}")]
    AfterFlip(String),
}

/// One migration in progress.
#[derive(Debug)]
pub struct Driver {
    state: Arc<Mutex<ManagerState>>,
    flips: Sender<FlipRequest>,
    reply: Sender<AdminResponse>,
    running: Running,
    events: Receiver<Body>,
    started: Instant,
    phase_started: Instant,
    phases: Vec<serde_json::Value>,
    flipped: bool,
    /// The run of the node the migration started with: a restart loses it.
    target_run: Option<Incarnation>,
}

impl Driver {
    /// A driver for `running`; the node's migration messages arrive on
    /// `events`, progress and the result go to `reply`.
    pub fn new(
        state: Arc<Mutex<ManagerState>>,
        flips: Sender<FlipRequest>,
        reply: Sender<AdminResponse>,
        running: Running,
        events: Receiver<Body>,
    ) -> Self {
        let now = Instant::now();
        let target_run = lock(&state).membership.member(running.target).map(|m| m.incarnation);
        Self {
            target_run,
            state,
            flips,
            reply,
            running,
            events,
            started: now,
            phase_started: now,
            phases: Vec::new(),
            flipped: false,
        }
    }

    /// Runs the migration to `plan` to its end, sets the node's final status,
    /// frees the coordinator and answers the operator.
    pub fn run(mut self, plan: &Scope) {
        let result = match self.running.mode {
            MigrationMode::Disengage => self.disengage(plan),
            MigrationMode::Engage => self.flip(plan),
        };
        let (serial, target) = (self.running.serial, self.running.target);
        let status = match (&result, self.running.mode) {
            (Err(Failure::TargetLost(_)), _) => MemberStatus::Failed,
            (Ok(()), MigrationMode::Disengage) | (Err(Failure::AfterFlip(_)), MigrationMode::Disengage) => {
                MemberStatus::Disengaged
            }
            (Err(Failure::Aborted(_)), MigrationMode::Disengage) => MemberStatus::Active,
            (_, MigrationMode::Engage) if self.flipped => MemberStatus::Active,
            (_, MigrationMode::Engage) => MemberStatus::Disengaged,
        };
        if let Err(Failure::Aborted(detail)) = &result {
            lock(&self.state).send(
                target,
                Body::Abort(Abort {
                    serial,
                    reason: AbortReason::Cancelled,
                    detail: detail.clone(),
                }),
            );
        }
        self.close_phase();
        {
            let mut s = lock(&self.state);
            s.migration_events = None;
            s.membership.set_status(target, status);
            if status == MemberStatus::Failed {
                s.member_failed(target);
            }
            s.coordinator.end(serial, Instant::now());
            let outcome = match &result {
                Ok(()) => "completed",
                Err(Failure::Aborted(_)) => "aborted",
                Err(Failure::TargetLost(_)) => "node_lost",
                Err(Failure::AfterFlip(_)) => "failed_after_flip",
            };
            let labels = metrics::labels(&[("mode", mode_label(self.running.mode)), ("outcome", outcome)]);
            s.migration_metrics.outcomes.get_or_create(&labels).inc();
            s.migration_metrics
                .total_seconds
                .get_or_create(&labels)
                .observe(self.started.elapsed().as_secs_f64());
        }
        let report = serde_json::json!({
            "serial": serial.0,
            "mode": self.running.mode,
            "node": target,
            "status": status,
            "total_ms": ms(self.started.elapsed()),
            "phases": self.phases,
        });
        let response = match result {
            Ok(()) => {
                tracing::info!(%serial, node = target, ?status, "migration done");
                AdminResponse::Done(report)
            }
            Err(failure) => {
                // The operator saw each phase start; the full report goes
                // to the log rather than into the message.
                tracing::warn!(%serial, node = target, error = %failure, %report, "migration failed");
                AdminResponse::Error {
                    message: failure.to_string(),
                }
            }
        };
        let _ = self.reply.send(response);
    }

    fn disengage(&mut self, plan: &Scope) -> Result<(), Failure> {
        let (serial, target) = (self.running.serial, self.running.target);
        let (from_version, capabilities, heirs) = {
            let s = lock(&self.state);
            (s.scope.version, capabilities_of(&s, target), s.scope.gains(plan))
        };
        self.enter(Phase::Select, serde_json::json!({ "buckets_by_inheritor": heirs }));
        let start = MigrateStart {
            serial,
            mode: MigrationMode::Disengage,
            target: NodeId::new(target).map_err(|e| Failure::Aborted(format!("node id {target}: {e}")))?,
            from_version,
            plan: WireScope::new(plan, capabilities),
            deadline: self.running.deadline.saturating_duration_since(Instant::now()),
        };
        if !lock(&self.state).send(target, Body::MigrateStart(start)) {
            return Err(Failure::TargetLost(Phase::Select));
        }
        let handed_over = self.wait_for(|body| match body {
            Body::ReadyToFlip(r) if r.serial == serial => Some(r.flows_handed_over),
            _ => None,
        })?;
        self.phases_note("flows_handed_over", handed_over.into());
        self.flip(plan)?;
        let version = plan.version;
        if !lock(&self.state).send(
            target,
            Body::Flipped(Flipped {
                serial,
                scope_version: version,
            }),
        ) {
            return Err(Failure::TargetLost(Phase::Flip));
        }
        self.enter(Phase::Drain, serde_json::Value::Null);
        self.wait_for(|body| matches!(body, Body::Drained(d) if d.serial == serial).then_some(()))?;
        self.enter(Phase::Purge, serde_json::Value::Null);
        self.wait_for(|body| matches!(body, Body::Purged(p) if p.serial == serial).then_some(()))
    }

    /// Publishes `plan` at the edge (which sends it to the nodes that gain
    /// buckets), then to the other nodes once the gainers forward by it, and
    /// waits until each live node does.
    fn flip(&mut self, plan: &Scope) -> Result<(), Failure> {
        self.enter(Phase::Flip, serde_json::json!({ "scope_version": plan.version }));
        let gainers: Vec<u16> = lock(&self.state)
            .scope
            .gains(plan)
            .into_keys()
            .filter_map(|new| u16::try_from(new).ok())
            .collect();
        let (done, result) = bounded(1);
        self.flips
            .send(FlipRequest {
                plan: plan.clone(),
                done,
            })
            .map_err(|_| Failure::Aborted("the edge is shutting down".into()))?;
        let moved = match result.recv_timeout(self.remaining()) {
            Ok(Ok(moved)) => moved,
            Ok(Err(e)) => return Err(Failure::Aborted(format!("the edge could not flip: {e}"))),
            Err(_) => return Err(Failure::Aborted("the edge did not flip in time".into())),
        };
        self.flipped = true;
        self.phases_note("moved_buckets", moved.into());
        // The nodes taking buckets over adopt the flip first: until the
        // others follow, a packet they get for a moved bucket goes to its
        // old owner, which still takes it. In the other order the two would
        // send it back and forth.
        self.await_version(plan.version, Some(&gainers))?;
        lock(&self.state).tell_scope(plan, |node| !gainers.contains(&node));
        self.await_version(plan.version, None)
    }

    /// Waits until the live nodes (of `only`, if given) forward by `version`.
    fn await_version(&self, version: u64, only: Option<&[u16]>) -> Result<(), Failure> {
        loop {
            let lagging: Vec<u16> = lock(&self.state)
                .membership
                .lagging(version)
                .into_iter()
                .filter(|n| only.is_none_or(|o| o.contains(n)))
                .collect();
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= self.running.deadline {
                return Err(Failure::AfterFlip(format!(
                    "nodes {lagging:?} did not take scope version {version} in time"
                )));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for the node's message that `pick` accepts, taking progress
    /// reports on the way; fails on the node's abort, its loss, or the deadline.
    fn wait_for<T>(&mut self, mut pick: impl FnMut(&Body) -> Option<T>) -> Result<T, Failure> {
        loop {
            match self.events.recv_timeout(POLL.min(self.remaining())) {
                Ok(Body::Progress(p)) => {
                    if p.phase > self.running.phase {
                        self.enter(p.phase, serde_json::Value::Null);
                    } else if p.phase == Phase::Copy && self.running.phase == Phase::Copy {
                        // Within the copy: the operator sees it move.
                        let line = copy_progress(ms(self.started.elapsed()), &p);
                        let _ = self.reply.send(AdminResponse::Progress(line));
                    }
                    // The counters are the copy's totals so far, whichever
                    // phase the report enters: the one entering Broadcast
                    // closes the copy. They are the Copy phase's facts.
                    self.note_on(Phase::Copy, "flows_copied", p.flows_copied.into());
                    self.note_on(Phase::Copy, "deltas_sent", p.deltas_sent.into());
                    self.note_on(Phase::Copy, "bytes_sent", p.bytes_sent.into());
                }
                Ok(Body::Abort(a)) => {
                    let why = format!("{} ({})", a.reason, a.detail);
                    return Err(if self.flipped {
                        Failure::AfterFlip(why)
                    } else {
                        Failure::Aborted(why)
                    });
                }
                Ok(body) => {
                    if let Some(found) = pick(&body) {
                        return Ok(found);
                    }
                    tracing::warn!(kind = ?body.kind(), "unexpected migration message");
                }
                Err(RecvTimeoutError::Timeout) => {
                    let target = self.running.target;
                    let alive = {
                        let s = lock(&self.state);
                        s.outboxes.contains_key(&target)
                            && s.membership.member(target).is_some_and(|m| {
                                m.status != MemberStatus::Failed && Some(m.incarnation) == self.target_run
                            })
                    };
                    if !alive {
                        return Err(Failure::TargetLost(self.running.phase));
                    }
                    if Instant::now() >= self.running.deadline {
                        let why = format!("deadline passed in the {:?} phase", self.running.phase);
                        return Err(if self.flipped {
                            Failure::AfterFlip(why)
                        } else {
                            Failure::Aborted(why)
                        });
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Failure::Aborted("the manager is shutting down".into()))
                }
            }
        }
    }

    fn remaining(&self) -> Duration {
        self.running
            .deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    }

    /// Closes the current phase and enters `phase`, telling the operator.
    fn enter(&mut self, phase: Phase, detail: serde_json::Value) {
        self.close_phase();
        self.running.phase = phase;
        self.phase_started = Instant::now();
        lock(&self.state).coordinator.advance(self.running.serial, phase);
        let line = serde_json::json!({
            "phase": phase,
            "at_ms": ms(self.started.elapsed()),
            "detail": detail,
        });
        let _ = self.reply.send(AdminResponse::Progress(line.clone()));
        self.phases.push(line);
    }

    /// Records the current phase's duration, in its report line and in
    /// `handoff_migration_phase_duration_seconds`.
    fn close_phase(&mut self) {
        if let Some(last) = self.phases.last_mut() {
            if last.get("ms").is_none() {
                let elapsed = self.phase_started.elapsed();
                last["ms"] = ms(elapsed).into();
                let labels = metrics::labels(&[
                    ("mode", mode_label(self.running.mode)),
                    ("phase", phase_label(self.running.phase)),
                ]);
                lock(&self.state)
                    .migration_metrics
                    .phase_seconds
                    .get_or_create(&labels)
                    .observe(elapsed.as_secs_f64());
            }
        }
    }

    /// Adds a fact to the current phase's record.
    fn phases_note(&mut self, key: &str, value: serde_json::Value) {
        if let Some(last) = self.phases.last_mut() {
            last[key] = value;
        }
    }

    /// Adds a fact to `phase`'s record, if that phase was entered.
    fn note_on(&mut self, phase: Phase, key: &str, value: serde_json::Value) {
        let name = serde_json::json!(phase);
        if let Some(record) = self.phases.iter_mut().rev().find(|r| r["phase"] == name) {
            record[key] = value;
        }
    }
}

/// An admin progress line within the copy, `at_ms` after the migration
/// started: `{"phase": "Copy", "at_ms", "progress": {"flows_copied",
/// "flows_total", "deltas_sent", "bytes_sent"}}`. A phase's first line
/// carries `detail` instead; `progress` marks a line as one within it.
pub fn copy_progress(at_ms: f64, p: &Progress) -> serde_json::Value {
    serde_json::json!({
        "phase": Phase::Copy,
        "at_ms": at_ms,
        "progress": {
            "flows_copied": p.flows_copied,
            "flows_total": p.flows_copied + p.flows_remaining,
            "deltas_sent": p.deltas_sent,
            "bytes_sent": p.bytes_sent,
        },
    })
}

/// A migration mode as a metric label.
pub fn mode_label(mode: MigrationMode) -> &'static str {
    match mode {
        MigrationMode::Disengage => "disengage",
        MigrationMode::Engage => "engage",
    }
}

/// A phase as a metric label.
pub fn phase_label(phase: Phase) -> &'static str {
    match phase {
        Phase::Select => "select",
        Phase::Copy => "copy",
        Phase::Broadcast => "broadcast",
        Phase::Flip => "flip",
        Phase::Drain => "drain",
        Phase::Purge => "purge",
    }
}

fn capabilities_of(state: &ManagerState, node: u16) -> Capabilities {
    state
        .registrations
        .get(&node)
        .map_or(Capabilities::THIS_BUILD, |(_, r)| r.capabilities)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        control::{
            ids::{Incarnation, MigrationSerial},
            message::{Drained, InheritorChoice, Purged, ReadyToFlip},
        },
        edge::{
            manager::FAILURE_AFTER,
            membership::Membership,
            migration::{plan_disengage, Candidate, Coordinator},
        },
        scope::HashParams,
    };
    use std::collections::BTreeMap;

    const TARGET: u16 = 0;

    /// The shared state, the running attempt, what the node receives, and
    /// the node's and the driver's ends of the event channel.
    type Setup = (
        Arc<Mutex<ManagerState>>,
        Running,
        Receiver<Body>,
        Sender<Body>,
        Receiver<Body>,
    );

    /// A manager with members 0..3 registered and ACTIVE, and the target's
    /// outbox; fd-a (0) is DISENGAGING in migration 1.
    fn setup(timeout: Duration) -> Setup {
        let now = Instant::now();
        let mut membership = Membership::new(FAILURE_AFTER);
        for node in 0..3 {
            membership.register(node, "n", Incarnation(1), 1, true, now);
            membership.heartbeat(node, Incarnation(1), 10, 1, now).unwrap();
        }
        membership.set_status(TARGET, MemberStatus::Disengaging);
        let (outbox, to_node) = bounded(64);
        let mut coordinator = Coordinator::new(Duration::ZERO);
        let running = coordinator
            .begin(MigrationMode::Disengage, TARGET, now, timeout)
            .unwrap();
        let (events_tx, events) = bounded(64);
        let state = ManagerState {
            membership,
            hash: HashParams {
                buckets: 64,
                symmetric: false,
                seed: 0,
            },
            scope: Scope::initial(64, &[0, 1, 2]).unwrap(),
            configured: BTreeMap::new(),
            registrations: BTreeMap::new(),
            outboxes: [(TARGET, outbox)].into(),
            coordinator,
            migration_events: Some(events_tx.clone()),
            refused: 0,
            migration_metrics: crate::metrics::MigrationMetrics::default(),
        };
        (Arc::new(Mutex::new(state)), running, to_node, events_tx, events)
    }

    /// Plays the edge's loop: publishes flips into the shared state and, as
    /// the nodes would, reports the new version in their heartbeats.
    fn edge(state: &Arc<Mutex<ManagerState>>) -> (Sender<FlipRequest>, std::thread::JoinHandle<usize>) {
        let (tx, rx) = bounded::<FlipRequest>(4);
        let state = Arc::clone(state);
        let thread = std::thread::spawn(move || {
            let mut flips = 0;
            while let Ok(FlipRequest { plan, done }) = rx.recv() {
                let mut s = lock(&state);
                for node in 0..3 {
                    s.membership
                        .heartbeat(node, Incarnation(1), 10, plan.version, Instant::now())
                        .unwrap();
                }
                let moved = s.scope.moves(&plan).count();
                s.scope = plan;
                flips += 1;
                let _ = done.send(Ok(moved));
            }
            flips
        });
        (tx, thread)
    }

    fn plan(state: &Mutex<ManagerState>) -> Scope {
        let s = lock(state);
        let members: Vec<Candidate> = (0..3)
            .map(|node| Candidate {
                node,
                status: MemberStatus::Active,
                flows: 10,
            })
            .collect();
        plan_disengage(&s.scope, TARGET, InheritorChoice::Spread, &members).unwrap()
    }

    fn progress(serial: MigrationSerial, phase: Phase, flows_copied: u64, deltas_sent: u64) -> Body {
        Body::Progress(Progress {
            serial,
            phase,
            flows_copied,
            deltas_sent,
            flows_remaining: 3400u64.saturating_sub(flows_copied),
            bytes_sent: flows_copied * 100,
        })
    }

    /// Runs the driver to its end; returns the operator's lines, the
    /// messages the node got, and how many flips the edge made.
    fn drive(
        timeout: Duration,
        node: impl FnOnce(MigrationSerial, Receiver<Body>, Sender<Body>, Arc<Mutex<ManagerState>>) + Send + 'static,
    ) -> (Vec<AdminResponse>, Arc<Mutex<ManagerState>>, usize) {
        let (state, running, to_node, events_tx, events) = setup(timeout);
        let plan = plan(&state);
        let (flips, edge) = edge(&state);
        let (reply, replies) = crossbeam::channel::unbounded();
        let serial = running.serial;
        let shared = Arc::clone(&state);
        let node = std::thread::spawn(move || node(serial, to_node, events_tx, shared));
        Driver::new(Arc::clone(&state), flips, reply, running, events).run(&plan);
        node.join().unwrap();
        let lines = replies.try_iter().collect();
        (lines, Arc::clone(&state), edge.join().unwrap())
    }

    #[test]
    fn a_disengage_runs_every_phase_in_order_and_ends_disengaged() {
        let (lines, state, flips) = drive(Duration::from_secs(10), |serial, to_node, events, _| {
            let recv = || to_node.recv_timeout(Duration::from_secs(5)).unwrap();
            assert!(matches!(recv(), Body::MigrateStart(m) if m.serial == serial && m.from_version == 1));
            events.send(progress(serial, Phase::Copy, 0, 0)).unwrap();
            events.send(progress(serial, Phase::Copy, 1500, 0)).unwrap();
            events.send(progress(serial, Phase::Copy, 3000, 0)).unwrap();
            // Entering Broadcast, the node reports what the copy did.
            events.send(progress(serial, Phase::Broadcast, 3400, 12)).unwrap();
            // A late message of an earlier attempt is not taken as the answer.
            let stale = MigrationSerial(serial.0 + 9);
            events
                .send(Body::ReadyToFlip(ReadyToFlip {
                    serial: stale,
                    flows_handed_over: 1,
                }))
                .unwrap();
            events
                .send(Body::ReadyToFlip(ReadyToFlip {
                    serial,
                    flows_handed_over: 42,
                }))
                .unwrap();
            assert!(matches!(recv(), Body::Flipped(f) if f.serial == serial && f.scope_version == 2));
            events.send(Body::Drained(Drained { serial })).unwrap();
            events.send(Body::Purged(Purged { serial })).unwrap();
        });
        assert_eq!(flips, 1);
        let phases: Vec<String> = lines
            .iter()
            .filter_map(|l| match l {
                AdminResponse::Progress(p) => p["phase"].as_str().map(String::from),
                _ => None,
            })
            .collect();
        assert_eq!(
            phases,
            ["Select", "Copy", "Copy", "Copy", "Broadcast", "Flip", "Drain", "Purge"]
        );
        // The reports within the copy reach the operator as it runs, each
        // with the copy's own counters.
        let within: Vec<&serde_json::Value> = lines
            .iter()
            .filter_map(|l| match l {
                AdminResponse::Progress(p) if p.get("progress").is_some() => Some(&p["progress"]),
                _ => None,
            })
            .collect();
        assert_eq!(within.len(), 2, "{lines:?}");
        assert_eq!(within[1]["flows_copied"], 3000);
        assert_eq!(within[1]["flows_total"], 3400);
        assert_eq!(within[1]["bytes_sent"], 300_000);
        let AdminResponse::Done(report) = lines.last().unwrap() else {
            panic!("{lines:?}")
        };
        assert_eq!(report["status"], "Disengaged");
        assert_eq!(report["phases"][2]["flows_handed_over"], 42);
        // Each phase carries its own facts: the copy's counters on Copy
        // (from the report that entered Broadcast), none on Broadcast.
        assert_eq!(report["phases"][1]["flows_copied"], 3400, "{report}");
        assert_eq!(report["phases"][1]["deltas_sent"], 12, "{report}");
        assert_eq!(report["phases"][1]["bytes_sent"], 340_000, "{report}");
        assert_eq!(report["phases"].as_array().unwrap().len(), 6, "{report}");
        assert!(report["phases"][2].get("flows_copied").is_none(), "{report}");
        assert!(report["phases"][2]["detail"].is_null(), "{report}");
        assert!(
            report["phases"][0]["detail"]["buckets_by_inheritor"].is_object(),
            "{report}"
        );
        assert_eq!(report["phases"][3]["detail"]["scope_version"], 2, "{report}");
        assert!(report["phases"][3]["moved_buckets"].is_number(), "{report}");
        assert!(report["phases"].as_array().unwrap().iter().all(|p| p["ms"].is_number()));
        let s = lock(&state);
        assert_eq!(s.membership.member(TARGET).unwrap().status, MemberStatus::Disengaged);
        assert!(s.coordinator.running().is_none() && s.migration_events.is_none());
        assert_eq!(s.scope.buckets_of(u32::from(TARGET)).count(), 0);
    }

    #[test]
    fn an_abort_before_the_flip_changes_nothing() {
        let (lines, state, flips) = drive(Duration::from_secs(10), |serial, to_node, events, _| {
            assert!(matches!(
                to_node.recv_timeout(Duration::from_secs(5)).unwrap(),
                Body::MigrateStart(_)
            ));
            events
                .send(Body::Abort(Abort {
                    serial,
                    reason: AbortReason::InheritorLost {
                        node: NodeId::new(2).unwrap(),
                    },
                    detail: "fd-c: connection refused".into(),
                }))
                .unwrap();
            // The manager confirms the end to the node.
            assert!(
                matches!(to_node.recv_timeout(Duration::from_secs(5)).unwrap(), Body::Abort(a) if a.serial == serial)
            );
        });
        assert_eq!(flips, 0);
        let AdminResponse::Error { message } = lines.last().unwrap() else {
            panic!("{lines:?}")
        };
        assert!(
            message.contains("aborted, nothing changed: inheritor node 2 was lost (fd-c: connection refused)"),
            "{message}"
        );
        let s = lock(&state);
        assert_eq!(s.membership.member(TARGET).unwrap().status, MemberStatus::Active);
        assert_eq!(s.scope.version, 1);
    }

    #[test]
    fn a_silent_node_hits_the_deadline_and_a_lost_one_is_failed() {
        let (lines, state, flips) = drive(Duration::from_millis(200), |_, to_node, _, _| {
            assert!(matches!(
                to_node.recv_timeout(Duration::from_secs(5)).unwrap(),
                Body::MigrateStart(_)
            ));
        });
        assert_eq!(flips, 0);
        assert!(
            matches!(lines.last().unwrap(), AdminResponse::Error { message } if message.contains("deadline passed in the Select phase")),
            "{lines:?}"
        );
        assert_eq!(
            lock(&state).membership.member(TARGET).unwrap().status,
            MemberStatus::Active
        );

        let (lines, state, _) = drive(Duration::from_secs(10), |_, to_node, _, state| {
            assert!(matches!(
                to_node.recv_timeout(Duration::from_secs(5)).unwrap(),
                Body::MigrateStart(_)
            ));
            // The node's session ends: its outbox goes away.
            lock(&state).outboxes.remove(&TARGET);
        });
        assert!(
            matches!(lines.last().unwrap(), AdminResponse::Error { message } if message.contains("node lost")),
            "{lines:?}"
        );
        assert_eq!(
            lock(&state).membership.member(TARGET).unwrap().status,
            MemberStatus::Failed
        );

        // The node restarted mid-migration: its new run knows nothing of it.
        let (lines, _, _) = drive(Duration::from_secs(10), |_, to_node, _, state| {
            assert!(matches!(
                to_node.recv_timeout(Duration::from_secs(5)).unwrap(),
                Body::MigrateStart(_)
            ));
            lock(&state)
                .membership
                .register(TARGET, "n", Incarnation(2), 1, true, Instant::now());
        });
        assert!(
            matches!(lines.last().unwrap(), AdminResponse::Error { message } if message.contains("node lost")),
            "{lines:?}"
        );
    }
}
