//! Frames: a length prefix, a fixed header, and a postcard body.
//!
//! ```text
//! offset  size  field
//!      0     4  payload length N, big-endian (everything below)
//!      4     4  magic "HOFF"
//!      8     2  protocol version, big-endian
//!     10     2  message kind, big-endian
//!     12     2  sender, big-endian
//!     14     8  message serial, big-endian, never 0
//!     22     8  sender incarnation, big-endian
//!     30     8  serial this replies to, big-endian, 0 for none
//!     38   N-34 body, postcard
//! ```
//!
//! The header layout is the same in every protocol version, so any build can
//! read who sent a frame and in which version, and answer it, even when it
//! cannot decode the body.

use std::num::NonZeroU64;

use super::{
    ids::{Incarnation, Sender, VersionRange},
    message::{Body, MessageKind},
};

/// The first four payload bytes of every frame.
pub const MAGIC: [u8; 4] = *b"HOFF";
/// The protocol version this build writes.
pub const PROTOCOL_VERSION: u16 = 1;
/// The protocol versions this build reads.
pub const SUPPORTED_VERSIONS: VersionRange = VersionRange { min: 1, max: 1 };
/// Bytes of the length prefix.
pub const LENGTH_PREFIX_LEN: usize = 4;
/// Bytes of the fixed header that follows the length prefix.
pub const HEADER_LEN: usize = 34;
/// Largest payload (header and body) a frame may declare. Checked before
/// anything is allocated; a snapshot is split into chunks well below it.
pub const MAX_FRAME_LEN: u32 = 16 << 20;

/// The fixed header of a frame, readable whatever the version and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Protocol version the body is encoded in.
    pub version: u16,
    /// Raw message kind; may be one this build does not know.
    pub kind: u16,
    /// Who sent it.
    pub sender: Sender,
    /// The sender's serial for this message.
    pub serial: NonZeroU64,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
    /// The serial of the message this one answers.
    pub reply_to: Option<NonZeroU64>,
}

/// A decoded message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Protocol version.
    pub version: u16,
    /// Who sent it.
    pub sender: Sender,
    /// The sender's serial for this message: increases with every message
    /// of a session, so receivers can spot duplicates.
    pub serial: NonZeroU64,
    /// The sender's incarnation.
    pub incarnation: Incarnation,
    /// The serial of the message this one answers.
    pub reply_to: Option<NonZeroU64>,
    /// The message.
    pub body: Body,
}

impl Envelope {
    /// A message at [`PROTOCOL_VERSION`] that answers nothing.
    pub fn new(sender: Sender, incarnation: Incarnation, serial: NonZeroU64, body: impl Into<Body>) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            sender,
            serial,
            incarnation,
            reply_to: None,
            body: body.into(),
        }
    }
}

/// A message that cannot be framed.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The encoded payload exceeds [`MAX_FRAME_LEN`]; split the contents.
    #[error("{kind:?} payload of {len} bytes exceeds the frame limit of {MAX_FRAME_LEN}")]
    FrameTooLarge {
        /// The message's kind.
        kind: MessageKind,
        /// The payload's size.
        len: usize,
    },
    /// postcard refused the body.
    #[error("cannot encode {kind:?} body")]
    Body {
        /// The message's kind.
        kind: MessageKind,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
}

/// Input that is not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the length prefix.
    #[error("{len} bytes cannot hold the {LENGTH_PREFIX_LEN}-byte length prefix")]
    MissingLengthPrefix {
        /// Bytes present.
        len: usize,
    },
    /// The length prefix is above [`MAX_FRAME_LEN`].
    #[error("declared frame length {declared} exceeds the limit of {MAX_FRAME_LEN}")]
    TooLarge {
        /// The declared payload length.
        declared: u32,
    },
    /// The payload cannot hold the fixed header.
    #[error("payload of {len} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort {
        /// The payload's length.
        len: usize,
    },
    /// The bytes after the prefix are not as many as it declares.
    #[error("length prefix declares {declared} bytes, {actual} follow")]
    LengthMismatch {
        /// The declared payload length.
        declared: u32,
        /// The bytes that follow the prefix.
        actual: usize,
    },
    /// Not a handoff frame.
    #[error("bad magic {found:02x?}")]
    BadMagic {
        /// The first four payload bytes.
        found: [u8; 4],
    },
    /// A version this build cannot decode.
    #[error("protocol version {version} is not in the supported range {SUPPORTED_VERSIONS}")]
    UnsupportedVersion {
        /// The frame's version.
        version: u16,
    },
    /// A sender value that names nobody.
    #[error("sender value {raw:#06x} is unassigned")]
    UnassignedSender {
        /// The value found.
        raw: u16,
    },
    /// Serial 0 is reserved for "no serial" in `reply_to`.
    #[error("message serial is 0")]
    ZeroSerial,
    /// A kind this build does not know.
    #[error("unknown message kind {kind:#06x}")]
    UnknownKind {
        /// The raw kind.
        kind: u16,
    },
    /// The body does not decode as its kind.
    #[error("malformed {kind:?} body")]
    MalformedBody {
        /// The frame's kind.
        kind: MessageKind,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// Bytes left after the body.
    #[error("{count} bytes after the {kind:?} body")]
    TrailingBytes {
        /// The frame's kind.
        kind: MessageKind,
        /// How many.
        count: usize,
    },
}

fn be_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

fn be_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_be_bytes(word)
}

impl Header {
    /// Reads the header at the front of a payload (the bytes after the length
    /// prefix). Checks the magic and that sender and serial are valid; the
    /// version and kind are returned as found, so a caller can still answer a
    /// frame it cannot decode.
    pub fn parse(payload: &[u8]) -> Result<Header, DecodeError> {
        if payload.len() < HEADER_LEN {
            return Err(DecodeError::TooShort { len: payload.len() });
        }
        let mut magic = [0u8; 4];
        magic.copy_from_slice(&payload[..4]);
        if magic != MAGIC {
            return Err(DecodeError::BadMagic { found: magic });
        }
        let raw_sender = be_u16(payload, 8);
        let sender = Sender::from_wire(raw_sender).ok_or(DecodeError::UnassignedSender { raw: raw_sender })?;
        let serial = NonZeroU64::new(be_u64(payload, 10)).ok_or(DecodeError::ZeroSerial)?;
        Ok(Header {
            version: be_u16(payload, 4),
            kind: be_u16(payload, 6),
            sender,
            serial,
            incarnation: Incarnation(be_u64(payload, 18)),
            reply_to: NonZeroU64::new(be_u64(payload, 26)),
        })
    }
}

/// Encodes a complete frame, length prefix included.
pub fn encode(envelope: &Envelope) -> Result<Vec<u8>, EncodeError> {
    let kind = envelope.body.kind();
    let mut out = Vec::with_capacity(LENGTH_PREFIX_LEN + HEADER_LEN + 64);
    out.extend_from_slice(&[0; LENGTH_PREFIX_LEN]);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&envelope.version.to_be_bytes());
    out.extend_from_slice(&kind.to_wire().to_be_bytes());
    out.extend_from_slice(&envelope.sender.to_wire().to_be_bytes());
    out.extend_from_slice(&envelope.serial.get().to_be_bytes());
    out.extend_from_slice(&envelope.incarnation.0.to_be_bytes());
    out.extend_from_slice(&envelope.reply_to.map_or(0, NonZeroU64::get).to_be_bytes());
    let mut out = envelope
        .body
        .encode_into(out)
        .map_err(|source| EncodeError::Body { kind, source })?;
    let len = out.len() - LENGTH_PREFIX_LEN;
    let declared = u32::try_from(len)
        .ok()
        .filter(|&l| l <= MAX_FRAME_LEN)
        .ok_or(EncodeError::FrameTooLarge { kind, len })?;
    out[..LENGTH_PREFIX_LEN].copy_from_slice(&declared.to_be_bytes());
    Ok(out)
}

/// Decodes a payload (a frame without its length prefix).
pub fn decode_payload(payload: &[u8]) -> Result<Envelope, DecodeError> {
    if payload.len() > MAX_FRAME_LEN as usize {
        return Err(DecodeError::TooLarge {
            declared: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        });
    }
    let header = Header::parse(payload)?;
    if !SUPPORTED_VERSIONS.contains(header.version) {
        return Err(DecodeError::UnsupportedVersion {
            version: header.version,
        });
    }
    let kind = MessageKind::from_wire(header.kind).ok_or(DecodeError::UnknownKind { kind: header.kind })?;
    let (body, rest) =
        Body::decode(kind, &payload[HEADER_LEN..]).map_err(|source| DecodeError::MalformedBody { kind, source })?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes {
            kind,
            count: rest.len(),
        });
    }
    Ok(Envelope {
        version: header.version,
        sender: header.sender,
        serial: header.serial,
        incarnation: header.incarnation,
        reply_to: header.reply_to,
        body,
    })
}

/// Checks a length prefix against the limits, before anything is allocated
/// for the payload it announces.
pub fn check_length_prefix(prefix: [u8; LENGTH_PREFIX_LEN]) -> Result<usize, DecodeError> {
    let declared = u32::from_be_bytes(prefix);
    if declared > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge { declared });
    }
    let len = declared as usize;
    if len < HEADER_LEN {
        return Err(DecodeError::TooShort { len });
    }
    Ok(len)
}

/// Decodes exactly one complete frame, length prefix included.
pub fn decode_frame(frame: &[u8]) -> Result<Envelope, DecodeError> {
    let (prefix, payload) = frame
        .split_first_chunk::<LENGTH_PREFIX_LEN>()
        .ok_or(DecodeError::MissingLengthPrefix { len: frame.len() })?;
    let declared = u32::from_be_bytes(*prefix);
    let len = check_length_prefix(*prefix)?;
    if payload.len() != len {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    decode_payload(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{
        flow::tests::node,
        message::{ErrorCode, ErrorReply, Heartbeat, StatusRequest},
        samples::every_body,
    };

    fn serial(n: u64) -> NonZeroU64 {
        NonZeroU64::new(n).expect("test serials are nonzero")
    }

    fn envelopes() -> Vec<Envelope> {
        every_body()
            .into_iter()
            .enumerate()
            .map(|(i, body)| Envelope {
                reply_to: (i % 2 == 0).then(|| serial(1000 + i as u64)),
                ..Envelope::new(
                    Sender::Node(node(i as u16)),
                    Incarnation(0xfeed_0000 + i as u64),
                    serial(i as u64 + 1),
                    body,
                )
            })
            .collect()
    }

    fn small_frame() -> Vec<u8> {
        let env = Envelope::new(Sender::Operator, Incarnation(1), serial(9), StatusRequest);
        encode(&env).expect("encodes")
    }

    /// Rewrites the length prefix to match the payload after it.
    fn fix_length(frame: &mut [u8]) {
        let len = (frame.len() - LENGTH_PREFIX_LEN) as u32;
        frame[..LENGTH_PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// A deterministic xorshift generator, so fuzz failures reproduce.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Anything that decodes must survive a round trip unchanged.
    fn assert_stable(decoded: &Envelope) {
        let again = encode(decoded).expect("a decoded envelope re-encodes");
        let redecoded = decode_frame(&again).expect("and decodes again");
        assert_eq!(&redecoded, decoded);
    }

    #[test]
    fn every_kind_round_trips_with_its_header() {
        let envelopes = envelopes();
        let kinds: Vec<_> = envelopes.iter().map(|e| e.body.kind()).collect();
        assert_eq!(kinds, MessageKind::ALL, "samples cover every kind in order");
        for env in envelopes {
            let frame = encode(&env).expect("encodes");
            assert_eq!(decode_frame(&frame).expect("decodes"), env);
            let header = Header::parse(&frame[LENGTH_PREFIX_LEN..]).expect("header parses");
            assert_eq!(
                header,
                Header {
                    version: PROTOCOL_VERSION,
                    kind: env.body.kind().to_wire(),
                    sender: env.sender,
                    serial: env.serial,
                    incarnation: env.incarnation,
                    reply_to: env.reply_to,
                }
            );
        }
    }

    #[test]
    fn header_layout_is_pinned() {
        let env = Envelope {
            reply_to: Some(serial(0x0102_0304_0506_0708)),
            ..Envelope::new(Sender::Manager, Incarnation(0xaabb), serial(5), StatusRequest)
        };
        let frame = encode(&env).expect("encodes");
        let expected: Vec<u8> = [
            &[0, 0, 0, 34][..],
            b"HOFF",
            &[0, 1],
            &[0x04, 0x03],
            &[0xff, 0xff],
            &[0, 0, 0, 0, 0, 0, 0, 5],
            &[0, 0, 0, 0, 0, 0, 0xaa, 0xbb],
            &[1, 2, 3, 4, 5, 6, 7, 8],
        ]
        .concat();
        assert_eq!(frame, expected);
    }

    #[test]
    fn every_truncation_of_every_kind_is_an_error() {
        for env in envelopes() {
            let frame = encode(&env).expect("encodes");
            for cut in 0..frame.len() {
                let short = &frame[..cut];
                assert!(decode_frame(short).is_err(), "{:?} cut at {cut}", env.body.kind());
                // With the prefix fixed up the body itself is short.
                let mut relabelled = short.to_vec();
                if relabelled.len() >= LENGTH_PREFIX_LEN {
                    fix_length(&mut relabelled);
                    assert!(
                        decode_frame(&relabelled).is_err(),
                        "{:?} body cut at {cut}",
                        env.body.kind()
                    );
                }
            }
        }
    }

    #[test]
    fn random_bytes_never_panic_and_whatever_decodes_is_stable() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut rejected = 0;
        for _ in 0..5_000 {
            let len = rng.below(300);
            let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            match decode_frame(&bytes) {
                Ok(env) => assert_stable(&env),
                Err(_) => rejected += 1,
            }
        }
        assert_eq!(rejected, 5_000, "pure noise never carries the magic");
    }

    #[test]
    fn random_bodies_behind_valid_headers_never_panic() {
        let mut rng = XorShift(42);
        let mut decoded = 0;
        for i in 0..20_000 {
            let kind = MessageKind::ALL[i % MessageKind::ALL.len()];
            let mut frame = small_frame();
            frame[10..12].copy_from_slice(&kind.to_wire().to_be_bytes());
            frame.truncate(LENGTH_PREFIX_LEN + HEADER_LEN);
            frame.extend((0..rng.below(64)).map(|_| rng.next() as u8));
            fix_length(&mut frame);
            if let Ok(env) = decode_frame(&frame) {
                assert_eq!(env.body.kind(), kind);
                assert_stable(&env);
                decoded += 1;
            }
        }
        // Some small bodies are valid by chance; the decoder must see them too.
        assert!(decoded > 0);
    }

    #[test]
    fn mutated_valid_frames_never_panic() {
        let mut rng = XorShift(7);
        let frames: Vec<Vec<u8>> = envelopes().iter().map(|e| encode(e).expect("encodes")).collect();
        for i in 0..20_000 {
            let mut frame = frames[i % frames.len()].clone();
            for _ in 0..=rng.below(4) {
                let at = LENGTH_PREFIX_LEN + rng.below(frame.len() - LENGTH_PREFIX_LEN);
                match rng.below(3) {
                    0 => frame[at] = rng.next() as u8,
                    1 => frame.insert(at, rng.next() as u8),
                    _ => {
                        frame.remove(at);
                    }
                }
                if frame.len() <= LENGTH_PREFIX_LEN {
                    break;
                }
            }
            fix_length(&mut frame);
            if let Ok(env) = decode_frame(&frame) {
                assert_stable(&env);
            }
        }
    }

    #[test]
    fn oversize_length_prefixes_are_rejected_before_reading_on() {
        let mut frame = small_frame();
        frame[..4].copy_from_slice(&(MAX_FRAME_LEN + 1).to_be_bytes());
        assert!(matches!(
            decode_frame(&frame),
            Err(DecodeError::TooLarge { declared }) if declared == MAX_FRAME_LEN + 1
        ));
        assert!(matches!(
            check_length_prefix([0xff; 4]),
            Err(DecodeError::TooLarge { declared: u32::MAX })
        ));
        assert!(matches!(
            check_length_prefix(33u32.to_be_bytes()),
            Err(DecodeError::TooShort { len: 33 })
        ));
        assert!(matches!(
            decode_frame(&[0, 0]),
            Err(DecodeError::MissingLengthPrefix { len: 2 })
        ));
    }

    #[test]
    fn a_payload_past_the_limit_neither_encodes_nor_decodes() {
        let huge = ErrorReply {
            code: ErrorCode::InvalidRequest,
            detail: "x".repeat(MAX_FRAME_LEN as usize),
        };
        let env = Envelope::new(Sender::Manager, Incarnation(1), serial(1), huge.clone());
        assert!(matches!(
            encode(&env),
            Err(EncodeError::FrameTooLarge { kind: MessageKind::ErrorReply, len })
                if len > MAX_FRAME_LEN as usize
        ));
        let mut payload = small_frame()[LENGTH_PREFIX_LEN..].to_vec();
        payload[6..8].copy_from_slice(&MessageKind::ErrorReply.to_wire().to_be_bytes());
        let payload = postcard::to_extend(&huge, payload).expect("encodes");
        assert!(matches!(decode_payload(&payload), Err(DecodeError::TooLarge { .. })));
    }

    #[test]
    fn wrong_version_is_rejected_but_its_header_still_reads() {
        let mut frame = small_frame();
        frame[8..10].copy_from_slice(&2u16.to_be_bytes());
        assert!(matches!(
            decode_frame(&frame),
            Err(DecodeError::UnsupportedVersion { version: 2 })
        ));
        let header = Header::parse(&frame[LENGTH_PREFIX_LEN..]).expect("header reads");
        assert_eq!((header.version, header.serial), (2, serial(9)));
    }

    #[test]
    fn trailing_garbage_and_a_bumped_length_are_rejected() {
        let mut frame = small_frame();
        frame.push(0);
        assert!(matches!(
            decode_frame(&frame),
            Err(DecodeError::LengthMismatch {
                declared: 34,
                actual: 35
            })
        ));
        fix_length(&mut frame);
        assert!(matches!(
            decode_frame(&frame),
            Err(DecodeError::TrailingBytes {
                kind: MessageKind::StatusRequest,
                count: 1
            })
        ));
        let mut bumped = small_frame();
        bumped[..4].copy_from_slice(&35u32.to_be_bytes());
        assert!(matches!(
            decode_frame(&bumped),
            Err(DecodeError::LengthMismatch {
                declared: 35,
                actual: 34
            })
        ));
    }

    #[test]
    fn bad_header_fields_are_named() {
        let patch = |at: usize, bytes: &[u8]| {
            let mut frame = small_frame();
            frame[at..at + bytes.len()].copy_from_slice(bytes);
            decode_frame(&frame)
        };
        assert!(matches!(
            patch(4, b"HOFX"),
            Err(DecodeError::BadMagic { found }) if &found == b"HOFX"
        ));
        assert!(matches!(
            patch(10, &0x0106u16.to_be_bytes()),
            Err(DecodeError::UnknownKind { kind: 0x0106 })
        ));
        assert!(matches!(
            patch(12, &0xfff0u16.to_be_bytes()),
            Err(DecodeError::UnassignedSender { raw: 0xfff0 })
        ));
        assert!(matches!(patch(14, &[0; 8]), Err(DecodeError::ZeroSerial)));
    }

    #[test]
    fn a_body_of_another_kind_is_malformed() {
        let env = Envelope::new(
            Sender::Node(node(1)),
            Incarnation(1),
            serial(1),
            Heartbeat {
                // Read as an ErrorReply, 200 is an error code that does not exist.
                scope_version: 200,
                workers: vec![],
            },
        );
        let mut frame = encode(&env).expect("encodes");
        frame[10..12].copy_from_slice(&MessageKind::ErrorReply.to_wire().to_be_bytes());
        assert!(matches!(
            decode_frame(&frame),
            Err(DecodeError::MalformedBody {
                kind: MessageKind::ErrorReply,
                ..
            })
        ));
    }
}
