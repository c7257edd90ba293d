//! Spawning the shard threads, one per core, optionally pinned.

use std::cell::RefCell;
use std::io;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

/// How to spawn the shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSpawn {
    /// Number of shards; 0 means one per available core.
    pub count: usize,
    /// Pin shard `i` to core `i % cores`.
    pub pin_cores: bool,
    /// Threads are named `"{name_prefix}-{i}"`.
    pub name_prefix: String,
}

impl Default for ShardSpawn {
    fn default() -> Self {
        ShardSpawn {
            count: 0,
            pin_cores: false,
            name_prefix: "shard".to_owned(),
        }
    }
}

/// Whether the current shard thread was pinned to a core.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinStatus {
    /// Not a shard thread, or pinning was not asked for.
    NotRequested,
    /// Pinned to this core.
    Pinned(usize),
    /// Pinning to `core` failed; the thread runs unpinned.
    Failed {
        /// The core asked for.
        core: usize,
        /// Kind of the OS error.
        kind: io::ErrorKind,
        /// The OS error's text.
        message: String,
    },
}

thread_local! {
    static PIN_STATUS: RefCell<PinStatus> = const { RefCell::new(PinStatus::NotRequested) };
}

/// How pinning went for the calling thread. A shard's function calls this to decide what
/// a failed pin means for it (log it, or give up); `spawn_shards` itself carries on unpinned.
pub fn pin_status() -> PinStatus {
    PIN_STATUS.with(|s| s.borrow().clone())
}

/// The number of shards `count` stands for: itself, or the number of available cores for 0.
pub fn resolve_count(count: usize) -> usize {
    if count == 0 {
        netio::available_cores().max(1)
    } else {
        count
    }
}

/// Spawns the shard threads, named `"{prefix}-{i}"`, each running `f(i)`. With
/// `spec.pin_cores`, thread `i` first pins itself to core `i % cores`; the outcome is
/// available to `f` through [`pin_status`].
///
/// Fails only if a thread cannot be spawned; threads already spawned then keep running, and
/// are detached.
pub fn spawn_shards<F, R>(spec: &ShardSpawn, f: F) -> io::Result<Vec<JoinHandle<R>>>
where
    F: Fn(usize) -> R + Send + Sync + 'static,
    R: Send + 'static,
{
    let count = resolve_count(spec.count);
    let cores = netio::available_cores().max(1);
    let f = Arc::new(f);
    let mut handles = Vec::with_capacity(count);
    for i in 0..count {
        let f = Arc::clone(&f);
        let core = spec.pin_cores.then_some(i % cores);
        let handle = thread::Builder::new()
            .name(format!("{}-{i}", spec.name_prefix))
            .spawn(move || {
                if let Some(core) = core {
                    pin(core);
                }
                f(i)
            })?;
        handles.push(handle);
    }
    Ok(handles)
}

/// Pins the calling thread and records the outcome.
fn pin(core: usize) {
    let status = match netio::pin_current_thread(core) {
        Ok(()) => PinStatus::Pinned(core),
        Err(e) => PinStatus::Failed {
            core,
            kind: e.kind(),
            message: e.to_string(),
        },
    };
    PIN_STATUS.with(|s| *s.borrow_mut() = status);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_count_keeps_explicit_counts() {
        assert_eq!(resolve_count(3), 3);
        assert!(resolve_count(0) >= 1);
    }

    #[test]
    fn spawns_named_threads_with_their_index() {
        let spec = ShardSpawn {
            count: 3,
            pin_cores: false,
            name_prefix: "test-shard".into(),
        };
        let handles = spawn_shards(&spec, |i| {
            let name = thread::current().name().map(str::to_owned);
            (i, name, pin_status())
        })
        .unwrap();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for (i, (index, name, status)) in results.into_iter().enumerate() {
            assert_eq!(index, i);
            assert_eq!(name.as_deref(), Some(format!("test-shard-{i}").as_str()));
            assert_eq!(status, PinStatus::NotRequested);
        }
        assert_eq!(pin_status(), PinStatus::NotRequested);
    }

    #[test]
    fn pinning_is_attempted_and_reported() {
        let cores = netio::available_cores();
        let spec = ShardSpawn {
            count: cores + 1,
            pin_cores: true,
            name_prefix: "pinned".into(),
        };
        let handles = spawn_shards(&spec, |_| pin_status()).unwrap();
        for (i, h) in handles.into_iter().enumerate() {
            // Success depends on the machine (a cpuset may forbid it); the report must not.
            match h.join().unwrap() {
                PinStatus::Pinned(core) | PinStatus::Failed { core, .. } => {
                    assert_eq!(core, i % cores)
                }
                PinStatus::NotRequested => panic!("shard {i} was not pinned"),
            }
        }
    }
}
