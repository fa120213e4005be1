//! Clean shutdown on SIGINT and SIGTERM, for every binary of the project,
//! and SIGHUP as the daemons' "re-read your policy".

use anyhow::{Context, Result};
use std::sync::{atomic::AtomicBool, Arc};

/// A flag that SIGINT and SIGTERM set; loops poll it and wind down.
pub fn stop_on_signals() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing a signal handler")?;
    }
    Ok(stop)
}

/// A flag that SIGHUP sets (the node re-reads its policy file and clears it).
pub fn flag_on_hangup() -> Result<Arc<AtomicBool>> {
    let hangup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hangup))
        .context("installing the SIGHUP handler")?;
    Ok(hangup)
}
