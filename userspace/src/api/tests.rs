use super::{client::ApiClient, *};
use crate::control::{
    keys::{self, tests::temp_dir, Party},
    tls::{TlsIdentity, MANAGER_NAME},
};
use crossbeam::channel::Receiver;
use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::Ordering,
};

fn get(method: &str, path: &str, body: &str) -> http::Request {
    http::Request {
        method: method.into(),
        path: path.into(),
        query: None,
        headers: Vec::new(),
        body: body.as_bytes().to_vec(),
    }
}

#[test]
fn routes_follow_the_admin_requests() {
    assert_eq!(route(&get("GET", "/v1/status", "")), Ok(AdminRequest::Status));
    assert_eq!(route(&get("POST", "/v1/stats", "")), Ok(AdminRequest::Stats));
    assert_eq!(
        route(&get("POST", "/v1/disengage", r#"{"node": "fd-a"}"#)),
        Ok(AdminRequest::Disengage {
            node: "fd-a".into(),
            inheritor: "auto".into()
        })
    );
    assert_eq!(
        route(&get("POST", "/v1/scope_add", r#"{"member": "fd-b"}"#)),
        Ok(AdminRequest::ScopeAdd { member: "fd-b".into() })
    );
    let refused = |method: &str, path: &str, body: &str| route(&get(method, path, body)).unwrap_err();
    let (status, message, allow) = refused("GET", "/v1/engage", "");
    assert_eq!((status, allow), (405, vec!["Allow: POST".to_string()]), "{message}");
    assert!(message.contains("POST /v1/engage"), "{message}");
    let (status, message, _) = refused("POST", "/v1/frobnicate", "");
    assert_eq!(status, 404);
    assert!(message.contains("status, stats"), "{message}");
    assert_eq!(refused("GET", "/metrics", "").0, 404);
    let (status, message, _) = refused("POST", "/v1/engage", "");
    assert_eq!(status, 400);
    assert!(message.contains("missing field `node`"), "{message}");
    let (status, message, _) = refused("POST", "/v1/engage", r#"{"node": "fd-a", "nod": 1}"#);
    assert!(status == 400 && message.contains("unknown field `nod`"), "{message}");
    assert_eq!(refused("POST", "/v1/engage", "[1]").0, 400);
    assert_eq!(refused("POST", "/v1/engage", "{").0, 400);
    assert_eq!(refused("POST", "/v1/status", r#"{"cmd": "stats"}"#).0, 400);
    assert_eq!(refused("DELETE", "/v1/status", "").0, 405);
}

/// The paths of `docs/openapi.json`.
fn openapi() -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

#[test]
fn the_openapi_document_has_a_path_for_every_admin_request() {
    let doc = openapi();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    let missing: Vec<&&str> = AdminRequest::VARIANTS
        .iter()
        .filter(|cmd| !paths.contains_key(&format!("{PREFIX}{cmd}")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/openapi.json has no path for {missing:?}: describe each new admin verb there"
    );
    let extra: Vec<&String> = paths
        .keys()
        .filter(|p| {
            !p.strip_prefix(PREFIX)
                .is_some_and(|c| AdminRequest::VARIANTS.contains(&c))
        })
        .collect();
    assert!(
        extra.is_empty(),
        "docs/openapi.json describes {extra:?}, which no verb serves"
    );
    // GET exactly where the route serves it, POST everywhere; every
    // operation documents its errors.
    for cmd in AdminRequest::VARIANTS {
        let item = &paths[&format!("{PREFIX}{cmd}")];
        let served_on_get = route(&get("GET", &format!("{PREFIX}{cmd}"), "")).is_ok();
        assert_eq!(item.get("get").is_some(), served_on_get, "{cmd}: GET");
        assert!(item.get("post").is_some(), "{cmd}: POST");
        assert!(item["post"]["responses"].get("409").is_some(), "{cmd}: 409");
    }
}

/// A daemon on `calls` that answers every request with `answer`.
fn daemon(calls: Receiver<AdminCall>, answer: fn(AdminRequest) -> Vec<AdminResponse>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while let Ok((request, reply)) = calls.recv_timeout(Duration::from_secs(20)) {
            for response in answer(request) {
                let _ = reply.send(response);
            }
        }
    })
}

fn fake_answers(request: AdminRequest) -> Vec<AdminResponse> {
    match request {
        AdminRequest::Status => vec![AdminResponse::Status(serde_json::json!({"scope_version": 3}))],
        AdminRequest::Disengage { node, .. } if node == "fd-a" => vec![
            AdminResponse::Progress(serde_json::json!({"phase": "select"})),
            AdminResponse::Progress(serde_json::json!({"phase": "copy"})),
            AdminResponse::Done(serde_json::json!({"outcome": "completed"})),
        ],
        other => vec![AdminResponse::Error {
            message: format!("refused {other:?}"),
        }],
    }
}

fn raw(address: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn a_loopback_listener_answers_streams_migrations_and_maps_errors() {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = unbounded();
    let server = serve("127.0.0.1:0".parse().unwrap(), None, tx, Arc::clone(&stop)).unwrap();
    let fake = daemon(rx, fake_answers);
    let at = server.local_addr;
    let status = raw(at, "GET /v1/status HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(status.starts_with("HTTP/1.1 200 OK\r\n"), "{status}");
    assert!(
        status.ends_with("{\"result\":\"status\",\"scope_version\":3}\n"),
        "{status}"
    );
    let body = r#"{"node":"fd-a"}"#;
    let streamed = raw(
        at,
        &format!(
            "POST /v1/disengage HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(
        streamed.contains("Content-Type: application/x-ndjson\r\n"),
        "{streamed}"
    );
    assert!(
        streamed.contains("{\"result\":\"progress\",\"phase\":\"copy\"}\n")
            && streamed.contains("{\"result\":\"done\",\"outcome\":\"completed\"}\n"),
        "{streamed}"
    );
    let last = raw(
        at,
        &format!(
            "POST /v1/disengage HTTP/1.1\r\nAccept: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(
        last.contains("Content-Type: application/json\r\n")
            && last.ends_with("{\"result\":\"done\",\"outcome\":\"completed\"}\n"),
        "{last}"
    );
    let body = r#"{"member":"fd"}"#;
    let refused = raw(
        at,
        &format!(
            "POST /v1/scope_remove HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(refused.starts_with("HTTP/1.1 409 Conflict\r\n"), "{refused}");
    assert!(refused.contains("{\"error\":\"refused ScopeRemove"), "{refused}");
    let big = format!("POST /v1/status HTTP/1.1\r\nContent-Length: {}\r\n\r\n", MAX_BODY + 1);
    assert!(raw(at, &big).starts_with("HTTP/1.1 413 "));

    // The CLI's client over the same listener.
    let client = ApiClient::new(&format!("http://{at}"), None, None).unwrap();
    let timeout = Duration::from_secs(10);
    assert_eq!(
        client
            .call_with_progress(&AdminRequest::Status, timeout, |_| {})
            .unwrap(),
        AdminResponse::Status(serde_json::json!({"scope_version": 3}))
    );
    let mut phases = Vec::new();
    let done = client
        .call_with_progress(
            &AdminRequest::Disengage {
                node: "fd-a".into(),
                inheritor: "auto".into(),
            },
            timeout,
            |p| phases.push(p["phase"].as_str().unwrap_or("?").to_string()),
        )
        .unwrap();
    assert_eq!(done, AdminResponse::Done(serde_json::json!({"outcome": "completed"})));
    assert_eq!(phases, ["select", "copy"]);
    let error = client
        .call_with_progress(&AdminRequest::Engage { node: "fd-z".into() }, timeout, |_| {})
        .unwrap();
    assert!(
        matches!(&error, AdminResponse::Error { message } if message.contains("refused Engage")),
        "{error:?}"
    );
    stop.store(true, Ordering::Relaxed);
    server.join();
    fake.join().unwrap();
}

#[test]
fn a_non_loopback_listener_needs_tls_and_a_client_certificate() {
    assert!(parse_listen("127.0.0.1:9480", false).is_ok());
    assert!(parse_listen("[::1]:9480", false).is_ok());
    let e = parse_listen("0.0.0.0:9480", false).unwrap_err();
    assert!(e.contains("not a loopback address") && e.contains("[tls]"), "{e}");
    assert!(parse_listen("0.0.0.0:9480", true).is_ok());
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = unbounded();
    assert!(serve("0.0.0.0:0".parse().unwrap(), None, tx.clone(), Arc::clone(&stop)).is_err());

    let dir = temp_dir("api-tls");
    keys::init(&dir).unwrap();
    let manager = keys::issue(&dir, Party::Manager).unwrap();
    let node = keys::issue(&dir, Party::Node(1)).unwrap();
    let identity = TlsIdentity::load(&manager, MANAGER_NAME).unwrap();
    // The unspecified address: not loopback, so HTTPS; reached over loopback.
    let server = serve("0.0.0.0:0".parse().unwrap(), Some(identity), tx, Arc::clone(&stop)).unwrap();
    let fake = daemon(rx, fake_answers);
    let url = format!("https://127.0.0.1:{}", server.local_addr.port());
    let timeout = Duration::from_secs(10);
    let client = ApiClient::new(&url, Some(&node), Some(MANAGER_NAME)).unwrap();
    assert_eq!(
        client
            .call_with_progress(&AdminRequest::Status, timeout, |_| {})
            .unwrap(),
        AdminResponse::Status(serde_json::json!({"scope_version": 3}))
    );
    // The server's certificate is the manager's: another name is refused.
    let wrong = ApiClient::new(&url, Some(&node), Some("node-1.handoff.cluster")).unwrap();
    assert!(wrong
        .call_with_progress(&AdminRequest::Status, timeout, |_| {})
        .is_err());
    // Plain HTTP gets nothing from an HTTPS listener.
    let plain = ApiClient::new(&format!("http://127.0.0.1:{}", server.local_addr.port()), None, None).unwrap();
    assert!(plain
        .call_with_progress(&AdminRequest::Status, timeout, |_| {})
        .is_err());
    // A TLS client without a certificate is refused at the handshake.
    let roots = {
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(&node.ca).unwrap();
        for cert in <rustls_pki_types::CertificateDer<'_> as rustls_pki_types::pem::PemObject>::pem_slice_iter(&pem) {
            roots.add(cert.unwrap()).unwrap();
        }
        roots
    };
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let target = server.local_addr.port();
    let agent = ureq::AgentBuilder::new()
        .tls_config(Arc::new(anonymous))
        .resolver(move |_: &str| Ok(vec![SocketAddr::from(([127, 0, 0, 1], target))]))
        .build();
    let refused = agent
        .get(&format!("https://{MANAGER_NAME}:{target}/v1/status"))
        .timeout(timeout)
        .call();
    assert!(refused.is_err(), "{refused:?}");
    stop.store(true, Ordering::Relaxed);
    server.join();
    fake.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
