//! Per-CPU counters kept by the XDP programs.

/// What an XDP program did with a frame, and why. Indexes
/// [`crate::names::MAP_REASON_STATS`].
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Reason {
    /// Edge: redirected to the bucket's member.
    Sprayed = 0,
    /// Edge: of the sprayed frames, those hashed on addresses and protocol only
    /// (fragments, ICMP and protocols without ports).
    SprayedAddressesOnly,
    /// Edge: of the sprayed frames, ICMP and ICMPv6 errors hashed by the
    /// connection of the packet they quote (its key reversed).
    SprayedIcmpQuoted,
    /// Edge: of the sprayed frames, ICMP and ICMPv6 errors whose quote was
    /// truncated or no IP header: hashed by their own addresses.
    SprayedIcmpBadQuote,
    /// Node: handed to the AF_XDP socket of its RX queue.
    Steered,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed to the kernel.
    PassNotIp,
    /// IP, but neither destination nor source is cluster traffic: passed.
    PassNotCluster,
    /// Addressed to the host itself: passed.
    PassLocal,
    /// Node: no AF_XDP socket on this RX queue: passed.
    PassNoSocket,
    /// Frame ends inside a header: dropped.
    DropTruncated,
    /// Impossible header field (IHL < 5, bogus length, extension chain too long): dropped.
    DropBadHeader,
    /// More VLAN tags than the parser skips
    /// ([`crate::parse::MAX_VLAN_TAGS`]): dropped.
    DropVlanDepth,
    /// The bucket maps to no configured member: dropped.
    DropNoMember,
    /// The redirect target was missing at run time: dropped.
    DropRedirectFailed,
    /// Edge: cluster traffic whose source MAC is a member's: a member sent
    /// it back (its default route is the edge), and spraying it again
    /// would loop. Dropped.
    DropFromMember,
}

impl Reason {
    /// Number of reasons, the size of the reason map.
    pub const COUNT: u32 = Self::DropFromMember as u32 + 1;

    /// Every reason, in map index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Self::Sprayed,
        Self::SprayedAddressesOnly,
        Self::SprayedIcmpQuoted,
        Self::SprayedIcmpBadQuote,
        Self::Steered,
        Self::PassNotIp,
        Self::PassNotCluster,
        Self::PassLocal,
        Self::PassNoSocket,
        Self::DropTruncated,
        Self::DropBadHeader,
        Self::DropVlanDepth,
        Self::DropNoMember,
        Self::DropRedirectFailed,
        Self::DropFromMember,
    ];

    /// A stable snake_case name for reports and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Sprayed => "sprayed",
            Self::SprayedAddressesOnly => "sprayed_addresses_only",
            Self::SprayedIcmpQuoted => "sprayed_icmp_quoted",
            Self::SprayedIcmpBadQuote => "sprayed_icmp_bad_quote",
            Self::Steered => "steered",
            Self::PassNotIp => "pass_not_ip",
            Self::PassNotCluster => "pass_not_cluster",
            Self::PassLocal => "pass_local",
            Self::PassNoSocket => "pass_no_socket",
            Self::DropTruncated => "drop_truncated",
            Self::DropBadHeader => "drop_bad_header",
            Self::DropVlanDepth => "drop_vlan_depth",
            Self::DropNoMember => "drop_no_member",
            Self::DropRedirectFailed => "drop_redirect_failed",
            Self::DropFromMember => "drop_from_member",
        }
    }
}

impl From<crate::parse::ParseError> for Reason {
    fn from(e: crate::parse::ParseError) -> Self {
        match e {
            crate::parse::ParseError::Truncated => Self::DropTruncated,
            crate::parse::ParseError::BadHeader => Self::DropBadHeader,
            crate::parse::ParseError::NotIp => Self::PassNotIp,
            crate::parse::ParseError::VlanDepth => Self::DropVlanDepth,
        }
    }
}

/// Packets and bytes.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct TrafficCounter {
    /// Packets.
    pub packets: u64,
    /// Bytes, counted as the frame length seen by XDP.
    pub bytes: u64,
}
crate::assert_size!(TrafficCounter, 16);
crate::impl_pod!(TrafficCounter);

impl TrafficCounter {
    /// Adds another counter (used to sum per-CPU values).
    #[must_use]
    pub const fn plus(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Reason;

    #[test]
    fn every_reason_is_listed_once_at_its_index_with_its_own_name() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{reason:?}");
            let name = reason.name();
            let same_name = Reason::ALL.iter().filter(|r| r.name() == name).count();
            assert_eq!(same_name, 1, "{name}");
        }
        assert_eq!(Reason::ALL.len(), Reason::COUNT as usize);
    }
}
