//! The loader's error type.

use std::{io, path::PathBuf};

/// Everything that can go wrong between an eBPF object and an attached program.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    /// The kernel refused to create the maps or load the program.
    #[error("loading the {program} object failed{hint}")]
    Load {
        /// Program name.
        program: &'static str,
        /// " (permission denied: ...)" when the cause is a missing privilege.
        hint: String,
        /// The underlying error.
        #[source]
        source: Box<aya::EbpfError>,
    },
    /// The verifier or the kernel refused the program.
    #[error("program {program}{hint}")]
    Program {
        /// Program name.
        program: &'static str,
        /// " (permission denied: ...)" when the cause is a missing privilege.
        hint: String,
        /// The underlying error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The object lacks a program or map that the loader expects: the object
    /// and the loader were built from different sources.
    #[error("the {object} object has no {what} named {name}")]
    MissingSymbol {
        /// Object name.
        object: &'static str,
        /// "program" or "map".
        what: &'static str,
        /// The missing name.
        name: &'static str,
    },
    /// A map operation failed.
    #[error("map {map}")]
    Map {
        /// Map name.
        map: &'static str,
        /// The underlying error.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// A devmap or xskmap update failed.
    #[error("map {map}")]
    XdpMap {
        /// Map name.
        map: &'static str,
        /// The underlying error.
        #[source]
        source: Box<aya::maps::xdp::XdpMapError>,
    },
    /// Attaching failed in the requested mode.
    #[error("attaching {program} to {interface} in {mode} mode failed; {hint}")]
    Attach {
        /// Program name.
        program: &'static str,
        /// Interface name.
        interface: String,
        /// Requested mode.
        mode: &'static str,
        /// What to try instead.
        hint: String,
        /// The underlying error.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// The interface does not exist (in this network namespace).
    #[error("interface {name} not found in this network namespace")]
    UnknownInterface {
        /// Interface name.
        name: String,
    },
    /// The pin directory is unusable, or what is pinned there does not fit.
    #[error("pin directory {path}: {detail}")]
    PinDir {
        /// The directory (or the file in it).
        path: PathBuf,
        /// What is wrong and what to do.
        detail: String,
    },
    /// Opening, creating or pinning a pinned object failed.
    #[error("pinned {what} {path}")]
    Pin {
        /// "map" or "link".
        what: &'static str,
        /// Its pin path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A configuration value is out of range.
    #[error("invalid {what}: {detail}")]
    Invalid {
        /// What was invalid.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// " (permission denied: ...)" if an io::Error with EPERM/EACCES is in the chain.
pub(crate) fn privilege_hint(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if matches!(io.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                return " (permission denied: loading eBPF needs root or CAP_BPF + CAP_NET_ADMIN)".to_string();
            }
        }
        cur = e.source();
    }
    String::new()
}
