//! One peer: a dimpl instance and what the server tracks about it.
//!
//! Life of an instance (DTLS 1.2 server, RFC 6347):
//! ```text
//! ClientHello ─► HelloVerifyRequest (cookie)        unverified: bytes out ≤ bytes in
//! ClientHello+cookie ─► ServerHello..Done           verified (the address answered)
//! ClientKeyExchange, CCS, Finished ─► CCS, Finished  Connected (identity recorded)
//! application data both ways                         established until idle/error/replaced
//! ```
//! Every `Err` from dimpl is fatal: the caller drops the session.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use dimpl::{Dtls, Output, PskResolver};

use super::cert::CertConfig;
use super::psk::PskStore;
use super::stats::DtlsStats;
use super::PeerIdentity;

use std::collections::VecDeque;
use std::sync::Arc;

/// Largest output buffer a session may ask for.
const MAX_OUTPUT: usize = 64 * 1024;

/// The PSK resolver given to dimpl. dimpl passes it no peer context, so it
/// remembers the last identity asked for; the server takes it right after
/// driving one instance (the server is single-threaded).
pub(crate) struct RecordingResolver {
    pub store: Arc<PskStore>,
    last: Mutex<Option<Vec<u8>>>,
}

impl RecordingResolver {
    pub(super) fn new(store: Arc<PskStore>) -> Self {
        RecordingResolver {
            store,
            last: Mutex::new(None),
        }
    }

    /// The identity asked for since the last call, if any.
    pub(super) fn take(&self) -> Option<Vec<u8>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl PskResolver for RecordingResolver {
    fn resolve(&self, identity: &[u8]) -> Option<Vec<u8>> {
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(identity.to_vec());
        self.store.lookup(identity)
    }
}

/// Why a session must be dropped.
#[derive(Debug)]
#[allow(dead_code)] // the fields are read through Debug, in logs
pub(crate) enum Fatal {
    Dtls(dimpl::Error),
    Cert(super::cert::CertError),
    /// Connected without a usable identity.
    NoIdentity,
    /// dimpl asked for an absurd output buffer.
    Output,
}

/// What one drive of a session produced, in order.
#[derive(Debug)]
pub(crate) enum SessionOutput {
    Connected,
    Data(Vec<u8>),
    CloseNotify,
}

/// Where a drive puts its results.
pub(crate) struct Sink<'a> {
    pub transmits: &'a mut VecDeque<(SocketAddr, Vec<u8>)>,
    pub outputs: &'a mut Vec<SessionOutput>,
    pub stats: &'a mut DtlsStats,
    pub buf: &'a mut Vec<u8>,
    pub cert: Option<&'a CertConfig>,
}

pub(crate) struct Session {
    /// Unique per server: tells a timer entry of this session from one of a
    /// later session at the same address.
    pub id: u64,
    pub dtls: Dtls,
    pub created: Instant,
    /// Last datagram received from the peer.
    pub last_rx: Instant,
    pub connected: bool,
    /// The cookie exchange succeeded (something other than a
    /// HelloVerifyRequest was sent).
    pub verified: bool,
    /// The server counts it among the verified half-open handshakes.
    pub counted_verified: bool,
    /// Bytes received / sent while unverified (anti-amplification).
    pub rx_bytes: usize,
    pub tx_bytes: usize,
    pub psk_identity: Option<Vec<u8>>,
    pub cert_cn: Option<String>,
    /// dimpl's next timer.
    pub dimpl_timeout: Option<Instant>,
    /// The earliest entry this session has in the server's timer heap.
    pub scheduled: Option<Instant>,
}

impl Session {
    pub(super) fn new(id: u64, dtls: Dtls, now: Instant) -> Self {
        Session {
            id,
            dtls,
            created: now,
            last_rx: now,
            connected: false,
            verified: false,
            counted_verified: false,
            rx_bytes: 0,
            tx_bytes: 0,
            psk_identity: None,
            cert_cn: None,
            dimpl_timeout: None,
            scheduled: None,
        }
    }

    /// The identity to announce once connected.
    pub(super) fn identity(&self, cert: Option<&CertConfig>) -> Option<PeerIdentity> {
        if let Some(id) = &self.psk_identity {
            return std::str::from_utf8(id)
                .ok()
                .map(|s| PeerIdentity::Psk(s.to_string()));
        }
        if let Some(cn) = &self.cert_cn {
            return Some(PeerIdentity::Cert { cn: cn.clone() });
        }
        match cert {
            Some(c) if !c.requires_client_cert() => Some(PeerIdentity::Anonymous),
            _ => None,
        }
    }

    /// Polls dimpl until it reports its next timeout.
    pub(super) fn drive(&mut self, peer: SocketAddr, sink: &mut Sink<'_>) -> Result<(), Fatal> {
        loop {
            match self.dtls.poll_output(sink.buf) {
                Output::Packet(p) => {
                    if !self.verified && !is_hello_verify_request(p) {
                        self.verified = true;
                        sink.stats.handshakes_verified += 1;
                    }
                    if !self.verified && self.tx_bytes + p.len() > self.rx_bytes {
                        sink.stats.amplification_drops += 1;
                        continue;
                    }
                    if !self.verified {
                        self.tx_bytes += p.len();
                    }
                    sink.stats.datagrams_out += 1;
                    sink.transmits.push_back((peer, p.to_vec()));
                }
                Output::BufferTooSmall { needed } => {
                    if needed > MAX_OUTPUT || needed <= sink.buf.len() {
                        return Err(Fatal::Output);
                    }
                    sink.buf.resize(needed, 0);
                }
                Output::Timeout(t) => {
                    self.dimpl_timeout = Some(t);
                    return Ok(());
                }
                Output::Connected => {
                    self.connected = true;
                    sink.outputs.push(SessionOutput::Connected);
                }
                Output::PeerCert(der) => match sink.cert {
                    Some(c) => match c.verify_client(der) {
                        Ok(cn) => self.cert_cn = Some(cn),
                        Err(e) => {
                            sink.stats.cert_rejected += 1;
                            return Err(Fatal::Cert(e));
                        }
                    },
                    None => return Err(Fatal::NoIdentity),
                },
                Output::ApplicationData(d) => {
                    sink.stats.app_data_in += 1;
                    sink.outputs.push(SessionOutput::Data(d.to_vec()));
                }
                Output::CloseNotify => sink.outputs.push(SessionOutput::CloseNotify),
                // Keying material (SRTP) and anything newer: not used.
                _ => {}
            }
        }
    }
}

/// A datagram whose first record is an epoch-0 handshake record carrying a
/// HelloVerifyRequest.
fn is_hello_verify_request(p: &[u8]) -> bool {
    p.len() > 13 && p[0] == 22 && p[3] == 0 && p[4] == 0 && p[13] == 3
}

/// How the first record of a datagram routes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Epoch-0 handshake record carrying (the start of) a ClientHello.
    ClientHello,
    /// Another epoch-0 record.
    Epoch0,
    /// A record of epoch 1 or later (encrypted).
    Protected,
    /// Not a DTLS 1.x record.
    Junk,
}

/// Classifies a datagram by its first record header, without trusting it.
pub(crate) fn classify(d: &[u8]) -> Kind {
    let (Some(&ct), Some(&major), Some(&e0), Some(&e1)) = (d.first(), d.get(1), d.get(3), d.get(4))
    else {
        return Kind::Junk;
    };
    if d.len() < 13 || !(20..=25).contains(&ct) || major != 0xfe {
        return Kind::Junk;
    }
    if e0 != 0 || e1 != 0 {
        return Kind::Protected;
    }
    if ct == 22 && d.get(13) == Some(&1) {
        Kind::ClientHello
    } else {
        Kind::Epoch0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_headers() {
        assert_eq!(classify(&[]), Kind::Junk);
        assert_eq!(classify(&[22; 12]), Kind::Junk);
        let mut ch = vec![22, 0xfe, 0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 12, 1];
        assert_eq!(classify(&ch), Kind::ClientHello);
        ch[13] = 16;
        assert_eq!(classify(&ch), Kind::Epoch0);
        ch[4] = 1;
        assert_eq!(classify(&ch), Kind::Protected);
        ch[1] = 3;
        assert_eq!(classify(&ch), Kind::Junk);
        assert_eq!(
            classify(&[0x40, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Kind::Junk
        );
    }

    #[test]
    fn hvr_detection() {
        let mut p = vec![22, 0xfe, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 30, 3];
        assert!(is_hello_verify_request(&p));
        p[13] = 2;
        assert!(!is_hello_verify_request(&p));
        assert!(!is_hello_verify_request(&p[..13]));
    }
}
