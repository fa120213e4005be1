//! Builds the eBPF programs in `xdp-ebpf/programs` for `bpfel-unknown-none` and
//! leaves the objects in OUT_DIR, where `src/objects.rs` embeds them.
//!
//! The eBPF crate needs Debian's rustc-web (prebuilt BPF `core`) and
//! bpf-linker; `scripts/bootstrap` installs both. A missing tool, a failed
//! build, or an object that is empty or not eBPF fails this build loudly.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_RUSTC: &str = "/usr/bin/rustc";
const PROGRAMS: [&str; 3] = ["handoff-edge", "handoff-xsk", "handoff-baseline"];
/// ELF e_machine value of eBPF (include/uapi/linux/elf-em.h).
const EM_BPF: u16 = 247;

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let ebpf_dir = manifest.join("../xdp-ebpf/programs");
    let common_dir = manifest.join("../xdp-ebpf/common");
    for path in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        ebpf_dir.join(".cargo/config.toml"),
        common_dir.join("src"),
        common_dir.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", path.display());
    }

    if !Path::new(BPF_RUSTC).exists() {
        fail(&format!(
            "{BPF_RUSTC} not found: run scripts/bootstrap (installs Debian's rustc-web)"
        ));
    }
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--locked", "--target-dir"])
        .arg(&target_dir);
    // The outer build's compiler settings must not leak into the BPF build
    // (clippy's wrapper, the host's rustflags, the host target).
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let leaks = (key.starts_with("CARGO_") && key != "CARGO_HOME") || key.starts_with("RUSTC");
        if leaks || key == "RUSTFLAGS" || key == "RUSTDOCFLAGS" {
            cmd.env_remove(&key);
        }
    }
    let cargo_home =
        env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", env::var("HOME").unwrap_or_default()));
    let path = format!("{cargo_home}/bin:{}", env::var("PATH").unwrap_or_default());
    cmd.env("RUSTC", BPF_RUSTC)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("PATH", path);
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run cargo for the eBPF build: {e}")));
    if !status.success() {
        fail(
            "building xdp-ebpf/programs failed (see the output above; is bpf-linker installed? run scripts/bootstrap)",
        );
    }

    for program in PROGRAMS {
        let built = target_dir.join("bpfel-unknown-none/release").join(program);
        let bytes = fs::read(&built).unwrap_or_else(|e| fail(&format!("{}: {e}", built.display())));
        check_bpf_object(&built, &bytes);
        fs::write(out_dir.join(format!("{program}.o")), &bytes)
            .unwrap_or_else(|e| fail(&format!("writing {program}.o to OUT_DIR: {e}")));
    }
}

fn check_bpf_object(path: &Path, bytes: &[u8]) {
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        fail(&format!(
            "{} is empty or not an ELF object ({} bytes)",
            path.display(),
            bytes.len()
        ));
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    if machine != EM_BPF {
        fail(&format!(
            "{} is an ELF for machine {machine}, not eBPF ({EM_BPF})",
            path.display()
        ));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: handoff-loader build: {message}");
    std::process::exit(1);
}
