//! The Bootstrap-Server's configurations and outcomes, on the I/O side: the configuration
//! file (reloaded on change or SIGHUP through [`crate::watch`], like the PSK file), the
//! management API's changes over it, each device's last outcome, and the PSK credentials
//! finished bootstraps provisioned into the DTLS listener's PSK store.
//!
//! The core asks [`BootstrapStore`] (a [`BootstrapSource`]) for a device's configuration
//! at each Bootstrap-Request, and reports progress as `Output::Bootstrap`, which the shard
//! hands to [`BootstrapStore::on_event`].

mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

pub use file::{
    check_name, entry_from_json, entry_json, parse_file, read_file, BootstrapFileError,
};

use crate::dtls::PskStore;
use crate::lwm2m::{
    BootstrapConfig, BootstrapConfigs, BootstrapEvent, BootstrapSource, BootstrapStatus,
};
use crate::watch::{self, Watch, Watched};

/// Devices whose last outcome is kept, at most.
const MAX_OUTCOMES: usize = 100_000;

/// A device's last bootstrap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: BootstrapStatus,
    pub error: Option<String>,
    /// Unix time, ms.
    pub at_ms: u64,
}

/// The configurations in use, reloadable, and what became of each device.
pub struct BootstrapStore {
    path: PathBuf,
    /// The file's configurations (the last that loaded).
    file: RwLock<BootstrapConfigs>,
    /// The management API's changes over the file, in order (None: deleted).
    overlay: RwLock<Vec<(String, Option<BootstrapConfig>)>>,
    /// The file with the API's changes: what the core is given.
    current: RwLock<Arc<BootstrapConfigs>>,
    outcomes: Mutex<HashMap<String, Outcome>>,
    /// The DTLS listener's PSK store: credentials for `coaps://…:dtls_port` go there.
    psk: Option<Arc<PskStore>>,
    dtls_port: AtomicU16,
    generation: AtomicU64,
    reloading: Mutex<()>,
}

impl std::fmt::Debug for BootstrapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapStore")
            .field("path", &self.path)
            .field("configurations", &self.current().len())
            .finish()
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl BootstrapStore {
    /// Loads `path` (a missing file is an empty configuration). `psk`: the DTLS
    /// listener's PSK store and port, for the credentials bootstraps give.
    pub fn load(
        path: impl Into<PathBuf>,
        psk: Option<(Arc<PskStore>, u16)>,
    ) -> Result<Self, BootstrapFileError> {
        let path = path.into();
        let configs = read_file(&path)?;
        Ok(Self::with_configs(path, configs, psk))
    }

    pub fn with_configs(
        path: impl Into<PathBuf>,
        configs: BootstrapConfigs,
        psk: Option<(Arc<PskStore>, u16)>,
    ) -> Self {
        BootstrapStore {
            path: path.into(),
            current: RwLock::new(Arc::new(configs.clone())),
            file: RwLock::new(configs),
            overlay: RwLock::new(Vec::new()),
            outcomes: Mutex::new(HashMap::new()),
            dtls_port: AtomicU16::new(psk.as_ref().map_or(0, |p| p.1)),
            psk: psk.map(|p| p.0),
            generation: AtomicU64::new(0),
            reloading: Mutex::new(()),
        }
    }

    /// The DTLS listener's port once bound (the configuration may say 0).
    pub fn set_dtls_port(&self, port: u16) {
        self.dtls_port.store(port, Ordering::Relaxed);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configurations in use.
    pub fn current(&self) -> Arc<BootstrapConfigs> {
        read(&self.current).clone()
    }

    /// How many times the configurations changed since loading.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Rereads the file; on an error the previous configuration stays in use.
    pub fn reload(&self) -> Result<usize, BootstrapFileError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let configs = match read_file(&self.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "bootstrap configuration not reloaded; keeping the previous one");
                return Err(e);
            }
        };
        let n = configs.len();
        *write(&self.file) = configs;
        self.rebuild();
        tracing::info!(path = %self.path.display(), entries = n, "bootstrap configuration reloaded");
        Ok(n)
    }

    /// Sets the configuration of `name` (management API); it stays over the file's
    /// until the process ends.
    pub fn put(&self, name: &str, config: BootstrapConfig) {
        {
            let mut o = write(&self.overlay);
            o.retain(|(n, _)| n != name);
            o.push((name.to_string(), Some(config)));
        }
        self.rebuild();
    }

    /// Removes the configuration of `name` (management API); whether there was one.
    pub fn delete(&self, name: &str) -> bool {
        let had = self.current().get(name).is_some();
        {
            let mut o = write(&self.overlay);
            o.retain(|(n, _)| n != name);
            o.push((name.to_string(), None));
        }
        self.rebuild();
        had
    }

    /// The file with the API's changes becomes current; provisioned PSK credentials it
    /// no longer gives are removed.
    fn rebuild(&self) {
        let mut c = read(&self.file).clone();
        for (name, change) in read(&self.overlay).iter() {
            match change {
                Some(cfg) => c.insert(name, cfg.clone()),
                None => {
                    c.remove(name);
                }
            }
        }
        let c = Arc::new(c);
        *write(&self.current) = c.clone();
        self.generation.fetch_add(1, Ordering::Release);
        if let Some(psk) = &self.psk {
            let removed = psk.retain_provisioned(|id, key, ep| gives(&c, ep, id, key));
            if removed > 0 {
                tracing::info!(
                    removed,
                    "PSK credentials provisioned by bootstraps removed: their configuration is gone"
                );
            }
        }
    }

    /// A bootstrap's progress (from a shard): the device's outcome, and on `finished`
    /// the credentials it was given for this gateway into the PSK store.
    pub fn on_event(&self, e: &BootstrapEvent, unix_ms: u64) {
        if e.status == BootstrapStatus::Finished {
            if let Some(psk) = &self.psk {
                let port = self.dtls_port.load(Ordering::Relaxed);
                // Only what the configuration in use still gives (it may have changed
                // while the bootstrap ran).
                let current = self.current();
                let gives = |id: &str, key: &[u8]| gives(&current, &e.endpoint, id, key);
                let ours = e.credentials.iter().filter(|c| targets(&c.uri, port));
                for c in ours.filter(|c| gives(&c.identity, &c.key)) {
                    psk.provision(&c.identity, &c.key, &e.endpoint);
                    tracing::info!(endpoint = %e.endpoint, identity = %c.identity, "PSK credentials provisioned by bootstrap");
                }
            }
        }
        let mut o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        if o.len() >= MAX_OUTCOMES && !o.contains_key(&e.endpoint) {
            // Bounded: forget the oldest.
            if let Some(k) = o
                .iter()
                .min_by_key(|(_, v)| v.at_ms)
                .map(|(k, _)| k.clone())
            {
                o.remove(&k);
            }
        }
        o.insert(
            e.endpoint.clone(),
            Outcome {
                status: e.status,
                error: e.error.clone(),
                at_ms: unix_ms,
            },
        );
    }

    /// The last bootstrap of `endpoint`.
    pub fn outcome(&self, endpoint: &str) -> Option<Outcome> {
        let o = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        o.get(endpoint).cloned()
    }

    /// Reloads the file on change and on SIGHUP (see [`crate::watch`]).
    pub fn spawn_watcher(
        self: &Arc<Self>,
        poll_every: Duration,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<JoinHandle<()>> {
        let store = Arc::clone(self);
        let w = Watch {
            watched: Watched::File(self.path.clone()),
            poll_every,
            thread_name: "bootstrap-watch",
            what: "the bootstrap configuration",
        };
        watch::spawn(w, stop, move |_| {
            let _ = store.reload();
        })
    }
}

impl BootstrapSource for BootstrapStore {
    fn config_for(&self, endpoint: &str) -> Option<Arc<BootstrapConfig>> {
        read(&self.current).find(endpoint).cloned()
    }
}

/// Whether the configuration of `ep` gives it the PSK `id`/`key`.
fn gives(c: &BootstrapConfigs, ep: &str, id: &str, key: &[u8]) -> bool {
    c.find(ep).is_some_and(|cfg| {
        cfg.servers
            .iter()
            .any(|s| s.identity.as_deref() == Some(id) && s.key.as_deref() == Some(key))
    })
}

/// Whether a server URI is this gateway's DTLS listener: `coaps://`, its port (5684
/// when the URI has none).
fn targets(uri: &str, port: u16) -> bool {
    let Some(rest) = uri.strip_prefix("coaps://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    let p = match authority.rsplit_once(':') {
        Some((host, p)) if !host.ends_with(':') && !p.contains(']') => p.parse().ok(),
        _ => Some(5684),
    };
    p == Some(port)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtls::PskTable;
    use crate::lwm2m::PskCredential;

    #[test]
    fn uri_targets() {
        assert!(targets("coaps://127.0.0.1:5784", 5784));
        assert!(targets("coaps://[::1]:5784", 5784));
        assert!(targets("coaps://gw.example", 5684));
        assert!(!targets("coaps://gw.example:5785", 5784));
        assert!(!targets("coap://127.0.0.1:5784", 5784));
    }

    #[test]
    fn provisioned_keys_follow_the_configuration() {
        let psk = Arc::new(PskStore::with_table("/none", PskTable::default()));
        let text = r#"
[dev1]
[[dev1.servers]]
uri = "coaps://127.0.0.1:5784"
security = "psk"
identity = "dev1-id"
key = "0102"
short_id = 1
"#;
        let configs = parse_file(text, Path::new("x")).unwrap();
        let store = BootstrapStore::with_configs("/none", configs, Some((psk.clone(), 5784)));
        let ev = BootstrapEvent {
            endpoint: "dev1".into(),
            status: BootstrapStatus::Finished,
            error: None,
            credentials: vec![PskCredential {
                uri: "coaps://127.0.0.1:5784".into(),
                identity: "dev1-id".into(),
                key: vec![1, 2],
            }],
        };
        store.on_event(&ev, 5);
        assert_eq!(psk.lookup(b"dev1-id"), Some(vec![1, 2]));
        assert!(psk.may_register("dev1-id", "dev1"));
        assert!(!psk.may_register("dev1-id", "dev2"));
        assert_eq!(
            store.outcome("dev1").unwrap().status,
            BootstrapStatus::Finished
        );
        // Another configuration for dev1 (another key): the old key goes.
        let mut other = store.current().get("dev1").unwrap().as_ref().clone();
        other.servers[0].key = Some(vec![9]);
        store.put("dev1", other);
        assert_eq!(psk.lookup(b"dev1-id"), None);
        store.on_event(&ev, 6);
        assert_eq!(
            psk.lookup(b"dev1-id"),
            None,
            "not what the configuration gives now"
        );
        let mut ev9 = ev.clone();
        ev9.credentials[0].key = vec![9];
        store.on_event(&ev9, 7);
        assert_eq!(psk.lookup(b"dev1-id"), Some(vec![9]));
        assert!(store.delete("dev1"));
        assert_eq!(psk.lookup(b"dev1-id"), None);
        assert!(store.config_for("dev1").is_none());
    }
}
