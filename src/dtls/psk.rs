//! Pre-shared keys of the DTLS listener (`psk_file`): loading, reloading
//! without a restart, and which endpoint names an identity may register.
//!
//! # File format
//!
//! One key a line; blank lines and lines whose first non-blank character is
//! `#` are ignored. Surrounding whitespace is trimmed.
//!
//! ```text
//! identity:hexkey
//! identity:hexkey:pattern1,pattern2
//! ```
//!
//! - `identity` is the PSK identity the device sends (1..=128 bytes). It may
//!   itself contain `:` (`urn:imei:...` identities are common): the line is
//!   read from the right.
//! - `hexkey` is the key in hexadecimal, an even number of digits, 1..=64
//!   bytes.
//! - The optional third field is a comma-separated list of endpoint-name
//!   patterns; `*` matches any run of characters (also none), every other
//!   character matches itself. Empty list items are ignored.
//!
//! Reading from the right: if the last field is an even-length hex string,
//! the line is `identity:hexkey`; otherwise the last field is the pattern
//! list and the one before it must be the key. A pattern list that is itself
//! an even-length hex string (`abcd`) would be read as a key: write it with a
//! trailing comma (`abcd,`).
//!
//! # Endpoint-name policy ([`PskStore::may_register`])
//!
//! A device authenticated with an identity may register an endpoint name
//! equal to the identity, or matching one of the identity's patterns. A
//! pattern `*` lets the identity register any name (what EMQX does for every
//! PSK). An identity not in the store may register nothing.
//!
//! # Reloading
//!
//! [`PskStore::reload`] rereads the file and swaps the new table in; on any
//! error the previous table stays in use. [`PskStore::spawn_watcher`] reloads
//! on a change of the file's size or modification time and on SIGHUP, like
//! the object-definition watcher. Sessions already established keep running;
//! the new keys apply to the next handshake.
//!
//! # Keys a bootstrap provisioned
//!
//! The gateway's Bootstrap-Server gives devices PSK credentials for this gateway; when
//! a device acknowledges its Bootstrap-Finish they are added here
//! ([`PskStore::provision`]), beside the file's, for that device's endpoint name only,
//! so its next handshake and Register succeed without a restart. They are not written to
//! the file and survive its reloads; the file's entry wins for an identity in both.
//! When the bootstrap configuration no longer gives them, [`PskStore::retain_provisioned`]
//! takes them out.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::watch::{self, Watch, Watched};

/// Longest PSK identity accepted in the file (RFC 4279 recommends 128).
pub(super) const MAX_IDENTITY_LEN: usize = 128;
/// Longest key accepted in the file, in bytes.
pub(super) const MAX_KEY_LEN: usize = 64;

/// Why a PSK file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PskError {
    /// The file could not be read.
    #[error("cannot read PSK file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A line is malformed; `line` counts from 1.
    #[error("PSK file {}, line {line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// One identity's key and endpoint-name patterns.
#[derive(Clone, PartialEq, Eq)]
struct Entry {
    key: Vec<u8>,
    patterns: Vec<String>,
}

/// One parsed PSK file.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PskTable {
    entries: HashMap<String, Entry>,
}

impl fmt::Debug for PskTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keys are secrets: never print them.
        f.debug_struct("PskTable")
            .field("identities", &self.entries.len())
            .finish()
    }
}

impl PskTable {
    /// Parses the text of a PSK file. `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, PskError> {
        let mut entries = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |reason: String| PskError::Line {
                path: path.to_path_buf(),
                line: i + 1,
                reason,
            };
            let (identity, entry) = parse_line(line).map_err(err)?;
            if entries.insert(identity.clone(), entry).is_some() {
                return Err(err(format!("identity {identity:?} appears twice")));
            }
        }
        Ok(PskTable { entries })
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there is no identity.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn get(&self, identity: &[u8]) -> Option<&Entry> {
        let identity = std::str::from_utf8(identity).ok()?;
        self.entries.get(identity)
    }
}

fn parse_line(line: &str) -> Result<(String, Entry), String> {
    let (rest, last) = line
        .rsplit_once(':')
        .ok_or_else(|| "expected identity:hexkey".to_string())?;
    let (identity, key, patterns) = match decode_hex(last.trim()) {
        Some(key) => (rest, key, Vec::new()),
        None => {
            let (identity, key) = rest
                .rsplit_once(':')
                .ok_or_else(|| "expected identity:hexkey[:patterns]".to_string())?;
            let key = decode_hex(key.trim())
                .ok_or_else(|| "the key is not an even number of hex digits".to_string())?;
            let patterns = last
                .split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect();
            (identity, key, patterns)
        }
    };
    let identity = identity.trim();
    if identity.is_empty() {
        return Err("empty identity".into());
    }
    if identity.len() > MAX_IDENTITY_LEN {
        return Err(format!("identity longer than {MAX_IDENTITY_LEN} bytes"));
    }
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(format!("the key must be 1 to {MAX_KEY_LEN} bytes"));
    }
    Ok((identity.to_string(), Entry { key, patterns }))
}

/// Decodes an even-length, non-empty hex string.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.is_empty() || s.len() & 1 == 1 {
        return None;
    }
    let digit = |c: u8| -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    };
    s.as_bytes()
        .chunks_exact(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// `*` matches any run of characters, everything else itself.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Keys bootstraps provisioned: identity → (key, endpoint names).
type Provisioned = HashMap<String, (Vec<u8>, Vec<String>)>;

/// The PSK table in use, shared by every shard and reloadable.
pub struct PskStore {
    path: PathBuf,
    current: RwLock<Arc<PskTable>>,
    /// Keys bootstraps provisioned: identity → (key, endpoint names).
    provisioned: RwLock<Provisioned>,
    generation: AtomicU64,
    reloading: Mutex<()>,
}

impl fmt::Debug for PskStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PskStore")
            .field("path", &self.path)
            .field("identities", &self.table().len())
            .field("generation", &self.generation())
            .finish()
    }
}

impl PskStore {
    /// Loads `path`.
    pub fn load(path: impl Into<PathBuf>) -> Result<Self, PskError> {
        let path = path.into();
        let table = read_table(&path)?;
        Ok(Self::with_table(path, table))
    }

    /// A store holding `table`; [`reload`](Self::reload) reads `path`.
    pub fn with_table(path: impl Into<PathBuf>, table: PskTable) -> Self {
        PskStore {
            path: path.into(),
            current: RwLock::new(Arc::new(table)),
            provisioned: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(()),
        }
    }

    /// The file this store reloads from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The table in use (one `Arc` clone under a read lock).
    pub fn table(&self) -> Arc<PskTable> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// How many times the table was replaced since loading.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The key of `identity`, if the identity is known.
    pub fn lookup(&self, identity: &[u8]) -> Option<Vec<u8>> {
        if let Some(e) = self.table().get(identity) {
            return Some(e.key.clone());
        }
        let id = std::str::from_utf8(identity).ok()?;
        self.provisioned_read().get(id).map(|(k, _)| k.clone())
    }

    /// True when `identity` is known.
    pub fn contains(&self, identity: &str) -> bool {
        self.table().get(identity.as_bytes()).is_some()
            || self.provisioned_read().contains_key(identity)
    }

    fn provisioned_read(&self) -> std::sync::RwLockReadGuard<'_, Provisioned> {
        self.provisioned.read().unwrap_or_else(|p| p.into_inner())
    }

    fn provisioned_write(&self) -> std::sync::RwLockWriteGuard<'_, Provisioned> {
        self.provisioned.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a key a bootstrap gave the device `endpoint` (see the module documentation).
    /// False when the file has the identity (its entry stays in use) or the identity
    /// was provisioned with another key (replaced: the device was bootstrapped again).
    pub fn provision(&self, identity: &str, key: &[u8], endpoint: &str) -> bool {
        if self.table().get(identity.as_bytes()).is_some() {
            tracing::warn!(
                identity,
                endpoint,
                "a bootstrap gave a PSK identity the PSK file has; the file's key stays in use"
            );
            return false;
        }
        let mut p = self.provisioned_write();
        let e = p
            .entry(identity.to_string())
            .or_insert_with(|| (key.to_vec(), Vec::new()));
        let same = e.0 == key;
        if !same {
            *e = (key.to_vec(), Vec::new());
        }
        if !e.1.iter().any(|n| n == endpoint) {
            e.1.push(endpoint.to_string());
        }
        same
    }

    /// Keeps the provisioned (identity, key, endpoint) that `keep` accepts; returns how
    /// many were removed.
    pub fn retain_provisioned(&self, keep: impl Fn(&str, &[u8], &str) -> bool) -> usize {
        let mut p = self.provisioned_write();
        let mut removed = 0;
        p.retain(|id, (key, names)| {
            let n = names.len();
            names.retain(|ep| keep(id, key, ep));
            removed += n - names.len();
            !names.is_empty()
        });
        removed
    }

    /// Provisioned identities now in the store.
    pub fn provisioned_len(&self) -> usize {
        self.provisioned_read().len()
    }

    /// May a device authenticated as `identity` register `endpoint_name`?
    /// See the module documentation for the policy.
    pub fn may_register(&self, identity: &str, endpoint_name: &str) -> bool {
        let table = self.table();
        let Some(entry) = table.get(identity.as_bytes()) else {
            return self
                .provisioned_read()
                .get(identity)
                .is_some_and(|(_, names)| names.iter().any(|n| n == endpoint_name));
        };
        endpoint_name == identity
            || entry
                .patterns
                .iter()
                .any(|p| wildcard_match(p, endpoint_name))
    }

    /// Rereads the file and swaps the result in; returns the number of
    /// identities now in use. On error the previous table is kept.
    pub fn reload(&self) -> Result<usize, PskError> {
        let _one_at_a_time = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let table = match read_table(&self.path) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "PSK file not reloaded; keeping the previous keys");
                return Err(e);
            }
        };
        let n = table.len();
        let new = Arc::new(table);
        match self.current.write() {
            Ok(mut g) => *g = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
        self.generation.fetch_add(1, Ordering::Release);
        tracing::info!(path = %self.path.display(), identities = n, "PSK file reloaded");
        Ok(n)
    }

    /// Starts a thread that reloads the file when its size or modification
    /// time changes (polled every `poll_every`) and when the process gets
    /// SIGHUP (see [`crate::watch`]). It ends within about 50 ms after `stop`
    /// is set. If the SIGHUP handler cannot be registered the watcher only polls.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        poll_every: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let store = Arc::clone(self);
        let watch = Watch {
            watched: Watched::File(self.path.clone()),
            poll_every,
            thread_name: "psk-watch",
            what: "the PSK file",
        };
        // Errors are logged by reload; the old keys stay in use.
        watch::spawn(watch, stop, move |_| {
            let _ = store.reload();
        })
    }
}

fn read_table(path: &Path) -> Result<PskTable, PskError> {
    let text = std::fs::read_to_string(path).map_err(|source| PskError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    PskTable::parse(&text, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn parse(text: &str) -> Result<PskTable, PskError> {
        PskTable::parse(text, Path::new("psk.txt"))
    }

    #[test]
    fn lines_comments_and_colon_identities() {
        let t = parse("# comment\n\n  dev-1:00ff\nurn:imei:123:0102:dev-*,x\nhexname:aa:abcd,\n")
            .unwrap();
        assert_eq!(t.len(), 3);
        let s = PskStore::with_table("psk.txt", t);
        assert_eq!(s.lookup(b"dev-1"), Some(vec![0, 0xff]));
        assert_eq!(s.lookup(b"urn:imei:123"), Some(vec![1, 2]));
        assert_eq!(s.lookup(b"hexname"), Some(vec![0xaa]));
        assert_eq!(s.lookup(b"nobody"), None);
        assert_eq!(s.lookup(&[0xff, 0xfe]), None);
        assert!(s.may_register("dev-1", "dev-1"));
        assert!(!s.may_register("dev-1", "dev-2"));
        assert!(s.may_register("urn:imei:123", "urn:imei:123"));
        assert!(s.may_register("urn:imei:123", "dev-42"));
        assert!(s.may_register("urn:imei:123", "x"));
        assert!(!s.may_register("urn:imei:123", "xy"));
        assert!(s.may_register("hexname", "abcd"));
        assert!(!s.may_register("nobody", "nobody"));
    }

    #[test]
    fn bad_lines_name_their_number() {
        for (text, line) in [
            ("a:00\nbad\n", 2),
            ("a:0\n", 1),
            ("# x\n\n:00\n", 3),
            ("a:zz:p\n", 1),
            ("a:00\na:01\n", 2),
            (&format!("a:{}\n", "00".repeat(65)), 1),
            (&format!("{}:00\n", "i".repeat(129)), 1),
        ] {
            match parse(text) {
                Err(PskError::Line { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", ""));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a*c", "abbbc"));
        assert!(wildcard_match("a*c", "ac"));
        assert!(!wildcard_match("a*c", "acb"));
        assert!(wildcard_match("*b*", "abc"));
        assert!(wildcard_match("a**", "a"));
        assert!(!wildcard_match("abc", "ab"));
        assert!(!wildcard_match("", "a"));
    }

    #[test]
    fn reload_keeps_old_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk.txt");
        std::fs::write(&path, "a:00\n").unwrap();
        let s = PskStore::load(&path).unwrap();
        std::fs::write(&path, "a:00\nb\n").unwrap();
        assert!(s.reload().is_err());
        assert!(s.contains("a"));
        assert_eq!(s.generation(), 0);
        std::fs::write(&path, "b:01\n").unwrap();
        assert_eq!(s.reload().unwrap(), 1);
        assert!(s.contains("b") && !s.contains("a"));
        assert_eq!(s.generation(), 1);
        assert!(!format!("{s:?}").contains("01"));
    }

    #[test]
    fn watcher_picks_up_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("psk.txt");
        std::fs::write(&path, "a:00\n").unwrap();
        let s = Arc::new(PskStore::load(&path).unwrap());
        let stop = Arc::new(AtomicBool::new(false));
        let h = s
            .spawn_watcher(Duration::from_millis(10), Arc::clone(&stop))
            .unwrap();
        std::fs::write(&path, "a:00\nlonger-name:0102\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !s.contains("longer-name") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        stop.store(true, Ordering::Release);
        h.join().unwrap();
        assert!(s.contains("longer-name"));
    }
}
