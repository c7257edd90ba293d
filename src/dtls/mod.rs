//! CoAP over DTLS 1.2: a sans-IO server for many peers, built on dimpl.
//!
//! A shard owns one UDP socket for the DTLS port and one [`DtlsServer`]. It
//! drives the server with the time and each datagram, then drains what the
//! server has to say:
//!
//! ```text
//! recv (peer, bytes)  ──► handle_datagram(now, peer, bytes)
//! timer fires         ──► handle_timeout(now)
//! CoAP reply to peer  ──► send(now, peer, plaintext)
//! after each of these: while let Some((peer, d)) = poll_transmit()  → send d to peer
//!                      while let Some(ev) = poll_event()            → Connected / Data / Closed
//!                      next_timeout()                               → arm the shard timer
//! ```
//!
//! `poll_transmit` hands out owned `Vec<u8>` datagrams (one allocation per
//! ciphertext datagram; the shard copies them into its send batch).
//!
//! # Protection (what dimpl leaves to us)
//! - A ClientHello from an address with no handshake in progress is answered
//!   statelessly (RFC 6347 §4.2.1, `hello_verify.rs`): without a cookie, or
//!   with one that does not verify, it gets a HelloVerifyRequest written by the
//!   server itself, no larger than the ClientHello, and leaves nothing behind
//!   (no dimpl instance, no table entry). The cookie is dimpl's HMAC of the
//!   client random under the address's secret (`cookie.rs`: an HMAC of the
//!   address under the shard's key, replaced every minute, the previous key
//!   still accepted), so a spoofed-source flood costs two HMACs and one small
//!   datagram per ClientHello and no memory. Only a ClientHello returning a
//!   valid cookie creates an instance (given that secret: it checks the cookie
//!   again and takes the ClientHello as the one after its own
//!   HelloVerifyRequest). Those handshakes, all past the cookie exchange, are
//!   capped per shard (`max_half_open`, 1,024, and `max_verified_half_open`) and
//!   per source IP (`max_half_open_per_addr`); at a cap the ClientHello is
//!   dropped before anything past the cookie is sent, and its client's
//!   retransmission gets in once there is room. A handshake is dropped after
//!   `handshake_timeout`.
//! - Until an instance has sent something past a HelloVerifyRequest, the
//!   server never sends its address more bytes than it received from it.
//! - Non-ClientHello datagrams from an address with no state are dropped
//!   without allocating.
//! - Established sessions are capped (`max_sessions`) and closed after
//!   `idle_timeout` without a datagram from the peer (the DTLS listener's keys
//!   of the same names; `max_sessions` is split over the shards).
//! - A ClientHello (epoch 0) from an address with a live session starts a
//!   new handshake beside it; the old session is replaced only when the new
//!   handshake completes ([`CloseReason::Replaced`]), so a spoofed
//!   ClientHello cannot end a live session.
//! - A ClientHello record may carry any {254, x} version (RFC 5246 E.1 by way of
//!   RFC 6347 §4; mbedTLS 2.x sends 0xFE00): it reaches dimpl, which takes only
//!   0xFEFF and 0xFEFD, as 0xFEFF. Every other record keeps dimpl's check.
//! - Any error from dimpl ends that instance only. No network input can make
//!   the server panic.
//!
//! # Connection IDs (RFC 9146)
//! dimpl 0.9 has none; the copy under `vendor/dimpl` adds them. The server
//! offers each handshake a CID naming its shard (`cid.rs`); a client that asked
//! for one puts it in every protected record (content type 25). Such a record
//! goes to the session holding its CID, whatever its source address; one that
//! authenticates data from a new address moves the session there
//! ([`DtlsEvent::Moved`], before that data), a replayed or forged one moves
//! nothing, one from a new address that is not exactly one record never reaches
//! dimpl (whose errors end a session), one with an unknown CID is dropped
//! (counted), and one with another shard's CID comes out of
//! [`DtlsServer::poll_forward`] for that shard.
//!
//! # Session resumption (RFC 5246 §7.3)
//! dimpl 0.9 has none; the copy under `vendor/dimpl` adds session IDs and the
//! abbreviated handshake. With a [`ResumptionCache`] (`session_cache`, shared
//! by the listener's shards) every full handshake issues a session ID and
//! stores the session's master secret, suite and PSK identity; a ClientHello
//! (with its cookie) offering a cached, unexpired ID whose identity the PSK
//! file still holds with the same key resumes without the PSK exchange (the
//! identity announced is the cached one; a CID is negotiated afresh). An
//! unknown, expired or revoked ID gets a full handshake (counted).

mod cert;
mod cid;
mod cookie;
mod failure_log;
mod hello_verify;
mod psk;
mod resume;
mod server;
mod session;
mod stats;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use cert::{common_name, CertConfig, CertError};
pub use psk::{wildcard_match, PskError, PskStore, PskTable};
pub use resume::ResumptionCache;
pub use server::DtlsServer;
pub use stats::DtlsStats;

/// How a [`DtlsServer`] authenticates devices and protects itself.
#[derive(Debug, Clone)]
pub struct DtlsSettings {
    /// Pre-shared keys (TLS_PSK_WITH_AES_128_CCM_8).
    pub psk: Option<Arc<PskStore>>,
    /// Server certificate and optional client CA (ECDHE-ECDSA).
    pub cert: Option<Arc<CertConfig>>,
    /// Handshakes in progress per server (shard): DTLS instances, each past
    /// the cookie exchange (a ClientHello without a valid cookie creates none).
    pub max_half_open: usize,
    /// Handshakes past the cookie exchange per server, within `max_half_open`
    /// (every handshake is past it: the smaller of the two caps applies).
    pub max_verified_half_open: usize,
    /// Handshakes in progress per source IP.
    pub max_half_open_per_addr: usize,
    /// Established sessions per server (shard).
    pub max_sessions: usize,
    /// A handshake not finished this long after its first ClientHello is dropped.
    pub handshake_timeout: Duration,
    /// An established session that received nothing this long is closed.
    pub idle_timeout: Duration,
    /// Length of the connection IDs (RFC 9146) offered to clients that ask
    /// for them, 6 to 32 bytes (the first 2 name the shard); 0: connection IDs off.
    pub connection_id_len: usize,
    /// Resumable sessions (RFC 5246 §7.3), shared by the listener's shards;
    /// `None`: every handshake is a full one.
    pub session_cache: Option<Arc<ResumptionCache>>,
}

impl Default for DtlsSettings {
    /// No credentials (set `psk` and/or `cert`), 1024 handshakes in progress
    /// (each past the cookie exchange), 4 per IP, 1,000,000 sessions, 30 s
    /// handshake timeout, 1 h idle timeout.
    fn default() -> Self {
        DtlsSettings {
            psk: None,
            cert: None,
            max_half_open: 1024,
            max_verified_half_open: 1024,
            max_half_open_per_addr: 4,
            max_sessions: 1_000_000,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            connection_id_len: 8,
            session_cache: None,
        }
    }
}

/// Who the peer proved to be: the protocol core's type, which the DTLS server produces.
pub use crate::lwm2m::PeerIdentity;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseReason {
    /// Nothing received for `idle_timeout`.
    Idle,
    /// A fatal DTLS error (undecryptable handshake, protocol violation, ...).
    Error,
    /// A new session from the same address completed its handshake.
    Replaced,
    /// The peer sent an alert (close_notify).
    Alert,
    /// The gateway closed it ([`DtlsServer::close`]).
    Local,
}

/// What the gateway hears from the DTLS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DtlsEvent {
    /// A record with the session's connection ID authenticated from `to`:
    /// the session of `from` is now the session of `to` (RFC 9146 §6).
    /// Announced before the data that moved it.
    Moved { from: SocketAddr, to: SocketAddr },
    /// A handshake completed; `peer` now has a session.
    Connected {
        peer: SocketAddr,
        identity: PeerIdentity,
    },
    /// A decrypted datagram (a CoAP message) from the device.
    Data {
        peer: SocketAddr,
        plaintext: Vec<u8>,
    },
    /// The session of `peer` ended (it was announced by `Connected`).
    Closed {
        peer: SocketAddr,
        reason: CloseReason,
    },
}

/// Errors of the DTLS server API.
#[derive(Debug, thiserror::Error)]
pub enum DtlsError {
    /// Neither `psk` nor `cert` is configured.
    #[error("a DTLS listener needs a psk_file or a certfile/keyfile")]
    NoCredentials,
    /// dimpl refused the configuration.
    #[error("DTLS configuration: {0}")]
    Config(String),
    /// `send` to a peer without an established session.
    #[error("no DTLS session with {0}")]
    NoSession(SocketAddr),
    /// The session failed while sending and was closed.
    #[error("DTLS session with {peer} failed: {reason}")]
    SessionFailed { peer: SocketAddr, reason: String },
}

/// The core asks the PSK file (as it is now, reloads included) which names an identity
/// may register.
impl crate::lwm2m::PskPolicy for PskStore {
    fn may_register(&self, identity: &str, endpoint: &str) -> bool {
        PskStore::may_register(self, identity, endpoint)
    }
}
