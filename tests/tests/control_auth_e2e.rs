//! The control plane refuses whoever is not a member: plain TCP, a
//! certificate of another CA, a member's certificate claiming another
//! member, a certificate for a node that is not configured. Each tries to
//! register, hand over, announce and publish a scope; each is refused and
//! counted, and nothing changes. Connections over the caps are refused and
//! counted with the daemon's threads bounded; a peer that stalls mid-frame
//! is cut off. The admin sockets are 0600 and root's.

use handoff::{
    control::{
        codec::Envelope,
        codec::SUPPORTED_VERSIONS,
        encode,
        flow::{
            Counters, FlowRecord, FlowRecordV2, NetworkActionV2, NextHop, Owner, RecordVersion, TcpState, WireAddrs,
            WireFlowKey,
        },
        ids::{Capabilities, Incarnation, MacAddr, MigrationSerial, NodeId, Sender},
        io::{read_frame_within, write_frame},
        keys::{self, Party},
        message::{
            Abort, AbortReason, Body, Cut, FlowRecords, OwnerAnnounce, PeerHelloAck, RefusalReason, Register,
            ScopeUpdate, TableAnnounce,
        },
        scope_wire::WireScope,
        tls::{node_name, SecureStream, TlsIdentity, HANDSHAKE_TIMEOUT, MANAGER_NAME},
    },
    node::peers::Identity,
    scope::Scope,
};
use handoff_testbed::{
    cluster::{EDGE_FABRIC_IP, MANAGER_PORT},
    privileged,
    service_path::CONTROL_PORT,
    wait_until, Cluster,
};
use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    num::NonZeroU64,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    time::Duration,
};

/// fd-a's control port.
fn node_port(cluster: &Cluster) -> SocketAddr {
    SocketAddr::new(cluster.nodes[0].port.ip.into(), CONTROL_PORT)
}

fn manager_port() -> SocketAddr {
    SocketAddr::new(EDGE_FABRIC_IP.into(), MANAGER_PORT)
}

fn envelope(sender: u16, serial: u64, body: impl Into<Body>) -> Envelope {
    Envelope::new(
        Sender::Node(NodeId::new(sender).unwrap()),
        Incarnation(42),
        NonZeroU64::new(serial).unwrap(),
        body,
    )
}

fn register(name: &str) -> Register {
    Register {
        name: name.into(),
        software_version: "intruder".into(),
        protocol: SUPPORTED_VERSIONS,
        capabilities: Capabilities::THIS_BUILD,
        control_addr: "10.77.1.21:7700".parse().unwrap(),
        data_mac: MacAddr([2, 0, 0, 0, 0, 9]),
        data_ip: "10.77.1.21".parse().unwrap(),
        workers: 1,
        in_progress: None,
    }
}

/// Everything an intruder would send after its hello: a handover, an
/// announcement, a scope, a registration.
fn abuses() -> Vec<Body> {
    let serial = MigrationSerial(7);
    let scope = Scope::initial(64, &[1]).unwrap();
    vec![
        Body::TableAnnounce(TableAnnounce {
            serial,
            flows: 1,
            bytes_estimate: 100,
            record_version: RecordVersion::V2,
        }),
        Body::Cut(Cut {
            serial,
            chunks: 0,
            delta_batches: 0,
            version: u64::MAX,
        }),
        Body::OwnerAnnounce(OwnerAnnounce {
            version: u64::MAX,
            added: Vec::new(),
            removed: Vec::new(),
        }),
        Body::ScopeUpdate(ScopeUpdate {
            scope: WireScope::new(&scope, Capabilities::THIS_BUILD),
        }),
        Body::Register(register("fd-a")),
    ]
}

/// Reads until the server closes the connection (true) or the stream's
/// read timeout passes (false).
fn closed_by_server(stream: &mut impl Read) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// fd-a's control-port counters.
fn node_sessions(cluster: &Cluster) -> serde_json::Value {
    cluster.node_stats(0).unwrap()["control"]["sessions"].clone()
}

/// The manager's control-port counters.
fn edge_sessions(cluster: &Cluster) -> serde_json::Value {
    cluster.admin(&["stats"]).unwrap()["control"].clone()
}

/// What an intruder must not change: the scope, who is registered, the
/// announcements fd-a took.
fn state(cluster: &Cluster) -> (serde_json::Value, serde_json::Value, u64) {
    let status = cluster.admin(&["status"]).unwrap();
    let members: Vec<_> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["status"].clone(), m["buckets"].clone()))
        .collect();
    let node = cluster.node_stats(0).unwrap();
    (
        status["scope_version"].clone(),
        serde_json::json!(members),
        node["control"]["announces_received"].as_u64().unwrap(),
    )
}

/// A field of `/proc/PID/status`: `Threads:`, or `VmRSS:` in KiB.
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|n| n.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or_else(|| panic!("no {field} in {status}"))
}

fn threads_of(pid: u32) -> u64 {
    proc_status(pid, "Threads:")
}

/// A connection record for a handover stream.
fn record(port: u16) -> FlowRecord {
    FlowRecord::V2(FlowRecordV2 {
        key: WireFlowKey {
            addrs: WireAddrs::V4 {
                src: "10.77.0.9".parse().unwrap(),
                dst: "10.99.0.1".parse().unwrap(),
            },
            src_port: port,
            dst_port: 7000,
            protocol: 17,
        },
        action: NetworkActionV2::Forward {
            next_hop: NextHop {
                ip: "10.0.2.1".parse().unwrap(),
                mac: MacAddr([2, 0, 0, 0, 0, 9]),
            },
        },
        app_action: 0,
        owner: Owner {
            node: NodeId::new(1).unwrap(),
            worker: 0,
        },
        tcp_state: TcpState::NotTcp,
        age: Duration::ZERO,
        idle: Duration::ZERO,
        counters: Counters::default(),
        reverse_counters: None,
    })
}

fn identity(dir: &Path, party: Party) -> TlsIdentity {
    TlsIdentity::load(&party.paths(dir), &party.name()).unwrap()
}

/// Opens TLS to `to` as `who`, says hello as node `claims`, then sends every
/// abuse; returns the hello's answer (None when the session broke first).
fn intrude(who: TlsIdentity, to: SocketAddr, server: String, claims: u16) -> Option<PeerHelloAck> {
    let mut stream: SecureStream = who.connect(TcpStream::connect(to).ok()?, &server).ok()?;
    stream.socket().set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write_frame(&mut stream, &envelope(claims, 1, Identity::hello())).ok()?;
    let ack = match read_frame_within(&mut stream, Duration::from_secs(5)).ok()?.body {
        Body::PeerHelloAck(ack) => Some(ack),
        _ => None,
    };
    for (serial, body) in abuses().into_iter().enumerate() {
        if write_frame(&mut stream, &envelope(claims, serial as u64 + 2, body)).is_err() {
            break;
        }
    }
    assert!(closed_by_server(&mut stream));
    ack
}

/// Registers with the manager as `who`, claiming node `claims` named `name`;
/// returns the manager's answer's kind.
fn register_as(who: TlsIdentity, claims: u16, name: &str) -> Option<String> {
    let mut stream = who
        .connect(TcpStream::connect(manager_port()).ok()?, MANAGER_NAME)
        .ok()?;
    stream.socket().set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write_frame(&mut stream, &envelope(claims, 1, register(name))).ok()?;
    let answer = read_frame_within(&mut stream, Duration::from_secs(5)).ok()?;
    assert!(closed_by_server(&mut stream));
    Some(format!("{:?}", answer.body.kind()))
}

#[test]
fn non_members_are_refused_and_counted_and_change_nothing() {
    if !privileged("non_members_are_refused_and_counted_and_change_nothing") {
        return;
    }
    let mut cluster = Cluster::service_path(1).unwrap();
    assert!(wait_until(Duration::from_secs(10), || {
        cluster.admin(&["status"]).unwrap()["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["status"] == "Active")
    }));

    // The admin sockets: root's, 0600.
    for socket in [cluster.admin_socket(), cluster.node_admin_socket(0)] {
        let meta = std::fs::metadata(&socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{}", socket.display());
        assert_eq!(meta.uid(), 0, "{}", socket.display());
    }

    let keys_dir = cluster.keys_dir();
    let foreign_dir = cluster.log_dir.join("foreign-keys");
    keys::init(&foreign_dir).unwrap();
    keys::issue(&foreign_dir, Party::Node(1)).unwrap();
    keys::issue(&keys_dir, Party::Node(9)).unwrap();
    let before = state(&cluster);
    let (node0, edge0) = (node_sessions(&cluster), edge_sessions(&cluster));
    let pid = cluster.process_named("fd-a").unwrap().pid();
    let svc = &cluster.services[0].ns;
    let node = node_port(&cluster);

    // 1. Plain TCP, a well-formed frame: the TLS handshake fails.
    let plain = |to: SocketAddr, body: Body| {
        move || {
            let mut s = TcpStream::connect(to).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&encode(&envelope(1, 1, body)).unwrap()).unwrap();
            closed_by_server(&mut s)
        }
    };
    assert!(svc.run_inside(plain(node, Identity::hello().into())).unwrap());
    assert!(svc.run_inside(plain(manager_port(), register("fd-b").into())).unwrap());
    assert!(wait_until(Duration::from_secs(5), || counter(
        &node_sessions(&cluster),
        "handshakes_refused"
    ) == counter(
        &node0,
        "handshakes_refused"
    ) + 1));
    assert!(wait_until(Duration::from_secs(5), || counter(
        &edge_sessions(&cluster),
        "handshakes_refused"
    ) == counter(
        &edge0,
        "handshakes_refused"
    ) + 1));

    // 2. A certificate of another CA: refused at the handshake.
    let foreign = identity(&foreign_dir, Party::Node(1));
    let refused = svc
        .run_inside({
            let foreign = foreign.clone();
            move || intrude(foreign, node, node_name(0), 1)
        })
        .unwrap();
    assert_eq!(refused, None);
    assert_eq!(svc.run_inside(move || register_as(foreign, 1, "fd-b")).unwrap(), None);
    assert!(wait_until(Duration::from_secs(5), || counter(
        &node_sessions(&cluster),
        "handshakes_refused"
    ) == counter(
        &node0,
        "handshakes_refused"
    ) + 2));
    assert!(wait_until(Duration::from_secs(5), || counter(
        &edge_sessions(&cluster),
        "handshakes_refused"
    ) == counter(
        &edge0,
        "handshakes_refused"
    ) + 2));

    // 3. fd-c's own certificate, claiming to be fd-b; 4. a certificate the
    // cluster CA issued for node 9, which is no member.
    for (who, claims, name) in [(Party::Node(2), 1u16, "fd-b"), (Party::Node(9), 9, "fd-z")] {
        let id = identity(&keys_dir, who);
        let ack = svc
            .run_inside({
                let id = id.clone();
                move || intrude(id, node, node_name(0), claims)
            })
            .unwrap();
        assert_eq!(
            ack,
            Some(PeerHelloAck::Refused {
                reason: RefusalReason::NotAMember
            }),
            "{who:?} as node {claims}"
        );
        let answer = svc.run_inside(move || register_as(id, claims, name)).unwrap();
        assert_eq!(answer.as_deref(), Some("ErrorReply"), "{who:?} registering as {name}");
    }
    assert!(wait_until(Duration::from_secs(5), || counter(
        &node_sessions(&cluster),
        "peers_refused"
    ) == counter(
        &node0,
        "peers_refused"
    ) + 2));
    assert!(wait_until(Duration::from_secs(5), || counter(
        &edge_sessions(&cluster),
        "peers_refused"
    ) == counter(
        &edge0,
        "peers_refused"
    ) + 2));

    // Nothing changed: the scope, the members, fd-a's announcements.
    assert_eq!(state(&cluster), before);

    // 5. Over the caps: 4 per source address (the default). Connections
    // that stay silent hold their places until the handshake deadline.
    let threads_before = threads_of(pid);
    let held = svc
        .run_inside(move || {
            let streams: Vec<TcpStream> = (0..10).filter_map(|_| TcpStream::connect(node).ok()).collect();
            std::thread::sleep(Duration::from_millis(500));
            let threads = threads_of(pid);
            // The refused ones are closed at once; the admitted ones wait,
            // silent, past the handshake deadline.
            let mut closed = 0;
            for mut s in &streams {
                s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
                let mut b = [0u8; 1];
                if matches!(s.read(&mut b), Ok(0)) {
                    closed += 1;
                }
            }
            std::thread::sleep(HANDSHAKE_TIMEOUT + Duration::from_secs(1));
            (threads, closed)
        })
        .unwrap();
    let (threads_during, closed_at_once) = held;
    assert!(
        closed_at_once >= 6,
        "the connections over the cap were closed: {closed_at_once}"
    );
    assert!(
        threads_during <= threads_before + 4,
        "at most one thread per admitted connection: {threads_before} → {threads_during}"
    );
    let sessions = node_sessions(&cluster);
    assert!(
        counter(&sessions, "connections_refused") >= counter(&node0, "connections_refused") + 6,
        "{sessions}"
    );
    // The admitted four stalled mid-handshake and were cut off.
    assert!(wait_until(Duration::from_secs(10), || counter(
        &node_sessions(&cluster),
        "sessions_timed_out"
    ) >= counter(
        &node0,
        "sessions_timed_out"
    ) + 4));
    assert!(wait_until(Duration::from_secs(10), || threads_of(pid) <= threads_before));

    // 6. A member that stalls mid-frame is cut off.
    let member = identity(&keys_dir, Party::Node(1));
    let cut_off = svc
        .run_inside(move || {
            let mut stream = member
                .connect(TcpStream::connect(node).unwrap(), &node_name(0))
                .unwrap();
            write_frame(&mut stream, &envelope(1, 1, Identity::hello())).unwrap();
            let ack = read_frame_within(&mut stream, Duration::from_secs(5)).unwrap();
            assert!(matches!(ack.body, Body::PeerHelloAck(PeerHelloAck::Accepted { .. })));
            let frame = encode(&envelope(1, 2, Identity::hello())).unwrap();
            stream.write_all(&frame[..frame.len() / 2]).unwrap();
            stream.flush().unwrap();
            stream.socket().set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            closed_by_server(&mut stream)
        })
        .unwrap();
    assert!(cut_off);
    assert!(counter(&node_sessions(&cluster), "sessions_timed_out") >= counter(&node0, "sessions_timed_out") + 5);
    assert_eq!(state(&cluster).0, before.0, "the scope did not change");

    // 7. A member's handover streams that announce more connections than
    // fd-a's tables hold, or send more records than they announced, are
    // aborted, and fd-a's memory stays bounded. (Each announcement of
    // u64::MAX once pre-sized a map of 4 M records.)
    let member = identity(&keys_dir, Party::Node(1));
    let rss_before = proc_status(pid, "VmRSS:");
    let answers = svc
        .run_inside(move || {
            let mut stream = member
                .connect(TcpStream::connect(node).unwrap(), &node_name(0))
                .unwrap();
            let mut serial = 1;
            let mut send = |stream: &mut SecureStream, body: Body| {
                write_frame(stream, &envelope(1, serial, body)).unwrap();
                serial += 1;
            };
            send(&mut stream, Identity::hello().into());
            let ack = read_frame_within(&mut stream, Duration::from_secs(5)).unwrap();
            assert!(matches!(ack.body, Body::PeerHelloAck(PeerHelloAck::Accepted { .. })));
            let announce = |attempt: u32, flows: u64| {
                Body::TableAnnounce(TableAnnounce {
                    serial: MigrationSerial(attempt),
                    flows,
                    bytes_estimate: 0,
                    record_version: RecordVersion::V2,
                })
            };
            let mut answers = Vec::new();
            for attempt in 1..=50 {
                send(&mut stream, announce(attempt, u64::MAX));
                answers.push(read_frame_within(&mut stream, Duration::from_secs(5)).unwrap().body);
            }
            send(&mut stream, announce(51, 2));
            send(
                &mut stream,
                Body::FlowRecords(FlowRecords {
                    serial: MigrationSerial(51),
                    chunk: 0,
                    records: (1..=3).map(record).collect(),
                }),
            );
            answers.push(read_frame_within(&mut stream, Duration::from_secs(5)).unwrap().body);
            answers
        })
        .unwrap();
    // One worker of the default table (2^18 entries): 2^17 connections.
    for (i, answer) in answers.iter().enumerate() {
        assert!(
            matches!(
                answer,
                Body::Abort(Abort {
                    reason: AbortReason::OverCapacity { limit: 131_072, .. },
                    ..
                })
            ),
            "answer {i}: {answer:?}"
        );
    }
    assert_eq!(answers.len(), 51);
    let rss_after = proc_status(pid, "VmRSS:");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "fd-a's RSS grew from {rss_before} to {rss_after} KiB"
    );
    assert_eq!(state(&cluster).0, before.0, "the scope did not change");
}
