//! The packet path end to end, as a worker runs it: parse, look up, admit,
//! decide, install, account, run the app, rewrite, set the MACs. Frames are
//! built and checked by `etherparse`.

use super::{config::PolicyConfig, *};
use crate::rewrite;
use etherparse::{NetHeaders, PacketBuilder, PacketHeaders, TransportHeader};
use handoff_common::parse::tcp_flags::SYN;
use handoff_common::parse::{parse_frame, tcp_flags::ACK};
use std::{net::Ipv4Addr, path::Path};

const NODE_MAC: [u8; 6] = [2, 0, 0, 0, 0xfd, 1];
const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const ROUTER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
const CONFIG: &str = r#"
[table]
capacity = 64

[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[default]
action = "drop"
gateway = "router"

[[service]]
vip = "10.0.9.1"
protocol = "tcp"
port = 80
[[service.backend]]
address = "10.1.0.1"
port = 8080
mac = "02:00:00:00:01:01"
"#;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Sent,
    Dropped,
    Redirected(Owner),
}

struct Worker {
    policy: Policy,
    table: FlowTable,
    apps: AppRegistry,
}

impl Worker {
    fn new() -> Self {
        let config = PolicyConfig::parse(CONFIG, Path::new("test.toml")).unwrap();
        let policy = Policy::new(config).unwrap();
        let table = FlowTable::new(policy.table_config(), Owner { node: 1, worker: 0 }).unwrap();
        Self {
            policy,
            table,
            apps: AppRegistry::new(),
        }
    }

    fn handle(&mut self, frame: &mut [u8], now: Timestamp) -> Outcome {
        let headers = parse_frame(&*frame).unwrap();
        let slot = match self.table.lookup(&headers.key) {
            Some(slot) => slot,
            None => {
                if self.table.admit(&headers.key, headers.tcp_flags) == Admission::Drop {
                    return Outcome::Dropped;
                }
                match self.policy.decide(&headers.key) {
                    Decision::Drop | Decision::NoService => return Outcome::Dropped,
                    Decision::Install { reverse_key, actions } => {
                        let slots = self.table.install(headers.key, reverse_key, actions, now);
                        slots.unwrap().forward
                    }
                }
            }
        };
        let entry = *self.table.on_packet(slot, headers.tcp_flags, frame.len(), now).unwrap();
        if self.apps.run(&entry, frame).unwrap() == AppVerdict::Drop {
            return Outcome::Dropped;
        }
        let next_hop = match entry.network {
            NetworkAction::Forward { next_hop } => next_hop,
            NetworkAction::Rewrite(r) => {
                rewrite::apply(frame, &headers, &r).unwrap();
                r.next_hop
            }
            NetworkAction::Redirect { owner } => return Outcome::Redirected(owner),
        };
        let mac = self.policy.neighbors()[next_hop as usize].mac;
        rewrite::set_macs(frame, NODE_MAC, mac).unwrap();
        Outcome::Sent
    }
}

fn tcp(src: (&str, u16), dst: (&str, u16), flags: u8) -> Vec<u8> {
    let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap().octets();
    let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], NODE_MAC)
        .ipv4(ip(src.0), ip(dst.0), 64)
        .tcp(src.1, dst.1, 1, 1000);
    let builder = if flags & SYN != 0 { builder.syn() } else { builder };
    let builder = if flags & ACK != 0 { builder.ack(1) } else { builder };
    let mut frame = Vec::new();
    builder.write(&mut frame, b"hello").unwrap();
    frame
}

/// `(dst MAC, src, dst)` of a frame whose checksums etherparse confirms.
fn seen(frame: &[u8]) -> ([u8; 6], (String, u16), (String, u16)) {
    let p = PacketHeaders::from_ethernet_slice(frame).unwrap();
    let Some(NetHeaders::Ipv4(ip, _)) = p.net else {
        panic!("not IPv4")
    };
    let Some(TransportHeader::Tcp(t)) = p.transport else {
        panic!("not TCP")
    };
    assert_eq!(ip.header_checksum, ip.calc_header_checksum());
    assert_eq!(t.checksum, t.calc_checksum_ipv4(&ip, p.payload.slice()).unwrap());
    let mac = p.link.unwrap().ethernet2().unwrap().destination;
    let addr = |a: [u8; 4]| Ipv4Addr::from(a).to_string();
    (
        mac,
        (addr(ip.source), t.source_port),
        (addr(ip.destination), t.destination_port),
    )
}

#[test]
fn a_connection_is_dnated_to_its_backend_and_its_replies_come_back_from_the_vip() {
    let mut worker = Worker::new();
    let now = Timestamp::from_nanos(1);
    let client = ("10.0.0.7", 40000);

    let mut syn = tcp(client, ("10.0.9.1", 80), SYN);
    assert_eq!(worker.handle(&mut syn, now), Outcome::Sent);
    assert_eq!(
        seen(&syn),
        (BACKEND_MAC, ("10.0.0.7".into(), 40000), ("10.1.0.1".into(), 8080))
    );

    let mut syn_ack = tcp(("10.1.0.1", 8080), client, SYN | ACK);
    assert_eq!(worker.handle(&mut syn_ack, now), Outcome::Sent);
    assert_eq!(
        seen(&syn_ack),
        (ROUTER_MAC, ("10.0.9.1".into(), 80), ("10.0.0.7".into(), 40000))
    );

    let mut ack = tcp(client, ("10.0.9.1", 80), ACK);
    assert_eq!(worker.handle(&mut ack, now), Outcome::Sent);
    let slot = worker
        .table
        .lookup(&parse_frame(&*tcp(client, ("10.0.9.1", 80), ACK)).unwrap().key);
    let entry = worker.table.entry(slot.unwrap()).unwrap();
    assert_eq!((entry.tcp, entry.packets), (TcpState::Established, 2));
    assert_eq!(worker.table.counters().created, 1);
}

#[test]
fn strays_are_dropped_and_moved_flows_redirected() {
    let mut worker = Worker::new();
    let now = Timestamp::from_nanos(1);
    let mut stray = tcp(("10.0.0.8", 1), ("10.0.9.1", 80), ACK);
    assert_eq!(worker.handle(&mut stray, now), Outcome::Dropped);
    assert_eq!(worker.table.counters().miss_dropped, 1);
    let mut elsewhere = tcp(("10.0.0.8", 1), ("10.0.7.7", 80), SYN);
    assert_eq!(worker.handle(&mut elsewhere, now), Outcome::Dropped);
    assert!(worker.table.is_empty());

    let mut syn = tcp(("10.0.0.8", 2), ("10.0.9.1", 80), SYN);
    assert_eq!(worker.handle(&mut syn, now), Outcome::Sent);
    let slot = worker.table.entries().next().unwrap().0;
    let inheritor = Owner { node: 2, worker: 1 };
    worker.table.redirect(slot, inheritor).unwrap();
    let mut next = tcp(("10.0.0.8", 2), ("10.0.9.1", 80), ACK);
    assert_eq!(worker.handle(&mut next, now), Outcome::Redirected(inheritor));
}

#[test]
fn a_drop_app_drops_a_flows_packets() {
    let mut worker = Worker::new();
    let now = Timestamp::from_nanos(1);
    let mut syn = tcp(("10.0.0.8", 2), ("10.0.9.1", 80), SYN);
    let key = parse_frame(&*syn).unwrap().key;
    let Decision::Install {
        reverse_key,
        mut actions,
    } = worker.policy.decide(&key)
    else {
        panic!("service flow dropped");
    };
    actions.app = AppId::DROP;
    worker.table.install(key, reverse_key, actions, now).unwrap();
    let original = syn.clone();
    assert_eq!(worker.handle(&mut syn, now), Outcome::Dropped);
    assert_eq!(syn, original);
}
