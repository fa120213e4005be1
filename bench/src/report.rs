//! The JSON documents the generator and the sink write. Field names are
//! stable; the README documents them and tests assert on them.

use serde::{Deserialize, Serialize};

/// `schema` value of [`SinkReport`].
pub const SINK_SCHEMA: &str = "handoff-sink/1";
/// `schema` value of [`GenReport`].
pub const GEN_SCHEMA: &str = "handoff-gen/1";

/// What a sink saw.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkReport {
    /// Always [`SINK_SCHEMA`].
    pub schema: String,
    /// Seconds from the first to the last received frame.
    pub duration_s: f64,
    /// Frames received (all kinds).
    pub frames: u64,
    /// Bytes received.
    pub bytes: u64,
    /// Unique bench packets received.
    pub received: u64,
    /// Packets sent and never received; `null` when the sent count is unknown.
    pub lost: Option<u64>,
    /// Sequence numbers missing below each flow's highest (loss without the tail).
    pub gaps: u64,
    /// Packets that arrived after a higher sequence number of their flow.
    pub reordered: u64,
    /// Packets that arrived twice.
    pub duplicated: u64,
    /// Flows with at least one packet.
    pub flows_seen: u64,
    /// `received / duration_s`.
    pub rate_pps: f64,
    /// One-way or round-trip latency from the embedded send time.
    pub latency_us: Latency,
    /// Frames that failed to parse (counted, not rejected).
    pub malformed: u64,
    /// Bench packets whose flow id is outside the configured flow set.
    pub unknown_flow: u64,
    /// Traffic without a bench header, per 5-tuple.
    pub foreign: Foreign,
    /// Per-flow detail, when requested.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_flow: Option<Vec<PerFlow>>,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Maximum.
    pub max: f64,
}

/// Foreign traffic.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Foreign {
    /// Frames without a bench header.
    pub frames: u64,
    /// Frames of tuples beyond the tracked number.
    pub untracked: u64,
    /// Per 5-tuple, most frequent first.
    pub tuples: Vec<ForeignTuple>,
}

/// One foreign 5-tuple.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForeignTuple {
    /// `udp 10.0.0.1:53 -> 10.0.0.2:4000`.
    pub tuple: String,
    /// Frames.
    pub frames: u64,
}

/// One flow's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerFlow {
    /// Flow id.
    pub flow: u32,
    /// Unique packets.
    pub received: u64,
    /// Reordered packets.
    pub reordered: u64,
    /// Duplicates.
    pub duplicated: u64,
    /// Highest sequence number.
    pub highest: u32,
}

/// What a generator sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenReport {
    /// Always [`GEN_SCHEMA`].
    pub schema: String,
    /// `af_xdp` or `raw_socket`.
    pub backend: String,
    /// Packets sent.
    pub sent: u64,
    /// Flows cycled through (round-robin, so flow `i` got `sent / flows` or one more).
    pub flows: u32,
    /// Frame length in bytes, without FCS.
    pub frame_len: usize,
    /// Seconds spent sending.
    pub duration_s: f64,
    /// `sent / duration_s`.
    pub rate_pps: f64,
    /// Requested rate, or `null` for as fast as possible.
    pub target_pps: Option<u64>,
    /// Times the sender waited for a free frame or socket buffer.
    pub backpressure_waits: u64,
}
