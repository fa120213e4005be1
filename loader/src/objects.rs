//! The eBPF objects, built by `build.rs` and embedded 8-byte aligned (the ELF
//! parser reads them in place).

/// The edge sprayer object.
pub(crate) static EDGE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/handoff-edge.o"));
/// The node steering object.
pub(crate) static XSK: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/handoff-xsk.o"));
/// The benchmark baseline object.
pub(crate) static BASELINE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/handoff-baseline.o"));
