//! Sharing the registry between threads and reloading it without a restart.
//!
//! Readers (shards, on the hot path) call [`SharedRegistry::load`] once per
//! batch: a read lock held for one `Arc` clone. A reload parses the directory
//! without holding any lock readers use, then swaps the `Arc` in one short
//! write-locked assignment; readers holding the old snapshot keep using it
//! until they drop it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};

use super::registry::{is_xml_name, LoadError, ObjectRegistry};

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

/// What the watcher compares between polls: the `*.xml` files' names, sizes
/// and modification times, or the kind of error listing the directory.
type Snapshot = Result<Vec<(OsString, u64, Option<SystemTime>)>, std::io::ErrorKind>;

fn snapshot(dir: &Path) -> Snapshot {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| e.kind())?;
    for entry in entries {
        let entry = entry.map_err(|e| e.kind())?;
        let name = entry.file_name();
        if !is_xml_name(&name) {
            continue;
        }
        // Follows symlinks, like the loader.
        if let Ok(m) = std::fs::metadata(entry.path()) {
            if m.is_file() {
                files.push((name, m.len(), m.modified().ok()));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Longest the watcher sleeps before looking at its stop and SIGHUP flags.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Starts a thread that keeps `shared` in sync with `dir`.
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
    let hup = Arc::new(AtomicBool::new(false));
    let sig_id = match signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup)) {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::warn!(error = %e, "cannot handle SIGHUP; object definitions reload on change only");
            None
        }
    };
    let initial = snapshot(&dir);
    let spawned = std::thread::Builder::new()
        .name("objects-watch".into())
        .spawn(move || {
            watch(&shared, &dir, poll_every, &stop, &hup, initial);
            if let Some(id) = sig_id {
                signal_hook::low_level::unregister(id);
            }
        });
    if spawned.is_err() {
        if let Some(id) = sig_id {
            signal_hook::low_level::unregister(id);
        }
    }
    spawned
}

fn watch(
    shared: &SharedRegistry,
    dir: &Path,
    poll_every: Duration,
    stop: &AtomicBool,
    hup: &AtomicBool,
    mut last: Snapshot,
) {
    let poll_every = poll_every.max(Duration::from_millis(1));
    tracing::info!(dir = %dir.display(), ?poll_every, "watching object definitions");
    let mut next_poll = Instant::now() + poll_every;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if hup.swap(false, Ordering::AcqRel) {
            tracing::info!(dir = %dir.display(), "SIGHUP: reloading object definitions");
            last = snapshot(dir);
            let _ = shared.reload(dir);
            next_poll = now + poll_every;
            continue;
        }
        if now >= next_poll {
            let current = snapshot(dir);
            if current != last {
                tracing::info!(dir = %dir.display(), "object definitions changed: reloading");
                last = current;
                // Errors are logged by reload; the old registry stays in use.
                let _ = shared.reload(dir);
            }
            next_poll = Instant::now() + poll_every;
        }
        let wait = next_poll.saturating_duration_since(Instant::now());
        std::thread::sleep(wait.min(MAX_SLEEP));
    }
    tracing::info!(dir = %dir.display(), "stopped watching object definitions");
}

#[cfg(test)]
mod tests {
    use super::*;

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
