//! Counters of one [`DtlsServer`](super::DtlsServer) (one shard).
//!
//! Plain integers: the server is driven by one thread. A shard copies them
//! into its metrics when it reports.

/// What one DTLS server has seen since it was created.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DtlsStats {
    /// Datagrams handed to `handle_datagram`.
    pub datagrams_in: u64,
    /// Ciphertext datagrams queued for sending.
    pub datagrams_out: u64,
    /// Datagrams dropped before reaching a DTLS instance: not a DTLS record,
    /// or not a ClientHello from an address with no state.
    pub junk_dropped: u64,
    /// ClientHello datagrams whose record-layer version was a {254, x} other
    /// than DTLS 1.0 or 1.2 (mbedTLS 2.x sends 0xFE00), passed on as DTLS 1.0.
    pub hello_versions_normalised: u64,
    /// ClientHellos from an address with no handshake answered with a
    /// HelloVerifyRequest and no state: without a cookie, with a cookie that
    /// did not verify (forged, for another address, or too old).
    pub hello_verify_no_cookie: u64,
    pub hello_verify_invalid_cookie: u64,
    /// ClientHello records from an address with no handshake that do not hold
    /// a whole random, session ID and cookie (dropped).
    pub hellos_malformed: u64,
    /// Handshake instances created (a ClientHello that returned a valid cookie
    /// from an address with no handshake).
    pub handshakes_started: u64,
    /// Handshakes whose cookie exchange succeeded (the address is real).
    pub handshakes_verified: u64,
    /// Handshakes that ended with an established session.
    pub handshakes_completed: u64,
    /// Handshakes that ended with a fatal DTLS error (wrong key, unknown
    /// identity, rejected certificate, protocol error).
    pub handshakes_failed: u64,
    /// Handshakes dropped because they did not finish in time (including
    /// ClientHellos whose cookie never came back).
    pub handshake_timeouts: u64,
    /// ClientHellos with a valid cookie dropped because their source IP had
    /// `max_half_open_per_addr` handshakes in progress.
    pub half_open_per_addr_drops: u64,
    /// ClientHellos with a valid cookie dropped because `max_verified_half_open`
    /// handshakes were in progress.
    pub verified_full: u64,
    /// ClientHellos or completed handshakes dropped because the session
    /// table was full.
    pub session_table_full: u64,
    /// Datagrams not sent to an unverified address because they would have
    /// exceeded the bytes received from it (anti-amplification).
    pub amplification_drops: u64,
    /// Client certificates that failed verification.
    pub cert_rejected: u64,
    /// Fatal errors of an established session.
    pub session_errors: u64,
    /// Fatal cryptographic errors (mostly failed decryption of a Finished:
    /// wrong key or unknown identity).
    pub decrypt_errors: u64,
    /// Established sessions closed for lack of traffic.
    pub idle_evictions: u64,
    /// Established sessions replaced by a new handshake from the same address.
    pub replaced: u64,
    /// Established sessions closed by the peer (close_notify).
    pub peer_closed: u64,
    /// Application data records decrypted and delivered.
    pub app_data_in: u64,
    /// Application data messages encrypted for sending.
    pub app_data_out: u64,
    /// Sessions that negotiated a connection ID (RFC 9146).
    pub cid_sessions: u64,
    /// Records with a connection ID no session of this server holds (dropped).
    pub cid_unknown: u64,
    /// Records with a connection ID of another shard, handed to that shard.
    pub cid_forwarded: u64,
    /// Of those, records the other shard's mailbox had no room for (dropped).
    pub cid_forward_dropped: u64,
    /// Sessions moved to a new address by a record with their connection ID.
    pub cid_moves: u64,
    /// Records with a known connection ID from a new address that
    /// authenticated no data (replayed, forged, or not application data):
    /// the session stayed where it was.
    pub cid_unauthenticated: u64,
    /// Handshakes that resumed a cached session (abbreviated handshakes; also
    /// counted in `handshakes_completed`).
    pub resumed: u64,
    /// ClientHellos offering a session ID the cache refused, by reason:
    /// unknown, expired, revoked (PSK identity gone or its key changed).
    pub resume_refused_unknown: u64,
    pub resume_refused_expired: u64,
    pub resume_refused_revoked: u64,
    /// Sessions in the listener's resumption cache now (shared by the shards).
    pub session_cache_entries: u64,
    /// Established sessions now.
    pub sessions: u64,
    /// Handshakes in progress now (half-open, each past the cookie exchange).
    pub half_open: u64,
}
