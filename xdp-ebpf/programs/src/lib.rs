//! Kernel-side helpers shared by handoff's XDP programs: bounds-checked frame
//! access and per-CPU counting. Parsing and hashing live in `handoff-common`,
//! where userspace runs the very same code.
#![no_std]

use aya_ebpf::{maps::PerCpuArray, programs::XdpContext};
use handoff_common::{
    counters::Reason,
    parse::{AnyBitPattern, PacketBytes, MAX_PARSE_OFFSET},
};

/// `bpf_xdp_action` values (include/uapi/linux/bpf.h).
pub mod action {
    pub use aya_ebpf::bindings::xdp_action::{
        XDP_ABORTED as ABORTED, XDP_DROP as DROP, XDP_PASS as PASS, XDP_REDIRECT as REDIRECT, XDP_TX as TX,
    };
}

/// The frame of one XDP invocation, read and written through `data`/`data_end`.
#[derive(Debug)]
pub struct XdpFrame {
    start: usize,
    end: usize,
}

impl XdpFrame {
    /// Captures the frame bounds of `ctx`.
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    /// Writes `value` at `offset`; `None` if it does not fit in the frame.
    #[inline(always)]
    pub fn store<T: Copy>(&self, offset: usize, value: T) -> Option<()> {
        let ptr = self.checked(offset, core::mem::size_of::<T>())?;
        // SAFETY: `checked` proved [ptr, ptr + size_of::<T>()) lies inside the
        // frame, which the kernel lets this program write.
        unsafe { core::ptr::write_unaligned(ptr as *mut T, value) };
        Some(())
    }

    /// The address of `len` bytes at `offset`, if they lie inside the frame.
    /// Written as `start + offset + len > end` on packet pointers so that the
    /// verifier learns the range (kernel/bpf/verifier.c, find_good_pkt_pointers).
    #[inline(always)]
    fn checked(&self, offset: usize, len: usize) -> Option<usize> {
        if offset > MAX_PARSE_OFFSET {
            return None;
        }
        let ptr = self.start + offset;
        if ptr + len > self.end {
            return None;
        }
        Some(ptr)
    }
}

impl PacketBytes for XdpFrame {
    #[inline(always)]
    fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    fn load<T: AnyBitPattern>(&self, offset: usize) -> Option<T> {
        let ptr = self.checked(offset, core::mem::size_of::<T>())?;
        // SAFETY: `checked` proved the read lies inside the frame, and
        // `T: AnyBitPattern` is valid for whatever bytes are there.
        Some(unsafe { core::ptr::read_unaligned(ptr as *const T) })
    }
}

/// Adds one to the per-CPU counter of `reason`.
#[inline(always)]
pub fn count(stats: &PerCpuArray<u64>, reason: Reason) {
    if let Some(slot) = stats.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU's program instance touches it while
        // XDP runs with preemption disabled.
        unsafe { *slot += 1 };
    }
}

/// Maps a parse failure to its XDP action: passing what is not IP, dropping
/// what is malformed (the kernel would drop it too, uncounted).
#[inline(always)]
pub fn parse_failure_action(reason: Reason) -> u32 {
    if reason == Reason::PassNotIp {
        action::PASS
    } else {
        action::DROP
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A reachable panic becomes a reachable infinite loop, which the verifier
    // rejects at load time (kernel/bpf/verifier.c: back-edges must be bounded);
    // `unreachable_unchecked` would instead let the optimiser assume the panic
    // path away and hide a real bounds failure.
    #[allow(clippy::empty_loop)]
    loop {}
}
