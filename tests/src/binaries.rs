//! Where the project's binaries are: `HANDOFF_BIN_DIR`, or the cargo target
//! directory this test binary was built into.

use anyhow::{bail, Result};
use std::path::PathBuf;

/// The path of a workspace binary (`handoff`, `handoff-bench`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let dir = match std::env::var_os("HANDOFF_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            // target/<profile>/deps/<test-binary> or target/<profile>/<binary>
            let exe = std::env::current_exe()?;
            let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
            if dir.ends_with("deps") {
                dir.pop();
            }
            dir
        }
    };
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} not found: build the binaries first (`cargo build --release --bins`, which `make test` does) or set HANDOFF_BIN_DIR",
            path.display()
        );
    }
    Ok(path)
}
