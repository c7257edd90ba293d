//! Sharing the registry between threads and reloading it without a restart.
//!
//! Readers (shards, on the hot path) call [`SharedRegistry::load`] once per
//! batch: a read lock held for one `Arc` clone. A reload parses the directory
//! without holding any lock readers use, then swaps the `Arc` in one short
//! write-locked assignment; readers holding the old snapshot keep using it
//! until they drop it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::watch::{self, Watch, Watched};
use lwm2m_proto::objects::{is_xml_name, LoadError, ObjectRegistry};

/// The current [`ObjectRegistry`], shared by all threads.
#[derive(Debug)]
pub struct SharedRegistry {
    current: RwLock<Arc<ObjectRegistry>>,
    /// Incremented on every successful swap.
    generation: AtomicU64,
    /// Serializes reloads (watcher thread and on-demand callers).
    reloading: Mutex<()>,
}

/// The result of a successful reload.
#[derive(Debug)]
pub struct Reloaded {
    /// Number of object definitions now in use.
    pub objects: usize,
    /// Files that could not be loaded (their objects are absent).
    pub errors: Vec<LoadError>,
}

/// A reload that changed nothing: the previous registry stays in use.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("cannot read object directory {}: {source}", dir.display())]
    Unreadable {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Every `*.xml` file of the directory failed to load; swapping in an
    /// empty registry would leave every value untyped, so the old one is kept.
    #[error(
        "none of the {} object files in {} could be loaded; keeping the previous registry",
        errors.len(),
        dir.display()
    )]
    NothingLoaded {
        dir: PathBuf,
        errors: Vec<LoadError>,
    },
}

impl Default for SharedRegistry {
    fn default() -> Self {
        Self::new(ObjectRegistry::empty())
    }
}

impl SharedRegistry {
    pub fn new(registry: ObjectRegistry) -> Self {
        Self {
            current: RwLock::new(Arc::new(registry)),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(()),
        }
    }

    /// Loads `dir` (see [`ObjectRegistry::load_dir`]) into a new shared registry.
    pub fn from_dir(dir: &Path) -> (Self, Vec<LoadError>) {
        let (registry, errors) = ObjectRegistry::load_dir(dir);
        (Self::new(registry), errors)
    }

    /// The current registry. Cheap (one `Arc` clone under a read lock): take
    /// one per batch and use it for the whole batch.
    #[inline]
    pub fn load(&self) -> Arc<ObjectRegistry> {
        self.current.read().clone()
    }

    /// Replaces the current registry; returns the previous one.
    pub fn store(&self, registry: ObjectRegistry) -> Arc<ObjectRegistry> {
        let new = Arc::new(registry);
        let old = std::mem::replace(&mut *self.current.write(), new);
        self.generation.fetch_add(1, Ordering::Release);
        old
    }

    /// How many times the registry has been replaced since creation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Reloads `dir` and swaps the result in; returns the number of object
    /// definitions now in use. Files that fail to load are logged and
    /// skipped (the others are used). If the directory cannot be read, or
    /// every file in it fails, the previous registry is kept and an error is
    /// returned.
    pub fn reload(&self, dir: &Path) -> Result<usize, ReloadError> {
        self.reload_detailed(dir).map(|r| r.objects)
    }

    /// Like [`reload`](Self::reload), also returning the files that failed.
    pub fn reload_detailed(&self, dir: &Path) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.reloading.lock();
        let result = ObjectRegistry::try_load_dir(dir);
        let (registry, errors) = match result {
            Ok(r) => r,
            Err(source) => {
                tracing::warn!(dir = %dir.display(), error = %source,
                    "cannot read object directory; keeping the previous object registry");
                return Err(ReloadError::Unreadable {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        };
        for e in &errors {
            tracing::warn!(file = %e.path.display(), error = %e.error,
                "skipping object definition file");
        }
        if registry.is_empty() && !errors.is_empty() {
            tracing::warn!(dir = %dir.display(), failed = errors.len(),
                "no object definition could be loaded; keeping the previous object registry");
            return Err(ReloadError::NothingLoaded {
                dir: dir.to_path_buf(),
                errors,
            });
        }
        let objects = registry.len();
        let old = self.store(registry);
        tracing::info!(
            dir = %dir.display(),
            objects,
            previous = old.len(),
            failed_files = errors.len(),
            generation = self.generation(),
            "object registry reloaded"
        );
        Ok(Reloaded { objects, errors })
    }
}

/// Starts a thread that keeps `shared` in sync with `dir` (see [`crate::watch`]).
///
/// It reloads (see [`SharedRegistry::reload`]) when the set of `*.xml`
/// files of `dir` or any of their sizes or modification times changes, polled
/// every `poll_every`, and when the process receives SIGHUP. The state of the
/// directory is recorded before this function returns, so any change made
/// after it returns is picked up. A rewrite that keeps both the size and the
/// modification time (same file-system timestamp tick) goes unnoticed until
/// the next change or SIGHUP. A file caught half written fails to load and
/// is skipped; it is loaded at the next poll, when its size or time has
/// changed again. The caller is expected to have done the initial load.
///
/// The thread ends soon (within about 50 ms) after `stop` is set; join the
/// returned handle to wait for it. The SIGHUP handler is registered before
/// this function returns and unregistered when the thread ends (the process
/// then ignores SIGHUP rather than dying of it). If registering the handler
/// fails, the watcher logs a warning and only polls.
pub fn spawn_watcher(
    shared: Arc<SharedRegistry>,
    dir: PathBuf,
    poll_every: Duration,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    let watch = Watch {
        watched: Watched::Dir {
            path: dir.clone(),
            keep: is_xml_name,
        },
        poll_every,
        thread_name: "objects-watch",
        what: "object definitions",
    };
    // Errors are logged by reload; the old registry stays in use.
    watch::spawn(watch, stop, move |_| {
        let _ = shared.reload(&dir);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the watcher compares between polls: the `*.xml` files' names, sizes
    /// and modification times, or the kind of error listing the directory.
    fn snapshot(dir: &Path) -> watch::DirSnapshot {
        watch::dir_snapshot(dir, is_xml_name)
    }

    #[test]
    fn load_is_a_snapshot() {
        let shared = SharedRegistry::default();
        let before = shared.load();
        assert_eq!(shared.generation(), 0);
        let old = shared.store(ObjectRegistry::empty());
        assert!(Arc::ptr_eq(&before, &old));
        assert!(!Arc::ptr_eq(&before, &shared.load()));
        assert_eq!(shared.generation(), 1);
    }

    #[test]
    fn unreadable_dir_keeps_old() {
        let shared = SharedRegistry::default();
        let before = shared.load();
        let err = shared
            .reload(Path::new("/nonexistent/objects/dir"))
            .unwrap_err();
        assert!(matches!(err, ReloadError::Unreadable { .. }));
        assert!(Arc::ptr_eq(&before, &shared.load()));
        assert_eq!(shared.generation(), 0);
    }

    #[test]
    fn snapshot_sees_changes() {
        let dir = tempfile::tempdir().unwrap();
        let a = snapshot(dir.path());
        assert_eq!(a, Ok(vec![]));
        std::fs::write(dir.path().join("notes.txt"), "x").unwrap();
        assert_eq!(snapshot(dir.path()), a);
        std::fs::write(dir.path().join("1.xml"), "x").unwrap();
        let b = snapshot(dir.path());
        assert_ne!(a, b);
        std::fs::write(dir.path().join("1.xml"), "xy").unwrap();
        assert_ne!(snapshot(dir.path()), b);
        assert!(snapshot(&dir.path().join("missing")).is_err());
    }
}
