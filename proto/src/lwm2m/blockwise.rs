//! Block-wise transfer (RFC 7959), transparent to MQTT: applications publish and
//! receive whole payloads; blocks exist only on the CoAP side. This file holds what the
//! gateway as CoAP client (`block_client.rs`) and as CoAP server (`block_server.rs`)
//! share: block sizes, the accounting of held bytes (every holder gives its bytes back
//! when dropped), the limits that refuse or end a transfer, and rebuilding a message
//! around a reassembled body.
//!
//! Limits: bodies beyond `max_body_size` are refused (4.13 with Size1) or aborted
//! with an error on MQTT. Everything block-wise state holds (a write's whole body,
//! a response being reassembled, a device's partial request body and its request
//! key, a stored Block2 response of ours) counts in the shard's [`HeldBytes`] and
//! against a per-device and a per-shard cap; each refusal is counted under its
//! [`BlockLimit`].

use super::stats::CoreStats;
use crate::coap::{opt, Message, MessageWriter, MsgType};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The size exponent of a block size (16 → 0 … 1024 → 6), rounding down.
pub fn szx_of(size: usize) -> u8 {
    let mut szx = 0u8;
    while szx < 6 && (16usize << (szx + 1)) <= size {
        szx += 1;
    }
    szx
}

pub(super) fn size_of(szx: u8) -> usize {
    16 << szx
}

/// A limit of block-wise transfer that refused or ended something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockLimit {
    /// A body beyond `blockwise.max_body_size`.
    MaxBodySize,
    /// The bytes one device may hold in block-wise state.
    DeviceCap,
    /// The bytes one shard may hold in block-wise state.
    ShardCap,
    /// The number of partial request bodies a shard holds (refused or evicted).
    Partials,
    /// `max_conn_rate`, taken by the first block of a Register.
    Rate,
}

impl BlockLimit {
    pub const ALL: [BlockLimit; 5] = [
        BlockLimit::MaxBodySize,
        BlockLimit::DeviceCap,
        BlockLimit::ShardCap,
        BlockLimit::Partials,
        BlockLimit::Rate,
    ];

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            BlockLimit::MaxBodySize => "max_body_size",
            BlockLimit::DeviceCap => "device_cap",
            BlockLimit::ShardCap => "shard_cap",
            BlockLimit::Partials => "partials",
            BlockLimit::Rate => "rate",
        }
    }

    /// Index into `CoreStats::block_limits`.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Bytes held by a shard's block-wise state. Every holder gives its bytes back
/// when it is dropped, whichever path drops it (completion, abort, timeout, the
/// endpoint leaving).
#[derive(Debug, Clone, Default)]
pub struct HeldBytes(Arc<AtomicU64>);

impl HeldBytes {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn sub(&self, n: usize) {
        self.0.fetch_sub(n as u64, Ordering::Relaxed);
    }
}

/// A fixed number of bytes counted in a shard's [`HeldBytes`] while this lives
/// (memory held elsewhere: a request key, a write's body).
#[derive(Debug)]
pub struct Charge {
    n: usize,
    held: HeldBytes,
}

impl Charge {
    pub(super) fn new(held: &HeldBytes, n: usize) -> Self {
        held.add(n);
        Self {
            n,
            held: held.clone(),
        }
    }

    pub(super) fn bytes(&self) -> usize {
        self.n
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.held.sub(self.n);
    }
}

/// A reassembly buffer counted in its shard's [`HeldBytes`].
#[derive(Debug)]
pub struct Body {
    buf: Vec<u8>,
    held: HeldBytes,
}

impl Body {
    pub(super) fn new(held: &HeldBytes) -> Self {
        Self {
            buf: Vec::new(),
            held: held.clone(),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub(super) fn extend(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
        self.held.add(b.len());
    }

    pub(super) fn take(mut self) -> Vec<u8> {
        let v = std::mem::take(&mut self.buf);
        self.held.sub(v.len());
        v
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        self.held.sub(self.buf.len());
    }
}

/// `uint` option value, minimally encoded.
fn uint_bytes(v: u32) -> Vec<u8> {
    let b = v.to_be_bytes();
    b[(v.leading_zeros() / 8) as usize..].to_vec()
}

/// A message built from `template`'s options without `drop`, plus `add`.
#[allow(clippy::too_many_arguments)]
pub(super) fn rebuild(
    template: &Message<'_>,
    mtype: MsgType,
    code: u8,
    mid: u16,
    token: &[u8],
    drop: &[u16],
    add: &[(u16, u32)],
    payload: &[u8],
) -> Vec<u8> {
    let mut opts: Vec<(u16, Vec<u8>)> = template
        .options()
        .filter(|(n, _)| !drop.contains(n))
        .map(|(n, v)| (n, v.to_vec()))
        .collect();
    opts.extend(add.iter().map(|&(n, v)| (n, uint_bytes(v))));
    // Stable: repeated options (Uri-Path) keep their order.
    opts.sort_by_key(|o| o.0);
    let mut buf = Vec::with_capacity(16 + token.len() + opts.len() * 8 + payload.len());
    let mut w = MessageWriter::new(&mut buf, mtype, code, mid, token);
    for (n, v) in &opts {
        w.option(*n, v);
    }
    w.payload(payload);
    buf
}

/// A key identifying one block-wise request body or response of a peer (RFC 7959
/// §2.3/§2.4: the method and request URI).
pub(super) fn request_key(msg: &Message<'_>) -> Box<[u8]> {
    let mut k = vec![msg.code];
    for (n, v) in msg.options() {
        if matches!(
            n,
            opt::URI_HOST | opt::URI_PORT | opt::URI_PATH | opt::URI_QUERY
        ) {
            k.push(n as u8);
            k.extend_from_slice(&(v.len() as u16).to_be_bytes());
            k.extend_from_slice(v);
        }
    }
    k.into_boxed_slice()
}

/// Counts a limit hit under its reason.
pub(super) fn count_limit(stats: &mut CoreStats, l: BlockLimit) {
    stats.block_limits[l.index()] += 1;
}
