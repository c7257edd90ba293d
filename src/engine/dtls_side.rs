//! A shard's DTLS listener: its own SO_REUSEPORT socket, the sans-IO DTLS server
//! (one per shard), and the glue that feeds decrypted CoAP to the core (tagged with
//! the peer's identity), encrypts the core's datagrams that must be encrypted, and
//! tells the core when a peer's session ends.

use super::mail::ShardTimer;
use crate::dtls::{DtlsEvent, DtlsServer, DtlsStats, PeerIdentity};
use crate::lwm2m::{Input, ShardCore};
use hashbrown::HashMap;
use mio::net::UdpSocket;
use netio::{RecvBatch, SendBatch};
use shard::{Clock, TimerWheel};
use std::net::SocketAddr;
use std::sync::Arc;

/// The mio token of a shard's DTLS socket.
pub(super) const DTLS: mio::Token = mio::Token(2);
const READS_PER_TURN: usize = 4;
/// Bytes a DTLS record adds to the CoAP message it carries (13-byte header,
/// 8-byte explicit nonce, 16-byte tag for the suites offered), with room to spare.
pub(super) const DTLS_OVERHEAD: usize = 64;
/// Receive slots are never smaller than this: handshake flights (client
/// certificates) fill a datagram up to the path MTU.
const MIN_SLOT: usize = 2048;

/// The receive slot for CoAP messages of up to `max_datagram` bytes over DTLS
/// (`engine.max_datagram`, default 4096: a 1024-byte block with its header fits
/// with room to spare).
pub(super) fn recv_slot(max_datagram: usize) -> usize {
    max_datagram.max(MIN_SLOT) + DTLS_OVERHEAD
}

pub(super) struct DtlsSide {
    pub socket: UdpSocket,
    server: DtlsServer,
    recv: RecvBatch,
    send: SendBatch,
    identities: HashMap<SocketAddr, Arc<PeerIdentity>>,
    clock: Clock,
    /// Deadline of the wheel entry armed for the server's timers (u64::MAX: none).
    armed_at: u64,
    /// Datagrams longer than a receive slot (dropped).
    oversized: u64,
}

impl DtlsSide {
    /// `max_datagram`: the longest CoAP message accepted (`engine.max_datagram`).
    pub(super) fn new(
        socket: UdpSocket,
        server: DtlsServer,
        batch: usize,
        max_datagram: usize,
        clock: Clock,
    ) -> Self {
        Self {
            socket,
            server,
            recv: RecvBatch::new(batch, recv_slot(max_datagram)),
            send: SendBatch::new(batch),
            identities: HashMap::new(),
            clock,
            armed_at: u64::MAX,
            oversized: 0,
        }
    }

    /// Reads what the socket holds (bounded); true if more is left.
    pub(super) fn read(
        &mut self,
        now: u64,
        core: &mut ShardCore,
        timers: &mut TimerWheel<ShardTimer>,
    ) -> bool {
        let at = self.clock.instant_at(now);
        for _ in 0..READS_PER_TURN {
            let n = match self.recv.recv(&self.socket) {
                Ok(n) => n,
                Err(_) => {
                    self.pump(now, core, timers);
                    return false;
                }
            };
            for i in 0..n {
                let (peer, data, truncated) = self.recv.get(i);
                if truncated {
                    self.oversized += 1;
                    tracing::debug!(%peer, "DTLS datagram longer than a receive slot dropped");
                    continue;
                }
                self.server.handle_datagram(at, peer, data);
            }
            self.pump(now, core, timers);
        }
        true
    }

    /// Reads and drops what the socket holds (the gateway is disabled): whether more may
    /// be waiting, and how many datagrams were dropped.
    pub(super) fn discard(&mut self) -> (bool, u64) {
        let mut dropped = 0;
        for _ in 0..READS_PER_TURN {
            match self.recv.recv(&self.socket) {
                Ok(n) => dropped += n as u64,
                Err(_) => return (false, dropped),
            }
        }
        (true, dropped)
    }

    /// Encrypts and queues `plaintext` for the session of `to`. False when `to`
    /// has no session (or it failed): nothing was sent.
    pub(super) fn send_app(&mut self, now: u64, to: SocketAddr, plaintext: &[u8]) -> bool {
        if !self.server.has_session(to) {
            return false;
        }
        let sent = self
            .server
            .send(self.clock.instant_at(now), to, plaintext)
            .is_ok();
        while let Some((peer, bytes)) = self.server.poll_transmit() {
            self.send.push(peer, &bytes);
        }
        sent
    }

    /// The server's timers came due.
    pub(super) fn on_timer(
        &mut self,
        now: u64,
        core: &mut ShardCore,
        timers: &mut TimerWheel<ShardTimer>,
    ) {
        self.armed_at = u64::MAX;
        self.server.handle_timeout(self.clock.instant_at(now));
        self.pump(now, core, timers);
    }

    /// Drains the server: ciphertext to send, plaintext to the core, timers to the wheel.
    fn pump(&mut self, now: u64, core: &mut ShardCore, timers: &mut TimerWheel<ShardTimer>) {
        loop {
            while let Some((peer, bytes)) = self.server.poll_transmit() {
                self.send.push(peer, &bytes);
            }
            let Some(ev) = self.server.poll_event() else {
                break;
            };
            match ev {
                DtlsEvent::Connected { peer, identity } => {
                    tracing::debug!(%peer, ?identity, "DTLS session up");
                    self.identities.insert(peer, Arc::new(identity));
                }
                DtlsEvent::Data { peer, plaintext } => {
                    // Data comes only from a session announced by Connected.
                    if let Some(id) = self.identities.get(&peer) {
                        let (data, identity) = (plaintext.as_slice(), Some(id));
                        core.handle(
                            now,
                            Input::Datagram {
                                peer,
                                data,
                                identity,
                            },
                        );
                    }
                }
                DtlsEvent::Closed { peer, reason } => {
                    tracing::debug!(%peer, ?reason, "DTLS session closed");
                    self.identities.remove(&peer);
                    core.handle(now, Input::SessionClosed { peer });
                }
            }
        }
        if let Some(next) = self.server.next_timeout() {
            let ms = next
                .saturating_duration_since(self.clock.start())
                .as_millis() as u64;
            if ms < self.armed_at {
                self.armed_at = ms;
                timers.insert(ms, ShardTimer::Transport);
            }
        }
    }

    pub(super) fn flush(&mut self) {
        if !self.send.is_empty() {
            if let Err(e) = self.send.flush(&self.socket) {
                tracing::warn!(error = %e, "DTLS sendmmsg failed");
                self.send.clear();
            }
        }
    }

    pub(super) fn stats(&self) -> &DtlsStats {
        self.server.stats()
    }

    /// Datagrams dropped for being longer than a receive slot.
    pub(super) fn oversized(&self) -> u64 {
        self.oversized
    }
}
