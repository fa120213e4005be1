//! Processes started by the test bed, stopped by their pid when dropped.

use anyhow::{Context, Result};
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

/// Makes `cmd`'s process receive SIGKILL when the thread that spawns it
/// ends (PR_SET_PDEATHSIG, prctl(2)); the setting survives `ip netns exec`,
/// which execs the program in place. If the parent is already gone by the
/// time the child runs, the child does not start.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: getpid has no preconditions.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the closure runs between fork and exec and calls only
    // prctl(2) and getppid(2), both async-signal-safe; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// Whether process `pid` exists and has not ended: a zombie (ended, not
/// yet reaped) counts as ended.
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| Some(stat.rsplit_once(") ")?.1.starts_with(|c| c != 'Z' && c != 'X')))
        .unwrap_or(false)
}

/// A child process whose stdout and stderr go to files. Dropping it sends
/// SIGTERM, then SIGKILL if it has not exited within two seconds.
#[derive(Debug)]
pub struct Spawned {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Spawned {
    /// Starts `cmd`, logging into `log_dir/<name>.{out,err}`.
    pub fn start(name: &str, mut cmd: Command, log_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(log_dir)?;
        let stdout = log_dir.join(format!("{name}.out"));
        let stderr = log_dir.join(format!("{name}.err"));
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout)?)
            .stderr(File::create(&stderr)?);
        let child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at start.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Its stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we started and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// SIGTERM, wait up to two seconds, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(libc::SIGTERM);
        if let Some(status) = self.wait_timeout(Duration::from_secs(2))? {
            return Ok(status);
        }
        self.signal(libc::SIGKILL);
        Ok(self.child.wait()?)
    }

    /// SIGKILL now: a crash, as far as the rest of the cluster can tell.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        self.signal(libc::SIGKILL);
        Ok(self.child.wait()?)
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
