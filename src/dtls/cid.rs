//! Connection IDs (RFC 9146) this server issues, and which session holds each.
//!
//! Every handshake is offered a CID of `len` bytes (at least 6): the index of
//! the shard whose server issued it (2 bytes), then bytes derived from its
//! session id (unique per server) under a random per-server mask, so two
//! sessions of one server never share a CID while it has fewer than
//! 2^(8·(len − 2)) sessions. A record of content type 25 (tls12_cid) names its
//! session, and the shard that holds it, by the bytes after its sequence number,
//! whatever address (and so whatever shard's socket) it came from.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;

/// Content type of a DTLS 1.2 record with a connection ID.
const TLS12_CID: u8 = 25;
/// Where the CID starts in a tls12_cid record: type, version, epoch, sequence number.
const CID_AT: usize = 11;

/// Bytes of a CID that name the shard holding its session.
const SHARD_LEN: usize = 2;

pub(super) struct CidTable {
    len: usize,
    mask: u64,
    /// This server's shard and the number of shards.
    shard: u16,
    shards: u16,
    /// CID → (current address, session id) of the established session.
    by_cid: HashMap<Vec<u8>, (SocketAddr, u64)>,
}

impl CidTable {
    /// `len` 0: connection IDs off.
    pub(super) fn new(len: usize) -> Self {
        let mut h = RandomState::new().build_hasher();
        h.write_u64(len as u64);
        CidTable {
            len,
            mask: h.finish(),
            shard: 0,
            shards: 1,
            by_cid: HashMap::new(),
        }
    }

    pub(super) fn enabled(&self) -> bool {
        self.len > SHARD_LEN
    }

    /// This server is shard `shard` of `shards`.
    pub(super) fn set_shard(&mut self, shard: u16, shards: u16) {
        self.shard = shard;
        self.shards = shards.max(1);
    }

    /// The shard that issued `cid`, when another one of this gateway.
    pub(super) fn other_shard(&self, cid: &[u8]) -> Option<u16> {
        let s = u16::from_be_bytes([*cid.first()?, *cid.get(1)?]);
        (s != self.shard && s < self.shards).then_some(s)
    }

    /// The CID offered to session `id`.
    pub(super) fn issue(&self, id: u64) -> Vec<u8> {
        // An odd multiplier and a xor: a bijection of u64, so the low bytes of
        // distinct ids below 2^(8·(len − 2)) differ.
        let v = (id.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ self.mask).to_le_bytes();
        let pad = self.mask.to_be_bytes();
        let rest = (0..self.len - SHARD_LEN).map(|i| if i < 8 { v[i] } else { pad[i % 8] });
        self.shard.to_be_bytes().into_iter().chain(rest).collect()
    }

    /// The CID of a tls12_cid record, when `d` is one of this length.
    pub(super) fn record_cid<'a>(&self, d: &'a [u8]) -> Option<&'a [u8]> {
        if !self.enabled() || d.first() != Some(&TLS12_CID) {
            return None;
        }
        d.get(CID_AT..CID_AT + self.len + 2).map(|c| &c[..self.len])
    }

    /// Session `id` at `peer` now answers to `cid`.
    pub(super) fn insert(&mut self, cid: &[u8], peer: SocketAddr, id: u64) {
        self.by_cid.insert(cid.to_vec(), (peer, id));
    }

    pub(super) fn lookup(&self, cid: &[u8]) -> Option<(SocketAddr, u64)> {
        self.by_cid.get(cid).copied()
    }

    /// Drops entries whose session is gone, once they outnumber the live ones.
    pub(super) fn prune(&mut self, live: usize, alive: impl Fn(SocketAddr, u64) -> bool) {
        if self.by_cid.len() > 2 * live + 64 {
            self.by_cid.retain(|_, (a, id)| alive(*a, *id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cids_are_distinct_and_found_in_records() {
        let mut t = CidTable::new(6);
        t.set_shard(3, 4);
        let a = t.issue(1);
        assert_eq!(a.len(), 6);
        assert_eq!(&a[..2], &[0, 3]);
        assert_eq!(t.other_shard(&a), None);
        assert_eq!(t.other_shard(&[0, 1, 9]), Some(1));
        assert_eq!(t.other_shard(&[0, 4, 9]), None, "no such shard");
        let all: std::collections::HashSet<_> = (0..10_000).map(|i| t.issue(i)).collect();
        assert_eq!(all.len(), 10_000);
        let mut rec = vec![25, 0xfe, 0xfd, 0, 1, 0, 0, 0, 0, 0, 7];
        assert!(!CidTable::new(2).enabled());
        rec.extend(&a);
        assert_eq!(t.record_cid(&rec), None, "no length field");
        rec.extend([0, 0]);
        assert_eq!(t.record_cid(&rec), Some(&a[..]));
        rec[0] = 23;
        assert_eq!(t.record_cid(&rec), None);
        assert_eq!(CidTable::new(0).record_cid(&rec), None);
        assert_eq!(CidTable::new(12).issue(3).len(), 12);
    }
}
