//! handoff: a kernel-bypass packet-forwarding dataplane whose nodes can be
//! taken out of service while traffic runs, with no packet lost.
//!
//! The library holds the pure logic (hash scope, flow tables, the migration
//! state machine) as plain `std` code, and the I/O behind traits.

pub mod admin;
pub mod api;
pub mod control;
pub mod doctor;
pub mod edge;
pub mod flow;
pub mod http;
pub mod icmp;
pub mod io;
pub mod metrics;
pub mod migration;
pub mod node;
pub mod progress;
pub mod render;
pub mod rewrite;
pub mod scope;
pub mod shutdown;
pub mod tcp_reset;
pub mod top;
