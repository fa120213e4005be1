//! `handoff`: the edge daemon, the node daemon and the operator commands.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use handoff::{
    admin::{self, AdminRequest, AdminResponse},
    edge::{config::EdgeConfig, Edge},
    node::{config::NodeConfig, daemon::Node},
};
use std::{path::PathBuf, time::Duration};

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
    /// Take NODE out of service: hand its connections to their inheritors,
    /// flip the scope without it (edge and nodes), drain and purge it.
    Disengage {
        /// The node's name.
        node: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Put NODE back into the scope (edge and nodes). Connections stay with
    /// their owners; NODE takes new ones.
    Engage {
        /// The node's name.
        node: String,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
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

#[derive(clap::Args, Debug)]
struct ClusterArgs {
    /// The edge daemon's admin socket.
    #[arg(long)]
    edge_admin: PathBuf,
    /// Every node's admin socket (repeat the flag).
    #[arg(long = "node-admin", required = true)]
    node_admins: Vec<PathBuf>,
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

fn admin_call(admin: &AdminArgs, request: AdminRequest) -> Result<()> {
    let response = admin::call(&admin.admin, &request, Duration::from_secs(35))?;
    println!("{}", serde_json::to_string_pretty(&response)?);
    if let AdminResponse::Error { message } = response {
        anyhow::bail!("{message}");
    }
    Ok(())
}

const PROCEDURE_TIMEOUT: Duration = Duration::from_secs(35);

/// One admin request that must succeed; returns its result.
fn step(socket: &std::path::Path, request: &AdminRequest) -> Result<serde_json::Value> {
    match admin::call(socket, request, PROCEDURE_TIMEOUT)? {
        AdminResponse::Error { message } => anyhow::bail!("{}: {message}", socket.display()),
        other => Ok(serde_json::to_value(other)?),
    }
}

/// The admin socket of the node named `node`.
fn node_socket<'a>(cluster: &'a ClusterArgs, node: &str) -> Result<&'a PathBuf> {
    for socket in &cluster.node_admins {
        if step(socket, &AdminRequest::Status)?["node"] == node {
            return Ok(socket);
        }
    }
    anyhow::bail!("no --node-admin socket belongs to {node}")
}

fn flip_everywhere(cluster: &ClusterArgs, request: &AdminRequest) -> Result<serde_json::Value> {
    let edge = step(&cluster.edge_admin, request).context("flipping the edge's scope")?;
    for socket in &cluster.node_admins {
        step(socket, request).with_context(|| format!("flipping the scope at {}", socket.display()))?;
    }
    Ok(edge)
}

fn disengage(node: &str, cluster: &ClusterArgs) -> Result<()> {
    let own = node_socket(cluster, node)?;
    let started = std::time::Instant::now();
    let phase = |name: &str, detail: &serde_json::Value| {
        println!("[{:>7.1} ms] {name}: {detail}", started.elapsed().as_secs_f64() * 1e3);
    };
    let handed = step(own, &AdminRequest::HandOver).context("handing over (nothing changed)")?;
    phase("copy + cut + broadcast", &handed);
    let flip = flip_everywhere(cluster, &AdminRequest::ScopeRemove { member: node.into() })?;
    phase("flip", &flip);
    let released = step(own, &AdminRequest::Release).context("draining")?;
    phase("drain + purge", &released);
    if released["connections_left"] != 0 {
        anyhow::bail!("{node} still holds connections: {released}");
    }
    println!("{node} is disengaged");
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
            let stop = handoff::shutdown::stop_on_signals()?;
            Edge::start(config)?.run(stop)
        }
        Command::Node { config } => {
            let config = NodeConfig::load(&config)?;
            let stop = handoff::shutdown::stop_on_signals()?;
            Node::start(config, stop)?.run()
        }
        Command::Disengage { node, cluster } => disengage(&node, &cluster),
        Command::Engage { node, cluster } => {
            let flip = flip_everywhere(&cluster, &AdminRequest::ScopeAdd { member: node.clone() })?;
            println!("{node} is back in the scope: {flip}");
            Ok(())
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
