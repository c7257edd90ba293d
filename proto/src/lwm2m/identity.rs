//! Who a datagram's sender proved to be (its DTLS session), and which endpoint names an
//! identity may act for. The DTLS layer produces identities; the core only reads them.

/// Who the peer proved to be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PeerIdentity {
    /// The PSK identity it used.
    Psk(String),
    /// The subject CN of its certificate, verified against the CA.
    Cert { cn: String },
    /// Certificate mode without a client CA: the device presented nothing.
    Anonymous,
}

/// Which endpoint names a PSK identity may register (the PSK file's patterns; reloadable,
/// so the core asks at each request rather than keeping an answer).
pub trait PskPolicy: Send + Sync + std::fmt::Debug {
    fn may_register(&self, identity: &str, endpoint: &str) -> bool;
}
