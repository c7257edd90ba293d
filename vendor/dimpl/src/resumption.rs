//! DTLS 1.2 session resumption (RFC 5246 §7.3, abbreviated handshake with
//! session IDs). Not in the published dimpl 0.9; added by this copy.
//!
//! A server given a [`SessionCache`] ([`crate::ConfigBuilder::with_session_cache`])
//! issues a 32-byte session ID in the ServerHello of every full handshake and
//! stores the session when the handshake completes. A later ClientHello
//! carrying that ID (with a valid cookie, offering the session's cipher suite
//! and extended master secret) is answered by ServerHello with the same ID,
//! ChangeCipherSpec and Finished; keys come from the cached master secret and
//! the new randoms. Anything the cache does not return gets a full handshake.
//!
//! A client keeps [`crate::Dtls::resumption`] after a handshake and hands it to
//! [`crate::Dtls::offer_resumption`] of a fresh instance before its first
//! timeout: the ClientHello offers the ID and the client follows the
//! abbreviated handshake when the server echoes it.

use std::panic::{RefUnwindSafe, UnwindSafe};
use std::time::Instant;

use crate::crypto::Dtls12CipherSuite;

/// What a resumed session reuses of the full handshake that created it.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionState {
    /// The cipher suite of the session (the resuming ClientHello must offer it).
    pub cipher_suite: Dtls12CipherSuite,
    /// The (extended) master secret.
    pub master_secret: [u8; 48],
    /// The PSK identity the client gave (PSK suites), as the server saw it.
    pub psk_identity: Option<Vec<u8>>,
}

impl std::fmt::Debug for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionState")
            .field("cipher_suite", &self.cipher_suite)
            .field(
                "psk_identity_len",
                &self.psk_identity.as_ref().map(Vec::len),
            )
            .finish_non_exhaustive()
    }
}

/// A session a client may offer to resume: its ID and state.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Resumption {
    /// The session ID the server issued (1 to 32 bytes).
    pub session_id: Vec<u8>,
    /// The session's cipher suite and master secret.
    pub state: SessionState,
}

/// The server's store of resumable sessions. The cache decides lifetime,
/// size and whether a session may still be resumed (e.g. its PSK identity
/// is still known).
pub trait SessionCache: Send + Sync + UnwindSafe + RefUnwindSafe {
    /// A full handshake completed: `session_id` may resume `state`.
    fn store(&self, session_id: &[u8], state: SessionState, now: Instant);
    /// The session a ClientHello offers to resume, if it may be.
    fn lookup(&self, session_id: &[u8], now: Instant) -> Option<SessionState>;
}
