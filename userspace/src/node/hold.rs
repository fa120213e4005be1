//! A bounded, ordered pen for packets that must wait for the control path:
//! between a worker's cut and its inheritor's confirmation, packets of the
//! connections just redirected wait here, so none reaches an inheritor that
//! has not installed its connection yet, and all can come back here if the
//! inheritor never confirms.
//!
//! The pen never drops. When it is full, the oldest packet leaves early;
//! when it has held for longer than its timeout, everything leaves, oldest
//! first. Both events are counted for the operator.

use crate::flow::Timestamp;
use serde::{Deserialize, Serialize};
use std::{collections::VecDeque, time::Duration};

/// What a pen did, for the worker's report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCounters {
    /// Packets that entered the pen.
    pub held: u64,
    /// Packets that left it when it was released.
    pub released: u64,
    /// Packets that left early because the pen was full.
    pub released_early: u64,
    /// Times the pen was released by its timeout, not by the control path.
    pub timeouts: u64,
}

/// The pen. Its memory is allocated once, in [`HoldQueue::new`].
#[derive(Debug)]
pub struct HoldQueue<T> {
    items: VecDeque<T>,
    capacity: usize,
    timeout: Duration,
    /// When holding started; `None` while packets pass freely.
    since: Option<Timestamp>,
    counters: HoldCounters,
}

impl<T> HoldQueue<T> {
    /// A pen for `capacity` packets that opens by itself after `timeout`.
    pub fn new(capacity: usize, timeout: Duration) -> Self {
        Self {
            items: VecDeque::with_capacity(capacity.max(1)),
            capacity: capacity.max(1),
            timeout,
            since: None,
            counters: HoldCounters::default(),
        }
    }

    /// Starts holding at `now` (a pen already holding keeps its start).
    pub fn start(&mut self, now: Timestamp) {
        self.since.get_or_insert(now);
    }

    /// Whether packets are being held.
    pub fn is_holding(&self) -> bool {
        self.since.is_some()
    }

    /// Packets in the pen.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the pen is empty.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Holds `item`. A full pen hands back its oldest packet, which must be
    /// sent on now: order within the pen is kept, nothing is dropped.
    pub fn hold(&mut self, item: T) -> Option<T> {
        let early = if self.items.len() >= self.capacity {
            self.counters.released_early += 1;
            self.items.pop_front()
        } else {
            None
        };
        self.items.push_back(item);
        self.counters.held += 1;
        early
    }

    /// Whether the pen has held longer than its timeout at `now`.
    pub fn timed_out(&self, now: Timestamp) -> bool {
        self.since
            .is_some_and(|since| now.saturating_since(since) >= self.timeout)
    }

    /// Stops holding; the held packets leave, oldest first. `by_timeout`
    /// counts a release the control path did not ask for.
    pub fn release(&mut self, by_timeout: bool) -> std::collections::vec_deque::Drain<'_, T> {
        if by_timeout && self.since.is_some() {
            self.counters.timeouts += 1;
        }
        self.since = None;
        self.counters.released += self.items.len() as u64;
        self.items.drain(..)
    }

    /// What the pen did so far.
    pub fn counters(&self) -> HoldCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn releases_in_arrival_order_and_counts() {
        let mut pen = HoldQueue::new(8, Duration::from_secs(1));
        assert!(!pen.is_holding());
        pen.start(at(0));
        for i in 0..5 {
            assert_eq!(pen.hold(i), None);
        }
        assert_eq!(pen.release(false).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
        assert!(!pen.is_holding() && pen.is_empty());
        let c = pen.counters();
        assert_eq!((c.held, c.released, c.released_early, c.timeouts), (5, 5, 0, 0));
    }

    #[test]
    fn a_full_pen_lets_its_oldest_go_first_and_drops_nothing() {
        let mut pen = HoldQueue::new(3, Duration::from_secs(1));
        pen.start(at(0));
        let early: Vec<_> = (0..6).filter_map(|i| pen.hold(i)).collect();
        assert_eq!(early, vec![0, 1, 2]);
        assert_eq!(pen.release(false).collect::<Vec<_>>(), vec![3, 4, 5]);
        let c = pen.counters();
        assert_eq!((c.held, c.released, c.released_early), (6, 3, 3));
    }

    #[test]
    fn the_timeout_runs_from_the_first_start() {
        let mut pen = HoldQueue::new(4, Duration::from_millis(100));
        assert!(!pen.timed_out(at(1_000)), "an idle pen never times out");
        pen.start(at(10));
        pen.start(at(50));
        assert!(!pen.timed_out(at(109)));
        assert!(pen.timed_out(at(110)));
        pen.hold(7);
        assert_eq!(pen.release(true).collect::<Vec<_>>(), vec![7]);
        assert_eq!(pen.counters().timeouts, 1);
        pen.release(true).for_each(drop);
        assert_eq!(pen.counters().timeouts, 1, "releasing an idle pen is no timeout");
    }
}
