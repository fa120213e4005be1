//! Taking a node out of service without losing a connection (US9088584):
//! its connections are duplicated to their inheritors, redirected, and
//! purged once the node is drained.

pub mod handover;
pub mod wire;
