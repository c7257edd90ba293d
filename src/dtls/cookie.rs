//! HelloVerifyRequest cookies (RFC 6347 §4.2.1): the server checks them
//! without keeping any state (`hello_verify.rs`), and the dimpl instance a
//! valid one creates checks it again alike.
//!
//! dimpl's server computes its cookie as `HMAC-SHA256(secret, client_random)`.
//! Here the secret for a peer is `HMAC-SHA256(key, peer address)` under the
//! shard's key, and every instance for that peer is given it: the cookie stays
//! bound to the address it was sent to, and is checked the same way before an
//! instance exists and in it. The key is replaced every [`ROTATION`]; a cookie
//! issued under the previous key is still accepted (so a cookie lives one to
//! two rotations).

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

    /// Checks the `cookie` of `peer`'s ClientHello with `random`: the secret
    /// it was made under (the current key's, else the previous one's), or,
    /// when it is neither (none, forged, for another address, or older), the
    /// cookie to send in a HelloVerifyRequest (under the current key). Two
    /// HMACs, four for a cookie that is not the current key's.
    pub(crate) fn check(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        random: &[u8],
        cookie: &[u8],
    ) -> Result<[u8; 32], [u8; 32]> {
        self.rotate(now);
        let secret = self.peer_secret(&self.current, peer);
        let fresh = self.cookie(&secret, random);
        if cookie.len() != 32 {
            return Err(fresh);
        }
        if same(&fresh, cookie) {
            return Ok(secret);
        }
        let previous = self.peer_secret(&self.previous, peer);
        if same(&self.cookie(&previous, random), cookie) {
            return Ok(previous);
        }
        Err(fresh)
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

/// `a == b` in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> CookieKeys {
        CookieKeys::new(dimpl::crypto::rust_crypto::default_provider())
    }

    #[test]
    fn a_cookie_is_the_peers_and_survives_one_rotation() {
        let mut k = keys();
        let t0 = Instant::now();
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let cookie = k.check(t0, a, &[7; 32], &[]).unwrap_err();
        // Stable for one address and random, different for another port.
        let t = t0 + Duration::from_secs(1);
        assert_eq!(k.check(t, a, &[7; 32], &[]), Err(cookie));
        assert_ne!(k.check(t0, b, &[7; 32], &[]), Err(cookie));
        assert_ne!(k.check(t0, a, &[8; 32], &[]), Err(cookie));
        // It verifies for its address and random only, and the secret it
        // gives is the one dimpl computes it under.
        let secret = k.check(t0, a, &[7; 32], &cookie).unwrap();
        assert_eq!(k.cookie(&secret, &[7; 32]), cookie);
        assert!(k.check(t0, b, &[7; 32], &cookie).is_err());
        assert!(k.check(t0, a, &[8; 32], &cookie).is_err());
        assert!(k.check(t0, a, &[7; 32], &cookie[..31]).is_err());
        let mut forged = cookie;
        forged[31] ^= 1;
        // A wrong cookie gets the right one back.
        assert_eq!(k.check(t0, a, &[7; 32], &forged), Err(cookie));
        // After one rotation: still accepted (under the previous key), and a
        // new cookie is issued under the new key.
        let t1 = t0 + ROTATION;
        assert_eq!(k.check(t1, a, &[7; 32], &cookie), Ok(secret));
        assert_ne!(k.check(t1, a, &[7; 32], &[]), Err(cookie));
        // After a second one: no longer.
        assert!(k.check(t1 + ROTATION, a, &[7; 32], &cookie).is_err());
    }
}
