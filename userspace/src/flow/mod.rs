//! The flow table of one worker (core), the policy that decides what a new
//! flow gets, and the per-flow applications.
//!
//! # Entries
//! A connection is two [`FlowEntry`]s, one per direction, linked to each
//! other: the forward entry matches the packets of the side that opened it,
//! the reverse entry the replies, whose key is what the forward action turns
//! the packet into (for DNAT, backend -> client). Both are installed together,
//! so the first reply already finds the action that un-rewrites it. Each
//! entry has its own action, app, owner, counters and timestamps; the TCP
//! state is kept equal in both.
//!
//! # Storage
//! * A slab `Vec<FlowEntry>` of the configured capacity, allocated when the
//!   table is created. Vacant slots form a free list threaded through their
//!   partner link.
//! * An index `FlowKey -> slot`: open addressing with linear probing,
//!   backward-shift deletion and load <= 1/2, in a bucket array also
//!   allocated up front. It holds no keys, only the slot and 32 bits of hash
//!   (see `index.rs` for why not `hashbrown`: tombstones make it allocate).
//!
//! Lookups, per-packet updates, installs (with eviction), removals and the
//! sweep never allocate and take no lock: a table belongs to one worker.
//! Only [`FlowTable::new`], [`FlowTable::reserve`] and the journal's
//! [`FlowTable::start_journal`] and [`FlowTable::take_journal`] allocate.
//!
//! # Memory
//! `size_of::<FlowEntry>()` is **112 bytes**. An index bucket is 8 bytes and
//! there are `next_power_of_two(2 * capacity)` of them, 2 to 4 per entry. So
//! an entry costs **128 bytes** when the capacity is a power of two, at most
//! 144 otherwise; a connection twice that. The default capacity of 2^18
//! entries (2^17 connections) takes 32 MiB per worker.
//!
//! # Lifecycle
//! * A packet with no flow goes through [`FlowTable::admit`]: TCP flows are
//!   created only by a SYN; other TCP packets follow the [`MissPolicy`]
//!   (drop and count, by default).
//! * [`Policy::decide`] gives the actions and the reverse key, and
//!   [`FlowTable::install`] installs both directions.
//! * [`FlowTable::on_packet`] counts each packet and advances the TCP state:
//!   FINs both ways or an RST move the connection to
//!   [`TcpState::Closing`], which lingers for [`Timeouts::tcp_closing`].
//! * [`FlowTable::expire`] removes connections idle for their
//!   [`Timeouts`] (per protocol and TCP state, defaults from RFC 5382 and
//!   RFC 4787). It looks at a bounded number of slots per call, advancing a
//!   clock hand, so the caller spreads the sweep over its poll loop.
//! * A full table evicts on install: of [`EVICTION_SAMPLES`] random slots
//!   (sampled approximate LRU), the connection that is closing, else opening
//!   or half-closed, else non-TCP, else established, idle longest among
//!   equals. Constant work per install, counted in
//!   [`FlowCounters::evicted`].
//!
//! # Migration
//! A node hands its flows to another by streaming them:
//! [`FlowTable::reserve`] pre-sizes the receiver from the announced count,
//! [`FlowTable::records`] gives the snapshot, the journal
//! ([`FlowTable::start_journal`], [`FlowTable::take_journal`]) the changes
//! made meanwhile, and [`FlowTable::import`] applies records on the
//! receiving side, refusing ones older than what it holds (versions compare
//! as RFC 1982 serial numbers, so they may wrap) and moving timestamps to its
//! own clock. Every change bumps an entry's version, per-packet counting
//! included, so the last delta carries fresh counters and idle times; the
//! journal still holds at most one op per entry per batch. Afterwards the
//! sender points the moved flows at their new owner with
//! [`FlowTable::redirect`].

mod app;
pub mod config;
pub mod edit;
mod entry;
mod index;
pub mod policy;
mod table;

pub use app::{AppError, AppId, AppRegistry, AppVerdict, CountApp, DropApp, FlowApp, NoApp};
pub use entry::{Direction, FlowEntry, NetworkAction, Owner, Rewrite, Side, TcpState, Timestamp};
pub use policy::{Decision, Policy};
pub use table::{
    Admission, FlowActions, FlowCounters, FlowError, FlowRecord, FlowSlots, FlowTable, ImportOutcome, Journal,
    JournalOp, MissPolicy, Slot, TableConfig, Timeouts, DEFAULT_CAPACITY, EVICTION_SAMPLES, MAX_CAPACITY,
};

#[cfg(test)]
mod tests;
