//! The stateless cookie exchange (RFC 6347 §4.2.1): a ClientHello from an
//! address with no handshake in progress is answered here, without a dimpl
//! instance and without an entry in any table.
//!
//! ```text
//! ClientHello, no cookie or a wrong one ─► HelloVerifyRequest written here (nothing kept)
//! ClientHello with a valid cookie       ─► a dimpl instance, past the cookie exchange
//! ```
//!
//! The cookie is exactly what the instance checks again: dimpl's
//! `HMAC-SHA256(secret, client_random)` under the address's secret of
//! [`CookieKeys`] (current key, or the previous one). The HelloVerifyRequest is
//! the one dimpl's instance would send: record version DTLS 1.2, server_version
//! DTLS 1.0 (RFC 6347 §4.2.1), a 32-byte cookie; its record sequence number is
//! the ClientHello's (RFC 6347 §4.2.1, so that HelloVerifyRequests to one
//! client never repeat one) and its message_seq echoes the ClientHello's.

use std::net::SocketAddr;
use std::time::Instant;

use super::cookie::CookieKeys;

/// Record header: type, version, epoch, sequence number, length.
const RECORD_HEADER: usize = 13;
/// Handshake header: type, length, message_seq, fragment_offset, fragment_length.
const HANDSHAKE_HEADER: usize = 12;
/// Handshake message types.
const CLIENT_HELLO: u8 = 1;
const HELLO_VERIFY_REQUEST: u8 = 3;
/// Content type handshake.
const HANDSHAKE: u8 = 22;
/// What dimpl puts on its records and in its HelloVerifyRequest.
const DTLS_1_2: [u8; 2] = [0xfe, 0xfd];
const DTLS_1_0: [u8; 2] = [0xfe, 0xff];
/// The length of dimpl's cookie (an HMAC-SHA256).
const COOKIE_LEN: usize = 32;
/// The longest session ID (RFC 5246 §7.4.1.2).
const MAX_SESSION_ID: usize = 32;

/// What the stateless exchange needs of a ClientHello (its first record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClientHello<'a> {
    /// The record's sequence number (48 bits).
    pub record_seq: u64,
    pub message_seq: u16,
    pub random: &'a [u8],
    pub cookie: &'a [u8],
}

/// Reads the ClientHello in the first record of `d`, checking every length;
/// `None` when it is not an epoch-0 handshake record whose fragment is the
/// start of a ClientHello holding at least the random, session ID and cookie.
pub(crate) fn parse_client_hello(d: &[u8]) -> Option<ClientHello<'_>> {
    let h = d.get(..RECORD_HEADER)?;
    if h[0] != HANDSHAKE || h[1] != 0xfe || h[3..5] != [0, 0] {
        return None;
    }
    let record_seq = h[5..11].iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
    let len = usize::from(u16::from_be_bytes([h[11], h[12]]));
    let fragment = d.get(RECORD_HEADER..RECORD_HEADER + len)?;
    let hs = fragment.get(..HANDSHAKE_HEADER)?;
    let u24 = |b: &[u8]| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    let (length, offset, frag_len) = (u24(&hs[1..4]), u24(&hs[6..9]), u24(&hs[9..12]));
    if hs[0] != CLIENT_HELLO || offset != 0 || frag_len > length {
        return None;
    }
    let message_seq = u16::from_be_bytes([hs[4], hs[5]]);
    let body = fragment.get(HANDSHAKE_HEADER..HANDSHAKE_HEADER + frag_len)?;
    // client_version 2, random 32, session_id <0..32>, cookie <0..2^8-1>.
    let random = body.get(2..34)?;
    let sid_len = usize::from(*body.get(34)?);
    if sid_len > MAX_SESSION_ID {
        return None;
    }
    let at = 35 + sid_len;
    let cookie_len = usize::from(*body.get(at)?);
    let cookie = body.get(at + 1..at + 1 + cookie_len)?;
    Some(ClientHello {
        record_seq,
        message_seq,
        random,
        cookie,
    })
}

/// The HelloVerifyRequest datagram answering `ch` with `cookie`.
pub(crate) fn hello_verify_request(ch: &ClientHello<'_>, cookie: &[u8; COOKIE_LEN]) -> Vec<u8> {
    let body_len = 2 + 1 + COOKIE_LEN;
    let fragment_len = HANDSHAKE_HEADER + body_len;
    let mut d = Vec::with_capacity(RECORD_HEADER + fragment_len);
    d.push(HANDSHAKE);
    d.extend_from_slice(&DTLS_1_2);
    d.extend_from_slice(&[0, 0]); // epoch
    d.extend_from_slice(&(ch.record_seq & 0xffff_ffff_ffff).to_be_bytes()[2..]);
    d.extend_from_slice(&(fragment_len as u16).to_be_bytes());
    d.push(HELLO_VERIFY_REQUEST);
    let len24 = &(body_len as u32).to_be_bytes()[1..];
    d.extend_from_slice(len24); // length
    d.extend_from_slice(&ch.message_seq.to_be_bytes());
    d.extend_from_slice(&[0, 0, 0]); // fragment_offset
    d.extend_from_slice(len24); // fragment_length
    d.extend_from_slice(&DTLS_1_0); // server_version
    d.push(COOKIE_LEN as u8);
    d.extend_from_slice(cookie);
    d
}

/// What to do with a ClientHello from an address with no handshake.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not a ClientHello that can be answered: drop it, count it.
    Malformed,
    /// Send this HelloVerifyRequest (the ClientHello had no cookie, or
    /// `invalid`: one that does not verify) and keep nothing.
    Answer { hvr: Vec<u8>, invalid: bool },
    /// The cookie verifies: an instance with this cookie secret, whose first
    /// epoch-0 record has sequence number `record_seq`, takes the ClientHello.
    Admit { secret: [u8; 32], record_seq: u64 },
}

/// Judges the ClientHello datagram `d` from `peer` at `now`.
pub(crate) fn judge(keys: &mut CookieKeys, now: Instant, peer: SocketAddr, d: &[u8]) -> Verdict {
    let Some(ch) = parse_client_hello(d) else {
        return Verdict::Malformed;
    };
    match keys.check(now, peer, ch.random, ch.cookie) {
        Ok(secret) => Verdict::Admit {
            secret,
            record_seq: ch.record_seq,
        },
        Err(cookie) => Verdict::Answer {
            hvr: hello_verify_request(&ch, &cookie),
            invalid: !ch.cookie.is_empty(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello datagram: record sequence `seq`, message_seq `mseq`.
    fn hello(seq: u64, mseq: u16, random: [u8; 32], sid: &[u8], cookie: &[u8]) -> Vec<u8> {
        let mut body = vec![0xfe, 0xfd];
        body.extend_from_slice(&random);
        body.push(sid.len() as u8);
        body.extend_from_slice(sid);
        body.push(cookie.len() as u8);
        body.extend_from_slice(cookie);
        body.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]);
        let n = (body.len() as u32).to_be_bytes();
        let mut hs = vec![1, n[1], n[2], n[3]];
        hs.extend_from_slice(&mseq.to_be_bytes());
        hs.extend_from_slice(&[0, 0, 0, n[1], n[2], n[3]]);
        hs.extend_from_slice(&body);
        let mut d = vec![22, 0xfe, 0xfd, 0, 0];
        d.extend_from_slice(&seq.to_be_bytes()[2..]);
        d.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        d.extend_from_slice(&hs);
        d
    }

    #[test]
    fn a_client_hello_parses() {
        let d = hello(0x0102_0304_0506, 7, [9; 32], &[5; 32], &[8; 32]);
        let ch = parse_client_hello(&d).unwrap();
        assert_eq!(ch.record_seq, 0x0102_0304_0506);
        assert_eq!(ch.message_seq, 7);
        assert_eq!(ch.random, &[9; 32]);
        assert_eq!(ch.cookie, &[8; 32]);
    }

    #[test]
    fn the_hello_verify_request_answers_its_client_hello() {
        let d = hello(42, 1, [3; 32], &[], &[1; 5]);
        let ch = parse_client_hello(&d).unwrap();
        let hvr = hello_verify_request(&ch, &[0xaa; 32]);
        assert_eq!(hvr.len(), 13 + 12 + 35);
        assert_eq!(hvr[..3], [22, 0xfe, 0xfd]);
        assert_eq!(hvr[3..11], [0, 0, 0, 0, 0, 0, 0, 42]);
        assert_eq!(hvr[11..13], [0, 47]);
        assert_eq!(hvr[13..25], [3, 0, 0, 35, 0, 1, 0, 0, 0, 0, 0, 35]);
        assert_eq!(hvr[25..28], [0xfe, 0xff, 32]);
        assert_eq!(hvr[28..], [0xaa; 32]);
        // Never larger than the smallest ClientHello it can answer.
        let smallest = hello(0, 0, [0; 32], &[], &[]);
        assert!(hvr.len() < smallest.len() - 6);
    }

    struct Key;
    impl dimpl::PskResolver for Key {
        fn resolve(&self, _identity: &[u8]) -> Option<Vec<u8>> {
            Some(vec![7; 16])
        }
    }

    /// A dimpl PSK instance: a server, or a client (started).
    fn instance(client: bool, now: Instant) -> dimpl::Dtls {
        use dimpl::crypto::Dtls12CipherSuite;
        use std::sync::Arc;
        let builder = dimpl::Config::builder()
            .dtls12_cipher_suites(&[Dtls12CipherSuite::PSK_AES128_CCM_8])
            .dtls13_cipher_suites(&[])
            .use_server_cookie(true);
        let builder = if client {
            builder.with_psk_client(b"dev".to_vec(), Arc::new(Key))
        } else {
            builder.with_psk_server(None, Arc::new(Key))
        };
        let mut d = dimpl::Dtls::new_12_psk(Arc::new(builder.build().unwrap()), now);
        if client {
            d.set_active(true);
        }
        d.handle_timeout(now).unwrap();
        d
    }

    fn first_packet(d: &mut dimpl::Dtls) -> Vec<u8> {
        let mut buf = vec![0; 2048];
        loop {
            match d.poll_output(&mut buf) {
                dimpl::Output::Packet(p) => return p.to_vec(),
                dimpl::Output::Timeout(_) => panic!("no packet"),
                _ => {}
            }
        }
    }

    /// The HelloVerifyRequest written here is byte for byte the one a dimpl
    /// instance with the same cookie secret sends, and a dimpl client answers
    /// it with the cookie in a ClientHello of message_seq 1.
    #[test]
    fn the_hello_verify_request_is_dimpls() {
        let now = Instant::now();
        let mut client = instance(true, now);
        let hello = first_packet(&mut client);
        let ch = parse_client_hello(&hello).unwrap();
        assert_eq!((ch.record_seq, ch.message_seq, ch.cookie), (0, 0, &[][..]));
        let secret = [0x5a; 32];
        let mut server = instance(false, now);
        assert!(server.set_cookie_secret(secret));
        server.handle_packet(&hello).unwrap();
        let theirs = first_packet(&mut server);
        let cookie = dimpl::crypto::rust_crypto::default_provider()
            .hmac_provider
            .hmac_sha256(&secret, ch.random)
            .unwrap();
        let ours = hello_verify_request(&ch, &cookie);
        assert_eq!(ours, theirs);
        client.handle_packet(&ours).unwrap();
        let again = first_packet(&mut client);
        let ch2 = parse_client_hello(&again).unwrap();
        assert_eq!((ch2.record_seq, ch2.message_seq), (1, 1));
        assert_eq!(ch2.cookie, &cookie[..]);
        assert_eq!(ch2.random, ch.random);
    }

    #[test]
    fn hostile_client_hellos_do_not_parse() {
        let good = hello(0, 0, [1; 32], &[2; 4], &[3; 32]);
        // Truncated anywhere before the end of the cookie.
        let end_of_cookie = 13 + 12 + 2 + 32 + 1 + 4 + 1 + 32;
        for n in 0..end_of_cookie {
            assert_eq!(parse_client_hello(&good[..n]), None, "{n}");
        }
        let bad = |at: usize, v: u8| {
            let mut d = good.clone();
            d[at] = v;
            parse_client_hello(&d).map(|ch| ch.record_seq)
        };
        assert_eq!(bad(0, 23), None, "not a handshake record");
        assert_eq!(bad(1, 3), None, "not DTLS");
        assert_eq!(bad(4, 1), None, "epoch 1");
        assert_eq!(bad(12, 0xff), None, "record length past the datagram");
        assert_eq!(bad(13, 2), None, "not a ClientHello");
        assert_eq!(bad(13 + 8, 1), None, "a later fragment");
        assert_eq!(bad(13 + 3, 1), None, "fragment longer than the message");
        assert_eq!(bad(13 + 12 + 34, 33), None, "session ID too long");
        assert_eq!(bad(13 + 12 + 34, 200), None, "session ID past the end");
        assert_eq!(bad(13 + 12 + 39, 255), None, "cookie past the end");
        // Random bytes never panic.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for i in 0..50_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let mut d = if i % 3 == 0 {
                good.clone()
            } else {
                vec![0; (seed % 200) as usize]
            };
            let flips = 1 + (seed >> 60) as usize;
            for k in 0..flips {
                if d.is_empty() {
                    break;
                }
                let at = (seed.rotate_left(9 * k as u32) as usize) % d.len();
                d[at] = (seed >> (8 * (k % 8))) as u8;
            }
            let cut = (seed.rotate_left(31) as usize) % (d.len() + 1);
            let _ = parse_client_hello(&d[..cut]);
        }
    }
}
