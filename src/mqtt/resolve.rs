//! The broker's socket addresses, looked up away from the threads that connect.
//!
//! An IP address is used as it is. A name is looked up once at start (on the starting
//! thread), then again by a thread of its own: every `REFRESH_EVERY`, and soon after a
//! connection fails (at most once per `REFRESH_MIN_GAP`). Connections read the last
//! answer without waiting: a reader that finds the list being replaced keeps its
//! previous copy. A lookup that fails keeps the addresses last found.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::thread::Thread;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use tracing::{debug, info, warn};

use super::ServerAddr;

/// A name is looked up again this often.
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// Lookups asked for by failing connections are at least this far apart.
const REFRESH_MIN_GAP: Duration = Duration::from_secs(1);

/// Looks a name up (blocking); the system's resolver unless a test says otherwise.
type Lookup = Arc<dyn Fn(&str, u16) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The broker's addresses, shared by every connection to it.
pub struct BrokerAddrs {
    host: String,
    port: u16,
    /// The host is an IP address: nothing to look up.
    literal: bool,
    lookup: Lookup,
    current: RwLock<Arc<[SocketAddr]>>,
    /// Bumped after every change of `current`.
    generation: AtomicU64,
    /// A connection failed since the last lookup.
    refresh: AtomicBool,
    resolver: OnceLock<Thread>,
}

impl BrokerAddrs {
    /// The addresses of `server`: its IP address, or none until its name is looked up.
    pub fn new(server: &ServerAddr) -> Arc<Self> {
        Self::with_lookup(server, Arc::new(system_lookup))
    }

    /// Like [`new`](Self::new), looking names up with `lookup`.
    pub(crate) fn with_lookup(server: &ServerAddr, lookup: Lookup) -> Arc<Self> {
        let (host, port) = match server {
            ServerAddr::Tcp { host, port } | ServerAddr::Tls { host, port, .. } => {
                (host.clone(), *port)
            }
        };
        let ip = host.parse::<IpAddr>().ok();
        let current: Arc<[SocketAddr]> =
            ip.map(|ip| SocketAddr::new(ip, port)).into_iter().collect();
        Arc::new(BrokerAddrs {
            host,
            port,
            literal: ip.is_some(),
            lookup,
            current: RwLock::new(current),
            generation: AtomicU64::new(0),
            refresh: AtomicBool::new(false),
            resolver: OnceLock::new(),
        })
    }

    /// `host:port` as configured.
    pub fn name(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Looks the name up now, on the calling thread (blocking), and keeps the answer.
    /// An IP address needs no lookup.
    pub fn resolve_now(&self) -> io::Result<Arc<[SocketAddr]>> {
        if !self.literal {
            let found = look_up(&self.lookup, &self.host, self.port)?;
            self.publish(found);
        }
        Ok(self.current.read().clone())
    }

    /// For a name, starts the thread that looks it up again; it ends once every
    /// reference to `self` is gone. Nothing to do for an IP address.
    pub fn spawn_resolver(self: &Arc<Self>) -> io::Result<()> {
        if self.literal || self.resolver.get().is_some() {
            return Ok(());
        }
        let weak = Arc::downgrade(self);
        let handle = std::thread::Builder::new()
            .name("mqtt-resolve".into())
            .spawn(move || resolver(weak))?;
        let _ = self.resolver.set(handle.thread().clone());
        Ok(())
    }

    /// A connection failed: look the name up again soon. Never waits.
    pub fn connect_failed(&self) {
        if !self.literal && !self.refresh.swap(true, Ordering::AcqRel) {
            if let Some(t) = self.resolver.get() {
                t.unpark();
            }
        }
    }

    /// Replaces the addresses when they changed.
    fn publish(&self, found: Vec<SocketAddr>) {
        if *self.current.read().as_ref() == found[..] {
            debug!(server = %self.name(), "MQTT broker name looked up again: unchanged");
            return;
        }
        info!(server = %self.name(), addrs = ?found, "MQTT broker name resolved");
        let new: Arc<[SocketAddr]> = found.into();
        let old = std::mem::replace(&mut *self.current.write(), new);
        self.generation.fetch_add(1, Ordering::Release);
        drop(old);
    }
}

impl Drop for BrokerAddrs {
    fn drop(&mut self) {
        // The resolver sleeps: wake it to find `self` gone and end.
        if let Some(t) = self.resolver.get() {
            t.unpark();
        }
    }
}

/// A connection owner's copy of the addresses: refreshed, when they changed, without
/// waiting.
pub(crate) struct AddrCache {
    shared: Arc<BrokerAddrs>,
    seen: u64,
    addrs: Arc<[SocketAddr]>,
}

impl AddrCache {
    pub(super) fn new(shared: Arc<BrokerAddrs>) -> Self {
        let addrs = shared
            .current
            .try_read()
            .map_or_else(|| [].into(), |a| a.clone());
        AddrCache {
            seen: 0,
            shared,
            addrs,
        }
    }

    /// The address for connection attempt `n` (attempts go round the addresses), or
    /// None while the name has given none.
    pub(super) fn pick(&mut self, n: u64) -> Option<SocketAddr> {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation != self.seen {
            if let Some(a) = self.shared.current.try_read() {
                self.addrs = a.clone();
                self.seen = generation;
            }
        }
        let len = self.addrs.len() as u64;
        (len > 0).then(|| self.addrs[(n % len) as usize])
    }

    pub(super) fn shared(&self) -> &BrokerAddrs {
        &self.shared
    }
}

fn system_lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    Ok((host, port).to_socket_addrs()?.collect())
}

/// At least one address for `host`, or why not.
fn look_up(lookup: &Lookup, host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    let found = lookup(host, port)?;
    if found.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("{host} resolves to no address"),
        ));
    }
    Ok(found)
}

/// The resolver thread: looks the name up every `REFRESH_EVERY`, or `REFRESH_MIN_GAP`
/// after the last lookup when a connection asked; ends when the addresses are dropped.
fn resolver(weak: Weak<BrokerAddrs>) {
    let mut last = Instant::now();
    // A name that gave nothing at start was reported then.
    let mut failing = weak.upgrade().is_some_and(|s| s.current.read().is_empty());
    loop {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        let asked = shared.refresh.load(Ordering::Acquire);
        let gap = if asked {
            REFRESH_MIN_GAP
        } else {
            REFRESH_EVERY
        };
        let due = last + gap;
        let now = Instant::now();
        if now < due {
            drop(shared);
            std::thread::park_timeout(due - now);
            continue;
        }
        shared.refresh.store(false, Ordering::Release);
        let (host, port, lookup) = (shared.host.clone(), shared.port, shared.lookup.clone());
        // Not kept across the lookup, which may take long: the gateway may stop meanwhile.
        drop(shared);
        let found = look_up(&lookup, &host, port);
        last = Instant::now();
        let Some(shared) = weak.upgrade() else {
            return;
        };
        match found {
            Ok(found) => {
                failing = false;
                shared.publish(found);
            }
            Err(error) => {
                let held = shared.current.read().len();
                if failing {
                    debug!(server = %shared.name(), %error, "MQTT broker name lookup failed");
                } else {
                    warn!(
                        server = %shared.name(),
                        %error,
                        kept = held,
                        "MQTT broker name lookup failed: keeping the addresses last found"
                    );
                }
                failing = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn tcp(host: &str) -> ServerAddr {
        ServerAddr::Tcp {
            host: host.into(),
            port: 1883,
        }
    }

    #[test]
    fn an_ip_address_needs_no_lookup() {
        fn never(_: &str, _: u16) -> io::Result<Vec<SocketAddr>> {
            panic!("looked up an IP address")
        }
        for (host, want) in [("127.0.0.1", "127.0.0.1:1883"), ("::1", "[::1]:1883")] {
            let b = BrokerAddrs::with_lookup(&tcp(host), Arc::new(never));
            b.spawn_resolver().unwrap();
            b.connect_failed();
            assert!(b.resolver.get().is_none());
            let mut cache = AddrCache::new(b.clone());
            assert_eq!(cache.pick(0), Some(want.parse().unwrap()));
            assert_eq!(b.resolve_now().unwrap()[..], [want.parse().unwrap()]);
        }
    }

    #[test]
    fn localhost_resolves_to_loopback_addresses() {
        let b = BrokerAddrs::new(&tcp("localhost"));
        let mut cache = AddrCache::new(b.clone());
        assert_eq!(cache.pick(0), None, "nothing before the lookup");
        let found = b.resolve_now().expect("localhost resolves");
        assert!(!found.is_empty());
        assert!(found
            .iter()
            .all(|a| a.ip().is_loopback() && a.port() == 1883));
        for n in 0..found.len() as u64 * 2 {
            assert_eq!(cache.pick(n), Some(found[n as usize % found.len()]));
        }
    }

    #[test]
    fn a_name_that_does_not_resolve_gives_an_error_and_no_address() {
        let b = BrokerAddrs::new(&tcp("no-such-host.invalid"));
        assert!(b.resolve_now().is_err());
        assert_eq!(AddrCache::new(b).pick(0), None);
    }

    #[test]
    fn a_failed_connection_gets_the_name_looked_up_again_off_its_thread() {
        // Nothing at the first lookup, then a new port at every lookup.
        let lookups = AtomicUsize::new(0);
        let moving = move |_: &str, _: u16| match lookups.fetch_add(1, Ordering::SeqCst) {
            0 => Err(io::Error::new(io::ErrorKind::NotFound, "not yet")),
            n => Ok(vec![SocketAddr::from(([10, 0, 0, 1], n as u16))]),
        };
        let b = BrokerAddrs::with_lookup(&tcp("broker.example"), Arc::new(moving));
        assert!(b.resolve_now().is_err(), "the first lookup fails");
        b.spawn_resolver().unwrap();
        let mut cache = AddrCache::new(b.clone());
        assert_eq!(cache.pick(0), None);
        // Each failure asks for a new lookup; the answer reaches the cache.
        for port in [1, 2] {
            b.connect_failed();
            let deadline = Instant::now() + Duration::from_secs(20);
            while cache.pick(0).map(|a| a.port()) != Some(port) {
                assert!(Instant::now() < deadline, "no lookup after a failure");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
