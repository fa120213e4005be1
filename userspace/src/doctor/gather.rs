//! Reads the [`Facts`] `handoff doctor` judges from the running system, in
//! the calling process's network namespace: /proc/self/status (`CapEff`),
//! /proc/sys, `getrlimit`, `statfs` (bpffs), /sys/class/net and the
//! ethtool ioctls of [`crate::node::netdev`]. Nothing here decides a
//! verdict; what cannot be read is recorded as the reason.

use super::{BpffsFacts, ConfigFacts, Facts, InterfaceFacts, Role};
use crate::{
    edge::config::EdgeConfig,
    io::afxdp::{AfXdpConfig, BindMode},
    node::{config::NodeConfig, config::OffloadPolicy, netdev, pipeline::DEFAULT_IP_MTU},
};
use std::path::{Path, PathBuf};

/// Where the edge pins when its configuration names no `pin_dir`: the
/// conventional bpffs mount point.
const DEFAULT_BPFFS: &str = "/sys/fs/bpf";

/// Reads the facts for `config` (a node's or the edge's file, told apart by
/// its `[node]` or `[edge]` table) and `interface` (checked as a node's
/// would be, unless the configuration names it).
pub fn gather(config: Option<&Path>, interface: Option<&str>) -> Facts {
    let mut bpffs_path = PathBuf::from(DEFAULT_BPFFS);
    let mut bpffs_required = false;
    let mut umem_bytes = None;
    let mut admin_socket = None;
    let mut interfaces: Vec<(String, Role)> = Vec::new();
    let config_facts = config.map(|path| {
        let read = read_config(path);
        match &read.parsed {
            Some(Parsed::Node(node)) => {
                umem_bytes = Some(node.afxdp.umem_bytes() * node.queues.len() as u64);
                admin_socket = Some(socket_dir_usable(&node.admin_socket));
                interfaces.push((
                    node.interface.clone(),
                    Role::Node {
                        ip_mtu: node.ip_mtu,
                        frame_capacity: node.afxdp.frame_capacity(),
                        queues: node.queues.clone(),
                        xdp_mode: node.xdp_mode,
                        zero_copy: node.afxdp.bind_mode == BindMode::ZeroCopy,
                        offloads_refused: node.offloads == OffloadPolicy::Check,
                    },
                ));
            }
            Some(Parsed::Edge(edge)) => {
                admin_socket = Some(socket_dir_usable(&edge.admin_socket));
                if let Some(dir) = &edge.pin_dir {
                    bpffs_path = dir.clone();
                    bpffs_required = true;
                }
                let names = edge.interfaces.iter().chain(edge.members.iter().map(|m| &m.interface));
                for name in names {
                    if !interfaces.iter().any(|(n, _)| n == name) {
                        interfaces.push((
                            name.clone(),
                            Role::Edge {
                                xdp_mode: edge.xdp_mode,
                            },
                        ));
                    }
                }
            }
            None => {}
        }
        read.facts
    });
    if let Some(name) = interface {
        if !interfaces.iter().any(|(n, _)| n == name) {
            let defaults = AfXdpConfig::default();
            interfaces.push((
                name.to_string(),
                Role::Unconfigured {
                    ip_mtu: DEFAULT_IP_MTU,
                    frame_capacity: defaults.frame_capacity(),
                },
            ));
        }
    }
    Facts {
        // SAFETY: geteuid has no preconditions and cannot fail.
        euid: unsafe { libc::geteuid() },
        cap_effective: cap_effective(),
        kernel_release: read_trimmed("/proc/sys/kernel/osrelease"),
        bpf_jit_enable: read_trimmed(JIT_SYSCTL).map_err(|e| {
            if Path::new(JIT_SYSCTL).exists() {
                e
            } else {
                format!("{JIT_SYSCTL} is not visible here: outside the initial network namespace, net.core.bpf_jit_enable is not shown")
            }
        }),
        bpffs: BpffsFacts {
            mounted: on_bpffs(&bpffs_path),
            path: bpffs_path,
            required: bpffs_required,
        },
        memlock: memlock(),
        umem_bytes,
        config: config_facts,
        admin_socket,
        interfaces: interfaces
            .into_iter()
            .map(|(name, role)| interface_facts(name, role))
            .collect(),
    }
}

enum Parsed {
    Node(Box<NodeConfig>),
    Edge(Box<EdgeConfig>),
}

struct ReadConfig {
    facts: ConfigFacts,
    /// The configuration as far as it parsed: with TLS files that fail to
    /// load, its interfaces are still checked.
    parsed: Option<Parsed>,
}

fn read_config(path: &Path) -> ReadConfig {
    let invalid = |error: String| ReadConfig {
        facts: ConfigFacts::Invalid {
            path: path.into(),
            error,
        },
        parsed: None,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return ReadConfig {
                facts: ConfigFacts::Missing { path: path.into() },
                parsed: None,
            }
        }
        Err(e) => return invalid(format!("{}: {e}", path.display())),
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => return invalid(format!("{}: {e}", path.display())),
    };
    let (loaded, parsed) = if table.contains_key("node") {
        let loaded = NodeConfig::load(path).map(|c| format!("node {}", c.name));
        let parsed = NodeConfig::parse(&text, path).ok().map(|c| Parsed::Node(Box::new(c)));
        (loaded, parsed)
    } else if table.contains_key("edge") {
        let loaded = EdgeConfig::load(path).map(|_| "edge".to_string());
        let parsed = EdgeConfig::parse(&text, path).ok().map(|c| Parsed::Edge(Box::new(c)));
        (loaded, parsed)
    } else {
        return invalid(format!(
            "{}: neither a [node] nor an [edge] table: not a handoff configuration",
            path.display()
        ));
    };
    let facts = match loaded {
        Ok(what) => ConfigFacts::Loaded {
            path: path.into(),
            what,
        },
        Err(e) => ConfigFacts::Invalid {
            path: path.into(),
            error: e.to_string(),
        },
    };
    ReadConfig { facts, parsed }
}

/// Whether the daemon can create its admin socket at `path`: the admin
/// module creates the missing directories, so what matters is that the
/// nearest existing ancestor is a directory.
fn socket_dir_usable(path: &Path) -> (PathBuf, Result<(), String>) {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let existing = parent.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let usable = if existing.is_dir() {
        Ok(())
    } else {
        Err(format!("{} is not a directory", existing.display()))
    };
    (path.to_path_buf(), usable)
}

/// The BPF JIT switch (Documentation/admin-guide/sysctl/net.rst); only the
/// initial network namespace has it.
const JIT_SYSCTL: &str = "/proc/sys/net/core/bpf_jit_enable";

fn read_trimmed(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("{path}: {e}"))
}

/// `CapEff` of /proc/self/status (proc(5)): the effective capability set, in hex.
fn cap_effective() -> Result<u64, String> {
    let status = read_trimmed("/proc/self/status")?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or("/proc/self/status has no CapEff line")?;
    u64::from_str_radix(hex.trim(), 16).map_err(|e| format!("CapEff {:?}: {e}", hex.trim()))
}

/// RLIMIT_MEMLOCK's soft limit; `None` when unlimited.
fn memlock() -> Result<Option<u64>, String> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid out-pointer of the type getrlimit writes.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        return Err(format!(
            "getrlimit(RLIMIT_MEMLOCK): {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
}

/// Whether `path`, or its nearest existing parent (the edge creates its
/// `pin_dir`), is on a bpffs.
fn on_bpffs(path: &Path) -> Result<(), String> {
    let existing = path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    // The loader's own error carries the remedy; the report prints it apart.
    match handoff_loader::pins::fs_type(existing) {
        Ok(handoff_loader::pins::BPF_FS_MAGIC) => Ok(()),
        Ok(found) => Err(format!(
            "{} is not on a bpffs (filesystem magic {found:#x}, bpffs is {:#x})",
            existing.display(),
            handoff_loader::pins::BPF_FS_MAGIC
        )),
        Err(e) => Err(format!("cannot statfs {}: {e}", existing.display())),
    }
}

fn interface_facts(name: String, role: Role) -> InterfaceFacts {
    let sys = Path::new("/sys/class/net").join(&name);
    let up = std::fs::read_to_string(sys.join("flags"))
        .map_err(|_| format!("no interface {name} in this network namespace"))
        .and_then(|flags| {
            u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16)
                .map_err(|e| format!("{}/flags {:?}: {e}", sys.display(), flags.trim()))
        })
        .map(|flags| flags & libc::IFF_UP as u32 != 0);
    let rx_queues = std::fs::read_dir(sys.join("queues"))
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with("rx-"))
                .count() as u32
        })
        .map_err(|e| format!("{}/queues: {e}", sys.display()));
    InterfaceFacts {
        up,
        driver: netdev::driver(&name).map_err(|e| match e {
            netdev::NetdevError::Io { source, .. } if source.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                format!("{name} reports no driver (a virtual device such as loopback): not a NIC to forward on")
            }
            other => other.to_string(),
        }),
        offloads: netdev::read_offloads(&name).map_err(|e| e.to_string()),
        mtu: netdev::mtu(&name).map_err(|e| e.to_string()),
        rx_queues,
        name,
        role,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_this_process_are_read() {
        let facts = gather(None, Some("lo"));
        assert!(facts.kernel_release.is_ok(), "{facts:?}");
        assert!(facts.cap_effective.is_ok(), "{facts:?}");
        assert!(facts.memlock.is_ok(), "{facts:?}");
        let lo = &facts.interfaces[0];
        assert_eq!(lo.up, Ok(true));
        assert_eq!(lo.mtu, Ok(65536));
        assert!(lo.rx_queues.as_ref().is_ok_and(|&n| n >= 1), "{lo:?}");
        let facts = gather(None, Some("handoff-none0"));
        assert!(facts.interfaces[0]
            .up
            .as_ref()
            .unwrap_err()
            .contains("no interface handoff-none0"));
    }

    #[test]
    fn a_file_that_is_not_a_configuration_is_invalid() {
        let dir = std::env::temp_dir().join(format!("handoff-doctor-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.toml");
        std::fs::write(&path, "[other]\nx = 1\n").unwrap();
        let facts = gather(Some(&path), None);
        let _ = std::fs::remove_dir_all(&dir);
        match facts.config {
            Some(ConfigFacts::Invalid { error, .. }) => {
                assert!(error.contains("neither a [node] nor an [edge]"), "{error}")
            }
            other => panic!("{other:?}"),
        }
        assert!(facts.interfaces.is_empty());
    }

    #[test]
    fn an_admin_socket_under_a_file_is_unusable() {
        assert_eq!(socket_dir_usable(Path::new("/run/handoff/x/fd-a.sock")).1, Ok(()));
        let (_, usable) = socket_dir_usable(Path::new("/proc/self/status/fd-a.sock"));
        assert!(usable.unwrap_err().contains("/proc/self/status is not a directory"));
    }
}
