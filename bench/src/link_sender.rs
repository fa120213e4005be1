//! Sends whole Ethernet frames on one interface through an `AF_PACKET`
//! socket (packet(7)), so a probe can put on the wire what a kernel socket
//! never sends: an 802.1Q priority tag (VID 0, IEEE 802.1Q §6.9) in front
//! of an ordinary datagram (replies still come back to an ordinary UDP
//! socket bound to the same port), or the malformed frames of the storm.

use anyhow::{bail, Context, Result};
use etherparse::{PacketBuilder, SingleVlanHeader, VlanId, VlanPcp};
use std::{
    net::{IpAddr, SocketAddr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// An `AF_PACKET` socket (packet(7)) that sends whole Ethernet frames, as
/// given, on one interface; it receives nothing (protocol 0).
#[derive(Debug)]
pub struct PacketSocket {
    socket: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

impl PacketSocket {
    /// Opens the socket on `interface`. Needs CAP_NET_RAW.
    pub fn open(interface: &str) -> Result<Self> {
        let ifindex = handoff_loader::interface_index(interface)? as i32;
        let mac = handoff_loader::interface_mac(interface)?;
        // SAFETY: plain socket(2) call; the result is checked below.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("opening an AF_PACKET socket (needs CAP_NET_RAW)");
        }
        // SAFETY: `fd` is a socket just opened and owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { socket, ifindex, mac })
    }

    /// The interface's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends `frame` (Ethernet header included, as it is) to `dst_mac`.
    /// A frame shorter than an Ethernet header is padded with zeros to one
    /// by the kernel (net/packet/af_packet.c, dev_validate_header).
    pub fn send(&self, frame: &[u8], dst_mac: [u8; 6]) -> Result<()> {
        // SAFETY: sockaddr_ll is plain data; zero is a valid value of it.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_ifindex = self.ifindex;
        to.sll_halen = 6;
        to.sll_addr[..6].copy_from_slice(&dst_mac);
        // SAFETY: `frame` is a live buffer of the length passed, `to` a valid
        // sockaddr_ll whose size is passed; the socket is open.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(std::io::Error::last_os_error()).context("sending a frame");
        }
        if sent as usize != frame.len() {
            bail!("sent {sent} of {} bytes", frame.len());
        }
        Ok(())
    }
}

/// A sender of priority-tagged UDP datagrams on one interface, to one
/// next hop.
#[derive(Debug)]
pub struct LinkSender {
    socket: PacketSocket,
    dst_mac: [u8; 6],
    /// PCP of the VID-0 tag put on every frame.
    pcp: u8,
}

impl LinkSender {
    /// Opens an `AF_PACKET` socket on `interface`, sending to `dst_mac`
    /// with a VID-0 tag of priority `pcp` (0..=7). Needs CAP_NET_RAW.
    pub fn priority_tagged(interface: &str, dst_mac: [u8; 6], pcp: u8) -> Result<Self> {
        if pcp > 7 {
            bail!("PCP {pcp} is not in 0..=7");
        }
        Ok(Self {
            socket: PacketSocket::open(interface)?,
            dst_mac,
            pcp,
        })
    }

    /// Sends `payload` from `src` to `dst` (one family) as one tagged frame,
    /// checksums computed.
    pub fn send(&self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Result<()> {
        let tag = SingleVlanHeader {
            pcp: VlanPcp::try_new(self.pcp)?,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(0)?,
            ether_type: 0.into(),
        };
        let vlan = PacketBuilder::ethernet2(self.socket.mac(), self.dst_mac).vlan(etherparse::VlanHeader::Single(tag));
        let ip = match (src.ip(), dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => vlan.ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => vlan.ipv6(s.octets(), d.octets(), 64),
            _ => bail!("{src} and {dst} are of different families"),
        };
        let mut frame = Vec::with_capacity(payload.len() + 70);
        ip.udp(src.port(), dst.port()).write(&mut frame, payload)?;
        self.socket.send(&frame, self.dst_mac).context("sending a tagged frame")
    }
}

/// Parses a MAC address written `aa:bb:cc:dd:ee:ff`.
///
/// # Errors
/// A message naming the text when it is no MAC address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        *b = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?} is not a MAC address"))?;
    }
    Ok(mac)
}
