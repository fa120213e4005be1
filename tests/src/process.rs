//! Processes started by the test bed, stopped by their pid when dropped.

use anyhow::{Context, Result};
use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

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
