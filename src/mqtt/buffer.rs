//! The bounded pending queue of one connection and the overflow policy over all of them.
//!
//! A queue keeps publishes in arrival order. Dropping an entry from the middle (the oldest QoS 0
//! message) leaves a tombstone, so every operation is O(1) amortised: a side index lists the
//! positions of the live QoS 0 entries, and tombstones are trimmed from the front.

use std::collections::VecDeque;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;

/// A publish waiting for its connection.
#[derive(Debug)]
pub(crate) struct OutMsg {
    /// Global arrival number: compares ages across connections.
    pub seq: u64,
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    /// The subscribe requests of its connection it waits for (see `suback_gate.rs`).
    pub after_sub: u64,
}

/// Publishes of one connection not yet written to it, oldest first.
#[derive(Debug, Default)]
pub(crate) struct PendingQueue {
    slots: VecDeque<Option<OutMsg>>,
    /// Local position of `slots[0]`.
    head: u64,
    /// Local positions of the live QoS 0 entries, ascending.
    qos0: VecDeque<u64>,
    live: usize,
}

impl PendingQueue {
    pub(super) fn len(&self) -> usize {
        self.live
    }

    pub(super) fn is_empty(&self) -> bool {
        self.live == 0
    }

    pub(super) fn push(&mut self, msg: OutMsg) {
        let pos = self.head + self.slots.len() as u64;
        if msg.qos == QoS::AtMostOnce {
            self.qos0.push_back(pos);
        }
        self.slots.push_back(Some(msg));
        self.live += 1;
    }

    /// The oldest live entry.
    pub(super) fn front(&self) -> Option<&OutMsg> {
        self.slots.front().and_then(|s| s.as_ref())
    }

    pub(super) fn pop_front(&mut self) -> Option<OutMsg> {
        let msg = self.slots.pop_front()??;
        if self.qos0.front() == Some(&self.head) {
            self.qos0.pop_front();
        }
        self.head += 1;
        self.live -= 1;
        self.trim();
        Some(msg)
    }

    /// Global sequence number of the oldest live QoS 0 entry.
    pub(super) fn oldest_qos0_seq(&self) -> Option<u64> {
        let pos = *self.qos0.front()?;
        self.slots[(pos - self.head) as usize]
            .as_ref()
            .map(|m| m.seq)
    }

    /// Drops the oldest live QoS 0 entry; false if there is none.
    pub(super) fn drop_oldest_qos0(&mut self) -> bool {
        let Some(pos) = self.qos0.pop_front() else {
            return false;
        };
        self.slots[(pos - self.head) as usize] = None;
        self.live -= 1;
        self.trim();
        true
    }

    fn trim(&mut self) {
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.head += 1;
        }
    }
}

/// What the overflow policy decided for an incoming publish when the buffer is full.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    /// A held message was dropped: the new one can be queued.
    DroppedHeld,
    /// Nothing held could be dropped (or the new one is the best victim): drop the new one.
    DropIncoming,
}

/// Makes room for one incoming publish of QoS `incoming_qos0` among `queues`: the oldest pending
/// QoS 0 message is dropped first; without one, a new QoS 0 message is itself dropped; otherwise
/// the oldest pending message of any QoS goes. Messages already in flight are never dropped.
pub(crate) fn make_room<'a>(
    queues: impl Iterator<Item = &'a mut PendingQueue>,
    incoming_qos0: bool,
) -> Overflow {
    let mut queues: Vec<&'a mut PendingQueue> = queues.collect();
    let oldest_qos0 = queues
        .iter()
        .enumerate()
        .filter_map(|(i, q)| q.oldest_qos0_seq().map(|s| (s, i)))
        .min();
    if let Some((_, i)) = oldest_qos0 {
        queues[i].drop_oldest_qos0();
        return Overflow::DroppedHeld;
    }
    if incoming_qos0 {
        return Overflow::DropIncoming;
    }
    let oldest = queues
        .iter()
        .enumerate()
        .filter_map(|(i, q)| q.front().map(|m| (m.seq, i)))
        .min();
    match oldest {
        Some((_, i)) => {
            queues[i].pop_front();
            Overflow::DroppedHeld
        }
        None => Overflow::DropIncoming,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64, qos: QoS) -> OutMsg {
        OutMsg {
            seq,
            topic: format!("t/{seq}"),
            payload: Bytes::new(),
            qos,
            after_sub: 0,
        }
    }

    #[test]
    fn qos0_dropped_first_then_oldest() {
        let mut a = PendingQueue::default();
        let mut b = PendingQueue::default();
        a.push(msg(0, QoS::AtLeastOnce));
        b.push(msg(1, QoS::AtMostOnce));
        a.push(msg(2, QoS::AtMostOnce));
        b.push(msg(3, QoS::ExactlyOnce));
        let r = make_room([&mut a, &mut b].into_iter(), false);
        assert_eq!(r, Overflow::DroppedHeld);
        assert_eq!(b.len(), 1);
        assert_eq!(b.front().unwrap().seq, 3);
        make_room([&mut a, &mut b].into_iter(), false);
        assert_eq!(a.len(), 1);
        assert_eq!(a.front().unwrap().seq, 0);
        // No QoS 0 left: a new QoS 0 message is the victim.
        assert_eq!(
            make_room([&mut a, &mut b].into_iter(), true),
            Overflow::DropIncoming
        );
        // A new QoS 1 message evicts the oldest.
        make_room([&mut a, &mut b].into_iter(), false);
        assert!(a.is_empty());
        assert_eq!(b.pop_front().unwrap().seq, 3);
        assert_eq!(
            make_room([&mut a, &mut b].into_iter(), false),
            Overflow::DropIncoming
        );
    }

    #[test]
    fn tombstones_keep_order() {
        let mut q = PendingQueue::default();
        for i in 0..10 {
            let qos = if i % 2 == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            q.push(msg(i, qos));
        }
        assert!(q.drop_oldest_qos0());
        assert!(q.drop_oldest_qos0());
        assert_eq!(q.pop_front().unwrap().seq, 1);
        assert_eq!(q.pop_front().unwrap().seq, 3);
        assert_eq!(q.pop_front().unwrap().seq, 4);
        assert_eq!(q.oldest_qos0_seq(), Some(6));
        assert_eq!(q.len(), 5);
        let order: Vec<u64> = std::iter::from_fn(|| q.pop_front())
            .map(|m| m.seq)
            .collect();
        assert_eq!(order, vec![5, 6, 7, 8, 9]);
        assert!(q.is_empty());
    }
}
