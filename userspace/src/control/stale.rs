//! Rejects messages from another incarnation, from a migration attempt that is
//! over, and duplicates.
//!
//! A process keeps one [`StalenessFilter`] per peer. The first message of a
//! session (`Register` or `RegisterAck`, `PeerHello` or `PeerHelloAck`) binds
//! it to the peer's incarnation through [`StalenessFilter::rebind`]; those
//! messages are handled before the filter, since they are how a restarted peer
//! announces its new incarnation.

use std::num::NonZeroU64;

use super::{
    codec::Envelope,
    ids::{Incarnation, MigrationSerial},
    message::MigrationRef,
};

/// How many message serials below the highest seen are remembered. Older
/// serials are treated as duplicates: over one TCP session messages arrive in
/// order, so anything that far back is a replay.
pub const DUPLICATE_WINDOW: u64 = 64;

/// The verdict on an incoming message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Process it.
    Current,
    /// Sent by another run of the peer than the one the session is bound to.
    StaleIncarnation {
        /// The bound incarnation.
        expected: Incarnation,
        /// The message's.
        got: Incarnation,
    },
    /// Belongs to a migration attempt that is not the active one, or opens
    /// one no newer than an attempt already seen.
    StaleSerial {
        /// The message's attempt.
        got: MigrationSerial,
        /// The active attempt.
        active: Option<MigrationSerial>,
        /// The newest attempt seen.
        newest: Option<MigrationSerial>,
    },
    /// This message serial was already accepted, or is too old to tell.
    Duplicate {
        /// The message serial.
        serial: NonZeroU64,
    },
}

/// Classifies one peer's messages. Pure state, no I/O.
#[derive(Clone, Debug)]
pub struct StalenessFilter {
    peer: Incarnation,
    active: Option<MigrationSerial>,
    newest: Option<MigrationSerial>,
    /// Highest message serial accepted; 0 before the first.
    highest: u64,
    /// Bit `i` set: serial `highest - i` was accepted.
    seen: u64,
}

impl StalenessFilter {
    /// A filter for a peer bound to `peer`, with no migration active.
    pub fn new(peer: Incarnation) -> Self {
        Self {
            peer,
            active: None,
            newest: None,
            highest: 0,
            seen: 0,
        }
    }

    /// Binds the filter to a new session with the peer. Message serials start
    /// over. A new incarnation also starts migration state afresh, as its
    /// attempts are unrelated to the old one's; the same incarnation
    /// reconnecting keeps it, so an attempt that ended before the reconnect
    /// stays stale.
    pub fn rebind(&mut self, peer: Incarnation) {
        if peer == self.peer {
            self.highest = 0;
            self.seen = 0;
        } else {
            *self = Self::new(peer);
        }
    }

    /// Makes `serial` the active attempt; messages of any other attempt are
    /// stale from now on.
    pub fn begin_migration(&mut self, serial: MigrationSerial) {
        self.active = Some(serial);
        self.newest = self.newest.max(Some(serial));
    }

    /// Ends the active attempt (done or aborted); its late messages are stale.
    pub fn end_migration(&mut self) {
        self.active = None;
    }

    /// The active attempt.
    pub fn active_migration(&self) -> Option<MigrationSerial> {
        self.active
    }

    /// Classifies `envelope` and, when it is [`Freshness::Current`], records
    /// its serial so a copy of it is a [`Freshness::Duplicate`].
    pub fn classify(&mut self, envelope: &Envelope) -> Freshness {
        if envelope.incarnation != self.peer {
            return Freshness::StaleIncarnation {
                expected: self.peer,
                got: envelope.incarnation,
            };
        }
        let stale_migration = match envelope.body.migration() {
            Some(MigrationRef::Opens(got)) => self.newest.filter(|&n| got <= n).map(|_| got),
            Some(MigrationRef::Within(got)) => (self.active != Some(got)).then_some(got),
            None => None,
        };
        if let Some(got) = stale_migration {
            return Freshness::StaleSerial {
                got,
                active: self.active,
                newest: self.newest,
            };
        }
        let serial = envelope.serial;
        if self.seen_before(serial.get()) {
            return Freshness::Duplicate { serial };
        }
        self.record(serial.get());
        Freshness::Current
    }

    fn seen_before(&self, serial: u64) -> bool {
        if serial > self.highest {
            return false;
        }
        let offset = self.highest - serial;
        offset >= DUPLICATE_WINDOW || self.seen & (1 << offset) != 0
    }

    fn record(&mut self, serial: u64) {
        if serial > self.highest {
            let shift = serial - self.highest;
            self.seen = if shift >= DUPLICATE_WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = serial;
        } else {
            self.seen |= 1 << (self.highest - serial);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{
        codec::Envelope,
        flow::tests::node,
        ids::Sender,
        message::{Abort, AbortReason, Body, Heartbeat, MigrateStart, MigrationMode, Phase, Progress, Purged},
        scope_wire::{ScopeTable, WireScope},
    };
    use std::time::Duration;

    const PEER: Incarnation = Incarnation(100);

    fn from(incarnation: Incarnation, serial: u64, body: impl Into<Body>) -> Envelope {
        Envelope::new(
            Sender::Manager,
            incarnation,
            NonZeroU64::new(serial).expect("test serials are nonzero"),
            body,
        )
    }

    fn heartbeat() -> Heartbeat {
        Heartbeat {
            scope_version: 1,
            workers: vec![],
        }
    }

    fn start(serial: u32) -> MigrateStart {
        MigrateStart {
            serial: MigrationSerial(serial),
            mode: MigrationMode::Disengage,
            target: node(1),
            from_version: 1,
            plan: WireScope {
                version: 2,
                table: ScopeTable::Dense(vec![2, 2]),
            },
            deadline: Duration::from_secs(10),
        }
    }

    fn progress(serial: u32) -> Progress {
        Progress {
            serial: MigrationSerial(serial),
            phase: Phase::Copy,
            flows_copied: 1,
            deltas_sent: 0,
            flows_remaining: 1,
            bytes_sent: 0,
        }
    }

    #[test]
    fn a_repeated_serial_is_a_duplicate() {
        let mut filter = StalenessFilter::new(PEER);
        assert_eq!(filter.classify(&from(PEER, 1, heartbeat())), Freshness::Current);
        assert_eq!(filter.classify(&from(PEER, 2, heartbeat())), Freshness::Current);
        assert_eq!(
            filter.classify(&from(PEER, 1, heartbeat())),
            Freshness::Duplicate {
                serial: NonZeroU64::MIN
            }
        );
    }

    #[test]
    fn messages_from_another_incarnation_are_stale_and_not_recorded() {
        let mut filter = StalenessFilter::new(PEER);
        let old = Incarnation(99);
        assert_eq!(
            filter.classify(&from(old, 5, heartbeat())),
            Freshness::StaleIncarnation {
                expected: PEER,
                got: old
            }
        );
        assert_eq!(filter.classify(&from(PEER, 5, heartbeat())), Freshness::Current);
    }

    #[test]
    fn late_and_repeated_messages_of_an_aborted_attempt_are_rejected() {
        // The node's view of the manager: attempt 7 starts, is aborted, and 8
        // starts. Leftovers of 7 must not touch attempt 8.
        let mut filter = StalenessFilter::new(PEER);
        assert_eq!(filter.classify(&from(PEER, 1, start(7))), Freshness::Current);
        filter.begin_migration(MigrationSerial(7));
        let abort = Abort {
            serial: MigrationSerial(7),
            reason: AbortReason::Cancelled,
            detail: String::new(),
        };
        assert_eq!(filter.classify(&from(PEER, 2, abort)), Freshness::Current);
        filter.end_migration();
        assert_eq!(filter.active_migration(), None);

        let late = filter.classify(&from(
            PEER,
            3,
            Purged {
                serial: MigrationSerial(7),
            },
        ));
        assert_eq!(
            late,
            Freshness::StaleSerial {
                got: MigrationSerial(7),
                active: None,
                newest: Some(MigrationSerial(7)),
            }
        );
        // A resent start of the aborted attempt, under a fresh message serial.
        assert!(matches!(
            filter.classify(&from(PEER, 4, start(7))),
            Freshness::StaleSerial {
                got: MigrationSerial(7),
                ..
            }
        ));

        assert_eq!(filter.classify(&from(PEER, 5, start(8))), Freshness::Current);
        filter.begin_migration(MigrationSerial(8));
        assert_eq!(filter.classify(&from(PEER, 6, progress(8))), Freshness::Current);
        assert_eq!(
            filter.classify(&from(PEER, 7, progress(7))),
            Freshness::StaleSerial {
                got: MigrationSerial(7),
                active: Some(MigrationSerial(8)),
                newest: Some(MigrationSerial(8)),
            }
        );
        // A duplicate of a current message is still a duplicate.
        assert!(matches!(
            filter.classify(&from(PEER, 6, progress(8))),
            Freshness::Duplicate { .. }
        ));
    }

    #[test]
    fn rebinding_restarts_serials_and_forgets_attempts_only_of_another_incarnation() {
        let mut filter = StalenessFilter::new(PEER);
        assert_eq!(filter.classify(&from(PEER, 1, start(7))), Freshness::Current);
        filter.begin_migration(MigrationSerial(7));
        filter.end_migration();

        filter.rebind(PEER);
        assert_eq!(filter.classify(&from(PEER, 1, heartbeat())), Freshness::Current);
        assert!(matches!(
            filter.classify(&from(PEER, 2, start(7))),
            Freshness::StaleSerial {
                got: MigrationSerial(7),
                ..
            }
        ));

        let restarted = Incarnation(101);
        filter.rebind(restarted);
        assert!(matches!(
            filter.classify(&from(PEER, 3, heartbeat())),
            Freshness::StaleIncarnation { .. }
        ));
        assert_eq!(filter.classify(&from(restarted, 1, start(1))), Freshness::Current);
    }

    #[test]
    fn the_window_accepts_late_serials_once_and_forgets_old_ones() {
        let mut filter = StalenessFilter::new(PEER);
        for serial in [10, 12, 11] {
            assert_eq!(
                filter.classify(&from(PEER, serial, heartbeat())),
                Freshness::Current,
                "serial {serial}"
            );
        }
        assert!(matches!(
            filter.classify(&from(PEER, 11, heartbeat())),
            Freshness::Duplicate { .. }
        ));
        let far = 12 + DUPLICATE_WINDOW;
        assert_eq!(filter.classify(&from(PEER, far, heartbeat())), Freshness::Current);
        // 12 is now exactly a window behind: too old to tell, so rejected.
        assert!(matches!(
            filter.classify(&from(PEER, 12, heartbeat())),
            Freshness::Duplicate { .. }
        ));
        assert_eq!(filter.classify(&from(PEER, far - 1, heartbeat())), Freshness::Current);
    }
}
