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

/// Length of a DTLS record header: type, version, epoch, sequence number, length.
const RECORD_HEADER: usize = 13;
/// Length of a DTLS handshake message header (type, length, message_seq,
/// fragment_offset, fragment_length).
const HANDSHAKE_HEADER: usize = 12;

/// The record-layer version of every epoch-0 ClientHello record of `d` set to
/// DTLS 1.0's {254, 255} where it is another {254, x}; `None` when no record
/// needs it (the datagram then goes to dimpl as it came, without a copy).
///
/// A client that does not know yet which version it will get may put any
/// {254, x} on its ClientHello (RFC 6347 §4: what DTLS does not call out is as in
/// TLS 1.2, whose Appendix E.1 has servers accept any {03, XX} there; RFC 9147 §4:
/// the field is to be ignored). mbedTLS 2.28 puts its configured minimum, 0xFE00
/// by default in Anjay; dimpl 0.9 drops every record whose version is not
/// 0xFEFF or 0xFEFD. The version of an epoch-0 record enters no MAC, no
/// handshake hash and no cookie, and dimpl reads it nowhere past parsing, so
/// the rewrite changes nothing else. Only records of type handshake, epoch 0,
/// whose fragment starts with a ClientHello handshake header are touched (each
/// fragment of a fragmented ClientHello carries one); any other record, of any
/// version, is left for dimpl to judge. The walk follows the length fields as
/// dimpl does and stops at the first record that does not fit (dimpl refuses
/// such a datagram whole).
pub(crate) fn normalise_client_hello(d: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut pos = 0usize;
    while let Some(h) = d.get(pos..pos + RECORD_HEADER) {
        let len = usize::from(u16::from_be_bytes([h[11], h[12]]));
        let end = pos + RECORD_HEADER + len;
        let Some(fragment) = d.get(pos + RECORD_HEADER..end) else {
            break;
        };
        let client_hello = h[0] == 22
            && h[1] == 0xfe
            && h[3] == 0
            && h[4] == 0
            && fragment.len() >= HANDSHAKE_HEADER
            && fragment[0] == 1;
        if client_hello && h[2] != 0xff && h[2] != 0xfd {
            out.get_or_insert_with(|| d.to_vec())[pos + 2] = 0xff;
        }
        pos = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_table_entry_stays_small() {
        // A listener holds one per established device, 100,000s of them idle:
        // dimpl keeps its state on the heap (its DTLS 1.2 server, not the size of
        // its largest variant), so an entry is a pointer and a few fields.
        let dtls = size_of::<Dtls>();
        assert!(dtls <= 64, "dimpl::Dtls is {dtls} bytes");
        let session = size_of::<Session>();
        assert!(session <= 256, "Session is {session} bytes");
    }

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

    /// A record: `ct`, version {254, `minor`}, `epoch`, sequence 0, `fragment`.
    fn record(ct: u8, minor: u8, epoch: u8, fragment: &[u8]) -> Vec<u8> {
        let mut r = vec![ct, 0xfe, minor, 0, epoch, 0, 0, 0, 0, 0, 0];
        r.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
        r.extend_from_slice(fragment);
        r
    }

    /// A handshake fragment of type `msg` (12-byte header and 4 bytes of body).
    fn hs(msg: u8) -> Vec<u8> {
        vec![msg, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 4, 0xfe, 0xfd, 1, 2]
    }

    #[test]
    fn client_hello_record_versions_are_normalised() {
        for minor in [0x00, 0x01, 0xfe, 0x7f] {
            let ch = record(22, minor, 0, &hs(1));
            let out = normalise_client_hello(&ch).expect("rewritten");
            assert_eq!(out[1..3], [0xfe, 0xff]);
            assert_eq!(out[..1], ch[..1]);
            assert_eq!(out[3..], ch[3..]);
            assert_eq!(classify(&out), Kind::ClientHello);
            assert_eq!(normalise_client_hello(&out), None, "idempotent");
        }
        // DTLS 1.0 and 1.2: as they came, no copy.
        for minor in [0xff, 0xfd] {
            assert_eq!(normalise_client_hello(&record(22, minor, 0, &hs(1))), None);
        }
    }

    #[test]
    fn other_records_keep_their_version() {
        // Not a ClientHello, not epoch 0, not handshake, not {254, x}, no
        // complete handshake header: left to dimpl.
        for r in [
            record(22, 0x00, 0, &hs(16)),
            record(22, 0x00, 1, &hs(1)),
            record(21, 0x00, 0, &[1, 0]),
            record(20, 0x00, 0, &[1]),
            record(22, 0x00, 0, &hs(1)[..11]),
            record(22, 0x00, 0, &[]),
        ] {
            assert_eq!(normalise_client_hello(&r), None, "{r:?}");
        }
        let mut tls = record(22, 0x00, 0, &hs(1));
        tls[1] = 0x03;
        assert_eq!(normalise_client_hello(&tls), None);
    }

    #[test]
    fn each_record_of_a_datagram_is_judged_alone() {
        // ClientHello fragments are rewritten, the alert between them is not.
        let mut d = record(22, 0x00, 0, &hs(1));
        let alert = d.len();
        d.extend(record(21, 0x00, 0, &[2, 40]));
        let second = d.len();
        d.extend(record(22, 0x01, 0, &hs(1)));
        let out = normalise_client_hello(&d).unwrap();
        assert_eq!(out[2], 0xff);
        assert_eq!(out[alert + 2], 0x00);
        assert_eq!(out[second + 2], 0xff);
        assert_eq!(out.len(), d.len());
    }

    #[test]
    fn lying_lengths_and_truncated_headers() {
        let ch = record(22, 0x00, 0, &hs(1));
        // Truncated anywhere: the incomplete record is not touched.
        for n in 0..ch.len() {
            assert_eq!(normalise_client_hello(&ch[..n]), None, "{n}");
        }
        // A length longer than the datagram.
        let mut long = ch.clone();
        long[11..13].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(normalise_client_hello(&long), None);
        // A complete ClientHello followed by a truncated header or a record
        // whose length lies: the first is rewritten, the rest left alone.
        let mut d = ch.clone();
        d.extend_from_slice(&record(22, 0x00, 0, &hs(1))[..7]);
        let out = normalise_client_hello(&d).unwrap();
        assert_eq!((out[2], &out[ch.len()..]), (0xff, &d[ch.len()..]));
        let mut d = ch.clone();
        let mut lie = record(22, 0x00, 0, &hs(1));
        lie[12] += 1;
        d.extend(lie);
        let out = normalise_client_hello(&d).unwrap();
        assert_eq!((out[2], &out[ch.len()..]), (0xff, &d[ch.len()..]));
        // Random bytes: same length, only version bytes of epoch-0 handshake
        // records change, and never to anything but 0xff.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for i in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let mut d: Vec<u8> = (0..len)
                .map(|k| (seed.rotate_left(k as u32 * 7) >> 3) as u8)
                .collect();
            if i % 2 == 0 && len > 14 {
                d[..5].copy_from_slice(&[22, 0xfe, 0, 0, 0]);
                d[11..13].copy_from_slice(&((len - 13) as u16).to_be_bytes());
                d[13] = 1;
            }
            if let Some(out) = normalise_client_hello(&d) {
                assert_eq!(out.len(), d.len());
                for (k, (a, b)) in d.iter().zip(&out).enumerate() {
                    if a != b {
                        assert_eq!(*b, 0xff);
                        assert!(k >= 2 && out[k - 1] == 0xfe && out[k - 2] == 22);
                    }
                }
            }
        }
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
