//! The node steering program's maps. Names are `handoff_common::names::MAP_*`.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, XskMap},
};
use handoff_common::{counters::Reason, names::limits};

#[map]
pub static XSKS: XskMap = XskMap::with_max_entries(limits::MAX_XSKS, 0);

#[map]
pub static REASON_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

#[map]
pub static LOCAL_ADDRS: HashMap<[u32; 4], u32> = HashMap::with_max_entries(limits::MAX_LOCAL_ADDRS, 0);
