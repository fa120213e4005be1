//! The edge sprayer's maps. Names are `handoff_common::names::MAP_*`.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMap, HashMap, LpmTrie, PerCpuArray},
};
use handoff_common::{
    counters::{Reason, TrafficCounter},
    edge::{EdgeSettings, Member},
    names::limits,
};

#[map]
pub static EDGE_SETTINGS: Array<EdgeSettings> = Array::with_max_entries(1, 0);

#[map]
pub static ACTIVE_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Sized at load time to `2 * buckets` by the loader.
#[map]
pub static SCOPE: Array<u32> = Array::with_max_entries(2 * limits::DEFAULT_BUCKETS, 0);

#[map]
pub static MEMBERS: Array<Member> = Array::with_max_entries(limits::MAX_MEMBERS, 0);

#[map]
pub static MEMBER_MACS: HashMap<[u8; 6], u32> = HashMap::with_max_entries(limits::MAX_MEMBERS, 0);

#[map]
pub static EGRESS: DevMap = DevMap::with_max_entries(limits::MAX_MEMBERS, 0);

#[map]
pub static MEMBER_STATS: PerCpuArray<TrafficCounter> = PerCpuArray::with_max_entries(limits::MAX_MEMBERS, 0);

#[map]
pub static REASON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map]
pub static DST_MATCH: LpmTrie<[u32; 4], u32> = LpmTrie::with_max_entries(limits::MAX_MATCH_PREFIXES, 0);

#[map]
pub static SRC_MATCH: LpmTrie<[u32; 4], u32> = LpmTrie::with_max_entries(limits::MAX_MATCH_PREFIXES, 0);

#[map]
pub static LOCAL_ADDRS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(limits::MAX_LOCAL_ADDRS, 0);
