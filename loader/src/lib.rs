//! Loads handoff's XDP programs, attaches them and owns their maps.
//!
//! The eBPF objects are built from `xdp-ebpf/programs` by this crate's build
//! script and embedded in the binary; nothing prebuilt is ever committed.
//! Every map is opened by its name in [`handoff_common::names`], so a program
//! and its loader cannot disagree about names.
//!
//! # Examples
//!
//! ```no_run
//! use handoff_loader::{AttachMode, EdgeProgram};
//! # fn main() -> Result<(), handoff_loader::LoaderError> {
//! let mut edge = EdgeProgram::load(65536)?;
//! edge.attach("eth1", AttachMode::Driver)?;
//! # Ok(())
//! # }
//! ```

mod baseline;
mod edge;
mod error;
mod objects;
pub mod pins;
mod program;
mod xsk;

pub use baseline::BaselineProgram;
pub use edge::{EdgeProgram, Prefix, PublishedScope, ScopeWrite, GENERATION_GRACE};
pub use error::LoaderError;
pub use program::{interface_index, interface_mac, AttachMode, ReasonCounts, TestRunOutcome};
pub use xsk::XskProgram;

/// Result type of this crate.
pub type Result<T, E = LoaderError> = std::result::Result<T, E>;
