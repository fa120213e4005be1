//! handoff's test bed: network namespaces, veth pairs and a bridge, created
//! with a per-run unique name prefix and always removed (on success, failure
//! and panic), plus the processes started inside them.
//!
//! Traffic only ever flows between namespaces created here; nothing touches
//! the root namespace's interfaces or routes.

pub mod binaries;
pub mod cluster;
pub mod frames;
pub mod lab;
pub mod netns;
pub mod privilege;
pub mod process;
pub mod real;
pub mod service_path;

pub use cluster::{wait_until, Cluster, ClusterSpec, NsRef};
pub use netns::{Netns, RunPrefix};
pub use privilege::privileged;
pub use process::Spawned;
