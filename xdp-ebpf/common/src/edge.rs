//! Map value types of the edge sprayer.

/// Member flag: the member may receive traffic.
pub const MEMBER_ENABLED: u32 = 1;

/// Member id stored in a scope slot that has no owner.
pub const NO_MEMBER: u32 = u32::MAX;

/// Where a member's packets go: the MAC rewrite. The egress interface is in
/// the `EGRESS` devmap under the same index.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct Member {
    /// The member's MAC address: the new destination MAC.
    pub dst_mac: [u8; 6],
    /// The egress interface's MAC address: the new source MAC.
    pub src_mac: [u8; 6],
    /// [`MEMBER_ENABLED`] or 0.
    pub flags: u32,
}
crate::assert_size!(Member, 16);
crate::impl_pod!(Member);

/// Edge settings, entry 0 of the `EDGE_SETTINGS` map.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct EdgeSettings {
    /// Buckets per generation minus one; the bucket count is a power of two.
    pub bucket_mask: u32,
    /// [`crate::hash::HashMode`] as u32.
    pub hash_mode: u32,
    /// Seed of the flow hash; the nodes must use the same one.
    pub hash_seed: u32,
    /// Non-zero once userspace has written a complete configuration. Until
    /// then the program passes everything to the kernel.
    pub ready: u32,
}
crate::assert_size!(EdgeSettings, 16);
crate::impl_pod!(EdgeSettings);

/// Converts an address to the 16-byte form used as LPM and local-address keys:
/// IPv6 as is, IPv4 as an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn match_key(words: &[u32; 4], ip_version: u8) -> [u32; 4] {
    if ip_version == crate::flow_key::IP_V4 {
        [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), words[0]]
    } else {
        *words
    }
}

/// Prefix length of an IPv4 prefix in the IPv4-mapped key space.
pub const IPV4_MAPPED_PREFIX_BITS: u32 = 96;
