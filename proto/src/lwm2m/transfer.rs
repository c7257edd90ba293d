//! The state of one block-wise transfer of the gateway as CoAP client (RFC 7959): the
//! request whose body goes out in Block1 blocks, the response body reassembled from
//! Block2 blocks. It lives on its exchange (`session.rs`); device management's
//! block-wise client (`dm/block_client.rs`) drives it.

use super::blockwise::{Body, Charge, HeldBytes};
use crate::coap::{opt, Message};

/// A block-wise transfer of one exchange (the gateway as CoAP client).
#[derive(Debug)]
pub struct Transfer {
    /// Token of the first request; the final answer is reported under it.
    pub(super) orig_token: u32,
    /// The whole request: Block1 blocks are cut from its payload, Block2
    /// follow-ups repeat its options.
    pub(super) request: Vec<u8>,
    /// The request's payload, counted while the transfer holds it.
    pub(super) charge: Charge,
    pub(super) send: Option<Send1>,
    pub(super) fetch: Option<Fetch2>,
    /// Completes a notification (not a command).
    pub(super) notify: Option<Notify>,
}

/// The notification a Block2 fetch completes.
#[derive(Debug, Clone, Copy)]
pub(super) struct Notify {
    /// Its Observe value; None for the last notification of an observation,
    /// which carries no Observe option (published without seqNum).
    pub(super) seq: Option<u32>,
}

impl Transfer {
    pub(super) fn new(held: &HeldBytes, orig_token: u32, request: Vec<u8>) -> Self {
        let body = Message::parse(&request).map_or(0, |m| m.payload.len());
        Self {
            orig_token,
            request,
            charge: Charge::new(held, body),
            send: None,
            fetch: None,
            notify: None,
        }
    }

    /// Bytes this transfer holds: the request body and a response body
    /// reassembled so far.
    pub fn held(&self) -> usize {
        self.charge.bytes() + self.fetch.as_ref().map_or(0, |f| f.body.len())
    }
}

/// Sending the request body in Block1 blocks.
#[derive(Debug)]
pub(super) struct Send1 {
    /// Start of the block in flight within the body.
    pub(super) offset: usize,
    pub(super) szx: u8,
}

/// Fetching a response body in Block2 blocks.
#[derive(Debug)]
pub(super) struct Fetch2 {
    pub(super) body: Body,
    /// The first block's options except Block2/Size2 (Observe, Content-Format,
    /// ETag...).
    pub(super) head: Vec<(u16, Vec<u8>)>,
    pub(super) szx: u8,
    /// Times the fetch started over because the ETag changed.
    pub(super) restarts: u8,
    /// Started over: the next block is block 0 of a new representation.
    pub(super) restarting: bool,
}

impl Fetch2 {
    pub(super) fn etag(&self) -> Option<&[u8]> {
        self.head
            .iter()
            .find(|(n, _)| *n == opt::ETAG)
            .map(|(_, v)| &v[..])
    }
}
