//! The edge daemon's admin socket: a Unix socket speaking JSON lines, one
//! request and one response per line. Operators reach it through the
//! `handoff` CLI; a Unix socket because it is local-only by construction and
//! works across network namespaces.

use crate::flow::edit::{BackendRef, PolicyEdit};
use anyhow::{bail, Context, Result};
use crossbeam::channel::{unbounded, Sender};
use serde::{Deserialize, Serialize};
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::IpAddr,
    os::unix::{
        fs::PermissionsExt,
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

/// The admin socket's mode: read and write for its owner only.
pub const ADMIN_SOCKET_MODE: u32 = 0o600;

/// Longest request line accepted.
const MAX_LINE: u64 = 64 * 1024;

/// A request. `AdminRequest::VARIANTS` (strum) lists every `cmd`, as serde
/// names them: the HTTP API's routes ([`crate::api`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, strum::VariantNames)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
#[strum(serialize_all = "snake_case")]
pub enum AdminRequest {
    /// Members and scope.
    Status,
    /// Data-plane counters.
    Stats,
    /// Flip the scope without `member` (no state migration: its flows break).
    ScopeRemove {
        /// Member name.
        member: String,
    },
    /// Flip the scope with `member` added back.
    ScopeAdd {
        /// Member name.
        member: String,
    },
    /// (Edge) Take `node` out of service with its connections: the manager
    /// runs the migration (select, copy, broadcast, flip, drain, purge).
    Disengage {
        /// Node name.
        node: String,
        /// `auto` or `spread` (its buckets spread as the next scope assigns
        /// them), `least-flows`, or a member's name.
        #[serde(default = "auto")]
        inheritor: String,
    },
    /// (Edge) Put `node` back into the scope.
    Engage {
        /// Node name.
        node: String,
    },
    /// (Edge) Add a member: it may then register, and be put into the
    /// scope with `scope_add` or `engage`. Not written to the edge's file;
    /// the nodes' files must list it (nodes find their peers there).
    MemberAdd {
        /// Its name (unique), e.g. `fd-d`.
        member: String,
        /// Its id (unique, below the edge's member limit): the value in
        /// scope tables, and the `--node` of its certificate.
        id: u32,
        /// Its fabric MAC address, `aa:bb:cc:dd:ee:ff`.
        mac: String,
        /// The edge's interface towards it.
        interface: String,
    },
    /// (Edge) Remove a member that is out of the scope and not connected.
    MemberRemove {
        /// Member name.
        member: String,
    },
    /// (Node) The services: backends, weights, states (`active`,
    /// `draining`), table shares, and the backends removed live.
    Services,
    /// (Node) Re-read the policy file and apply it (as SIGHUP does). The
    /// file is the source of truth: live backend changes not written to it
    /// are undone.
    PolicyReload {
        /// Validate only: change nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// (Node) Add a backend to a service, or take a draining one back.
    BackendAdd {
        /// The service's name.
        service: String,
        /// The backend's address.
        address: IpAddr,
        /// The backend's port.
        port: u16,
        /// Its weight (default 1).
        #[serde(default)]
        weight: Option<u32>,
        /// Its MAC (default: reached via the gateway).
        #[serde(default)]
        mac: Option<String>,
        /// Validate only: change nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// (Node) Remove a backend: new flows never go there, its UDP flows
    /// move, its TCP connections are reset or kept (`on_backend_removed`).
    BackendRemove {
        /// The service's name.
        service: String,
        /// The backend's address.
        address: IpAddr,
        /// The backend's port.
        port: u16,
        /// Validate only: change nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// (Node) Give a backend another weight.
    BackendWeight {
        /// The service's name.
        service: String,
        /// The backend's address.
        address: IpAddr,
        /// The backend's port.
        port: u16,
        /// The weight (> 0).
        weight: u32,
        /// Validate only: change nothing.
        #[serde(default)]
        dry_run: bool,
    },
    /// (Node) Drain a backend: no new flows, its connections go on.
    BackendDrain {
        /// The service's name.
        service: String,
        /// The backend's address.
        address: IpAddr,
        /// The backend's port.
        port: u16,
        /// Validate only: change nothing.
        #[serde(default)]
        dry_run: bool,
    },
}

impl AdminRequest {
    /// The backend change this request asks for, and whether it is a dry
    /// run; `None` for any other request.
    pub fn policy_edit(&self) -> Option<(PolicyEdit, bool)> {
        let backend = |service: &String, address: &IpAddr, port: &u16| BackendRef {
            service: service.clone(),
            address: *address,
            port: *port,
        };
        Some(match self {
            Self::BackendAdd {
                service,
                address,
                port,
                weight,
                mac,
                dry_run,
            } => (
                PolicyEdit::Add {
                    backend: backend(service, address, port),
                    weight: *weight,
                    mac: mac.clone(),
                },
                *dry_run,
            ),
            Self::BackendRemove {
                service,
                address,
                port,
                dry_run,
            } => (PolicyEdit::Remove(backend(service, address, port)), *dry_run),
            Self::BackendWeight {
                service,
                address,
                port,
                weight,
                dry_run,
            } => (
                PolicyEdit::Weight {
                    backend: backend(service, address, port),
                    weight: *weight,
                },
                *dry_run,
            ),
            Self::BackendDrain {
                service,
                address,
                port,
                dry_run,
            } => (PolicyEdit::Drain(backend(service, address, port)), *dry_run),
            _ => return None,
        })
    }

    /// This request as a dry run (a validation), if it changes the policy.
    pub fn as_dry_run(&self) -> Option<Self> {
        let mut request = self.clone();
        match &mut request {
            Self::PolicyReload { dry_run }
            | Self::BackendAdd { dry_run, .. }
            | Self::BackendRemove { dry_run, .. }
            | Self::BackendWeight { dry_run, .. }
            | Self::BackendDrain { dry_run, .. } => *dry_run = true,
            _ => return None,
        }
        Some(request)
    }
}

fn auto() -> String {
    "auto".into()
}

impl AdminRequest {
    /// Whether the request only reads (the HTTP API serves it on `GET`
    /// too); a request that changes something is `POST` only.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Self::Status | Self::Stats | Self::Services)
    }

    /// How long the caller waits for each response line: a migration reports
    /// every phase as it starts, and ends by its own deadline.
    pub fn patience(&self) -> Duration {
        match self {
            Self::Disengage { .. } | Self::Engage { .. } => Duration::from_secs(600),
            _ => Duration::from_secs(30),
        }
    }
}

/// A response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AdminResponse {
    /// Answer to [`AdminRequest::Status`].
    Status(serde_json::Value),
    /// Answer to [`AdminRequest::Stats`].
    Stats(serde_json::Value),
    /// The scope changed.
    ScopeChanged {
        /// New scope version.
        version: u64,
        /// Buckets that changed owner.
        moved_buckets: usize,
        /// Active generation after the flip.
        generation: u32,
    },
    /// A member was added or removed (answer to [`AdminRequest::MemberAdd`]
    /// and [`AdminRequest::MemberRemove`]).
    MemberChanged {
        /// Member name.
        member: String,
        /// Its id.
        id: u32,
        /// `added` or `removed`.
        change: String,
    },
    /// A migration entered a phase (`{"phase", "at_ms", "detail"}`), or
    /// its copy moved on (`{"phase": "Copy", "at_ms", "progress": {...}}`,
    /// see `edge::driver::copy_progress`); more lines follow.
    Progress(serde_json::Value),
    /// A migration finished; what it did.
    Done(serde_json::Value),
    /// Answer to [`AdminRequest::Services`].
    Services(serde_json::Value),
    /// A policy change was validated (`dry_run`) or adopted by every
    /// worker: what changed and the services after it.
    PolicyChanged(serde_json::Value),
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// A request with the channel its response goes back on.
pub type AdminCall = (AdminRequest, Sender<AdminResponse>);

/// Serves the admin socket at `path` (mode [`ADMIN_SOCKET_MODE`], owned by
/// the daemon's user) on a background thread, handing each request to
/// `calls` and writing back the response. Removes a stale socket file
/// first; the returned guard removes the socket when dropped.
pub fn serve(path: &Path, calls: Sender<AdminCall>, stop: Arc<AtomicBool>) -> Result<AdminSocket> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("{} is in use by a running daemon", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("binding admin socket {}", path.display()))?;
    // Only the daemon's user (root) may connect: the socket disengages nodes.
    // Nothing is accepted before the mode is set.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(ADMIN_SOCKET_MODE))
        .with_context(|| format!("restricting admin socket {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let thread_stop = Arc::clone(&stop);
    std::thread::Builder::new().name("admin".into()).spawn(move || {
        while !thread_stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => {
                    // A connection each: a migration's caller waits minutes
                    // while others ask for status (and get "busy").
                    let calls = calls.clone();
                    let spawned = std::thread::Builder::new().name("admin-call".into()).spawn(move || {
                        if let Err(e) = handle(stream, &calls) {
                            tracing::warn!(error = %e, "admin connection");
                        }
                    });
                    if let Err(e) = spawned {
                        tracing::warn!(error = %e, "cannot serve an admin connection");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })?;
    Ok(AdminSocket {
        path: path.to_path_buf(),
    })
}

/// Removes the socket file on drop.
#[derive(Debug)]
pub struct AdminSocket {
    path: PathBuf,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn handle(stream: UnixStream, calls: &Sender<AdminCall>) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_LINE)).read_line(&mut line)?;
    let write = |response: &AdminResponse| -> Result<()> {
        let mut out = serde_json::to_string(response)?;
        out.push('\n');
        (&stream).write_all(out.as_bytes())?;
        Ok(())
    };
    let request = match serde_json::from_str::<AdminRequest>(line.trim()) {
        Ok(request) => request,
        Err(e) => {
            return write(&AdminResponse::Error {
                message: format!("malformed request: {e}"),
            })
        }
    };
    let patience = request.patience();
    let (tx, rx) = unbounded();
    if calls.send((request, tx)).is_err() {
        return write(&AdminResponse::Error {
            message: "the daemon is shutting down".into(),
        });
    }
    loop {
        let response = rx.recv_timeout(patience).unwrap_or(AdminResponse::Error {
            message: "the daemon did not answer in time".into(),
        });
        // The caller may have gone; the daemon's work goes on regardless.
        let _ = write(&response);
        if !matches!(response, AdminResponse::Progress(_)) {
            return Ok(());
        }
    }
}

/// Sends one request to the daemon at `path` and returns its response.
pub fn call(path: &Path, request: &AdminRequest, timeout: Duration) -> Result<AdminResponse> {
    call_with_progress(path, request, timeout, |_| {})
}

/// Sends one request and returns its final response, handing every
/// progress line to `progress` as it arrives. `timeout` bounds each line.
pub fn call_with_progress(
    path: &Path,
    request: &AdminRequest,
    timeout: Duration,
    mut progress: impl FnMut(&serde_json::Value),
) -> Result<AdminResponse> {
    let stream = UnixStream::connect(path).map_err(|e| unreachable(path, e))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(request)?;
    line.push('\n');
    (&stream).write_all(line.as_bytes())?;
    let mut reader = BufReader::new((&stream).take(64 * 1024 * 1024));
    loop {
        let mut reply = String::new();
        if reader.read_line(&mut reply).context("reading the response")? == 0 {
            bail!("the daemon closed the connection without an answer");
        }
        match serde_json::from_str(reply.trim()).with_context(|| format!("malformed response {reply:?}"))? {
            AdminResponse::Progress(line) => progress(&line),
            last => return Ok(last),
        }
    }
}

/// Why the daemon at `path` cannot be reached, and what to do about it.
fn unreachable(path: &Path, error: std::io::Error) -> anyhow::Error {
    let at = path.display();
    let start = "with `handoff edge --config edge.toml` (or `handoff node --config node.toml`), \
                 or pass --admin with the admin_socket its configuration names";
    let what = match error.kind() {
        std::io::ErrorKind::NotFound => format!("no admin socket at {at}: is the daemon running? Start it {start}"),
        std::io::ErrorKind::ConnectionRefused => {
            format!("nothing answers on {at} (the daemon that made it has stopped): start it {start}")
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "not allowed to connect to {at}: the admin socket is mode {ADMIN_SOCKET_MODE:o}, for the daemon's user \
             only; run this as that user (root, e.g. with sudo)"
        ),
        _ => format!("cannot connect to the admin socket {at}; check --admin and that the daemon runs"),
    };
    anyhow::Error::new(error).context(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_changes_read_with_defaults_and_turn_into_dry_runs() {
        let line = r#"{"cmd":"backend_add","service":"web","address":"10.1.0.1","port":8080}"#;
        let request: AdminRequest = serde_json::from_str(line).unwrap();
        let (edit, dry_run) = request.policy_edit().unwrap();
        assert!(!dry_run);
        assert_eq!(
            edit,
            PolicyEdit::Add {
                backend: BackendRef {
                    service: "web".into(),
                    address: "10.1.0.1".parse().unwrap(),
                    port: 8080
                },
                weight: None,
                mac: None
            }
        );
        assert!(request.as_dry_run().unwrap().policy_edit().unwrap().1);
        assert_eq!(
            AdminRequest::PolicyReload { dry_run: false }.as_dry_run(),
            Some(AdminRequest::PolicyReload { dry_run: true })
        );
        assert_eq!(AdminRequest::Status.as_dry_run(), None);
        let typo = r#"{"cmd":"backend_drain","service":"web","address":"10.1.0.1","port":8080,"dryrun":true}"#;
        assert!(
            serde_json::from_str::<AdminRequest>(typo).is_err(),
            "unknown fields are refused"
        );
    }

    #[test]
    fn requests_round_trip_and_malformed_ones_get_an_error() {
        let dir = std::env::temp_dir().join(format!("handoff-admin-test-{}", std::process::id()));
        let path = dir.join("a.sock");
        let (tx, rx) = crossbeam::channel::unbounded::<AdminCall>();
        let stop = Arc::new(AtomicBool::new(false));
        let _socket = serve(&path, tx, Arc::clone(&stop)).unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(metadata.permissions().mode() & 0o777, ADMIN_SOCKET_MODE);
        assert_eq!(
            std::os::unix::fs::MetadataExt::uid(&metadata),
            // SAFETY: getuid has no preconditions and cannot fail.
            unsafe { libc::getuid() },
            "owned by the daemon's user"
        );
        let server = std::thread::spawn(move || {
            let (req, reply) = rx.recv().unwrap();
            assert_eq!(req, AdminRequest::ScopeRemove { member: "fd-a".into() });
            reply
                .send(AdminResponse::ScopeChanged {
                    version: 2,
                    moved_buckets: 10,
                    generation: 1,
                })
                .unwrap();
        });
        let r = call(
            &path,
            &AdminRequest::ScopeRemove { member: "fd-a".into() },
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(
            r,
            AdminResponse::ScopeChanged {
                version: 2,
                moved_buckets: 10,
                generation: 1
            }
        );
        server.join().unwrap();
        let stream = UnixStream::connect(&path).unwrap();
        (&stream).write_all(b"{\"cmd\":\"nope\"}\n").unwrap();
        let mut reply = String::new();
        BufReader::new(&stream).read_line(&mut reply).unwrap();
        assert!(reply.contains("malformed request"), "{reply}");
        // An operator who names no running daemon is told what to do.
        let missing = call(&dir.join("none.sock"), &AdminRequest::Status, Duration::from_secs(1)).unwrap_err();
        let missing = format!("{missing:#}");
        assert!(
            missing.contains("is the daemon running?")
                && missing.contains("handoff edge --config")
                && missing.contains("--admin"),
            "{missing}"
        );
        // A second daemon on the same socket is refused.
        let (tx2, _rx2) = crossbeam::channel::unbounded::<AdminCall>();
        assert!(serve(&path, tx2, Arc::clone(&stop)).is_err());
        stop.store(true, Ordering::Relaxed);
    }
}
