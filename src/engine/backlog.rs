//! Cross-shard messages that found their destination's mailbox full.
//!
//! A shard never waits on another, so a full mailbox cannot block the sender; but
//! most cross-shard messages carry state that must not vanish: an `Adopt` carries
//! the endpoint itself (its old shard already removed it), an `Evict` is the only
//! thing that removes a replaced registration, and the takeover messages end a
//! pending takeover. So a refused message waits here, in order behind the others for
//! the same shard, and is retried every loop turn (the shard arms a 1 ms timer while
//! anything waits). What waits is bounded by what the shard holds anyway (endpoints
//! being handed over, registrations replaced); beyond [`SOFT_CAP`] only messages
//! that can be recovered from are dropped: forwarded commands and the takeover
//! requests and answers, which the requesting shard asks for again after its takeover
//! timeout. A destination whose thread is gone drops everything sent to it.

use crate::lwm2m::ShardMsg;
use shard::{MailboxSender, TrySendError};
use std::collections::VecDeque;

/// Messages waiting (all destinations) beyond which recoverable ones are dropped.
pub const SOFT_CAP: usize = 65_536;

/// What became of a message handed to [`Backlog::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// In the destination's mailbox.
    Delivered,
    /// Waiting here for room.
    Deferred,
    /// Dropped: the destination is gone, or the backlog is over its cap and the
    /// message can be recovered from.
    Dropped,
}

/// Per-destination queues of refused messages, in the order they were sent.
#[derive(Default)]
pub struct Backlog {
    queues: Vec<VecDeque<ShardMsg>>,
    waiting: usize,
}

impl Backlog {
    pub fn new(shards: usize) -> Self {
        Self {
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            waiting: 0,
        }
    }

    /// Messages waiting for room.
    pub fn len(&self) -> usize {
        self.waiting
    }

    pub fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Sends `m` to shard `to`, or queues it behind what already waits for `to`.
    pub fn send(&mut self, peers: &[MailboxSender<ShardMsg>], to: u16, m: ShardMsg) -> Sent {
        let (Some(peer), Some(queue)) = (peers.get(to as usize), self.queues.get_mut(to as usize))
        else {
            return Sent::Dropped;
        };
        let m = if queue.is_empty() {
            match peer.try_send(m) {
                Ok(()) => return Sent::Delivered,
                Err(TrySendError::Disconnected(_)) => return Sent::Dropped,
                Err(TrySendError::Full(m)) => m,
            }
        } else {
            m
        };
        if self.waiting >= SOFT_CAP && recoverable(&m) {
            return Sent::Dropped;
        }
        queue.push_back(m);
        self.waiting += 1;
        Sent::Deferred
    }

    /// Hands waiting messages over while the mailboxes take them, each destination's
    /// in order. Returns how many were dropped (destination gone).
    pub fn retry(&mut self, peers: &[MailboxSender<ShardMsg>]) -> usize {
        let mut dropped = 0;
        for (queue, peer) in self.queues.iter_mut().zip(peers) {
            while let Some(m) = queue.pop_front() {
                match peer.try_send(m) {
                    Ok(()) => self.waiting -= 1,
                    Err(TrySendError::Full(m)) => {
                        queue.push_front(m);
                        break;
                    }
                    Err(TrySendError::Disconnected(_)) => {
                        self.waiting -= 1;
                        dropped += 1;
                    }
                }
            }
        }
        dropped
    }
}

/// Whether losing `m` is recovered from: a forwarded command is answered by nobody
/// (counted), a lost takeover request or answer is asked for again after the takeover
/// timeout. Endpoints handed over and evictions are never dropped.
fn recoverable(m: &ShardMsg) -> bool {
    matches!(
        m,
        ShardMsg::Command { .. }
            | ShardMsg::Takeover { .. }
            | ShardMsg::TakeoverMiss { .. }
            | ShardMsg::CachedReply { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Poll, Token, Waker};
    use std::sync::Arc;

    fn evict(n: u64) -> ShardMsg {
        ShardMsg::Evict {
            name: format!("ep{n}").into(),
            location: n,
            new_mountpoint: "lwm2m/x/".into(),
        }
    }

    #[test]
    fn a_full_mailbox_defers_in_order_and_nothing_is_lost() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        // A mailbox of one message.
        let (tx, rx) = shard::mailbox::<ShardMsg>(1, waker);
        let peers = vec![tx];
        let mut b = Backlog::new(1);
        assert_eq!(b.send(&peers, 0, evict(1)), Sent::Delivered);
        assert_eq!(b.send(&peers, 0, evict(2)), Sent::Deferred);
        assert_eq!(b.send(&peers, 0, evict(3)), Sent::Deferred);
        assert_eq!(b.len(), 2);
        let mut got = Vec::new();
        while !b.is_empty() || !rx.is_empty() {
            if let Some(ShardMsg::Evict { location, .. }) = rx.try_recv() {
                got.push(location);
            }
            b.retry(&peers);
        }
        assert_eq!(got, [1, 2, 3], "delivered once each, in order");
        // Behind waiting messages, a new one waits too, even with room in the mailbox.
        assert_eq!(b.send(&peers, 0, evict(4)), Sent::Delivered);
        assert_eq!(b.send(&peers, 0, evict(5)), Sent::Deferred);
        let _ = rx.try_recv();
        assert_eq!(
            b.send(&peers, 0, evict(6)),
            Sent::Deferred,
            "stays behind 5"
        );
        b.retry(&peers);
        assert!(matches!(
            rx.try_recv(),
            Some(ShardMsg::Evict { location: 5, .. })
        ));
        // A destination that does not exist drops.
        assert_eq!(b.send(&peers, 9, evict(7)), Sent::Dropped);
    }

    #[test]
    fn over_the_cap_only_recoverable_messages_are_dropped() {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let (tx, _rx) = shard::mailbox::<ShardMsg>(1, waker);
        let peers = vec![tx];
        let mut b = Backlog::new(1);
        for n in 0..=SOFT_CAP as u64 {
            assert_ne!(b.send(&peers, 0, evict(n)), Sent::Dropped);
        }
        let command = ShardMsg::Command {
            topic: "lwm2m/a/dn".into(),
            payload: Vec::new(),
            hops: 1,
            arrival: Default::default(),
        };
        assert_eq!(b.send(&peers, 0, command), Sent::Dropped);
        assert_eq!(b.send(&peers, 0, evict(0)), Sent::Deferred);
    }
}
