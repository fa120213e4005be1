//! The eBPF crate builds outside the workspace, so it carries its own copy of
//! the workspace lint table; this keeps the copy equal to the original.

use std::path::Path;

fn lints(manifest: &Path) -> toml::Value {
    let text = std::fs::read_to_string(manifest).unwrap_or_else(|e| panic!("reading {}: {e}", manifest.display()));
    let parsed: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("parsing {}: {e}", manifest.display()));
    parsed
        .get("workspace")
        .and_then(|w| w.get("lints"))
        .cloned()
        .unwrap_or_else(|| panic!("{} has no [workspace.lints]", manifest.display()))
}

#[test]
fn the_ebpf_crate_uses_the_workspace_lints() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let workspace = lints(&root.join("Cargo.toml"));
    let ebpf = lints(&root.join("xdp-ebpf/programs/Cargo.toml"));
    assert_eq!(
        workspace, ebpf,
        "xdp-ebpf/programs/Cargo.toml's [workspace.lints] differs from the root's: copy the root's table"
    );
}
