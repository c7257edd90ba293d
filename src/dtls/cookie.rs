//! HelloVerifyRequest cookies (RFC 6347 §4.2.1) that every instance of a shard
//! checks alike.
//!
//! dimpl's server computes its cookie as `HMAC-SHA256(secret, client_random)`
//! under a secret of its own, random per instance: a cookie could only be
//! checked by the instance that issued it, so a handshake whose instance was
//! evicted while its cookie was on the way (a storm or a flood filling the
//! half-open table faster than a round trip) could never finish (dimpl's
//! client, holding a cookie, ignores the new HelloVerifyRequests). Here the
//! secret of every instance for a peer is `HMAC-SHA256(key, peer address)`
//! under the shard's key: the cookie stays bound to the address it was sent
//! to, and any later instance for that address accepts it. The key is
//! replaced every [`ROTATION`]; a cookie issued under the previous key is
//! still accepted (so a cookie lives at most two rotations).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use dimpl::crypto::CryptoProvider;

/// How often the shard's cookie key is replaced.
pub(crate) const ROTATION: Duration = Duration::from_secs(60);

/// The shard's cookie keys: the current one and the one before it.
pub(crate) struct CookieKeys {
    provider: CryptoProvider,
    current: [u8; 32],
    previous: [u8; 32],
    /// When `current` was made (None: not yet used at any time).
    since: Option<Instant>,
}

impl CookieKeys {
    pub(crate) fn new(provider: CryptoProvider) -> Self {
        let mut k = CookieKeys {
            provider,
            current: [0; 32],
            previous: [0; 32],
            since: None,
        };
        k.current = k.random();
        k.previous = k.random();
        k
    }

    fn random(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        if self.provider.secure_random.fill(&mut key).is_err() {
            // The provider's generator failed: fall back on the standard
            // library's randomly keyed hasher (still unknown to peers).
            use std::hash::{BuildHasher, RandomState};
            for chunk in key.chunks_mut(8) {
                let v = RandomState::new().hash_one(0u8).to_le_bytes();
                chunk.copy_from_slice(&v[..chunk.len()]);
            }
        }
        key
    }

    /// Replaces the key when the current one is [`ROTATION`] old.
    fn rotate(&mut self, now: Instant) {
        match self.since {
            None => self.since = Some(now),
            Some(t) if now.saturating_duration_since(t) >= ROTATION => {
                self.previous = self.current;
                self.current = self.random();
                self.since = Some(now);
            }
            Some(_) => {}
        }
    }

    /// The cookie secret of an instance for `peer`, whose first datagram is
    /// the ClientHello `hello`: the previous key's when `hello` carries a
    /// cookie made under it, else the current key's.
    pub(crate) fn secret_for(&mut self, now: Instant, peer: SocketAddr, hello: &[u8]) -> [u8; 32] {
        self.rotate(now);
        let current = self.peer_secret(&self.current, peer);
        if let Some((random, cookie)) = hello_random_and_cookie(hello) {
            if cookie.len() == 32 {
                let previous = self.peer_secret(&self.previous, peer);
                if self.cookie(&previous, random) == *cookie {
                    return previous;
                }
            }
        }
        current
    }

    fn peer_secret(&self, key: &[u8; 32], peer: SocketAddr) -> [u8; 32] {
        let mut data = [0u8; 18];
        match peer.ip() {
            IpAddr::V4(ip) => data[..4].copy_from_slice(&ip.octets()),
            IpAddr::V6(ip) => data[..16].copy_from_slice(&ip.octets()),
        }
        data[16..].copy_from_slice(&peer.port().to_be_bytes());
        self.hmac(key, &data)
    }

    /// dimpl's cookie for `random` under `secret`.
    fn cookie(&self, secret: &[u8; 32], random: &[u8]) -> [u8; 32] {
        self.hmac(secret, random)
    }

    fn hmac(&self, key: &[u8], data: &[u8]) -> [u8; 32] {
        self.provider
            .hmac_provider
            .hmac_sha256(key, data)
            .unwrap_or([0; 32])
    }
}

/// Whether the ClientHello datagram `hello` carries a cookie (it answers a
/// HelloVerifyRequest: message_seq 1).
pub(crate) fn carries_cookie(hello: &[u8]) -> bool {
    hello_random_and_cookie(hello).is_some_and(|(_, c)| !c.is_empty())
}

/// The client random and the cookie of a ClientHello datagram whose first
/// record holds the start of the message; `None` if it does not parse.
fn hello_random_and_cookie(d: &[u8]) -> Option<(&[u8], &[u8])> {
    // Record header (13), handshake header (12): type 1, length 3, message_seq 2,
    // fragment_offset 3, fragment_length 3.
    let hs = d.get(13..25)?;
    if hs[0] != 1 || hs[6..9] != [0, 0, 0] {
        return None;
    }
    let body = d.get(25..)?;
    // client_version 2, random 32, session_id <0..32>, cookie <0..255>.
    let random = body.get(2..34)?;
    let sid_len = *body.get(34)? as usize;
    let at = 35 + sid_len;
    let cookie_len = *body.get(at)? as usize;
    let cookie = body.get(at + 1..at + 1 + cookie_len)?;
    Some((random, cookie))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> CookieKeys {
        CookieKeys::new(dimpl::crypto::rust_crypto::default_provider())
    }

    /// A ClientHello datagram (record and handshake headers, body) with `cookie`.
    fn hello(random: [u8; 32], cookie: &[u8]) -> Vec<u8> {
        let mut d = vec![22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        d.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        d.extend_from_slice(&[254, 253]);
        d.extend_from_slice(&random);
        d.push(0);
        d.push(cookie.len() as u8);
        d.extend_from_slice(cookie);
        d.extend_from_slice(&[0, 2, 0xc0, 0xa8, 1, 0]);
        d
    }

    #[test]
    fn the_secret_is_the_peers_and_survives_one_rotation() {
        let mut k = keys();
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let no_cookie = hello([7; 32], &[]);
        let sa = k.secret_for(t0, a, &no_cookie);
        // Stable for one address, different for another (port included).
        assert_eq!(k.secret_for(t0 + Duration::from_secs(1), a, &no_cookie), sa);
        assert_ne!(k.secret_for(t0, b, &no_cookie), sa);
        // The cookie dimpl issued under `sa`, after one rotation: still `sa`.
        let cookie = k.cookie(&sa, &[7; 32]);
        let with_cookie = hello([7; 32], &cookie);
        let t1 = t0 + ROTATION;
        assert_eq!(k.secret_for(t1, a, &with_cookie), sa);
        // Without that cookie the new key's secret, and after a second
        // rotation the old cookie is no longer recognised.
        let new = k.secret_for(t1, a, &no_cookie);
        assert_ne!(new, sa);
        assert_ne!(k.secret_for(t1 + ROTATION, a, &with_cookie), sa);
    }

    #[test]
    fn hostile_hellos_do_not_parse() {
        assert!(hello_random_and_cookie(&[]).is_none());
        assert!(hello_random_and_cookie(&[22; 30]).is_none());
        let mut h = hello([1; 32], &[9; 32]);
        assert_eq!(hello_random_and_cookie(&h).unwrap().1, &[9; 32]);
        h[34 + 25] = 200; // session_id length past the end
        assert!(hello_random_and_cookie(&h).is_none());
        let mut frag = hello([1; 32], &[]);
        frag[13 + 8] = 1; // a later fragment
        assert!(hello_random_and_cookie(&frag).is_none());
    }
}
