//! The gate in front of every test that needs root, network namespaces or XDP.

use std::process::Command;

/// Why this machine cannot run privileged tests, or `None` if it can.
pub fn missing_privilege() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some(
            "not running as root (network namespaces and XDP need CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF)".into(),
        );
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => {}
        _ => return Some("the `ip` command (iproute2) is missing: run scripts/bootstrap".into()),
    }
    if !std::path::Path::new("/proc/self/ns/net").exists() {
        return Some("this kernel has no network namespaces".into());
    }
    None
}

/// Returns true if `test` can run here. Otherwise: under CI (`CI=true`) it
/// panics, because CI must run every test; elsewhere it reports the test as
/// skipped, with the reason, and returns false.
pub fn privileged(test: &str) -> bool {
    let Some(reason) = missing_privilege() else {
        return true;
    };
    cannot_run(test, &reason)
}

/// `test` cannot run here, for `reason`: under CI (`CI=true`) this panics,
/// because CI must run every test; elsewhere it reports the test as
/// skipped and returns false.
pub fn cannot_run(test: &str, reason: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: cannot run in CI: {reason}");
    }
    eprintln!("SKIPPED {test}: {reason}");
    false
}
