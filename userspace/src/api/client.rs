//! The CLI's transports to a daemon: its admin socket, or its HTTP API
//! (`ureq`, blocking, over rustls with the cluster's credentials for HTTPS).

use super::{NDJSON, PREFIX};
use crate::{
    admin::{self, AdminRequest, AdminResponse},
    control::tls::{self, TlsPaths},
};
use anyhow::{bail, Context, Result};
use std::{
    io::{BufRead, BufReader, Read},
    net::{SocketAddr, ToSocketAddrs},
    path::PathBuf,
    time::Duration,
};

/// Longest answer read, in bytes (the admin socket's client reads as much).
const MAX_ANSWER: u64 = 64 * 1024 * 1024;
/// Time to connect (and, over HTTPS, to shake hands).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the CLI reaches a daemon.
#[derive(Debug)]
pub enum Transport {
    /// The admin socket at this path.
    Socket(PathBuf),
    /// The HTTP API.
    Api(ApiClient),
}

impl Transport {
    /// Sends `request` and returns the final response, handing each
    /// progress line to `progress`. `timeout` bounds each line (each read).
    pub fn call_with_progress(
        &self,
        request: &AdminRequest,
        timeout: Duration,
        progress: impl FnMut(&serde_json::Value),
    ) -> Result<AdminResponse> {
        match self {
            Self::Socket(path) => admin::call_with_progress(path, request, timeout, progress),
            Self::Api(client) => client.call_with_progress(request, timeout, progress),
        }
    }

    /// Sends `request` and returns its response.
    pub fn call(&self, request: &AdminRequest, timeout: Duration) -> Result<AdminResponse> {
        self.call_with_progress(request, timeout, |_| {})
    }
}

impl std::fmt::Display for Transport {
    /// The socket's path or the API's `scheme://host:port`: how errors name a node.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Socket(path) => write!(f, "{}", path.display()),
            Self::Api(client) => f.write_str(&client.base),
        }
    }
}

/// Makes the policy change `request` on every node in `nodes` (admin
/// sockets or APIs, mixed), all or none: first a dry run on each (every
/// node validates it against its own policy), then, if all accept, the
/// change on each in turn. Returns each node's answer to the change, in
/// order.
///
/// # Errors
/// The first node that cannot be reached or refuses the dry run, named,
/// with nothing changed anywhere; a node that fails the change itself
/// after the dry run passed, named, with the nodes before it changed.
pub fn change_everywhere(nodes: &[Transport], request: &AdminRequest) -> Result<Vec<AdminResponse>> {
    let Some(dry_run) = request.as_dry_run() else {
        bail!("{request:?} changes no policy");
    };
    let timeout = request.patience();
    let mut validated = Vec::with_capacity(nodes.len());
    for node in nodes {
        match node.call(&dry_run, timeout)? {
            // The node's message says what was refused and why.
            AdminResponse::Error { message } => bail!("{node}: {message} (no node was changed)"),
            answer => validated.push(answer),
        }
    }
    if request == &dry_run {
        return Ok(validated);
    }
    let mut answers = Vec::with_capacity(nodes.len());
    for (i, node) in nodes.iter().enumerate() {
        match node.call(request, timeout)? {
            AdminResponse::Error { message } => bail!(
                "{node} failed the change after validating it ({i} of {} nodes changed before it; run the \
                 change again, or undo it on them): {message}",
                nodes.len()
            ),
            answer => answers.push(answer),
        }
    }
    Ok(answers)
}

/// A client of one daemon's HTTP API.
#[derive(Debug)]
pub struct ApiClient {
    agent: ureq::Agent,
    /// `scheme://host:port`, without a trailing slash.
    base: String,
}

/// The parts of an API URL: `http(s)://host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Base {
    https: bool,
    host: String,
    port: u16,
}

fn parse_base(url: &str) -> Result<Base> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("{url:?}: give the API as http://HOST:PORT or https://HOST:PORT");
    };
    let authority = rest.trim_end_matches('/');
    if authority.contains('/') || authority.contains('@') {
        bail!("{url:?}: give the API's address only (http(s)://HOST:PORT), no path");
    }
    let (host, port) = authority
        .rsplit_once(':')
        .with_context(|| format!("{url:?}: give the port (e.g. :9480)"))?;
    let port = port
        .parse()
        .with_context(|| format!("{url:?}: {port:?} is not a port"))?;
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    Ok(Base {
        https,
        host: host.to_string(),
        port,
    })
}

impl ApiClient {
    /// A client of the API at `url` (`http://127.0.0.1:9480`, or
    /// `https://...` with `tls`: the cluster CA the server's certificate
    /// must chain to, and the client's certificate and key). `server_name`
    /// is the identity the server's certificate must carry
    /// (`manager.handoff.cluster`, `node-3.handoff.cluster`) when the URL
    /// names the server by its address: the connection still goes to that
    /// address.
    ///
    /// Errors: a malformed URL; `https` without `tls` or the reverse; TLS
    /// files that cannot be read.
    pub fn new(url: &str, tls: Option<&TlsPaths>, server_name: Option<&str>) -> Result<Self> {
        let base = parse_base(url)?;
        let mut builder = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .redirects(0)
            .user_agent(concat!("handoff/", env!("CARGO_PKG_VERSION")));
        let mut host = base.host.clone();
        match (base.https, tls) {
            (true, Some(paths)) => {
                let config = tls::client_config(paths).context("loading the TLS files for the API")?;
                builder = builder.tls_config(config);
                if let Some(name) = server_name {
                    // Connect to the URL's address, verify the certificate for `name`.
                    let target: Vec<SocketAddr> = (base.host.trim_matches(['[', ']']), base.port)
                        .to_socket_addrs()
                        .with_context(|| format!("resolving {}", base.host))?
                        .collect();
                    let wanted = format!("{name}:{}", base.port);
                    builder = builder.resolver(move |netloc: &str| {
                        if netloc == wanted {
                            Ok(target.clone())
                        } else {
                            netloc.to_socket_addrs().map(Iterator::collect)
                        }
                    });
                    host = name.to_string();
                }
            }
            (true, None) => {
                bail!("{url} is HTTPS: give the cluster CA and a certificate it issued with --ca, --cert and --key")
            }
            (false, Some(_)) => bail!("{url} is plain HTTP: --ca, --cert and --key are for https:// only"),
            (false, None) => {}
        }
        let scheme = if base.https { "https" } else { "http" };
        Ok(Self {
            agent: builder.build(),
            base: format!("{scheme}://{host}:{}", base.port),
        })
    }

    /// Sends `request` (`POST /v1/<cmd>` with its fields) and returns the
    /// final response, handing each progress line to `progress`.
    pub fn call_with_progress(
        &self,
        request: &AdminRequest,
        timeout: Duration,
        mut progress: impl FnMut(&serde_json::Value),
    ) -> Result<AdminResponse> {
        let mut fields = match serde_json::to_value(request)? {
            serde_json::Value::Object(fields) => fields,
            other => bail!("a request serialized as {other}"),
        };
        let cmd = fields
            .remove("cmd")
            .and_then(|c| c.as_str().map(str::to_string))
            .context("a request without its cmd")?;
        let url = format!("{}{PREFIX}{cmd}", self.base);
        let sent = self
            .agent
            .post(&url)
            .timeout(timeout + CONNECT_TIMEOUT)
            .set("Accept", NDJSON)
            .set("Content-Type", crate::http::JSON)
            .send_string(&serde_json::Value::Object(fields).to_string());
        let response = match sent {
            Ok(response) => response,
            Err(ureq::Error::Status(status, response)) => {
                let mut body = String::new();
                let _ = response.into_reader().take(MAX_ANSWER).read_to_string(&mut body);
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or_else(|| format!("HTTP {status}: {}", body.trim()));
                return Ok(AdminResponse::Error { message });
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "cannot reach the API at {}: is the daemon's [api] listen this address, and (HTTPS) are --ca, --cert and --key the cluster's?",
                    self.base
                )))
            }
        };
        let mut reader = BufReader::new(response.into_reader().take(MAX_ANSWER));
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).context("reading the API's answer")? == 0 {
                bail!("the API closed the connection without an answer");
            }
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str(line.trim()).with_context(|| format!("malformed answer {line:?}"))? {
                AdminResponse::Progress(p) => progress(&p),
                last => return Ok(last),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_urls_are_checked() {
        assert_eq!(
            parse_base("https://10.0.0.1:9480/").unwrap(),
            Base {
                https: true,
                host: "10.0.0.1".into(),
                port: 9480
            }
        );
        assert_eq!(parse_base("http://[::1]:80").unwrap().host, "[::1]");
        for bad in [
            "10.0.0.1:9480",
            "ftp://x:1",
            "http://x",
            "http://x:1/v1/status",
            "http://:1",
        ] {
            assert!(parse_base(bad).is_err(), "{bad}");
        }
        let e = ApiClient::new("https://127.0.0.1:9480", None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--ca, --cert and --key"), "{e}");
    }
}
