//! `handoff top`: a live view of the cluster, refreshed every interval.
//! Per member (the edge's view): its status, its flows (from its
//! heartbeats) and the packets per second the sprayer sends it. Per node and
//! per worker (each node's own admin socket): packets received and sent per
//! second, flows in the table, and drops per second with the few reasons
//! that drop most.
//!
//! Counters are totals since each daemon started; a rate is the difference
//! of two samples over the time between them. The sampling is behind
//! [`Source`] (the admin sockets in [`AdminSource`]); [`Top`] turns samples
//! into [`Frame`]s with plain `std` arithmetic, so the rates and the
//! ordering are tested without a daemon.

use crate::admin::{self, AdminRequest, AdminResponse};
use serde::Serialize;
use serde_json::Value;
use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

/// Drop reasons shown per node or worker, the ones dropping most first.
pub const TOP_DROP_REASONS: usize = 3;

/// A worker's (or a node's summed) counters at one sample.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames handled (`counters.rx`).
    pub rx: u64,
    /// Frames transmitted (`counters.tx`).
    pub tx: u64,
    /// Connections in the flow table now (`table.active`): a gauge.
    pub flows: u64,
    /// Packets dropped, by reason: the pipeline's `drop_*` counters and the
    /// kernel's (`kernel_rx_ring_full`, `kernel_rx_dropped`).
    pub drops: BTreeMap<String, u64>,
}

impl Counters {
    fn add(&mut self, other: &Self) {
        self.rx += other.rx;
        self.tx += other.tx;
        self.flows += other.flows;
        for (reason, n) in &other.drops {
            *self.drops.entry(reason.clone()).or_default() += n;
        }
    }
}

/// One node's answer to `stats`, or why there was none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSample {
    /// The node's name, or its admin socket when it did not answer.
    pub name: String,
    /// Each worker's counters by worker index; empty when unreachable.
    pub workers: Vec<(u64, Counters)>,
    /// Why the node did not answer.
    pub error: Option<String>,
}

/// A member as the edge sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberSample {
    /// Its name.
    pub name: String,
    /// Its status (`Active`, `Disengaged`, ...; `-` unregistered).
    pub status: String,
    /// Flows it reported in its last heartbeat.
    pub flows: Option<u64>,
    /// Packets the sprayer sent it (`handoff stats`' `members[].packets`).
    pub sprayed: u64,
}

/// Everything one refresh reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sample {
    /// The edge's members.
    pub members: Vec<MemberSample>,
    /// The nodes asked, in the order given.
    pub nodes: Vec<NodeSample>,
}

/// Where samples come from.
pub trait Source {
    /// Reads every counter once. Fails when the edge cannot be read; a node
    /// that cannot is reported in its [`NodeSample::error`].
    fn sample(&mut self) -> anyhow::Result<Sample>;
}

/// A drop reason's rate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DropRate {
    /// The counter's name (`drop_no_flow`, `kernel_rx_ring_full`, ...).
    pub reason: String,
    /// Drops per second over the interval.
    pub per_second: f64,
    /// Drops since the daemon started.
    pub total: u64,
}

/// A node's or a worker's rates over one interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rates {
    /// Packets received per second.
    pub rx_pps: f64,
    /// Packets sent per second.
    pub tx_pps: f64,
    /// Connections in the table at the interval's end.
    pub flows: u64,
    /// Drops per second, every reason.
    pub drops_per_second: f64,
    /// The reasons that dropped most, at most [`TOP_DROP_REASONS`]: by rate,
    /// then by total; reasons that never dropped are left out.
    pub top_drops: Vec<DropRate>,
}

/// A node's line and its workers'.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NodeRow {
    /// The node's name (its socket's path when it did not answer).
    pub node: String,
    /// The node's workers summed; `None` when it did not answer now or at
    /// the previous sample.
    pub total: Option<Rates>,
    /// Each worker's, by worker index.
    pub workers: Vec<(u64, Rates)>,
    /// Why the node did not answer.
    pub error: Option<String>,
}

/// A member's line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberRow {
    /// Its name.
    pub name: String,
    /// Its status.
    pub status: String,
    /// Flows in its last heartbeat.
    pub flows: Option<u64>,
    /// Packets per second the sprayer sends it.
    pub sprayed_pps: f64,
}

/// One refresh: the rates over the interval that ended with it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Frame {
    /// Refreshes so far, from 1.
    pub refresh: u64,
    /// Seconds the rates are over.
    pub interval_s: f64,
    /// The edge's members.
    pub members: Vec<MemberRow>,
    /// The nodes.
    pub nodes: Vec<NodeRow>,
}

/// Turns successive samples into frames.
#[derive(Debug, Default)]
pub struct Top {
    previous: Option<(Duration, Sample)>,
    refreshes: u64,
}

/// `now - before` per second over `seconds`. A counter that went back (its
/// daemon restarted) counts from zero.
fn rate(now: u64, before: u64, seconds: f64) -> f64 {
    let delta = if now >= before { now - before } else { now };
    delta as f64 / seconds
}

fn rates(now: &Counters, before: &Counters, seconds: f64) -> Rates {
    let mut drops: Vec<DropRate> = now
        .drops
        .iter()
        .map(|(reason, &total)| DropRate {
            reason: reason.clone(),
            per_second: rate(total, before.drops.get(reason).copied().unwrap_or(0), seconds),
            total,
        })
        .collect();
    // `+ 0.0`: an empty float sum is -0.
    let drops_per_second = drops.iter().map(|d| d.per_second).sum::<f64>() + 0.0;
    drops.retain(|d| d.total > 0);
    drops.sort_by(|a, b| {
        b.per_second
            .total_cmp(&a.per_second)
            .then(b.total.cmp(&a.total))
            .then(a.reason.cmp(&b.reason))
    });
    drops.truncate(TOP_DROP_REASONS);
    Rates {
        rx_pps: rate(now.rx, before.rx, seconds),
        tx_pps: rate(now.tx, before.tx, seconds),
        flows: now.flows,
        drops_per_second,
        top_drops: drops,
    }
}

fn summed(workers: &[(u64, Counters)]) -> Counters {
    let mut total = Counters::default();
    for (_, c) in workers {
        total.add(c);
    }
    total
}

impl Top {
    /// Folds in `sample`, taken `at` (a monotonic time); returns the frame of
    /// the interval since the previous sample, or `None` for the first (a
    /// baseline) or when no time passed.
    pub fn update(&mut self, at: Duration, sample: Sample) -> Option<Frame> {
        let previous = self.previous.replace((at, sample));
        let (before_at, before) = previous?;
        let (_, now) = self.previous.as_ref()?;
        let seconds = at.checked_sub(before_at)?.as_secs_f64();
        if seconds <= 0.0 {
            return None;
        }
        self.refreshes += 1;
        let members = now
            .members
            .iter()
            .map(|m| {
                let sprayed_before = before
                    .members
                    .iter()
                    .find(|b| b.name == m.name)
                    .map_or(0, |b| b.sprayed);
                MemberRow {
                    name: m.name.clone(),
                    status: m.status.clone(),
                    flows: m.flows,
                    sprayed_pps: rate(m.sprayed, sprayed_before, seconds),
                }
            })
            .collect();
        let nodes = now
            .nodes
            .iter()
            .map(|node| {
                let earlier = before
                    .nodes
                    .iter()
                    .find(|b| b.name == node.name && b.error.is_none())
                    .filter(|_| node.error.is_none());
                let workers: Vec<(u64, Rates)> = earlier.map_or_else(Vec::new, |b| {
                    node.workers
                        .iter()
                        .map(|(w, c)| {
                            let old = b.workers.iter().find(|(bw, _)| bw == w).map(|(_, c)| c.clone());
                            (*w, rates(c, &old.unwrap_or_default(), seconds))
                        })
                        .collect()
                });
                NodeRow {
                    node: node.name.clone(),
                    total: earlier.map(|b| rates(&summed(&node.workers), &summed(&b.workers), seconds)),
                    workers,
                    error: node.error.clone(),
                }
            })
            .collect();
        Some(Frame {
            refresh: self.refreshes,
            interval_s: seconds,
            members,
            nodes,
        })
    }
}

/// The drop counters of a worker's report: every `drop_*` of its pipeline
/// counters, and the kernel's drops of its port.
fn worker_counters(report: &Value) -> Counters {
    let count = |v: &Value| v.as_u64().unwrap_or(0);
    let mut drops = BTreeMap::new();
    if let Some(fields) = report["counters"].as_object() {
        for (name, value) in fields.iter().filter(|(n, _)| n.starts_with("drop_")) {
            drops.insert(name.clone(), count(value));
        }
    }
    for name in ["kernel_rx_ring_full", "kernel_rx_dropped"] {
        drops.insert(name.to_string(), count(&report["port"][name]));
    }
    Counters {
        rx: count(&report["counters"]["rx"]),
        tx: count(&report["counters"]["tx"]),
        flows: count(&report["table"]["active"]),
        drops,
    }
}

/// A node's `stats` answer as a sample.
pub fn node_sample(stats: &Value) -> NodeSample {
    NodeSample {
        name: stats["node"].as_str().unwrap_or("?").to_string(),
        workers: stats["workers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|w| (w["worker"].as_u64().unwrap_or(0), worker_counters(w)))
            .collect(),
        error: None,
    }
}

/// The edge's members from its `status` and `stats` answers.
pub fn members(status: &Value, stats: &Value) -> Vec<MemberSample> {
    status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let name = m["name"].as_str().unwrap_or("?").to_string();
            let sprayed = stats["members"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|s| s["name"].as_str() == Some(&name))
                .and_then(|s| s["packets"].as_u64())
                .unwrap_or(0);
            MemberSample {
                status: m["status"].as_str().unwrap_or("-").to_string(),
                flows: m["flows"].as_u64(),
                sprayed,
                name,
            }
        })
        .collect()
}

/// Samples over the admin sockets: the edge's `status` and `stats`, and
/// each node's `stats`.
#[derive(Debug)]
pub struct AdminSource {
    /// The edge's admin socket.
    pub edge: PathBuf,
    /// The nodes' admin sockets.
    pub nodes: Vec<PathBuf>,
    /// How long one answer may take.
    pub timeout: Duration,
}

impl AdminSource {
    fn ask(&self, socket: &std::path::Path, request: AdminRequest) -> anyhow::Result<Value> {
        match admin::call(socket, &request, self.timeout)? {
            AdminResponse::Status(v) | AdminResponse::Stats(v) => Ok(v),
            AdminResponse::Error { message } => anyhow::bail!("{}: {message}", socket.display()),
            other => anyhow::bail!("{}: unexpected answer {other:?}", socket.display()),
        }
    }
}

impl Source for AdminSource {
    fn sample(&mut self) -> anyhow::Result<Sample> {
        let status = self.ask(&self.edge, AdminRequest::Status)?;
        let stats = self.ask(&self.edge, AdminRequest::Stats)?;
        let nodes = self
            .nodes
            .iter()
            .map(|socket| match self.ask(socket, AdminRequest::Stats) {
                Ok(stats) => node_sample(&stats),
                Err(e) => NodeSample {
                    name: socket.display().to_string(),
                    workers: Vec::new(),
                    error: Some(format!("{e:#}")),
                },
            })
            .collect();
        Ok(Sample {
            members: members(&status, &stats),
            nodes,
        })
    }
}

/// Samples `source` every `interval` and hands each frame to `show`,
/// `count` times (forever without), or until `stop` is set. The first
/// sample is the baseline: the first frame comes one interval later.
pub fn run(
    source: &mut dyn Source,
    interval: Duration,
    count: Option<u64>,
    stop: &std::sync::atomic::AtomicBool,
    mut show: impl FnMut(&Frame) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut top = Top::default();
    let mut shown = 0u64;
    let mut tick = 0u32;
    top.update(started.elapsed(), source.sample()?);
    loop {
        tick = tick.saturating_add(1);
        // Sleep to the next tick in short steps, so a signal ends it soon.
        let due = interval.saturating_mul(tick);
        while started.elapsed() < due {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            std::thread::sleep((due - started.elapsed()).min(Duration::from_millis(50)));
        }
        if let Some(frame) = top.update(started.elapsed(), source.sample()?) {
            show(&frame)?;
            shown += 1;
            if count.is_some_and(|c| shown >= c) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::sync::atomic::AtomicBool;

    fn counters(rx: u64, tx: u64, flows: u64, drops: &[(&str, u64)]) -> Counters {
        Counters {
            rx,
            tx,
            flows,
            drops: drops.iter().map(|(r, n)| (r.to_string(), *n)).collect(),
        }
    }

    fn sample(sprayed: u64, workers: Vec<(u64, Counters)>) -> Sample {
        Sample {
            members: vec![MemberSample {
                name: "fd-a".into(),
                status: "Active".into(),
                flows: Some(10),
                sprayed,
            }],
            nodes: vec![NodeSample {
                name: "fd-a".into(),
                workers,
                error: None,
            }],
        }
    }

    #[test]
    fn rates_are_counter_differences_over_the_interval() {
        let mut top = Top::default();
        let first = sample(
            1000,
            vec![
                (0, counters(100, 90, 5, &[("drop_no_flow", 4), ("drop_ttl_expired", 0)])),
                (
                    1,
                    counters(50, 50, 7, &[("drop_no_flow", 0), ("kernel_rx_ring_full", 9)]),
                ),
            ],
        );
        assert!(
            top.update(Duration::from_secs(1), first).is_none(),
            "the first sample is a baseline"
        );
        let second = sample(
            3000,
            vec![
                (
                    0,
                    counters(2100, 1090, 6, &[("drop_no_flow", 10), ("drop_ttl_expired", 0)]),
                ),
                (
                    1,
                    counters(450, 50, 8, &[("drop_no_flow", 2), ("kernel_rx_ring_full", 9)]),
                ),
            ],
        );
        let frame = top.update(Duration::from_secs(3), second).unwrap();
        assert_eq!((frame.refresh, frame.interval_s), (1, 2.0));
        assert_eq!(frame.members[0].sprayed_pps, 1000.0);
        let node = &frame.nodes[0];
        let total = node.total.as_ref().unwrap();
        assert_eq!((total.rx_pps, total.tx_pps, total.flows), (1200.0, 500.0, 14));
        assert_eq!(total.drops_per_second, 4.0);
        // By rate first; a reason that dropped before but not now comes
        // after; one that never dropped is left out.
        let reasons: Vec<(&str, f64, u64)> = total
            .top_drops
            .iter()
            .map(|d| (d.reason.as_str(), d.per_second, d.total))
            .collect();
        assert_eq!(reasons, [("drop_no_flow", 4.0, 12), ("kernel_rx_ring_full", 0.0, 9)]);
        assert_eq!(node.workers.len(), 2);
        assert_eq!(node.workers[0].1.rx_pps, 1000.0);
        assert_eq!(node.workers[1].1.rx_pps, 200.0);
        // Dropping now outranks more drops long ago.
        assert_eq!(node.workers[1].1.top_drops[0].reason, "drop_no_flow");
        assert_eq!(node.workers[1].1.top_drops[1].reason, "kernel_rx_ring_full");
    }

    #[test]
    fn a_restarted_daemon_counts_from_zero_and_a_silent_one_has_no_rates() {
        let mut top = Top::default();
        top.update(Duration::ZERO, sample(5000, vec![(0, counters(9000, 0, 1, &[]))]));
        let frame = top
            .update(Duration::from_secs(1), sample(300, vec![(0, counters(400, 0, 1, &[]))]))
            .unwrap();
        assert_eq!(frame.members[0].sprayed_pps, 300.0);
        assert_eq!(frame.nodes[0].total.as_ref().unwrap().rx_pps, 400.0);
        let mut gone = sample(600, Vec::new());
        gone.nodes[0].error = Some("no admin socket".into());
        let frame = top.update(Duration::from_secs(2), gone).unwrap();
        assert!(frame.nodes[0].total.is_none() && frame.nodes[0].workers.is_empty());
        assert_eq!(frame.nodes[0].error.as_deref(), Some("no admin socket"));
        // Back: the next interval has no baseline for it yet.
        let frame = top
            .update(Duration::from_secs(3), sample(900, vec![(0, counters(500, 0, 1, &[]))]))
            .unwrap();
        assert!(frame.nodes[0].total.is_none());
        // No time passed: no frame.
        assert!(top.update(Duration::from_secs(3), sample(900, Vec::new())).is_none());
    }

    #[test]
    fn a_node_and_the_edge_answers_read_as_samples() {
        let stats = json!({
            "node": "fd-b",
            "workers": [
                {"worker": 0, "counters": {"rx": 10, "tx": 9, "drop_no_flow": 1, "created": 4},
                 "table": {"active": 3}, "port": {"kernel_rx_ring_full": 2, "kernel_rx_dropped": 0}},
                {"worker": 1, "counters": {"rx": 20, "tx": 19}, "table": {"active": 5}, "port": {}},
            ]
        });
        let node = node_sample(&stats);
        assert_eq!(node.name, "fd-b");
        assert_eq!(
            node.workers[0].1,
            counters(
                10,
                9,
                3,
                &[
                    ("drop_no_flow", 1),
                    ("kernel_rx_ring_full", 2),
                    ("kernel_rx_dropped", 0)
                ]
            )
        );
        assert_eq!(node.workers[1].0, 1);
        let status = json!({"members": [
            {"name": "fd-a", "status": "Active", "flows": 12},
            {"name": "fd-b", "status": null, "flows": null},
        ]});
        let stats = json!({"members": [{"name": "fd-b", "packets": 7}, {"name": "fd-a", "packets": 3}]});
        let members = members(&status, &stats);
        assert_eq!(
            members,
            [
                MemberSample {
                    name: "fd-a".into(),
                    status: "Active".into(),
                    flows: Some(12),
                    sprayed: 3
                },
                MemberSample {
                    name: "fd-b".into(),
                    status: "-".into(),
                    flows: None,
                    sprayed: 7
                },
            ]
        );
    }

    /// Counters that grow by 100 packets per sample.
    struct Scripted(u64);

    impl Source for Scripted {
        fn sample(&mut self) -> anyhow::Result<Sample> {
            self.0 += 1;
            Ok(sample(self.0 * 100, vec![(0, counters(self.0 * 100, 0, 0, &[]))]))
        }
    }

    #[test]
    fn run_shows_count_frames_after_a_baseline() {
        let mut source = Scripted(0);
        let mut frames = Vec::new();
        run(
            &mut source,
            Duration::from_millis(5),
            Some(3),
            &AtomicBool::new(false),
            |f| {
                frames.push(f.clone());
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(frames.iter().map(|f| f.refresh).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(source.0, 4, "a baseline and one sample per frame");
        assert!(frames.iter().all(|f| f.nodes[0].total.as_ref().unwrap().rx_pps > 0.0));
        // A stop set ends it before any frame.
        let mut frames = 0;
        run(
            &mut Scripted(0),
            Duration::from_millis(5),
            None,
            &AtomicBool::new(true),
            |_| {
                frames += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(frames, 0);
    }
}
