//! Rejects messages from another incarnation, from a migration attempt that is
//! over, and duplicates.
//!
//! A session keeps one [`StalenessFilter`] per peer, created when the peer's
//! `Register` or `PeerHello` binds the session to an incarnation. Those two
//! messages are handled before the filter: they are how a restarted peer
//! announces its new incarnation, and they replace the filter.

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
