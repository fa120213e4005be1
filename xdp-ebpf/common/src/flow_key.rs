//! The flow key: one layout for IPv4 and IPv6, hashed by the edge and used as
//! the key of every flow table.

use crate::net::NetU16;

/// IP version tag stored in [`FlowKey::ip_version`].
pub const IP_V4: u8 = 4;
/// IP version tag stored in [`FlowKey::ip_version`].
pub const IP_V6: u8 = 6;

/// A 5-tuple. Addresses are stored as the raw 32-bit words read off the wire
/// (network byte order); an IPv4 address occupies word 0 and words 1..4 are
/// zero. Ports are zero for protocols without ports and for IP fragments, so
/// that every fragment of a datagram hashes like its first one.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Debug)]
pub struct FlowKey {
    /// Source address words, network order.
    pub src_addr: [u32; 4],
    /// Destination address words, network order.
    pub dst_addr: [u32; 4],
    /// Source port.
    pub src_port: NetU16,
    /// Destination port.
    pub dst_port: NetU16,
    /// IP protocol number (TCP, UDP, ICMP, ...).
    pub protocol: u8,
    /// [`IP_V4`] or [`IP_V6`].
    pub ip_version: u8,
    /// Always zero; keeps the layout free of implicit padding.
    pub pad: [u8; 2],
}
crate::assert_size!(FlowKey, 40);
crate::impl_pod!(FlowKey);

impl FlowKey {
    /// The key of the opposite direction: addresses and ports swapped.
    #[inline(always)]
    #[must_use]
    pub fn reversed(&self) -> Self {
        Self {
            src_addr: self.dst_addr,
            dst_addr: self.src_addr,
            src_port: self.dst_port,
            dst_port: self.src_port,
            ..*self
        }
    }

    /// Whether the packet belongs to its link rather than to any cluster
    /// flow: a multicast or limited-broadcast destination (IPv4 224.0.0.0/4
    /// and above, RFC 5771 / RFC 919; IPv6 ff00::/8, RFC 4291 §2.7), or an
    /// IPv6 link-local address (fe80::/10, RFC 4291 §2.5.6) at either end.
    /// IPv6 neighbor discovery (RFC 4861) is always such a packet: a
    /// solicitation goes to a solicited-node multicast address, an
    /// advertisement to the soliciting (local or link-local) address.
    #[inline(always)]
    pub fn is_link_scoped(&self) -> bool {
        // Words hold the wire bytes in memory order: byte 0 is the first.
        let dst = self.dst_addr[0].to_ne_bytes();
        let src = self.src_addr[0].to_ne_bytes();
        if self.ip_version == IP_V4 {
            return dst[0] >= 224;
        }
        let link_local = |b: [u8; 4]| b[0] == 0xfe && b[1] & 0xc0 == 0x80;
        dst[0] == 0xff || link_local(dst) || link_local(src)
    }

    /// The key as the ten 32-bit words the hash consumes.
    #[inline(always)]
    pub fn words(&self) -> [u32; 10] {
        let s = &self.src_addr;
        let d = &self.dst_addr;
        [
            s[0],
            s[1],
            s[2],
            s[3],
            d[0],
            d[1],
            d[2],
            d[3],
            (self.src_port.0 as u32) | ((self.dst_port.0 as u32) << 16),
            (self.protocol as u32) | ((self.ip_version as u32) << 8),
        ]
    }
}

#[cfg(feature = "user")]
mod user {
    use super::{FlowKey, IP_V4, IP_V6};
    use crate::net::NetU16;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// Address words in wire order for either family.
    pub fn addr_words(addr: IpAddr) -> [u32; 4] {
        match addr {
            IpAddr::V4(a) => [u32::from_ne_bytes(a.octets()), 0, 0, 0],
            IpAddr::V6(a) => {
                let o = a.octets();
                core::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
            }
        }
    }

    fn words_addr(words: [u32; 4], ip_version: u8) -> IpAddr {
        if ip_version == IP_V4 {
            IpAddr::V4(Ipv4Addr::from(words[0].to_ne_bytes()))
        } else {
            let mut o = [0u8; 16];
            for (chunk, w) in o.chunks_exact_mut(4).zip(words) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }

    impl FlowKey {
        /// Builds a key from host values. Mixed address families are not a flow;
        /// the source address decides the family.
        pub fn new(src: IpAddr, dst: IpAddr, src_port: u16, dst_port: u16, protocol: u8) -> Self {
            Self {
                src_addr: addr_words(src),
                dst_addr: addr_words(dst),
                src_port: NetU16::from_host(src_port),
                dst_port: NetU16::from_host(dst_port),
                protocol,
                ip_version: if src.is_ipv4() { IP_V4 } else { IP_V6 },
                pad: [0; 2],
            }
        }
        /// The source address.
        pub fn src_ip(&self) -> IpAddr {
            words_addr(self.src_addr, self.ip_version)
        }
        /// The destination address.
        pub fn dst_ip(&self) -> IpAddr {
            words_addr(self.dst_addr, self.ip_version)
        }
    }

    impl core::fmt::Display for FlowKey {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            let proto = match self.protocol {
                crate::net::ipproto::TCP => "tcp",
                crate::net::ipproto::UDP => "udp",
                crate::net::ipproto::ICMP | crate::net::ipproto::ICMPV6 => "icmp",
                _ => "ip",
            };
            let (s, d) = (self.src_ip(), self.dst_ip());
            if self.ip_version == IP_V6 {
                write!(
                    f,
                    "{proto} [{s}]:{} -> [{d}]:{}",
                    self.src_port.get(),
                    self.dst_port.get()
                )
            } else {
                write!(f, "{proto} {s}:{} -> {d}:{}", self.src_port.get(), self.dst_port.get())
            }
        }
    }
}
#[cfg(feature = "user")]
pub use user::addr_words;

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(src: [u8; 4], dst: [u8; 4]) -> FlowKey {
        FlowKey {
            src_addr: [u32::from_ne_bytes(src), 0, 0, 0],
            dst_addr: [u32::from_ne_bytes(dst), 0, 0, 0],
            ip_version: IP_V4,
            ..FlowKey::default()
        }
    }

    fn v6(src: [u8; 16], dst: [u8; 16]) -> FlowKey {
        let words = |a: [u8; 16]| {
            core::array::from_fn(|i| u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]]))
        };
        FlowKey {
            src_addr: words(src),
            dst_addr: words(dst),
            ip_version: IP_V6,
            ..FlowKey::default()
        }
    }

    #[test]
    fn link_scoped_packets_are_told_from_cluster_ones() {
        let host = [10, 0, 1, 21];
        assert!(v4(host, [224, 0, 0, 251]).is_link_scoped(), "mDNS");
        assert!(v4(host, [255, 255, 255, 255]).is_link_scoped(), "broadcast");
        assert!(!v4(host, [10, 0, 0, 2]).is_link_scoped());
        assert!(
            !v4([224, 0, 0, 1], [10, 0, 0, 2]).is_link_scoped(),
            "only the destination counts in IPv4"
        );
        let global = [0xfd, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x21];
        let client = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        let mut solicited = [0u8; 16];
        solicited[..2].copy_from_slice(&[0xff, 0x02]);
        solicited[11..].copy_from_slice(&[1, 0xff, 0, 0, 1]);
        let mut link_local = [0u8; 16];
        link_local[..2].copy_from_slice(&[0xfe, 0x80]);
        link_local[15] = 1;
        assert!(v6(global, solicited).is_link_scoped(), "neighbor solicitation");
        assert!(v6(global, link_local).is_link_scoped(), "to a link-local address");
        assert!(v6(link_local, global).is_link_scoped(), "from a link-local address");
        assert!(!v6(global, client).is_link_scoped());
        let mut site = link_local;
        site[1] = 0xc0;
        assert!(!v6(global, site).is_link_scoped(), "fec0::/10 is not link-local");
    }
}
