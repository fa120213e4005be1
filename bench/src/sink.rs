//! Per-flow accounting of received bench packets: unique arrivals, gaps,
//! reordering, duplicates and latency, plus a count of foreign traffic.

use crate::payload::{monotonic_ns, BenchHeader};
use handoff_common::{flow_key::FlowKey, net::ipproto, parse::parse_frame};
use hdrhistogram::Histogram;
use std::collections::HashMap;

/// Sequence numbers remembered per flow to tell a duplicate from a late packet.
const WINDOW: u32 = 64;
/// Distinct foreign 5-tuples remembered; the rest are counted in bulk.
const FOREIGN_TUPLES: usize = 4096;

/// One flow's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCounters {
    /// Unique packets received.
    pub received: u64,
    /// Packets that arrived after a higher sequence number.
    pub reordered: u64,
    /// Packets whose sequence number had already arrived.
    pub duplicated: u64,
    /// Highest sequence number seen.
    pub highest: u32,
    window: u64,
    seen: bool,
}

impl FlowCounters {
    /// Records sequence number `seq`.
    pub fn record(&mut self, seq: u32) {
        if !self.seen {
            *self = Self {
                received: 1,
                highest: seq,
                window: 1,
                seen: true,
                ..*self
            };
            return;
        }
        if seq > self.highest {
            let shift = seq - self.highest;
            self.window = if shift >= WINDOW { 0 } else { self.window << shift };
            self.window |= 1;
            self.highest = seq;
            self.received += 1;
            return;
        }
        let distance = self.highest - seq;
        if distance >= WINDOW {
            // Too old to tell from a duplicate: a late packet.
            self.reordered += 1;
            self.received += 1;
        } else if self.window & (1 << distance) != 0 {
            self.duplicated += 1;
        } else {
            self.window |= 1 << distance;
            self.reordered += 1;
            self.received += 1;
        }
    }

    /// Sequence numbers below the highest that never arrived.
    pub fn gaps(&self) -> u64 {
        if self.seen {
            (self.highest as u64 + 1).saturating_sub(self.received)
        } else {
            0
        }
    }

    /// True once a packet arrived.
    pub fn seen(&self) -> bool {
        self.seen
    }
}

/// The sink's state.
#[derive(Debug)]
pub struct Sink {
    flows: Vec<FlowCounters>,
    latency_ns: Histogram<u64>,
    foreign: HashMap<String, u64>,
    foreign_frames: u64,
    foreign_overflow: u64,
    malformed: u64,
    out_of_range: u64,
    frames: u64,
    bytes: u64,
}

impl Sink {
    /// A sink expecting flow ids below `flows` (the generator's flow count).
    pub fn new(flows: u32) -> Self {
        Self {
            flows: vec![FlowCounters::default(); flows as usize],
            // 1 ns .. 60 s with 3 significant digits.
            latency_ns: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("constant histogram bounds are valid"),
            foreign: HashMap::new(),
            foreign_frames: 0,
            foreign_overflow: 0,
            malformed: 0,
            out_of_range: 0,
            frames: 0,
            bytes: 0,
        }
    }

    /// Accounts one Ethernet frame received at `now_ns`.
    pub fn frame(&mut self, frame: &[u8], now_ns: u64) {
        self.frames += 1;
        self.bytes += frame.len() as u64;
        let headers = match parse_frame(frame) {
            Ok(h) => h,
            Err(_) => {
                self.malformed += 1;
                return;
            }
        };
        let bench = (headers.key.protocol == ipproto::UDP && headers.has_ports())
            .then(|| {
                frame
                    .get(headers.l4_offset + 8..headers.l3_end)
                    .and_then(BenchHeader::read)
            })
            .flatten();
        match bench {
            Some(h) => self.packet(&h, now_ns),
            None => self.foreign(&headers.key),
        }
    }

    /// Accounts one bench packet.
    pub fn packet(&mut self, h: &BenchHeader, now_ns: u64) {
        let Some(flow) = self.flows.get_mut(h.flow as usize) else {
            self.out_of_range += 1;
            return;
        };
        flow.record(h.seq);
        let _ = self.latency_ns.record(now_ns.saturating_sub(h.sent_ns).max(1));
    }

    fn foreign(&mut self, key: &FlowKey) {
        self.foreign_frames += 1;
        let name = key.to_string();
        if let Some(n) = self.foreign.get_mut(&name) {
            *n += 1;
        } else if self.foreign.len() < FOREIGN_TUPLES {
            self.foreign.insert(name, 1);
        } else {
            self.foreign_overflow += 1;
        }
    }

    /// Merges another sink's counts (same flow set) into this one.
    pub fn merge(&mut self, other: &Sink) {
        for (a, b) in self.flows.iter_mut().zip(&other.flows) {
            a.received += b.received;
            a.reordered += b.reordered;
            a.duplicated += b.duplicated;
            if b.seen && (!a.seen || b.highest > a.highest) {
                a.highest = b.highest;
                a.seen = true;
            }
        }
        let _ = self.latency_ns.add(&other.latency_ns);
        for (k, v) in &other.foreign {
            *self.foreign.entry(k.clone()).or_insert(0) += v;
        }
        self.foreign_frames += other.foreign_frames;
        self.foreign_overflow += other.foreign_overflow;
        self.malformed += other.malformed;
        self.out_of_range += other.out_of_range;
        self.frames += other.frames;
        self.bytes += other.bytes;
    }

    /// Per-flow counters, indexed by flow id.
    pub fn flows(&self) -> &[FlowCounters] {
        &self.flows
    }

    /// The report; `sent` is what the generator(s) sent in total, when known.
    /// Since `received` counts unique packets, `sent - received` is exact.
    pub fn report(&self, duration_s: f64, sent: Option<u64>, per_flow: bool) -> crate::report::SinkReport {
        use crate::report::*;
        let received: u64 = self.flows.iter().map(|f| f.received).sum();
        let lost = sent.map(|sent| sent.saturating_sub(received));
        let mut foreign: Vec<ForeignTuple> = self
            .foreign
            .iter()
            .map(|(t, &frames)| ForeignTuple {
                tuple: t.clone(),
                frames,
            })
            .collect();
        foreign.sort_by(|a, b| b.frames.cmp(&a.frames).then_with(|| a.tuple.cmp(&b.tuple)));
        let h = &self.latency_ns;
        let us = |ns: u64| ns as f64 / 1000.0;
        SinkReport {
            schema: SINK_SCHEMA.to_string(),
            duration_s,
            frames: self.frames,
            bytes: self.bytes,
            received,
            lost,
            gaps: self.flows.iter().map(FlowCounters::gaps).sum(),
            reordered: self.flows.iter().map(|f| f.reordered).sum(),
            duplicated: self.flows.iter().map(|f| f.duplicated).sum(),
            flows_seen: self.flows.iter().filter(|f| f.seen).count() as u64,
            rate_pps: if duration_s > 0.0 {
                received as f64 / duration_s
            } else {
                0.0
            },
            latency_us: Latency {
                count: h.len(),
                p50: us(h.value_at_quantile(0.5)),
                p99: us(h.value_at_quantile(0.99)),
                p999: us(h.value_at_quantile(0.999)),
                max: us(h.max()),
            },
            malformed: self.malformed,
            unknown_flow: self.out_of_range,
            foreign: Foreign {
                frames: self.foreign_frames,
                untracked: self.foreign_overflow,
                tuples: foreign,
            },
            per_flow: per_flow.then(|| {
                self.flows
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.seen)
                    .map(|(i, f)| PerFlow {
                        flow: i as u32,
                        received: f.received,
                        reordered: f.reordered,
                        duplicated: f.duplicated,
                        highest: f.highest,
                    })
                    .collect()
            }),
        }
    }
}

/// Now, for callers that account frames as they arrive.
pub fn now_ns() -> u64 {
    monotonic_ns()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_tell_gaps_reorders_and_duplicates_apart() {
        let mut f = FlowCounters::default();
        for seq in [0, 1, 3, 2, 2, 5, 200, 100, 100] {
            f.record(seq);
        }
        // Unique: 0 1 2 3 5 200 100 -> 7; 100 twice is beyond the window: late, counted both times.
        assert_eq!(f.duplicated, 1);
        assert_eq!(f.reordered, 3);
        assert_eq!(f.received, 8);
        assert_eq!(f.highest, 200);
        assert_eq!(f.gaps(), 201 - 8);
    }

    #[test]
    fn exact_loss_from_the_sent_count() {
        let mut sink = Sink::new(3);
        // Round-robin over 3 flows: 7 packets = flows 0,1,2,0,1,2,0.
        for (i, flow) in [0u32, 1, 2, 0, 1, 2, 0].iter().enumerate() {
            if i == 4 {
                continue; // drop flow 1's second packet
            }
            sink.packet(
                &BenchHeader {
                    flow: *flow,
                    seq: i as u32 / 3,
                    sent_ns: 0,
                },
                10,
            );
        }
        let r = sink.report(1.0, Some(7), true);
        assert_eq!(r.received, 6);
        assert_eq!(r.lost, Some(1));
        assert_eq!(r.flows_seen, 3);
        assert_eq!(r.per_flow.as_ref().map(Vec::len), Some(3));
    }
}
