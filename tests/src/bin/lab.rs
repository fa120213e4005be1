//! `handoff-lab` (also `handoff lab ...`): a namespace cluster of any size
//! that keeps running for one's own tools (ping, curl, a load tool,
//! tcpdump) until `down`, and is removed whole if whatever holds it dies.
//!
//! `up` starts a detached supervisor (`handoff-lab supervise`) that builds
//! the lab ([`handoff_testbed::lab::Lab`]) and holds it, and returns once
//! it is ready; the supervisor starts a reaper (`handoff-lab reap`) that
//! removes the lab when the supervisor ends, however it ends.

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use handoff_testbed::{
    lab::{
        self, describe, describe_status, is_lab_process, load_states, namespaces_of, remove_lab, status_of,
        valid_prefix, Lab, LabSpec, LabState, ProcessInfo, Removed, DEFAULT_STATE_DIR,
    },
    privilege::missing_privilege,
    wait_until,
};
use std::{
    io::BufRead,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

/// How long `up` waits for the supervisor to report the lab ready.
const UP_TIMEOUT: Duration = Duration::from_secs(180);
/// How long `down` waits for the supervisor's own teardown.
const DOWN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `down` then waits for the reaper after a SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(30);
/// The line the supervisor prints when the lab is ready, before its state file's path.
const READY: &str = "ready ";

#[derive(Parser, Debug)]
#[command(
    name = "handoff-lab",
    version,
    about = "A network-namespace cluster (client, edge, flow-distributor nodes, services) that keeps running for your own tools until `down`; a crash of the lab removes it too. Needs root."
)]
struct Cli {
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Subcommand, Debug)]
enum LabCommand {
    /// Create a lab, wait until every node is ACTIVE in the edge's scope,
    /// print how to reach it (namespaces, VIPs and ports, admin sockets,
    /// commands to copy) and return; the lab keeps running under a
    /// detached supervisor. Removes first any lab in the state directory
    /// whose supervisor has died.
    Up {
        #[command(flatten)]
        shape: Shape,
        #[command(flatten)]
        place: Place,
    },
    /// Show every lab in the state directory: whether its supervisor,
    /// reaper and processes run, and the edge's members.
    Status {
        #[command(flatten)]
        place: Place,
    },
    /// Stop a lab's daemons (by pid), remove its namespaces (their veths
    /// and bridge), logs and state file, and say what was removed.
    Down {
        /// The lab's prefix (`handoff lab status` shows it); needed when
        /// more than one lab is up.
        #[arg(long, conflicts_with = "all")]
        prefix: Option<String>,
        /// Every lab in the state directory.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        place: Place,
    },
    /// (internal) Build the lab and hold it until SIGTERM or SIGINT.
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        shape: Shape,
        #[arg(long)]
        state_dir: PathBuf,
    },
    /// (internal) Wait for EOF on stdin, then remove the lab PREFIX.
    #[command(hide = true)]
    Reap {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        state_file: Option<PathBuf>,
    },
}

#[derive(Args, Debug, Clone)]
struct Shape {
    /// Flow-distributor nodes (fd-a, fd-b, ...), 1 to 10.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Services (svc-1, ...), 1 to 10.
    #[arg(long, default_value_t = 3)]
    services: usize,
    /// Workers (AF_XDP sockets, one per veth queue) per node, 1 to 4.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Only handoff-bench's UDP echo and TCP server on the services: no
    /// nginx, socat or iperf3.
    #[arg(long)]
    no_real_servers: bool,
}

impl Shape {
    fn spec(&self) -> LabSpec {
        LabSpec {
            nodes: self.nodes,
            services: self.services,
            workers: self.workers,
            real_servers: !self.no_real_servers,
        }
    }

    fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--nodes".into(),
            self.nodes.to_string(),
            "--services".into(),
            self.services.to_string(),
            "--workers".into(),
            self.workers.to_string(),
        ];
        if self.no_real_servers {
            args.push("--no-real-servers".into());
        }
        args
    }
}

#[derive(Args, Debug, Clone)]
struct Place {
    /// Where the labs' state files are (`<prefix>.json`).
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Print JSON only.
    #[arg(long)]
    json: bool,
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            // The supervisor's stderr may be a pipe no one reads any more.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    match Cli::parse().command {
        LabCommand::Up { shape, place } => up(&shape, &place),
        LabCommand::Status { place } => status(&place),
        LabCommand::Down { prefix, all, place } => down(prefix.as_deref(), all, &place),
        LabCommand::Supervise { shape, state_dir } => supervise(&shape.spec(), &state_dir),
        LabCommand::Reap { prefix, state_file } => lab::reap(&prefix, state_file.as_deref()).map(drop),
    }
}

fn need_root() -> Result<()> {
    if let Some(reason) = missing_privilege() {
        bail!("the lab builds network namespaces and loads XDP programs: {reason}");
    }
    Ok(())
}

/// Removes the labs in `dir` whose supervisor is gone.
fn remove_stale(dir: &Path) -> Result<()> {
    for (path, state) in load_states(dir) {
        match state {
            Ok(state) if !is_lab_process(state.supervisor_pid) => {
                let removed = remove_lab(&state.prefix, Some(&path))?;
                eprintln!(
                    "removed the stale lab {} (its supervisor, pid {}, is gone):\n{}",
                    state.prefix,
                    state.supervisor_pid,
                    removed.describe()
                );
            }
            Ok(_) => {}
            Err(e) => eprintln!("warning: {e:#}; left as it is"),
        }
    }
    Ok(())
}

fn up(shape: &Shape, place: &Place) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let spec = shape.spec();
    spec.validate()?;
    need_root()?;
    std::fs::create_dir_all(&place.state_dir)
        .with_context(|| format!("creating the state directory {}", place.state_dir.display()))?;
    remove_stale(&place.state_dir)?;

    let (reader, writer) = std::io::pipe().context("creating the supervisor's pipe")?;
    let mut cmd = Command::new(std::env::current_exe().context("finding handoff-lab itself")?);
    cmd.arg("supervise")
        .args(shape.args())
        .arg("--state-dir")
        .arg(&place.state_dir)
        .stdin(Stdio::null())
        .stdout(writer.try_clone()?)
        .stderr(writer);
    // SAFETY: setsid(2) is async-signal-safe and allocates nothing; the
    // supervisor gets a session of its own, out of reach of this
    // terminal's Ctrl-C and hangup, so the lab outlives this command.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut supervisor = cmd.spawn().context("starting the lab's supervisor")?;
    // Our copies of the write end go with `cmd`: EOF comes when the supervisor closes its own.
    drop(cmd);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(reader).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + UP_TIMEOUT;
    let mut said = Vec::new();
    let state_file = loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(Ok(line)) => match line.strip_prefix(READY) {
                Some(file) => break PathBuf::from(file),
                None => {
                    use std::io::Write;
                    // Leaving here closes the pipe: the supervisor's next
                    // line fails and it removes what it built.
                    writeln!(std::io::stderr(), "  {line}")
                        .context("printing the lab's progress; the lab is removed")?;
                    said.push(line);
                }
            },
            Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                // The supervisor removed what it had built before it exited.
                let ended = wait_until(REAP_TIMEOUT, || matches!(supervisor.try_wait(), Ok(Some(_))));
                bail!(
                    "the lab did not come up{}: {}",
                    if ended { "" } else { " (its supervisor still runs)" },
                    said.last().map_or("the supervisor said nothing", String::as_str)
                );
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = supervisor.kill();
                let _ = supervisor.wait();
                bail!(
                    "the lab was not ready within {} s: its supervisor (pid {}) was killed and its reaper removes it; last step: {}",
                    UP_TIMEOUT.as_secs(),
                    supervisor.id(),
                    said.last().map_or("none", String::as_str)
                );
            }
        }
    };
    let state: LabState = handoff_testbed::cluster::read_json(&state_file)?;
    let text = if place.json {
        serde_json::to_string_pretty(&state)?
    } else {
        describe(&state)
    };
    use std::io::Write;
    writeln!(std::io::stdout(), "{text}").with_context(|| {
        format!(
            "printing how to reach lab {} (it is up: `handoff lab status` shows it)",
            state.prefix
        )
    })
}

/// Points this process's stdout and stderr at `path` (created): the pipe
/// to `up` closes, and later lines go to the lab's log.
fn redirect_output(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    for fd in [libc::STDOUT_FILENO, libc::STDERR_FILENO] {
        // SAFETY: dup2(2) onto the standard descriptors from a file this
        // function holds open; nothing else owns fds 1 and 2 as Rust objects.
        if unsafe { libc::dup2(file.as_raw_fd(), fd) } < 0 {
            bail!("redirecting to {}: {}", path.display(), std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn supervise(spec: &LabSpec, state_dir: &Path) -> Result<()> {
    let stop = handoff::shutdown::stop_on_signals()?;
    // A line `up` cannot read any more (it was interrupted) ends the start,
    // and the lab is removed.
    let mut tell = |line: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("`handoff-lab up` is gone (its end of the pipe is closed)")
    };
    let mut lab = Lab::start(spec, Some(state_dir), &mut tell)?;
    let file = lab.write_state()?;
    tell(&format!("{READY}{}", file.display()))?;
    redirect_output(&lab.cluster().log_dir.join("supervisor.log"))?;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let removed = lab.down()?;
    eprintln!("lab removed:\n{}", removed.describe());
    Ok(())
}

fn status(place: &Place) -> Result<()> {
    let mut statuses = Vec::new();
    for (path, state) in load_states(&place.state_dir) {
        match state {
            Ok(state) => statuses.push(status_of(state)),
            Err(e) => eprintln!("warning: {e:#} ({})", path.display()),
        }
    }
    if place.json {
        println!("{}", serde_json::to_string_pretty(&statuses)?);
    } else if statuses.is_empty() {
        println!(
            "no lab is up (no state file in {}): `handoff lab up` starts one",
            place.state_dir.display()
        );
    } else {
        let text: Vec<String> = statuses.iter().map(describe_status).collect();
        println!("{}", text.join("\n\n"));
    }
    Ok(())
}

fn down(prefix: Option<&str>, all: bool, place: &Place) -> Result<()> {
    need_root()?;
    let states: Vec<(PathBuf, LabState)> = load_states(&place.state_dir)
        .into_iter()
        .filter_map(|(path, state)| match state {
            Ok(s) => Some((path, s)),
            Err(e) => {
                eprintln!("warning: {e:#}; left as it is");
                None
            }
        })
        .collect();
    let chosen: Vec<(PathBuf, LabState)> = match prefix {
        Some(p) => {
            let found: Vec<_> = states.into_iter().filter(|(_, s)| s.prefix == p).collect();
            if found.is_empty() {
                if !valid_prefix(p) || namespaces_of(p)?.is_empty() {
                    bail!(
                        "no lab {p} in {} and no namespace handoff-{p}-*: `handoff lab status` lists the labs",
                        place.state_dir.display()
                    );
                }
                // Namespaces without a state file: remove what is there.
                let removed = remove_lab(p, None)?;
                return report(&[(p.to_string(), removed)], place.json);
            }
            found
        }
        None if all || states.len() == 1 => states,
        None if states.is_empty() => bail!(
            "no lab is up (no state file in {}); --state-dir if it was started with one",
            place.state_dir.display()
        ),
        None => bail!(
            "{} labs are up ({}): say which with --prefix, or --all",
            states.len(),
            states
                .iter()
                .map(|(_, s)| s.prefix.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut removed = Vec::new();
    for (path, state) in &chosen {
        removed.push((state.prefix.clone(), take_down(state, path)?));
    }
    report(&removed, place.json)
}

fn report(removed: &[(String, Removed)], json: bool) -> Result<()> {
    if json {
        let value: Vec<_> = removed
            .iter()
            .map(|(prefix, r)| serde_json::json!({"prefix": prefix, "removed": r}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        for (prefix, r) in removed {
            println!("lab {prefix} is down; removed:\n{}", r.describe());
        }
    }
    Ok(())
}

/// SIGTERM to the supervisor (it stops its daemons and removes the lab),
/// SIGKILL if it has not ended in [`DOWN_TIMEOUT`] (its reaper removes
/// the lab), then whatever is left is removed here; fails unless nothing
/// of the lab remains.
fn take_down(state: &LabState, state_file: &Path) -> Result<Removed> {
    let prefix = state.prefix.as_str();
    let mut removed = Removed {
        namespaces: namespaces_of(prefix)?,
        processes: state
            .processes
            .iter()
            .cloned()
            .chain([
                ProcessInfo {
                    name: "supervisor".into(),
                    pid: state.supervisor_pid,
                },
                ProcessInfo {
                    name: "reaper".into(),
                    pid: state.reaper_pid,
                },
            ])
            .filter(|p| handoff_testbed::process::alive(p.pid))
            .collect(),
        files: [state_file.to_path_buf(), state.log_dir.clone()]
            .into_iter()
            .filter(|f| f.exists())
            .collect(),
    };
    let lab_running = || is_lab_process(state.supervisor_pid) || is_lab_process(state.reaper_pid);
    let signal = |sig: i32| {
        if is_lab_process(state.supervisor_pid) {
            // SAFETY: kill(2) on the lab's supervisor, checked to be a
            // running handoff-lab just now.
            unsafe { libc::kill(state.supervisor_pid as libc::pid_t, sig) };
        }
    };
    signal(libc::SIGTERM);
    if !wait_until(DOWN_TIMEOUT, || !lab_running()) {
        eprintln!(
            "the supervisor (pid {}) did not end in {} s: SIGKILL, its reaper removes the lab",
            state.supervisor_pid,
            DOWN_TIMEOUT.as_secs()
        );
        signal(libc::SIGKILL);
        wait_until(REAP_TIMEOUT, || !lab_running());
    }
    removed.merge(remove_lab(prefix, Some(state_file))?);
    let namespaces = namespaces_of(prefix)?;
    let processes: Vec<u32> = removed
        .processes
        .iter()
        .map(|p| p.pid)
        .filter(|&pid| handoff_testbed::process::alive(pid))
        .collect();
    let files: Vec<&PathBuf> = removed.files.iter().filter(|f| f.exists()).collect();
    if !namespaces.is_empty() || !processes.is_empty() || !files.is_empty() {
        bail!("lab {prefix} is not all gone: namespaces {namespaces:?}, processes {processes:?}, files {files:?}");
    }
    Ok(removed)
}
