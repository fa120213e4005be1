//! A node's Prometheus metrics: what `handoff stats` reports, as series
//! labelled `node` (and `worker`, `reason`, ... where the counter has them).
//! Built at scrape time from the workers' reports (see [`crate::metrics`]).
//!
//! The report structs' fields are read through their serde names, the ones
//! `handoff stats` prints, so a field has one spelling; each maps to a
//! metric by the tables below, and a unit test fails when a field has no
//! metric. Worker drop counters (`drop_<reason>`) all go to
//! `handoff_drops_total{reason="<reason>"}`.

use super::{peers::PeerCounters, worker::WorkerReport};
use crate::{
    control::session::SessionCounters,
    metrics::{Exposition, HandoverMetrics},
};
use handoff_loader::ReasonCounts;
use std::sync::atomic::Ordering;

/// A report field's metric: a counter (name ending in `_total`) or a gauge,
/// with an optional fixed label telling fields of one family apart.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FieldMetric {
    /// The field's serde name.
    pub field: &'static str,
    /// The metric's name.
    pub metric: &'static str,
    /// Its help text.
    pub help: &'static str,
    /// `(label, value)` for this field's series, if the family has several.
    pub label: Option<(&'static str, &'static str)>,
    /// A gauge (a level now) rather than a counter.
    pub gauge: bool,
}

const fn counter(field: &'static str, metric: &'static str, help: &'static str) -> FieldMetric {
    FieldMetric {
        field,
        metric,
        help,
        label: None,
        gauge: false,
    }
}

const fn labelled(
    field: &'static str,
    metric: &'static str,
    help: &'static str,
    label: (&'static str, &'static str),
) -> FieldMetric {
    FieldMetric {
        field,
        metric,
        help,
        label: Some(label),
        gauge: false,
    }
}

const fn gauge(field: &'static str, metric: &'static str, help: &'static str) -> FieldMetric {
    FieldMetric {
        field,
        metric,
        help,
        label: None,
        gauge: true,
    }
}

/// Prefix of the worker counters that count drops.
pub(crate) const DROP_PREFIX: &str = "drop_";
/// The family every worker drop counter goes to.
pub(crate) const DROPS: &str = "handoff_drops_total";
const DROPS_HELP: &str = "Packets a node's worker dropped, by reason (drop_<reason> in handoff stats)";

const FORWARDED_HELP: &str = "Packets a worker handed to their owner: another core of this node (to=core) or another node over the fabric (to=node)";

/// [`super::pipeline::WorkerCounters`] but its `drop_*` fields.
pub(crate) const WORKER_COUNTERS: &[FieldMetric] = &[
    counter(
        "rx",
        "handoff_rx_packets_total",
        "Frames a worker handled, from its AF_XDP socket and from other cores",
    ),
    counter("tx", "handoff_tx_packets_total", "Frames a worker transmitted"),
    counter(
        "created",
        "handoff_flows_created_total",
        "Connections a worker created by its policy (both directions count once)",
    ),
    labelled(
        "forwarded_to_core",
        "handoff_forwarded_packets_total",
        FORWARDED_HELP,
        ("to", "core"),
    ),
    labelled(
        "forwarded_to_node",
        "handoff_forwarded_packets_total",
        FORWARDED_HELP,
        ("to", "node"),
    ),
    counter(
        "received_from_node",
        "handoff_fabric_received_packets_total",
        "Packets a worker received over the fabric from another node",
    ),
    counter(
        "markers",
        "handoff_drain_markers_total",
        "Drain end markers a worker received",
    ),
    counter(
        "markers_stale",
        "handoff_drain_markers_stale_total",
        "Of the drain end markers received, those of another flip than the one awaited (late or early), ignored",
    ),
    counter(
        "held",
        "handoff_held_packets_total",
        "Packets a worker held back during a handover (each runs again once released)",
    ),
    counter(
        "echo_replies",
        "handoff_icmp_echo_replies_total",
        "Echo requests to a VIP a worker answered",
    ),
    counter(
        "icmp_errors_sent",
        "handoff_icmp_errors_sent_total",
        "ICMP errors a worker originated (time exceeded, too big, unreachable)",
    ),
    counter(
        "priority_tags_removed",
        "handoff_priority_tags_removed_total",
        "VID-0 priority tags a worker removed",
    ),
    counter(
        "fragments",
        "handoff_fragments_total",
        "IP fragments a worker handled (each time one runs)",
    ),
    counter(
        "fragments_parked",
        "handoff_fragments_parked_total",
        "Fragments a worker parked until their datagram's first fragment came",
    ),
    counter(
        "backend_moved",
        "handoff_backend_removed_moved_flows_total",
        "Flows without handshake whose backend a live change removed, moved to a live backend at their next packet",
    ),
    counter(
        "backend_resets",
        "handoff_backend_removed_resets_total",
        "TCP connections whose backend a live change removed, reset with an RST to the client",
    ),
];

const FLOW_REMOVED_HELP: &str =
    "Connections removed from a worker's flow table, by cause (expired, closed, evicted, removed)";
const FLOW_MISS_HELP: &str = "Packets of no known connection under the miss policy, by outcome (dropped, created)";

/// [`crate::flow::table::FlowCounters`].
pub(crate) const FLOW_COUNTERS: &[FieldMetric] = &[
    counter(
        "created",
        "handoff_flow_table_installed_total",
        "Connections installed in a worker's flow table",
    ),
    labelled(
        "expired",
        "handoff_flow_table_removed_total",
        FLOW_REMOVED_HELP,
        ("cause", "expired"),
    ),
    labelled(
        "closed",
        "handoff_flow_table_removed_total",
        FLOW_REMOVED_HELP,
        ("cause", "closed"),
    ),
    labelled(
        "evicted",
        "handoff_flow_table_removed_total",
        FLOW_REMOVED_HELP,
        ("cause", "evicted"),
    ),
    labelled(
        "removed",
        "handoff_flow_table_removed_total",
        FLOW_REMOVED_HELP,
        ("cause", "removed"),
    ),
    counter(
        "imported",
        "handoff_flow_table_imported_total",
        "Connections a worker's flow table took in from a handover",
    ),
    labelled(
        "miss_dropped",
        "handoff_flow_table_misses_total",
        FLOW_MISS_HELP,
        ("outcome", "dropped"),
    ),
    labelled(
        "miss_created",
        "handoff_flow_table_misses_total",
        FLOW_MISS_HELP,
        ("outcome", "created"),
    ),
    gauge("active", "handoff_flows", "Connections in a worker's flow table now"),
];

const KERNEL_DROP_HELP: &str = "Frames the kernel dropped before a worker saw them (XDP_STATISTICS), by cause (rx_ring_full: the worker fell behind; other)";

/// [`crate::io::PortStats`].
pub(crate) const PORT_COUNTERS: &[FieldMetric] = &[
    counter(
        "rx_frames",
        "handoff_port_rx_frames_total",
        "Frames a worker's AF_XDP socket received",
    ),
    counter(
        "rx_bytes",
        "handoff_port_rx_bytes_total",
        "Bytes a worker's AF_XDP socket received",
    ),
    counter(
        "tx_frames",
        "handoff_port_tx_frames_total",
        "Frames a worker's AF_XDP socket queued for transmission",
    ),
    counter(
        "tx_bytes",
        "handoff_port_tx_bytes_total",
        "Bytes a worker's AF_XDP socket queued for transmission",
    ),
    counter(
        "dropped",
        "handoff_port_dropped_frames_total",
        "Frames a worker's socket freed by a drop verdict",
    ),
    counter(
        "tx_pool_empty",
        "handoff_port_tx_pool_empty_total",
        "Sends refused because the socket's frame pool was empty",
    ),
    counter(
        "tx_kick_retries",
        "handoff_port_tx_kick_retries_total",
        "Transmit kicks the kernel asked to retry (EAGAIN, EBUSY, ENOBUFS)",
    ),
    labelled(
        "kernel_rx_ring_full",
        "handoff_kernel_rx_dropped_frames_total",
        KERNEL_DROP_HELP,
        ("cause", "rx_ring_full"),
    ),
    labelled(
        "kernel_rx_dropped",
        "handoff_kernel_rx_dropped_frames_total",
        KERNEL_DROP_HELP,
        ("cause", "other"),
    ),
    counter(
        "kernel_fill_ring_empty",
        "handoff_kernel_fill_ring_empty_total",
        "Times the kernel found a socket's fill ring empty (XDP_STATISTICS)",
    ),
];

const HOLD_HELP: &str =
    "Packets through a worker's handover pen, by event (held, released, released_early: the pen was full)";

/// [`super::hold::HoldCounters`].
pub(crate) const HOLD_COUNTERS: &[FieldMetric] = &[
    labelled("held", "handoff_pen_packets_total", HOLD_HELP, ("event", "held")),
    labelled(
        "released",
        "handoff_pen_packets_total",
        HOLD_HELP,
        ("event", "released"),
    ),
    labelled(
        "released_early",
        "handoff_pen_packets_total",
        HOLD_HELP,
        ("event", "released_early"),
    ),
    counter(
        "timeouts",
        "handoff_pen_timeouts_total",
        "Times a worker's pen was released by its timeout, not by the control path",
    ),
];

/// [`WorkerReport`]'s own fields but its counter structs and its index.
pub(crate) const REPORT_FIELDS: &[FieldMetric] = &[
    gauge(
        "pending_rx",
        "handoff_port_rx_pending_frames",
        "Frames in a worker's socket rings now",
    ),
    gauge(
        "pending_tx",
        "handoff_port_tx_pending_frames",
        "Frames queued for transmission on a worker's socket now",
    ),
    gauge(
        "inbox",
        "handoff_inbox_frames",
        "Frames waiting in a worker's inter-core inbox now",
    ),
    gauge(
        "ownership_entries",
        "handoff_ownership_entries",
        "Connections in a worker's ownership table (the peers' announcements) now",
    ),
    counter(
        "announce_overflow",
        "handoff_announce_overflow_total",
        "Installed connections the announcer could not take (its ring was full)",
    ),
    gauge(
        "held",
        "handoff_pen_held_packets",
        "Packets in a worker's handover pen now",
    ),
];

const SESSION_REFUSED_HELP: &str = "Control connections refused, by stage (connection: over the caps; handshake: TLS failed; peer: a claim the certificate does not back)";

/// [`SessionCounters::to_json`], the edge's and the nodes'.
pub(crate) const SESSION_COUNTERS: &[FieldMetric] = &[
    counter(
        "sessions_accepted",
        "handoff_control_sessions_accepted_total",
        "Control sessions admitted (mutual TLS and a member's claim)",
    ),
    labelled(
        "connections_refused",
        "handoff_control_refused_total",
        SESSION_REFUSED_HELP,
        ("stage", "connection"),
    ),
    labelled(
        "handshakes_refused",
        "handoff_control_refused_total",
        SESSION_REFUSED_HELP,
        ("stage", "handshake"),
    ),
    labelled(
        "peers_refused",
        "handoff_control_refused_total",
        SESSION_REFUSED_HELP,
        ("stage", "peer"),
    ),
    counter(
        "sessions_timed_out",
        "handoff_control_sessions_timed_out_total",
        "Control sessions closed for a silent peer (mid-handshake or mid-frame)",
    ),
];

/// Help of `handoff_xdp_frames_total`, the edge's and the nodes'.
pub const XDP_FRAMES_HELP: &str = "Frames the XDP program (the edge's sprayer, a node's steering) handled, by reason as handoff stats names it; sprayed_addresses_only, sprayed_icmp_quoted and sprayed_icmp_bad_quote are parts of sprayed";
/// Help of `handoff_control_messages_refused_total`.
pub const MESSAGES_REFUSED_HELP: &str = "Control messages refused (malformed, unexpected, stale or duplicate)";

/// Adds the series of every field of `value` (a report struct serialized
/// by serde) that `table` names, with `base` labels.
pub(crate) fn add_fields(
    exposition: &mut Exposition,
    table: &[FieldMetric],
    value: &serde_json::Value,
    base: &[(&str, &str)],
) {
    for entry in table {
        let Some(v) = value.get(entry.field).and_then(serde_json::Value::as_u64) else {
            continue;
        };
        let mut labels = base.to_vec();
        labels.extend(entry.label);
        if entry.gauge {
            exposition.gauge(entry.metric, entry.help, &labels, v);
        } else {
            exposition.counter(entry.metric, entry.help, &labels, v);
        }
    }
}

/// Adds `handoff_xdp_frames_total{reason}` for every reason of `reasons`.
pub fn add_xdp_reasons(exposition: &mut Exposition, reasons: &ReasonCounts, base: &[(&str, &str)]) {
    for (reason, count) in reasons.named() {
        let mut labels = base.to_vec();
        labels.push(("reason", reason));
        exposition.counter("handoff_xdp_frames_total", XDP_FRAMES_HELP, &labels, count);
    }
}

/// Adds the control port's session counters.
pub fn add_sessions(exposition: &mut Exposition, sessions: &SessionCounters, base: &[(&str, &str)]) {
    add_fields(exposition, SESSION_COUNTERS, &sessions.to_json(), base);
}

/// What a node's exposition is made of, gathered by the daemon.
#[derive(Debug)]
pub struct NodeSnapshot<'a> {
    /// The node's name (the `node` label).
    pub node: &'a str,
    /// Every worker's report.
    pub workers: &'a [WorkerReport],
    /// The steering program's reason counters.
    pub steering: &'a ReasonCounts,
    /// The peer links' counters.
    pub peers: &'a PeerCounters,
    /// Handover rounds started.
    pub handovers: u32,
    /// Bytes the handover streams sent.
    pub handover_bytes: u64,
    /// The scope version the node forwards by.
    pub scope_version: u64,
    /// Buckets the scope gives this node.
    pub buckets: u64,
    /// The handover histograms.
    pub handover_metrics: &'a HandoverMetrics,
}

/// Builds the node's exposition.
pub fn exposition(s: &NodeSnapshot<'_>) -> Exposition {
    let mut e = Exposition::default();
    let node = [("node", s.node)];
    for report in s.workers {
        let worker = report.worker.to_string();
        let base = [("node", s.node), ("worker", worker.as_str())];
        // Serializing plain structs of u64 into JSON cannot fail.
        let counters = serde_json::to_value(report.counters).unwrap_or_default();
        add_fields(&mut e, WORKER_COUNTERS, &counters, &base);
        if let serde_json::Value::Object(fields) = &counters {
            for (name, value) in fields {
                if let (Some(reason), Some(v)) = (name.strip_prefix(DROP_PREFIX), value.as_u64()) {
                    e.counter(DROPS, DROPS_HELP, &[base[0], base[1], ("reason", reason)], v);
                }
            }
        }
        add_fields(
            &mut e,
            FLOW_COUNTERS,
            &serde_json::to_value(report.table).unwrap_or_default(),
            &base,
        );
        add_fields(
            &mut e,
            PORT_COUNTERS,
            &serde_json::to_value(report.port).unwrap_or_default(),
            &base,
        );
        add_fields(
            &mut e,
            HOLD_COUNTERS,
            &serde_json::to_value(report.hold).unwrap_or_default(),
            &base,
        );
        add_fields(
            &mut e,
            REPORT_FIELDS,
            &serde_json::to_value(report).unwrap_or_default(),
            &base,
        );
    }
    add_xdp_reasons(&mut e, s.steering, &node);
    let p = s.peers;
    let peer_counters = [
        (
            "handoff_announcements_sent_total",
            "Ownership announcement messages a node sent to its peers",
            p.announces_sent.load(Ordering::Relaxed),
        ),
        (
            "handoff_flows_announced_total",
            "Connections a node announced to its peers",
            p.flows_announced.load(Ordering::Relaxed),
        ),
        (
            "handoff_announcement_failures_total",
            "Announcements that could not be sent to some peer (link down)",
            p.announce_failures.load(Ordering::Relaxed),
        ),
        (
            "handoff_announcements_received_total",
            "Ownership announcement messages a node received",
            p.announces_received.load(Ordering::Relaxed),
        ),
        (
            "handoff_control_messages_refused_total",
            MESSAGES_REFUSED_HELP,
            p.messages_refused.load(Ordering::Relaxed),
        ),
        (
            "handoff_handovers_total",
            "Handover rounds a node started",
            u64::from(s.handovers),
        ),
        (
            "handoff_handover_sent_bytes_total",
            "Bytes a node's handover streams sent",
            s.handover_bytes,
        ),
    ];
    for (name, help, value) in peer_counters {
        e.counter(name, help, &node, value);
    }
    add_sessions(&mut e, &p.sessions, &node);
    e.gauge(
        "handoff_scope_version",
        "The scope version a node forwards by",
        &node,
        s.scope_version,
    );
    e.gauge("handoff_buckets", "Buckets the scope gives a node", &node, s.buckets);
    s.handover_metrics.expose(&mut e);
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flow::FlowCounters,
        io::PortStats,
        metrics::Format,
        node::{hold::HoldCounters, pipeline::WorkerCounters},
    };

    /// The report fields that are no metric: the worker index (a label)
    /// and the nested counter structs (their own tables).
    const REPORT_STRUCTS: &[&str] = &["worker", "counters", "table", "port", "hold"];

    fn fields_of(value: serde_json::Value) -> Vec<String> {
        match value {
            serde_json::Value::Object(map) => map.keys().cloned().collect(),
            other => panic!("not a struct: {other}"),
        }
    }

    fn covered(table: &[FieldMetric], field: &str) -> bool {
        table.iter().any(|e| e.field == field)
    }

    #[test]
    fn every_counter_of_handoff_stats_has_a_metric() {
        for field in fields_of(serde_json::to_value(WorkerCounters::default()).unwrap()) {
            assert!(
                field.starts_with(DROP_PREFIX) || covered(WORKER_COUNTERS, &field),
                "worker counter {field} has no metric"
            );
        }
        for field in fields_of(serde_json::to_value(FlowCounters::default()).unwrap()) {
            assert!(covered(FLOW_COUNTERS, &field), "flow counter {field} has no metric");
        }
        for field in fields_of(serde_json::to_value(PortStats::default()).unwrap()) {
            assert!(covered(PORT_COUNTERS, &field), "port counter {field} has no metric");
        }
        for field in fields_of(serde_json::to_value(HoldCounters::default()).unwrap()) {
            assert!(covered(HOLD_COUNTERS, &field), "hold counter {field} has no metric");
        }
        for field in fields_of(SessionCounters::default().to_json()) {
            assert!(
                covered(SESSION_COUNTERS, &field),
                "session counter {field} has no metric"
            );
        }
        let report = sample_report(0);
        for field in fields_of(serde_json::to_value(&report).unwrap()) {
            assert!(
                REPORT_STRUCTS.contains(&field.as_str()) || covered(REPORT_FIELDS, &field),
                "report field {field} has no metric"
            );
        }
    }

    fn sample_report(worker: u8) -> WorkerReport {
        WorkerReport {
            worker,
            counters: WorkerCounters {
                rx: 100 + u64::from(worker),
                drop_no_flow: 3,
                forwarded_to_node: 4,
                ..Default::default()
            },
            table: FlowCounters {
                active: 9,
                expired: 2,
                ..Default::default()
            },
            port: PortStats {
                kernel_rx_ring_full: 1,
                ..Default::default()
            },
            pending_rx: 0,
            pending_tx: 0,
            inbox: 0,
            ownership_entries: 5,
            announce_overflow: 0,
            hold: HoldCounters::default(),
            held: 0,
        }
    }

    #[test]
    fn a_node_exposes_its_workers_drops_and_steering_by_label() {
        let workers = [sample_report(0), sample_report(1)];
        let mut steering = ReasonCounts::default();
        steering.0[handoff_common::counters::Reason::Steered as usize] = 42;
        let peers = PeerCounters::default();
        let handover_metrics = HandoverMetrics::default();
        let e = exposition(&NodeSnapshot {
            node: "fd-a",
            workers: &workers,
            steering: &steering,
            peers: &peers,
            handovers: 2,
            handover_bytes: 4096,
            scope_version: 3,
            buckets: 21,
            handover_metrics: &handover_metrics,
        });
        let text = e.encode(Format::Prometheus).unwrap();
        for line in [
            "handoff_rx_packets_total{node=\"fd-a\",worker=\"1\"} 101",
            "handoff_drops_total{node=\"fd-a\",worker=\"0\",reason=\"no_flow\"} 3",
            "handoff_drops_total{node=\"fd-a\",worker=\"0\",reason=\"fragments_full\"} 0",
            "handoff_forwarded_packets_total{node=\"fd-a\",worker=\"0\",to=\"node\"} 4",
            "handoff_flows{node=\"fd-a\",worker=\"1\"} 9",
            "handoff_flow_table_removed_total{node=\"fd-a\",worker=\"0\",cause=\"expired\"} 2",
            "handoff_kernel_rx_dropped_frames_total{node=\"fd-a\",worker=\"0\",cause=\"rx_ring_full\"} 1",
            "handoff_xdp_frames_total{node=\"fd-a\",reason=\"steered\"} 42",
            "handoff_handover_sent_bytes_total{node=\"fd-a\"} 4096",
            "handoff_buckets{node=\"fd-a\"} 21",
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} missing from\n{text}");
        }
        let names = e.family_names();
        let mut unique = names.clone();
        unique.dedup();
        assert_eq!(names, unique, "a family name is used twice");
        let families: Vec<String> = names.iter().map(|n| n.trim_end_matches("_total").to_string()).collect();
        let mut distinct = families.clone();
        distinct.sort();
        distinct.dedup();
        assert_eq!(families.len(), distinct.len(), "a counter and a gauge share a family");
    }
}
