//! Registration locations (`rd/<location>`) that cannot be guessed.
//!
//! Over plain UDP an Update or De-register is accepted from any address (NAT
//! rebinding), so the location is what a request proves the registration with: it
//! must not be predictable from other locations. Each shard numbers its
//! registrations (`shard << 48 | counter`) and the location is that number under a
//! keyed permutation of 64-bit values: a six-round Feistel network whose round
//! function is SipHash-2-4 under a 128-bit secret key. A permutation never maps two
//! numbers to one location, so locations of live registrations never collide, and
//! without the key one location says nothing about another. The key comes from the
//! caller (the engine draws it from the OS), so this stays deterministic.

/// Feistel rounds (four already make a strong pseudo-random permutation when the
/// round function is a pseudo-random function).
const ROUNDS: u64 = 6;

/// A keyed permutation of `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocationCipher {
    key: [u64; 2],
}

impl LocationCipher {
    pub fn new(key: [u64; 2]) -> Self {
        Self { key }
    }

    /// The location of registration number `n`.
    pub fn encrypt(&self, n: u64) -> u64 {
        let (mut l, mut r) = ((n >> 32) as u32, n as u32);
        for round in 0..ROUNDS {
            let f = siphash24(self.key, round << 32 | u64::from(r)) as u32;
            (l, r) = (r, l ^ f);
        }
        u64::from(l) << 32 | u64::from(r)
    }

    /// The registration number of a location (the inverse of [`Self::encrypt`]).
    pub fn decrypt(&self, location: u64) -> u64 {
        let (mut l, mut r) = ((location >> 32) as u32, location as u32);
        for round in (0..ROUNDS).rev() {
            let f = siphash24(self.key, round << 32 | u64::from(l)) as u32;
            (l, r) = (r ^ f, l);
        }
        u64::from(l) << 32 | u64::from(r)
    }
}

/// SipHash-2-4 (Aumasson and Bernstein) of the 8 little-endian bytes of `m`.
fn siphash24(key: [u64; 2], m: u64) -> u64 {
    let mut v = [
        key[0] ^ 0x736f_6d65_7073_6575,
        key[1] ^ 0x646f_7261_6e64_6f6d,
        key[0] ^ 0x6c79_6765_6e65_7261,
        key[1] ^ 0x7465_6462_7974_6573,
    ];
    let round = |v: &mut [u64; 4]| {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    };
    // The message block, then the final block holding the length (8) in its top byte.
    for block in [m, 8u64 << 56] {
        v[3] ^= block;
        round(&mut v);
        round(&mut v);
        v[0] ^= block;
    }
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn siphash_matches_the_reference() {
        // The reference implementation's test vector for the 8-byte message 00..07
        // under the key 00..0f.
        let key = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];
        assert_eq!(
            siphash24(key, 0x0706_0504_0302_0100).to_le_bytes(),
            [0x62, 0x24, 0x93, 0x9a, 0x79, 0xf5, 0xf5, 0x93]
        );
        // And std's (deprecated) SipHash-2-4 for other inputs.
        #[allow(deprecated)]
        for (k, m) in [([1u64, 2u64], 3u64), ([u64::MAX, 0], 0), ([7, 9], u64::MAX)] {
            use std::hash::Hasher;
            let mut h = std::hash::SipHasher::new_with_keys(k[0], k[1]);
            h.write(&m.to_le_bytes());
            assert_eq!(siphash24(k, m), h.finish());
        }
    }

    #[test]
    fn a_keyed_permutation() {
        let c = LocationCipher::new([0x0123_4567_89ab_cdef, 0x0fed_cba9_8765_4321]);
        let mut seen = std::collections::HashSet::new();
        for shard in [0u64, 1, 7] {
            for n in 0..20_000u64 {
                let x = shard << 48 | n;
                let loc = c.encrypt(x);
                assert_eq!(c.decrypt(loc), x);
                assert!(seen.insert(loc), "no two numbers share a location");
            }
        }
        // Consecutive numbers give unrelated locations: about half the bits differ.
        let flips: u32 = (0..1000u64)
            .map(|n| (c.encrypt(n) ^ c.encrypt(n + 1)).count_ones())
            .sum();
        assert!((28_000..36_000).contains(&flips), "{flips}");
        // Another key, other locations.
        let other = LocationCipher::new([1, 2]);
        assert!((0..100u64).all(|n| other.encrypt(n) != c.encrypt(n)));
    }
}
