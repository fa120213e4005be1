//! What the three programs share: loading an object, checking its symbols,
//! taking typed maps, attaching, test runs and per-CPU counter sums.

use crate::{error::privilege_hint, LoaderError, Result};
use aya::{
    maps::{MapData, PerCpuArray},
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        ProgramError, TestRun, TestRunOptions, Xdp, XdpMode,
    },
    sys::SyscallError,
    Ebpf, EbpfLoader,
};
use handoff_common::counters::Reason;
use std::{
    ffi::CString,
    path::{Path, PathBuf},
    time::Duration,
};

/// XDP attach mode.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum AttachMode {
    /// Native mode, run by the driver (fast; needs driver support).
    #[default]
    Driver,
    /// Generic mode, run by the kernel's network stack (works everywhere, slower).
    Skb,
}

impl AttachMode {
    fn xdp_mode(self) -> XdpMode {
        match self {
            Self::Driver => XdpMode::Driver,
            Self::Skb => XdpMode::Skb,
        }
    }
    /// The mode's name as the CLI spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Driver => "driver",
            Self::Skb => "skb",
        }
    }
    fn other(self) -> Self {
        match self {
            Self::Driver => Self::Skb,
            Self::Skb => Self::Driver,
        }
    }
}

impl std::str::FromStr for AttachMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "driver" | "native" => Ok(Self::Driver),
            "skb" | "generic" => Ok(Self::Skb),
            other => Err(format!("unknown XDP mode {other:?} (expected driver or skb)")),
        }
    }
}

/// A loaded object with one XDP program, optionally attached.
#[derive(Debug)]
pub(crate) struct LoadedProgram {
    ebpf: Ebpf,
    program: &'static str,
    attachments: Vec<Attachment>,
}

/// Where a program is attached (one program may serve several interfaces).
#[derive(Debug)]
struct Attachment {
    interface: String,
    ifindex: u32,
    link: Link,
}

/// Who keeps an attachment alive.
#[derive(Debug)]
enum Link {
    /// The `Ebpf` object owns the link, so the program is detached at the
    /// latest when the object is dropped (including on unwinding), and the
    /// kernel detaches a bpf_link when its process exits.
    Owned(XdpLinkId),
    /// A pin on a bpffs holds the bpf_link and this process holds no fd of
    /// it: it stays attached after the process exits, until the pin is removed.
    Pinned(PathBuf),
}

impl LoadedProgram {
    /// Loads `object`, checks that it defines `program` and every map in
    /// `maps`, and loads the program into the kernel (running the verifier).
    /// With `pins`, each named map is the one pinned under the directory
    /// with its name (aya opens it), or a new one pinned there.
    pub(crate) fn load(
        object: &'static [u8],
        program: &'static str,
        maps: &[&'static str],
        max_entries: &[(&'static str, u32)],
        pins: Option<(&Path, &[&'static str])>,
    ) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for (map, size) in max_entries {
            loader.map_max_entries(map, *size);
        }
        if let Some((dir, pinned)) = pins {
            for map in pinned {
                loader.map_pin_path(map, dir.join(map));
            }
        }
        let mut ebpf = loader.load(object).map_err(|source| LoaderError::Load {
            program,
            hint: privilege_hint(&source),
            source: Box::new(source),
        })?;
        for map in maps {
            if ebpf.map(map).is_none() {
                return Err(LoaderError::MissingSymbol {
                    object: program,
                    what: "map",
                    name: map,
                });
            }
        }
        let xdp = xdp_mut(&mut ebpf, program)?;
        xdp.load().map_err(|source| LoaderError::Program {
            program,
            hint: privilege_hint(&source),
            source: Box::new(source),
        })?;
        Ok(Self {
            ebpf,
            program,
            attachments: Vec::new(),
        })
    }

    /// Takes ownership of a map, converted to its typed handle.
    pub(crate) fn take_map<M>(&mut self, name: &'static str) -> Result<M>
    where
        M: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self.ebpf.take_map(name).ok_or(LoaderError::MissingSymbol {
            object: self.program,
            what: "map",
            name,
        })?;
        M::try_from(map).map_err(|source| LoaderError::Map {
            map: name,
            source: Box::new(source),
        })
    }

    /// Attaches to `interface`; the error names the other mode to try.
    pub(crate) fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<u32> {
        let ifindex = ifindex(interface)?;
        let link_id = self.attach_link(interface, ifindex, mode)?;
        self.attachments.push(Attachment {
            interface: interface.to_string(),
            ifindex,
            link: Link::Owned(link_id),
        });
        tracing::info!(
            program = self.program,
            interface,
            ifindex,
            mode = mode.name(),
            "attached"
        );
        Ok(ifindex)
    }

    /// Creates an XDP link of the program on `ifindex`.
    fn attach_link(&mut self, interface: &str, ifindex: u32, mode: AttachMode) -> Result<XdpLinkId> {
        let program = self.program;
        let xdp = xdp_mut(&mut self.ebpf, program)?;
        xdp.attach_to_if_index(ifindex, mode.xdp_mode()).map_err(|source| {
            let hint = privilege_hint(&source);
            let hint = if hint.is_empty() {
                format!(
                    "the driver may not support {} mode: try --xdp-mode {} (and check that no other XDP program is attached)",
                    mode.name(),
                    mode.other().name()
                )
            } else {
                hint.trim_start_matches(" (").trim_end_matches(')').to_string()
            };
            LoaderError::Attach {
                program,
                interface: interface.to_string(),
                mode: mode.name(),
                hint,
                source: Box::new(source),
            }
        })
    }

    /// Attaches to `interface` through the bpf_link pinned at `pin`: an
    /// existing one gets this program in place of its old one (one atomic
    /// BPF_LINK_UPDATE, no packet sees no program), else a new link is
    /// created and pinned there. A pinned link keeps the mode it was created
    /// in. Returns the ifindex and whether the link was taken over.
    pub(crate) fn attach_pinned(&mut self, interface: &str, mode: AttachMode, pin: &Path) -> Result<(u32, bool)> {
        let ifindex = ifindex(interface)?;
        let program = self.program;
        let pin_error = |source: Box<dyn std::error::Error + Send + Sync>| LoaderError::Pin {
            what: "link",
            path: pin.to_path_buf(),
            source,
        };
        let mut adopted = false;
        if pin.exists() {
            let link = PinnedLink::from_pin(pin).map_err(|e| pin_error(Box::new(e)))?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| pin_error(Box::new(e)))?;
            let xdp = xdp_mut(&mut self.ebpf, program)?;
            match xdp.attach_to_link(link) {
                Ok(link_id) => {
                    // The pin holds the link; this process keeps no fd of it.
                    drop(xdp.take_link(link_id).map_err(|e| pin_error(Box::new(e)))?);
                    adopted = true;
                }
                // The interface the link was attached to is gone (ENOLINK,
                // net/core/dev.c bpf_xdp_link_update): the pin is stale.
                Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                    if io_error.raw_os_error() == Some(libc::ENOLINK) =>
                {
                    tracing::warn!(program, interface, pin = %pin.display(), "the pinned link's interface is gone; attaching anew");
                    std::fs::remove_file(pin).map_err(|e| pin_error(Box::new(e)))?;
                }
                Err(e) => return Err(pin_error(Box::new(e))),
            }
        }
        if !adopted {
            let link_id = self.attach_link(interface, ifindex, mode)?;
            let link = xdp_mut(&mut self.ebpf, program)?
                .take_link(link_id)
                .map_err(|e| pin_error(Box::new(e)))?;
            // Only a bpf_link can be pinned: the netlink fallback (kernels
            // before 5.9) cannot outlive the process.
            let link = FdLink::try_from(link).map_err(|e| pin_error(Box::new(e)))?;
            link.pin(pin).map_err(|e| pin_error(Box::new(e)))?;
        }
        self.attachments.push(Attachment {
            interface: interface.to_string(),
            ifindex,
            link: Link::Pinned(pin.to_path_buf()),
        });
        tracing::info!(program, interface, ifindex, adopted, pin = %pin.display(), "attached through a pinned link");
        Ok((ifindex, adopted))
    }

    /// Interfaces and ifindexes this program is attached to.
    pub(crate) fn attachments(&self) -> impl Iterator<Item = (&str, u32)> {
        self.attachments.iter().map(|a| (a.interface.as_str(), a.ifindex))
    }

    /// Detaches the program from every interface.
    pub(crate) fn detach(&mut self) -> Result<()> {
        let program = self.program;
        while let Some(attachment) = self.attachments.pop() {
            match attachment.link {
                Link::Owned(link_id) => {
                    xdp_mut(&mut self.ebpf, program)?
                        .detach(link_id)
                        .map_err(|source| LoaderError::Program {
                            program,
                            hint: String::new(),
                            source: Box::new(source),
                        })?
                }
                // The pin is the link's last reference: removing it detaches.
                Link::Pinned(pin) => std::fs::remove_file(&pin).map_err(|source| LoaderError::Pin {
                    what: "link",
                    path: pin.clone(),
                    source: Box::new(source),
                })?,
            }
            tracing::info!(program, interface = attachment.interface, "detached");
        }
        Ok(())
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN.
    pub(crate) fn test_run(&self, frame: &[u8]) -> Result<TestRunOutcome> {
        let program = self.program;
        let xdp: &Xdp = self
            .ebpf
            .program(program)
            .ok_or(LoaderError::MissingSymbol {
                object: program,
                what: "program",
                name: program,
            })?
            .try_into()
            .map_err(|source: ProgramError| LoaderError::Program {
                program,
                hint: String::new(),
                source: Box::new(source),
            })?;
        // XDP test runs need room for the program to grow the frame.
        let mut out = vec![0u8; frame.len() + 256];
        let result = xdp
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ..TestRunOptions::default()
            })
            .map_err(|source| LoaderError::Program {
                program,
                hint: privilege_hint(&source),
                source: Box::new(source),
            })?;
        out.truncate(result.data_size_out as usize);
        Ok(TestRunOutcome {
            action: result.return_value,
            frame: out,
            duration: result.duration,
        })
    }
}

fn xdp_mut<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(program)
        .ok_or(LoaderError::MissingSymbol {
            object: program,
            what: "program",
            name: program,
        })?
        .try_into()
        .map_err(|source: ProgramError| LoaderError::Program {
            program,
            hint: String::new(),
            source: Box::new(source),
        })
}

/// The ifindex of `name` in the current network namespace.
pub(crate) fn ifindex(name: &str) -> Result<u32> {
    let c_name = CString::new(name).map_err(|_| LoaderError::UnknownInterface { name: name.to_string() })?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(LoaderError::UnknownInterface { name: name.to_string() });
    }
    Ok(index)
}

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Debug, Clone)]
pub struct TestRunOutcome {
    /// The XDP action (`XDP_PASS`, `XDP_REDIRECT`, ...).
    pub action: u32,
    /// The frame as the program left it.
    pub frame: Vec<u8>,
    /// Kernel-measured run time.
    pub duration: Duration,
}

/// Sums of the per-CPU reason counters, indexed by [`Reason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReasonCounts(pub [u64; Reason::COUNT as usize]);

impl ReasonCounts {
    /// The count of one reason.
    pub fn get(&self, reason: Reason) -> u64 {
        self.0[reason as usize]
    }
    /// `(name, count)` for every reason, in map order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Reason::ALL.iter().map(|r| (r.name(), self.get(*r)))
    }
    /// Counts since `earlier`.
    #[must_use]
    pub fn since(&self, earlier: &Self) -> Self {
        Self(std::array::from_fn(|i| self.0[i].wrapping_sub(earlier.0[i])))
    }
}

/// Reads and sums a per-CPU reason map.
pub(crate) fn read_reasons(map: &PerCpuArray<MapData, u64>, name: &'static str) -> Result<ReasonCounts> {
    let mut counts = ReasonCounts::default();
    for reason in Reason::ALL {
        let values = map.get(&(reason as u32), 0).map_err(|source| LoaderError::Map {
            map: name,
            source: Box::new(source),
        })?;
        counts.0[reason as usize] = values.iter().copied().fold(0u64, u64::wrapping_add);
    }
    Ok(counts)
}

/// The MAC address of `name` in the current network namespace (SIOCGIFHWADDR).
pub fn interface_mac(name: &str) -> Result<[u8; 6]> {
    let unknown = || LoaderError::UnknownInterface { name: name.to_string() };
    if name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(unknown());
    }
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(LoaderError::Invalid {
            what: "socket",
            detail: std::io::Error::last_os_error().to_string(),
        });
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr inside `req`.
    let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::SIOCGIFHWADDR, &mut req) };
    if rc != 0 {
        return Err(unknown());
    }
    // SAFETY: the kernel filled the hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(std::array::from_fn(|i| data[i] as u8))
}

/// The ifindex of `name` in the current network namespace.
pub fn interface_index(name: &str) -> Result<u32> {
    ifindex(name)
}
