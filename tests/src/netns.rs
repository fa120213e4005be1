//! Network namespaces, veth pairs and bridges with a per-run name prefix.

use anyhow::{bail, Context, Result};
use std::{
    fmt,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

/// Every namespace this crate creates is named `handoff-<prefix>-<role>`.
const NETNS_PREFIX: &str = "handoff-";

/// A short prefix unique to this run: `h` + the pid in base 36 (5 digits) +
/// a counter character. Interface names are `<prefix><role>`, at most 15 bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunPrefix(String);

impl RunPrefix {
    /// A fresh prefix for this process; successive calls differ.
    pub fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(format!("h{}{}", base36(std::process::id(), 5), base36(n, 1)))
    }
    /// The prefix of another process's run, as [`Self::as_str`] gave it.
    pub fn from_existing(prefix: &str) -> Self {
        Self(prefix.to_string())
    }

    /// The prefix itself.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// An interface name for `role` (truncated to the kernel's 15 bytes).
    pub fn ifname(&self, role: &str) -> String {
        let mut name = format!("{}{}", self.0, role);
        name.truncate(15);
        name
    }
}

impl Default for RunPrefix {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for RunPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn base36(mut v: u32, width: usize) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = vec![b'0'; width];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(v % 36) as usize];
        v /= 36;
    }
    String::from_utf8(out).unwrap_or_default()
}

fn pid_of_prefix(prefix: &str) -> Option<u32> {
    let digits = prefix.strip_prefix('h')?.get(..5)?;
    u32::from_str_radix(digits, 36).ok()
}

/// Runs a command and fails with its stderr if it exits non-zero.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out)
}

/// `ip <args>` in the root namespace (only ever used to manage namespaces).
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// Removes namespaces left behind by runs whose process no longer exists
/// (a run killed with SIGKILL cannot clean up after itself).
pub fn sweep_stale() {
    let Ok(out) = ip(&["netns", "list"]) else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(pid_of_prefix) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// Unmounts the bpffs mounts left behind by runs whose process no longer
/// exists (see [`BpfFs`]), so their pins (and what they hold) go away.
pub fn sweep_stale_bpffs() {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let base = std::env::temp_dir();
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_), Some(target), Some("bpf")) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        let target = std::path::Path::new(target);
        let Some(owner) = target
            .strip_prefix(&base)
            .ok()
            .and_then(|rest| rest.iter().next())
            .and_then(|dir| dir.to_str()?.strip_prefix(NETNS_PREFIX).map(str::to_string))
        else {
            continue;
        };
        if let Some(pid) = pid_of_prefix(&owner) {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                let _ = run(Command::new("umount").arg(target));
                let _ = std::fs::remove_dir(target);
            }
        }
    }
}

/// A bpffs of this run, mounted at a directory of its own (never
/// /sys/fs/bpf), unmounted and removed on drop: pins made in it vanish
/// with it.
#[derive(Debug)]
pub struct BpfFs {
    path: std::path::PathBuf,
}

impl BpfFs {
    /// Mounts a bpffs at `path` (created if missing).
    pub fn mount(path: &std::path::Path) -> Result<Self> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        if let Err(e) = run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(path)) {
            let _ = std::fs::remove_dir(path);
            return Err(e);
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("umount").arg(&self.path)) {
            eprintln!("warning: unmounting {}: {e:#}", self.path.display());
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `handoff-<prefix>-<role>` with loopback up.
    pub fn create(prefix: &RunPrefix, role: &str) -> Result<Self> {
        let name = format!("{NETNS_PREFIX}{prefix}-{role}");
        ip(&["netns", "add", &name])?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a thread of its own that has entered this namespace
    /// (sockets it opens live there); the calling thread stays where it is.
    pub fn run_inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/run/netns/{}", self.name);
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            // SAFETY: setns on an open namespace file moves only this
            // thread, which is ours and ends with `f`.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(anyhow::anyhow!("setns: {}", std::io::Error::last_os_error()));
            }
            Ok(f())
        });
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the thread in {} panicked", self.name))?
    }

    /// Runs `ip <args>` inside this namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Runs a program inside this namespace and returns its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let out = run(self.command(program).args(args))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sets a sysctl inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace destroys its veth ends and bridges with it.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: removing namespace {}: {e:#}", self.name);
        }
    }
}

/// One end of a veth pair.
#[derive(Clone, Debug)]
pub struct VethEnd<'a> {
    /// Namespace of this end.
    pub ns: &'a Netns,
    /// Interface name.
    pub name: String,
    /// MAC address to set, or `None` for one the kernel picks.
    pub mac: Option<[u8; 6]>,
}

/// Creates a veth pair between two namespaces with `queues` RX and TX queues
/// on both ends (equal counts keep native XDP attachable) and brings both up.
pub fn veth(a: &VethEnd<'_>, b: &VethEnd<'_>, queues: u32) -> Result<()> {
    let q = queues.to_string();
    let end = |e: &VethEnd<'_>| {
        let mut args = vec![e.name.clone()];
        if let Some(mac) = e.mac {
            args.extend(["address".to_string(), mac_string(mac)]);
        }
        args.extend(["numtxqueues".into(), q.clone(), "numrxqueues".into(), q.clone()]);
        args
    };
    run(Command::new("ip")
        .args(["-n", a.ns.name(), "link", "add"])
        .args(end(a))
        .args(["type", "veth", "peer", "name"])
        .args(end(b))
        .args(["netns", b.ns.name()]))?;
    a.ns.ip(&["link", "set", &a.name, "up"])?;
    b.ns.ip(&["link", "set", &b.name, "up"])?;
    Ok(())
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_encodes_pid_and_fits_interface_names() {
        let p = RunPrefix::new();
        assert_eq!(pid_of_prefix(p.as_str()), Some(std::process::id() % 36u32.pow(5)));
        assert!(p.ifname("a-very-long-role-name").len() <= 15);
        assert_ne!(RunPrefix::new(), RunPrefix::new());
    }
}
