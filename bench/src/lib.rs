//! handoff's measuring instruments: a packet generator, a loss/reorder/latency
//! sink, the service-node workloads (UDP echo, TCP request/response), and a
//! UDP probe of every datagram size against a real echo server.
//! The `handoff-bench` binary exposes them; tests use them as a library.

pub mod callgrind;
pub mod capture;
pub mod echo;
pub mod flows;
pub mod frames;
pub mod gen;
pub mod impair;
pub mod link_sender;
pub mod measure;
pub mod payload;
pub mod plot;
pub mod report;
pub mod sink;
pub mod storm;
pub mod tcp;
pub mod traffic;
pub mod udp_probe;
