//! The systemd units in deploy/systemd pass `systemd-analyze verify` with
//! no warning at all (unknown keys, bad values, unknown address families
//! are warnings there), with /usr/local/bin/handoff replaced by the built
//! binary (verify checks that every command is executable). The template
//! is verified as systemd instantiates it.

use handoff_testbed::{binaries::binary, privilege::cannot_run};
use std::{path::Path, process::Command};

const UNITS: [&str; 2] = ["handoff-edge.service", "handoff-node@.service"];
const INSTALLED: &str = "/usr/local/bin/handoff";

fn units_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd")
}

/// Writes `units` (name, text) into a fresh directory with the binary's
/// path substituted and runs `systemd-analyze verify` on them: `Err` with
/// its output if it exits non-zero or prints anything.
fn verify(units: &[(&str, String)], test: &str) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("handoff-units-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let handoff = binary("handoff").unwrap();
    let mut paths = Vec::new();
    for (name, text) in units {
        let path = dir.join(name);
        std::fs::write(&path, text.replace(INSTALLED, handoff.to_str().unwrap())).unwrap();
        paths.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&paths)
        .output();
    let _ = std::fs::remove_dir_all(&dir);
    let out = out.map_err(|e| format!("running systemd-analyze: {e}"))?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && printed.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("systemd-analyze verify ({}): {printed}", out.status))
    }
}

fn available(test: &str) -> bool {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => true,
        _ => cannot_run(
            test,
            "systemd-analyze is missing: run scripts/bootstrap (package systemd)",
        ),
    }
}

#[test]
fn the_units_verify_without_a_warning() {
    if !available("the_units_verify_without_a_warning") {
        return;
    }
    let units: Vec<(&str, String)> = UNITS
        .iter()
        .map(|name| (*name, std::fs::read_to_string(units_dir().join(name)).unwrap()))
        .collect();
    for (name, text) in &units {
        assert!(
            text.contains(&format!("ExecStartPre={INSTALLED} doctor --config /etc/handoff/")),
            "{name} runs handoff doctor first"
        );
        for needed in [
            "LimitMEMLOCK=infinity",
            "Restart=on-failure",
            "RuntimeDirectory=handoff",
            "CAP_BPF",
        ] {
            assert!(text.contains(needed), "{name} lacks {needed}");
        }
    }
    verify(&units, "good").unwrap();

    // The check can fail: a misspelt key is refused.
    let (name, text) = &units[1];
    let broken = text.replace("LimitMEMLOCK=", "LimitMEMLOK=");
    let err = verify(&[(name, broken)], "broken").unwrap_err();
    assert!(err.contains("LimitMEMLOK"), "{err}");
}
