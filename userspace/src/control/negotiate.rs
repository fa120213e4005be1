//! Version and capability negotiation, and the refusal of handovers that
//! cannot be done safely between peers running different builds.
//!
//! Protocol versions govern the message layouts; the peers settle on the
//! highest version both speak. Flow record versions are negotiated separately
//! through the `FLOW_RECORD_*` capability bits, because a pair that shares no
//! record version can still exchange ownership announcements; it just cannot
//! hand flows over.

use super::{
    flow::{FlowRecord, RecordVersion},
    ids::{Capabilities, NodeId, VersionRange},
    message::{AbortReason, PeerHello, PeerHelloAck, RefusalReason},
};

/// Two parties cannot agree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The protocol version ranges do not overlap.
    #[error("no common protocol version: ours {ours}, theirs {theirs}")]
    NoCommonProtocolVersion {
        /// Our range.
        ours: VersionRange,
        /// Theirs.
        theirs: VersionRange,
    },
    /// No flow record version is advertised by both.
    #[error("no common flow record version: ours {ours}, theirs {theirs}")]
    NoCommonRecordVersion {
        /// Our capabilities.
        ours: Capabilities,
        /// Theirs.
        theirs: Capabilities,
    },
}

/// The highest protocol version in both ranges.
pub fn negotiate_protocol_version(ours: VersionRange, theirs: VersionRange) -> Result<u16, NegotiationError> {
    let highest = ours.max.min(theirs.max);
    if ours.contains(highest) && theirs.contains(highest) {
        Ok(highest)
    } else {
        Err(NegotiationError::NoCommonProtocolVersion { ours, theirs })
    }
}

/// The highest flow record version both capability sets advertise.
pub fn negotiate_record_version(ours: Capabilities, theirs: Capabilities) -> Result<RecordVersion, NegotiationError> {
    let common = ours & theirs;
    RecordVersion::ALL
        .into_iter()
        .rev()
        .find(|v| common.contains(v.capability()))
        .ok_or(NegotiationError::NoCommonRecordVersion { ours, theirs })
}

/// The answer to `theirs` from a node that would send `ours`.
pub fn answer_peer_hello(ours: &PeerHello, theirs: &PeerHello) -> PeerHelloAck {
    match negotiate_protocol_version(ours.protocol, theirs.protocol) {
        Ok(protocol_version) => PeerHelloAck::Accepted {
            protocol_version,
            record_version: negotiate_record_version(ours.capabilities, theirs.capabilities).ok(),
            capabilities: ours.capabilities & theirs.capabilities,
        },
        Err(_) => PeerHelloAck::Refused {
            reason: RefusalReason::NoCommonProtocolVersion {
                ours: ours.protocol,
                theirs: theirs.protocol,
            },
        },
    }
}

/// The record version a handover to `inheritor` uses, given its answer to our
/// hello, or the reason the migration aborts.
pub fn handover_record_version(inheritor: NodeId, ack: &PeerHelloAck) -> Result<RecordVersion, AbortReason> {
    match *ack {
        PeerHelloAck::Accepted {
            record_version: Some(version),
            ..
        } => Ok(version),
        PeerHelloAck::Accepted {
            record_version: None, ..
        } => Err(AbortReason::NoCommonRecordVersion { node: inheritor }),
        PeerHelloAck::Refused { reason } => Err(AbortReason::PeerRefused {
            node: inheritor,
            reason,
        }),
    }
}

/// `records` in the form `inheritor` reads, or the abort reason naming the
/// first flow that has no such form. Run over the snapshot before sending any
/// of it, and over every delta before sending it.
pub fn records_for_handover(
    inheritor: NodeId,
    records: impl IntoIterator<Item = FlowRecord>,
    version: RecordVersion,
) -> Result<Vec<FlowRecord>, AbortReason> {
    records
        .into_iter()
        .map(|r| {
            r.translate(version)
                .map_err(|flow| AbortReason::Untranslatable { node: inheritor, flow })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::flow::{
        tests::{full_nat_action, node, rewrite_action, v2_record, v4_key},
        Untranslatable, UntranslatableReason,
    };

    fn range(min: u16, max: u16) -> VersionRange {
        VersionRange { min, max }
    }

    fn hello(protocol: VersionRange, capabilities: Capabilities) -> PeerHello {
        PeerHello {
            software_version: "test".into(),
            protocol,
            capabilities,
        }
    }

    #[test]
    fn protocol_negotiation_picks_the_highest_overlap_or_refuses() {
        assert_eq!(negotiate_protocol_version(range(1, 3), range(2, 5)), Ok(3));
        assert_eq!(negotiate_protocol_version(range(2, 5), range(1, 3)), Ok(3));
        assert_eq!(negotiate_protocol_version(range(1, 1), range(1, 1)), Ok(1));
        assert_eq!(
            negotiate_protocol_version(range(1, 2), range(3, 4)),
            Err(NegotiationError::NoCommonProtocolVersion {
                ours: range(1, 2),
                theirs: range(3, 4)
            })
        );
        assert!(negotiate_protocol_version(range(4, 2), range(1, 5)).is_err());
    }

    #[test]
    fn record_negotiation_picks_the_highest_common_version() {
        let v1 = Capabilities::FLOW_RECORD_V1;
        let v2 = Capabilities::FLOW_RECORD_V2;
        assert_eq!(negotiate_record_version(v1 | v2, v1 | v2), Ok(RecordVersion::V2));
        assert_eq!(negotiate_record_version(v1 | v2, v1), Ok(RecordVersion::V1));
        assert_eq!(negotiate_record_version(v2, v1 | v2), Ok(RecordVersion::V2));
        let unknown_future = Capabilities::from_bits(1 << 63);
        assert_eq!(
            negotiate_record_version(v2, v1 | unknown_future),
            Err(NegotiationError::NoCommonRecordVersion {
                ours: v2,
                theirs: v1 | unknown_future
            })
        );
    }

    #[test]
    fn a_hello_answer_reports_the_terms_or_the_refusal() {
        let ours = hello(range(1, 1), Capabilities::THIS_BUILD);
        let older = hello(range(1, 1), Capabilities::FLOW_RECORD_V1 | Capabilities::OWNER_ANNOUNCE);
        assert_eq!(
            answer_peer_hello(&ours, &older),
            PeerHelloAck::Accepted {
                protocol_version: 1,
                record_version: Some(RecordVersion::V1),
                capabilities: Capabilities::FLOW_RECORD_V1 | Capabilities::OWNER_ANNOUNCE,
            }
        );
        let stateless = hello(range(1, 1), Capabilities::OWNER_ANNOUNCE);
        assert_eq!(
            handover_record_version(node(2), &answer_peer_hello(&ours, &stateless)),
            Err(AbortReason::NoCommonRecordVersion { node: node(2) })
        );
        let future = hello(range(2, 3), Capabilities::THIS_BUILD);
        let refused = answer_peer_hello(&ours, &future);
        let reason = RefusalReason::NoCommonProtocolVersion {
            ours: range(1, 1),
            theirs: range(2, 3),
        };
        assert_eq!(refused, PeerHelloAck::Refused { reason });
        assert_eq!(
            handover_record_version(node(3), &refused),
            Err(AbortReason::PeerRefused { node: node(3), reason })
        );
    }

    #[test]
    fn a_handover_to_a_v1_peer_translates_or_aborts_naming_the_flow() {
        let plain = FlowRecord::V2(v2_record(v4_key(1), rewrite_action()));
        let sent = records_for_handover(node(2), [plain], RecordVersion::V1).expect("a rewrite has a V1 form");
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].version(), RecordVersion::V1);

        let nat = FlowRecord::V2(v2_record(v4_key(9), full_nat_action()));
        let reason = records_for_handover(node(2), [plain, nat], RecordVersion::V1)
            .expect_err("full NAT cannot go to a V1 peer");
        assert_eq!(
            reason,
            AbortReason::Untranslatable {
                node: node(2),
                flow: Untranslatable {
                    key: v4_key(9),
                    target: RecordVersion::V1,
                    reason: UntranslatableReason::FullNat,
                },
            }
        );
        assert!(reason.to_string().contains("stateful handover to node 2 refused"));
        assert!(records_for_handover(node(2), [plain, nat], RecordVersion::V2).is_ok());
    }
}
