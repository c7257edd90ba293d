//! A shard's mailbox: a bounded multi-producer queue plus a [`mio::Waker`], with wake coalescing.
//!
//! Waking a shard costs a syscall (an `eventfd` write), so a sender wakes the receiver only
//! when the receiver may be asleep. The receiver arms a flag, `sleeping`, in
//! [`MailboxReceiver::prepare_sleep`] just before it blocks in `poll`; the first sender after
//! that swaps the flag off and calls the waker; later senders see the flag off and just enqueue.
//!
//! # Why no wake-up is lost
//! Sender:   (S1) push the message; (S2) SeqCst fence; (S3) `sleeping.swap(false)`, wake if it was on.
//! Receiver: (R1) `sleeping.store(true)`; (R2) SeqCst fence; (R3) look at the queue, sleep if empty.
//!
//! The two fences are totally ordered. If the receiver's fence comes first, then R1 is visible
//! to S3, so the sender reads `true` (unless another sender already swapped it, in which case
//! that sender wakes) and wakes the receiver. If the sender's fence comes first, then S1 is
//! visible to R3, so the receiver sees a non-empty queue and does not sleep. Either way the
//! message is seen. A wake that arrives before `poll` is not lost either: the waker's
//! `eventfd` stays readable, so `poll` returns at once.
//!
//! After `poll` returns the receiver calls [`MailboxReceiver::woke`] to turn the flag off, so a
//! busy receiver (one that polls with a zero timeout and never arms the flag) costs its senders
//! no syscalls at all.

use std::fmt;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

/// Why a message was not enqueued; the message is handed back.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum TrySendError<T> {
    /// The mailbox is full (for `send_timeout`: it stayed full for the whole wait).
    Full(T),
    /// The receiver is gone.
    Disconnected(T),
}

impl<T> TrySendError<T> {
    /// The message that was not sent.
    pub fn into_inner(self) -> T {
        match self {
            TrySendError::Full(msg) | TrySendError::Disconnected(msg) => msg,
        }
    }

    /// True for [`TrySendError::Full`].
    pub fn is_full(&self) -> bool {
        matches!(self, TrySendError::Full(_))
    }

    /// True for [`TrySendError::Disconnected`].
    pub fn is_disconnected(&self) -> bool {
        matches!(self, TrySendError::Disconnected(_))
    }
}

impl<T> fmt::Debug for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("Full(..)"),
            TrySendError::Disconnected(_) => f.write_str("Disconnected(..)"),
        }
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrySendError::Full(_) => f.write_str("mailbox is full"),
            TrySendError::Disconnected(_) => f.write_str("mailbox receiver is gone"),
        }
    }
}

impl<T> std::error::Error for TrySendError<T> {}

/// State shared by the senders and the receiver.
struct Shared {
    /// On while the receiver may be blocked in `poll` and nobody has woken it yet.
    sleeping: AtomicBool,
    waker: Arc<Waker>,
}

/// Creates a mailbox holding at most `capacity` messages (`capacity` 0 is raised to 1, since a
/// rendezvous queue would make every `try_send` fail). `waker` must be registered with the
/// receiving shard's `mio::Poll`.
pub fn mailbox<T: Send>(
    capacity: usize,
    waker: Arc<Waker>,
) -> (MailboxSender<T>, MailboxReceiver<T>) {
    let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
    let shared = Arc::new(Shared {
        sleeping: AtomicBool::new(false),
        waker,
    });
    (
        MailboxSender {
            tx,
            shared: shared.clone(),
        },
        MailboxReceiver { rx, shared },
    )
}

/// The sending half; cheap to clone, usable from any thread.
pub struct MailboxSender<T> {
    tx: Sender<T>,
    shared: Arc<Shared>,
}

impl<T> Clone for MailboxSender<T> {
    fn clone(&self) -> Self {
        MailboxSender {
            tx: self.tx.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<T> fmt::Debug for MailboxSender<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxSender")
            .field("len", &self.tx.len())
            .finish()
    }
}

impl<T> MailboxSender<T> {
    /// Enqueues `msg` without ever blocking; wakes the receiver if it may be asleep.
    pub fn try_send(&self, msg: T) -> Result<(), TrySendError<T>> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake_if_sleeping();
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Full(msg)) => Err(TrySendError::Full(msg)),
            Err(crossbeam_channel::TrySendError::Disconnected(msg)) => {
                Err(TrySendError::Disconnected(msg))
            }
        }
    }

    /// Enqueues `msg`, waiting up to `timeout` for room. For threads that are not shards and
    /// may afford a short wait; a shard thread uses [`try_send`](Self::try_send).
    pub fn send_timeout(&self, msg: T, timeout: Duration) -> Result<(), TrySendError<T>> {
        match self.tx.send_timeout(msg, timeout) {
            Ok(()) => {
                self.wake_if_sleeping();
                Ok(())
            }
            Err(crossbeam_channel::SendTimeoutError::Timeout(msg)) => Err(TrySendError::Full(msg)),
            Err(crossbeam_channel::SendTimeoutError::Disconnected(msg)) => {
                Err(TrySendError::Disconnected(msg))
            }
        }
    }

    /// Messages currently queued.
    pub fn len(&self) -> usize {
        self.tx.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.tx.is_empty()
    }

    /// S2 and S3 of the protocol in the module docs (S1 was the push).
    fn wake_if_sleeping(&self) {
        fence(Ordering::SeqCst);
        if self.shared.sleeping.swap(false, Ordering::SeqCst) && self.shared.waker.wake().is_err() {
            // The wake failed (it practically cannot): re-arm so the next sender tries again.
            // The receiver's poll timeout is bounded, so the message is not stranded meanwhile.
            self.shared.sleeping.store(true, Ordering::SeqCst);
        }
    }
}

/// The receiving half, owned by the shard thread.
pub struct MailboxReceiver<T> {
    rx: Receiver<T>,
    shared: Arc<Shared>,
}

impl<T> fmt::Debug for MailboxReceiver<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MailboxReceiver")
            .field("len", &self.rx.len())
            .field("sleeping", &self.shared.sleeping.load(Ordering::Relaxed))
            .finish()
    }
}

impl<T> MailboxReceiver<T> {
    /// The next message, if any. Never blocks.
    pub fn try_recv(&self) -> Option<T> {
        self.rx.try_recv().ok()
    }

    /// Messages currently queued.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Call just before blocking in `poll`: arms the waker. Returns false if messages are
    /// already queued; then do not sleep (poll with a zero timeout). Either way, call
    /// [`woke`](Self::woke) after `poll` returns.
    pub fn prepare_sleep(&self) -> bool {
        self.shared.sleeping.store(true, Ordering::SeqCst); // R1
        fence(Ordering::SeqCst); // R2
        if self.rx.is_empty() {
            // R3: empty, so any later message's sender will see the flag on and wake us.
            true
        } else {
            self.shared.sleeping.store(false, Ordering::SeqCst);
            false
        }
    }

    /// Call after `poll` returns: disarms the waker, so senders stop paying for wake-ups
    /// while the receiver is awake.
    pub fn woke(&self) {
        self.shared.sleeping.store(false, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mio::{Events, Poll, Token};

    const WAKE: Token = Token(7);

    fn setup(capacity: usize) -> (Poll, MailboxSender<u32>, MailboxReceiver<u32>) {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
        let (tx, rx) = mailbox(capacity, waker);
        (poll, tx, rx)
    }

    #[test]
    fn full_mailbox_returns_full_without_blocking() {
        let (_poll, tx, rx) = setup(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(
            tx.send_timeout(4, Duration::from_millis(1)),
            Err(TrySendError::Full(4))
        );
        assert_eq!(rx.len(), 2);
        assert_eq!(rx.try_recv(), Some(1));
        tx.try_send(5).unwrap();
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(5));
        assert_eq!(rx.try_recv(), None);
    }

    #[test]
    fn disconnected_when_receiver_dropped() {
        let (_poll, tx, rx) = setup(4);
        drop(rx);
        let err = tx.try_send(1).unwrap_err();
        assert!(err.is_disconnected());
        assert_eq!(err.into_inner(), 1);
    }

    #[test]
    fn prepare_sleep_refuses_when_messages_queued() {
        let (_poll, tx, rx) = setup(4);
        assert!(rx.prepare_sleep());
        rx.woke();
        tx.try_send(1).unwrap();
        assert!(!rx.prepare_sleep());
        assert!(!rx.shared.sleeping.load(Ordering::SeqCst));
    }

    #[test]
    fn only_the_first_send_after_arming_wakes() {
        let (mut poll, tx, rx) = setup(16);
        let mut events = Events::with_capacity(8);
        // Not armed: sending does not touch the waker.
        tx.try_send(1).unwrap();
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
        assert_eq!(rx.try_recv(), Some(1));

        assert!(rx.prepare_sleep());
        tx.try_send(2).unwrap(); // wakes
        poll.poll(&mut events, None).unwrap();
        assert_eq!(events.iter().filter(|e| e.token() == WAKE).count(), 1);
        // The first sender disarmed the flag: a later one does not wake again, even before
        // the receiver calls `woke`. (A second wake would show up as a new edge.)
        tx.try_send(3).unwrap();
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        assert!(events.is_empty());
        rx.woke();
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
    }
}
