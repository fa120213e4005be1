//! The flow hash: MurmurHash3 (x86, 32-bit; Austin Appleby, public domain)
//! over the ten words of a [`FlowKey`].
//!
//! Written out here rather than taken from a crate because the same function
//! must compile for `bpfel-unknown-none`, pass the verifier (no loops over
//! runtime lengths, no tables) and give identical bits in userspace, which uses
//! it to answer "which member and which core own this packet".

use crate::flow_key::FlowKey;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

/// How the edge and the nodes hash a flow.
#[repr(u32)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum HashMode {
    /// Both directions of a connection may hash differently (replies are then
    /// forwarded to the owner by the nodes).
    Directional = 0,
    /// Both directions of a connection hash the same.
    Symmetric = 1,
}

impl HashMode {
    /// Decodes the value stored in a map; unknown values mean directional.
    #[inline(always)]
    pub const fn from_raw(v: u32) -> Self {
        if v == Self::Symmetric as u32 {
            Self::Symmetric
        } else {
            Self::Directional
        }
    }
}

#[inline(always)]
const fn mix(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
const fn finish(h: u32, len_bytes: u32) -> u32 {
    let mut h = h ^ len_bytes;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3_x86_32 of 32-bit words.
#[inline(always)]
pub fn murmur3_words(words: &[u32; 10], seed: u32) -> u32 {
    let mut h = seed;
    let mut i = 0;
    while i < words.len() {
        h = mix(h, words[i]);
        i += 1;
    }
    finish(h, (words.len() * 4) as u32)
}

/// True if `(a_addr, a_port)` sorts after `(b_addr, b_port)`.
#[inline(always)]
fn endpoint_after(a_addr: &[u32; 4], a_port: u16, b_addr: &[u32; 4], b_port: u16) -> bool {
    let mut i = 0;
    while i < 4 {
        if a_addr[i] != b_addr[i] {
            return a_addr[i] > b_addr[i];
        }
        i += 1;
    }
    a_port > b_port
}

/// The hash of a flow. In [`HashMode::Symmetric`] the two endpoints are put in
/// a canonical order first, so a key and its [`FlowKey::reversed`] hash equal.
#[inline(always)]
pub fn flow_hash(key: &FlowKey, mode: HashMode, seed: u32) -> u32 {
    let swap = matches!(mode, HashMode::Symmetric)
        && endpoint_after(&key.src_addr, key.src_port.0, &key.dst_addr, key.dst_port.0);
    let words = if swap { key.reversed().words() } else { key.words() };
    murmur3_words(&words, seed)
}

/// The bucket of a hash for a power-of-two bucket count (`mask = buckets - 1`).
#[inline(always)]
pub const fn bucket_of(hash: u32, mask: u32) -> u32 {
    hash & mask
}

#[cfg(all(test, feature = "user"))]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn key(s: &str, d: &str, sp: u16, dp: u16) -> FlowKey {
        let s: IpAddr = s.parse().unwrap();
        let d: IpAddr = d.parse().unwrap();
        FlowKey::new(s, d, sp, dp, 17)
    }

    #[test]
    fn murmur3_matches_reference_vectors() {
        // Reference values from the canonical MurmurHash3_x86_32 on the 40
        // little-endian bytes of the words 0..10 and on 40 zero bytes.
        let words: [u32; 10] = core::array::from_fn(|i| i as u32);
        let bytes: std::vec::Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        assert_eq!(murmur3_words(&words, 0), reference_murmur3(&bytes, 0));
        assert_eq!(murmur3_words(&[0; 10], 7), reference_murmur3(&[0; 40], 7));
        // Published test vector of the byte-oriented algorithm, for our reference.
        assert_eq!(reference_murmur3(b"", 0), 0);
        assert_eq!(reference_murmur3(b"", 1), 0x514e_28b7);
        assert_eq!(reference_murmur3(&[0xff, 0xff, 0xff, 0xff], 0), 0x7629_3b50);
        assert_eq!(reference_murmur3(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
    }

    /// Byte-oriented MurmurHash3_x86_32 as published (only whole blocks needed).
    fn reference_murmur3(data: &[u8], seed: u32) -> u32 {
        assert_eq!(data.len() % 4, 0);
        let mut h = seed;
        for c in data.chunks_exact(4) {
            let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            k = k.wrapping_mul(C1);
            k = k.rotate_left(15);
            k = k.wrapping_mul(C2);
            h ^= k;
            h = h.rotate_left(13);
            h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
        }
        h ^= data.len() as u32;
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    #[test]
    fn symmetric_mode_hashes_both_directions_alike() {
        for (s, d, sp, dp) in [
            ("10.0.0.1", "10.0.9.1", 40000, 80),
            ("10.0.9.1", "10.0.0.1", 80, 40000),
            ("fd00::1", "fd00::9:1", 1, 2),
            ("10.0.0.1", "10.0.0.1", 5, 6),
        ] {
            let k = key(s, d, sp, dp);
            assert_eq!(
                flow_hash(&k, HashMode::Symmetric, 3),
                flow_hash(&k.reversed(), HashMode::Symmetric, 3)
            );
        }
    }

    #[test]
    fn directional_mode_tells_directions_apart() {
        let k = key("10.0.0.1", "10.0.9.1", 40000, 80);
        assert_ne!(
            flow_hash(&k, HashMode::Directional, 0),
            flow_hash(&k.reversed(), HashMode::Directional, 0)
        );
    }

    #[test]
    fn buckets_of_many_flows_are_even() {
        let mask = 1023;
        let mut counts = [0u32; 1024];
        for port in 0..u16::MAX {
            let k = key("10.1.2.3", "10.0.9.1", port, 7000);
            counts[bucket_of(flow_hash(&k, HashMode::Directional, 0), mask) as usize] += 1;
        }
        let mean = u16::MAX as f64 / 1024.0;
        let max = *counts.iter().max().unwrap() as f64;
        let min = *counts.iter().min().unwrap() as f64;
        assert!(max < mean * 1.6 && min > mean * 0.4, "min {min} max {max} mean {mean}");
    }
}
