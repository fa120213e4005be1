//! The daemons' HTTP/1.1 server, shared by the Prometheus listener
//! ([`crate::metrics`]) and the HTTP API ([`crate::api`]).
//!
//! `std::net::TcpListener`, a fixed number of threads and `httparse` for
//! the request head. Not hyper or axum: both need an async runtime (tokio)
//! in the packet process for a few requests a minute, and `tiny_http`
//! starts a thread per waiting connection without a bound. Here at most
//! [`Limits::threads`] connections are served at once (others wait in the
//! kernel's backlog), a request head is at most [`Limits::max_head`] bytes
//! and a body at most [`Limits::max_body`] (sent with a `Content-Length`),
//! both within [`Limits::request_timeout`]; every write has
//! [`Limits::write_timeout`]. One request per connection (`Connection:
//! close`).
//!
//! With a [`TlsIdentity`] the listener speaks HTTPS (RFC 9110 over TLS)
//! and requires a client certificate issued by the cluster CA: the
//! handshake fails for a client without one.
//!
//! Refusals the server makes itself (a malformed head: 400, too slow: 408,
//! a body without a length: 411, too large: 413 or 431) carry a JSON body
//! `{"error": "..."}`.

use crate::control::tls::{SecureStream, TlsIdentity};
use anyhow::{Context, Result};
use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// How often an idle listener thread looks at the stop flag.
const ACCEPT_POLL: Duration = Duration::from_millis(50);
/// After a response: unread request bytes read and discarded at most, and
/// for how long.
const MAX_DRAIN: u64 = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_millis(200);
/// Headers parsed at most in a request.
const MAX_HEADERS: usize = 32;
/// Content type of JSON bodies.
pub const JSON: &str = "application/json";

/// A listener's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Threads serving connections: connections served at once.
    pub threads: usize,
    /// Longest request head (request line and headers), in bytes.
    pub max_head: usize,
    /// Longest request body, in bytes (0: none accepted).
    pub max_body: usize,
    /// Time a client has to send its head and body (and, over TLS, that
    /// the handshake may take on top).
    pub request_timeout: Duration,
    /// Time each write of the response may take.
    pub write_timeout: Duration,
}

/// A connection the server answers on: plain TCP or TLS over it.
pub trait Connection: Read + Write + Send {
    /// The socket underneath, for timeouts and shutdown.
    fn socket(&self) -> &TcpStream;
    /// Ends the session's sending side cleanly (TLS: a `close_notify`).
    fn close(&mut self) -> io::Result<()>;
}

impl Connection for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }

    fn close(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Connection for SecureStream {
    fn socket(&self) -> &TcpStream {
        SecureStream::socket(self)
    }

    fn close(&mut self) -> io::Result<()> {
        self.close_notify()
    }
}

/// A complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query after `?`, if any.
    pub query: Option<String>,
    /// Header names (as sent) and values (valid UTF-8 only).
    pub headers: Vec<(String, String)>,
    /// The body ([`Limits::max_body`] bytes at most).
    pub body: Vec<u8>,
}

impl Request {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The reason phrase of `status` (RFC 9110 §15).
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The JSON error body `{"error": message}`.
pub fn error_body(message: &str) -> String {
    let mut body = serde_json::json!({ "error": message }).to_string();
    body.push('\n');
    body
}

/// Where a handler writes its one response.
pub struct Responder<'a> {
    conn: &'a mut dyn Connection,
}

impl std::fmt::Debug for Responder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder").finish_non_exhaustive()
    }
}

impl<'a> Responder<'a> {
    /// Sends a whole response: `status`, `extra` headers (`Name: value`
    /// lines without CRLF), and `body` as `content_type`.
    pub fn send(self, status: u16, content_type: &str, extra: &[String], body: &[u8]) -> io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
            reason(status),
            body.len()
        );
        for line in extra {
            head.push_str(line);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        self.conn.write_all(head.as_bytes())?;
        self.conn.write_all(body)?;
        self.conn.flush()
    }

    /// Sends a JSON error body `{"error": message}` with `status`.
    pub fn error(self, status: u16, message: &str) -> io::Result<()> {
        self.send(status, JSON, &[], error_body(message).as_bytes())
    }

    /// Starts a response whose body follows in chunks (`Transfer-Encoding:
    /// chunked`, RFC 9112 §7.1): for a body made while it is sent.
    pub fn stream(self, status: u16, content_type: &str) -> io::Result<Chunked<'a>> {
        let head = format!(
            "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            reason(status)
        );
        self.conn.write_all(head.as_bytes())?;
        self.conn.flush()?;
        Ok(Chunked { conn: self.conn })
    }
}

/// A chunked response body being sent.
pub struct Chunked<'a> {
    conn: &'a mut dyn Connection,
}

impl std::fmt::Debug for Chunked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chunked").finish_non_exhaustive()
    }
}

impl Chunked<'_> {
    /// Sends `data` as one chunk, at once.
    pub fn chunk(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            // An empty chunk would end the body.
            return Ok(());
        }
        self.conn.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
        self.conn.write_all(data)?;
        self.conn.write_all(b"\r\n")?;
        self.conn.flush()
    }

    /// Ends the body.
    pub fn finish(self) -> io::Result<()> {
        self.conn.write_all(b"0\r\n\r\n")?;
        self.conn.flush()
    }
}

/// Answers one request. Called on a listener thread; a slow handler holds
/// that thread.
pub type Handler = Arc<dyn Fn(&Request, Responder<'_>) -> io::Result<()> + Send + Sync>;

/// A running listener; dropping it does not stop it (the stop flag does).
#[derive(Debug)]
pub struct Server {
    /// Where it listens (its port when 0 was asked for, in a test).
    pub local_addr: SocketAddr,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Waits for the listener threads, once the stop flag is set.
    pub fn join(self) {
        for thread in self.threads {
            if thread.join().is_err() {
                tracing::error!("an HTTP listener thread panicked");
            }
        }
    }
}

/// Serves HTTP (HTTPS with `tls`) on `listen` until `stop` is set, each
/// request answered by `handler`. `name` names the threads and the logs.
///
/// Errors: binding `listen` failed (in use, an address the host lacks).
pub fn serve(
    name: &'static str,
    listen: SocketAddr,
    tls: Option<TlsIdentity>,
    limits: Limits,
    handler: Handler,
    stop: Arc<AtomicBool>,
) -> Result<Server> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding the {name} listener {listen}"))?;
    listener.set_nonblocking(true)?;
    let local_addr = listener.local_addr()?;
    let mut threads = Vec::with_capacity(limits.threads);
    for index in 0..limits.threads {
        let listener = listener.try_clone()?;
        let (handler, stop, tls) = (Arc::clone(&handler), Arc::clone(&stop), tls.clone());
        threads.push(
            std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || accept_loop(name, &listener, tls.as_ref(), limits, &handler, &stop))?,
        );
    }
    tracing::info!(%local_addr, https = tls.is_some(), "{name} listener ready");
    Ok(Server { local_addr, threads })
}

fn accept_loop(
    name: &str,
    listener: &TcpListener,
    tls: Option<&TlsIdentity>,
    limits: Limits,
    handler: &Handler,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Err(e) = connection(stream, tls, limits, handler) {
                    tracing::debug!(%peer, error = %format!("{e:#}"), "{name} request");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                tracing::warn!(error = %e, "{name} accept");
                std::thread::sleep(ACCEPT_POLL);
            }
        }
    }
}

fn connection(stream: TcpStream, tls: Option<&TlsIdentity>, limits: Limits, handler: &Handler) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(limits.write_timeout))?;
    match tls {
        // A client without a certificate of the cluster CA fails here,
        // before a byte of HTTP is read.
        Some(identity) => {
            let mut secure = identity.accept(stream).context("TLS handshake")?;
            answer(&mut secure, limits, handler)
        }
        None => {
            let mut plain = stream;
            answer(&mut plain, limits, handler)
        }
    }
}

fn answer(conn: &mut dyn Connection, limits: Limits, handler: &Handler) -> Result<()> {
    match read_request(conn, limits)? {
        Ok(request) => handler(&request, Responder { conn })?,
        Err((status, message)) => Responder { conn }.error(status, &message)?,
    }
    let _ = conn.close();
    // A refused request may leave unread bytes; closing over them would
    // reset the connection before the client reads the answer. Read what
    // is left, boundedly, once the client has the whole response.
    conn.socket().shutdown(std::net::Shutdown::Write)?;
    conn.socket().set_read_timeout(Some(DRAIN_TIMEOUT))?;
    let _ = io::copy(&mut conn.socket().take(MAX_DRAIN), &mut io::sink());
    Ok(())
}

/// A refusal: the status and the message for the client.
type Refusal = (u16, String);

/// The head's parts, once it is complete: the request without its body,
/// the head's length and the body's declared length.
fn parse_head(head: &[u8]) -> Option<Result<(Request, usize, usize), Refusal>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(head) {
        Ok(httparse::Status::Partial) => return None,
        Err(e) => return Some(Err((400, format!("malformed request head: {e}")))),
        Ok(httparse::Status::Complete(len)) => len,
    };
    let target = parsed.path.unwrap_or("");
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query.to_string())),
        None => (target, None),
    };
    let request = Request {
        method: parsed.method.unwrap_or("").to_string(),
        path: path.to_string(),
        query,
        headers: parsed
            .headers
            .iter()
            .filter_map(|h| Some((h.name.to_string(), std::str::from_utf8(h.value).ok()?.to_string())))
            .collect(),
        body: Vec::new(),
    };
    if request.header("transfer-encoding").is_some() {
        return Some(Err((411, "send the body with a Content-Length".into())));
    }
    let body = match request.header("content-length").map(|v| v.trim().parse::<usize>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return Some(Err((400, "Content-Length is not a number".into()))),
    };
    Some(Ok((request, len, body)))
}

/// Reads a request within the limits: `Ok(Err(..))` is a refusal to send.
fn read_request(conn: &mut dyn Connection, limits: Limits) -> Result<Result<Request, Refusal>> {
    let deadline = Instant::now() + limits.request_timeout;
    let mut buffer = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut head: Option<(Request, usize, usize)> = None;
    loop {
        if let Some((request, len, body)) = &mut head {
            if buffer.len() >= *len + *body {
                request.body = buffer[*len..*len + *body].to_vec();
                return Ok(Ok(request.clone()));
            }
        } else {
            match parse_head(&buffer) {
                Some(Ok(parsed)) => {
                    if parsed.2 > limits.max_body {
                        let message = format!(
                            "the body is {} bytes; at most {} are accepted",
                            parsed.2, limits.max_body
                        );
                        return Ok(Err((413, message)));
                    }
                    head = Some(parsed);
                    continue;
                }
                Some(Err(refusal)) => return Ok(Err(refusal)),
                None if buffer.len() >= limits.max_head => {
                    let message = format!("the request head is over {} bytes", limits.max_head);
                    return Ok(Err((431, message)));
                }
                None => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = || {
            Ok(Err((
                408,
                format!("the request did not arrive within {:?}", limits.request_timeout),
            )))
        };
        if left.is_zero() {
            return timeout();
        }
        conn.socket().set_read_timeout(Some(left))?;
        let n = match conn.read(&mut chunk) {
            Ok(0) => anyhow::bail!("the client closed the connection mid-request"),
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return timeout(),
            Err(e) => return Err(e.into()),
        };
        buffer.extend_from_slice(&chunk[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        threads: 2,
        max_head: 1024,
        max_body: 64,
        request_timeout: Duration::from_secs(2),
        write_timeout: Duration::from_secs(2),
    };

    fn echo_server() -> (Server, Arc<AtomicBool>) {
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Handler = Arc::new(|request: &Request, responder: Responder<'_>| {
            if request.path == "/stream" {
                let mut body = responder.stream(200, "application/x-ndjson")?;
                body.chunk(b"{\"n\":1}\n")?;
                body.chunk(b"{\"n\":2}\n")?;
                return body.finish();
            }
            let text = format!(
                "{} {} {:?} {}",
                request.method,
                request.path,
                request.query,
                request.body.len()
            );
            responder.send(200, "text/plain", &["X-Test: 1".into()], text.as_bytes())
        });
        let server = serve(
            "test-http",
            "127.0.0.1:0".parse().unwrap(),
            None,
            LIMITS,
            handler,
            Arc::clone(&stop),
        )
        .unwrap();
        (server, stop)
    }

    fn ask(address: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(address).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn requests_with_bodies_are_read_whole_and_bounded() {
        let (server, stop) = echo_server();
        let at = server.local_addr;
        let ok = ask(at, b"POST /v1/x?y=1 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("X-Test: 1\r\n") && ok.ends_with("POST /v1/x Some(\"y=1\") 5"),
            "{ok}"
        );
        let big = format!("POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n{}", "a".repeat(65));
        let refused = ask(at, big.as_bytes());
        assert!(
            refused.starts_with("HTTP/1.1 413 ") && refused.contains("\"error\":\"the body is 65 bytes"),
            "{refused}"
        );
        let chunked = ask(at, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
        assert!(chunked.starts_with("HTTP/1.1 411 "), "{chunked}");
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(2000));
        assert!(ask(at, huge.as_bytes()).starts_with("HTTP/1.1 431 "));
        assert!(ask(at, b"\x01\x02 nonsense\r\n\r\n").starts_with("HTTP/1.1 400 "));
        // Half a body, then silence: refused when the time is up.
        let slow = ask(at, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
        assert!(slow.starts_with("HTTP/1.1 408 "), "{slow}");
        let streamed = ask(at, b"GET /stream HTTP/1.1\r\n\r\n");
        assert!(
            streamed.contains("Transfer-Encoding: chunked\r\n")
                && streamed.ends_with("8\r\n{\"n\":1}\n\r\n8\r\n{\"n\":2}\n\r\n0\r\n\r\n"),
            "{streamed}"
        );
        stop.store(true, Ordering::Relaxed);
        server.join();
    }
}
