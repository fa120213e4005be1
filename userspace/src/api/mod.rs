//! The HTTP/JSON API of the edge and of every node: the admin socket's
//! verbs over HTTP (`[api] listen = "127.0.0.1:9480"`), described by
//! `docs/openapi.yaml`.
//!
//! Routes are generic over [`AdminRequest`]: `POST /v1/<cmd>` with a JSON
//! object of the request's other fields as its body (none: an empty body
//! or `{}`), and `GET /v1/<cmd>` for a request that only reads
//! ([`AdminRequest::is_read_only`]: `status`, `stats`). A new verb is served
//! as soon as the enum has it. The answer is the admin socket's response
//! object (`{"result": "status", ...}`), with status 200. A migration
//! (`disengage`, `engage`) streams its `progress` lines and then its `done`
//! line as `application/x-ndjson` (chunked), unless the client accepts only
//! `application/json`: then it gets the last line alone. Errors carry a
//! JSON body `{"error": "..."}`: 400 (a malformed body or a missing
//! field), 404 (no such verb), 405 (`GET` of a verb that changes
//! something), 409 (the daemon refused the request: the message says why
//! and what to do), 413 (a body over [`MAX_BODY`]), 503 (the daemon is
//! stopping), 504 (no answer within the verb's patience). A migration that
//! fails after its first progress line ends its stream with an `error`
//! line.
//!
//! Security: a listener on a loopback address serves plain HTTP, as the
//! admin socket is local only. Any other address is refused at
//! configuration load unless the file has a `[tls]` section, and is then
//! served over HTTPS with the daemon's certificate, requiring a client
//! certificate issued by the cluster CA (the control plane's credentials,
//! `handoff keys issue`).

pub mod client;

use crate::{
    admin::{AdminCall, AdminRequest, AdminResponse},
    control::tls::TlsIdentity,
    http::{self, Handler, Limits, Responder},
};
use anyhow::{bail, Result};
use crossbeam::channel::{unbounded, Sender};
use std::{
    net::SocketAddr,
    sync::{atomic::AtomicBool, Arc},
    time::Duration,
};
use strum::VariantNames;

/// The path prefix of every route.
pub const PREFIX: &str = "/v1/";
/// Content type of a migration's streamed lines (one JSON object a line).
pub const NDJSON: &str = "application/x-ndjson";
/// Threads serving requests: requests served at once. A migration holds
/// one for its whole run; the others answer `status` meanwhile.
pub const API_THREADS: usize = 4;
/// Longest request body accepted, in bytes (the admin socket's line limit).
pub const MAX_BODY: usize = 64 * 1024;
/// Longest request head, in bytes.
pub const MAX_HEAD: usize = 8 * 1024;
/// Time a client has to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Time each write of a response may take.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

const LIMITS: Limits = Limits {
    threads: API_THREADS,
    max_head: MAX_HEAD,
    max_body: MAX_BODY,
    request_timeout: REQUEST_TIMEOUT,
    write_timeout: WRITE_TIMEOUT,
};

/// The `[api]` section of `edge.toml` and `node.toml`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub(crate) listen: String,
}

/// Checks an `[api] listen` value: an `address:port` with a port other
/// than 0, on a loopback address unless `tls` (the file has a `[tls]`
/// section). The error says what to do, for the configuration's message.
pub fn parse_listen(listen: &str, tls: bool) -> Result<SocketAddr, String> {
    let address = crate::metrics::parse_listen(listen)?;
    if !address.ip().is_loopback() && !tls {
        return Err(format!(
            "{listen:?} is not a loopback address: the API there needs the cluster's credentials; add a [tls] section (`handoff keys issue`) to serve HTTPS with client certificates, or listen on 127.0.0.1"
        ));
    }
    Ok(address)
}

/// Whether a listener on `listen` serves HTTPS.
pub fn is_https(listen: SocketAddr) -> bool {
    !listen.ip().is_loopback()
}

/// Serves the API on `listen` until `stop` is set, handing each request to
/// `calls` as the admin socket does. A non-loopback `listen` is served over
/// HTTPS with `tls` and client-certificate authentication.
///
/// Errors: a non-loopback `listen` without `tls`; binding `listen` failed.
pub fn serve(
    listen: SocketAddr,
    tls: Option<TlsIdentity>,
    calls: Sender<AdminCall>,
    stop: Arc<AtomicBool>,
) -> Result<http::Server> {
    let tls = match (is_https(listen), tls) {
        (false, _) => None,
        (true, Some(tls)) => Some(tls),
        (true, None) => bail!("the API on {listen} (not loopback) needs a [tls] section"),
    };
    let handler: Handler = Arc::new(
        move |request: &http::Request, responder: Responder<'_>| match route(request) {
            Ok(call) => answer(call, &calls, wants_stream(request.header("accept")), responder),
            Err((status, message, extra)) => {
                responder.send(status, http::JSON, &extra, http::error_body(&message).as_bytes())
            }
        },
    );
    http::serve("api", listen, tls, LIMITS, handler, stop)
}

/// A refusal: status, message, extra headers.
type Refusal = (u16, String, Vec<String>);

/// The admin request an HTTP request asks for, or why it is refused.
fn route(request: &http::Request) -> Result<AdminRequest, Refusal> {
    let refuse = |status: u16, message: String| (status, message, Vec::new());
    let Some(cmd) = request.path.strip_prefix(PREFIX) else {
        return Err(refuse(
            404,
            format!("no route {}: the API's paths are {PREFIX}<command>", request.path),
        ));
    };
    if !AdminRequest::VARIANTS.contains(&cmd) {
        return Err(refuse(
            404,
            format!(
                "no command {cmd:?}: the commands are {}",
                AdminRequest::VARIANTS.join(", ")
            ),
        ));
    }
    let fields = match request.method.as_str() {
        "GET" => serde_json::Map::new(),
        "POST" => {
            let body = std::str::from_utf8(&request.body).unwrap_or("\u{fffd}");
            if body.trim().is_empty() {
                serde_json::Map::new()
            } else {
                match serde_json::from_str::<serde_json::Value>(body) {
                    Ok(serde_json::Value::Object(fields)) => fields,
                    Ok(_) => {
                        return Err(refuse(
                            400,
                            "the body must be a JSON object of the request's fields".into(),
                        ))
                    }
                    Err(e) => return Err(refuse(400, format!("the body is not JSON: {e}"))),
                }
            }
        }
        other => {
            return Err((
                405,
                format!("{other} is not served: use GET or POST"),
                vec!["Allow: GET, POST".into()],
            ))
        }
    };
    if fields.contains_key("cmd") {
        return Err(refuse(400, "the command is in the path, not in the body".into()));
    }
    let mut object = fields;
    object.insert("cmd".into(), cmd.into());
    let parsed = serde_json::from_value::<AdminRequest>(serde_json::Value::Object(object));
    if request.method == "GET" {
        return match parsed {
            Ok(call) if call.is_read_only() => Ok(call),
            _ => Err((
                405,
                format!("{cmd} changes the daemon's state: POST {PREFIX}{cmd} with a JSON body of its fields"),
                vec!["Allow: POST".into()],
            )),
        };
    }
    parsed.map_err(|e| refuse(400, format!("malformed {cmd} request: {e}")))
}

/// Whether the client takes a migration's lines as they come: unless its
/// `Accept` names `application/json` and not [`NDJSON`].
fn wants_stream(accept: Option<&str>) -> bool {
    accept.is_none_or(|a| a.contains(NDJSON) || !a.contains(http::JSON))
}

/// The HTTP status of a final response.
fn status_of(response: &AdminResponse) -> u16 {
    match response {
        AdminResponse::Error { .. } => 409,
        _ => 200,
    }
}

/// Hands `call` to the daemon and writes its answer.
fn answer(
    call: AdminRequest,
    calls: &Sender<AdminCall>,
    stream: bool,
    responder: Responder<'_>,
) -> std::io::Result<()> {
    let patience = call.patience();
    let (tx, rx) = unbounded();
    if calls.send((call, tx)).is_err() {
        return responder.error(503, "the daemon is shutting down");
    }
    let next = || rx.recv_timeout(patience).ok();
    let Some(first) = next() else {
        return responder.error(504, &format!("the daemon did not answer within {patience:?}"));
    };
    let line = |response: &AdminResponse| {
        let mut text = serde_json::to_string(response).unwrap_or_default();
        text.push('\n');
        text
    };
    if !matches!(first, AdminResponse::Progress(_)) {
        return finish(first, responder);
    }
    if !stream {
        let mut last = first;
        while matches!(last, AdminResponse::Progress(_)) {
            last = next().unwrap_or(AdminResponse::Error {
                message: format!("the daemon did not answer within {patience:?}"),
            });
        }
        return finish(last, responder);
    }
    let mut body = responder.stream(200, NDJSON)?;
    let mut response = first;
    loop {
        body.chunk(line(&response).as_bytes())?;
        if !matches!(response, AdminResponse::Progress(_)) {
            return body.finish();
        }
        response = next().unwrap_or(AdminResponse::Error {
            message: format!("the daemon sent nothing for {patience:?}"),
        });
    }
}

/// Writes a final response: the response object, or `{"error"}` with its status.
fn finish(response: AdminResponse, responder: Responder<'_>) -> std::io::Result<()> {
    match &response {
        AdminResponse::Error { message } => responder.error(status_of(&response), message),
        _ => {
            let mut body = serde_json::to_string(&response).unwrap_or_default();
            body.push('\n');
            responder.send(200, http::JSON, &[], body.as_bytes())
        }
    }
}

#[cfg(test)]
mod tests;
