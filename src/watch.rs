//! Reloading without a restart: a thread that watches a file, or the files of a
//! directory, and calls a reload function when what it watches changes and when the
//! process gets SIGHUP.
//!
//! The watcher polls (every `poll_every`) a stamp of what it watches: a file's size and
//! modification time, or the names, sizes and modification times of a directory's files
//! that a name filter keeps. When the stamp differs from the previous one it calls the
//! reload function with [`Cause::Changed`]; on SIGHUP it takes a new stamp and calls it
//! with [`Cause::Sighup`], changed or not. A rewrite that keeps both the size and the
//! modification time (same file-system timestamp tick) goes unnoticed until the next
//! change or SIGHUP.
//!
//! Every watcher registers its own SIGHUP flag, so one SIGHUP reloads everything watched
//! in the process (the PSK file and the object definitions alike).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// Longest the watcher sleeps before looking at its stop and SIGHUP flags.
const MAX_SLEEP: Duration = Duration::from_millis(50);

/// Why the reload function is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The stamp of what is watched changed since the last poll.
    Changed,
    /// The process got SIGHUP.
    Sighup,
}

/// What a watcher looks at.
#[derive(Debug, Clone)]
pub enum Watched {
    /// One file: its size and modification time (a missing file is a stamp too).
    File(PathBuf),
    /// A directory: the names, sizes and modification times of its files (symlinks
    /// followed) whose name `keep` accepts, or the kind of error listing it.
    Dir {
        path: PathBuf,
        keep: fn(&OsStr) -> bool,
    },
}

/// What one poll of a [`Watched`] saw; compared with the previous poll's.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    File(Option<(u64, Option<SystemTime>)>),
    Dir(DirSnapshot),
}

impl Watched {
    /// The file or directory watched.
    pub fn path(&self) -> &Path {
        match self {
            Watched::File(p) => p,
            Watched::Dir { path, .. } => path,
        }
    }

    fn stamp(&self) -> Stamp {
        match self {
            Watched::File(p) => Stamp::File(file_stamp(p)),
            Watched::Dir { path, keep } => Stamp::Dir(dir_snapshot(path, *keep)),
        }
    }
}

/// A file's size and modification time; None when it cannot be read.
fn file_stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.len(), m.modified().ok()))
}

/// The sorted names, sizes and modification times of the files of a directory, or the
/// kind of error listing it.
pub type DirSnapshot = Result<Vec<(OsString, u64, Option<SystemTime>)>, std::io::ErrorKind>;

/// The snapshot of the files of `dir` whose name `keep` accepts. Symlinks are followed;
/// directories and dangling links are left out.
pub fn dir_snapshot(dir: &Path, keep: fn(&OsStr) -> bool) -> DirSnapshot {
    let mut files = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| e.kind())?;
    for entry in entries {
        let entry = entry.map_err(|e| e.kind())?;
        let name = entry.file_name();
        if !keep(&name) {
            continue;
        }
        if let Ok(m) = std::fs::metadata(entry.path()) {
            if m.is_file() {
                files.push((name, m.len(), m.modified().ok()));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A watcher to start with [`spawn`].
#[derive(Debug, Clone)]
pub struct Watch {
    pub watched: Watched,
    /// How often the stamp is taken (at least every millisecond).
    pub poll_every: Duration,
    /// The thread's name, e.g. `"psk-watch"`.
    pub thread_name: &'static str,
    /// What the log lines call the watched thing, e.g. `"the PSK file"`.
    pub what: &'static str,
}

/// Starts the watcher's thread. The stamp of what is watched is taken before this
/// returns, so any change made after it returns is picked up; the caller is expected
/// to have done the initial load.
///
/// The thread ends soon (within about 50 ms) after `stop` is set; join the returned
/// handle to wait for it. The SIGHUP handler is registered before this function returns
/// and unregistered when the thread ends (the process then ignores SIGHUP rather than
/// dying of it). If registering the handler fails, the watcher logs a warning and only
/// polls.
pub fn spawn(
    watch: Watch,
    stop: Arc<AtomicBool>,
    reload: impl FnMut(Cause) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    let hup = Arc::new(AtomicBool::new(false));
    let sig_id = match signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup)) {
        Ok(id) => Some(id),
        Err(e) => {
            let what = watch.what;
            tracing::warn!(error = %e, "cannot handle SIGHUP; reloading {what} on change only");
            None
        }
    };
    let initial = watch.watched.stamp();
    let spawned = std::thread::Builder::new()
        .name(watch.thread_name.into())
        .spawn(move || {
            run(&watch, &stop, &hup, initial, reload);
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

fn run(
    watch: &Watch,
    stop: &AtomicBool,
    hup: &AtomicBool,
    mut last: Stamp,
    mut reload: impl FnMut(Cause),
) {
    let (what, path) = (watch.what, watch.watched.path().display());
    let poll_every = watch.poll_every.max(Duration::from_millis(1));
    tracing::info!(%path, ?poll_every, "watching {what}");
    let mut next_poll = Instant::now() + poll_every;
    while !stop.load(Ordering::Acquire) {
        let now = Instant::now();
        if hup.swap(false, Ordering::AcqRel) {
            tracing::info!(%path, "SIGHUP: reloading {what}");
            last = watch.watched.stamp();
            reload(Cause::Sighup);
            next_poll = now + poll_every;
            continue;
        }
        if now >= next_poll {
            let current = watch.watched.stamp();
            if current != last {
                tracing::info!(%path, "{what} changed: reloading");
                last = current;
                reload(Cause::Changed);
            }
            next_poll = Instant::now() + poll_every;
        }
        let wait = next_poll.saturating_duration_since(Instant::now());
        std::thread::sleep(wait.min(MAX_SLEEP));
    }
    tracing::info!(%path, "stopped watching {what}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts a watcher that records every call of its reload function.
    fn recording(
        watched: Watched,
        stop: &Arc<AtomicBool>,
    ) -> (Arc<Mutex<Vec<Cause>>>, JoinHandle<()>) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&calls);
        let watch = Watch {
            watched,
            poll_every: Duration::from_millis(10),
            thread_name: "test-watch",
            what: "test files",
        };
        let h = spawn(watch, Arc::clone(stop), move |c| {
            seen.lock().unwrap().push(c)
        })
        .unwrap();
        (calls, h)
    }

    #[test]
    fn file_change_and_one_sighup_reload_every_watcher() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.txt");
        std::fs::write(&file, "a").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (file_calls, f) = recording(Watched::File(file.clone()), &stop);
        let keep: fn(&OsStr) -> bool = |n| n.as_encoded_bytes().ends_with(b".xml");
        let watched_dir = Watched::Dir {
            path: dir.path().to_path_buf(),
            keep,
        };
        let (dir_calls, d) = recording(watched_dir, &stop);

        std::fs::write(&file, "ab").unwrap();
        wait_for("the file change", || !file_calls.lock().unwrap().is_empty());
        assert_eq!(*file_calls.lock().unwrap(), [Cause::Changed]);
        // A file the directory watcher does not keep changes nothing for it.
        std::thread::sleep(Duration::from_millis(50));
        assert!(dir_calls.lock().unwrap().is_empty());
        std::fs::write(dir.path().join("1.xml"), "x").unwrap();
        wait_for("the directory change", || {
            !dir_calls.lock().unwrap().is_empty()
        });
        assert_eq!(*dir_calls.lock().unwrap(), [Cause::Changed]);

        signal_hook::low_level::raise(signal_hook::consts::SIGHUP).unwrap();
        let sighup = |calls: &Mutex<Vec<Cause>>| calls.lock().unwrap().contains(&Cause::Sighup);
        wait_for("both SIGHUP reloads", || {
            sighup(&file_calls) && sighup(&dir_calls)
        });

        stop.store(true, Ordering::Release);
        f.join().unwrap();
        d.join().unwrap();
        // Once stopped, changes are no longer picked up.
        let before = file_calls.lock().unwrap().len();
        std::fs::write(&file, "abc").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(file_calls.lock().unwrap().len(), before);
    }

    #[test]
    fn file_stamps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let w = Watched::File(path.clone());
        let missing = w.stamp();
        assert_eq!(missing, Stamp::File(None));
        std::fs::write(&path, "x").unwrap();
        let one = w.stamp();
        assert_ne!(one, missing);
        std::fs::write(&path, "xy").unwrap();
        assert_ne!(w.stamp(), one);
    }
}
