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
//! that can be recovered from are not kept: the takeover requests and answers, which
//! the requesting shard asks for again after its takeover timeout, are dropped, and
//! forwarded commands are handed back ([`Backlog::take_returned`]) for the sending
//! shard's core to answer with a 5.03 error: every command gets its one final message. A
//! destination whose thread is gone drops everything sent to it, commands excepted
//! (handed back the same way).

use super::mail::ShardMail;
use crate::lwm2m::ShardMsg;
use shard::{MailboxSender, TrySendError};
use std::collections::VecDeque;

/// Messages waiting (all destinations) beyond which recoverable ones are dropped.
pub(super) const SOFT_CAP: usize = 65_536;

/// What became of a message handed to [`Backlog::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// In the destination's mailbox.
    Delivered,
    /// Waiting here for room.
    Deferred,
    /// Dropped: the destination is gone, or the backlog is over its cap and the
    /// message can be recovered from.
    Dropped,
    /// A forwarded command not kept (over the cap, or the destination is gone): held
    /// for [`Backlog::take_returned`].
    Returned,
}

/// Per-destination queues of refused messages, in the order they were sent.
#[derive(Default)]
pub(super) struct Backlog {
    queues: Vec<VecDeque<ShardMsg>>,
    waiting: usize,
    /// Commands not kept, to be answered by the sending shard's core.
    returned: Vec<ShardMsg>,
}

impl Backlog {
    pub(super) fn new(shards: usize) -> Self {
        Self {
            queues: (0..shards).map(|_| VecDeque::new()).collect(),
            waiting: 0,
            returned: Vec::new(),
        }
    }

    /// Messages waiting for room.
    pub(super) fn len(&self) -> usize {
        self.waiting
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting == 0
    }

    /// Sends `m` to shard `to`, or queues it behind what already waits for `to`.
    pub(super) fn send(
        &mut self,
        peers: &[MailboxSender<ShardMail>],
        to: u16,
        m: ShardMsg,
    ) -> Sent {
        let (Some(peer), Some(queue)) = (peers.get(to as usize), self.queues.get_mut(to as usize))
        else {
            return self.not_kept(m);
        };
        let m = if queue.is_empty() {
            match peer.try_send(ShardMail::Core(m)) {
                Ok(()) => return Sent::Delivered,
                Err(TrySendError::Disconnected(m)) => return self.not_kept(core_msg(m)),
                Err(TrySendError::Full(m)) => core_msg(m),
            }
        } else {
            m
        };
        if self.waiting >= SOFT_CAP && recoverable(&m) {
            return self.not_kept(m);
        }
        queue.push_back(m);
        self.waiting += 1;
        Sent::Deferred
    }

    /// Hands waiting messages over while the mailboxes take them, each destination's
    /// in order. Returns how many were dropped (destination gone; commands are handed
    /// back instead).
    pub(super) fn retry(&mut self, peers: &[MailboxSender<ShardMail>]) -> usize {
        let mut dropped = 0;
        for (queue, peer) in self.queues.iter_mut().zip(peers) {
            while let Some(m) = queue.pop_front() {
                match peer.try_send(ShardMail::Core(m)) {
                    Ok(()) => self.waiting -= 1,
                    Err(TrySendError::Full(m)) => {
                        queue.push_front(core_msg(m));
                        break;
                    }
                    Err(TrySendError::Disconnected(m)) => {
                        let m = core_msg(m);
                        self.waiting -= 1;
                        if matches!(m, ShardMsg::Command { .. }) {
                            self.returned.push(m);
                        } else {
                            dropped += 1;
                        }
                    }
                }
            }
        }
        dropped
    }

    /// The commands handed back since the last call, for the sending shard's core to
    /// answer (`Input::Undelivered`: 5.03 on their response topic, counted).
    pub(super) fn take_returned(&mut self) -> Vec<ShardMsg> {
        std::mem::take(&mut self.returned)
    }

    /// A message not kept: a command is held to be answered, anything else dropped.
    fn not_kept(&mut self, m: ShardMsg) -> Sent {
        if matches!(m, ShardMsg::Command { .. }) {
            self.returned.push(m);
            Sent::Returned
        } else {
            Sent::Dropped
        }
    }
}

/// The core message a mailbox handed back (only core messages go through the backlog).
fn core_msg(m: ShardMail) -> ShardMsg {
    match m {
        ShardMail::Core(m) => m,
        other => unreachable!("only core messages are sent through the backlog: {other:?}"),
    }
}

/// Whether not keeping `m` is recovered from: a forwarded command is answered by the
/// sending shard, a lost takeover request or answer is asked for again after the
/// takeover timeout, a lost bootstrap notice leaves an older run to time out. Endpoints
/// handed over and evictions are always kept.
fn recoverable(m: &ShardMsg) -> bool {
    matches!(
        m,
        ShardMsg::Command { .. }
            | ShardMsg::Takeover { .. }
            | ShardMsg::TakeoverMiss { .. }
            | ShardMsg::CachedReply { .. }
            | ShardMsg::BootstrapStarted { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::{Input, Output, ShardCore};
    use mio::{Poll, Token, Waker};
    use std::sync::Arc;

    fn evict(n: u64) -> ShardMsg {
        ShardMsg::Evict {
            name: format!("ep{n}").into(),
            location: n,
            new_mountpoint: "lwm2m/x/".into(),
        }
    }

    /// One shard's mailbox of one message (the poll keeps its waker alive).
    fn one_message_mailbox() -> (
        Poll,
        Vec<MailboxSender<ShardMail>>,
        shard::MailboxReceiver<ShardMail>,
    ) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), Token(0)).unwrap());
        let (tx, rx) = shard::mailbox::<ShardMail>(1, waker);
        (poll, vec![tx], rx)
    }

    #[test]
    fn a_full_mailbox_defers_in_order_and_nothing_is_lost() {
        let (_poll, peers, rx) = one_message_mailbox();
        let mut b = Backlog::new(1);
        assert_eq!(b.send(&peers, 0, evict(1)), Sent::Delivered);
        assert_eq!(b.send(&peers, 0, evict(2)), Sent::Deferred);
        assert_eq!(b.send(&peers, 0, evict(3)), Sent::Deferred);
        assert_eq!(b.len(), 2);
        let mut got = Vec::new();
        while !b.is_empty() || !rx.is_empty() {
            if let Some(ShardMail::Core(ShardMsg::Evict { location, .. })) = rx.try_recv() {
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
            Some(ShardMail::Core(ShardMsg::Evict { location: 5, .. }))
        ));
        // A destination that does not exist drops.
        assert_eq!(b.send(&peers, 9, evict(7)), Sent::Dropped);
    }

    fn command(req_id: u32) -> ShardMsg {
        ShardMsg::Command(crate::lwm2m::RoutedCommand {
            to: crate::lwm2m::Resolved {
                endpoint: "dev1".into(),
                mountpoint: "lwm2m/dev1/".into(),
            },
            payload: format!(r#"{{"reqID":{req_id},"msgType":"read","data":{{"path":"/3/0/1"}}}}"#)
                .into_bytes(),
            hops: 1,
            arrival: Default::default(),
        })
    }

    fn core() -> ShardCore {
        let settings = crate::lwm2m::CoreSettings::from(&crate::config::Config::default());
        let dir = Arc::new(crate::lwm2m::Directory::new());
        ShardCore::new(0, Arc::new(settings), dir, 7)
    }

    /// Hands the commands `b` returned to `core`, as the shard does.
    fn answer_returned(b: &mut Backlog, core: &mut ShardCore) {
        for m in b.take_returned() {
            core.handle(0, Input::Undelivered(m));
        }
    }

    /// The answers `core` published: (topic, payload).
    fn published(core: &mut ShardCore) -> Vec<(String, String)> {
        let mut out = Vec::new();
        core.drain(|o| {
            if let Output::Mqtt(crate::lwm2m::MqttOut::Publish { topic, payload, .. }) = o {
                out.push((topic, String::from_utf8(payload).unwrap()));
            }
        });
        out
    }

    #[test]
    fn over_the_cap_a_command_is_answered_and_only_recoverable_messages_are_dropped() {
        let (_poll, peers, _rx) = one_message_mailbox();
        let mut b = Backlog::new(1);
        for n in 0..=SOFT_CAP as u64 {
            assert!(matches!(
                b.send(&peers, 0, evict(n)),
                Sent::Delivered | Sent::Deferred
            ));
        }
        let takeover_miss = ShardMsg::TakeoverMiss {
            location: 1,
            peer: "127.0.0.1:5683".parse().unwrap(),
            datagram: Vec::new(),
            identity: None,
        };
        assert_eq!(b.send(&peers, 0, takeover_miss), Sent::Dropped);
        assert_eq!(b.send(&peers, 0, command(7)), Sent::Returned);
        assert_eq!(b.send(&peers, 0, evict(0)), Sent::Deferred);
        // The command's one final message: 5.03 on its response topic, echoing it.
        let mut core = core();
        answer_returned(&mut b, &mut core);
        let p = published(&mut core);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "lwm2m/dev1/up/resp");
        for part in [
            r#""reqID":7"#,
            r#""msgType":"read""#,
            r#""code":"5.03""#,
            "overloaded",
        ] {
            assert!(p[0].1.contains(part), "{part} in {}", p[0].1);
        }
        assert_eq!(core.stats().commands_shed, 1);
        let read = crate::lwm2m::command::Op::Read.index();
        let shed = crate::lwm2m::stats::Outcome::Shed as usize;
        assert_eq!(core.stats().outcomes[read][shed], 1);
        // Answered once: nothing is left to answer.
        answer_returned(&mut b, &mut core);
        assert!(published(&mut core).is_empty());
    }

    #[test]
    fn commands_for_a_shard_that_is_gone_are_answered() {
        let (_poll, peers, rx) = one_message_mailbox();
        let mut b = Backlog::new(1);
        // Waiting behind a full mailbox when the shard goes away.
        assert_eq!(b.send(&peers, 0, evict(1)), Sent::Delivered);
        assert_eq!(b.send(&peers, 0, command(1)), Sent::Deferred);
        assert_eq!(b.send(&peers, 0, evict(2)), Sent::Deferred);
        drop(rx);
        assert_eq!(b.retry(&peers), 1, "the eviction is dropped");
        assert!(b.is_empty());
        // Sent after it went away.
        assert_eq!(b.send(&peers, 0, command(2)), Sent::Returned);
        assert_eq!(b.send(&peers, 0, evict(3)), Sent::Dropped);
        let mut core = core();
        answer_returned(&mut b, &mut core);
        let p = published(&mut core);
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].1.contains(r#""reqID":1"#) && p[1].1.contains(r#""reqID":2"#));
        assert!(p.iter().all(|(_, body)| body.contains(r#""code":"5.03""#)));
    }
}
