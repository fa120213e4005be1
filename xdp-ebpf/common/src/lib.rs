//! Shared between handoff's eBPF programs (built for `bpfel-unknown-none`) and its
//! userspace crates: map and program names, `#[repr(C)]` map value types, the
//! flow key, the flow hash and the packet header parser.
//!
//! Everything here is `no_std` and free of allocation so that the very same code
//! runs in the kernel's verifier-checked sandbox and in userspace. That is what
//! lets userspace answer "which member owns this packet" with the same bits the
//! XDP program used. The `user` feature adds `aya::Pod` impls and `std` helpers.
#![no_std]

#[cfg(feature = "user")]
extern crate std;

pub mod counters;
pub mod edge;
pub mod fabric;
pub mod flow_key;
pub mod hash;
pub mod names;
pub mod net;
pub mod parse;

/// Asserts at compile time that a shared type has exactly the size the other
/// side expects, so a field added without updating both sides fails the build.
#[macro_export]
macro_rules! assert_size {
    ($ty:ty, $size:expr) => {
        const _: () = assert!(core::mem::size_of::<$ty>() == $size);
    };
}

/// Implements `aya::Pod` for `#[repr(C)]` types that have no padding.
macro_rules! impl_pod {
    ($($ty:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `Copy`, has no padding (its size is
            // asserted next to its definition) and every bit pattern is valid.
            unsafe impl aya::Pod for $ty {}
        )*
    };
}
pub(crate) use impl_pod;
