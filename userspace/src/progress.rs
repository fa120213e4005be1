//! A migration's progress as the CLI shows it. The edge's admin socket
//! streams JSON lines (`admin::AdminResponse::Progress`): one as each phase
//! starts (`{"phase", "at_ms", "detail"}`) and, during the copy, one every
//! 100 ms at most with the copy's counters (`{"phase": "Copy", "at_ms",
//! "progress": {"flows_copied", "flows_total", "deltas_sent",
//! "bytes_sent"}}`, see `edge::driver::copy_progress`). [`MigrationView`]
//! folds them into what a display shows: the phase, connections copied out
//! of the total, bytes and the rate. `main.rs` draws it with indicatif on a
//! terminal; this module has no terminal in it, so it is tested as is.

use indicatif::HumanBytes;
use serde_json::Value;

/// The copy's counters at its latest report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyCounters {
    /// Connections of the snapshot sent.
    pub flows_copied: u64,
    /// Connections in the snapshot.
    pub flows_total: u64,
    /// Delta operations sent.
    pub deltas_sent: u64,
    /// Bytes the handover streams sent.
    pub bytes_sent: u64,
}

/// The copy's average rate since it started.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Connections per second.
    pub flows_per_second: f64,
    /// Bytes per second.
    pub bytes_per_second: f64,
}

/// What a progress line was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A phase started: the line is worth keeping in the scrollback.
    PhaseStarted,
    /// The current phase moved on (the copy's counters changed).
    Moved,
    /// Not a line this build reads; nothing changed.
    Unknown,
}

/// A migration's state as the lines so far describe it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MigrationView {
    /// The current phase's name (`Select`, `Copy`, ...); empty before the first line.
    pub phase: String,
    /// When the current phase started, in ms since the migration did.
    pub phase_started_ms: f64,
    /// The latest line's time, in ms since the migration started.
    pub at_ms: f64,
    /// The copy's counters, once it reported any; they stay after it ends.
    pub copy: Option<CopyCounters>,
    /// When the copy started, in ms since the migration did.
    copy_started_ms: Option<f64>,
}

impl MigrationView {
    /// Folds in one progress line. A line of a shape this build does not
    /// know changes nothing.
    pub fn apply(&mut self, line: &Value) -> Event {
        let (Some(phase), Some(at_ms)) = (line["phase"].as_str(), line["at_ms"].as_f64()) else {
            return Event::Unknown;
        };
        self.at_ms = at_ms;
        if let Some(progress) = line.get("progress").filter(|p| p.is_object()) {
            let count = |key: &str| progress[key].as_u64().unwrap_or(0);
            self.copy = Some(CopyCounters {
                flows_copied: count("flows_copied"),
                flows_total: count("flows_total"),
                deltas_sent: count("deltas_sent"),
                bytes_sent: count("bytes_sent"),
            });
            return Event::Moved;
        }
        self.phase = phase.to_string();
        self.phase_started_ms = at_ms;
        if phase == "Copy" {
            self.copy_started_ms = Some(at_ms);
            self.copy = None;
        }
        Event::PhaseStarted
    }

    /// Whether the current phase is the copy.
    pub fn copying(&self) -> bool {
        self.phase == "Copy"
    }

    /// The copy's average rate from its start to its latest report; `None`
    /// before a report or when no time has passed.
    pub fn rate(&self) -> Option<Rate> {
        let copy = self.copy?;
        let seconds = (self.at_ms - self.copy_started_ms?) / 1e3;
        (seconds > 0.0).then(|| Rate {
            flows_per_second: copy.flows_copied as f64 / seconds,
            bytes_per_second: copy.bytes_sent as f64 / seconds,
        })
    }

    /// The display's text besides the bar: during the copy `1200/3400
    /// connections, 117.19 KiB, 9800 conn/s, 957.03 KiB/s` (the rate once
    /// known); empty in the other phases, which have nothing to count.
    pub fn message(&self) -> String {
        match (self.copying(), self.copy) {
            (true, Some(c)) => {
                let mut text = format!(
                    "{}/{} connections, {}",
                    c.flows_copied,
                    c.flows_total,
                    HumanBytes(c.bytes_sent)
                );
                if let Some(rate) = self.rate() {
                    text.push_str(&format!(
                        ", {:.0} conn/s, {}/s",
                        rate.flows_per_second,
                        HumanBytes(rate.bytes_per_second as u64)
                    ));
                }
                text
            }
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn phase_lines_and_copy_reports_fold_into_the_display() {
        let mut view = MigrationView::default();
        assert_eq!(view.apply(&json!({"nonsense": 1})), Event::Unknown);
        assert_eq!(view, MigrationView::default());
        let select = json!({"phase": "Select", "at_ms": 0.0, "detail": {"buckets_by_inheritor": {"1": 10}}});
        assert_eq!(view.apply(&select), Event::PhaseStarted);
        assert_eq!(view.phase, "Select");
        assert!(!view.copying() && view.copy.is_none() && view.rate().is_none());
        assert_eq!(
            view.apply(&json!({"phase": "Copy", "at_ms": 100.0, "detail": null})),
            Event::PhaseStarted
        );
        assert!(view.copying() && view.rate().is_none());
        let within = |at_ms: f64, copied: u64, bytes: u64| {
            json!({"phase": "Copy", "at_ms": at_ms, "progress": {
                "flows_copied": copied, "flows_total": 4000, "deltas_sent": 0, "bytes_sent": bytes}})
        };
        assert_eq!(view.apply(&within(600.0, 1000, 96_000)), Event::Moved);
        assert_eq!(view.phase, "Copy", "a report within the copy starts no phase");
        assert_eq!(view.phase_started_ms, 100.0);
        let rate = view.rate().unwrap();
        assert!((rate.flows_per_second - 2000.0).abs() < 1e-6, "{rate:?}");
        assert!((rate.bytes_per_second - 192_000.0).abs() < 1e-6, "{rate:?}");
        assert_eq!(
            view.message(),
            "1000/4000 connections, 93.75 KiB, 2000 conn/s, 187.50 KiB/s"
        );
        view.apply(&within(2100.0, 4000, 384_000));
        assert_eq!(
            view.copy,
            Some(CopyCounters {
                flows_copied: 4000,
                flows_total: 4000,
                deltas_sent: 0,
                bytes_sent: 384_000
            })
        );
        // The next phase shows its own state, not the copy's counters.
        assert_eq!(
            view.apply(&json!({"phase": "Broadcast", "at_ms": 2200.0, "detail": null})),
            Event::PhaseStarted
        );
        assert_eq!(view.phase_started_ms, 2200.0);
        assert_eq!(view.message(), "");
        assert_eq!(view.copy.map(|c| c.flows_copied), Some(4000), "the copy's facts stay");
    }
}
