//! Network-byte-order newtypes. A value read straight off the wire stays in
//! these wrappers until someone asks for the host-order number, so the two
//! orders cannot be mixed up silently.

/// A `u16` in network byte order, as it sits in a header.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct NetU16(pub u16);

impl NetU16 {
    /// Wraps a host-order value.
    #[inline(always)]
    pub const fn from_host(v: u16) -> Self {
        Self(v.to_be())
    }
    /// The host-order value.
    #[inline(always)]
    pub const fn get(self) -> u16 {
        u16::from_be(self.0)
    }
}

impl core::fmt::Debug for NetU16 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// A `u32` in network byte order, as it sits in a header.
#[repr(transparent)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct NetU32(pub u32);

impl NetU32 {
    /// Wraps a host-order value.
    #[inline(always)]
    pub const fn from_host(v: u32) -> Self {
        Self(v.to_be())
    }
    /// The host-order value.
    #[inline(always)]
    pub const fn get(self) -> u32 {
        u32::from_be(self.0)
    }
}

impl core::fmt::Debug for NetU32 {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{:#010x}", self.get())
    }
}

/// EtherTypes the parser understands.
pub mod ethertype {
    /// IPv4.
    pub const IPV4: u16 = 0x0800;
    /// IPv6.
    pub const IPV6: u16 = 0x86dd;
    /// ARP.
    pub const ARP: u16 = 0x0806;
    /// 802.1Q VLAN tag.
    pub const VLAN: u16 = 0x8100;
    /// 802.1ad (QinQ) service tag.
    pub const QINQ: u16 = 0x88a8;
}

/// IP protocol numbers the parser understands.
pub mod ipproto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
    /// IPv6 hop-by-hop options.
    pub const HOPOPTS: u8 = 0;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    /// IPsec authentication header.
    pub const AH: u8 = 51;
    /// IPv6 destination options.
    pub const DSTOPTS: u8 = 60;
}
