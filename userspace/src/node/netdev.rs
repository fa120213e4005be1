//! The interface settings a node's AF_XDP path depends on, checked at start.
//!
//! * **MTU.** A packet a node forwards to another node gains the fabric
//!   header ([`FABRIC_HLEN`] bytes): the interface must take `ip_mtu` plus
//!   that, or the link drops full-size packets without anything counting
//!   them. And every frame it can receive must fit one AF_XDP frame.
//! * **Receive offloads.** GRO and LRO merge TCP segments into frames far
//!   larger than an AF_XDP frame, which the kernel then drops at the socket
//!   (`kernel_rx_dropped`). They are turned off ([`OffloadPolicy::Fix`]) or
//!   refused ([`OffloadPolicy::Check`]).
//!
//! Both use the `SIOCGIFMTU` and `SIOCETHTOOL` ioctls
//! (include/uapi/linux/sockios.h, include/uapi/linux/ethtool.h) on the
//! interface of the calling thread's network namespace.

use super::{config::OffloadPolicy, fabric::FABRIC_HLEN};
use handoff_common::parse::{ETH_HLEN, VLAN_HLEN};
use std::{io, os::fd::AsRawFd};

/// `ETHTOOL_GGRO` / `ETHTOOL_SGRO`: generic receive offload.
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;
/// `ETHTOOL_GFLAGS` / `ETHTOOL_SFLAGS` and the LRO flag in them.
const ETHTOOL_GFLAGS: u32 = 0x25;
const ETHTOOL_SFLAGS: u32 = 0x26;
const ETH_FLAG_LRO: u32 = 1 << 15;

/// Why an interface cannot carry the node's traffic as configured.
#[derive(Debug, thiserror::Error)]
pub enum NetdevError {
    /// An ioctl on the interface failed.
    #[error("{what} on interface {interface}: {source}")]
    Io {
        /// The interface.
        interface: String,
        /// What was asked.
        what: &'static str,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The MTU leaves no room for the fabric header.
    #[error(
        "interface {interface} has MTU {mtu}, but ip_mtu {ip_mtu} plus the {fabric}-byte fabric header needs {needed}: \
         set the MTU of {interface} (and of every link between the nodes) to at least {needed} \
         (`ip link set dev {interface} mtu {needed}`), or lower node.ip_mtu"
    )]
    MtuTooSmall {
        /// The interface.
        interface: String,
        /// Its MTU.
        mtu: u32,
        /// The configured IP MTU.
        ip_mtu: u16,
        /// The fabric header's size.
        fabric: usize,
        /// The smallest MTU that works.
        needed: u32,
    },
    /// The MTU admits frames larger than an AF_XDP frame holds.
    #[error(
        "interface {interface} has MTU {mtu}: its frames (up to {frame} bytes with two VLAN tags) exceed the \
         {capacity}-byte AF_XDP frame and would be dropped by the kernel; set its MTU to at most {max} \
         (jumbo frames need multi-buffer AF_XDP, which this build does not use)"
    )]
    MtuTooLarge {
        /// The interface.
        interface: String,
        /// Its MTU.
        mtu: u32,
        /// Its largest frame.
        frame: usize,
        /// What an AF_XDP frame holds.
        capacity: usize,
        /// The largest MTU that fits.
        max: usize,
    },
    /// A receive offload is on and the policy is to refuse.
    #[error(
        "interface {interface} has {offload} on, which merges segments into frames larger than an AF_XDP frame: \
         run `ethtool -K {interface} {flag} off`, or set node.offloads = \"fix\""
    )]
    OffloadOn {
        /// The interface.
        interface: String,
        /// Its name (GRO, LRO).
        offload: &'static str,
        /// Its ethtool feature name.
        flag: &'static str,
    },
}

/// Checks that `interface` takes an `ip_mtu` packet plus the fabric header,
/// and that its largest frame fits `frame_capacity` bytes.
///
/// # Errors
/// [`NetdevError::MtuTooSmall`], [`NetdevError::MtuTooLarge`], or
/// [`NetdevError::Io`] if the MTU cannot be read.
pub fn check_mtu(interface: &str, ip_mtu: u16, frame_capacity: usize) -> Result<u32, NetdevError> {
    let mtu = Interface::open(interface)?.mtu()?;
    check_mtu_value(interface, mtu, ip_mtu, frame_capacity)?;
    Ok(mtu)
}

/// The MTU of `interface` (bytes, `SIOCGIFMTU`).
///
/// # Errors
/// [`NetdevError::Io`] if the interface does not exist or cannot be asked.
pub fn mtu(interface: &str) -> Result<u32, NetdevError> {
    Interface::open(interface)?.mtu()
}

/// Checks an MTU already read: the evaluation behind [`check_mtu`], for
/// callers that gathered the MTU themselves (`handoff doctor`).
///
/// # Errors
/// [`NetdevError::MtuTooSmall`] or [`NetdevError::MtuTooLarge`].
pub fn check_mtu_value(interface: &str, mtu: u32, ip_mtu: u16, frame_capacity: usize) -> Result<(), NetdevError> {
    let needed = u32::from(ip_mtu) + FABRIC_HLEN as u32;
    if mtu < needed {
        return Err(NetdevError::MtuTooSmall {
            interface: interface.into(),
            mtu,
            ip_mtu,
            fabric: FABRIC_HLEN,
            needed,
        });
    }
    let overhead = ETH_HLEN + 2 * VLAN_HLEN;
    let frame = mtu as usize + overhead;
    if frame > frame_capacity {
        return Err(NetdevError::MtuTooLarge {
            interface: interface.into(),
            mtu,
            frame,
            capacity: frame_capacity,
            max: frame_capacity - overhead,
        });
    }
    Ok(())
}

/// Turns GRO and LRO off on `interface` (or refuses, by `policy`); returns
/// the names of those it turned off.
///
/// # Errors
/// [`NetdevError::OffloadOn`] under [`OffloadPolicy::Check`];
/// [`NetdevError::Io`] if a setting cannot be read or changed (an
/// interface without LRO support reads as off).
pub fn check_offloads(interface: &str, policy: OffloadPolicy) -> Result<Vec<&'static str>, NetdevError> {
    let dev = Interface::open(interface)?;
    let mut fixed = Vec::new();
    if dev.ethtool_get(ETHTOOL_GGRO, "reading GRO")? != 0 {
        refuse_under_check(interface, policy, "GRO", "gro")?;
        dev.ethtool_set(ETHTOOL_SGRO, 0, "turning GRO off")?;
        fixed.push("GRO");
    }
    let flags = dev.ethtool_get(ETHTOOL_GFLAGS, "reading the LRO flag")?;
    if flags & ETH_FLAG_LRO != 0 {
        refuse_under_check(interface, policy, "LRO", "lro")?;
        dev.ethtool_set(ETHTOOL_SFLAGS, flags & !ETH_FLAG_LRO, "turning LRO off")?;
        fixed.push("LRO");
    }
    Ok(fixed)
}

/// Whether GRO and LRO are on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Offloads {
    /// Generic receive offload.
    pub gro: bool,
    /// Large receive offload (a driver without it reads as off).
    pub lro: bool,
}

/// Reads GRO and LRO on `interface` without changing them.
///
/// # Errors
/// [`NetdevError::Io`] if a setting cannot be read.
pub fn read_offloads(interface: &str) -> Result<Offloads, NetdevError> {
    let dev = Interface::open(interface)?;
    Ok(Offloads {
        gro: dev.ethtool_get(ETHTOOL_GGRO, "reading GRO")? != 0,
        lro: dev.ethtool_get(ETHTOOL_GFLAGS, "reading the LRO flag")? & ETH_FLAG_LRO != 0,
    })
}

/// The name of the driver behind `interface` (`ETHTOOL_GDRVINFO`: `i40e`,
/// `mlx5_core`, `veth`, ...; virtual devices have one too).
///
/// # Errors
/// [`NetdevError::Io`] if the interface does not exist or cannot be asked.
pub fn driver(interface: &str) -> Result<String, NetdevError> {
    let dev = Interface::open(interface)?;
    let mut info = EthtoolDrvinfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 172],
    };
    let mut req = dev.request();
    req.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    dev.ioctl(libc::SIOCETHTOOL, &mut req, "reading the driver")?;
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Ok(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

fn refuse_under_check(
    interface: &str,
    policy: OffloadPolicy,
    offload: &'static str,
    flag: &'static str,
) -> Result<(), NetdevError> {
    match policy {
        OffloadPolicy::Fix => Ok(()),
        OffloadPolicy::Check => Err(NetdevError::OffloadOn {
            interface: interface.into(),
            offload,
            flag,
        }),
    }
}

/// `struct ethtool_value` (include/uapi/linux/ethtool.h).
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `ETHTOOL_GDRVINFO`: driver information.
const ETHTOOL_GDRVINFO: u32 = 0x03;

/// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h): the command,
/// the driver's name, then version, firmware, bus, EEPROM strings and
/// counts this module does not read (196 bytes in all).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    rest: [u8; 160 + 12],
}

/// An interface name and a socket to ask the kernel about it.
struct Interface {
    name: String,
    socket: std::net::UdpSocket,
}

impl Interface {
    fn open(name: &str) -> Result<Self, NetdevError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(NetdevError::Io {
                interface: name.into(),
                what: "checking the name",
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a valid interface name"),
            });
        }
        // Any socket serves these ioctls; a UDP one needs no privilege.
        let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).map_err(|source| NetdevError::Io {
            interface: name.into(),
            what: "opening a socket",
            source,
        })?;
        Ok(Self {
            name: name.into(),
            socket,
        })
    }

    fn request(&self) -> libc::ifreq {
        // SAFETY: ifreq is plain data (a name and a union of integers and
        // pointers); all zeroes is a valid value of it.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in req.ifr_name.iter_mut().zip(self.name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        req
    }

    fn ioctl(&self, request: libc::c_ulong, req: &mut libc::ifreq, what: &'static str) -> Result<(), NetdevError> {
        // SAFETY: `req` is a valid ifreq with a NUL-terminated name (shorter
        // than IFNAMSIZ, checked in `open`); any data pointer in it points to
        // a live `EthtoolValue` or `EthtoolDrvinfo` of the caller's, of the
        // size the command writes, for the duration of the call.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), request, req as *mut libc::ifreq) };
        if rc < 0 {
            return Err(NetdevError::Io {
                interface: self.name.clone(),
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    fn mtu(&self) -> Result<u32, NetdevError> {
        let mut req = self.request();
        self.ioctl(libc::SIOCGIFMTU, &mut req, "reading the MTU")?;
        // SAFETY: SIOCGIFMTU filled the union's MTU member.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        Ok(mtu.max(0) as u32)
    }

    fn ethtool(&self, value: &mut EthtoolValue, what: &'static str) -> Result<(), NetdevError> {
        let mut req = self.request();
        req.ifr_ifru.ifru_data = (value as *mut EthtoolValue).cast();
        self.ioctl(libc::SIOCETHTOOL, &mut req, what)
    }

    fn ethtool_get(&self, cmd: u32, what: &'static str) -> Result<u32, NetdevError> {
        let mut value = EthtoolValue { cmd, data: 0 };
        match self.ethtool(&mut value, what) {
            Ok(()) => Ok(value.data),
            // A driver without the setting has it off.
            Err(NetdevError::Io { source, .. }) if source.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(0),
            Err(e) => Err(e),
        }
    }

    fn ethtool_set(&self, cmd: u32, data: u32, what: &'static str) -> Result<(), NetdevError> {
        let mut value = EthtoolValue { cmd, data };
        self.ethtool(&mut value, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mtu_must_take_the_fabric_header_and_fit_a_frame() {
        assert!(check_mtu_value("n0", 1516, 1500, 1728).is_ok());
        let err = check_mtu_value("n0", 1500, 1500, 1728).unwrap_err();
        assert!(matches!(err, NetdevError::MtuTooSmall { needed: 1516, .. }), "{err}");
        assert!(err.to_string().contains("ip link set dev n0 mtu 1516"), "{err}");
        let err = check_mtu_value("n0", 9000, 1500, 1728).unwrap_err();
        assert!(matches!(err, NetdevError::MtuTooLarge { max: 1706, .. }), "{err}");
        assert!(check_mtu_value("n0", 1706, 1500, 1728).is_ok());
    }

    #[test]
    fn loopback_reads_and_a_missing_interface_is_a_clear_error() {
        // Loopback exists in every namespace; its MTU is 65536, far above a frame.
        let err = check_mtu("lo", 1500, 1728).unwrap_err();
        assert!(matches!(err, NetdevError::MtuTooLarge { mtu: 65536, .. }), "{err}");
        let err = check_mtu("handoff-none0", 1500, 1728).unwrap_err();
        assert!(err.to_string().contains("handoff-none0"), "{err}");
        assert!(Interface::open("an-interface-name-far-too-long").is_err());
        assert!(driver("handoff-none0").is_err());
        assert_eq!(mtu("lo").unwrap(), 65536);
        assert!(!read_offloads("lo").unwrap().lro, "loopback has no LRO");
    }
}
