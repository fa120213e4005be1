//! The header every generated packet carries at the start of its UDP payload,
//! so the sink can count per flow and measure latency. The UDP echo service
//! returns it unchanged.
//!
//! ```text
//! 0      2         6         10                  18
//! | magic | flow id | sequence | send time (ns, CLOCK_MONOTONIC) |
//! ```
//! 18 bytes, all big-endian: a 60-byte Ethernet frame (64 with FCS) still holds it.

/// Marks a handoff bench payload.
pub const MAGIC: u16 = 0x4846; // "HF"
/// Header length.
pub const HEADER_LEN: usize = 18;

/// The decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchHeader {
    /// Flow index in the generator's flow set.
    pub flow: u32,
    /// Per-flow sequence number, from 0.
    pub seq: u32,
    /// Send time, nanoseconds of CLOCK_MONOTONIC (shared by every namespace of a host).
    pub sent_ns: u64,
}

impl BenchHeader {
    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn write(&self, out: &mut [u8]) -> Option<()> {
        let out = out.get_mut(..HEADER_LEN)?;
        out[0..2].copy_from_slice(&MAGIC.to_be_bytes());
        out[2..6].copy_from_slice(&self.flow.to_be_bytes());
        out[6..10].copy_from_slice(&self.seq.to_be_bytes());
        out[10..18].copy_from_slice(&self.sent_ns.to_be_bytes());
        Some(())
    }

    /// Reads a header; `None` if the payload is too short or the magic is wrong.
    pub fn read(payload: &[u8]) -> Option<Self> {
        let h = payload.get(..HEADER_LEN)?;
        if u16::from_be_bytes([h[0], h[1]]) != MAGIC {
            return None;
        }
        Some(Self {
            flow: u32::from_be_bytes([h[2], h[3], h[4], h[5]]),
            seq: u32::from_be_bytes([h[6], h[7], h[8], h[9]]),
            sent_ns: u64::from_be_bytes([h[10], h[11], h[12], h[13], h[14], h[15], h[16], h[17]]),
        })
    }
}

/// Nanoseconds of CLOCK_MONOTONIC.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejection() {
        let h = BenchHeader {
            flow: 999_999,
            seq: u32::MAX,
            sent_ns: 1 << 60,
        };
        let mut buf = [0u8; 20];
        h.write(&mut buf).unwrap();
        assert_eq!(BenchHeader::read(&buf), Some(h));
        assert_eq!(BenchHeader::read(&buf[..17]), None);
        buf[0] = 0;
        assert_eq!(BenchHeader::read(&buf), None);
        assert!(h.write(&mut [0u8; 5]).is_none());
    }
}
