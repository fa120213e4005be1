//! `handoff`: the edge daemon, the node daemon and the operator commands.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use handoff::{
    admin::{AdminRequest, AdminResponse},
    api::client::{ApiClient, Transport},
    control::{
        keys::{self, Party},
        tls::TlsPaths,
    },
    edge::{config::EdgeConfig, Edge},
    node::{config::NodeConfig, daemon::Node},
    render,
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
    /// Remove the sprayer an edge with `pin_dir` left pinned: unpin its
    /// links (the sprayer detaches, forwarding through the edge stops) and
    /// its maps. The edge daemon must be stopped first; a stopped pinned
    /// edge otherwise keeps forwarding by its last scope.
    EdgeDetach {
        /// The edge's configuration file (its `pin_dir` and admin socket).
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        output: Output,
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
    /// Take NODE out of service with its connections. The edge's migration
    /// manager runs it: select, copy, broadcast, flip, drain, purge; each
    /// phase is printed as it starts, then a table of every phase with its
    /// duration and what it did. On a terminal a progress bar shows the
    /// phase and, during the copy, connections copied of the total, bytes
    /// and the rate. `--json`: the admin socket's lines as they come, one
    /// JSON object each (`progress` lines, those within the copy with a
    /// `progress` object, then `done` or `error`).
    Disengage {
        /// The node's name.
        node: String,
        /// Who inherits: `auto` or `spread` (the buckets spread as the next
        /// scope assigns them), `least-flows`, or a member's name.
        #[arg(long, default_value = "auto")]
        inheritor: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put NODE back into the scope. Connections stay with their owners;
    /// NODE takes new ones.
    Engage {
        /// The node's name.
        node: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// A live view, refreshed every interval: each member's status, flows
    /// and packets/s sprayed to it (from the edge), and with `--node` each
    /// node's and worker's packets/s received and sent, flows, and drops/s
    /// with the reasons that drop most. `--json`: one line per refresh.
    Top {
        /// A node's admin socket (its `admin_socket`); repeat for each node.
        #[arg(long = "node", value_name = "SOCKET")]
        nodes: Vec<PathBuf>,
        /// Seconds between refreshes (rates are over this interval).
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Exit after this many refreshes (default: until interrupted).
        #[arg(long)]
        count: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List a node's services: backends, weights, states (active or
    /// draining), table shares, and the backends removed live.
    Services(AdminArgs),
    /// Re-read the policy file of nodes and apply it, as SIGHUP does. The
    /// file is the source of truth: live backend changes not in it are undone.
    Policy {
        #[command(subcommand)]
        change: PolicyCommand,
    },
    /// Change a service's backends on running nodes: validated on every
    /// node named by --admin first, then made on each.
    Backend {
        #[command(subcommand)]
        change: BackendCommand,
    },
    /// Change the hash scope directly, without migrating state.
    Scope {
        #[command(subcommand)]
        change: ScopeChange,
    },
    /// Add or remove an edge member while the edge runs (not written to
    /// edge.toml: add it there too to keep it across a restart).
    Member {
        #[command(subcommand)]
        change: MemberChange,
    },
    /// Check what this machine lacks to run the edge or a node: privileges,
    /// kernel, BPF JIT, bpffs, memlock, and each interface's link, driver,
    /// offloads, MTU and queues. Each check is ok, warn or fail, with what
    /// was found and the command that fixes it. Exits non-zero if any fails.
    Doctor {
        /// A node's or the edge's configuration: loads it (TLS files
        /// included) and checks its interfaces against its settings.
        #[arg(long)]
        config: Option<PathBuf>,
        /// An interface to check as a node's, with the default settings.
        #[arg(long)]
        interface: Option<String>,
        #[command(flatten)]
        output: Output,
    },
    /// A network-namespace lab cluster for your own tools: `handoff lab up
    /// [--nodes N]`, `handoff lab status`, `handoff lab down`. Runs the
    /// `handoff-lab` binary from the directory this one is in (the test
    /// bed's crate builds it: `make build`) with these arguments;
    /// `handoff lab --help` shows its own help.
    #[command(disable_help_flag = true)]
    Lab {
        /// `up`, `status` or `down`, and their options.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Create the cluster's keys: its CA, and the certificates the nodes and
    /// the manager authenticate with (mutual TLS on every control connection).
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
}

#[derive(Subcommand, Debug)]
enum KeysAction {
    /// Create the cluster CA: DIR/ca.pem and DIR/ca.key (mode 0600). Never
    /// overwrites.
    Init {
        /// The key directory (created if missing).
        #[arg(long)]
        dir: PathBuf,
        #[command(flatten)]
        output: Output,
    },
    /// Issue a certificate with the CA in DIR: DIR/node-ID.pem and .key for
    /// `--node ID` (its name is node-ID.handoff.cluster), DIR/manager.pem
    /// and .key for `--manager`. Prints the [tls] section that uses them.
    Issue {
        /// The key directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// A node's member id.
        #[arg(long, conflicts_with = "manager", required_unless_present = "manager")]
        node: Option<u16>,
        /// The migration manager (the edge daemon).
        #[arg(long)]
        manager: bool,
        #[command(flatten)]
        output: Output,
    },
}

#[derive(Subcommand, Debug)]
enum PolicyCommand {
    /// Re-read and apply the policy file.
    Reload(ChangeArgs),
}

#[derive(Subcommand, Debug)]
enum BackendCommand {
    /// Add a backend, or take a draining one back into service.
    Add {
        #[command(flatten)]
        backend: BackendArgs,
        /// Its relative share of new flows (default 1).
        #[arg(long)]
        weight: Option<u32>,
        /// Its MAC, like 02:00:00:00:00:01 (default: reached via the gateway).
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Remove a backend: its UDP flows move, its TCP connections are reset
    /// (or kept, with `on_backend_removed = "keep"`).
    Remove {
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Give a backend another weight.
    Weight {
        #[command(flatten)]
        backend: BackendArgs,
        /// The new weight (> 0).
        #[arg(long)]
        weight: u32,
        #[command(flatten)]
        change: ChangeArgs,
    },
    /// Drain a backend: no new flows, its connections go on.
    Drain {
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        change: ChangeArgs,
    },
}

#[derive(clap::Args, Debug)]
struct BackendArgs {
    /// The service's name (`handoff services` lists them).
    #[arg(long)]
    service: String,
    /// The backend's address.
    #[arg(long)]
    address: std::net::IpAddr,
    /// The backend's port.
    #[arg(long)]
    port: u16,
}

#[derive(clap::Args, Debug)]
#[command(group = clap::ArgGroup::new("nodes").required(true).multiple(true).args(["admins", "apis"]))]
struct ChangeArgs {
    /// A node's admin socket; repeat it for several nodes (all validate
    /// the change before any makes it).
    #[arg(long = "admin")]
    admins: Vec<PathBuf>,
    /// A node's HTTP API (`[api] listen`), instead of or beside --admin;
    /// repeat it for several nodes. https:// takes --ca, --cert and --key.
    #[arg(long = "api")]
    apis: Vec<String>,
    #[command(flatten)]
    https: HttpsArgs,
    /// Validate only: change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    output: Output,
}

impl ChangeArgs {
    /// Every node named, sockets first.
    fn nodes(&self) -> Result<Vec<Transport>> {
        if self.https.server_name.is_some() && self.apis.len() > 1 {
            anyhow::bail!(
                "--server-name names one node's certificate: give one --api with it, or name the nodes by the host names their certificates carry"
            );
        }
        let sockets = self.admins.iter().cloned().map(Transport::Socket);
        let apis = self.apis.iter().map(|url| self.https.client(url).map(Transport::Api));
        sockets.map(Ok).chain(apis).collect()
    }
}

/// Makes a policy change on every node of `change`, all validated first.
fn change_policy(change: &ChangeArgs, request: AdminRequest) -> Result<()> {
    let nodes = change.nodes()?;
    let answers = handoff::api::client::change_everywhere(&nodes, &request)?;
    change.output.print(&answers, || {
        nodes
            .iter()
            .zip(&answers)
            .map(|(node, answer)| format!("{node}:\n{}", render::response(answer)))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

#[derive(clap::Args, Debug)]
struct AdminArgs {
    /// The admin socket of the edge or of a node (`admin_socket` in its
    /// configuration).
    #[arg(long, default_value = "/run/handoff/edge.sock")]
    admin: PathBuf,
    /// Use the HTTP API of the edge or of a node instead of the admin
    /// socket (`[api] listen` in its configuration): http://127.0.0.1:9480,
    /// or https://ADDRESS:PORT with --ca, --cert and --key.
    #[arg(long, conflicts_with = "admin")]
    api: Option<String>,
    #[command(flatten)]
    https: HttpsArgs,
    #[command(flatten)]
    output: Output,
}

impl AdminArgs {
    /// The admin socket, or the API when --api is given.
    fn transport(&self) -> Result<Transport> {
        match &self.api {
            Some(url) => Ok(Transport::Api(self.https.client(url)?)),
            None => Ok(Transport::Socket(self.admin.clone())),
        }
    }
}

/// The credentials of an https:// API.
#[derive(clap::Args, Debug)]
struct HttpsArgs {
    /// HTTPS: the cluster CA certificate (`ca.pem` of `handoff keys init`).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// HTTPS: a certificate the cluster CA issued (`handoff keys issue`).
    #[arg(long, requires_all = ["ca", "key"])]
    cert: Option<PathBuf>,
    /// HTTPS: that certificate's key.
    #[arg(long, requires_all = ["ca", "cert"])]
    key: Option<PathBuf>,
    /// HTTPS: the identity the server's certificate must carry when --api
    /// gives its address (manager.handoff.cluster for the edge,
    /// node-ID.handoff.cluster for a node).
    #[arg(long)]
    server_name: Option<String>,
}

impl HttpsArgs {
    /// A client of the API at `url` with these credentials.
    fn client(&self, url: &str) -> Result<ApiClient> {
        let tls = match (&self.ca, &self.cert, &self.key) {
            (Some(ca), Some(cert), Some(key)) => Some(TlsPaths {
                ca: ca.clone(),
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None, None) => None,
            _ => anyhow::bail!("HTTPS needs all of --ca, --cert and --key"),
        };
        ApiClient::new(url, tls.as_ref(), self.server_name.as_deref())
    }
}

#[derive(clap::Args, Debug, Clone, Copy)]
struct Output {
    /// Print machine-readable JSON only (for a daemon command, its answer as the daemon sent it).
    #[arg(long)]
    json: bool,
}

impl Output {
    /// Prints `value` as JSON, or `human()` for a person.
    fn print(self, value: &impl serde::Serialize, human: impl FnOnce() -> String) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            println!("{}", human());
        }
        Ok(())
    }
}

#[derive(Subcommand, Debug)]
enum MemberChange {
    /// Add MEMBER: it may then register, and be put in the scope with
    /// `handoff engage` or `handoff scope add`.
    Add {
        /// Member name (unique).
        member: String,
        /// Its id (unique): the id its node's certificate and node.toml carry.
        #[arg(long)]
        id: u32,
        /// Its fabric MAC address.
        #[arg(long)]
        mac: String,
        /// The edge's interface towards it.
        #[arg(long)]
        interface: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Remove MEMBER: it must be out of the scope (disengage it first) and
    /// its node stopped.
    Remove {
        /// Member name.
        member: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
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
    let response = admin.transport()?.call(&request, Duration::from_secs(35))?;
    if let AdminResponse::Error { message } = &response {
        if admin.output.json {
            println!("{}", serde_json::to_string_pretty(&response)?);
        }
        anyhow::bail!("{message}");
    }
    admin.output.print(&response, || render::response(&response))
}

fn node_of(request: &AdminRequest) -> &str {
    match request {
        AdminRequest::Disengage { node, .. } | AdminRequest::Engage { node } => node,
        _ => "?",
    }
}

/// A migration's live display on a terminal: the phase lines printed
/// above an indicatif bar that shows the current phase and, during the
/// copy, connections copied of the total, bytes and the rate.
fn progress_bar() -> indicatif::ProgressBar {
    // Length 1, position 0: an empty bar until the copy gives a total.
    let bar = indicatif::ProgressBar::new(1);
    // The template is a constant: it parses.
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{spinner} {prefix:<9} [{elapsed_precise}] [{bar:30}] {percent:>3}% {msg}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// Runs a migration through the edge, printing each phase as it starts
/// and a table of the phases at the end (`--json`: every line as sent).
/// On a terminal a progress bar moves with the copy; otherwise the lines
/// within the copy are left out of the human output.
fn migrate(admin: &AdminArgs, request: AdminRequest) -> Result<()> {
    use std::io::IsTerminal;
    let json = admin.output.json;
    let line_json = |response: &AdminResponse| serde_json::to_string(response).map(|line| println!("{line}"));
    let bar = (!json && std::io::stderr().is_terminal()).then(progress_bar);
    let mut view = handoff::progress::MigrationView::default();
    let response = admin
        .transport()?
        .call_with_progress(&request, request.patience(), |line| {
            if json {
                // A line the daemon sent parsed as JSON serializes back.
                let _ = line_json(&AdminResponse::Progress(line.clone()));
                return;
            }
            let event = view.apply(line);
            if event == handoff::progress::Event::PhaseStarted {
                match &bar {
                    Some(bar) => bar.println(render::progress_line(line)),
                    None => println!("{}", render::progress_line(line)),
                }
            }
            if let Some(bar) = &bar {
                bar.set_prefix(view.phase.clone());
                let (done, total) = match (view.copying(), view.copy) {
                    (true, Some(c)) => (c.flows_copied, c.flows_total.max(1)),
                    // Another phase: nothing to count, the bar stays empty.
                    (true, None) | (false, _) => (0, 1),
                };
                bar.set_length(total);
                bar.set_position(done);
                bar.set_message(view.message());
            }
        });
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let response = response?;
    if json {
        line_json(&response)?;
    }
    match response {
        AdminResponse::Done(report) => {
            if !json {
                println!("{}", render::migration_report(node_of(&request), &report));
            }
            Ok(())
        }
        AdminResponse::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}

/// The lab's own binary, beside this one.
const LAB_BINARY: &str = "handoff-lab";

/// Replaces this process with `handoff-lab args...` from this binary's
/// directory; returns only on failure.
fn exec_lab(args: &[std::ffi::OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let me = std::env::current_exe().context("finding the handoff binary")?;
    let lab = me.with_file_name(LAB_BINARY);
    if !lab.exists() {
        anyhow::bail!(
            "{} is missing: `handoff lab` runs {LAB_BINARY} from the directory handoff is in; build it with `cargo build --release -p handoff-testbed --bin {LAB_BINARY}` (make build does) and keep it beside handoff",
            lab.display()
        );
    }
    let error = std::process::Command::new(&lab).args(args).exec();
    Err(error).with_context(|| format!("running {}", lab.display()))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes on one line, without a backtrace: the
            // operator reads what failed and what to do.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        // Colour only on a terminal: daemons log to files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Edge { config } => {
            let config = EdgeConfig::load(&config)?;
            let stop = handoff::shutdown::stop_on_signals()?;
            Edge::start(config)?.run(stop)
        }
        Command::EdgeDetach { config: path, output } => {
            // Detaching needs the pins, not the control plane's keys.
            let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
            let config = EdgeConfig::parse(&text, &path)?;
            let Some(dir) = &config.pin_dir else {
                anyhow::bail!("the configuration sets no edge.pin_dir: nothing is pinned");
            };
            let removed = handoff::edge::detach_pinned(dir, &config.admin_socket)?;
            let report = serde_json::json!({"pin_dir": dir, "links": removed.links, "maps": removed.maps});
            output.print(&report, || {
                format!(
                    "removed the pins in {}: {} links ({}), {} maps",
                    dir.display(),
                    removed.links.len(),
                    render::cell(&report["links"]),
                    removed.maps.len()
                )
            })
        }
        Command::Node { config } => {
            let config = NodeConfig::load(&config)?;
            let stop = handoff::shutdown::stop_on_signals()?;
            Node::start(config, stop)?.run()
        }
        Command::Doctor {
            config,
            interface,
            output,
        } => {
            let report = handoff::doctor::evaluate(&handoff::doctor::gather(config.as_deref(), interface.as_deref()));
            output.print(&report, || render::doctor(&report))?;
            let failed = report
                .checks
                .iter()
                .filter(|c| c.status == handoff::doctor::Status::Fail)
                .count();
            if failed > 0 {
                anyhow::bail!(
                    "{failed} of {} checks failed: see the remedies above",
                    report.checks.len()
                );
            }
            Ok(())
        }
        Command::Lab { args } => exec_lab(&args),
        Command::Disengage { node, inheritor, admin } => migrate(&admin, AdminRequest::Disengage { node, inheritor }),
        Command::Engage { node, admin } => migrate(&admin, AdminRequest::Engage { node }),
        Command::Top {
            nodes,
            interval,
            count,
            admin,
        } => {
            if !(interval.is_finite() && interval > 0.0) {
                anyhow::bail!("--interval {interval}: give a number of seconds above 0, e.g. --interval 1");
            }
            let stop = handoff::shutdown::stop_on_signals()?;
            let mut source = handoff::top::AdminSource {
                edge: admin.admin.clone(),
                nodes,
                timeout: Duration::from_secs(5),
            };
            let live = !admin.output.json && std::io::IsTerminal::is_terminal(&std::io::stdout());
            handoff::top::run(&mut source, Duration::from_secs_f64(interval), count, &stop, |frame| {
                if admin.output.json {
                    println!("{}", serde_json::to_string(frame)?);
                } else if live {
                    // Clear the screen and home the cursor (ANSI), then draw.
                    println!("\x1b[2J\x1b[H{}", render::top_frame(frame));
                } else {
                    println!("{}\n", render::top_frame(frame));
                }
                std::io::Write::flush(&mut std::io::stdout())?;
                Ok(())
            })
        }
        Command::Status(admin) => admin_call(&admin, AdminRequest::Status),
        Command::Services(admin) => admin_call(&admin, AdminRequest::Services),
        Command::Policy {
            change: PolicyCommand::Reload(change),
        } => change_policy(
            &change,
            AdminRequest::PolicyReload {
                dry_run: change.dry_run,
            },
        ),
        Command::Backend { change } => {
            let (request, args) = match change {
                BackendCommand::Add {
                    backend: b,
                    weight,
                    mac,
                    change,
                } => (
                    AdminRequest::BackendAdd {
                        service: b.service,
                        address: b.address,
                        port: b.port,
                        weight,
                        mac,
                        dry_run: change.dry_run,
                    },
                    change,
                ),
                BackendCommand::Remove { backend: b, change } => (
                    AdminRequest::BackendRemove {
                        service: b.service,
                        address: b.address,
                        port: b.port,
                        dry_run: change.dry_run,
                    },
                    change,
                ),
                BackendCommand::Weight {
                    backend: b,
                    weight,
                    change,
                } => (
                    AdminRequest::BackendWeight {
                        service: b.service,
                        address: b.address,
                        port: b.port,
                        weight,
                        dry_run: change.dry_run,
                    },
                    change,
                ),
                BackendCommand::Drain { backend: b, change } => (
                    AdminRequest::BackendDrain {
                        service: b.service,
                        address: b.address,
                        port: b.port,
                        dry_run: change.dry_run,
                    },
                    change,
                ),
            };
            change_policy(&args, request)
        }
        Command::Stats(admin) => admin_call(&admin, AdminRequest::Stats),
        Command::Scope {
            change: ScopeChange::Remove { member, admin },
        } => admin_call(&admin, AdminRequest::ScopeRemove { member }),
        Command::Scope {
            change: ScopeChange::Add { member, admin },
        } => admin_call(&admin, AdminRequest::ScopeAdd { member }),
        Command::Member {
            change:
                MemberChange::Add {
                    member,
                    id,
                    mac,
                    interface,
                    admin,
                },
        } => admin_call(
            &admin,
            AdminRequest::MemberAdd {
                member,
                id,
                mac,
                interface,
            },
        ),
        Command::Member {
            change: MemberChange::Remove { member, admin },
        } => admin_call(&admin, AdminRequest::MemberRemove { member }),
        Command::Keys {
            action: KeysAction::Init { dir, output },
        } => {
            let ca = keys::init(&dir).with_context(|| format!("creating the cluster CA in {}", dir.display()))?;
            output.print(&serde_json::json!({ "ca": ca }), || {
                format!(
                    "created the cluster CA {} (its key beside it, mode 0600); next: handoff keys issue --dir {} --manager, and --node ID for each node",
                    ca.display(),
                    dir.display()
                )
            })
        }
        Command::Keys {
            action:
                KeysAction::Issue {
                    dir,
                    node,
                    manager,
                    output,
                },
        } => {
            let party = match (node, manager) {
                (Some(id), false) => Party::Node(id),
                _ => Party::Manager,
            };
            let paths = keys::issue(&dir, party).with_context(|| {
                format!(
                    "issuing {}'s certificate with the CA in {}",
                    party.name(),
                    dir.display()
                )
            })?;
            output.print(
                &serde_json::json!({"ca": paths.ca, "cert": paths.cert, "key": paths.key}),
                || {
                    format!(
                        "[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}",
                        paths.ca.display().to_string(),
                        paths.cert.display().to_string(),
                        paths.key.display().to_string()
                    )
                },
            )
        }
    }
}
