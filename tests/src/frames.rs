//! The packet builder tests use: `handoff_bench::frames`, where the
//! malformed-frame storm (`handoff-bench storm`) builds its frames too.

pub use handoff_bench::frames::*;
