//! The session table of one shard: routing datagrams to dimpl instances,
//! the caps on half-open handshakes and sessions, timers, replacement.
//!
//! Two tables keyed by peer address: `handshakes` (in progress, at most one
//! per address) and `sessions` (established, at most one per address). Both
//! may hold the same address while a device that rebooted handshakes again
//! beside its old session. Routing by the first record of a datagram:
//!
//! | first record            | goes to                                             |
//! |-------------------------|-----------------------------------------------------|
//! | epoch-0 ClientHello     | the handshake; without one, a HelloVerifyRequest    |
//! |                         | (stateless, `hello_verify.rs`) unless its cookie    |
//! |                         | verifies: then a handshake (created if caps allow); |
//! |                         | a record version {254, x} other than 1.0/1.2 → 1.0  |
//! | other epoch 0           | the handshake, else the session, else dropped       |
//! | epoch ≥ 1 (encrypted)   | the session; if it yields nothing and a *verified*  |
//! |                         | handshake exists, the handshake (its Finished)      |
//!
//! Timers: one min-heap of `(deadline, session id, address)` with lazy
//! deletion. A session pushes an entry only when its deadline moves earlier
//! than the entry it already has; an entry that pops early (the idle
//! deadline moved later) is re-pushed. A timer costs O(log n), never a scan.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dimpl::crypto::Dtls12CipherSuite;
use dimpl::{Config, Dtls};

use super::cid::CidTable;
use super::cookie::CookieKeys;
use super::failure_log::FailureLog;
use super::hello_verify::{self, Verdict};
use super::resume::ShardCache;
use super::session::{
    classify, normalise_client_hello, Fatal, Kind, RecordingResolver, Session, SessionOutput, Sink,
};
use super::{CloseReason, DtlsError, DtlsEvent, DtlsSettings, DtlsStats};

/// Default lifetime of a handshake whose cookie has not come back.
const DEFAULT_COOKIE_TIMEOUT: Duration = Duration::from_secs(10);
/// Initial size of the output buffer (dimpl's default MTU is 1150).
const OUTPUT_BUF: usize = 2048;

/// A sans-IO DTLS 1.2 server for all peers of one shard. See the module
/// documentation of [`crate::dtls`] for how to drive it.
pub struct DtlsServer {
    settings: DtlsSettings,
    config: Arc<Config>,
    resolver: Option<Arc<RecordingResolver>>,
    /// The listener's resumption cache as this shard's dimpl sees it.
    session_cache: Option<Arc<ShardCache>>,
    handshakes: HashMap<SocketAddr, Session>,
    sessions: HashMap<SocketAddr, Session>,
    /// Half-open handshakes per source IP, oldest first: (address, session
    /// id). At most `max_half_open_per_addr` each.
    half_open_per_ip: HashMap<IpAddr, Vec<(SocketAddr, u64)>>,
    /// Half-open handshakes (every one past the cookie exchange: a ClientHello
    /// without a valid cookie creates none).
    verified: usize,
    timers: BinaryHeap<Reverse<(Instant, u64, SocketAddr)>>,
    transmits: VecDeque<(SocketAddr, Vec<u8>)>,
    events: VecDeque<DtlsEvent>,
    stats: DtlsStats,
    buf: Vec<u8>,
    outputs: Vec<SessionOutput>,
    next_id: u64,
    cookie_timeout: Duration,
    failures: FailureLog,
    /// Connection IDs (RFC 9146) of established sessions.
    cids: CidTable,
    /// Records with another shard's CID: (shard, source, datagram).
    forward: VecDeque<(usize, SocketAddr, Vec<u8>)>,
    /// The key every instance's cookie secret derives from (per address).
    cookies: CookieKeys,
}

impl std::fmt::Debug for DtlsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DtlsServer")
            .field("sessions", &self.sessions.len())
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl DtlsServer {
    /// Builds the dimpl configuration once (it runs crypto self-tests).
    pub fn new(settings: DtlsSettings) -> Result<Self, DtlsError> {
        if settings.psk.is_none() && settings.cert.is_none() {
            return Err(DtlsError::NoCredentials);
        }
        let mut suites = Vec::new();
        if settings.psk.is_some() {
            suites.push(Dtls12CipherSuite::PSK_AES128_CCM_8);
        }
        if settings.cert.is_some() {
            suites.extend([
                Dtls12CipherSuite::ECDHE_ECDSA_AES128_GCM_SHA256,
                Dtls12CipherSuite::ECDHE_ECDSA_AES256_GCM_SHA384,
                Dtls12CipherSuite::ECDHE_ECDSA_CHACHA20_POLY1305_SHA256,
            ]);
        }
        let handshake_timeout = settings.handshake_timeout.max(Duration::from_millis(1));
        let mut builder = Config::builder()
            .dtls12_cipher_suites(&suites)
            .dtls13_cipher_suites(&[])
            .use_server_cookie(true)
            .handshake_timeout(handshake_timeout)
            .require_client_certificate(
                settings
                    .cert
                    .as_ref()
                    .is_some_and(|c| c.requires_client_cert()),
            );
        let resolver = settings
            .psk
            .as_ref()
            .map(|store| Arc::new(RecordingResolver::new(Arc::clone(store))));
        if let Some(r) = &resolver {
            builder = builder.with_psk_server(None, Arc::clone(r) as Arc<dyn dimpl::PskResolver>);
        }
        let session_cache = settings
            .session_cache
            .as_ref()
            .map(|c| Arc::new(ShardCache::new(Arc::clone(c))));
        if let Some(c) = &session_cache {
            builder = builder.with_session_cache(Arc::clone(c) as Arc<dyn dimpl::SessionCache>);
        }
        let config = builder
            .build()
            .map_err(|e| DtlsError::Config(e.to_string()))?;
        let cids = CidTable::new(settings.connection_id_len.min(32));
        let cookies = CookieKeys::new(config.crypto_provider().clone());
        Ok(DtlsServer {
            settings,
            config: Arc::new(config),
            resolver,
            session_cache,
            handshakes: HashMap::new(),
            sessions: HashMap::new(),
            half_open_per_ip: HashMap::new(),
            verified: 0,
            timers: BinaryHeap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: DtlsStats::default(),
            buf: vec![0; OUTPUT_BUF],
            outputs: Vec::new(),
            next_id: 0,
            cookie_timeout: DEFAULT_COOKIE_TIMEOUT,
            cids,
            forward: VecDeque::new(),
            failures: FailureLog::default(),
            cookies,
        })
    }

    /// How long a handshake may last before its instance has sent anything
    /// past a HelloVerifyRequest (default 10 s, never more than
    /// `handshake_timeout`): an instance, created by a ClientHello with a
    /// valid cookie, normally answers it at once; one still waiting (for the
    /// rest of a fragmented ClientHello) is dropped after this.
    pub fn set_cookie_timeout(&mut self, d: Duration) {
        self.cookie_timeout = d;
    }

    /// The settings this server was built with.
    pub fn settings(&self) -> &DtlsSettings {
        &self.settings
    }

    /// Established sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Handshakes in progress.
    pub fn half_open_count(&self) -> usize {
        self.handshakes.len()
    }

    /// True when `peer` has an established session.
    pub fn has_session(&self, peer: SocketAddr) -> bool {
        self.sessions.contains_key(&peer)
    }

    /// Counters.
    pub fn stats(&self) -> &DtlsStats {
        &self.stats
    }

    /// Next ciphertext datagram to send, to whom.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, Vec<u8>)> {
        self.transmits.pop_front()
    }

    /// Next event for the gateway.
    pub fn poll_event(&mut self) -> Option<DtlsEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// This server is shard `shard` of `shards`: the connection IDs it issues
    /// name it, and records with another shard's come out of
    /// [`Self::poll_forward`].
    pub fn set_shard(&mut self, shard: u16, shards: u16) {
        self.cids.set_shard(shard, shards);
    }

    /// A datagram with a connection ID of another shard's server: (that shard,
    /// its source, the datagram). Give it to that shard's
    /// [`Self::handle_datagram`] as it came.
    pub fn poll_forward(&mut self) -> Option<(usize, SocketAddr, Vec<u8>)> {
        self.forward.pop_front()
    }

    /// Counts a record [`Self::poll_forward`] gave that its shard had no room for.
    pub fn forward_dropped(&mut self) {
        self.stats.cid_forward_dropped += 1;
    }

    /// A datagram from `peer` arrived at `now`.
    pub fn handle_datagram(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        self.stats.datagrams_in += 1;
        if let Some(cid) = self.cids.record_cid(data) {
            let cid = cid.to_vec();
            if self.handle_cid_record(now, peer, &cid, data) {
                self.update_gauges();
                return;
            }
            // Another shard's session (the device's new address hashed to
            // this shard's socket): it goes there through the mailboxes.
            if let Some(shard) = self.cids.other_shard(&cid) {
                self.stats.cid_forwarded += 1;
                self.forward
                    .push_back((shard as usize, peer, data.to_vec()));
                return;
            }
            // A handshake's Finished carries the CID before its session is
            // known by it: that one goes by address.
            if !self.handshakes.contains_key(&peer) {
                self.stats.cid_unknown += 1;
                return;
            }
        }
        match classify(data) {
            Kind::Junk => self.stats.junk_dropped += 1,
            Kind::ClientHello => {
                // Any {254, x} record version, as RFC 5246 E.1 has it (see
                // `normalise_client_hello`); every other record stays strict.
                let normalised = normalise_client_hello(data);
                if normalised.is_some() {
                    self.stats.hello_versions_normalised += 1;
                }
                let data = normalised.as_deref().unwrap_or(data);
                if self.handshakes.contains_key(&peer) {
                    self.feed(now, peer, true, data);
                } else {
                    self.client_hello(now, peer, data);
                }
            }
            Kind::Epoch0 => {
                if self.handshakes.contains_key(&peer) {
                    self.feed(now, peer, true, data);
                } else if self.sessions.contains_key(&peer) {
                    self.feed(now, peer, false, data);
                } else {
                    self.stats.junk_dropped += 1;
                }
            }
            Kind::Protected => {
                let verified_hs = self.handshakes.get(&peer).is_some_and(|s| s.verified);
                if self.sessions.contains_key(&peer) {
                    let before = self.events.len();
                    self.feed(now, peer, false, data);
                    let produced = self.events.len() > before;
                    if !produced && verified_hs {
                        self.feed(now, peer, true, data);
                    }
                } else if self.handshakes.contains_key(&peer) {
                    self.feed(now, peer, true, data);
                } else {
                    self.stats.junk_dropped += 1;
                }
            }
        }
        self.update_gauges();
    }

    /// Encrypts `plaintext` (one CoAP message) for the session of `peer`.
    pub fn send(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        plaintext: &[u8],
    ) -> Result<(), DtlsError> {
        let Some(mut s) = self.sessions.remove(&peer) else {
            return Err(DtlsError::NoSession(peer));
        };
        let result = s
            .dtls
            .handle_timeout(now)
            .and_then(|()| s.dtls.send_application_data(plaintext));
        if let Err(e) = result {
            self.stats.session_errors += 1;
            self.events.push_back(DtlsEvent::Closed {
                peer,
                reason: CloseReason::Error,
            });
            self.update_gauges();
            return Err(DtlsError::SessionFailed {
                peer,
                reason: e.to_string(),
            });
        }
        self.stats.app_data_out += 1;
        self.after_drive(now, peer, s, false);
        if self.sessions.contains_key(&peer) {
            Ok(())
        } else {
            Err(DtlsError::SessionFailed {
                peer,
                reason: "closed while sending".into(),
            })
        }
    }

    /// Closes the session of `peer` (sends close_notify); no `Closed` event.
    pub fn close(&mut self, now: Instant, peer: SocketAddr) -> bool {
        let Some(mut s) = self.sessions.remove(&peer) else {
            return false;
        };
        self.say_goodbye(now, peer, &mut s);
        self.update_gauges();
        true
    }

    /// Runs every timer due at `now`: dimpl retransmissions, handshake and
    /// cookie timeouts, idle expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, id, peer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let in_hs = self.handshakes.get(&peer).is_some_and(|s| s.id == id);
            let in_sess = !in_hs && self.sessions.get(&peer).is_some_and(|s| s.id == id);
            if !in_hs && !in_sess {
                continue; // the session is gone
            }
            let taken = if in_hs {
                self.handshakes.remove(&peer)
            } else {
                self.sessions.remove(&peer)
            };
            let Some(mut s) = taken else { continue };
            if s.scheduled != Some(t) {
                // Stale entry: a newer, earlier one exists or was handled.
                self.put_back(now, peer, s, in_hs);
                continue;
            }
            s.scheduled = None;
            let hard = self.hard_deadline(&s);
            if hard <= now {
                if in_hs {
                    self.stats.handshake_timeouts += 1;
                    self.release_half_open(peer, &s);
                } else {
                    self.stats.idle_evictions += 1;
                    self.say_goodbye(now, peer, &mut s);
                    self.events.push_back(DtlsEvent::Closed {
                        peer,
                        reason: CloseReason::Idle,
                    });
                }
                continue;
            }
            if s.dimpl_timeout.is_some_and(|d| d <= now) {
                if let Err(e) = s.dtls.handle_timeout(now) {
                    self.fail(now, peer, s, in_hs, Fatal::Dtls(e));
                    continue;
                }
                self.after_drive(now, peer, s, in_hs);
            } else {
                self.put_back(now, peer, s, in_hs);
            }
        }
        self.update_gauges();
    }

    /// A ClientHello from `peer`, which has no handshake in progress: a
    /// HelloVerifyRequest without any state unless it returns a valid cookie
    /// (`hello_verify.rs`), then a handshake if the caps allow.
    fn client_hello(&mut self, now: Instant, peer: SocketAddr, data: &[u8]) {
        if self.sessions.len() >= self.settings.max_sessions && !self.sessions.contains_key(&peer) {
            self.stats.session_table_full += 1;
            return;
        }
        match hello_verify::judge(&mut self.cookies, now, peer, data) {
            Verdict::Malformed => self.stats.hellos_malformed += 1,
            Verdict::Answer { hvr, invalid } => {
                if invalid {
                    self.stats.hello_verify_invalid_cookie += 1;
                } else {
                    self.stats.hello_verify_no_cookie += 1;
                }
                // Never more bytes than the ClientHello (it is smaller).
                if hvr.len() > data.len() {
                    self.stats.amplification_drops += 1;
                    return;
                }
                self.stats.datagrams_out += 1;
                self.transmits.push_back((peer, hvr));
            }
            Verdict::Admit { secret, record_seq } => {
                if self.admit(now, peer, secret, record_seq) {
                    self.feed(now, peer, true, data);
                }
            }
        }
    }

    /// Whether a handshake may start for `peer`, whose ClientHello returned a
    /// valid cookie made under `secret` in a record numbered `record_seq`;
    /// creates it if so. Every handshake is past the cookie exchange and
    /// counts toward `max_verified_half_open` (within `max_half_open`) and
    /// `max_half_open_per_addr`; at a cap the ClientHello is dropped before
    /// anything past the cookie is sent (its client resends it and gets in
    /// once there is room). A spoofed-source flood never gets here.
    fn admit(&mut self, now: Instant, peer: SocketAddr, secret: [u8; 32], record_seq: u64) -> bool {
        let ip = peer.ip();
        let per_ip = self.half_open_per_ip.get(&ip).map_or(0, Vec::len);
        if per_ip >= self.settings.max_half_open_per_addr.max(1) {
            self.stats.half_open_per_addr_drops += 1;
            return false;
        }
        let cap = self
            .settings
            .max_verified_half_open
            .min(self.settings.max_half_open)
            .max(1);
        if self.verified >= cap {
            self.stats.verified_full += 1;
            return false;
        }
        let mut dtls = match (&self.settings.psk, &self.settings.cert) {
            (Some(_), None) => Dtls::new_12_psk(Arc::clone(&self.config), now),
            (None, Some(c)) => {
                Dtls::new_12(Arc::clone(&self.config), c.dtls_certificate().clone(), now)
            }
            (Some(_), Some(c)) => {
                Dtls::new_auto(Arc::clone(&self.config), c.dtls_certificate().clone(), now)
            }
            (None, None) => return false,
        };
        if self.cids.enabled() {
            dtls.set_connection_id(&self.cids.issue(self.next_id + 1));
        }
        // The instance checks the cookie again (under the same secret) and
        // takes the ClientHello's message_seq 1 as if it had sent the
        // HelloVerifyRequest itself; an auto-sensing one becomes a DTLS 1.2
        // server at it.
        if !dtls.set_cookie_secret(secret) || !dtls.expect_client_hello_with_cookie(record_seq) {
            self.stats.handshakes_failed += 1;
            return false;
        }
        // dimpl needs its clock set before the first packet.
        if dtls.handle_timeout(now).is_err() {
            self.stats.handshakes_failed += 1;
            return false;
        }
        self.next_id += 1;
        let id = self.next_id;
        let s = Session::new(id, dtls, now);
        self.handshakes.insert(peer, s);
        self.half_open_per_ip
            .entry(ip)
            .or_default()
            .push((peer, id));
        self.verified += 1;
        self.stats.handshakes_started += 1;
        true
    }

    /// A tls12_cid record (RFC 9146) from `peer`: it goes to the session that
    /// was given `cid`, wherever that session was. When it authenticates
    /// application data from a new address, the session moves there (RFC 9146
    /// §6: the newest authenticated record sets the peer's address) and the
    /// gateway hears [`DtlsEvent::Moved`] before that data. A replayed or
    /// forged record authenticates nothing and moves nothing.
    /// `false`: no session has `cid`.
    fn handle_cid_record(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        cid: &[u8],
        data: &[u8],
    ) -> bool {
        let sessions = &self.sessions;
        let home = self
            .cids
            .lookup(cid)
            .filter(|(a, id)| sessions.get(a).is_some_and(|s| s.id == *id));
        let Some((home, id)) = home else {
            return false;
        };
        if home == peer {
            self.feed(now, peer, false, data);
            return true;
        }
        // From a new address only a datagram that is one whole record goes to
        // dimpl: any error dimpl reports ends the session, and a record from
        // elsewhere must not be able to end it.
        let header = 11 + cid.len() + 2;
        let length = data
            .get(header - 2..header)
            .map_or(0, |l| u16::from_be_bytes([l[0], l[1]]) as usize);
        if data.len() != header + length {
            self.stats.cid_unauthenticated += 1;
            return true;
        }
        let before = self.events.len();
        self.feed(now, home, false, data);
        let authenticated = self
            .events
            .iter()
            .skip(before)
            .any(|e| matches!(e, DtlsEvent::Data { peer: p, .. } if *p == home));
        let still_there = self.sessions.get(&home).is_some_and(|s| s.id == id);
        if !authenticated || !still_there {
            if still_there {
                self.stats.cid_unauthenticated += 1;
            }
            return true;
        }
        let Some(mut s) = self.sessions.remove(&home) else {
            return true;
        };
        let produced: Vec<DtlsEvent> = self.events.drain(before..).collect();
        if self.sessions.remove(&peer).is_some() {
            // Another session held the new address (the NAT gave it away).
            self.stats.replaced += 1;
            self.events.push_back(DtlsEvent::Closed {
                peer,
                reason: CloseReason::Replaced,
            });
        }
        self.events.push_back(DtlsEvent::Moved {
            from: home,
            to: peer,
        });
        for mut e in produced {
            if let DtlsEvent::Data { peer: p, .. } = &mut e {
                if *p == home {
                    *p = peer;
                }
            }
            self.events.push_back(e);
        }
        self.stats.cid_moves += 1;
        self.cids.insert(cid, peer, s.id);
        s.scheduled = None;
        self.put_back(now, peer, s, false);
        true
    }

    /// Feeds `data` to the handshake (`hs`) or session of `peer`.
    fn feed(&mut self, now: Instant, peer: SocketAddr, hs: bool, data: &[u8]) {
        let taken = if hs {
            self.handshakes.remove(&peer)
        } else {
            self.sessions.remove(&peer)
        };
        let Some(mut s) = taken else { return };
        if !s.verified {
            s.rx_bytes = s.rx_bytes.saturating_add(data.len());
        }
        if let Some(r) = &self.resolver {
            r.take();
        }
        let result = s
            .dtls
            .handle_timeout(now)
            .and_then(|()| s.dtls.handle_packet(data));
        if let Some(id) = self.resolver.as_ref().and_then(|r| r.take()) {
            s.psk_identity = Some(id);
        }
        match result {
            Ok(()) => self.after_drive(now, peer, s, hs),
            Err(e) => self.fail(now, peer, s, hs, Fatal::Dtls(e)),
        }
    }

    /// Polls the session, handles what it produced and files it back.
    fn after_drive(&mut self, now: Instant, peer: SocketAddr, mut s: Session, hs: bool) {
        self.outputs.clear();
        let result = {
            let mut sink = Sink {
                transmits: &mut self.transmits,
                outputs: &mut self.outputs,
                stats: &mut self.stats,
                buf: &mut self.buf,
                cert: self.settings.cert.as_deref(),
            };
            s.drive(peer, &mut sink)
        };
        if let Some(id) = self.resolver.as_ref().and_then(|r| r.take()) {
            s.psk_identity = Some(id);
        }
        if hs && s.psk_identity.is_none() && s.dtls.is_resumed() {
            // A resumed session: the identity of the handshake that made it.
            s.psk_identity = s.dtls.peer_psk_identity().map(<[u8]>::to_vec);
        }
        let outputs = std::mem::take(&mut self.outputs);
        let mut hs = hs;
        let mut alive = true;
        for out in &outputs {
            match out {
                SessionOutput::Connected if hs => {
                    let Some(identity) = s.identity(self.settings.cert.as_deref()) else {
                        self.release_half_open(peer, &s);
                        self.stats.handshakes_failed += 1;
                        alive = false;
                        break;
                    };
                    self.release_half_open(peer, &s);
                    if self.sessions.remove(&peer).is_some() {
                        self.stats.replaced += 1;
                        self.events.push_back(DtlsEvent::Closed {
                            peer,
                            reason: CloseReason::Replaced,
                        });
                    } else if self.sessions.len() >= self.settings.max_sessions {
                        self.stats.session_table_full += 1;
                        alive = false;
                        break;
                    }
                    self.stats.handshakes_completed += 1;
                    if s.dtls.is_resumed() {
                        self.stats.resumed += 1;
                    }
                    if let Some(cid) = s.dtls.connection_id() {
                        self.stats.cid_sessions += 1;
                        self.cids.insert(cid, peer, s.id);
                    }
                    hs = false;
                    s.last_rx = now;
                    self.events
                        .push_back(DtlsEvent::Connected { peer, identity });
                }
                SessionOutput::Connected => {}
                SessionOutput::Data(d) => {
                    if hs {
                        continue; // dimpl releases data only once connected
                    }
                    // Only authenticated traffic keeps a session alive.
                    s.last_rx = now;
                    self.events.push_back(DtlsEvent::Data {
                        peer,
                        plaintext: d.clone(),
                    });
                }
                SessionOutput::CloseNotify => {
                    if hs {
                        self.release_half_open(peer, &s);
                        self.stats.handshakes_failed += 1;
                    } else {
                        self.stats.peer_closed += 1;
                        self.events.push_back(DtlsEvent::Closed {
                            peer,
                            reason: CloseReason::Alert,
                        });
                    }
                    alive = false;
                    break;
                }
            }
        }
        self.outputs = outputs;
        if !alive {
            return;
        }
        if let Err(f) = result {
            self.fail(now, peer, s, hs, f);
            return;
        }
        self.put_back(now, peer, s, hs);
    }

    /// Drops a session after a fatal error.
    fn fail(&mut self, now: Instant, peer: SocketAddr, s: Session, hs: bool, why: Fatal) {
        if let Fatal::Dtls(dimpl::Error::CryptoError(_)) = &why {
            self.stats.decrypt_errors += 1;
        }
        if hs {
            let (identity, cn) = (s.psk_identity.as_deref(), s.cert_cn.as_deref());
            self.failures
                .handshake_failed(now, peer, identity, cn, &why);
        } else {
            tracing::debug!(%peer, error = ?why, "DTLS session dropped");
        }
        if hs {
            self.stats.handshakes_failed += 1;
            self.release_half_open(peer, &s);
        } else {
            self.stats.session_errors += 1;
            if s.connected {
                self.events.push_back(DtlsEvent::Closed {
                    peer,
                    reason: CloseReason::Error,
                });
            }
        }
    }

    /// Sends close_notify on a session being dropped.
    fn say_goodbye(&mut self, now: Instant, peer: SocketAddr, s: &mut Session) {
        if s.dtls.handle_timeout(now).is_err() || s.dtls.close().is_err() {
            return;
        }
        let mut outputs = Vec::new();
        let mut sink = Sink {
            transmits: &mut self.transmits,
            outputs: &mut outputs,
            stats: &mut self.stats,
            buf: &mut self.buf,
            cert: None,
        };
        let _ = s.drive(peer, &mut sink);
    }

    /// Forgets the half-open accounting of handshake `s` (leaving the table).
    fn release_half_open(&mut self, peer: SocketAddr, s: &Session) {
        let ip = peer.ip();
        if let Some(v) = self.half_open_per_ip.get_mut(&ip) {
            v.retain(|e| e.1 != s.id);
            if v.is_empty() {
                self.half_open_per_ip.remove(&ip);
            }
        }
        self.verified = self.verified.saturating_sub(1);
    }

    /// When the session is dropped regardless of dimpl's timers.
    fn hard_deadline(&self, s: &Session) -> Instant {
        if s.connected {
            s.last_rx + self.settings.idle_timeout
        } else if s.verified {
            s.created + self.settings.handshake_timeout
        } else {
            s.created + self.cookie_timeout.min(self.settings.handshake_timeout)
        }
    }

    /// Files `s` back into its table and makes sure a timer entry covers its
    /// next deadline.
    fn put_back(&mut self, now: Instant, peer: SocketAddr, mut s: Session, hs: bool) {
        let mut deadline = self.hard_deadline(&s);
        if let Some(d) = s.dimpl_timeout {
            deadline = deadline.min(d);
        }
        // Always in the future, so that handle_timeout makes progress.
        let deadline = deadline.max(now + Duration::from_millis(1));
        let earlier = match s.scheduled {
            Some(t) => deadline < t,
            None => true,
        };
        if earlier {
            s.scheduled = Some(deadline);
            self.timers.push(Reverse((deadline, s.id, peer)));
        }
        if hs {
            self.handshakes.insert(peer, s);
        } else {
            self.sessions.insert(peer, s);
        }
        // Bound the heap: stale entries pile up only if deadlines keep moving
        // earlier; rebuild when it is far larger than the live set.
        let live = self.handshakes.len() + self.sessions.len();
        if self.timers.len() > 4 * live + 1024 {
            self.rebuild_timers();
        }
    }

    fn rebuild_timers(&mut self) {
        self.timers.clear();
        for (peer, s) in self.handshakes.iter().chain(self.sessions.iter()) {
            if let Some(t) = s.scheduled {
                self.timers.push(Reverse((t, s.id, *peer)));
            }
        }
    }

    fn update_gauges(&mut self) {
        let sessions = &self.sessions;
        self.cids.prune(sessions.len(), |a, id| {
            sessions.get(&a).is_some_and(|s| s.id == id)
        });
        self.stats.sessions = self.sessions.len() as u64;
        self.stats.half_open = self.handshakes.len() as u64;
        if let Some(c) = &self.session_cache {
            let [unknown, expired, revoked] = c.refused();
            self.stats.resume_refused_unknown = unknown;
            self.stats.resume_refused_expired = expired;
            self.stats.resume_refused_revoked = revoked;
            self.stats.session_cache_entries = c.cache.len() as u64;
        }
    }

    /// Handshakes in progress past the cookie exchange.
    pub fn verified_half_open_count(&self) -> usize {
        self.verified
    }
}
