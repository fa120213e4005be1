//! Handing a node's connections to their inheritors, on two in-memory
//! nodes: export, import, cut, flip, purge. Every packet sent during the
//! handover is forwarded once, rewritten to the backend its connection had,
//! and no connection is decided again.

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use handoff::{
    flow::{config::PolicyConfig, ImportOutcome, Owner, Policy, Timestamp},
    io::{memory::MemoryFrame, FrameBuf, Verdict},
    migration::handover::{changes, cut, export, import, purge, take_back, Change},
    node::{
        pipeline::{Outbox, Pipeline},
        view::NodeView,
    },
    scope::{HashParams, Scope},
};
use handoff_common::flow_key::FlowKey;
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    sync::Arc,
};

const MACS: [[u8; 6]; 2] = [[2, 0, 0, 0, 0xfd, 0], [2, 0, 0, 0, 0xfd, 1]];
const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
const BUCKETS: u32 = 1024;
const FLOWS: usize = 300;

const POLICY: &str = r#"
[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "forward"
gateway = "router"

[[service]]
vip = "10.0.9.1"
protocol = "udp"
port = 53
[[service.backend]]
address = "10.1.0.1"
port = 5353
[[service.backend]]
address = "10.1.0.2"
port = 5353
[[service.backend]]
address = "10.1.0.3"
port = 5353
"#;

fn view(node: u16, members: &[u32]) -> Arc<NodeView> {
    let hash = HashParams {
        buckets: BUCKETS,
        symmetric: false,
        seed: 0,
    };
    let scope = Scope::initial(BUCKETS, &[0, 1]).unwrap().rebuilt(members).unwrap();
    Arc::new(NodeView::new(
        node,
        hash,
        scope,
        1,
        MACS.iter().copied().map(Some).collect(),
    ))
}

fn node(id: u16, view: Arc<NodeView>) -> Pipeline {
    let policy = Arc::new(Policy::new(PolicyConfig::parse(POLICY, Path::new("policy.toml")).unwrap()).unwrap());
    Pipeline::new(0, MACS[id as usize], view, policy, 1024).unwrap()
}

fn udp(src: SocketAddr, dst: SocketAddr, to: [u8; 6]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        unreachable!("IPv4 only")
    };
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, to)
        .ipv4(s.octets(), d.octets(), 64)
        .udp(src.port(), dst.port());
    let payload = [7u8; 18];
    let mut frame = Vec::with_capacity(builder.size(payload.len()));
    builder.write(&mut frame, &payload).unwrap();
    frame
}

fn key_of(frame: &[u8]) -> FlowKey {
    handoff_common::parse::parse_frame(frame).unwrap().key
}

/// Runs `bytes` through `pipeline`; returns the transmitted frame, if any.
fn handle(pipeline: &mut Pipeline, bytes: &[u8], now: u64) -> Option<Vec<u8>> {
    let mut frame = MemoryFrame::new(2048, 64);
    frame.load(bytes, 64).unwrap();
    let mut out = Outbox::with_capacity(4);
    let verdict = pipeline.process(&mut frame, 0, Timestamp::from_nanos(now), &mut out);
    assert!(out.to_cores.is_empty(), "one worker per node");
    (verdict == Verdict::Transmit).then(|| frame.bytes().to_vec())
}

/// Where a transmitted plain frame goes: destination address and port.
fn destination(frame: &[u8]) -> SocketAddr {
    let packet = SlicedPacket::from_ethernet(frame).unwrap();
    let Some(etherparse::NetSlice::Ipv4(ip)) = packet.net else {
        panic!("not IPv4")
    };
    let Some(TransportSlice::Udp(udp)) = packet.transport else {
        panic!("not UDP")
    };
    SocketAddr::new(ip.header().destination_addr().into(), udp.destination_port())
}

#[test]
fn connections_follow_their_state_through_export_cut_flip_and_purge() {
    let both = view(0, &[0, 1]);
    let mut old = node(0, Arc::clone(&both));
    let mut heir = node(1, view(1, &[0, 1]));
    let vip = SocketAddr::new(Ipv4Addr::new(10, 0, 9, 1).into(), 53);
    let requests: Vec<Vec<u8>> = (1000..u16::MAX)
        .map(|port| udp(SocketAddr::new(Ipv4Addr::new(10, 0, 0, 7).into(), port), vip, MACS[0]))
        .filter(|f| both.owner_by_scope(&key_of(f)).node == 0)
        .take(FLOWS)
        .collect();
    assert_eq!(requests.len(), FLOWS);

    // The old owner decides every connection once.
    let backends: Vec<SocketAddr> = requests
        .iter()
        .map(|f| destination(&handle(&mut old, f, 1).expect("forwarded")))
        .collect();
    assert_eq!(old.counters().created, FLOWS as u64);

    // Export and import: everything moves to node 1 under the next scope.
    let next = view(0, &[1]);
    let outgoing = export(old.table(), &next);
    assert_eq!(outgoing.len(), FLOWS);
    assert!(outgoing.iter().all(|o| o.inheritor.node == 1));
    let heir_owner = heir.owner();
    for o in &outgoing {
        let outcome = import(
            heir.table_mut(),
            o.record,
            heir_owner,
            Timestamp::from_nanos(2),
            Timestamp::from_nanos(2),
        );
        assert_eq!(outcome, Ok(ImportOutcome::Inserted));
    }
    // Importing the same snapshot again changes nothing.
    assert_eq!(
        import(
            heir.table_mut(),
            outgoing[0].record,
            heir_owner,
            Timestamp::from_nanos(2),
            Timestamp::from_nanos(2)
        ),
        Ok(ImportOutcome::Unchanged)
    );

    // The cut: packets still reaching the old owner cross the fabric to the
    // heir, which rewrites them exactly as before.
    assert_eq!(cut(old.table_mut(), &next).len(), FLOWS);
    assert!(
        export(old.table(), &next).is_empty(),
        "redirected connections are not exported again"
    );
    for (request, backend) in requests.iter().zip(&backends) {
        let over_fabric = handle(&mut old, request, 3).expect("redirected to the heir");
        let sent = handle(&mut heir, &over_fabric, 3).expect("forwarded by the heir");
        assert_eq!(destination(&sent), *backend);
    }

    // The flip: packets now reach the heir directly.
    heir.set_view(view(1, &[1]));
    old.set_view(next);
    for (request, backend) in requests.iter().zip(&backends) {
        let mut direct = request.clone();
        direct[..6].copy_from_slice(&MACS[1]);
        let sent = handle(&mut heir, &direct, 4).expect("forwarded by the heir");
        assert_eq!(destination(&sent), *backend);
    }

    // Drained: the old owner forgets; the heir decided nothing itself.
    assert_eq!(purge(old.table_mut()), FLOWS);
    assert!(old.table().is_empty());
    let (o, h) = (old.counters(), heir.counters());
    assert_eq!((o.dropped(), h.dropped()), (0, 0), "{o:?} {h:?}");
    assert_eq!(
        (o.forwarded_to_node, h.received_from_node),
        (FLOWS as u64, FLOWS as u64)
    );
    assert_eq!(h.created, 0, "the heir used the handed-over state: {h:?}");
    assert_eq!(heir.table().counters().imported, FLOWS as u64);
    assert!(heir
        .table()
        .records()
        .all(|r| r.forward.owner == Owner { node: 1, worker: 0 }));
}

/// `FLOWS` requests of new connections to the VIP owned by node 0 under
/// `view`, from source ports `from..`.
fn requests_to_node_0(view: &NodeView, from: u16, count: usize) -> Vec<Vec<u8>> {
    let vip = SocketAddr::new(Ipv4Addr::new(10, 0, 9, 1).into(), 53);
    (from..u16::MAX)
        .map(|port| udp(SocketAddr::new(Ipv4Addr::new(10, 0, 0, 7).into(), port), vip, MACS[0]))
        .filter(|f| view.owner_by_scope(&key_of(f)).node == 0)
        .take(count)
        .collect()
}

#[test]
fn the_journal_carries_what_changed_during_the_copy_and_the_cut_takes_it_all() {
    let both = view(0, &[0, 1]);
    let mut old = node(0, Arc::clone(&both));
    let first = requests_to_node_0(&both, 1000, 50);
    for f in &first {
        handle(&mut old, f, 1).expect("forwarded");
    }
    let next = view(0, &[1]);
    old.table_mut().start_journal(1024);
    let snapshot = export(old.table(), &next);
    assert_eq!(snapshot.len(), 50);

    // During the copy: 10 new connections, 5 busy ones (one packet, and
    // three more on the first: still one change), 3 that end.
    let later = requests_to_node_0(&both, 30_000, 10);
    for f in &later {
        handle(&mut old, f, 2).expect("forwarded");
    }
    for f in first.iter().take(5).chain(std::iter::repeat_n(&first[0], 3)) {
        handle(&mut old, f, 3).expect("forwarded");
    }
    for f in &first[47..] {
        let slot = old.table().lookup(&key_of(f)).unwrap();
        old.table_mut().remove(slot).unwrap();
    }
    let journal = old.table_mut().take_journal();
    let found = changes(old.table(), &journal, &next);
    let (mut new, mut changed, mut deleted) = (0, 0, Vec::new());
    for change in &found {
        match change {
            Change::Upsert { outgoing, new: true } => {
                assert!(later.iter().any(|f| key_of(f) == outgoing.record.forward.key));
                new += 1;
            }
            Change::Upsert { outgoing, new: false } => {
                assert!(first[..5].iter().any(|f| key_of(f) == outgoing.record.forward.key));
                assert!(outgoing.record.forward.packets >= 2, "the state as it is now");
                changed += 1;
            }
            Change::Delete { inheritor, key } => {
                assert_eq!(*inheritor, 1);
                deleted.push(*key);
            }
        }
    }
    assert_eq!((new, changed, deleted.len()), (10, 5, 6), "{found:?}");
    assert!(first[47..].iter().all(|f| deleted.contains(&key_of(f))));
    assert!(
        matches!(
            found[..6],
            [
                Change::Delete { .. },
                Change::Delete { .. },
                Change::Delete { .. },
                Change::Delete { .. },
                Change::Delete { .. },
                Change::Delete { .. }
            ]
        ),
        "deletes come first"
    );

    // The cut redirects the snapshot's survivors and the new connections.
    let redirected = cut(old.table_mut(), &next);
    assert_eq!(redirected.len(), 50 - 3 + 10);
    assert!(export(old.table(), &next).is_empty());
    let after_cut = old.table_mut().stop_journal();
    assert!(!after_cut.ops.is_empty(), "the redirect changed entries");
    assert!(
        changes(old.table(), &after_cut, &next).is_empty(),
        "redirected connections are no changes to hand over"
    );
}

#[test]
fn a_cut_taken_back_serves_its_connections_here_as_before() {
    let both = view(0, &[0, 1]);
    let mut old = node(0, Arc::clone(&both));
    let requests = requests_to_node_0(&both, 1000, 20);
    let backends: Vec<SocketAddr> = requests
        .iter()
        .map(|f| destination(&handle(&mut old, f, 1).expect("forwarded")))
        .collect();
    let next = view(0, &[1]);
    let redirected = cut(old.table_mut(), &next);
    assert_eq!(redirected.len(), 20);
    assert_eq!(
        take_back(old.table_mut(), &redirected, &[2]),
        0,
        "only the named inheritors"
    );
    assert_eq!(take_back(old.table_mut(), &redirected, &[1]), 20);
    assert_eq!(take_back(old.table_mut(), &redirected, &[1]), 0, "taken back once");
    for (request, backend) in requests.iter().zip(&backends) {
        let sent = handle(&mut old, request, 2).expect("served here again");
        assert_eq!(destination(&sent), *backend, "with the backend it had");
    }
    let c = old.counters();
    assert_eq!((c.forwarded_to_node, c.created, c.dropped()), (0, 20, 0));
}

#[test]
fn a_holding_pipeline_keeps_redirected_packets_untouched_and_nothing_else() {
    let both = view(0, &[0, 1]);
    let mut old = node(0, Arc::clone(&both));
    let requests = requests_to_node_0(&both, 1000, 4);
    for f in &requests {
        handle(&mut old, f, 1).expect("forwarded");
    }
    cut(old.table_mut(), &view(0, &[1]));
    old.hold_redirects(true);
    let mut out = Outbox::with_capacity(8);
    for f in &requests {
        let mut frame = MemoryFrame::new(2048, 64);
        frame.load(f, 64).unwrap();
        let verdict = old.process(&mut frame, 0, Timestamp::from_nanos(2), &mut out);
        assert_eq!(verdict, Verdict::Drop);
    }
    assert_eq!(out.held.len(), 4);
    for (held, f) in out.held.iter().zip(&requests) {
        assert_eq!(&held.data[..held.len as usize], &f[..], "held as it arrived");
    }
    let fresh = requests_to_node_0(&both, 40_000, 1);
    assert!(handle(&mut old, &fresh[0], 2).is_some(), "a new connection is not held");
    old.hold_redirects(false);
    let over_fabric = handle(&mut old, &requests[0], 3).expect("redirected once released");
    assert_eq!(
        u16::from_be_bytes([over_fabric[12], over_fabric[13]]),
        handoff_common::fabric::FABRIC_ETHERTYPE
    );
    let c = old.counters();
    assert_eq!(
        (c.forwarded_to_node, c.dropped()),
        (1, 0),
        "a held packet is no drop: {c:?}"
    );
}
