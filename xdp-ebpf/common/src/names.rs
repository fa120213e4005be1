//! Program and map names: the one place that spells them.
//!
//! The eBPF side names its statics exactly like these constants (the `#[map]`
//! attribute takes the symbol name); `handoff-loader` looks every name up through
//! these constants and its tests check that the built object defines each one.

/// The edge sprayer: hashes the 5-tuple and redirects to the owning member.
pub const PROG_EDGE: &str = "handoff_edge";
/// The node's steering program: data-plane frames go to the AF_XDP socket of
/// their RX queue, everything else to the kernel.
pub const PROG_XSK: &str = "handoff_xsk";
/// A minimal program that redirects every frame without parsing it; the
/// benchmark's ceiling for what XDP redirect costs on this host.
pub const PROG_BASELINE: &str = "handoff_baseline";

/// `Array<EdgeSettings>` with one entry.
pub const MAP_EDGE_SETTINGS: &str = "EDGE_SETTINGS";
/// `Array<u32>` with one entry: the active scope generation (0 or 1).
pub const MAP_ACTIVE_GENERATION: &str = "ACTIVE_GENERATION";
/// `Array<u32>` of `2 * buckets` entries: `generation * buckets + bucket -> member`.
pub const MAP_SCOPE: &str = "SCOPE";
/// `Array<Member>` indexed by member id.
pub const MAP_MEMBERS: &str = "MEMBERS";
/// `DevMap` indexed by member id: the egress interface towards the member.
pub const MAP_EGRESS: &str = "EGRESS";
/// `Array<u64>` of 2 entries, read only by userspace: the scope version each
/// generation holds, so a restarted edge daemon knows what it published. It
/// is created by the loader, not by the edge object (the program never reads it).
pub const MAP_SCOPE_VERSIONS: &str = "SCOPE_VERSIONS";
/// `PerCpuArray<TrafficCounter>` indexed by member id.
pub const MAP_MEMBER_STATS: &str = "MEMBER_STATS";
/// `PerCpuArray<u64>` indexed by [`crate::counters::Reason`].
pub const MAP_REASON_STATS: &str = "REASON_STATS";
/// `LpmTrie<[u8; 16], u32>`: destinations that make a packet cluster traffic (VIPs).
pub const MAP_DST_MATCH: &str = "DST_MATCH";
/// `LpmTrie<[u8; 16], u32>`: sources that make a packet cluster traffic (backends
/// whose replies come back through the edge).
pub const MAP_SRC_MATCH: &str = "SRC_MATCH";
/// `HashMap<[u8; 6], u32>`: each configured member's MAC address -> its
/// member id. Cluster traffic from one of these MACs is a member's frame
/// coming back, never sprayed again (`Reason::DropFromMember`).
pub const MAP_MEMBER_MACS: &str = "MEMBER_MACS";
/// `HashMap<[u8; 16], u32>`: the host's own addresses, always passed to the kernel.
pub const MAP_LOCAL_ADDRS: &str = "LOCAL_ADDRS";
/// `XskMap` indexed by RX queue: the node's AF_XDP sockets.
pub const MAP_XSKS: &str = "XSKS";
/// `DevMap` with one entry: the baseline program's egress interface.
pub const MAP_BASELINE_EGRESS: &str = "BASELINE_EGRESS";
/// `Array<Member>` with one entry: the baseline program's MAC rewrite.
pub const MAP_BASELINE_MEMBER: &str = "BASELINE_MEMBER";

/// Every map the edge object must define.
pub const EDGE_MAPS: [&str; 10] = [
    MAP_EDGE_SETTINGS,
    MAP_ACTIVE_GENERATION,
    MAP_SCOPE,
    MAP_MEMBERS,
    MAP_MEMBER_MACS,
    MAP_EGRESS,
    MAP_MEMBER_STATS,
    MAP_REASON_STATS,
    MAP_DST_MATCH,
    MAP_SRC_MATCH,
];
/// Every map the node steering object must define.
pub const XSK_MAPS: [&str; 3] = [MAP_XSKS, MAP_REASON_STATS, MAP_LOCAL_ADDRS];
/// Every map the baseline object must define.
pub const BASELINE_MAPS: [&str; 2] = [MAP_BASELINE_EGRESS, MAP_BASELINE_MEMBER];

/// Size limits compiled into the eBPF maps.
pub mod limits {
    /// Members (flow-distributor nodes) the edge can address.
    pub const MAX_MEMBERS: u32 = 256;
    /// Largest bucket count per scope generation; the configured count may be smaller.
    pub const MAX_BUCKETS: u32 = 1 << 20;
    /// Default bucket count per scope generation.
    pub const DEFAULT_BUCKETS: u32 = 1 << 16;
    /// Prefixes per match trie.
    pub const MAX_MATCH_PREFIXES: u32 = 1024;
    /// Local addresses per host.
    pub const MAX_LOCAL_ADDRS: u32 = 64;
    /// AF_XDP sockets (RX queues) per node interface.
    pub const MAX_XSKS: u32 = 64;
}
