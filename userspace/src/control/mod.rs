//! The control protocol: what the manager, the nodes and the operator CLI say
//! to each other, and how it goes over TCP.
//!
//! - [`message`]: every message body and its kind number.
//! - [`codec`]: frames (length prefix, fixed header, postcard body) and the
//!   strict decoder.
//! - [`io`]: blocking frame reads and writes with timeouts.
//! - [`flow`]: the versioned wire form of a flow and translation between versions.
//! - [`negotiate`]: protocol and record version negotiation.
//! - [`stale`]: rejection of messages from dead incarnations, finished
//!   migration attempts, and duplicates.
//! - [`scope_wire`]: hash parameters and scope tables on the wire.
//! - [`tls`]: mutual TLS under the cluster CA, and TLS sessions two threads share.
//! - [`keys`]: the cluster CA and the certificates it issues.
//! - [`session`]: a control port's connection caps, handshake and refusal counters.
//!
//! `docs/control-protocol.md` describes the protocol as a whole.

pub mod codec;
pub mod flow;
pub mod ids;
pub mod io;
pub mod keys;
pub mod message;
pub mod negotiate;
pub mod scope_wire;
pub mod session;
pub mod stale;
pub mod tls;

#[cfg(test)]
mod samples;

pub use codec::{
    decode_frame, decode_payload, encode, DecodeError, EncodeError, Envelope, Header, MAX_FRAME_LEN, PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
};
pub use ids::{Capabilities, Incarnation, MigrationSerial, NodeId, Sender, VersionRange};
pub use io::{read_frame, read_frame_paced, read_frame_within, write_frame, FrameIoError};
pub use message::{Body, MessageKind};
pub use stale::{Freshness, StalenessFilter};
