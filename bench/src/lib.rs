//! Benchmarks only: see `benches/hot_paths.rs` (`cargo bench -p bench`) and `run.sh`.
