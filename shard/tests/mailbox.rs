//! Mailbox wake-ups across threads: many senders, a receiver that sleeps in `poll` with no
//! timeout. A lost wake-up shows as a hang, which the watchdog turns into a failure.

use std::sync::{Arc, Once};
use std::thread;
use std::time::Duration;

use mio::{Events, Poll, Token, Waker};
use shard::{mailbox, TrySendError};

const WAKE: Token = Token(0);

/// Fails the test binary if it hangs (a lost wake-up), instead of blocking CI forever.
fn watchdog() {
    static START: Once = Once::new();
    START.call_once(|| {
        thread::spawn(|| {
            thread::sleep(Duration::from_secs(120));
            eprintln!("mailbox tests hung: a wake-up was lost");
            std::process::exit(1);
        });
    });
}

fn run_senders_and_sleeping_receiver(senders: u64, per_sender: u64, capacity: usize) {
    watchdog();
    let mut poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let (tx, rx) = mailbox::<(u64, u64)>(capacity, waker);

    let handles: Vec<_> = (0..senders)
        .map(|s| {
            let tx = tx.clone();
            thread::spawn(move || {
                let mut full = 0u64;
                for seq in 0..per_sender {
                    let mut msg = (s, seq);
                    loop {
                        // Alternate between the two sending styles.
                        let result = if seq % 2 == 0 {
                            tx.try_send(msg)
                        } else {
                            tx.send_timeout(msg, Duration::from_millis(1))
                        };
                        match result {
                            Ok(()) => break,
                            Err(TrySendError::Full(m)) => {
                                full += 1;
                                msg = m;
                                thread::yield_now();
                            }
                            Err(TrySendError::Disconnected(_)) => panic!("receiver gone"),
                        }
                    }
                    if seq % 1000 == 0 {
                        // Let the receiver drain and fall asleep now and then.
                        thread::sleep(Duration::from_micros(50));
                    }
                }
                full
            })
        })
        .collect();
    drop(tx);

    let mut events = Events::with_capacity(16);
    let mut next_seq = vec![0u64; senders as usize];
    let mut received = 0u64;
    while received < senders * per_sender {
        while let Some((s, seq)) = rx.try_recv() {
            assert_eq!(seq, next_seq[s as usize], "per-sender order");
            next_seq[s as usize] += 1;
            received += 1;
        }
        if received == senders * per_sender {
            break;
        }
        if rx.prepare_sleep() {
            poll.poll(&mut events, None).unwrap();
        }
        rx.woke();
    }
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(received, senders * per_sender);
    assert!(rx.try_recv().is_none());
}

#[test]
fn every_message_arrives_with_many_senders_and_a_small_mailbox() {
    run_senders_and_sleeping_receiver(4, 20_000, 8);
}

#[test]
fn every_message_arrives_with_a_large_mailbox() {
    run_senders_and_sleeping_receiver(8, 10_000, 4096);
}

#[test]
fn single_sender_one_message_at_a_time() {
    // The receiver goes to sleep between every message, so every message needs a wake-up.
    watchdog();
    let mut poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let (tx, rx) = mailbox::<u32>(1, waker);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel();
    let sender = thread::spawn(move || {
        for i in 0..2_000 {
            tx.send_timeout(i, Duration::from_secs(60)).unwrap();
            ack_rx.recv().unwrap();
        }
    });
    let mut events = Events::with_capacity(4);
    for expected in 0..2_000 {
        let got = loop {
            if let Some(m) = rx.try_recv() {
                break m;
            }
            if rx.prepare_sleep() {
                poll.poll(&mut events, None).unwrap();
            }
            rx.woke();
        };
        assert_eq!(got, expected);
        ack_tx.send(()).unwrap();
    }
    sender.join().unwrap();
}
