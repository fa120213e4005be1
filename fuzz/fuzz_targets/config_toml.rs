//! The three TOML configs: node (`node::config`), edge (`edge::config`) and
//! flow policy (`flow::config`, then `flow::Policy`, which builds the
//! backend tables from it), on arbitrary text.
//!
//! Invariants: no panic; bad text is an error that names the file; a
//! policy that validates builds its tables or says why not.
#![no_main]

use handoff::{edge::config::EdgeConfig, flow::config::PolicyConfig, flow::Policy, node::config::NodeConfig};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

const FILE: &str = "fuzz.toml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new(FILE);
    if let Err(e) = NodeConfig::parse(text, path) {
        assert!(e.to_string().contains(FILE), "{e}");
    }
    if let Err(e) = EdgeConfig::parse(text, path) {
        assert!(e.to_string().contains(FILE), "{e}");
    }
    match PolicyConfig::parse(text, path) {
        Ok(config) => {
            let _ = Policy::new(config);
        }
        Err(e) => assert!(e.to_string().contains(FILE), "{e}"),
    }
});
