//! The flow table of one worker. See the [module docs](super) for the design.

use super::{
    entry::{version_older, JOURNALED, LIVE, NO_SLOT},
    index::{Index, BUCKET_BYTES},
    AppId, Direction, FlowEntry, NetworkAction, Owner, TcpState, Timestamp,
};
use handoff_common::{
    flow_key::FlowKey,
    net::ipproto,
    parse::tcp_flags::{ACK, RST, SYN},
};
use std::time::Duration;

/// The largest configurable capacity (entries).
pub const MAX_CAPACITY: usize = 1 << 30;
/// The default capacity (entries): 131072 connections in 32 MiB.
pub const DEFAULT_CAPACITY: usize = 1 << 18;
/// Slots sampled to pick an eviction victim when the table is full.
pub const EVICTION_SAMPLES: usize = 8;

/// Idle timeouts: a flow is removed once neither direction has seen a packet
/// for this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// An established TCP connection. RFC 5382 REQ-5: at least 2 h 4 min.
    pub tcp_established: Duration,
    /// A TCP connection opening or half closed. RFC 5382 REQ-5: at least 4 min.
    pub tcp_transitory: Duration,
    /// The linger of a TCP connection after FINs both ways or an RST: long
    /// enough for the last retransmitted ACKs, short enough to free the slot
    /// soon.
    pub tcp_closing: Duration,
    /// UDP. RFC 4787 REQ-5: at least 2 min, 5 min recommended.
    pub udp: Duration,
    /// Any other protocol.
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tcp_established: Duration::from_secs(7440),
            tcp_transitory: Duration::from_secs(240),
            tcp_closing: Duration::from_secs(10),
            udp: Duration::from_secs(300),
            other: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// The idle timeout of a flow of `protocol` in TCP state `tcp`.
    pub fn for_flow(&self, protocol: u8, tcp: TcpState) -> Duration {
        match (protocol, tcp) {
            (ipproto::TCP, TcpState::Established) => self.tcp_established,
            (ipproto::TCP, TcpState::Closing) => self.tcp_closing,
            (ipproto::TCP, _) => self.tcp_transitory,
            (ipproto::UDP, _) => self.udp,
            _ => self.other,
        }
    }
}

/// What to do with a TCP packet that is not a connection opening (SYN without
/// ACK) and matches no flow, for example mid-stream after a node restarted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MissPolicy {
    /// Drop it (and count it): a flow is only created by its opening SYN.
    #[default]
    Drop,
    /// Create a flow anyway (picks up connections mid-stream; the reply's ACK
    /// then marks it established).
    Create,
}

/// The verdict of [`FlowTable::admit`] for a packet with no flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Decide its actions and install a flow.
    Create,
    /// Drop the packet; install nothing.
    Drop,
}

/// Size and behaviour of a table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableConfig {
    /// Entries; a connection takes two (one per direction).
    pub capacity: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Non-SYN TCP packets without a flow.
    pub miss_policy: MissPolicy,
}

impl Default for TableConfig {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            timeouts: Timeouts::default(),
            miss_policy: MissPolicy::default(),
        }
    }
}

/// The actions of a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowActions {
    /// For packets of the forward direction (the one that opened the flow).
    pub forward: NetworkAction,
    /// For replies: usually undoes the forward rewrite.
    pub reverse: NetworkAction,
    /// The application of both directions.
    pub app: AppId,
}

/// A position in the slab. Valid until the next call that can remove flows
/// ([`FlowTable::install`], [`FlowTable::expire`], [`FlowTable::remove`]);
/// after that the slot may hold another flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Slot(u32);

impl Slot {
    /// The slab index.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// The two slots of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSlots {
    /// The forward direction's slot.
    pub forward: Slot,
    /// The reverse direction's slot.
    pub reverse: Slot,
}

/// Both entries of a connection: the unit a table is streamed in.
#[derive(Clone, Copy, Debug)]
pub struct FlowRecord {
    /// The forward direction.
    pub forward: FlowEntry,
    /// The reverse direction.
    pub reverse: FlowEntry,
}

/// What [`FlowTable::import`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportOutcome {
    /// The connection was new here.
    Inserted,
    /// A newer version replaced the entries.
    Updated,
    /// The same versions were already present (a duplicate delivery).
    Unchanged,
}

/// A change to the table, recorded while a journal runs.
///
/// Insert and update ops name a slot; the streamer reads the slot's current
/// entry when it sends the op. A slot gets at most one op per batch (until
/// the next [`FlowTable::take_journal`]), however often it changes, so the
/// per-packet updates of a busy flow cost one op, not one per packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalOp {
    /// A new entry.
    Insert {
        /// Where it is.
        slot: Slot,
        /// Its version when installed.
        version: u32,
    },
    /// A changed entry.
    Update {
        /// Where it is.
        slot: Slot,
        /// Its version at the first change of the batch.
        version: u32,
    },
    /// A removed entry.
    Delete {
        /// Its key.
        key: FlowKey,
    },
}

/// A batch of journal ops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Journal {
    /// The ops, oldest first.
    pub ops: Vec<JournalOp>,
    /// Ops were lost because the batch reached its limit: the receiver's copy
    /// cannot be completed from deltas, start over with a new snapshot.
    pub overflowed: bool,
}

#[derive(Debug)]
struct JournalState {
    ops: Vec<JournalOp>,
    limit: usize,
    overflowed: bool,
}

/// Table statistics. All counts are of connections (entry pairs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FlowCounters {
    /// Installed by [`FlowTable::install`].
    pub created: u64,
    /// Removed by the sweep after their idle timeout.
    pub expired: u64,
    /// Removed by the sweep after a TCP close and its linger.
    pub closed: u64,
    /// Removed to make room for a new flow.
    pub evicted: u64,
    /// Removed by [`FlowTable::remove`].
    pub removed: u64,
    /// Inserted or updated by [`FlowTable::import`].
    pub imported: u64,
    /// Packets dropped by [`MissPolicy::Drop`].
    pub miss_dropped: u64,
    /// Flows admitted mid-stream by [`MissPolicy::Create`].
    pub miss_created: u64,
    /// Connections in the table now.
    pub active: u64,
}

/// Why a table operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// A capacity outside `2..=MAX_CAPACITY`.
    #[error("capacity {capacity} is outside 2..={MAX_CAPACITY}")]
    InvalidCapacity {
        /// The capacity asked for.
        capacity: usize,
    },
    /// Forward and reverse key are equal (source and destination endpoint
    /// are the same), so the two directions cannot be told apart.
    #[error("flow {key} is its own reverse")]
    SameKey {
        /// The key.
        key: FlowKey,
    },
    /// A key of the new connection already has an entry (for NAT, two
    /// connections that would share a reply tuple).
    #[error("flow {key} already exists")]
    KeyExists {
        /// The key.
        key: FlowKey,
    },
    /// No room: eviction found nothing to evict, or an import does not fit
    /// (imports never evict; reserve room first).
    #[error("flow table full ({capacity} entries)")]
    Full {
        /// The capacity.
        capacity: usize,
    },
    /// The slot holds no flow.
    #[error("slot {slot} holds no flow")]
    NoSuchSlot {
        /// The slot.
        slot: u32,
    },
    /// An import older than the entry present.
    #[error("stale import of {key}: version {offered} is older than {present}")]
    Stale {
        /// The key.
        key: FlowKey,
        /// The version present.
        present: u32,
        /// The version offered.
        offered: u32,
    },
    /// An import whose keys belong to different connections here.
    #[error("import of {key} conflicts with another connection")]
    Conflict {
        /// The key present in another connection.
        key: FlowKey,
    },
}

/// The flow table of one worker: no locks, no allocation on the packet path.
pub struct FlowTable {
    slab: Vec<FlowEntry>,
    index: Index,
    /// Head of the free list threaded through the vacant slots' `partner`.
    free_head: u32,
    free_len: usize,
    local: Owner,
    timeouts: Timeouts,
    miss_policy: MissPolicy,
    /// Next slot the expiry sweep looks at.
    hand: usize,
    /// xorshift64 state for eviction sampling.
    rng: u64,
    journal: Option<JournalState>,
    counters: FlowCounters,
}

/// A summary: the entries themselves are too many to print.
impl std::fmt::Debug for FlowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowTable")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .field("local", &self.local)
            .field("counters", &self.counters)
            .field("journaling", &self.journal.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy)]
enum Change {
    Insert,
    Update,
}

impl FlowTable {
    /// An empty table of `config.capacity` entries owned by `local`. All
    /// memory is allocated here.
    pub fn new(config: &TableConfig, local: Owner) -> Result<Self, FlowError> {
        let capacity = config.capacity;
        if !(2..=MAX_CAPACITY).contains(&capacity) {
            return Err(FlowError::InvalidCapacity { capacity });
        }
        let mut table = Self {
            slab: Vec::with_capacity(capacity),
            index: Index::new(capacity),
            free_head: NO_SLOT,
            free_len: 0,
            local,
            timeouts: config.timeouts,
            miss_policy: config.miss_policy,
            hand: 0,
            rng: 0x9e37_79b9_7f4a_7c15,
            journal: None,
            counters: FlowCounters::default(),
        };
        table.add_vacant_slots(capacity);
        Ok(table)
    }

    /// Entries the table holds at most.
    pub fn capacity(&self) -> usize {
        self.slab.len()
    }

    /// Entries in use (two per connection).
    pub fn len(&self) -> usize {
        self.slab.len() - self.free_len
    }

    /// No entry is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Statistics.
    pub fn counters(&self) -> FlowCounters {
        self.counters
    }

    /// The owner new flows get.
    pub fn local_owner(&self) -> Owner {
        self.local
    }

    /// Slab slots allocated (changes only in [`Self::reserve`]).
    pub fn slab_capacity(&self) -> usize {
        self.slab.capacity()
    }

    /// Index buckets (changes only in [`Self::reserve`]).
    pub fn index_buckets(&self) -> usize {
        self.index.bucket_count()
    }

    /// Bytes held by the slab and the index.
    pub fn memory_bytes(&self) -> usize {
        self.slab.capacity() * std::mem::size_of::<FlowEntry>() + self.index.bucket_count() * BUCKET_BYTES
    }

    /// The slot of the entry matching `key`.
    pub fn lookup(&self, key: &FlowKey) -> Option<Slot> {
        let slab = &self.slab;
        self.index.find(key, |s| &slab[s as usize].key).map(Slot)
    }

    /// The entry at `slot`, if it holds one.
    pub fn entry(&self, slot: Slot) -> Option<&FlowEntry> {
        self.slab.get(slot.index()).filter(|e| e.is_live())
    }

    /// Whether a packet that matched no flow may create one: TCP flows start
    /// only with a SYN (no ACK, no RST) unless the miss policy says otherwise.
    pub fn admit(&mut self, key: &FlowKey, tcp_flags: u8) -> Admission {
        let opening = tcp_flags & (SYN | ACK | RST) == SYN;
        if key.protocol != ipproto::TCP || opening {
            return Admission::Create;
        }
        match self.miss_policy {
            MissPolicy::Drop => {
                self.counters.miss_dropped += 1;
                Admission::Drop
            }
            MissPolicy::Create => {
                self.counters.miss_created += 1;
                Admission::Create
            }
        }
    }

    /// Installs a connection: `forward` (the key of the packet at hand) and
    /// `reverse` (the key its replies will carry, after any rewrite), linked
    /// to each other. Evicts a connection if the table is full. Does not look
    /// at TCP flags: ask [`Self::admit`] first.
    pub fn install(
        &mut self,
        forward: FlowKey,
        reverse: FlowKey,
        actions: FlowActions,
        now: Timestamp,
    ) -> Result<FlowSlots, FlowError> {
        if forward == reverse {
            return Err(FlowError::SameKey { key: forward });
        }
        for key in [forward, reverse] {
            if self.lookup(&key).is_some() {
                return Err(FlowError::KeyExists { key });
            }
        }
        while self.free_len < 2 {
            if !self.evict_one(now) {
                return Err(FlowError::Full {
                    capacity: self.capacity(),
                });
            }
        }
        let entry = |key, direction, network| FlowEntry::new(key, direction, network, actions.app, self.local, now);
        let slots = self.insert_pair(
            entry(forward, Direction::Forward, actions.forward),
            entry(reverse, Direction::Reverse, actions.reverse),
        )?;
        self.counters.created += 1;
        Ok(slots)
    }

    /// Accounts a packet of `frame_len` bytes with `tcp_flags` to the entry at
    /// `slot` and advances the connection's TCP state.
    pub fn on_packet(
        &mut self,
        slot: Slot,
        tcp_flags: u8,
        frame_len: usize,
        now: Timestamp,
    ) -> Result<&FlowEntry, FlowError> {
        let i = self.live_index(slot)?;
        let entry = &mut self.slab[i];
        entry.packets += 1;
        entry.bytes += frame_len as u64;
        entry.last_seen = entry.last_seen.max(now);
        entry.bump();
        let next = entry.tcp.after(entry.direction, tcp_flags);
        let partner = entry.partner as usize;
        if next != entry.tcp {
            entry.tcp = next;
            if let Some(p) = self.slab.get_mut(partner) {
                p.tcp = next;
                p.bump();
                self.record_change(partner, Change::Update);
            }
        }
        self.record_change(i, Change::Update);
        Ok(&self.slab[i])
    }

    /// Removes the connection at `slot` (both directions) and returns it.
    pub fn remove(&mut self, slot: Slot) -> Option<FlowRecord> {
        let record = self.record(slot)?;
        self.remove_pair(slot.index());
        self.counters.removed += 1;
        Some(record)
    }

    /// Looks at the next `budget` slots (clock-hand order, wrapping) and
    /// removes the connections that were idle for their timeout, so expiry
    /// work is spread over many calls and no packet waits for a full scan.
    /// Returns the number of connections removed.
    pub fn expire(&mut self, now: Timestamp, budget: usize) -> usize {
        let slots = self.slab.len();
        let mut removed = 0;
        for _ in 0..budget.min(slots) {
            let i = self.hand;
            self.hand = (self.hand + 1) % slots;
            let entry = &self.slab[i];
            if !entry.is_live() {
                continue;
            }
            let (protocol, state) = (entry.key.protocol, entry.tcp);
            if self.idle(i, now) < self.timeouts.for_flow(protocol, state) {
                continue;
            }
            self.remove_pair(i);
            if state == TcpState::Closing {
                self.counters.closed += 1;
            } else {
                self.counters.expired += 1;
            }
            removed += 1;
        }
        removed
    }

    /// Every entry in use, in slot order.
    pub fn entries(&self) -> impl Iterator<Item = (Slot, &FlowEntry)> + '_ {
        self.slab
            .iter()
            .enumerate()
            .filter(|(_, e)| e.is_live())
            .map(|(i, e)| (Slot(i as u32), e))
    }

    /// Every connection once, as a snapshot to stream to another node.
    pub fn records(&self) -> impl Iterator<Item = FlowRecord> + '_ {
        self.entries()
            .filter(|(_, e)| e.direction == Direction::Forward)
            .filter_map(|(slot, _)| self.record(slot))
    }

    /// The connection that has an entry at `slot`.
    pub fn record(&self, slot: Slot) -> Option<FlowRecord> {
        let (forward, reverse) = self.pair_of(slot.index())?;
        Some(FlowRecord {
            forward: self.slab[forward],
            reverse: self.slab[reverse],
        })
    }

    /// Starts (or restarts) recording changes, at most `limit` ops per batch.
    /// Allocates the batch buffer, so recording itself never does.
    pub fn start_journal(&mut self, limit: usize) {
        for entry in &mut self.slab {
            entry.flags &= !JOURNALED;
        }
        self.journal = Some(JournalState {
            ops: Vec::with_capacity(limit),
            limit,
            overflowed: false,
        });
    }

    /// The ops recorded since the last call; recording goes on. Read the
    /// entries of the ops' slots before the table changes again: a slot with
    /// an op in this batch gets no new op for changes made before this call.
    pub fn take_journal(&mut self) -> Journal {
        let Some(state) = self.journal.as_mut() else {
            return Journal::default();
        };
        let journal = Journal {
            ops: std::mem::replace(&mut state.ops, Vec::with_capacity(state.limit)),
            overflowed: std::mem::take(&mut state.overflowed),
        };
        self.clear_journaled(&journal);
        journal
    }

    /// Stops recording and returns the ops of the last batch.
    pub fn stop_journal(&mut self) -> Journal {
        let Some(state) = self.journal.take() else {
            return Journal::default();
        };
        let journal = Journal {
            ops: state.ops,
            overflowed: state.overflowed,
        };
        self.clear_journaled(&journal);
        journal
    }

    /// Inserts a connection received from another node, with its versions,
    /// owner and state as they were there. A connection already present is
    /// replaced if the record is newer, kept if it has the same versions, and
    /// the record refused if either of its entries is older. Never evicts.
    ///
    /// The record's timestamps are on the sender's clock, which read
    /// `source_now` when the record was taken; they are moved to this table's
    /// clock (`now`) keeping their age, so idle timeouts carry over.
    pub fn import(
        &mut self,
        record: FlowRecord,
        source_now: Timestamp,
        now: Timestamp,
    ) -> Result<ImportOutcome, FlowError> {
        let FlowRecord {
            mut forward,
            mut reverse,
        } = record;
        if forward.key == reverse.key {
            return Err(FlowError::SameKey { key: forward.key });
        }
        forward.direction = Direction::Forward;
        reverse.direction = Direction::Reverse;
        for entry in [&mut forward, &mut reverse] {
            entry.created = entry.created.rebased(source_now, now);
            entry.last_seen = entry.last_seen.rebased(source_now, now);
        }
        match (self.lookup(&forward.key), self.lookup(&reverse.key)) {
            (None, None) => {
                self.insert_pair(forward, reverse)?;
                self.counters.imported += 1;
                Ok(ImportOutcome::Inserted)
            }
            (Some(f), Some(r)) if self.slab[f.index()].partner == r.0 => {
                let present = [(f.index(), forward), (r.index(), reverse)];
                for (i, new) in present {
                    let old = self.slab[i].version;
                    if version_older(new.version, old) {
                        return Err(FlowError::Stale {
                            key: new.key,
                            present: old,
                            offered: new.version,
                        });
                    }
                }
                if present.iter().all(|(i, new)| self.slab[*i].version == new.version) {
                    return Ok(ImportOutcome::Unchanged);
                }
                for (i, new) in present {
                    let old = &mut self.slab[i];
                    *old = FlowEntry {
                        partner: old.partner,
                        flags: old.flags,
                        ..new
                    };
                    self.record_change(i, Change::Update);
                }
                self.counters.imported += 1;
                Ok(ImportOutcome::Updated)
            }
            (f, _) => Err(FlowError::Conflict {
                key: if f.is_some() { forward.key } else { reverse.key },
            }),
        }
    }

    /// Records that the connection at `slot` is now owned by `owner`,
    /// keeping its actions (the receiving side of a migration takes over).
    pub fn set_owner(&mut self, slot: Slot, owner: Owner) -> Result<(), FlowError> {
        self.update_pair(slot, |e| e.owner = owner)
    }

    /// Sends the connection at `slot` to `owner` from now on: both directions
    /// get [`NetworkAction::Redirect`]. Returns the actions they had, so an
    /// aborted migration can put them back.
    pub fn redirect(&mut self, slot: Slot, owner: Owner) -> Result<FlowActions, FlowError> {
        let record = self.record(slot).ok_or(FlowError::NoSuchSlot { slot: slot.0 })?;
        self.update_pair(slot, |e| {
            e.owner = owner;
            e.network = NetworkAction::Redirect { owner };
        })?;
        Ok(FlowActions {
            forward: record.forward.network,
            reverse: record.reverse.network,
            app: record.forward.app,
        })
    }

    /// Takes back a connection [`FlowTable::redirect`] gave away: owned here
    /// again, with the `actions` that call returned. For a handover whose
    /// inheritor never confirmed the cut.
    pub fn reclaim(&mut self, slot: Slot, actions: FlowActions) -> Result<(), FlowError> {
        let (forward, reverse) = self
            .pair_of(slot.index())
            .ok_or(FlowError::NoSuchSlot { slot: slot.0 })?;
        for (i, network) in [(forward, actions.forward), (reverse, actions.reverse)] {
            let entry = &mut self.slab[i];
            entry.owner = self.local;
            entry.network = network;
            entry.bump();
            self.record_change(i, Change::Update);
        }
        Ok(())
    }

    /// Grows the table by `additional` entries, for a receiver that was told
    /// how many flows are coming. Allocates and rebuilds the index: never call
    /// it on the packet path.
    pub fn reserve(&mut self, additional: usize) -> Result<(), FlowError> {
        let capacity = self.slab.len().saturating_add(additional);
        if capacity > MAX_CAPACITY {
            return Err(FlowError::InvalidCapacity { capacity });
        }
        self.slab.reserve_exact(additional);
        self.add_vacant_slots(additional);
        let mut index = self.index.resized(capacity);
        for (slot, entry) in self.entries() {
            index.insert(&entry.key, slot.0);
        }
        self.index = index;
        Ok(())
    }

    fn add_vacant_slots(&mut self, count: usize) {
        let start = self.slab.len();
        self.slab.extend(std::iter::repeat_n(FlowEntry::vacant(NO_SLOT), count));
        // Pushed in reverse so that slots are handed out in ascending order.
        for slot in (start..start + count).rev() {
            self.push_free(slot);
        }
    }

    fn push_free(&mut self, slot: usize) {
        self.slab[slot] = FlowEntry::vacant(self.free_head);
        self.free_head = slot as u32;
        self.free_len += 1;
    }

    fn pop_free(&mut self) -> Option<usize> {
        let slot = self.free_head as usize;
        let entry = self.slab.get(slot)?;
        self.free_head = entry.partner;
        self.free_len -= 1;
        Some(slot)
    }

    fn live_index(&self, slot: Slot) -> Result<usize, FlowError> {
        self.entry(slot)
            .map(|_| slot.index())
            .ok_or(FlowError::NoSuchSlot { slot: slot.0 })
    }

    /// `(forward, reverse)` slots of the connection with an entry at `i`.
    fn pair_of(&self, i: usize) -> Option<(usize, usize)> {
        let entry = self.slab.get(i).filter(|e| e.is_live())?;
        let partner = entry.partner as usize;
        match entry.direction {
            Direction::Forward => Some((i, partner)),
            Direction::Reverse => Some((partner, i)),
        }
    }

    /// Links two entries into free slots, indexes and journals them.
    fn insert_pair(&mut self, mut forward: FlowEntry, mut reverse: FlowEntry) -> Result<FlowSlots, FlowError> {
        if self.free_len < 2 {
            return Err(FlowError::Full {
                capacity: self.capacity(),
            });
        }
        let (Some(f), Some(r)) = (self.pop_free(), self.pop_free()) else {
            return Err(FlowError::Full {
                capacity: self.capacity(),
            });
        };
        forward.partner = r as u32;
        reverse.partner = f as u32;
        forward.flags = LIVE;
        reverse.flags = LIVE;
        for (slot, entry) in [(f, forward), (r, reverse)] {
            self.slab[slot] = entry;
            self.index.insert(&entry.key, slot as u32);
            self.record_change(slot, Change::Insert);
        }
        self.counters.active += 1;
        Ok(FlowSlots {
            forward: Slot(f as u32),
            reverse: Slot(r as u32),
        })
    }

    fn remove_pair(&mut self, i: usize) {
        let Some((forward, reverse)) = self.pair_of(i) else {
            return;
        };
        for slot in [forward, reverse] {
            let key = self.slab[slot].key;
            let slab = &self.slab;
            self.index.remove(&key, |s| &slab[s as usize].key);
            self.push_free(slot);
            self.record_delete(key);
        }
        self.counters.active -= 1;
    }

    /// Applies `change` to both entries of the connection at `slot`.
    fn update_pair(&mut self, slot: Slot, change: impl Fn(&mut FlowEntry)) -> Result<(), FlowError> {
        let (forward, reverse) = self
            .pair_of(slot.index())
            .ok_or(FlowError::NoSuchSlot { slot: slot.0 })?;
        for i in [forward, reverse] {
            change(&mut self.slab[i]);
            self.slab[i].bump();
            self.record_change(i, Change::Update);
        }
        Ok(())
    }

    /// How long neither direction of the connection at `i` has seen a packet.
    fn idle(&self, i: usize, now: Timestamp) -> Duration {
        let entry = &self.slab[i];
        let partner_seen = self
            .slab
            .get(entry.partner as usize)
            .map_or(entry.last_seen, |p| p.last_seen);
        now.saturating_since(entry.last_seen.max(partner_seen))
    }

    /// Evicts one connection: of [`EVICTION_SAMPLES`] random slots, the
    /// connection in the most expendable state (closing, then opening or half
    /// closed, then non-TCP, then established), idle longest among equals.
    fn evict_one(&mut self, now: Timestamp) -> bool {
        let slots = self.slab.len();
        let mut victim: Option<(usize, u8, Duration)> = None;
        for _ in 0..EVICTION_SAMPLES {
            let i = (self.next_random() % slots as u64) as usize;
            let entry = &self.slab[i];
            if !entry.is_live() {
                continue;
            }
            let rank = eviction_rank(entry.tcp);
            let idle = self.idle(i, now);
            if victim.is_none_or(|(_, r, d)| rank < r || (rank == r && idle > d)) {
                victim = Some((i, rank, idle));
            }
        }
        // Only a nearly empty table can sample nothing but vacant slots.
        let victim = victim
            .map(|(i, _, _)| i)
            .or_else(|| (0..slots).find(|&i| self.slab[i].is_live()));
        let Some(i) = victim else {
            return false;
        };
        self.remove_pair(i);
        self.counters.evicted += 1;
        true
    }

    fn next_random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn record_change(&mut self, slot: usize, change: Change) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let entry = &mut self.slab[slot];
        if entry.flags & JOURNALED != 0 {
            return;
        }
        if journal.ops.len() >= journal.limit {
            journal.overflowed = true;
            return;
        }
        let (slot, version) = (Slot(slot as u32), entry.version);
        journal.ops.push(match change {
            Change::Insert => JournalOp::Insert { slot, version },
            Change::Update => JournalOp::Update { slot, version },
        });
        entry.flags |= JOURNALED;
    }

    fn record_delete(&mut self, key: FlowKey) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        if journal.ops.len() >= journal.limit {
            journal.overflowed = true;
        } else {
            journal.ops.push(JournalOp::Delete { key });
        }
    }

    fn clear_journaled(&mut self, journal: &Journal) {
        for op in &journal.ops {
            if let JournalOp::Insert { slot, .. } | JournalOp::Update { slot, .. } = op {
                if let Some(entry) = self.slab.get_mut(slot.index()) {
                    entry.flags &= !JOURNALED;
                }
            }
        }
    }
}

/// Lower is evicted first.
fn eviction_rank(state: TcpState) -> u8 {
    match state {
        TcpState::Closing => 0,
        s if s.is_transitory() => 1,
        TcpState::NotTcp => 2,
        _ => 3,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Rewrite, Side};
    use handoff_common::parse::tcp_flags::FIN;
    use std::net::{IpAddr, Ipv4Addr};

    const SECOND: u64 = 1_000_000_000;
    const ME: Owner = Owner { node: 1, worker: 0 };

    fn at(secs: u64) -> Timestamp {
        Timestamp::from_nanos(secs * SECOND)
    }

    fn table(capacity: usize) -> FlowTable {
        FlowTable::new(
            &TableConfig {
                capacity,
                ..TableConfig::default()
            },
            ME,
        )
        .unwrap()
    }

    /// Client `n` of a VIP, and the reply key after DNAT to a backend.
    fn keys(n: u32, protocol: u8) -> (FlowKey, FlowKey) {
        let client: IpAddr = Ipv4Addr::from(0x0a00_0000 + n).into();
        let forward = FlowKey::new(client, "10.0.9.1".parse().unwrap(), 40000, 80, protocol);
        let reverse = FlowKey::new("10.1.0.1".parse().unwrap(), client, 8080, 40000, protocol);
        (forward, reverse)
    }

    fn actions() -> FlowActions {
        let rewrite = |side, address: &str, port| {
            NetworkAction::Rewrite(Rewrite {
                side,
                address: address.parse().unwrap(),
                port,
                next_hop: 1,
            })
        };
        FlowActions {
            forward: rewrite(Side::Destination, "10.1.0.1", 8080),
            reverse: rewrite(Side::Source, "10.0.9.1", 80),
            app: AppId::COUNT,
        }
    }

    /// Imports with both clocks reading the same.
    fn import(t: &mut FlowTable, record: FlowRecord) -> Result<ImportOutcome, FlowError> {
        t.import(record, at(1000), at(1000))
    }

    fn install(t: &mut FlowTable, n: u32, protocol: u8, now: Timestamp) -> FlowSlots {
        let (f, r) = keys(n, protocol);
        t.install(f, r, actions(), now).unwrap()
    }

    /// Drives a TCP connection to established.
    fn establish(t: &mut FlowTable, slots: FlowSlots, now: Timestamp) {
        t.on_packet(slots.forward, SYN, 60, now).unwrap();
        t.on_packet(slots.reverse, SYN | ACK, 60, now).unwrap();
        t.on_packet(slots.forward, ACK, 60, now).unwrap();
    }

    #[test]
    fn entry_and_per_entry_memory_are_as_documented() {
        assert_eq!(std::mem::size_of::<FlowEntry>(), 112);
        let t = table(1024);
        assert_eq!(t.index_buckets(), 2048);
        assert_eq!(t.memory_bytes(), 1024 * 128);
        assert_eq!(table(1025).memory_bytes(), 1025 * 112 + 4096 * BUCKET_BYTES);
        assert_eq!(table(DEFAULT_CAPACITY).memory_bytes(), 32 << 20);
    }

    #[test]
    fn capacity_is_checked() {
        for capacity in [0, 1, MAX_CAPACITY + 1] {
            assert_eq!(
                FlowTable::new(
                    &TableConfig {
                        capacity,
                        ..TableConfig::default()
                    },
                    ME
                )
                .unwrap_err(),
                FlowError::InvalidCapacity { capacity }
            );
        }
    }

    #[test]
    fn install_links_both_directions() {
        let mut t = table(8);
        let (f, r) = keys(1, ipproto::TCP);
        let slots = t.install(f, r, actions(), at(5)).unwrap();
        assert_eq!(t.lookup(&f), Some(slots.forward));
        assert_eq!(t.lookup(&r), Some(slots.reverse));
        assert_eq!(t.lookup(&f.reversed()), None);
        let record = t.record(slots.reverse).unwrap();
        assert_eq!((record.forward.key, record.reverse.key), (f, r));
        assert_eq!(record.forward.network, actions().forward);
        assert_eq!(record.reverse.network, actions().reverse);
        assert_eq!(record.reverse.direction, Direction::Reverse);
        assert_eq!(t.local_owner(), ME);
        assert_eq!((record.forward.owner, record.forward.app), (ME, AppId::COUNT));
        assert_eq!((record.forward.tcp, record.forward.created), (TcpState::SynSent, at(5)));
        assert_eq!(record.forward.version, 1);
        assert_eq!((t.len(), t.counters().active, t.counters().created), (2, 1, 1));
        let (uf, ur) = keys(1, ipproto::UDP);
        let udp = t.install(uf, ur, actions(), at(5)).unwrap();
        assert_eq!(t.entry(udp.forward).unwrap().tcp, TcpState::NotTcp);
    }

    #[test]
    fn install_refuses_taken_keys_and_self_reverse() {
        let mut t = table(8);
        let (f, r) = keys(1, ipproto::TCP);
        t.install(f, r, actions(), at(0)).unwrap();
        let (g, _) = keys(2, ipproto::TCP);
        assert_eq!(t.install(f, g, actions(), at(0)), Err(FlowError::KeyExists { key: f }));
        assert_eq!(t.install(g, r, actions(), at(0)), Err(FlowError::KeyExists { key: r }));
        assert_eq!(t.install(g, g, actions(), at(0)), Err(FlowError::SameKey { key: g }));
        assert_eq!(t.counters().active, 1);
    }

    #[test]
    fn only_a_syn_opens_a_tcp_flow_unless_the_miss_policy_says_create() {
        let mut t = table(8);
        let (tcp, _) = keys(1, ipproto::TCP);
        let (udp, _) = keys(1, ipproto::UDP);
        assert_eq!(t.admit(&tcp, SYN), Admission::Create);
        assert_eq!(t.admit(&udp, 0), Admission::Create);
        for flags in [ACK, SYN | ACK, RST, SYN | RST, FIN | ACK, 0] {
            assert_eq!(t.admit(&tcp, flags), Admission::Drop);
        }
        assert_eq!(t.counters().miss_dropped, 6);
        let mut lenient = FlowTable::new(
            &TableConfig {
                capacity: 8,
                miss_policy: MissPolicy::Create,
                ..TableConfig::default()
            },
            ME,
        )
        .unwrap();
        assert_eq!(lenient.admit(&tcp, ACK), Admission::Create);
        assert_eq!(
            (lenient.counters().miss_created, lenient.counters().miss_dropped),
            (1, 0)
        );
    }

    #[test]
    fn packets_are_counted_per_direction_and_bump_versions() {
        let mut t = table(8);
        let slots = install(&mut t, 1, ipproto::UDP, at(0));
        t.on_packet(slots.forward, 0, 100, at(1)).unwrap();
        let e = t.on_packet(slots.forward, 0, 50, at(2)).unwrap();
        assert_eq!((e.packets, e.bytes, e.last_seen, e.version), (2, 150, at(2), 3));
        let r = t.entry(slots.reverse).unwrap();
        assert_eq!((r.packets, r.version, r.last_seen), (0, 1, at(0)));
    }

    #[test]
    fn a_closed_connection_lingers_then_goes() {
        let mut t = table(8);
        let slots = install(&mut t, 1, ipproto::TCP, at(0));
        establish(&mut t, slots, at(0));
        assert_eq!(t.entry(slots.forward).unwrap().tcp, TcpState::Established);
        assert_eq!(t.entry(slots.reverse).unwrap().tcp, TcpState::Established);
        t.on_packet(slots.forward, FIN | ACK, 60, at(100)).unwrap();
        assert_eq!(t.entry(slots.reverse).unwrap().tcp, TcpState::FinForward);
        t.on_packet(slots.reverse, FIN | ACK, 60, at(100)).unwrap();
        assert_eq!(t.entry(slots.forward).unwrap().tcp, TcpState::Closing);
        assert_eq!(t.expire(at(109), usize::MAX), 0);
        assert_eq!(t.expire(at(110), usize::MAX), 1);
        assert!(t.is_empty());
        assert_eq!(
            (t.counters().closed, t.counters().expired, t.counters().active),
            (1, 0, 0)
        );
    }

    #[test]
    fn a_new_syn_on_a_closing_tuple_reopens_it() {
        let mut t = table(8);
        let slots = install(&mut t, 1, ipproto::TCP, at(0));
        establish(&mut t, slots, at(0));
        t.on_packet(slots.forward, RST, 60, at(1)).unwrap();
        t.on_packet(slots.forward, SYN, 60, at(5)).unwrap();
        assert_eq!(t.entry(slots.reverse).unwrap().tcp, TcpState::SynSent);
        assert_eq!(t.expire(at(20), usize::MAX), 0);
        t.on_packet(slots.reverse, SYN | ACK, 60, at(6)).unwrap();
        assert_eq!(t.entry(slots.forward).unwrap().tcp, TcpState::Established);
    }

    #[test]
    fn a_reset_closes_at_once() {
        let mut t = table(8);
        let slots = install(&mut t, 1, ipproto::TCP, at(0));
        establish(&mut t, slots, at(0));
        t.on_packet(slots.reverse, RST, 60, at(1)).unwrap();
        assert_eq!(t.entry(slots.forward).unwrap().tcp, TcpState::Closing);
        assert_eq!(t.expire(at(11), usize::MAX), 1);
        assert_eq!(t.counters().closed, 1);
    }

    #[test]
    fn idle_timeouts_depend_on_protocol_and_state() {
        let timeouts = Timeouts::default();
        let mut t = table(64);
        let udp = install(&mut t, 1, ipproto::UDP, at(0));
        let opening = install(&mut t, 2, ipproto::TCP, at(0));
        let established = install(&mut t, 3, ipproto::TCP, at(0));
        establish(&mut t, established, at(0));
        let (of, or) = keys(4, ipproto::ICMP);
        let other = t.install(of, or, actions(), at(0)).unwrap();
        let key = |slots: FlowSlots| t.entry(slots.forward).unwrap().key;
        // In increasing order of timeout.
        let cases = [
            (key(other), timeouts.other.as_secs()),
            (key(opening), timeouts.tcp_transitory.as_secs()),
            (key(udp), timeouts.udp.as_secs()),
            (key(established), timeouts.tcp_established.as_secs()),
        ];
        for (key, timeout) in cases {
            t.expire(at(timeout - 1), usize::MAX);
            assert!(t.lookup(&key).is_some(), "{key} expired early");
            t.expire(at(timeout), usize::MAX);
            assert!(t.lookup(&key).is_none(), "{key} did not expire at {timeout}s");
        }
        assert_eq!(t.counters().expired, 4);
    }

    #[test]
    fn traffic_in_either_direction_keeps_a_connection() {
        let mut t = table(8);
        let slots = install(&mut t, 1, ipproto::UDP, at(0));
        t.on_packet(slots.reverse, 0, 60, at(200)).unwrap();
        assert_eq!(t.expire(at(450), usize::MAX), 0);
        assert_eq!(t.expire(at(500), usize::MAX), 1);
    }

    #[test]
    fn the_sweep_does_bounded_work_per_call() {
        let mut t = table(100);
        for n in 0..50 {
            install(&mut t, n, ipproto::UDP, at(0));
        }
        let late = at(1000);
        // Ten slots hold five connections, both entries side by side.
        assert_eq!(t.expire(late, 10), 5);
        assert_eq!(t.counters().active, 45);
        let mut calls = 1;
        while !t.is_empty() {
            assert!(t.expire(late, 10) <= 5);
            calls += 1;
        }
        assert_eq!(calls, 10);
        install(&mut t, 1, ipproto::UDP, late);
        // The hand wrapped around: a full lap finds nothing else to expire.
        assert_eq!(t.expire(late, 1000), 0);
    }

    #[test]
    fn a_full_table_evicts_closing_connections_first() {
        let mut t = table(16);
        let mut all = Vec::new();
        for n in 0..8 {
            let slots = install(&mut t, n, ipproto::TCP, at(0));
            establish(&mut t, slots, at(n as u64));
            all.push(slots);
        }
        t.on_packet(all[5].forward, RST, 60, at(10)).unwrap();
        let closing = t.entry(all[5].forward).unwrap().key;
        // The slots that hold a closing connection are 2 of 16; eight samples
        // miss both with probability (14/16)^8 = 34%, so try several times.
        let mut evicted_closing = false;
        for n in 100..110 {
            install(&mut t, n, ipproto::TCP, at(20));
            evicted_closing |= t.lookup(&closing).is_none();
            assert_eq!(t.len(), 16);
        }
        assert!(evicted_closing);
        assert_eq!(t.counters().evicted, 10);
        assert_eq!(t.counters().active, 8);
    }

    #[test]
    fn eviction_prefers_the_longest_idle_among_equals() {
        let mut t = table(16);
        for n in 0..8 {
            install(&mut t, n, ipproto::UDP, at(n as u64));
        }
        let oldest = keys(0, ipproto::UDP).0;
        // Every sample sees entries of the sixteen; the oldest pair is 2 of
        // them, so over many evictions it must go first whenever sampled.
        let mut rounds = 0;
        while t.lookup(&oldest).is_some() {
            let before: Vec<FlowKey> = t.records().map(|r| r.forward.key).collect();
            install(&mut t, 100 + rounds, ipproto::UDP, at(50));
            let gone: Vec<&FlowKey> = before.iter().filter(|k| t.lookup(k).is_none()).collect();
            assert_eq!(gone.len(), 1);
            rounds += 1;
            assert!(rounds < 50);
        }
    }

    /// The packet path must not allocate: filling the table to capacity and
    /// evicting for many more installs leaves the slab and the index as they
    /// were allocated.
    #[test]
    fn churn_at_capacity_never_grows_the_table() {
        let capacity = 1024;
        let mut t = table(capacity);
        let (slab, buckets) = (t.slab_capacity(), t.index_buckets());
        for n in 0..20_000u32 {
            let protocol = if n % 3 == 0 { ipproto::UDP } else { ipproto::TCP };
            // 100 installs a second: the table fills long before flows expire.
            let now = Timestamp::from_nanos(n as u64 * SECOND / 100);
            let slots = install(&mut t, n, protocol, now);
            t.on_packet(slots.forward, SYN, 60, now).unwrap();
            if n % 5 == 0 {
                t.on_packet(slots.reverse, RST, 60, now).unwrap();
            }
            t.expire(now, 4);
            assert_eq!((t.slab_capacity(), t.index_buckets()), (slab, buckets));
        }
        let counters = t.counters();
        assert!(counters.evicted > 15_000, "{counters:?}");
        assert_eq!(counters.active as usize * 2, capacity);
        // Every flow still in the table is reachable through the index.
        for (slot, entry) in t.entries() {
            assert_eq!(t.lookup(&entry.key), Some(slot));
        }
    }

    #[test]
    fn remove_takes_both_directions_and_frees_the_slots() {
        let mut t = table(4);
        let (f, r) = keys(1, ipproto::TCP);
        let slots = t.install(f, r, actions(), at(0)).unwrap();
        let record = t.remove(slots.reverse).unwrap();
        assert_eq!((record.forward.key, record.reverse.key), (f, r));
        assert_eq!((t.lookup(&f), t.lookup(&r), t.len()), (None, None, 0));
        assert!(t.remove(slots.forward).is_none());
        assert_eq!(
            t.on_packet(slots.forward, 0, 1, at(0)).unwrap_err(),
            FlowError::NoSuchSlot { slot: 0 }
        );
        assert_eq!(t.counters().removed, 1);
        install(&mut t, 2, ipproto::TCP, at(0));
        install(&mut t, 3, ipproto::TCP, at(0));
        assert_eq!((t.counters().evicted, t.len()), (0, 4));
    }

    #[test]
    fn the_journal_records_each_changed_slot_once_per_batch() {
        let mut t = table(16);
        let before = install(&mut t, 1, ipproto::UDP, at(0));
        t.start_journal(100);
        let slots = install(&mut t, 2, ipproto::UDP, at(0));
        for _ in 0..10 {
            t.on_packet(slots.forward, 0, 60, at(1)).unwrap();
            t.on_packet(before.forward, 0, 60, at(1)).unwrap();
        }
        let journal = t.take_journal();
        assert!(!journal.overflowed);
        assert_eq!(
            journal.ops,
            vec![
                JournalOp::Insert {
                    slot: slots.forward,
                    version: 1
                },
                JournalOp::Insert {
                    slot: slots.reverse,
                    version: 1
                },
                JournalOp::Update {
                    slot: before.forward,
                    version: 2
                },
            ]
        );
        t.on_packet(slots.forward, 0, 60, at(2)).unwrap();
        let removed = t.remove(before.forward).unwrap();
        let journal = t.stop_journal();
        assert_eq!(
            journal.ops,
            vec![
                JournalOp::Update {
                    slot: slots.forward,
                    version: 12
                },
                JournalOp::Delete {
                    key: removed.forward.key
                },
                JournalOp::Delete {
                    key: removed.reverse.key
                },
            ]
        );
        t.on_packet(slots.forward, 0, 60, at(3)).unwrap();
        assert_eq!(t.take_journal(), Journal::default());
    }

    #[test]
    fn a_full_journal_says_it_overflowed() {
        let mut t = table(16);
        t.start_journal(3);
        install(&mut t, 1, ipproto::UDP, at(0));
        install(&mut t, 2, ipproto::UDP, at(0));
        let journal = t.take_journal();
        assert_eq!((journal.ops.len(), journal.overflowed), (3, true));
        install(&mut t, 3, ipproto::UDP, at(0));
        let journal = t.take_journal();
        assert_eq!((journal.ops.len(), journal.overflowed), (2, false));
    }

    /// The public state of a table's entries, sorted, to compare two tables.
    fn state(t: &FlowTable) -> Vec<String> {
        let mut state: Vec<String> = t
            .entries()
            .map(|(_, e)| {
                format!(
                    "{} {:?} v{} {:?} {}p {}B seen {:?} {:?} {:?}",
                    e.key, e.direction, e.version, e.tcp, e.packets, e.bytes, e.last_seen, e.owner, e.network
                )
            })
            .collect();
        state.sort();
        state
    }

    /// A migration: snapshot, then deltas from the journal, while the source
    /// keeps changing. The receiver ends up with the same flows.
    #[test]
    fn snapshot_plus_journal_replay_copies_a_table() {
        let mut source = table(64);
        let mut slots = Vec::new();
        for n in 0..10 {
            slots.push(install(&mut source, n, ipproto::TCP, at(0)));
        }
        establish(&mut source, slots[0], at(1));
        source.start_journal(1000);
        let mut target = table(4);
        target.reserve(source.counters().active as usize * 2).unwrap();
        for record in source.records() {
            assert_eq!(import(&mut target, record), Ok(ImportOutcome::Inserted));
        }
        // Changes after the snapshot: traffic, a close, a removal, new flows.
        establish(&mut source, slots[1], at(2));
        source.on_packet(slots[2].reverse, RST, 60, at(2)).unwrap();
        source.remove(slots[3].forward);
        install(&mut source, 50, ipproto::TCP, at(3));
        install(&mut source, 51, ipproto::UDP, at(3));
        let replay = |source: &FlowTable, target: &mut FlowTable, journal: Journal| {
            assert!(!journal.overflowed);
            for op in journal.ops {
                match op {
                    JournalOp::Insert { slot, .. } | JournalOp::Update { slot, .. } => {
                        let record = source.record(slot).unwrap();
                        assert!(import(target, record).is_ok());
                    }
                    JournalOp::Delete { key } => {
                        if let Some(slot) = target.lookup(&key) {
                            target.remove(slot);
                        }
                    }
                }
            }
        };
        let journal = source.take_journal();
        replay(&source, &mut target, journal);
        source.on_packet(slots[1].forward, ACK, 60, at(4)).unwrap();
        let journal = source.stop_journal();
        replay(&source, &mut target, journal);
        assert_eq!(state(&target), state(&source));
        assert_eq!(target.counters().active, 11);
    }

    #[test]
    fn imports_are_versioned() {
        let mut source = table(8);
        let slots = install(&mut source, 1, ipproto::UDP, at(0));
        let v1 = source.record(slots.forward).unwrap();
        let mut target = table(8);
        assert_eq!(import(&mut target, v1), Ok(ImportOutcome::Inserted));
        assert_eq!(import(&mut target, v1), Ok(ImportOutcome::Unchanged));
        source.on_packet(slots.reverse, 0, 60, at(1)).unwrap();
        let v2 = source.record(slots.forward).unwrap();
        assert_eq!(import(&mut target, v2), Ok(ImportOutcome::Updated));
        let slot = target.lookup(&v2.reverse.key).unwrap();
        assert_eq!(target.entry(slot).unwrap().packets, 1);
        assert_eq!(
            import(&mut target, v1),
            Err(FlowError::Stale {
                key: v1.reverse.key,
                present: 2,
                offered: 1
            })
        );
        // Imported entries keep their owner; the receiver takes over later.
        let slot = target.lookup(&v2.forward.key).unwrap();
        assert_eq!(target.entry(slot).unwrap().owner, ME);
        assert_eq!(target.counters().imported, 2);
    }

    #[test]
    fn imported_timestamps_keep_their_age_on_the_receivers_clock() {
        let mut source = table(8);
        let slots = install(&mut source, 1, ipproto::UDP, at(5000));
        source.on_packet(slots.reverse, 0, 60, at(5200)).unwrap();
        let record = source.record(slots.forward).unwrap();
        let mut target = table(8);
        // The receiver's clock reads 400 s when the sender's read 5250 s.
        target.import(record, at(5250), at(400)).unwrap();
        let forward = target.entry(target.lookup(&record.forward.key).unwrap()).unwrap();
        assert_eq!((forward.created, forward.last_seen), (at(150), at(150)));
        let reverse = target.entry(target.lookup(&record.reverse.key).unwrap()).unwrap();
        assert_eq!(reverse.last_seen, at(350));
        // Idle for 50 s at the sender: the UDP timeout (300 s) ends at 650 s here.
        assert_eq!(target.expire(at(649), usize::MAX), 0);
        assert_eq!(target.expire(at(650), usize::MAX), 1);
    }

    #[test]
    fn imports_that_do_not_fit_or_clash_are_refused() {
        let mut source = table(8);
        let a = install(&mut source, 1, ipproto::UDP, at(0));
        let b = install(&mut source, 2, ipproto::UDP, at(0));
        let mut target = table(2);
        import(&mut target, source.record(a.forward).unwrap()).unwrap();
        let full = import(&mut target, source.record(b.forward).unwrap());
        assert_eq!(full, Err(FlowError::Full { capacity: 2 }));
        // A record whose reverse key is taken by another connection here.
        let mut clash = source.record(b.forward).unwrap();
        clash.reverse.key = source.record(a.forward).unwrap().reverse.key;
        let mut roomy = table(8);
        import(&mut roomy, source.record(a.forward).unwrap()).unwrap();
        assert_eq!(
            import(&mut roomy, clash),
            Err(FlowError::Conflict { key: clash.reverse.key })
        );
    }

    #[test]
    fn redirect_and_set_owner_change_both_directions() {
        let mut t = table(8);
        let slots = install(&mut t, 1, ipproto::TCP, at(0));
        let inheritor = Owner { node: 2, worker: 3 };
        let previous = t.redirect(slots.reverse, inheritor).unwrap();
        assert_eq!(previous, actions());
        for slot in [slots.forward, slots.reverse] {
            let e = t.entry(slot).unwrap();
            assert_eq!(e.network, NetworkAction::Redirect { owner: inheritor });
            assert_eq!((e.owner, e.version), (inheritor, 2));
        }
        t.set_owner(slots.forward, ME).unwrap();
        assert_eq!(t.entry(slots.reverse).unwrap().owner, ME);
        assert_eq!(
            t.entry(slots.reverse).unwrap().network,
            NetworkAction::Redirect { owner: inheritor }
        );
        t.remove(slots.forward);
        assert_eq!(t.set_owner(slots.forward, ME), Err(FlowError::NoSuchSlot { slot: 0 }));
        assert!(t.redirect(slots.forward, ME).is_err());
    }

    #[test]
    fn reclaim_undoes_a_redirect_in_both_directions() {
        let mut t = table(8);
        let slots = install(&mut t, 1, ipproto::TCP, at(0));
        let previous = t.redirect(slots.forward, Owner { node: 2, worker: 3 }).unwrap();
        t.reclaim(slots.reverse, previous).unwrap();
        let record = t.record(slots.forward).unwrap();
        assert_eq!(
            (record.forward.network, record.reverse.network),
            (actions().forward, actions().reverse)
        );
        assert_eq!((record.forward.owner, record.reverse.owner), (ME, ME));
        assert_eq!(record.forward.version, 3, "each change is a new version");
        t.remove(slots.forward);
        assert_eq!(
            t.reclaim(slots.forward, previous),
            Err(FlowError::NoSuchSlot { slot: 0 })
        );
    }

    #[test]
    fn reserve_grows_the_table_and_keeps_its_flows() {
        let mut t = table(4);
        let a = install(&mut t, 1, ipproto::TCP, at(0));
        install(&mut t, 2, ipproto::TCP, at(0));
        t.reserve(60).unwrap();
        assert_eq!((t.capacity(), t.index_buckets()), (64, 128));
        assert_eq!(t.lookup(&keys(1, ipproto::TCP).1), Some(a.reverse));
        for n in 3..=32 {
            install(&mut t, n, ipproto::TCP, at(0));
        }
        assert_eq!((t.len(), t.counters().evicted), (64, 0));
        assert_eq!(
            t.reserve(MAX_CAPACITY),
            Err(FlowError::InvalidCapacity {
                capacity: MAX_CAPACITY + 64
            })
        );
    }
}
