//! `handoff doctor`: what this machine lacks for the edge or a node.
//!
//! Two halves. [`gather`] reads the system (/proc, /sys, `statfs`,
//! `getrlimit`, the ethtool ioctls of [`crate::node::netdev`]) into
//! [`Facts`]; [`evaluate`] turns facts into [`Check`]s with plain code, so
//! every verdict is unit-tested without a kernel. Each check says what it
//! found and, when it is not ok, the exact command that fixes it.

pub mod gather;

pub use gather::gather;

use crate::node::netdev::{self, Offloads};
use handoff_loader::AttachMode;
use serde::Serialize;
use std::path::PathBuf;

/// The oldest kernel the project runs on, and why: the edge pins its XDP
/// attachment as a bpf_link (`BPF_LINK_CREATE` for XDP and pinned links
/// that outlive the daemon, 5.9), loads with CAP_BPF instead of
/// CAP_SYS_ADMIN (5.8), and the nodes bind AF_XDP sockets with
/// `XDP_USE_NEED_WAKEUP` (5.4).
pub const MIN_KERNEL: (u32, u32) = (5, 9);
/// From this kernel on, BPF maps and programs are charged to the memory
/// cgroup instead of RLIMIT_MEMLOCK (commit "bpf: memcg-based memory
/// accounting", 5.11).
pub const MEMCG_KERNEL: (u32, u32) = (5, 11);

/// Capability numbers (include/uapi/linux/capability.h).
const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_IPC_LOCK: u32 = 14;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// A check's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Works, but slower or only under conditions; the remedy says how to do better.
    Warn,
    /// The daemon will not start or not forward; the remedy says what to do.
    Fail,
}

impl Status {
    /// `ok`, `warn`, `fail`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Warn => "warn",
            Self::Fail => "fail",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What is checked, e.g. `kernel`, `offloads eth1`.
    pub name: String,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub found: String,
    /// What to do when not ok: the exact command or setting; `None` when ok.
    pub remedy: Option<String>,
}

impl Check {
    fn ok(name: impl Into<String>, found: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status: Status::Ok,
            found: found.into(),
            remedy: None,
        }
    }
    fn not_ok(status: Status, name: impl Into<String>, found: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            status,
            found: found.into(),
            remedy: Some(remedy.into()),
        }
    }
}

/// All checks of one run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// In the order they were made.
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst verdict (`Ok` for no checks).
    pub fn worst(&self) -> Status {
        self.checks.iter().map(|c| c.status).max().unwrap_or(Status::Ok)
    }
}

/// What an interface is for, which decides what it must offer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Named with `--interface` and no configuration: checked as a node's
    /// would be with the defaults, offload and MTU findings as warnings.
    Unconfigured {
        /// The default IP MTU.
        ip_mtu: u16,
        /// The default AF_XDP frame capacity (bytes).
        frame_capacity: usize,
    },
    /// A node's data-plane interface.
    Node {
        /// `node.ip_mtu`.
        ip_mtu: u16,
        /// What one AF_XDP frame holds (bytes).
        frame_capacity: usize,
        /// `node.queues`.
        queues: Vec<u32>,
        /// `node.xdp_mode`.
        xdp_mode: AttachMode,
        /// `node.bind_mode = "zero-copy"`.
        zero_copy: bool,
        /// `node.offloads = "check"`: the node refuses to start with GRO/LRO on.
        offloads_refused: bool,
    },
    /// An edge interface (cluster traffic in, or towards members).
    Edge {
        /// `edge.xdp_mode`.
        xdp_mode: AttachMode,
    },
}

/// What was read about one interface. `Err` holds why a value could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InterfaceFacts {
    /// Its name.
    pub name: String,
    /// What it is for.
    pub role: Role,
    /// `IFF_UP` (/sys/class/net/IF/flags); `Err` if the interface is absent.
    pub up: Result<bool, String>,
    /// The driver (`ETHTOOL_GDRVINFO`).
    pub driver: Result<String, String>,
    /// GRO and LRO.
    pub offloads: Result<Offloads, String>,
    /// The MTU (bytes).
    pub mtu: Result<u32, String>,
    /// RX queues (/sys/class/net/IF/queues/rx-*).
    pub rx_queues: Result<u32, String>,
}

/// What a configuration file needs of the machine, beyond its interfaces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigFacts {
    /// It loaded (its `[tls]` files included).
    Loaded {
        /// The file.
        path: PathBuf,
        /// `node NAME` or `edge`.
        what: String,
    },
    /// There is no file at `path`.
    Missing {
        /// The path given.
        path: PathBuf,
    },
    /// It did not: the loader's error, which names file, line and field.
    Invalid {
        /// The file.
        path: PathBuf,
        /// The error.
        error: String,
    },
}

/// Where a bpffs is needed and whether it is there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BpffsFacts {
    /// `edge.pin_dir`, or /sys/fs/bpf without one.
    pub path: PathBuf,
    /// An edge configuration sets `pin_dir`: the edge cannot start without it.
    pub required: bool,
    /// `Ok` if the path (or its nearest existing parent) is on a bpffs;
    /// otherwise what was found.
    pub mounted: Result<(), String>,
}

/// Everything [`evaluate`] judges, read by [`gather`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Facts {
    /// Effective user id.
    pub euid: u32,
    /// `CapEff` (/proc/self/status), a bit per capability.
    pub cap_effective: Result<u64, String>,
    /// `uname -r` (/proc/sys/kernel/osrelease).
    pub kernel_release: Result<String, String>,
    /// /proc/sys/net/core/bpf_jit_enable, trimmed.
    pub bpf_jit_enable: Result<String, String>,
    /// The bpffs the edge pins in.
    pub bpffs: BpffsFacts,
    /// RLIMIT_MEMLOCK's soft limit (bytes; `None` is unlimited).
    pub memlock: Result<Option<u64>, String>,
    /// UMEM bytes the configured node pins (one UMEM per queue), if a node
    /// configuration was given.
    pub umem_bytes: Option<u64>,
    /// The configuration, if one was given.
    pub config: Option<ConfigFacts>,
    /// The configuration's admin socket, and whether its directory can
    /// hold it (`Err`: why not).
    pub admin_socket: Option<(PathBuf, Result<(), String>)>,
    /// The interfaces to check.
    pub interfaces: Vec<InterfaceFacts>,
}

/// Judges `facts`.
pub fn evaluate(facts: &Facts) -> Report {
    let mut checks = vec![
        privileges(facts),
        kernel(facts),
        bpf_jit(facts),
        bpffs(facts),
        memlock(facts),
    ];
    if let Some(config) = &facts.config {
        checks.push(match config {
            ConfigFacts::Loaded { path, what } => Check::ok("config", format!("{}: {what}", path.display())),
            ConfigFacts::Invalid { path, error } => Check::not_ok(
                Status::Fail,
                "config",
                error.clone(),
                format!("fix {} as the error says", path.display()),
            ),
            ConfigFacts::Missing { path } => Check::not_ok(
                Status::Fail,
                "config",
                format!("no file at {}", path.display()),
                "pass the edge's or node's TOML with --config (examples: the README's \"Operating the edge\" and \"Operating a node\"; the systemd units read /etc/handoff/)",
            ),
        });
    }
    if let Some((path, usable)) = &facts.admin_socket {
        checks.push(match usable {
            Ok(()) => Check::ok("admin socket", format!("{} can be created", path.display())),
            Err(e) => Check::not_ok(
                Status::Fail,
                "admin socket",
                format!("{}: {e}", path.display()),
                "point admin_socket into a directory (/run/handoff/, which the units create)",
            ),
        });
    }
    for interface in &facts.interfaces {
        interface_checks(interface, &mut checks);
    }
    Report { checks }
}

fn has(caps: u64, cap: u32) -> bool {
    caps & (1 << cap) != 0
}

fn privileges(facts: &Facts) -> Check {
    const NAME: &str = "privileges";
    let caps = match &facts.cap_effective {
        Ok(caps) => *caps,
        Err(e) => return Check::not_ok(Status::Warn, NAME, e.clone(), "run handoff as root"),
    };
    let mut missing = Vec::new();
    if !has(caps, CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    if !has(caps, CAP_NET_RAW) {
        missing.push("CAP_NET_RAW");
    }
    if !has(caps, CAP_BPF) && !has(caps, CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    let found = format!("euid {}, effective capabilities {caps:#x}", facts.euid);
    if missing.is_empty() {
        Check::ok(NAME, found)
    } else {
        Check::not_ok(
            Status::Fail,
            NAME,
            format!("{found}: {} missing (XDP needs CAP_BPF and CAP_NET_ADMIN, AF_XDP CAP_NET_RAW)", missing.join(", ")),
            "run as root, or with AmbientCapabilities=CAP_NET_ADMIN CAP_BPF CAP_SYS_ADMIN CAP_NET_RAW CAP_IPC_LOCK (deploy/systemd)",
        )
    }
}

/// `major.minor` of a release string such as `6.1.0-18-amd64`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

fn kernel_version(facts: &Facts) -> Option<(u32, u32)> {
    facts.kernel_release.as_ref().ok().and_then(|r| parse_release(r))
}

fn kernel(facts: &Facts) -> Check {
    const NAME: &str = "kernel";
    let (min_major, min_minor) = MIN_KERNEL;
    let upgrade = format!("install a kernel {min_major}.{min_minor} or later (Debian 12's 6.1 will do)");
    let release = match &facts.kernel_release {
        Ok(r) => r,
        Err(e) => return Check::not_ok(Status::Warn, NAME, e.clone(), upgrade),
    };
    match parse_release(release) {
        Some(v) if v >= MIN_KERNEL => Check::ok(
            NAME,
            format!("{release} (needs {min_major}.{min_minor}: pinned XDP bpf_link, CAP_BPF, AF_XDP need-wakeup)"),
        ),
        Some(_) => Check::not_ok(
            Status::Fail,
            NAME,
            format!("{release}: older than {min_major}.{min_minor} (pinned XDP bpf_link, CAP_BPF, AF_XDP need-wakeup)"),
            upgrade,
        ),
        None => Check::not_ok(
            Status::Warn,
            NAME,
            format!("{release}: not a version this can read"),
            upgrade,
        ),
    }
}

fn bpf_jit(facts: &Facts) -> Check {
    const NAME: &str = "bpf jit";
    let remedy = "sysctl -w net.core.bpf_jit_enable=1 (and net.core.bpf_jit_enable = 1 in /etc/sysctl.d/)";
    match facts.bpf_jit_enable.as_deref() {
        Ok("1") => Check::ok(NAME, "net.core.bpf_jit_enable = 1"),
        Ok("2") => Check::not_ok(
            Status::Warn,
            NAME,
            "net.core.bpf_jit_enable = 2: on, with debug output to the kernel log",
            remedy,
        ),
        Ok(v) => Check::not_ok(
            Status::Warn,
            NAME,
            format!("net.core.bpf_jit_enable = {v}: the programs run interpreted, several times slower"),
            remedy,
        ),
        // Unreadable: in a network namespace other than the initial one the
        // sysctl is not there at all; the setting is the host's.
        Err(e) => Check::not_ok(
            Status::Warn,
            NAME,
            e.clone(),
            "check it on the host, outside any network namespace: `sysctl net.core.bpf_jit_enable`",
        ),
    }
}

fn bpffs(facts: &Facts) -> Check {
    let b = &facts.bpffs;
    let name = "bpffs";
    match &b.mounted {
        Ok(()) => Check::ok(name, format!("{} is on a bpffs", b.path.display())),
        Err(e) => Check::not_ok(
            if b.required { Status::Fail } else { Status::Warn },
            name,
            if b.required {
                format!("edge.pin_dir {}: {e}", b.path.display())
            } else {
                format!("{e} (needed only by an edge with pin_dir)")
            },
            "mount -t bpf bpf /sys/fs/bpf (and `bpffs /sys/fs/bpf bpf defaults 0 0` in /etc/fstab)",
        ),
    }
}

fn memlock(facts: &Facts) -> Check {
    const NAME: &str = "memlock";
    let remedy = "LimitMEMLOCK=infinity in the unit (deploy/systemd), or `ulimit -l unlimited` in the shell";
    let ipc_lock = facts.cap_effective.as_ref().is_ok_and(|&c| has(c, CAP_IPC_LOCK));
    let memcg = kernel_version(facts).is_some_and(|v| v >= MEMCG_KERNEL);
    let limit = match &facts.memlock {
        Ok(l) => *l,
        Err(e) => return Check::not_ok(Status::Warn, NAME, e.clone(), remedy),
    };
    let shown = limit.map_or("unlimited".to_string(), |l| format!("{l} bytes"));
    if limit.is_none() {
        return Check::ok(NAME, "RLIMIT_MEMLOCK unlimited");
    }
    let limit = limit.unwrap_or(u64::MAX);
    // BPF maps: charged to the memcg from 5.11 on, to RLIMIT_MEMLOCK before
    // (the edge's scope maps grow with the bucket count: no finite limit
    // is safe).
    if !memcg {
        return Check::not_ok(
            Status::Fail,
            NAME,
            format!("RLIMIT_MEMLOCK {shown} on a kernel before 5.11, which charges BPF maps to it"),
            remedy,
        );
    }
    // AF_XDP UMEMs: charged to RLIMIT_MEMLOCK unless CAP_IPC_LOCK
    // (net/xdp/xdp_umem.c, xdp_umem_account_pages).
    match facts.umem_bytes {
        _ if ipc_lock => Check::ok(NAME, format!("RLIMIT_MEMLOCK {shown}; CAP_IPC_LOCK exempts the AF_XDP UMEMs")),
        Some(needed) if needed > limit => Check::not_ok(
            Status::Fail,
            NAME,
            format!("RLIMIT_MEMLOCK {shown}, but the node's UMEMs pin {needed} bytes (no CAP_IPC_LOCK)"),
            remedy,
        ),
        Some(needed) => Check::ok(NAME, format!("RLIMIT_MEMLOCK {shown} covers the node's {needed}-byte UMEMs")),
        None => Check::not_ok(
            Status::Warn,
            NAME,
            format!("RLIMIT_MEMLOCK {shown} and no CAP_IPC_LOCK: a node's UMEMs (8 MiB per queue by default) are charged to it"),
            remedy,
        ),
    }
}

/// What a driver offers, as of the kernel that added it: native (driver
/// mode) XDP and AF_XDP zero-copy. Sources: each driver's `xdp_features`
/// (`NETDEV_XDP_ACT_NATIVE_XDP`, `NETDEV_XDP_ACT_XSK_ZEROCOPY`,
/// include/uapi/linux/netdev.h, reported by kernels ≥ 6.3) and the
/// per-driver list in bcc's docs/kernel-versions.md ("XDP").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverSupport {
    /// The driver's name as ethtool reports it.
    pub driver: &'static str,
    /// Kernel that added native XDP.
    pub native_xdp: &'static str,
    /// Kernel that added AF_XDP zero-copy, if any.
    pub zero_copy: Option<&'static str>,
}

/// The drivers this knows; others are reported as unknown (a warning).
pub const DRIVERS: &[DriverSupport] = &[
    DriverSupport {
        driver: "i40e",
        native_xdp: "4.13",
        zero_copy: Some("4.20"),
    },
    DriverSupport {
        driver: "ice",
        native_xdp: "5.5",
        zero_copy: Some("5.5"),
    },
    DriverSupport {
        driver: "ixgbe",
        native_xdp: "4.12",
        zero_copy: Some("4.20"),
    },
    DriverSupport {
        driver: "igc",
        native_xdp: "5.13",
        zero_copy: Some("5.14"),
    },
    DriverSupport {
        driver: "mlx5_core",
        native_xdp: "4.9",
        zero_copy: Some("5.3"),
    },
    DriverSupport {
        driver: "stmmac",
        native_xdp: "5.13",
        zero_copy: Some("5.13"),
    },
    DriverSupport {
        driver: "nfp",
        native_xdp: "4.10",
        zero_copy: Some("5.18"),
    },
    DriverSupport {
        driver: "virtio_net",
        native_xdp: "4.10",
        zero_copy: Some("6.11"),
    },
    DriverSupport {
        driver: "igb",
        native_xdp: "5.10",
        zero_copy: None,
    },
    DriverSupport {
        driver: "ixgbevf",
        native_xdp: "4.17",
        zero_copy: None,
    },
    DriverSupport {
        driver: "mlx4_en",
        native_xdp: "4.8",
        zero_copy: None,
    },
    DriverSupport {
        driver: "bnxt_en",
        native_xdp: "4.11",
        zero_copy: None,
    },
    DriverSupport {
        driver: "ena",
        native_xdp: "5.6",
        zero_copy: None,
    },
    DriverSupport {
        driver: "sfc",
        native_xdp: "5.5",
        zero_copy: None,
    },
    DriverSupport {
        driver: "veth",
        native_xdp: "4.19",
        zero_copy: None,
    },
    DriverSupport {
        driver: "tun",
        native_xdp: "4.14",
        zero_copy: None,
    },
];

fn interface_checks(i: &InterfaceFacts, checks: &mut Vec<Check>) {
    let name = &i.name;
    match &i.up {
        Ok(true) => checks.push(Check::ok(format!("link {name}"), "up")),
        Ok(false) => checks.push(Check::not_ok(
            Status::Fail,
            format!("link {name}"),
            "down",
            format!("ip link set dev {name} up"),
        )),
        Err(e) => {
            // Nothing else can be read of an interface that is not there.
            checks.push(Check::not_ok(
                Status::Fail,
                format!("link {name}"),
                e.clone(),
                format!("create {name} or name an existing one (`ip -br link` lists them)"),
            ));
            return;
        }
    }
    checks.push(driver_check(i));
    let (ip_mtu, frame_capacity, strict) = match &i.role {
        Role::Edge { .. } => return,
        Role::Unconfigured { ip_mtu, frame_capacity } => (*ip_mtu, *frame_capacity, false),
        Role::Node {
            ip_mtu, frame_capacity, ..
        } => (*ip_mtu, *frame_capacity, true),
    };
    checks.push(offloads_check(i));
    checks.push(mtu_check(i, ip_mtu, frame_capacity, strict));
    checks.push(queues_check(i));
}

fn driver_check(i: &InterfaceFacts) -> Check {
    let name = format!("driver {}", i.name);
    let driver = match &i.driver {
        Ok(d) => d,
        Err(e) => {
            return Check::not_ok(
                Status::Warn,
                name,
                e.clone(),
                format!("name the NIC's interface (`ethtool -i {}` shows its driver)", i.name),
            )
        }
    };
    let (xdp_mode, zero_copy) = match &i.role {
        Role::Node {
            xdp_mode, zero_copy, ..
        } => (Some(*xdp_mode), *zero_copy),
        Role::Edge { xdp_mode } => (Some(*xdp_mode), false),
        Role::Unconfigured { .. } => (None, false),
    };
    let Some(known) = DRIVERS.iter().find(|d| d.driver == driver) else {
        return Check::not_ok(
            Status::Warn,
            name,
            format!("{driver}: not in the known driver table; native XDP and zero-copy unknown"),
            "try xdp_mode = \"driver\"; if attaching fails, xdp_mode = \"skb\" (generic XDP, slower) and bind_mode = \"copy\"",
        );
    };
    let found = format!(
        "{driver}: native XDP (since {}), AF_XDP zero-copy {}",
        known.native_xdp,
        known
            .zero_copy
            .map_or("no (copy mode)".to_string(), |v| format!("(since {v})"))
    );
    if zero_copy && known.zero_copy.is_none() {
        return Check::not_ok(
            Status::Fail,
            name,
            found,
            "set node.bind_mode = \"auto\" or \"copy\": this driver has no AF_XDP zero-copy",
        );
    }
    if xdp_mode == Some(AttachMode::Skb) {
        return Check::not_ok(
            Status::Warn,
            name,
            format!("{found}; configured xdp_mode = \"skb\" (generic, slower)"),
            "set xdp_mode = \"driver\"",
        );
    }
    Check::ok(name, found)
}

fn offloads_check(i: &InterfaceFacts) -> Check {
    let name = format!("offloads {}", i.name);
    let offloads = match &i.offloads {
        Ok(o) => *o,
        Err(e) => return Check::not_ok(Status::Warn, name, e.clone(), format!("ethtool -k {}", i.name)),
    };
    let on: Vec<&str> = [(offloads.gro, "gro"), (offloads.lro, "lro")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, f)| *f)
        .collect();
    if on.is_empty() {
        return Check::ok(name, "GRO off, LRO off");
    }
    let refused = matches!(
        i.role,
        Role::Node {
            offloads_refused: true,
            ..
        }
    );
    let command = format!(
        "ethtool -K {} {}",
        i.name,
        on.iter().map(|f| format!("{f} off")).collect::<Vec<_>>().join(" ")
    );
    Check::not_ok(
        if refused { Status::Fail } else { Status::Warn },
        name,
        format!(
            "{} on: merged segments exceed an AF_XDP frame and are dropped{}",
            on.join(", ").to_uppercase(),
            if refused {
                " (node.offloads = \"check\" refuses to start)"
            } else {
                " (a node with offloads = \"fix\" turns them off at start)"
            }
        ),
        command,
    )
}

fn mtu_check(i: &InterfaceFacts, ip_mtu: u16, frame_capacity: usize, strict: bool) -> Check {
    let name = format!("mtu {}", i.name);
    let mtu = match &i.mtu {
        Ok(m) => *m,
        Err(e) => return Check::not_ok(Status::Warn, name, e.clone(), format!("ip link show dev {}", i.name)),
    };
    match netdev::check_mtu_value(&i.name, mtu, ip_mtu, frame_capacity) {
        Ok(()) => Check::ok(name, format!("{mtu} (ip_mtu {ip_mtu} + fabric header fits)")),
        Err(e) => {
            let remedy = match &e {
                netdev::NetdevError::MtuTooSmall { needed, .. } => format!("ip link set dev {} mtu {needed}", i.name),
                netdev::NetdevError::MtuTooLarge { max, .. } => format!("ip link set dev {} mtu {max}", i.name),
                other => other.to_string(),
            };
            let found = if strict {
                e.to_string()
            } else {
                format!("{e} (with the default ip_mtu)")
            };
            Check::not_ok(if strict { Status::Fail } else { Status::Warn }, name, found, remedy)
        }
    }
}

fn queues_check(i: &InterfaceFacts) -> Check {
    let name = format!("queues {}", i.name);
    let rx = match &i.rx_queues {
        Ok(n) => *n,
        Err(e) => return Check::not_ok(Status::Warn, name, e.clone(), format!("ethtool -l {}", i.name)),
    };
    let Role::Node { queues, .. } = &i.role else {
        return Check::ok(name, format!("{rx} RX queues (one node worker each)"));
    };
    let listed = queues.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
    let workers = queues.len();
    let beyond: Vec<&u32> = queues.iter().filter(|&&q| q >= rx).collect();
    if !beyond.is_empty() {
        let needed = queues.iter().max().map_or(1, |&q| q + 1);
        return Check::not_ok(
            Status::Fail,
            name,
            format!("{rx} RX queues, but node.queues = [{listed}] names queues the interface lacks"),
            format!(
                "ethtool -L {} combined {needed}, or configure queues below {rx}",
                i.name
            ),
        );
    }
    if rx as usize > workers {
        return Check::not_ok(
            Status::Warn,
            name,
            format!("{rx} RX queues, {workers} workers (node.queues = [{listed}]): RSS spreads flows over queues no worker reads"),
            format!(
                "ethtool -L {} combined {workers} (the queues then are 0..{workers}: set node.queues to them)",
                i.name
            ),
        );
    }
    Check::ok(name, format!("{rx} RX queues, node.queues = [{listed}]"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CAPS: u64 = (1 << 40) - 1;

    fn node_role() -> Role {
        Role::Node {
            ip_mtu: 1500,
            frame_capacity: 1728,
            queues: vec![0, 1],
            xdp_mode: AttachMode::Driver,
            zero_copy: false,
            offloads_refused: true,
        }
    }

    fn good_interface(role: Role) -> InterfaceFacts {
        InterfaceFacts {
            name: "eth1".into(),
            role,
            up: Ok(true),
            driver: Ok("i40e".into()),
            offloads: Ok(Offloads { gro: false, lro: false }),
            mtu: Ok(1516),
            rx_queues: Ok(2),
        }
    }

    fn good() -> Facts {
        Facts {
            euid: 0,
            cap_effective: Ok(ALL_CAPS),
            kernel_release: Ok("6.1.0-18-amd64".into()),
            bpf_jit_enable: Ok("1".into()),
            bpffs: BpffsFacts {
                path: "/sys/fs/bpf".into(),
                required: false,
                mounted: Ok(()),
            },
            memlock: Ok(Some(8 << 20)),
            umem_bytes: Some(16 << 20),
            config: Some(ConfigFacts::Loaded {
                path: "/etc/handoff/fd-a.toml".into(),
                what: "node fd-a".into(),
            }),
            admin_socket: Some(("/run/handoff/fd-a.sock".into(), Ok(()))),
            interfaces: vec![good_interface(node_role())],
        }
    }

    fn check<'a>(report: &'a Report, name: &str) -> &'a Check {
        report
            .checks
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no check {name} in {report:?}"))
    }

    /// Asserts `name`'s verdict and, when not ok, that its remedy contains `remedy`.
    fn expect(facts: &Facts, name: &str, status: Status, remedy: &str) {
        let report = evaluate(facts);
        let c = check(&report, name);
        assert_eq!(c.status, status, "{c:?}");
        match status {
            Status::Ok => assert_eq!(c.remedy, None, "{c:?}"),
            _ => assert!(
                c.remedy.as_deref().is_some_and(|r| r.contains(remedy)),
                "{c:?} lacks {remedy}"
            ),
        }
    }

    #[test]
    fn a_machine_with_everything_passes_every_check() {
        let report = evaluate(&good());
        assert_eq!(report.worst(), Status::Ok, "{report:#?}");
        let names: Vec<&str> = report.checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "privileges",
                "kernel",
                "bpf jit",
                "bpffs",
                "memlock",
                "config",
                "admin socket",
                "link eth1",
                "driver eth1",
                "offloads eth1",
                "mtu eth1",
                "queues eth1"
            ]
        );
    }

    #[test]
    fn missing_capabilities_fail_and_name_the_unit_settings() {
        let mut f = good();
        f.cap_effective = Ok(1 << CAP_NET_ADMIN);
        expect(&f, "privileges", Status::Fail, "AmbientCapabilities");
        let report = evaluate(&f);
        assert!(check(&report, "privileges").found.contains("CAP_NET_RAW, CAP_BPF"));
        // CAP_SYS_ADMIN stands in for CAP_BPF.
        f.cap_effective = Ok((1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW) | (1 << CAP_SYS_ADMIN));
        expect(&f, "privileges", Status::Ok, "");
        f.cap_effective = Err("cannot read /proc/self/status".into());
        expect(&f, "privileges", Status::Warn, "root");
    }

    #[test]
    fn the_kernel_must_be_5_9_or_later() {
        assert_eq!(parse_release("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(parse_release("5.10"), Some((5, 10)));
        assert_eq!(parse_release("garbage"), None);
        let mut f = good();
        f.kernel_release = Ok("5.8.0".into());
        expect(&f, "kernel", Status::Fail, "5.9 or later");
        f.kernel_release = Ok("5.9.0".into());
        expect(&f, "kernel", Status::Ok, "");
        f.kernel_release = Ok("linux".into());
        expect(&f, "kernel", Status::Warn, "5.9 or later");
    }

    #[test]
    fn an_interpreted_bpf_is_a_warning() {
        let mut f = good();
        f.bpf_jit_enable = Ok("0".into());
        expect(&f, "bpf jit", Status::Warn, "sysctl -w net.core.bpf_jit_enable=1");
        // Unreadable (inside a network namespace): check it on the host, not
        // a sysctl to write.
        f.bpf_jit_enable = Err("no /proc/sys/net/core/bpf_jit_enable".into());
        expect(&f, "bpf jit", Status::Warn, "check it on the host");
        let report = evaluate(&f);
        let remedy = check(&report, "bpf jit").remedy.clone().unwrap_or_default();
        assert!(!remedy.contains("sysctl -w"), "{remedy}");
    }

    #[test]
    fn a_missing_bpffs_fails_only_when_pin_dir_needs_it() {
        let mut f = good();
        f.bpffs.mounted = Err("not on a bpffs".into());
        expect(&f, "bpffs", Status::Warn, "mount -t bpf bpf /sys/fs/bpf");
        f.bpffs.required = true;
        expect(&f, "bpffs", Status::Fail, "mount -t bpf bpf /sys/fs/bpf");
    }

    #[test]
    fn memlock_must_cover_the_umems_without_cap_ipc_lock() {
        let mut f = good();
        f.cap_effective = Ok(ALL_CAPS & !(1 << CAP_IPC_LOCK));
        expect(&f, "memlock", Status::Fail, "LimitMEMLOCK=infinity");
        f.memlock = Ok(Some(32 << 20));
        expect(&f, "memlock", Status::Ok, "");
        f.memlock = Ok(None);
        expect(&f, "memlock", Status::Ok, "");
        f.umem_bytes = None;
        f.memlock = Ok(Some(8 << 20));
        expect(&f, "memlock", Status::Warn, "ulimit -l unlimited");
        // Before 5.11 the maps are charged too.
        f.cap_effective = Ok(ALL_CAPS);
        f.kernel_release = Ok("5.10.0".into());
        expect(&f, "memlock", Status::Fail, "LimitMEMLOCK=infinity");
    }

    #[test]
    fn a_bad_config_fails_with_the_loaders_error() {
        let mut f = good();
        f.config = Some(ConfigFacts::Invalid {
            path: "/etc/handoff/fd-a.toml".into(),
            error: "fd-a.toml: tls: keys/ca.pem: No such file".into(),
        });
        expect(&f, "config", Status::Fail, "fix /etc/handoff/fd-a.toml");
        assert!(check(&evaluate(&f), "config").found.contains("keys/ca.pem"));
    }

    #[test]
    fn a_missing_config_says_which_file_to_pass() {
        let mut f = good();
        f.config = Some(ConfigFacts::Missing {
            path: "/etc/handoff/fd-z.toml".into(),
        });
        expect(
            &f,
            "config",
            Status::Fail,
            "pass the edge's or node's TOML with --config",
        );
        assert_eq!(
            check(&evaluate(&f), "config").found,
            "no file at /etc/handoff/fd-z.toml"
        );
    }

    #[test]
    fn an_admin_socket_that_cannot_be_created_fails() {
        let mut f = good();
        f.admin_socket = Some((
            "/etc/hosts/fd-a.sock".into(),
            Err("/etc/hosts is not a directory".into()),
        ));
        expect(&f, "admin socket", Status::Fail, "/run/handoff/");
    }

    #[test]
    fn a_missing_or_down_interface_fails() {
        let mut f = good();
        f.interfaces[0].up = Ok(false);
        expect(&f, "link eth1", Status::Fail, "ip link set dev eth1 up");
        f.interfaces[0].up = Err("no interface eth1".into());
        expect(&f, "link eth1", Status::Fail, "ip -br link");
        assert!(
            evaluate(&f).checks.iter().all(|c| c.name != "mtu eth1"),
            "nothing more of an absent interface"
        );
    }

    #[test]
    fn drivers_are_judged_by_the_table() {
        let mut f = good();
        f.interfaces[0].driver = Ok("veth".into());
        expect(&f, "driver eth1", Status::Ok, "");
        f.interfaces[0].role = Role::Node {
            ip_mtu: 1500,
            frame_capacity: 1728,
            queues: vec![0, 1],
            xdp_mode: AttachMode::Driver,
            zero_copy: true,
            offloads_refused: true,
        };
        expect(&f, "driver eth1", Status::Fail, "bind_mode = \"auto\"");
        f.interfaces[0].driver = Ok("e1000".into());
        expect(&f, "driver eth1", Status::Warn, "xdp_mode = \"skb\"");
        f.interfaces[0].driver = Ok("ice".into());
        expect(&f, "driver eth1", Status::Ok, "");
        f.interfaces[0].role = Role::Edge {
            xdp_mode: AttachMode::Skb,
        };
        expect(&f, "driver eth1", Status::Warn, "xdp_mode = \"driver\"");
        assert!(
            evaluate(&f).checks.iter().all(|c| c.name != "offloads eth1"),
            "an edge has no AF_XDP"
        );
    }

    #[test]
    fn gro_or_lro_on_names_the_ethtool_command() {
        let mut f = good();
        f.interfaces[0].offloads = Ok(Offloads { gro: true, lro: true });
        expect(&f, "offloads eth1", Status::Fail, "ethtool -K eth1 gro off lro off");
        f.interfaces[0].role = Role::Unconfigured {
            ip_mtu: 1500,
            frame_capacity: 1728,
        };
        f.interfaces[0].offloads = Ok(Offloads { gro: true, lro: false });
        expect(&f, "offloads eth1", Status::Warn, "ethtool -K eth1 gro off");
        f.interfaces[0].offloads = Err("reading GRO: Operation not permitted".into());
        expect(&f, "offloads eth1", Status::Warn, "ethtool -k eth1");
    }

    #[test]
    fn the_mtu_must_take_ip_mtu_and_the_fabric_header() {
        let mut f = good();
        f.interfaces[0].mtu = Ok(1500);
        expect(&f, "mtu eth1", Status::Fail, "ip link set dev eth1 mtu 1516");
        f.interfaces[0].mtu = Ok(9000);
        expect(&f, "mtu eth1", Status::Fail, "ip link set dev eth1 mtu 1706");
        f.interfaces[0].role = Role::Unconfigured {
            ip_mtu: 1500,
            frame_capacity: 1728,
        };
        expect(&f, "mtu eth1", Status::Warn, "ip link set dev eth1 mtu 1706");
    }

    #[test]
    fn queues_must_exist_and_each_should_have_a_worker() {
        let mut f = good();
        f.interfaces[0].rx_queues = Ok(1);
        expect(&f, "queues eth1", Status::Fail, "ethtool -L eth1 combined 2");
        f.interfaces[0].rx_queues = Ok(8);
        expect(&f, "queues eth1", Status::Warn, "ethtool -L eth1 combined 2");
        f.interfaces[0].rx_queues = Err("no /sys/class/net/eth1/queues".into());
        expect(&f, "queues eth1", Status::Warn, "ethtool -l eth1");
    }

    #[test]
    fn the_report_serializes_status_in_lowercase() {
        let mut f = good();
        f.interfaces[0].up = Ok(false);
        let json = serde_json::to_value(evaluate(&f)).unwrap();
        let link = json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "link eth1")
            .unwrap();
        assert_eq!(link["status"], "fail");
        assert_eq!(link["remedy"], "ip link set dev eth1 up");
        assert_eq!(evaluate(&f).worst(), Status::Fail);
    }
}
