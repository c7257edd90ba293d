//! The DTLS server driven without sockets: dimpl clients and the server
//! exchange datagrams through in-memory queues on a virtual clock.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dtls_client::{Client, KEY};
use common::pki::make_pki;
use dimpl::DtlsCertificate;
use lwm2m_gateway::dtls::{
    CertConfig, CloseReason, DtlsEvent, DtlsServer, DtlsSettings, PeerIdentity, PskStore, PskTable,
};

fn psk_store() -> Arc<PskStore> {
    let text = format!("dev-1:{KEY}\ndev-2:{KEY}\n");
    let table = PskTable::parse(&text, Path::new("psk.txt")).unwrap();
    Arc::new(PskStore::with_table("psk.txt", table))
}

fn settings() -> DtlsSettings {
    DtlsSettings {
        psk: Some(psk_store()),
        cert: None,
        max_half_open: 1024,
        max_verified_half_open: 512,
        max_half_open_per_addr: 4,
        max_sessions: 10_000,
        handshake_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(300),
        connection_id_len: 8,
        session_cache: None,
    }
}

fn addr(i: u32) -> SocketAddr {
    let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
    SocketAddr::from((ip, 40_000))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Dir {
    ToServer,
    ToClient,
}

/// The server, a virtual clock and everything the server said.
struct World {
    server: DtlsServer,
    now: Instant,
    events: Vec<DtlsEvent>,
    sent: [usize; 2],
    /// Datagrams the server sent to addresses that have no client here.
    stray: Vec<(SocketAddr, Vec<u8>)>,
}

impl World {
    fn new(settings: DtlsSettings) -> Self {
        World {
            server: DtlsServer::new(settings).unwrap(),
            now: Instant::now(),
            events: Vec::new(),
            sent: [0, 0],
            stray: Vec::new(),
        }
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.server.poll_event() {
            self.events.push(e);
        }
    }

    /// Moves datagrams both ways (dropping those `drop` selects by direction
    /// and index) and advances the clock to the next timer when idle, until
    /// `done` or `limit` of virtual time.
    fn run(
        &mut self,
        client: &mut Client,
        limit: Duration,
        drop: &mut dyn FnMut(Dir, usize) -> bool,
        done: &mut dyn FnMut(&World, &Client) -> bool,
    ) -> bool {
        let end = self.now + limit;
        loop {
            self.drain_events();
            if done(self, client) {
                return true;
            }
            let mut moved = false;
            while let Some(p) = client.out.pop_front() {
                moved = true;
                let i = self.sent[0];
                self.sent[0] += 1;
                if !drop(Dir::ToServer, i) {
                    self.server.handle_datagram(self.now, client.addr, &p);
                }
            }
            while let Some((to, p)) = self.server.poll_transmit() {
                moved = true;
                if to != client.addr {
                    self.stray.push((to, p));
                    continue;
                }
                let i = self.sent[1];
                self.sent[1] += 1;
                if !drop(Dir::ToClient, i) {
                    client.receive(self.now, &p);
                }
            }
            if moved {
                continue;
            }
            let next = [client.timeout, self.server.next_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next else { return false };
            if next > end {
                return false;
            }
            self.now = self.now.max(next);
            client.tick(self.now);
            self.server.handle_timeout(self.now);
        }
    }

    fn connect(&mut self, client: &mut Client) -> bool {
        self.run(
            client,
            Duration::from_secs(60),
            &mut |_, _| false,
            &mut |w, c| c.connected && w.server.has_session(c.addr),
        )
    }

    /// Runs until nothing is in flight (timers not advanced beyond `limit`).
    fn settle(&mut self, client: &mut Client, limit: Duration) {
        self.run(client, limit, &mut |_, _| false, &mut |_, _| false);
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.drain_events();
    }

    fn connected_events(&self, peer: SocketAddr) -> Vec<&PeerIdentity> {
        self.events
            .iter()
            .filter_map(|e| match e {
                DtlsEvent::Connected { peer: p, identity } if *p == peer => Some(identity),
                _ => None,
            })
            .collect()
    }

    fn data_events(&self, peer: SocketAddr) -> Vec<&[u8]> {
        self.events
            .iter()
            .filter_map(|e| match e {
                DtlsEvent::Data { peer: p, plaintext } if *p == peer => Some(&plaintext[..]),
                _ => None,
            })
            .collect()
    }
}

/// Handshake, then a CoAP-sized message each way.
fn exchange(w: &mut World, c: &mut Client) {
    c.send(b"from device");
    let n = c.received.len();
    w.run(c, Duration::from_secs(1), &mut |_, _| false, &mut |w, c| {
        w.data_events(c.addr).contains(&&b"from device"[..])
    });
    assert!(w.data_events(c.addr).contains(&&b"from device"[..]));
    w.server.send(w.now, c.addr, b"from gateway").unwrap();
    w.run(c, Duration::from_secs(1), &mut |_, _| false, &mut |_, c| {
        c.received.len() > n
    });
    assert_eq!(
        c.received.last().map(|v| &v[..]),
        Some(&b"from gateway"[..])
    );
}

#[test]
fn psk_handshake_and_data_both_ways() {
    let mut w = World::new(settings());
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    assert!(w.connect(&mut c));
    assert_eq!(
        w.connected_events(c.addr),
        vec![&PeerIdentity::Psk("dev-1".into())]
    );
    exchange(&mut w, &mut c);
    let s = w.server.stats();
    assert_eq!(s.handshakes_started, 1);
    assert_eq!(s.handshakes_completed, 1);
    assert_eq!(s.handshakes_verified, 1);
    assert_eq!((s.sessions, s.half_open), (1, 0));
    assert!(w
        .server
        .settings()
        .psk
        .as_ref()
        .unwrap()
        .may_register("dev-1", "dev-1"));
}

#[test]
fn lost_handshake_datagrams_are_retransmitted() {
    // Count the datagrams of a clean handshake each way.
    let mut w = World::new(settings());
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    assert!(w.connect(&mut c));
    w.settle(&mut c, Duration::from_millis(1));
    let [to_server, to_client] = w.sent;
    assert!(to_server >= 3 && to_client >= 3, "{:?}", w.sent);
    for dir in [Dir::ToServer, Dir::ToClient] {
        let n = if dir == Dir::ToServer {
            to_server
        } else {
            to_client
        };
        for k in 0..n {
            let mut w = World::new(settings());
            let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
            let ok = w.run(
                &mut c,
                Duration::from_secs(60),
                &mut |d, i| d == dir && i == k,
                &mut |w, c| c.connected && w.server.has_session(c.addr),
            );
            assert!(ok, "dropping datagram {k} {dir:?}: no session");
            exchange(&mut w, &mut c);
        }
    }
}

#[test]
fn wrong_key_fails_without_connected() {
    let mut w = World::new(settings());
    let mut c = Client::psk("dev-1", "ffffffffffffffffffffffffffffffff", addr(1), w.now);
    assert!(!w.connect(&mut c));
    assert!(w.connected_events(c.addr).is_empty());
    assert!(!w.server.has_session(c.addr));
    let s = w.server.stats();
    assert!(s.handshakes_failed >= 1, "{s:?}");
    assert!(s.decrypt_errors >= 1, "{s:?}");
    assert_eq!(s.half_open, 0);
}

#[test]
fn unknown_identity_fails() {
    let mut w = World::new(settings());
    let mut c = Client::psk("nobody", KEY, addr(1), w.now);
    assert!(!w.connect(&mut c));
    assert!(w.connected_events(c.addr).is_empty());
    assert!(w.server.stats().handshakes_failed >= 1);
    assert_eq!(w.server.half_open_count(), 0);
}

/// The first datagram of a fresh client: a ClientHello without cookie.
fn client_hello(now: Instant) -> Vec<u8> {
    let mut c = Client::psk("dev-1", KEY, addr(0), now);
    c.out.pop_front().unwrap()
}

#[test]
fn a_spoofed_flood_leaves_no_state_and_devices_still_connect() {
    let mut w = World::new(settings());
    let ch = client_hello(w.now);
    let n = 10_000u32;
    for i in 0..n {
        w.server.handle_datagram(w.now, addr(1000 + i), &ch);
        assert_eq!(w.server.half_open_count(), 0);
    }
    // Every ClientHello got a HelloVerifyRequest, no instance.
    let s = w.server.stats().clone();
    assert_eq!(s.hello_verify_no_cookie, u64::from(n));
    assert_eq!(s.handshakes_started, 0);
    assert_eq!(w.server.next_timeout(), None, "nothing to time out");
    // Never more bytes out than in per address, one datagram each.
    let mut out = 0;
    while let Some((_, p)) = w.server.poll_transmit() {
        assert!(p.len() < ch.len(), "{} >= {}", p.len(), ch.len());
        out += 1;
    }
    assert_eq!(out, n);
    // Nothing is ever retransmitted to them.
    w.advance(Duration::from_secs(5));
    assert!(w.server.poll_transmit().is_none());
    // A real device connects meanwhile.
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    assert!(w.connect(&mut c));
    exchange(&mut w, &mut c);
    assert_eq!(w.server.half_open_count(), 0);
    assert_eq!(w.server.stats().handshakes_started, 1);

    // Many ports of one IP: no state either.
    for port in 0..10u16 {
        let peer = SocketAddr::from(([192, 0, 2, 1], 1000 + port));
        w.server.handle_datagram(w.now, peer, &ch);
    }
    assert_eq!(w.server.half_open_count(), 0);
    assert_eq!(w.server.stats().half_open_per_addr_drops, 0);
}

/// A cookieless ClientHello gets a HelloVerifyRequest and leaves nothing; the
/// ClientHello returning its cookie creates the handshake, which completes.
#[test]
fn the_cookie_exchange_is_stateless() {
    let mut w = World::new(settings());
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    let hello = c.out.pop_front().unwrap();
    w.server.handle_datagram(w.now, c.addr, &hello);
    assert_eq!(w.server.half_open_count(), 0);
    assert_eq!(w.server.next_timeout(), None);
    let (to, hvr) = w.server.poll_transmit().unwrap();
    assert_eq!(to, c.addr);
    assert!(w.server.poll_transmit().is_none());
    // A HelloVerifyRequest (type 3) in the ClientHello's record sequence
    // number, echoing its message_seq.
    assert_eq!((hvr[0], hvr[13]), (22, 3));
    assert_eq!(hvr[5..11], hello[5..11]);
    assert_eq!(hvr[17..19], hello[17..19]);
    // The same ClientHello again (a retransmission): the same answer, still
    // nothing kept.
    w.server.handle_datagram(w.now, c.addr, &hello);
    assert_eq!(w.server.poll_transmit().unwrap().1, hvr);
    assert_eq!(w.server.half_open_count(), 0);
    c.receive(w.now, &hvr);
    let with_cookie = c.out.pop_front().unwrap();
    w.server.handle_datagram(w.now, c.addr, &with_cookie);
    assert_eq!(w.server.half_open_count(), 1);
    assert_eq!(w.server.verified_half_open_count(), 1);
    // The server's first record past the cookie is numbered after the
    // HelloVerifyRequest (from the ClientHello with the cookie on).
    let (_, flight) = w.server.poll_transmit().unwrap();
    assert_eq!(flight[13], 2, "ServerHello");
    assert_eq!(flight[5..11], with_cookie[5..11]);
    assert!(flight[5..11] > hvr[5..11]);
    c.receive(w.now, &flight);
    while let Some((_, p)) = w.server.poll_transmit() {
        c.receive(w.now, &p);
    }
    assert!(w.connect(&mut c));
    exchange(&mut w, &mut c);
    let s = w.server.stats();
    assert_eq!(
        (s.hello_verify_no_cookie, s.hello_verify_invalid_cookie),
        (2, 0)
    );
    assert_eq!((s.handshakes_started, s.handshakes_completed), (1, 1));
    assert_eq!(w.server.half_open_count(), 0);
}

/// A cookie made under the previous key (one rotation, a minute) is accepted;
/// one two rotations old gets a new HelloVerifyRequest.
#[test]
fn a_cookie_lives_one_to_two_key_rotations() {
    for (age, accepted) in [(61, true), (121, false)] {
        let mut w = World::new(settings());
        let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
        let hello = c.out.pop_front().unwrap();
        w.server.handle_datagram(w.now, c.addr, &hello);
        let (_, hvr) = w.server.poll_transmit().unwrap();
        c.receive(w.now, &hvr);
        let with_cookie = c.out.pop_front().unwrap();
        // Keys rotate as ClientHellos arrive: one from another device each
        // minute or so.
        for step in [age / 2, age] {
            let now = w.now + Duration::from_secs(step);
            w.now = now;
            w.server.handle_datagram(now, addr(2), &hello);
            while w.server.poll_transmit().is_some() {}
        }
        w.server.handle_datagram(w.now, c.addr, &with_cookie);
        let s = w.server.stats().clone();
        let answer = w.server.poll_transmit().unwrap().1;
        if accepted {
            assert_eq!(
                (s.handshakes_started, s.handshakes_verified),
                (1, 1),
                "{s:?}"
            );
            assert_eq!(answer[13], 2, "ServerHello");
            assert_eq!(w.server.half_open_count(), 1);
        } else {
            assert_eq!(s.handshakes_started, 0, "{s:?}");
            assert_eq!(s.hello_verify_invalid_cookie, 1);
            assert_eq!(answer[13], 3, "HelloVerifyRequest");
            assert_eq!(w.server.half_open_count(), 0);
        }
    }
}

/// Truncated and garbled ClientHellos from an address without a handshake are
/// counted and dropped; none panics or leaves state.
#[test]
fn malformed_client_hellos_are_counted_and_dropped() {
    let mut w = World::new(settings());
    let hello = client_hello(w.now);
    let mut sent = 0u64;
    // Cut anywhere inside the random, session ID and cookie (the record
    // length then lies), or with the length fixed to the cut.
    for n in 14..13 + 12 + 2 + 32 + 2 {
        for fix in [false, true] {
            let mut d = hello[..n].to_vec();
            if fix {
                d[11..13].copy_from_slice(&((n - 13) as u16).to_be_bytes());
            }
            w.server.handle_datagram(w.now, addr(100), &d);
            sent += 1;
        }
    }
    let s = w.server.stats();
    assert_eq!(s.hellos_malformed, sent, "{s:?}");
    assert_eq!(s.hello_verify_no_cookie, 0);
    // Random bytes after a ClientHello's first byte: never a panic, never an
    // instance.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for _ in 0..20_000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let mut d = hello.clone();
        for k in 0..4 {
            let at = (seed.rotate_left(16 * k) as usize) % d.len();
            d[at] = (seed >> (8 * k)) as u8;
        }
        d.truncate((seed >> 40) as usize % (d.len() + 1));
        w.server.handle_datagram(w.now, addr(101), &d);
    }
    assert_eq!(w.server.half_open_count(), 0);
    assert_eq!(w.server.stats().handshakes_started, 0);
    assert!(w.server.stats().hellos_malformed > sent);
}

/// Datagrams in flight with a one-way delay.
struct Link {
    one_way: Duration,
    in_flight: Vec<(Instant, Dir, SocketAddr, Vec<u8>)>,
}

impl Link {
    fn send(&mut self, now: Instant, dir: Dir, peer: SocketAddr, p: Vec<u8>) {
        self.in_flight.push((now + self.one_way, dir, peer, p));
    }

    fn due(&mut self, now: Instant) -> Vec<(Dir, SocketAddr, Vec<u8>)> {
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|d| d.0 <= now);
        self.in_flight = later;
        due.into_iter().map(|(_, d, a, p)| (d, a, p)).collect()
    }
}

/// Runs `clients` through a link with `rtt` while `per_ms` spoofed ClientHellos
/// (each from a new address that never answers) arrive every millisecond, for
/// `duration` of virtual time or until `done`. Returns the number of spoofed
/// ClientHellos sent.
fn flood_run(
    w: &mut World,
    clients: &mut [&mut Client],
    rtt: Duration,
    per_ms: u32,
    duration: Duration,
    done: &mut dyn FnMut(&World, &[&mut Client]) -> bool,
) -> u32 {
    let ch = client_hello(w.now);
    let mut link = Link {
        one_way: rtt / 2,
        in_flight: Vec::new(),
    };
    let end = w.now + duration;
    let mut spoofed = 0u32;
    while w.now < end {
        for _ in 0..per_ms {
            spoofed += 1;
            w.server
                .handle_datagram(w.now, addr(0x0100_0000 + spoofed), &ch);
        }
        for (dir, peer, p) in link.due(w.now) {
            match dir {
                Dir::ToServer => w.server.handle_datagram(w.now, peer, &p),
                Dir::ToClient => {
                    if let Some(c) = clients.iter_mut().find(|c| c.addr == peer) {
                        c.receive(w.now, &p);
                    }
                }
            }
        }
        for c in clients.iter_mut() {
            c.tick(w.now);
            while let Some(p) = c.out.pop_front() {
                link.send(w.now, Dir::ToServer, c.addr, p);
            }
        }
        w.server.handle_timeout(w.now);
        while let Some((to, p)) = w.server.poll_transmit() {
            if clients.iter().any(|c| c.addr == to) {
                link.send(w.now, Dir::ToClient, to, p);
            }
        }
        w.drain_events();
        assert!(w.server.half_open_count() <= w.server.settings().max_half_open);
        if done(w, clients) {
            break;
        }
        w.now += Duration::from_millis(1);
    }
    spoofed
}

#[test]
fn a_device_completes_its_handshake_during_a_sustained_spoofed_flood() {
    // 2,000 spoofed ClientHellos/s, each answered without state: the
    // handshake table holds only the device's handshake.
    let mut st = settings();
    st.max_half_open = 256;
    st.max_verified_half_open = 128;
    let mut w = World::new(st);
    // A device connected before the flood.
    let mut old = Client::psk("dev-2", KEY, addr(2), w.now);
    assert!(w.connect(&mut old));
    let mut dev = Client::psk("dev-1", KEY, addr(1), w.now);
    let rtt = Duration::from_millis(100);
    let spoofed = flood_run(
        &mut w,
        &mut [&mut dev, &mut old],
        rtt,
        2,
        Duration::from_secs(10),
        &mut |w, c| c[0].connected && w.server.has_session(c[0].addr),
    );
    assert!(dev.connected, "{:?}", w.server.stats());
    assert!(w.server.has_session(dev.addr));
    assert!(
        spoofed > 500,
        "the flood ran during the handshake ({spoofed})"
    );
    let s = w.server.stats();
    assert!(s.hello_verify_no_cookie >= u64::from(spoofed), "{s:?}");
    assert_eq!(s.handshakes_started, 2, "{s:?}");
    // Both sessions carry data while the flood goes on.
    dev.send(b"new device");
    old.send(b"old device");
    w.server.send(w.now, dev.addr, b"to new").unwrap();
    w.server.send(w.now, old.addr, b"to old").unwrap();
    let (nd, no) = (dev.received.len(), old.received.len());
    flood_run(
        &mut w,
        &mut [&mut dev, &mut old],
        rtt,
        2,
        Duration::from_secs(2),
        &mut |_, c| c[0].received.len() > nd && c[1].received.len() > no,
    );
    assert_eq!(dev.received.last().unwrap(), b"to new");
    assert_eq!(old.received.last().unwrap(), b"to old");
    assert!(w.data_events(dev.addr).contains(&&b"new device"[..]));
    assert!(w.data_events(old.addr).contains(&&b"old device"[..]));
    assert!(w.server.has_session(old.addr));
}

#[test]
fn a_flood_faster_than_a_round_trip_does_not_delay_a_device() {
    // 10,000 spoofed ClientHellos/s and a device 100 ms away: nothing of the
    // flood is kept, so nothing of the device's is displaced.
    let mut st = settings();
    st.max_half_open = 256;
    st.max_verified_half_open = 128;
    let mut w = World::new(st);
    let mut dev = Client::psk("dev-1", KEY, addr(1), w.now);
    let rtt = Duration::from_millis(100);
    let start = w.now;
    let spoofed = flood_run(
        &mut w,
        &mut [&mut dev],
        rtt,
        10,
        Duration::from_secs(3),
        &mut |w, c| c[0].connected && w.server.has_session(c[0].addr),
    );
    assert!(dev.connected, "{:?}", w.server.stats());
    assert!(w.server.has_session(dev.addr));
    let s = w.server.stats();
    assert_eq!(
        (s.handshakes_started, s.handshakes_verified),
        (1, 1),
        "{s:?}"
    );
    // The cookie exchange and the PSK handshake: three round trips, no retry.
    assert!(
        w.now - start <= 3 * rtt + Duration::from_millis(10),
        "{:?}",
        w.now - start
    );
    assert!(spoofed > 1000, "{spoofed}");
    assert_eq!(w.server.half_open_count(), 0);
}

/// A cookie is bound to the address it was sent to: the same ClientHello with
/// its cookie from another address (or port), or with a forged cookie, gets a
/// new HelloVerifyRequest and leaves nothing.
#[test]
fn a_cookie_is_accepted_only_from_its_address() {
    let mut w = World::new(settings());
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    // ClientHello → HelloVerifyRequest → ClientHello with the cookie.
    let hello = c.out.pop_front().unwrap();
    w.server.handle_datagram(w.now, c.addr, &hello);
    let (_, hvr) = w.server.poll_transmit().unwrap();
    c.receive(w.now, &hvr);
    let with_cookie = c.out.pop_front().unwrap();
    // The cookie is the last 32 bytes before the cipher suites: forge one.
    let cookie_at = 13 + 12 + 2 + 32 + 1 + usize::from(with_cookie[13 + 12 + 34]) + 1;
    assert_eq!(with_cookie[cookie_at - 1], 32);
    let mut forged = with_cookie.clone();
    forged[cookie_at + 7] ^= 0x40;
    // From another port of the same IP and from another IP: not verified.
    let other_port = SocketAddr::from((c.addr.ip(), c.addr.port() + 1));
    let tries = [
        (other_port, &with_cookie),
        (addr(2), &with_cookie),
        (c.addr, &forged),
    ];
    for (k, (from, d)) in tries.into_iter().enumerate() {
        w.server.handle_datagram(w.now, from, d);
        let (to, answer) = w.server.poll_transmit().unwrap();
        assert_eq!(
            (to, answer[13]),
            (from, 3),
            "a HelloVerifyRequest to {from}"
        );
        assert_eq!(w.server.half_open_count(), 0, "from {from}");
        assert_eq!(w.server.stats().hello_verify_invalid_cookie, k as u64 + 1);
    }
    assert_eq!(w.server.stats().handshakes_started, 0);
    // From its own address with the real cookie: verified.
    w.server.handle_datagram(w.now, c.addr, &with_cookie);
    assert_eq!(w.server.stats().handshakes_verified, 1);
    assert_eq!(w.server.half_open_count(), 1);
}

#[test]
fn handshakes_past_the_cookie_have_their_own_cap() {
    let mut st = settings();
    st.max_half_open = 8;
    st.max_verified_half_open = 2;
    let mut w = World::new(st);
    // Three devices pass the cookie exchange and then stall.
    let mut stalled = Vec::new();
    for i in 0..3 {
        let mut c = Client::psk("dev-1", KEY, addr(10 + i), w.now);
        w.run(
            &mut c,
            Duration::from_secs(1),
            &mut |d, k| d == Dir::ToServer && k >= 2,
            &mut |_, _| false,
        );
        w.sent = [0, 0];
        stalled.push(c);
    }
    let s = w.server.stats();
    assert_eq!(s.handshakes_verified, 2);
    assert_eq!(s.verified_full, 1);
    assert_eq!(w.server.verified_half_open_count(), 2);
    // A flood of ClientHellos never displaces them, nor is kept.
    let ch = client_hello(w.now);
    for i in 0..1000 {
        w.server.handle_datagram(w.now, addr(5000 + i), &ch);
    }
    assert_eq!(w.server.verified_half_open_count(), 2);
    assert_eq!(w.server.half_open_count(), 2);
    assert_eq!(w.server.stats().hello_verify_no_cookie, 3 + 1000);
}

/// At most `max_half_open_per_addr` handshakes per source IP; more ClientHellos
/// with valid cookies from other ports of that IP are dropped, counted.
#[test]
fn handshakes_per_source_ip_are_capped() {
    let mut w = World::new(settings());
    let mut clients = Vec::new();
    for port in 0..6u16 {
        let at = SocketAddr::from(([192, 0, 2, 1], 1000 + port));
        let mut c = Client::psk("dev-1", KEY, at, w.now);
        let hello = c.out.pop_front().unwrap();
        w.server.handle_datagram(w.now, at, &hello);
        let (_, hvr) = w.server.poll_transmit().unwrap();
        c.receive(w.now, &hvr);
        let with_cookie = c.out.pop_front().unwrap();
        w.server.handle_datagram(w.now, at, &with_cookie);
        while w.server.poll_transmit().is_some() {}
        clients.push(c);
    }
    assert_eq!(w.server.half_open_count(), 4);
    assert_eq!(w.server.stats().half_open_per_addr_drops, 2);
}

/// A handshake refused at the verified cap sends nothing past the cookie (a
/// client given the server's flight would answer a handshake that no longer
/// exists): its client resends the ClientHello with the cookie and gets in once
/// there is room.
#[test]
fn a_handshake_refused_at_the_verified_cap_gets_in_when_room_frees() {
    let mut st = settings();
    st.max_verified_half_open = 1;
    st.handshake_timeout = Duration::from_secs(5);
    let mut w = World::new(st);
    // A passes the cookie exchange and holds the one verified slot.
    let mut a = Client::psk("dev-1", KEY, addr(1), w.now);
    w.run(
        &mut a,
        Duration::from_secs(1),
        &mut |d, k| d == Dir::ToServer && k >= 2,
        &mut |w, _| w.server.stats().handshakes_verified == 1,
    );
    w.sent = [0, 0];
    assert_eq!(w.server.verified_half_open_count(), 1);
    // B's ClientHello with its cookie is refused before any instance: no
    // ServerHello reaches it.
    let mut b = Client::psk("dev-2", KEY, addr(2), w.now);
    let hello = b.out.pop_front().unwrap();
    w.server.handle_datagram(w.now, b.addr, &hello);
    let (_, hvr) = w.server.poll_transmit().unwrap();
    b.receive(w.now, &hvr);
    let with_cookie = b.out.pop_front().unwrap();
    w.server.handle_datagram(w.now, b.addr, &with_cookie);
    assert_eq!(w.server.stats().verified_full, 1);
    assert_eq!(w.server.stats().handshakes_started, 1);
    assert!(w.server.poll_transmit().is_none(), "a flight went out");
    assert_eq!(w.server.half_open_count(), 1);
    // A's handshake times out; B's retransmission then gets through.
    w.advance(Duration::from_secs(6));
    assert_eq!(w.server.verified_half_open_count(), 0);
    while w.server.poll_transmit().is_some() {}
    assert!(w.connect(&mut b), "{:?}", w.server.stats());
    assert!(w.server.has_session(b.addr));
}

#[test]
fn a_verified_handshake_that_stalls_is_dropped_after_the_handshake_timeout() {
    let mut w = World::new(settings());
    let start = w.now;
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    // ClientHello, HelloVerifyRequest, ClientHello with cookie, the server's
    // flight: then the device goes silent.
    w.run(
        &mut c,
        Duration::from_secs(1),
        &mut |d, k| d == Dir::ToServer && k >= 2,
        &mut |w, _| w.server.stats().handshakes_verified == 1,
    );
    assert_eq!(w.server.stats().handshakes_verified, 1);
    assert_eq!(w.server.verified_half_open_count(), 1);
    // Still there (the server retransmits its flight) until the timeout ...
    w.advance(Duration::from_secs(29) - (w.now - start));
    assert_eq!(w.server.half_open_count(), 1, "{:?}", w.server.stats());
    // ... and gone after it, counted.
    w.advance(Duration::from_millis(1_100));
    assert_eq!(w.server.half_open_count(), 0);
    assert_eq!(w.server.verified_half_open_count(), 0);
    let s = w.server.stats();
    assert_eq!(s.handshake_timeouts + s.handshakes_failed, 1, "{s:?}");
    assert!(w.connected_events(c.addr).is_empty());
    while w.server.poll_transmit().is_some() {}
    assert!(w.server.next_timeout().is_none());
}

#[test]
fn flood_through_a_smaller_table_keeps_memory_bounded() {
    let mut st = settings();
    st.max_half_open = 64;
    st.max_sessions = 2;
    let mut w = World::new(st);
    w.server.set_cookie_timeout(Duration::from_millis(200));
    let ch = client_hello(w.now);
    for round in 0..50u32 {
        for i in 0..200u32 {
            w.server.handle_datagram(w.now, addr(round * 200 + i), &ch);
        }
        assert!(w.server.half_open_count() <= 64);
        w.advance(Duration::from_millis(250));
        while w.server.poll_transmit().is_some() {}
    }
    assert_eq!(w.server.half_open_count(), 0);
    // The session table cap.
    for i in 0..2 {
        let mut c = Client::psk("dev-1", KEY, addr(100_000 + i), w.now);
        assert!(w.connect(&mut c));
    }
    let mut c = Client::psk("dev-1", KEY, addr(100_010), w.now);
    assert!(!w.connect(&mut c));
    assert_eq!(w.server.session_count(), 2);
    assert!(w.server.stats().session_table_full >= 1);
}

#[test]
fn idle_sessions_expire() {
    let mut w = World::new(settings());
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    assert!(w.connect(&mut c));
    let deadline = w.server.next_timeout().unwrap();
    assert!(deadline > w.now);
    // Traffic keeps it alive.
    w.advance(Duration::from_secs(200));
    exchange(&mut w, &mut c);
    w.advance(Duration::from_secs(200));
    assert!(w.server.has_session(c.addr));
    w.advance(Duration::from_secs(101));
    assert!(!w.server.has_session(c.addr));
    assert!(w.events.contains(&DtlsEvent::Closed {
        peer: c.addr,
        reason: CloseReason::Idle
    }));
    assert_eq!(w.server.stats().idle_evictions, 1);
    assert!(w.server.send(w.now, c.addr, b"x").is_err());
}

#[test]
fn rehandshake_runs_beside_the_live_session_and_replaces_it() {
    let mut w = World::new(settings());
    let mut old = Client::psk("dev-1", KEY, addr(1), w.now);
    assert!(w.connect(&mut old));
    // The device reboots: a new client at the same address.
    let mut new = Client::psk("dev-1", KEY, addr(1), w.now);
    // Run the new handshake until the cookie exchange succeeded.
    w.run(
        &mut new,
        Duration::from_secs(5),
        &mut |_, _| false,
        &mut |w, _| w.server.stats().handshakes_verified == 2,
    );
    assert_eq!(w.server.half_open_count(), 1);
    assert!(w.server.has_session(old.addr));
    // The old session still carries data meanwhile.
    old.send(b"old session");
    while let Some(p) = old.out.pop_front() {
        w.server.handle_datagram(w.now, old.addr, &p);
    }
    w.drain_events();
    assert!(w.data_events(old.addr).contains(&&b"old session"[..]));
    assert!(w.connect(&mut new));
    let replaced = w
        .events
        .iter()
        .position(|e| {
            matches!(
                e,
                DtlsEvent::Closed {
                    reason: CloseReason::Replaced,
                    ..
                }
            )
        })
        .expect("replaced");
    let connected = w
        .events
        .iter()
        .rposition(|e| matches!(e, DtlsEvent::Connected { .. }))
        .unwrap();
    assert!(replaced < connected);
    assert_eq!(w.server.session_count(), 1);
    assert_eq!(w.server.stats().replaced, 1);
    exchange(&mut w, &mut new);
}

#[test]
fn spoofed_client_hello_does_not_kill_a_live_session() {
    let mut w = World::new(settings());
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    assert!(w.connect(&mut c));
    let ch = client_hello(w.now);
    for _ in 0..3 {
        w.server.handle_datagram(w.now, c.addr, &ch);
    }
    // Its HelloVerifyRequests go to the real device, which ignores them; the
    // spoofer never answers, and nothing was kept.
    while w.server.poll_transmit().is_some() {}
    assert_eq!(w.server.half_open_count(), 0);
    assert_eq!(w.server.stats().hello_verify_no_cookie, 1 + 3);
    exchange(&mut w, &mut c);
    w.advance(Duration::from_secs(31));
    assert_eq!(w.server.half_open_count(), 0);
    assert!(w.server.has_session(c.addr));
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, DtlsEvent::Closed { .. })));
    exchange(&mut w, &mut c);
}

#[test]
fn junk_never_panics() {
    let mut w = World::new(settings());
    let mut c = Client::psk("dev-1", KEY, addr(1), w.now);
    assert!(w.connect(&mut c));
    let ch = client_hello(w.now);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..20_000u32 {
        let mut d = if i % 2 == 0 {
            ch.clone()
        } else {
            let len = (rnd() % 200) as usize;
            (0..len).map(|_| rnd() as u8).collect()
        };
        if !d.is_empty() {
            for _ in 0..(rnd() % 4) {
                let at = (rnd() as usize) % d.len();
                d[at] = rnd() as u8;
            }
            if i % 7 == 0 {
                d.truncate((rnd() as usize) % d.len());
            }
        }
        let peer = if i % 3 == 0 { c.addr } else { addr(i % 50) };
        w.server.handle_datagram(w.now, peer, &d);
        if i % 1000 == 0 {
            w.advance(Duration::from_secs(3));
        }
    }
    while w.server.poll_transmit().is_some() {}
    assert!(w.server.half_open_count() <= 1024);
}

// ---- record-layer versions ----

/// Calls `f` with the header and fragment of each record of `d` that fits.
fn records(d: &mut [u8], mut f: impl FnMut(&mut [u8], &[u8])) {
    let mut pos = 0;
    while pos + 13 <= d.len() {
        let len = u16::from_be_bytes([d[pos + 11], d[pos + 12]]) as usize;
        let end = (pos + 13 + len).min(d.len());
        let (head, rest) = d[pos..end].split_at_mut(13);
        f(head, rest);
        pos = end;
    }
}

/// What mbedTLS 2.x does: every ClientHello record (the first and the one with
/// the cookie) carries {254, `minor`}; the records after it carry DTLS 1.2.
fn hello_version(minor: u8) -> impl FnMut(&mut [u8]) {
    move |d: &mut [u8]| {
        records(d, |h, frag| {
            if h[0] == 22 && h[3..5] == [0, 0] && frag.first() == Some(&1) {
                h[2] = minor;
            }
        })
    }
}

/// Every record of every datagram with {254, `minor`}.
fn every_record_version(minor: u8) -> impl FnMut(&mut [u8]) {
    move |d: &mut [u8]| records(d, |h, _| h[2] = minor)
}

#[test]
fn client_hello_with_any_254_x_record_version_is_answered() {
    for minor in [0x00, 0x01, 0xfe] {
        let mut w = World::new(settings());
        let mut c = Client::psk_mangled("dev-1", KEY, addr(1), w.now, hello_version(minor));
        assert_eq!(c.out[0][..3], [22, 0xfe, minor]);
        assert!(w.connect(&mut c), "{minor:#04x}: {:?}", w.server.stats());
        assert_eq!(
            w.connected_events(c.addr),
            vec![&PeerIdentity::Psk("dev-1".into())]
        );
        exchange(&mut w, &mut c);
        let s = w.server.stats();
        // A HelloVerifyRequest answered the first, the full handshake the second.
        assert_eq!(s.handshakes_started, 1, "{s:?}");
        assert_eq!(s.handshakes_verified, 1, "{s:?}");
        assert_eq!(s.handshakes_completed, 1, "{s:?}");
        assert_eq!(s.hello_versions_normalised, 2, "{s:?}");
        assert_eq!(s.junk_dropped, 0, "{s:?}");
    }
}

#[test]
fn a_254_x_psk_client_hello_on_a_listener_with_certificates_too() {
    // With a certificate, each instance starts as dimpl's auto-sensing server
    // (its DTLS 1.3 parser reads the first ClientHello).
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), "cert-dev");
    let mut st = cert_settings(dir.path(), true);
    st.psk = Some(psk_store());
    let mut w = World::new(st);
    let mut c = Client::psk_mangled("dev-2", KEY, addr(1), w.now, hello_version(0));
    assert!(w.connect(&mut c), "{:?}", w.server.stats());
    assert_eq!(
        w.connected_events(c.addr),
        vec![&PeerIdentity::Psk("dev-2".into())]
    );
    exchange(&mut w, &mut c);
    assert_eq!(w.server.stats().hello_versions_normalised, 2);
}

#[test]
fn a_254_x_client_hello_survives_loss_and_a_rehandshake() {
    // The handshake of a 0xFE00 client with each datagram lost once.
    let mut w = World::new(settings());
    let mut c = Client::psk_mangled("dev-1", KEY, addr(1), w.now, hello_version(0));
    assert!(w.connect(&mut c));
    w.settle(&mut c, Duration::from_millis(1));
    let [to_server, to_client] = w.sent;
    for (dir, n) in [(Dir::ToServer, to_server), (Dir::ToClient, to_client)] {
        for k in 0..n {
            let mut w = World::new(settings());
            let mut c = Client::psk_mangled("dev-1", KEY, addr(1), w.now, hello_version(0));
            let ok = w.run(
                &mut c,
                Duration::from_secs(60),
                &mut |d, i| d == dir && i == k,
                &mut |w, c| c.connected && w.server.has_session(c.addr),
            );
            assert!(ok, "dropping datagram {k} {dir:?}: no session");
            exchange(&mut w, &mut c);
        }
    }
    // A device that reboots handshakes again beside its session and replaces it.
    let mut c = Client::psk_mangled("dev-1", KEY, addr(1), w.now, hello_version(0));
    assert!(w.connect(&mut c));
    assert_eq!(w.server.stats().replaced, 1);
    exchange(&mut w, &mut c);
}

#[test]
fn only_client_hellos_get_the_lenient_version() {
    // A client whose every record says 0xFE00: its ClientHellos are answered,
    // the flight after ServerHelloDone is not: no session, the handshake times out.
    let mut w = World::new(settings());
    let mut c = Client::psk_mangled("dev-1", KEY, addr(1), w.now, every_record_version(0));
    assert!(!w.connect(&mut c));
    w.advance(Duration::from_secs(31));
    let s = w.server.stats().clone();
    assert!(!w.server.has_session(c.addr));
    assert!(w.connected_events(c.addr).is_empty());
    assert_eq!(
        (s.handshakes_started, s.handshakes_verified),
        (1, 1),
        "{s:?}"
    );
    assert_eq!(s.handshakes_completed, 0, "{s:?}");
    assert!(s.handshake_timeouts + s.handshakes_failed >= 1, "{s:?}");
    assert_eq!(s.half_open, 0, "{s:?}");

    // From an address without state, an epoch-0 record that is not a
    // ClientHello, with 0xFE00: dropped as junk, no handshake.
    let mut w = World::new(settings());
    let mut hello = client_hello(w.now);
    hello[1..3].copy_from_slice(&[0xfe, 0x00]);
    let mut not_hello = hello.clone();
    not_hello[13] = 16; // ClientKeyExchange
    w.server.handle_datagram(w.now, addr(2), &not_hello);
    // A ClientHello whose version is not {254, x} (TLS 1.2, and {253, 253}): junk.
    for v in [[0x03, 0x03], [0xfd, 0xfd], [0xff, 0x00]] {
        let mut h = hello.clone();
        h[1..3].copy_from_slice(&v);
        w.server.handle_datagram(w.now, addr(3), &h);
    }
    let s = w.server.stats();
    assert_eq!(s.junk_dropped, 4, "{s:?}");
    assert_eq!(s.handshakes_started, 0, "{s:?}");
    assert_eq!(s.hello_versions_normalised, 0, "{s:?}");
    assert!(w.server.poll_transmit().is_none());

    // A ClientHello of 0xFE00 followed in its datagram by a 0xFE00 alert: the
    // ClientHello is answered (HelloVerifyRequest), the alert is not taken.
    let mut both = hello.clone();
    both.extend_from_slice(&[21, 0xfe, 0x00, 0, 0, 0, 0, 0, 0, 0, 9, 0, 2, 2, 40]);
    w.server.handle_datagram(w.now, addr(4), &both);
    let (to, hvr) = w.server.poll_transmit().expect("a HelloVerifyRequest");
    assert_eq!((to, hvr[0], hvr[13]), (addr(4), 22, 3));
    assert_eq!(w.server.half_open_count(), 0);
    assert_eq!(w.server.stats().hello_versions_normalised, 1);
    assert_eq!(w.server.stats().handshakes_failed, 0);
}

#[test]
fn hostile_254_x_client_hellos_never_panic() {
    let mut w = World::new(settings());
    let mut hello = client_hello(w.now);
    hello[2] = 0x00;
    let mut seed = 0x1234_5678_9abc_def1u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..20_000u32 {
        let mut d = hello.clone();
        match i % 4 {
            // The length field lies.
            0 => d[11..13].copy_from_slice(&(rnd() as u16).to_be_bytes()),
            // Truncated anywhere.
            1 => d.truncate((rnd() as usize) % d.len()),
            // Trailing records, whole or not.
            2 => {
                let tail = hello[..(rnd() as usize) % hello.len()].to_vec();
                d.extend(tail);
            }
            // Bytes of the body changed.
            _ => {
                for _ in 0..4 {
                    let at = 13 + (rnd() as usize) % (d.len() - 13);
                    d[at] = rnd() as u8;
                }
            }
        }
        w.server.handle_datagram(w.now, addr(i % 64), &d);
        if i % 1000 == 0 {
            w.advance(Duration::from_secs(3));
        }
    }
    while w.server.poll_transmit().is_some() {}
    assert!(w.server.half_open_count() <= 1024);
    let s = w.server.stats();
    assert_eq!(s.datagrams_in, 20_000);
    assert!(s.hello_versions_normalised > 0, "{s:?}");
}

// ---- certificate mode ----

fn cert_settings(dir: &Path, with_ca: bool) -> DtlsSettings {
    let ca = dir.join("ca.pem");
    let cert = CertConfig::load(
        &dir.join("server.pem"),
        &dir.join("server.key"),
        with_ca.then_some(ca.as_path()),
    )
    .unwrap();
    DtlsSettings {
        psk: None,
        cert: Some(Arc::new(cert)),
        ..settings()
    }
}

fn client_cert(dir: &Path, which: &str) -> DtlsCertificate {
    DtlsCertificate {
        certificate: std::fs::read(dir.join(format!("{which}.der"))).unwrap(),
        private_key: std::fs::read(dir.join(format!("{which}.key.der"))).unwrap(),
    }
}

#[test]
fn certificate_mode_verifies_the_client_against_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), "urn:dev:cert-1");
    let mut w = World::new(cert_settings(dir.path(), true));
    let mut c = Client::cert(client_cert(dir.path(), "client"), addr(1), w.now);
    assert!(w.connect(&mut c), "{:?}", w.server.stats());
    assert_eq!(
        w.connected_events(c.addr),
        vec![&PeerIdentity::Cert {
            cn: "urn:dev:cert-1".into()
        }]
    );
    exchange(&mut w, &mut c);

    // Same CN, issued by another CA: rejected.
    let mut c = Client::cert(client_cert(dir.path(), "stranger"), addr(2), w.now);
    assert!(!w.connect(&mut c));
    assert!(w.connected_events(c.addr).is_empty());
    assert!(w.server.stats().cert_rejected >= 1);
    assert_eq!(w.server.half_open_count(), 0);

    // The same checks without a handshake.
    let ca = CertConfig::load(
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        Some(&dir.path().join("ca.pem")),
    )
    .unwrap();
    let ca_der = std::fs::read(dir.path().join("client.der")).unwrap();
    assert_eq!(ca.verify_client(&ca_der).unwrap(), "urn:dev:cert-1");
    assert!(ca.verify_client(b"junk").is_err());
}

#[test]
fn certificate_mode_without_ca_is_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), "dev");
    let mut w = World::new(cert_settings(dir.path(), false));
    let mut c = Client::cert(client_cert(dir.path(), "client"), addr(1), w.now);
    assert!(w.connect(&mut c), "{:?}", w.server.stats());
    assert_eq!(w.connected_events(c.addr), vec![&PeerIdentity::Anonymous]);
    exchange(&mut w, &mut c);
}

#[test]
fn psk_and_certificates_on_one_server() {
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), "cert-dev");
    let mut st = cert_settings(dir.path(), true);
    st.psk = Some(psk_store());
    let mut w = World::new(st);
    let mut c = Client::psk("dev-2", KEY, addr(1), w.now);
    assert!(w.connect(&mut c), "{:?}", w.server.stats());
    assert_eq!(
        w.connected_events(c.addr),
        vec![&PeerIdentity::Psk("dev-2".into())]
    );
    exchange(&mut w, &mut c);
    let mut c = Client::cert(client_cert(dir.path(), "client"), addr(2), w.now);
    assert!(w.connect(&mut c), "{:?}", w.server.stats());
    assert_eq!(
        w.connected_events(c.addr),
        vec![&PeerIdentity::Cert {
            cn: "cert-dev".into()
        }]
    );
    exchange(&mut w, &mut c);
    // Through the same stateless cookie exchange: each handshake was created
    // by its ClientHello with the cookie, and the auto-sensing instance (DTLS
    // 1.2 at that ClientHello) checked that cookie under the same secret.
    let s = w.server.stats();
    assert_eq!(s.hello_verify_no_cookie, 2, "{s:?}");
    assert_eq!(
        (s.handshakes_started, s.handshakes_completed),
        (2, 2),
        "{s:?}"
    );
    let mut c = Client::cert(client_cert(dir.path(), "client"), addr(3), w.now);
    let hello = c.out.pop_front().unwrap();
    w.server.handle_datagram(w.now, c.addr, &hello);
    assert_eq!(w.server.half_open_count(), 0);
    let (_, hvr) = w.server.poll_transmit().unwrap();
    assert_eq!(hvr[13], 3, "HelloVerifyRequest");
}

// ---- Connection ID (RFC 9146) ----

#[test]
fn connection_id_on_a_listener_with_psk_and_certificates() {
    // Each instance starts as dimpl's auto-sensing server: the CID applies once
    // it becomes a DTLS 1.2 server.
    let dir = tempfile::tempdir().unwrap();
    make_pki(dir.path(), "cert-dev");
    let mut st = cert_settings(dir.path(), true);
    st.psk = Some(psk_store());
    let mut w = World::new(st);
    let mut c = Client::psk_cid("dev-2", KEY, addr(1), w.now, &[]);
    assert!(w.connect(&mut c), "{:?}", w.server.stats());
    assert_eq!(c.dtls.peer_connection_id().map(<[u8]>::len), Some(8));
    exchange(&mut w, &mut c);
    c.addr = addr(2);
    c.send(b"moved");
    w.run(
        &mut c,
        Duration::from_secs(1),
        &mut |_, _| false,
        &mut |w, c| w.data_events(c.addr).contains(&&b"moved"[..]),
    );
    assert!(w.server.has_session(addr(2)) && !w.server.has_session(addr(1)));
    exchange(&mut w, &mut c);
}

#[test]
fn connection_id_is_negotiated_only_with_clients_that_offer_it() {
    let mut w = World::new(settings());
    let mut plain = Client::psk("dev-1", KEY, addr(1), w.now);
    assert!(w.connect(&mut plain));
    exchange(&mut w, &mut plain);
    assert_eq!(plain.dtls.peer_connection_id(), None);
    assert_eq!(w.server.stats().cid_sessions, 0);

    // Offers CIDs, wants none itself: it sends CID records, receives plain ones.
    let mut cid = Client::psk_cid("dev-2", KEY, addr(2), w.now, &[]);
    assert!(w.connect(&mut cid));
    let theirs = cid.dtls.peer_connection_id().map(|c| c.to_vec());
    assert_eq!(theirs.as_ref().map(Vec::len), Some(8));
    assert_eq!(cid.dtls.connection_id(), Some(&[][..]));
    exchange(&mut w, &mut cid);
    cid.send(b"x");
    let d = cid.out.front().expect("a record").clone();
    assert_eq!(d[0], 25, "a tls12_cid record");
    assert_eq!(&d[11..19], &theirs.unwrap()[..]);
    assert_eq!(w.server.stats().cid_sessions, 1);

    // Asks for a CID of its own: the gateway's records carry it.
    let mut both = Client::psk_cid("dev-1", KEY, addr(3), w.now, &[7, 7, 7]);
    assert!(w.connect(&mut both));
    assert_eq!(both.dtls.connection_id(), Some(&[7, 7, 7][..]));
    exchange(&mut w, &mut both);
    assert_eq!(w.server.stats().cid_sessions, 2);

    // A listener with connection IDs off ignores the offer.
    let mut off = World::new(DtlsSettings {
        connection_id_len: 0,
        ..settings()
    });
    let mut c = Client::psk_cid("dev-1", KEY, addr(4), off.now, &[]);
    assert!(off.connect(&mut c));
    assert_eq!(c.dtls.peer_connection_id(), None);
    exchange(&mut off, &mut c);
}

#[test]
fn a_cid_record_from_a_new_address_moves_the_session() {
    let mut w = World::new(settings());
    let mut c = Client::psk_cid("dev-1", KEY, addr(1), w.now, &[]);
    assert!(w.connect(&mut c));
    exchange(&mut w, &mut c);
    let handshakes = w.server.stats().handshakes_completed;

    // The NAT gives the device a new address and port.
    let new = SocketAddr::from(([10, 9, 9, 9], 50_001));
    c.addr = new;
    c.send(b"after rebinding");
    w.run(
        &mut c,
        Duration::from_secs(1),
        &mut |_, _| false,
        &mut |w, _| w.data_events(new).contains(&&b"after rebinding"[..]),
    );
    assert!(w.data_events(new).contains(&&b"after rebinding"[..]));
    let moved = w
        .events
        .iter()
        .position(|e| {
            *e == DtlsEvent::Moved {
                from: addr(1),
                to: new,
            }
        })
        .expect("a Moved event");
    let data = w
        .events
        .iter()
        .position(|e| matches!(e, DtlsEvent::Data { peer, .. } if *peer == new))
        .unwrap();
    assert!(moved < data, "Moved is announced before the data");
    assert!(w.server.has_session(new));
    assert!(!w.server.has_session(addr(1)));
    assert_eq!(w.server.session_count(), 1);
    assert_eq!(w.server.stats().cid_moves, 1);
    assert_eq!(w.server.stats().handshakes_completed, handshakes);
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, DtlsEvent::Closed { .. })));

    // The gateway's records now go to the new address.
    exchange(&mut w, &mut c);
    assert!(w.stray.is_empty(), "nothing sent to the old address");
}

#[test]
fn replayed_forged_and_unknown_cid_records_move_nothing() {
    let mut w = World::new(settings());
    let mut c = Client::psk_cid("dev-1", KEY, addr(1), w.now, &[]);
    assert!(w.connect(&mut c));
    exchange(&mut w, &mut c);
    c.send(b"once");
    let record = c.out.pop_front().unwrap();
    w.server.handle_datagram(w.now, addr(1), &record);
    w.drain_events();
    assert_eq!(w.data_events(addr(1)).len(), 2);

    // An attacker replays it from its own address: not authenticated again.
    let attacker = SocketAddr::from(([192, 0, 2, 1], 4444));
    w.server.handle_datagram(w.now, attacker, &record);
    // It forges one with the CID and a changed ciphertext.
    let mut forged = record.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    w.server.handle_datagram(w.now, attacker, &forged);
    // And one with a CID nobody was given.
    let mut unknown = record.clone();
    unknown[11] ^= 0xff;
    w.server.handle_datagram(w.now, attacker, &unknown);
    // Truncated and junk CID records never panic.
    for n in 0..record.len() {
        w.server.handle_datagram(w.now, attacker, &record[..n]);
    }
    w.drain_events();

    assert!(w.data_events(attacker).is_empty());
    assert!(!w
        .events
        .iter()
        .any(|e| matches!(e, DtlsEvent::Moved { .. })));
    assert!(w.server.has_session(addr(1)));
    assert!(!w.server.has_session(attacker));
    let st = w.server.stats();
    assert_eq!(st.cid_moves, 0);
    assert!(st.cid_unauthenticated >= 2, "{st:?}");
    assert!(st.cid_unknown >= 1, "{st:?}");
    // The device still talks from where it is.
    exchange(&mut w, &mut c);
}

#[test]
fn a_cid_record_reaching_another_shard_is_handed_to_the_shard_of_its_session() {
    let mut w = World::new(settings());
    w.server.set_shard(0, 2);
    let mut other = DtlsServer::new(settings()).unwrap();
    other.set_shard(1, 2);
    let mut c = Client::psk_cid("dev-1", KEY, addr(1), w.now, &[]);
    assert!(w.connect(&mut c));
    exchange(&mut w, &mut c);

    // The device's new address hashes to the other shard's socket.
    let new = SocketAddr::from(([10, 8, 8, 8], 50_002));
    c.send(b"via shard 1");
    let d = c.out.pop_front().unwrap();
    other.handle_datagram(w.now, new, &d);
    assert!(other.poll_event().is_none());
    assert!(other.poll_transmit().is_none());
    let (shard, from, data) = other.poll_forward().expect("handed to shard 0");
    assert_eq!((shard, from), (0, new));
    assert_eq!(other.stats().cid_forwarded, 1);
    w.server.handle_datagram(w.now, from, &data);
    w.drain_events();
    assert!(w.data_events(new).contains(&&b"via shard 1"[..]));
    assert!(w.server.has_session(new));
    assert_eq!(w.server.stats().cid_moves, 1);

    // A CID naming a shard that does not exist is unknown, not handed on.
    let mut bad = d.clone();
    bad[11] = 0;
    bad[12] = 7;
    other.handle_datagram(w.now, new, &bad);
    assert!(other.poll_forward().is_none());
    assert_eq!(other.stats().cid_unknown, 1);
}
