//! `handoff lab up | status | down` as an operator runs it (through the
//! `handoff` binary, which execs `handoff-lab`): real `ping` and `curl`
//! from the client namespace through the VIP, the status of every process
//! and member, and nothing left behind, neither after `down` nor after the
//! lab's supervisor is killed with SIGKILL; a stale lab is removed by the
//! next `up`; a bad argument creates nothing.
//!
//! Each test keeps its labs in a state directory of its own, and a guard
//! removes whatever a failed test leaves.

use handoff_testbed::{
    binaries::binary,
    cluster::{arg, VIP},
    lab::{is_lab_process, namespaces_of, remove_lab, LabState, LabStatus},
    privileged,
    process::alive,
    real::{body_difference, parse_ping, HttpObjects},
    wait_until,
};
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

/// A state directory of this test run, removed on drop.
struct StateDir(PathBuf);

impl StateDir {
    fn new() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self(std::env::temp_dir().join(format!("lab-e2e-{}-{n}", std::process::id())))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A lab a test brought up: on drop (a failed test), its supervisor is
/// killed and everything with its prefix removed.
struct Up {
    state: LabState,
}

impl Drop for Up {
    fn drop(&mut self) {
        for pid in [self.state.supervisor_pid, self.state.reaper_pid] {
            if is_lab_process(pid) {
                // SAFETY: kill(2) on a handoff-lab process this test started.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        if let Err(e) = remove_lab(&self.state.prefix, Some(&self.state.state_file)) {
            eprintln!("warning: removing lab {}: {e:#}", self.state.prefix);
        }
    }
}

/// `handoff lab <args>`.
fn lab(args: &[&str]) -> Output {
    Command::new(binary("handoff").unwrap())
        .arg("lab")
        .args(args)
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `handoff lab up --json <args>` in `dir`; fails the test unless it comes up.
fn up(dir: &StateDir, args: &[&str]) -> Up {
    let dir_arg = dir.0.display().to_string();
    let mut all = vec!["up", "--state-dir", &dir_arg, "--json"];
    all.extend(args);
    let out = lab(&all);
    assert!(
        out.status.success(),
        "lab up failed: {}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let state: LabState = serde_json::from_slice(&out.stdout).unwrap();
    println!(
        "lab {} up: supervisor {}, reaper {}",
        state.prefix, state.supervisor_pid, state.reaper_pid
    );
    Up { state }
}

/// Processes whose command line names the lab's prefix (its daemons'
/// configuration paths do), zombies aside.
fn processes_naming(prefix: &str) -> Vec<(u32, String)> {
    let needle = format!("handoff-{prefix}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| alive(pid))
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = text(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some((pid, cmdline))
        })
        .collect()
}

/// What of the lab still exists: namespaces, root-namespace links, its
/// processes, processes naming its prefix, its files. Empty when it is gone.
fn leftovers(state: &LabState) -> Vec<String> {
    let mut left = Vec::new();
    for ns in namespaces_of(&state.prefix).unwrap() {
        left.push(format!("namespace {ns}"));
    }
    let links = text(&Command::new("ip").args(["-o", "link"]).output().unwrap().stdout);
    for line in links.lines().filter(|l| l.contains(&state.prefix)) {
        left.push(format!("link {line}"));
    }
    let pids = state
        .processes
        .iter()
        .map(|p| (p.name.as_str(), p.pid))
        .chain([("supervisor", state.supervisor_pid), ("reaper", state.reaper_pid)]);
    for (name, pid) in pids {
        if alive(pid) {
            left.push(format!("process {name} ({pid})"));
        }
    }
    for (pid, cmdline) in processes_naming(&state.prefix) {
        left.push(format!("process {pid}: {cmdline}"));
    }
    for file in [&state.state_file, &state.log_dir] {
        if file.exists() {
            left.push(format!("file {}", file.display()));
        }
    }
    left
}

/// Runs `program args` in the lab's client namespace under `timeout`.
fn in_client(state: &LabState, limit_s: u32, program: &str, args: &[String]) -> Output {
    let client = &state.namespaces.iter().find(|n| n.role == "client").unwrap().name;
    Command::new("ip")
        .args([
            "netns",
            "exec",
            client,
            "timeout",
            "-k",
            "2",
            &limit_s.to_string(),
            program,
        ])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn a_lab_of_two_nodes_answers_ping_and_curl_and_down_leaves_nothing() {
    if !privileged("a_lab_of_two_nodes_answers_ping_and_curl_and_down_leaves_nothing") {
        return;
    }
    let dir = StateDir::new();
    let dir_arg = dir.0.display().to_string();
    let up = up(&dir, &["--nodes", "2"]);
    let state = &up.state;
    assert_eq!(state.spec.nodes, 2);
    assert!(state.state_file.starts_with(&dir.0), "{}", state.state_file.display());

    let ping = in_client(state, 12, "ping", &[arg("-c"), arg(3), arg("-W"), arg(2), arg(VIP)]);
    let stdout = text(&ping.stdout);
    assert_eq!(
        parse_ping(&stdout),
        Some((3, 3)),
        "ping {VIP}: {stdout}{}",
        text(&ping.stderr)
    );

    let size = 27_000;
    let body = state.log_dir.join("curl-body.bin");
    let curl = in_client(
        state,
        30,
        "curl",
        &[
            arg("--silent"),
            arg("--show-error"),
            arg("--fail"),
            arg("--connect-timeout"),
            arg(5),
            arg("--max-time"),
            arg(20),
            arg("--output"),
            arg(body.display()),
            arg(format!("http://{VIP}/{}", HttpObjects::name(size))),
        ],
    );
    assert!(curl.status.success(), "curl: {}", text(&curl.stderr));
    let want = std::fs::read(state.log_dir.join("www").join(HttpObjects::name(size))).unwrap();
    let got = std::fs::read(&body).unwrap();
    assert_eq!(body_difference(&want, &got), None, "curl through the VIP");
    println!("ping 3 of 3, curl {size} B byte-exact");

    let out = lab(&["status", "--state-dir", &dir_arg, "--json"]);
    assert!(out.status.success(), "lab status: {}", text(&out.stderr));
    let statuses: Vec<LabStatus> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(statuses.len(), 1, "{}", text(&out.stdout));
    let status = &statuses[0];
    assert_eq!(status.lab.prefix, state.prefix);
    assert!(status.supervisor_alive && status.reaper_alive, "{status:?}");
    assert!(!status.processes.is_empty());
    let dead: Vec<_> = status.processes.iter().filter(|p| !p.alive).collect();
    assert!(dead.is_empty(), "processes not running: {dead:?}");
    let members = status
        .members
        .as_ref()
        .and_then(|m| m.as_array())
        .expect("the edge's members");
    let states: Vec<_> = members
        .iter()
        .map(|m| (m["name"].clone(), m["status"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            (serde_json::json!("fd-a"), serde_json::json!("Active")),
            (serde_json::json!("fd-b"), serde_json::json!("Active"))
        ]
    );
    let human = lab(&["status", "--state-dir", &dir_arg]);
    println!("{}", text(&human.stdout));

    let out = lab(&["down", "--state-dir", &dir_arg]);
    println!("{}", text(&out.stdout));
    assert!(out.status.success(), "lab down: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("handoff-{}-client", state.prefix)));
    assert_eq!(leftovers(state), Vec::<String>::new());
    let out = lab(&["status", "--state-dir", &dir_arg, "--json"]);
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[test]
fn a_lab_whose_supervisor_is_killed_is_removed_whole() {
    if !privileged("a_lab_whose_supervisor_is_killed_is_removed_whole") {
        return;
    }
    let dir = StateDir::new();
    let up = up(&dir, &["--nodes", "2"]);
    let state = &up.state;
    assert!(namespaces_of(&state.prefix).unwrap().len() >= 7);
    assert!(!processes_naming(&state.prefix).is_empty());
    // SAFETY: kill(2) on the supervisor this test's `lab up` started.
    unsafe { libc::kill(state.supervisor_pid as libc::pid_t, libc::SIGKILL) };
    let mut left = Vec::new();
    let gone = wait_until(Duration::from_secs(30), || {
        left = leftovers(state);
        left.is_empty()
    });
    assert!(gone, "30 s after SIGKILL to the supervisor, still there: {left:#?}");
}

#[test]
fn up_removes_a_stale_lab_whose_supervisor_and_reaper_are_dead() {
    if !privileged("up_removes_a_stale_lab_whose_supervisor_and_reaper_are_dead") {
        return;
    }
    let dir = StateDir::new();
    let dir_arg = dir.0.display().to_string();
    let stale = up(&dir, &["--nodes", "1", "--no-real-servers"]);
    for pid in [stale.state.reaper_pid, stale.state.supervisor_pid] {
        // SAFETY: kill(2) on the reaper and supervisor this test's `lab up` started.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
    assert!(wait_until(Duration::from_secs(10), || !is_lab_process(
        stale.state.supervisor_pid
    ) && !is_lab_process(
        stale.state.reaper_pid
    )));
    assert!(
        !namespaces_of(&stale.state.prefix).unwrap().is_empty() && stale.state.state_file.exists(),
        "with its reaper killed first, the lab stays behind"
    );

    let out = lab(&[
        "up",
        "--state-dir",
        &dir_arg,
        "--json",
        "--nodes",
        "1",
        "--no-real-servers",
    ]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "lab up: {stderr}");
    let fresh = Up {
        state: serde_json::from_slice(&out.stdout).unwrap(),
    };
    assert!(
        stderr.contains(&format!("removed the stale lab {}", stale.state.prefix)),
        "{stderr}"
    );
    assert_eq!(leftovers(&stale.state), Vec::<String>::new());
    let out = lab(&["down", "--state-dir", &dir_arg, "--prefix", &fresh.state.prefix]);
    assert!(out.status.success(), "lab down: {}", text(&out.stderr));
    assert_eq!(leftovers(&fresh.state), Vec::<String>::new());
}

/// A bad argument: a clear error naming it, and no state directory, no
/// supervisor, nothing created. Needs no privilege: the arguments are
/// checked before anything else.
#[test]
fn up_with_a_bad_argument_says_why_and_creates_nothing() {
    let dir = StateDir::new();
    let dir_arg = dir.0.display().to_string();
    let cases: [(&[&str], &str); 4] = [
        (&["--nodes", "0"], "--nodes 0: a lab has 1 to 10 nodes"),
        (&["--nodes", "11"], "--nodes 11: a lab has 1 to 10 nodes"),
        (&["--workers", "9"], "--workers 9: a node has 1 to 4 workers"),
        (&["--nodes", "two"], "invalid value 'two' for '--nodes <NODES>'"),
    ];
    for (args, want) in cases {
        let mut all = vec!["up", "--state-dir", &dir_arg];
        all.extend(args);
        let out = lab(&all);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!Path::new(&dir.0).exists(), "{args:?} created {}", dir.0.display());
        let supervisors: Vec<_> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| text(&c).contains(&dir_arg)))
            .collect();
        assert!(supervisors.is_empty(), "{args:?} left processes {supervisors:?}");
        println!("{args:?}: {}", stderr.trim());
    }
}
