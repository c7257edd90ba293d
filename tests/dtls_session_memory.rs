//! What an established, idle DTLS-PSK session holds on the heap, counted by
//! jemalloc (the gateway's allocator) in its size classes: a gateway holds one
//! per device, 100,000s of them idle, so these bounds keep it from growing back.
//!
//! A dimpl server configured as the gateway's listener does it (cookie, PSK with
//! AES-128-CCM-8, a connection ID issued) completes an in-memory handshake with a
//! dimpl client, takes and sends application data, and every output is polled;
//! then the bytes jemalloc frees on this thread when the server is dropped are
//! what the session held.

mod common;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dtls_client::{hex, Client, FixedKey, KEY};
use dimpl::crypto::Dtls12CipherSuite;
use dimpl::{Config, Dtls, Output};
use tikv_jemalloc_ctl::thread::{allocatedp, deallocatedp};

#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The listener's configuration, shared by all its sessions.
fn server_config() -> Arc<Config> {
    let config = Config::builder()
        .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
        .dtls13_cipher_suites(&[])
        .use_server_cookie(true)
        .handshake_timeout(Duration::from_secs(30))
        .with_psk_server(None, Arc::new(FixedKey(hex(KEY))))
        .build()
        .unwrap();
    Arc::new(config)
}

fn server(config: &Arc<Config>, now: Instant) -> Dtls {
    let mut dtls = Dtls::new_12_psk(Arc::clone(config), now);
    assert!(dtls.set_connection_id(&[7; 8]));
    dtls.handle_timeout(now).unwrap();
    dtls
}

/// Polls every output of the server: datagrams go to `out`, application
/// data to `data`.
fn drain(dtls: &mut Dtls, out: &mut VecDeque<Vec<u8>>, data: &mut Vec<Vec<u8>>) {
    let mut buf = vec![0u8; 2048];
    loop {
        match dtls.poll_output(&mut buf) {
            Output::Packet(p) => out.push_back(p.to_vec()),
            Output::Timeout(_) => return,
            Output::ApplicationData(d) => data.push(d.to_vec()),
            Output::BufferTooSmall { needed } => buf.resize(needed, 0),
            _ => {}
        }
    }
}

/// A server session and its client, with the datagrams in flight to the client.
struct Pair {
    now: Instant,
    server: Dtls,
    client: Client,
    to_client: VecDeque<Vec<u8>>,
    server_got: Vec<Vec<u8>>,
}

impl Pair {
    fn new(config: &Arc<Config>, cid: Option<&[u8]>) -> Self {
        let now = Instant::now();
        let at = SocketAddr::from(([10, 0, 0, 1], 5684));
        let client = match cid {
            Some(cid) => Client::psk_cid("lg-000001", KEY, at, now, cid),
            None => Client::psk("lg-000001", KEY, at, now),
        };
        let mut pair = Pair {
            now,
            server: server(config, now),
            client,
            to_client: VecDeque::new(),
            server_got: Vec::new(),
        };
        pair.flow();
        pair
    }

    /// Delivers datagrams both ways until none is left.
    fn flow(&mut self) {
        for _ in 0..20 {
            drain(&mut self.server, &mut self.to_client, &mut self.server_got);
            if self.client.out.is_empty() && self.to_client.is_empty() {
                return;
            }
            while let Some(d) = self.client.out.pop_front() {
                self.server.handle_packet(&d).unwrap();
            }
            while let Some(d) = self.to_client.pop_front() {
                self.client.receive(self.now, &d);
            }
        }
        panic!("the handshake does not settle");
    }

    /// A request and its response: the server's session is then established
    /// and idle.
    fn exchange(&mut self) {
        assert!(self.client.connected, "the client connected");
        self.client.send(b"register");
        self.flow();
        assert_eq!(self.server_got, vec![b"register".to_vec()]);
        self.server.send_application_data(b"created").unwrap();
        self.flow();
        assert_eq!(self.client.received, vec![b"created".to_vec()]);
    }
}

/// Bytes (jemalloc size classes) that dropping `value` frees on this thread.
fn freed_by_drop<T>(value: T) -> u64 {
    let allocated = allocatedp::mib().unwrap().read().unwrap();
    let deallocated = deallocatedp::mib().unwrap().read().unwrap();
    let (alloc0, dealloc0) = (allocated.get(), deallocated.get());
    drop(value);
    let allocated_meanwhile = allocated.get() - alloc0;
    (deallocated.get() - dealloc0).saturating_sub(allocated_meanwhile)
}

// 1,448 B when written: dimpl's server in jemalloc's 896-byte class, its two
// CCM ciphers (192 each) and small allocations. The server crossing into the
// 1,024-byte class, or anything of the handshake kept, fails the bound.
#[test]
fn an_idle_psk_session_holds_at_most_1_5_kib_of_heap() {
    let config = server_config();
    let mut pair = Pair::new(&config, None);
    pair.exchange();
    let held = freed_by_drop(pair.server);
    eprintln!("idle DTLS-PSK server session without a connection ID: {held} B on the heap");
    assert!(held > 0, "the server's state lives on the heap");
    assert!(held <= 1_536, "an idle session holds {held} B");
}

#[test]
fn an_idle_psk_session_with_a_connection_id_holds_at_most_1_5_kib_of_heap() {
    let config = server_config();
    let mut pair = Pair::new(&config, Some(&[9; 4]));
    pair.exchange();
    assert_eq!(pair.server.peer_connection_id(), Some(&[9u8; 4][..]));
    let held = freed_by_drop(pair.server);
    eprintln!("idle DTLS-PSK server session with a connection ID: {held} B on the heap");
    assert!(held <= 1_536, "an idle session holds {held} B");
}
