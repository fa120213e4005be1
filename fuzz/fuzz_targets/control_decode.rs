//! Every control-protocol decoder (`handoff::control`) and the flow-record
//! wire forms (`control::flow`, `migration::wire`), on arbitrary bytes.
//!
//! The bytes are tried as a whole frame (`decode_frame`), as a payload
//! (`decode_payload`, the bytes after a length prefix), as a length prefix,
//! and as postcard-encoded flow records of every version.
//!
//! Invariants: no panic; a decoded message encodes again and decodes to
//! itself; whatever a decoded message carries that its receiver validates
//! (scopes, flow records) is validated without panicking; a record that
//! translates to another version and back is the same flow; a record a
//! node installs (`from_wire`) gives back the same key and action on the
//! wire (`to_wire`).
#![no_main]

use handoff::{
    control::{
        codec::{check_length_prefix, Header, LENGTH_PREFIX_LEN},
        decode_frame, decode_payload, encode,
        flow::{FlowRecord, FlowRecordV1, FlowRecordV2, NetworkActionV2, NextHop, RecordVersion, TcpState},
        message::DeltaOp,
        Body, Envelope,
    },
    flow::{config::PolicyConfig, Policy, Timestamp},
    migration::wire::{from_wire, to_wire},
};
use libfuzzer_sys::fuzz_target;
use std::{net::Ipv4Addr, path::Path, sync::OnceLock};

/// The receiving node's policy: the next hops a record may name.
const POLICY: &str = r#"
[[neighbor]]
name = "router"
mac = "02:00:00:00:00:fe"

[[neighbor]]
name = "backend"
mac = "02:00:00:00:02:01"

[default]
action = "forward"
gateway = "router"

[[service]]
vip = "10.9.0.1"
protocol = "tcp"
port = 80
[[service.backend]]
address = "10.2.0.5"
port = 8080
neighbor = "backend"
"#;

fn policy() -> &'static Policy {
    static POLICY_CELL: OnceLock<Policy> = OnceLock::new();
    POLICY_CELL.get_or_init(|| {
        Policy::new(PolicyConfig::parse(POLICY, Path::new("policy.toml")).expect("the harness policy parses"))
            .expect("the harness policy is valid")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode_frame(data) {
        round_trip(&envelope);
        validate(&envelope.body);
    }
    if let Ok(envelope) = decode_payload(data) {
        round_trip(&envelope);
        validate(&envelope.body);
    }
    let _ = Header::parse(data);
    if let Some(prefix) = data.first_chunk::<LENGTH_PREFIX_LEN>() {
        let _ = check_length_prefix(*prefix);
    }
    if let Ok(record) = postcard::from_bytes::<FlowRecord>(data) {
        record_checks(record);
    }
    if let Ok(record) = postcard::from_bytes::<FlowRecordV1>(data) {
        record_checks(FlowRecord::V1(record));
    }
    if let Ok(record) = postcard::from_bytes::<FlowRecordV2>(data) {
        record_checks(FlowRecord::V2(record));
    }
});

/// A decoded message encodes, and the encoding decodes to the same message.
fn round_trip(envelope: &Envelope) {
    let frame = encode(envelope).expect("a decoded message encodes");
    let again = decode_frame(&frame).expect("an encoded message decodes");
    assert_eq!(&again, envelope);
}

/// What a receiver validates before it acts on a message.
fn validate(body: &Body) {
    match body {
        Body::RegisterAck(ack) => {
            let _ = ack.scope.to_scope();
        }
        Body::ScopeUpdate(update) => {
            let _ = update.scope.to_scope();
        }
        Body::FlowRecords(chunk) => chunk.records.iter().copied().for_each(record_checks),
        Body::FlowDelta(delta) => {
            for op in &delta.ops {
                match op {
                    DeltaOp::Insert(r) | DeltaOp::Update(r) => record_checks(*r),
                    DeltaOp::Delete(key) => {
                        let _ = key.to_string();
                    }
                }
            }
        }
        _ => {}
    }
}

fn record_checks(record: FlowRecord) {
    let _ = record.key().to_string();
    // Upgrades are exact; a downgrade that succeeds upgrades back to the
    // same flow (V2's reverse counters are bookkeeping V1 drops).
    let v2 = record.translate(RecordVersion::V2).expect("every record has a V2 form");
    let FlowRecord::V2(v2) = v2 else {
        panic!("translate(V2) gave {v2:?}")
    };
    if let FlowRecord::V1(v1) = record {
        assert_eq!(v2.to_v1(), Ok(v1));
    }
    if let Ok(v1) = v2.to_v1() {
        let back = FlowRecordV2::from(v1);
        assert_eq!(
            FlowRecordV2 {
                reverse_counters: None,
                ..v2
            },
            back
        );
    }
    // A node installs it (or refuses it), and sends back the same flow.
    let now = Timestamp::from_nanos(1 << 40);
    if let Ok(installed) = from_wire(&v2, policy(), now) {
        let sent = to_wire(&installed, policy(), now).expect("an installed record has a wire form");
        assert_eq!(sent.key, v2.key);
        assert_eq!(sent.owner, v2.owner);
        assert_eq!(without_hop_ip(sent.action), without_hop_ip(v2.action));
        assert_eq!(sent.tcp_state, after_install(v2.tcp_state));
    }
}

/// Next hops travel as MACs; the address beside one is not kept.
fn without_hop_ip(action: NetworkActionV2) -> NetworkActionV2 {
    let unspecified = |hop: NextHop| NextHop {
        ip: Ipv4Addr::UNSPECIFIED.into(),
        ..hop
    };
    match action {
        NetworkActionV2::Forward { next_hop } => NetworkActionV2::Forward {
            next_hop: unspecified(next_hop),
        },
        NetworkActionV2::Rewrite { side, to, next_hop } => NetworkActionV2::Rewrite {
            side,
            to,
            next_hop: unspecified(next_hop),
        },
        other => other,
    }
}

/// The states a node's table tells apart (a SYN-ACK is not tracked).
fn after_install(state: TcpState) -> TcpState {
    match state {
        TcpState::SynReceived => TcpState::SynSent,
        other => other,
    }
}
