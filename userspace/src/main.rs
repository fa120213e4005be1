//! `handoff`: the edge daemon, the node daemon and the operator commands.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use handoff::{
    admin::{self, AdminRequest, AdminResponse},
    edge::{config::EdgeConfig, Edge},
    node::{config::NodeConfig, daemon::Node},
};
use std::{
    path::PathBuf,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};

#[derive(Parser, Debug)]
#[command(
    name = "handoff",
    version,
    about = "handoff: a kernel-bypass forwarding dataplane with zero-loss node handoff"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the edge daemon (XDP sprayer, hash scope, admin socket).
    Edge {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a flow-distributor node (AF_XDP workers, flow tables, peer links).
    Node {
        /// Configuration file.
        #[arg(long)]
        config: PathBuf,
    },
    /// Show members and the scope (of the edge or of a node).
    Status(AdminArgs),
    /// Show the data-plane counters of the edge or of a node.
    Stats(AdminArgs),
    /// Change the hash scope directly, without migrating state.
    Scope {
        #[command(subcommand)]
        change: ScopeChange,
    },
}

#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// The admin socket of the edge or of a node.
    #[arg(long, default_value = "/run/handoff/edge.sock")]
    admin: PathBuf,
}

#[derive(Subcommand, Debug)]
enum ScopeChange {
    /// Flip the scope without MEMBER. Its flows move without their state.
    Remove {
        /// Member name.
        member: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Flip the scope with MEMBER added back.
    Add {
        /// Member name.
        member: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("installing a signal handler")?;
    }
    Ok(stop)
}

fn admin_call(admin: &AdminArgs, request: AdminRequest) -> Result<()> {
    let response = admin::call(&admin.admin, &request, Duration::from_secs(35))?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    if let AdminResponse::Error { message } = response {
        anyhow::bail!("{message}");
    }
    Ok(())
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Edge { config } => {
            let config = EdgeConfig::load(&config)?;
            let stop = stop_flag()?;
            Edge::start(config)?.run(stop)
        }
        Command::Node { config } => {
            let config = NodeConfig::load(&config)?;
            let stop = stop_flag()?;
            Node::start(config, stop)?.run()
        }
        Command::Status(admin) => admin_call(&admin, AdminRequest::Status),
        Command::Stats(admin) => admin_call(&admin, AdminRequest::Stats),
        Command::Scope {
            change: ScopeChange::Remove { member, admin },
        } => admin_call(&admin, AdminRequest::ScopeRemove { member }),
        Command::Scope {
            change: ScopeChange::Add { member, admin },
        } => admin_call(&admin, AdminRequest::ScopeAdd { member }),
    }
}
