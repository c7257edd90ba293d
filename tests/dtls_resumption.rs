//! Session resumption (RFC 5246 §7.3) against the DTLS server without
//! sockets: dimpl clients (our copy, which offers a cached session ID) and the
//! server exchange datagrams in memory on a virtual clock.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dtls_client::{Client, KEY};
use dimpl::Resumption;
use lwm2m_gateway::dtls::{
    DtlsEvent, DtlsServer, DtlsSettings, PeerIdentity, PskStore, ResumptionCache,
};

const OTHER_KEY: &str = "0f0e0d0c0b0a09080706050403020100";
const LIFETIME: Duration = Duration::from_secs(3600);

/// The PSK file is rewritten to `text` and reloaded.
fn rewrite(store: &PskStore, text: &str) {
    std::fs::write(store.path(), text).unwrap();
    store.reload().unwrap();
}

/// Two shards' settings sharing one PSK store and one resumption cache.
fn settings(store: &Arc<PskStore>, cache: &Arc<ResumptionCache>, cid: usize) -> DtlsSettings {
    DtlsSettings {
        psk: Some(Arc::clone(store)),
        idle_timeout: Duration::from_secs(300),
        connection_id_len: cid,
        session_cache: Some(Arc::clone(cache)),
        ..DtlsSettings::default()
    }
}

/// The PSK store (its file in `dir`) and a cache of `capacity` sessions.
fn setup(dir: &tempfile::TempDir, capacity: usize) -> (Arc<PskStore>, Arc<ResumptionCache>) {
    let path = dir.path().join("psk.txt");
    std::fs::write(&path, format!("dev-1:{KEY}\ndev-2:{KEY}\n")).unwrap();
    let store = Arc::new(PskStore::load(path).unwrap());
    let cache = Arc::new(ResumptionCache::new(
        LIFETIME,
        capacity,
        Some(Arc::clone(&store)),
    ));
    (store, cache)
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, 1], port))
}

/// A server on a virtual clock and what it announced.
struct World {
    server: DtlsServer,
    now: Instant,
    events: Vec<DtlsEvent>,
    /// Datagrams server → client and client → server, counted (the loss
    /// tests drop some).
    to_client: usize,
    to_server: usize,
}

impl World {
    fn new(settings: DtlsSettings, now: Instant) -> Self {
        World {
            server: DtlsServer::new(settings).unwrap(),
            now,
            events: Vec::new(),
            to_client: 0,
            to_server: 0,
        }
    }

    /// Moves datagrams (dropping the server → client ones `drop` picks) and
    /// advances the clock to the next timer when idle, until the client and
    /// the server are connected or a minute has passed.
    fn connect_lossy(&mut self, c: &mut Client, drop: &dyn Fn(usize) -> bool) -> bool {
        self.connect_dropping(c, drop, &|_| false)
    }

    /// Like `connect_lossy`, dropping client → server datagrams too.
    fn connect_dropping(
        &mut self,
        c: &mut Client,
        drop: &dyn Fn(usize) -> bool,
        drop_up: &dyn Fn(usize) -> bool,
    ) -> bool {
        let end = self.now + Duration::from_secs(60);
        loop {
            while let Some(e) = self.server.poll_event() {
                self.events.push(e);
            }
            if c.connected && self.server.has_session(c.addr) {
                return true;
            }
            let mut moved = false;
            while let Some(p) = c.out.pop_front() {
                moved = true;
                let i = self.to_server;
                self.to_server += 1;
                if !drop_up(i) {
                    self.server.handle_datagram(self.now, c.addr, &p);
                }
            }
            while let Some((to, p)) = self.server.poll_transmit() {
                moved = true;
                let i = self.to_client;
                self.to_client += 1;
                if to == c.addr && !drop(i) {
                    c.receive(self.now, &p);
                }
            }
            if moved {
                continue;
            }
            let next = [c.timeout, self.server.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => self.now = self.now.max(t),
                _ => return false,
            }
            c.tick(self.now);
            self.server.handle_timeout(self.now);
        }
    }

    fn connect(&mut self, c: &mut Client) -> bool {
        self.connect_lossy(c, &|_| false)
    }

    /// A message each way over the session of `c`.
    fn exchange(&mut self, c: &mut Client, tag: &str) {
        let up = format!("up {tag}");
        c.dtls.send_application_data(up.as_bytes()).unwrap();
        c.poll();
        while let Some(p) = c.out.pop_front() {
            self.server.handle_datagram(self.now, c.addr, &p);
        }
        while let Some(e) = self.server.poll_event() {
            self.events.push(e);
        }
        assert!(
            self.events.iter().any(|e| matches!(e,
                DtlsEvent::Data { peer, plaintext } if *peer == c.addr && plaintext == up.as_bytes())),
            "the server did not get {up}"
        );
        let down = format!("down {tag}");
        self.server.send(self.now, c.addr, down.as_bytes()).unwrap();
        while let Some((to, p)) = self.server.poll_transmit() {
            assert_eq!(to, c.addr);
            c.receive(self.now, &p);
        }
        assert_eq!(c.received.last().map(|v| &v[..]), Some(down.as_bytes()));
    }

    fn identities(&self, peer: SocketAddr) -> Vec<PeerIdentity> {
        self.events
            .iter()
            .filter_map(|e| match e {
                DtlsEvent::Connected { peer: p, identity } if *p == peer => Some(identity.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A full handshake of `dev-1` on `w`; returns the session to resume.
fn first_session(w: &mut World, port: u16) -> Resumption {
    let mut c = Client::psk_resuming("dev-1", KEY, addr(port), w.now, None, false);
    assert!(w.connect(&mut c));
    assert!(!c.dtls.is_resumed());
    w.exchange(&mut c, "full");
    c.dtls.resumption().expect("the server issued a session ID")
}

#[test]
fn a_device_resumes_its_session_from_a_new_port_on_another_shard() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 100);
    let now = Instant::now();
    let mut a = World::new(settings(&store, &cache, 0), now);
    let mut b = World::new(settings(&store, &cache, 0), now);
    let r = first_session(&mut a, 1000);
    assert_eq!(r.session_id.len(), 32);
    assert_eq!(cache.len(), 1);

    // The device lost its session (new port: the other shard's socket).
    b.now += Duration::from_secs(600);
    let mut c = Client::psk_resuming("dev-1", KEY, addr(2000), b.now, Some(&r), false);
    assert!(b.connect(&mut c));
    assert!(c.dtls.is_resumed(), "abbreviated handshake on the client");
    assert_eq!(
        b.identities(addr(2000)),
        vec![PeerIdentity::Psk("dev-1".into())]
    );
    b.exchange(&mut c, "resumed");
    let s = b.server.stats();
    assert_eq!((s.resumed, s.handshakes_completed), (1, 1));
    assert_eq!(
        (
            s.resume_refused_unknown,
            s.resume_refused_expired,
            s.resume_refused_revoked
        ),
        (0, 0, 0)
    );
    assert_eq!(s.session_cache_entries, 1);
    // The resumed session can itself be resumed (same ID, same secret).
    assert_eq!(c.dtls.resumption().as_ref(), Some(&r));
}

#[test]
fn the_abbreviated_handshake_is_one_flight_and_other_identities_do_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 100);
    let now = Instant::now();
    let mut w = World::new(settings(&store, &cache, 0), now);
    let r = first_session(&mut w, 1000);
    let before = w.to_client;
    // Remove dev-2 (not dev-1): the resumption of dev-1 is not affected.
    rewrite(&store, &format!("dev-1:{KEY}\n"));
    let mut c = Client::psk_resuming("dev-1", KEY, addr(1001), w.now, Some(&r), false);
    assert!(w.connect(&mut c));
    assert!(c.dtls.is_resumed());
    // HelloVerifyRequest, then one flight ServerHello + CCS + Finished.
    assert!(
        w.to_client - before <= 2,
        "{} datagrams",
        w.to_client - before
    );
    assert_eq!(w.server.stats().resumed, 1);
}

#[test]
fn unknown_session_ids_get_a_full_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 100);
    let now = Instant::now();
    let mut w = World::new(settings(&store, &cache, 0), now);
    let mut r = first_session(&mut w, 1000);
    r.session_id[0] ^= 0xff;
    let mut c = Client::psk_resuming("dev-1", KEY, addr(1001), w.now, Some(&r), false);
    assert!(w.connect(&mut c));
    assert!(!c.dtls.is_resumed());
    w.exchange(&mut c, "full again");
    let s = w.server.stats();
    assert_eq!((s.resumed, s.resume_refused_unknown), (0, 1));
    assert_eq!(s.handshakes_completed, 2);
    // The new full handshake issued a new session.
    let r2 = c.dtls.resumption().unwrap();
    assert_ne!(r2.session_id, r.session_id);
    assert_eq!(cache.len(), 2);
}

#[test]
fn expired_sessions_get_a_full_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 100);
    let now = Instant::now();
    let mut w = World::new(settings(&store, &cache, 0), now);
    let r = first_session(&mut w, 1000);
    w.now += LIFETIME + Duration::from_secs(1);
    let mut c = Client::psk_resuming("dev-1", KEY, addr(1001), w.now, Some(&r), false);
    assert!(w.connect(&mut c));
    assert!(!c.dtls.is_resumed());
    let s = w.server.stats();
    assert_eq!((s.resumed, s.resume_refused_expired), (0, 1));
}

#[test]
fn a_revoked_psk_refuses_resumption() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 100);
    let now = Instant::now();
    let mut w = World::new(settings(&store, &cache, 0), now);
    let r = first_session(&mut w, 1000);

    // dev-1 is removed from the PSK file: no resumption, and the full
    // handshake fails too (unknown identity).
    rewrite(&store, &format!("dev-2:{KEY}\n"));
    let mut c = Client::psk_resuming("dev-1", KEY, addr(1001), w.now, Some(&r), false);
    assert!(!w.connect(&mut c));
    assert!(!c.connected);
    assert_eq!(w.server.stats().resume_refused_revoked, 1);
    assert!(w.identities(addr(1001)).is_empty());

    // dev-1 is back with another key: the old session stays refused; the
    // device's full handshake with the new key works.
    rewrite(&store, &format!("dev-1:{OTHER_KEY}\n"));
    w.now += Duration::from_secs(60);
    let mut c = Client::psk_resuming("dev-1", OTHER_KEY, addr(1002), w.now, Some(&r), false);
    assert!(w.connect(&mut c));
    assert!(!c.dtls.is_resumed());
    assert_eq!(w.server.stats().resume_refused_revoked, 2);
    assert_eq!(w.server.stats().resumed, 0);
}

#[test]
fn a_resumed_session_negotiates_a_connection_id_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 100);
    let now = Instant::now();
    let mut w = World::new(settings(&store, &cache, 8), now);
    let r = first_session(&mut w, 1000);
    let mut c = Client::psk_resuming("dev-1", KEY, addr(1001), w.now, Some(&r), true);
    assert!(w.connect(&mut c));
    assert!(c.dtls.is_resumed());
    assert_eq!(c.dtls.peer_connection_id().map(<[u8]>::len), Some(8));
    w.exchange(&mut c, "cid");
    assert_eq!(w.server.stats().cid_sessions, 1);
}

#[test]
fn a_lost_server_flight_is_resent_and_the_resumption_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 100);
    let now = Instant::now();
    let mut w = World::new(settings(&store, &cache, 0), now);
    let r = first_session(&mut w, 1000);
    let first = w.to_client;
    let mut c = Client::psk_resuming("dev-1", KEY, addr(1001), w.now, Some(&r), false);
    // Drop the first ServerHello + CCS + Finished flight (after the HVR).
    assert!(w.connect_lossy(&mut c, &|i| i == first + 1));
    assert!(c.dtls.is_resumed());
    w.exchange(&mut c, "after loss");
    assert_eq!(w.server.stats().resumed, 1);
}

#[test]
fn a_lost_client_finished_is_resent_when_the_server_resends_its_flight() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 100);
    let now = Instant::now();
    let mut w = World::new(settings(&store, &cache, 0), now);
    let r = first_session(&mut w, 1000);
    let first = w.to_server;
    let mut c = Client::psk_resuming("dev-1", KEY, addr(1001), w.now, Some(&r), false);
    // ClientHello, ClientHello + cookie, then CCS + Finished: dropped once.
    let ok = w.connect_dropping(&mut c, &|_| false, &|i| i == first + 2);
    assert!(ok, "connected {} failed {}", c.connected, c.failed);
    assert!(c.dtls.is_resumed());
    assert!(
        w.to_server > first + 3,
        "the client's last flight went twice"
    );
    w.exchange(&mut c, "after loss");
    assert_eq!(w.server.stats().resumed, 1);
}

#[test]
fn the_cache_keeps_at_most_its_capacity() {
    let dir = tempfile::tempdir().unwrap();
    let (store, cache) = setup(&dir, 2);
    let now = Instant::now();
    let mut w = World::new(settings(&store, &cache, 0), now);
    let oldest = first_session(&mut w, 1000);
    for port in 1001..1004 {
        first_session(&mut w, port);
    }
    assert_eq!(cache.len(), 2);
    let mut c = Client::psk_resuming("dev-1", KEY, addr(2000), w.now, Some(&oldest), false);
    assert!(w.connect(&mut c));
    assert!(!c.dtls.is_resumed(), "the oldest session made room");
    assert_eq!(w.server.stats().resume_refused_unknown, 1);
}
