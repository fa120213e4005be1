//! One populated body of every message kind, for codec tests.

use std::{net::Ipv6Addr, time::Duration};

use super::{
    flow::{
        tests::{full_nat_action, node, rewrite_action, v2_record, v4_key},
        FlowRecord, Owner, RecordVersion, WireAddrs, WireFlowKey,
    },
    ids::{Capabilities, Incarnation, MacAddr, MigrationSerial, VersionRange},
    message::*,
    scope_wire::{BucketRun, ScopeTable, WireHashParams, WireScope},
};
use crate::scope::UNOWNED;

fn v6_key() -> WireFlowKey {
    WireFlowKey {
        addrs: WireAddrs::V6 {
            src: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1),
            dst: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 9, 1),
        },
        src_port: 5353,
        dst_port: 53,
        protocol: 17,
    }
}

fn scope() -> WireScope {
    WireScope {
        version: 4,
        table: ScopeTable::Runs(vec![
            BucketRun { owner: 1, len: 3 },
            BucketRun { owner: UNOWNED, len: 5 },
        ]),
    }
}

fn member() -> MemberInfo {
    MemberInfo {
        node: node(1),
        name: "fd-a".into(),
        incarnation: Incarnation(0x1234_5678_9abc),
        status: MemberStatus::Active,
        capabilities: Capabilities::THIS_BUILD,
        control_addr: "10.10.0.2:7000".parse().expect("literal"),
        data_mac: MacAddr([2, 0, 0, 0, 0, 1]),
        data_ip: "10.1.0.2".parse().expect("literal"),
        workers: 2,
    }
}

fn report() -> MigrationReport {
    MigrationReport {
        serial: MigrationSerial(7),
        mode: MigrationMode::Disengage,
        target: node(1),
        phase: Phase::Copy,
    }
}

fn records() -> Vec<FlowRecord> {
    let v2 = v2_record(v4_key(1), rewrite_action());
    vec![
        FlowRecord::V1(v2.to_v1().expect("translatable")),
        FlowRecord::V2(v2),
        FlowRecord::V2(v2_record(v6_key(), full_nat_action())),
    ]
}

/// A body of every kind, each with its optional parts filled in.
pub(super) fn every_body() -> Vec<Body> {
    let serial = MigrationSerial(7);
    vec![
        ErrorReply {
            code: ErrorCode::UnknownNode,
            detail: "no node 9".into(),
        }
        .into(),
        Register {
            name: "fd-a".into(),
            software_version: "handoff 0.1.0".into(),
            protocol: VersionRange { min: 1, max: 1 },
            capabilities: Capabilities::THIS_BUILD,
            control_addr: "[2001:db8::2]:7000".parse().expect("literal"),
            data_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            data_ip: "10.1.0.2".parse().expect("literal"),
            workers: 4,
            in_progress: Some(report()),
        }
        .into(),
        RegisterAck {
            protocol_version: 1,
            capabilities: Capabilities::THIS_BUILD,
            hash: WireHashParams {
                buckets: 8,
                symmetric: true,
                seed: 3,
            },
            scope: scope(),
            members: vec![member(), member()],
            heartbeat_interval: Duration::from_millis(250),
        }
        .into(),
        Heartbeat {
            scope_version: 4,
            workers: vec![
                WorkerLoad {
                    flows: 10,
                    rx_pending: 1,
                    tx_pending: 0,
                },
                WorkerLoad {
                    flows: 1 << 40,
                    rx_pending: 0,
                    tx_pending: 9,
                },
            ],
        }
        .into(),
        ScopeUpdate { scope: scope() }.into(),
        MemberUpdate { member: member() }.into(),
        MigrateStart {
            serial,
            mode: MigrationMode::Engage,
            target: node(3),
            from_version: 4,
            plan: WireScope {
                version: 5,
                table: ScopeTable::Dense(vec![1, 3, 1, 3, 2, 2, 3, 1]),
            },
            deadline: Duration::from_secs(30),
        }
        .into(),
        Progress {
            serial,
            phase: Phase::Drain,
            flows_copied: 100,
            deltas_sent: 20,
            flows_remaining: 3,
            bytes_sent: 9_600,
        }
        .into(),
        ReadyToFlip {
            serial,
            flows_handed_over: 100,
        }
        .into(),
        Flipped {
            serial,
            scope_version: 5,
        }
        .into(),
        Drained { serial }.into(),
        Purged { serial }.into(),
        Abort {
            serial,
            reason: AbortReason::PeerRefused {
                node: node(2),
                reason: RefusalReason::NoCommonProtocolVersion {
                    ours: VersionRange { min: 1, max: 1 },
                    theirs: VersionRange { min: 2, max: 3 },
                },
            },
            detail: "peer session refused".into(),
        }
        .into(),
        Busy { current: report() }.into(),
        PeerHello {
            software_version: "handoff 0.2.0".into(),
            protocol: VersionRange { min: 1, max: 2 },
            capabilities: Capabilities::from_bits(Capabilities::THIS_BUILD.bits() | 1 << 50),
        }
        .into(),
        PeerHelloAck::Accepted {
            protocol_version: 1,
            record_version: Some(RecordVersion::V2),
            capabilities: Capabilities::THIS_BUILD,
        }
        .into(),
        TableAnnounce {
            serial,
            flows: 3,
            bytes_estimate: 400,
            record_version: RecordVersion::V2,
        }
        .into(),
        FlowRecords {
            serial,
            chunk: 0,
            records: records(),
        }
        .into(),
        FlowDelta {
            serial,
            seq: 2,
            ops: vec![
                DeltaOp::Insert(records()[0]),
                DeltaOp::Update(records()[2]),
                DeltaOp::Delete(v6_key()),
            ],
        }
        .into(),
        Cut {
            serial,
            chunks: 1,
            delta_batches: 3,
            version: (7 << 32) + 41,
        }
        .into(),
        CutAck { serial, flows: 3 }.into(),
        OwnershipBroadcast {
            serial,
            version: (7 << 32) + 42,
            changes: OwnershipChanges::Buckets(vec![
                BucketOwner {
                    bucket: 0,
                    node: node(2),
                },
                BucketOwner {
                    bucket: 65_535,
                    node: node(3),
                },
            ]),
        }
        .into(),
        OwnerAnnounce {
            version: 12,
            added: vec![FlowOwner {
                key: v6_key(),
                owner: Owner {
                    node: node(2),
                    worker: 1,
                },
            }],
            removed: vec![v4_key(4)],
        }
        .into(),
        Disengage {
            node: node(1),
            inheritor: InheritorChoice::Named(node(2)),
        }
        .into(),
        Engage { node: node(1) }.into(),
        StatusRequest.into(),
        StatusReply {
            scope_version: 4,
            members: vec![MemberReport {
                member: member(),
                flows: 42,
                last_heard: Duration::from_millis(120),
            }],
            migration: Some(report()),
        }
        .into(),
        Accepted { migration: serial }.into(),
    ]
}

/// Writes the control decoders' fuzz seed corpus: one frame of every
/// message kind, and every sample flow record in postcard form (the bytes
/// `fuzz/fuzz_targets/control_decode.rs` tries as records).
#[test]
#[ignore = "writes fuzz/corpus/control_decode; `make fuzz-seeds` runs it"]
fn write_fuzz_seeds() {
    use super::{codec::encode, ids::Sender, Envelope};
    use std::{fs, num::NonZeroU64, path::Path};

    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/control_decode");
    fs::create_dir_all(&dir).expect("creating the corpus directory");
    for (i, body) in every_body().into_iter().enumerate() {
        let name = format!("frame_{:?}", body.kind());
        let serial = NonZeroU64::new(i as u64 + 1).expect("nonzero");
        let envelope = Envelope::new(Sender::Node(node(1)), Incarnation(7), serial, body);
        fs::write(dir.join(name), encode(&envelope).expect("encodes")).expect("writing a seed");
    }
    for (i, record) in records().into_iter().enumerate() {
        let bytes = postcard::to_allocvec(&record).expect("encodes");
        fs::write(dir.join(format!("record_{i}_{}", record.version())), bytes).expect("writing a seed");
    }
}
