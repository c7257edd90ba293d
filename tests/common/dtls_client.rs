//! A device of the sans-IO DTLS tests: a dimpl client instance at an address,
//! whose datagrams the test carries to and from the server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use dimpl::crypto::Dtls12CipherSuite;
use dimpl::{Config, Dtls, DtlsCertificate, Output, PskResolver, Resumption};

/// The key of the test devices' PSK entries.
pub const KEY: &str = "000102030405060708090a0b0c0d0e0f";

/// A PSK resolver that gives one key whatever the identity.
pub struct FixedKey(pub Vec<u8>);
impl PskResolver for FixedKey {
    fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
        Some(self.0.clone())
    }
}

/// The bytes of a hexadecimal string.
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Changes a datagram in place.
pub type Mangle = Box<dyn FnMut(&mut [u8])>;

/// A device: a dimpl client instance at an address.
pub struct Client {
    pub dtls: Dtls,
    pub addr: SocketAddr,
    pub timeout: Option<Instant>,
    pub connected: bool,
    pub failed: bool,
    pub received: Vec<Vec<u8>>,
    pub out: VecDeque<Vec<u8>>,
    /// Changes each datagram the client sends (a client of another stack).
    pub mangle: Option<Mangle>,
}

/// A PSK client's instance (AES-128-CCM-8, the gateway's PSK suite), not started.
fn psk_dtls(identity: &str, key: &str, now: Instant) -> Dtls {
    let config = Config::builder()
        .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
        .with_psk_client(identity.as_bytes().to_vec(), Arc::new(FixedKey(hex(key))))
        .build()
        .unwrap();
    let mut dtls = Dtls::new_12_psk(Arc::new(config), now);
    dtls.set_active(true);
    dtls
}

impl Client {
    pub fn psk(identity: &str, key: &str, addr: SocketAddr, now: Instant) -> Self {
        Self::start(psk_dtls(identity, key, now), addr, now)
    }

    /// A PSK client that offers connection IDs (RFC 9146), asking to receive `cid`.
    pub fn psk_cid(identity: &str, key: &str, addr: SocketAddr, now: Instant, cid: &[u8]) -> Self {
        let mut dtls = psk_dtls(identity, key, now);
        assert!(dtls.set_connection_id(cid));
        Self::start(dtls, addr, now)
    }

    /// A PSK client that offers the session `offer` to resume (and connection
    /// IDs, asking for an empty one, with `cid`).
    pub fn psk_resuming(
        identity: &str,
        key: &str,
        addr: SocketAddr,
        now: Instant,
        offer: Option<&Resumption>,
        cid: bool,
    ) -> Self {
        let mut dtls = psk_dtls(identity, key, now);
        if cid {
            assert!(dtls.set_connection_id(&[]));
        }
        if let Some(r) = offer {
            assert!(dtls.offer_resumption(r));
        }
        Self::start(dtls, addr, now)
    }

    /// A PSK client whose datagrams pass through `mangle` from the first on.
    pub fn psk_mangled(
        identity: &str,
        key: &str,
        addr: SocketAddr,
        now: Instant,
        mut mangle: impl FnMut(&mut [u8]) + 'static,
    ) -> Self {
        let mut c = Self::psk(identity, key, addr, now);
        for d in c.out.iter_mut() {
            mangle(d);
        }
        c.mangle = Some(Box::new(mangle));
        c
    }

    pub fn cert(cert: DtlsCertificate, addr: SocketAddr, now: Instant) -> Self {
        let config = Config::builder()
            .dtls12_cipher_suites(&[Dtls12CipherSuite::ECDHE_ECDSA_AES128_GCM_SHA256])
            .build()
            .unwrap();
        Self::start(Dtls::new_12(Arc::new(config), cert, now), addr, now)
    }

    fn start(mut dtls: Dtls, addr: SocketAddr, now: Instant) -> Self {
        dtls.set_active(true);
        dtls.handle_timeout(now).unwrap();
        let mut c = Client {
            dtls,
            addr,
            timeout: None,
            connected: false,
            failed: false,
            received: Vec::new(),
            out: VecDeque::new(),
            mangle: None,
        };
        c.poll();
        c
    }

    /// Takes every output of the instance: datagrams (mangled, if so) into
    /// `out`, application data into `received`, the next timer.
    pub fn poll(&mut self) {
        if self.failed {
            self.timeout = None; // a failed client has no timer
            return;
        }
        let mut buf = vec![0u8; 4096];
        loop {
            match self.dtls.poll_output(&mut buf) {
                Output::Packet(p) => {
                    let mut d = p.to_vec();
                    if let Some(m) = &mut self.mangle {
                        m(&mut d);
                    }
                    self.out.push_back(d);
                }
                Output::Timeout(t) => {
                    self.timeout = Some(t);
                    return;
                }
                Output::Connected => self.connected = true,
                Output::ApplicationData(d) => self.received.push(d.to_vec()),
                Output::BufferTooSmall { needed } => buf.resize(needed, 0),
                _ => {}
            }
        }
    }

    /// A datagram from the server at `now`; any error fails the client.
    pub fn receive(&mut self, now: Instant, p: &[u8]) {
        if self.failed {
            return;
        }
        if self.dtls.handle_timeout(now).is_err() || self.dtls.handle_packet(p).is_err() {
            self.failed = true;
        }
        self.poll();
    }

    /// Runs the client's timer if it is due at `now`.
    pub fn tick(&mut self, now: Instant) {
        if self.failed || self.timeout.is_none_or(|t| t > now) {
            return;
        }
        if self.dtls.handle_timeout(now).is_err() {
            self.failed = true;
        }
        self.poll();
    }

    pub fn send(&mut self, data: &[u8]) {
        self.dtls.send_application_data(data).unwrap();
        self.poll();
    }
}
