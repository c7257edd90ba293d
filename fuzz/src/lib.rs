//! The checks behind every fuzz target. The same file is compiled into
//! `tests/fuzz_regressions.rs` (via `#[path]`), so a crash input replays there
//! exactly as the fuzzer ran it.

#[path = "checks.rs"]
pub mod checks;

#[path = "send.rs"]
pub mod send;
