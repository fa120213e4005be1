//! The flow-distributor node (US9088584 layer 2): AF_XDP, one worker per
//! core with its own flow table, owner forwarding between cores and nodes.

pub mod clock;
pub mod config;
pub mod daemon;
pub mod fabric;
pub mod fragments;
pub mod handover;
pub mod hold;
pub mod manager_link;
pub mod metrics;
pub mod netdev;
pub mod ownership;
pub mod peers;
pub mod pipeline;
pub mod view;
pub mod worker;
