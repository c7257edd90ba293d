//! The event loop end to end: real UDP sockets, a mailbox fed from other threads, timers.
//! No timing assertions: the loops sleep up to an hour when idle, so a missed wake-up or a
//! turn that sleeps when it should not shows as a hang, which the watchdog turns into a failure.

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::thread;
use std::time::Duration;

use mio::net::UdpSocket;
use mio::{Interest, Poll, Token, Waker};
use shard::{mailbox, run, Clock, LoopConfig, MailboxSender, ShardApp, TimerWheel};

const WAKE: Token = Token(0);
const SOCK: Token = Token(1);
const HOUR_MS: u64 = 3_600_000;

fn watchdog() {
    static START: Once = Once::new();
    START.call_once(|| {
        thread::spawn(|| {
            thread::sleep(Duration::from_secs(120));
            eprintln!("event loop tests hung");
            std::process::exit(1);
        });
    });
}

/// A shard's pieces, built on the test thread and moved into the shard thread.
struct Rig<M> {
    poll: Poll,
    socket: UdpSocket,
    addr: SocketAddr,
    tx: MailboxSender<M>,
    rx: shard::MailboxReceiver<M>,
}

fn rig<M: Send>(capacity: usize) -> Rig<M> {
    let poll = Poll::new().unwrap();
    let waker = Arc::new(Waker::new(poll.registry(), WAKE).unwrap());
    let (tx, rx) = mailbox(capacity, waker);
    let mut socket = UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    poll.registry()
        .register(&mut socket, SOCK, Interest::READABLE)
        .unwrap();
    let addr = socket.local_addr().unwrap();
    Rig {
        poll,
        socket,
        addr,
        tx,
        rx,
    }
}

fn client() -> std::net::UdpSocket {
    let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c
}

// ---------------------------------------------------------------------------------------------

enum EchoMsg {
    Num(u32),
    StopAfter(u64),
}

enum EchoTimer {
    Stop,
    /// A timer whose generation went stale: must be ignored.
    Stale(u32),
}

struct EchoApp {
    socket: UdpSocket,
    buf: Vec<u8>,
    echoed: usize,
    numbers: Vec<u32>,
    generation: u32,
    timer_fired_at: Option<u64>,
    stop_deadline: Option<u64>,
    stale_ignored: usize,
    stop: bool,
    final_flushes: usize,
}

impl ShardApp for EchoApp {
    type Msg = EchoMsg;
    type Timer = EchoTimer;

    fn on_io(
        &mut self,
        token: Token,
        readable: bool,
        _: bool,
        _: u64,
        _: &mut TimerWheel<EchoTimer>,
    ) -> bool {
        assert_eq!(token, SOCK);
        if !readable {
            return false;
        }
        loop {
            match self.socket.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    self.socket.send_to(&self.buf[..n], from).unwrap();
                    self.echoed += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) => panic!("recv: {e}"),
            }
        }
    }

    fn on_message(&mut self, msg: EchoMsg, now: u64, timers: &mut TimerWheel<EchoTimer>) {
        match msg {
            EchoMsg::Num(n) => {
                self.numbers.push(n);
                // Schedule a timer, then make it stale at once: it must be ignored when it fires.
                timers.insert(now, EchoTimer::Stale(self.generation));
                self.generation += 1;
            }
            EchoMsg::StopAfter(ms) => {
                self.stop_deadline = Some(now + ms);
                timers.insert(now + ms, EchoTimer::Stop);
            }
        }
    }

    fn on_timer(&mut self, t: EchoTimer, now: u64, _: &mut TimerWheel<EchoTimer>) {
        match t {
            EchoTimer::Stop => {
                self.timer_fired_at = Some(now);
                self.stop = true;
            }
            EchoTimer::Stale(generation) => {
                assert!(generation < self.generation);
                self.stale_ignored += 1;
            }
        }
    }

    fn flush(&mut self, _: u64, _: &mut TimerWheel<EchoTimer>) -> bool {
        if self.stop {
            self.final_flushes += 1;
        }
        false
    }

    fn should_stop(&self) -> bool {
        self.stop
    }
}

#[test]
fn echoes_datagrams_delivers_messages_and_stops_on_a_timer() {
    watchdog();
    let Rig {
        mut poll,
        socket,
        addr,
        tx,
        rx,
    } = rig::<EchoMsg>(16);
    let clock = Clock::new();
    let shard = thread::spawn(move || {
        let mut app = EchoApp {
            socket,
            buf: vec![0; 2048],
            echoed: 0,
            numbers: Vec::new(),
            generation: 0,
            timer_fired_at: None,
            stop_deadline: None,
            stale_ignored: 0,
            stop: false,
            final_flushes: 0,
        };
        let mut timers = TimerWheel::new(clock.now_ms());
        let cfg = LoopConfig {
            mailbox_budget: 4,
            max_sleep_ms: HOUR_MS,
        };
        run(&mut app, &mut poll, &rx, WAKE, &clock, &mut timers, &cfg).unwrap();
        app
    });

    // Messages from another thread, through a mailbox smaller than the burst.
    let sender = {
        let tx = tx.clone();
        thread::spawn(move || {
            for n in 0..1_000 {
                tx.send_timeout(EchoMsg::Num(n), Duration::from_secs(60))
                    .unwrap();
            }
        })
    };

    // Datagrams, each echoed while the loop otherwise sleeps.
    let c = client();
    let mut buf = [0u8; 64];
    for i in 0..200u32 {
        let payload = i.to_be_bytes();
        c.send_to(&payload, addr).unwrap();
        let (n, from) = c.recv_from(&mut buf).unwrap();
        assert_eq!(from, addr);
        assert_eq!(&buf[..n], &payload);
    }
    sender.join().unwrap();

    tx.send_timeout(EchoMsg::StopAfter(5), Duration::from_secs(60))
        .unwrap();
    let app = shard.join().unwrap();
    assert_eq!(app.echoed, 200);
    assert_eq!(app.numbers, (0..1_000).collect::<Vec<_>>());
    assert_eq!(app.stale_ignored, 1_000);
    let fired = app.timer_fired_at.expect("stop timer fired");
    assert!(fired >= app.stop_deadline.unwrap(), "timer fired early");
    // The turn's own flush, then the one last flush on the way out.
    assert_eq!(app.final_flushes, 2);
}

// ---------------------------------------------------------------------------------------------

/// Always claims more input is waiting, so every turn polls with a zero timeout. Timers and the
/// mailbox must still be served, the mailbox at most `budget` messages a turn.
struct BusyApp {
    socket: UdpSocket,
    io_calls: usize,
    io_calls_unreadable: usize,
    datagrams: usize,
    messages: usize,
    expected_messages: usize,
    messages_this_turn: usize,
    max_messages_per_turn: usize,
    ticks: usize,
    wanted_ticks: usize,
    turns: usize,
}

impl ShardApp for BusyApp {
    type Msg = u32;
    type Timer = usize;

    fn on_io(
        &mut self,
        token: Token,
        readable: bool,
        _: bool,
        _: u64,
        _: &mut TimerWheel<usize>,
    ) -> bool {
        assert_eq!(token, SOCK);
        self.io_calls += 1;
        if !readable {
            self.io_calls_unreadable += 1;
        }
        let mut buf = [0u8; 64];
        while self.socket.recv_from(&mut buf).is_ok() {
            self.datagrams += 1;
        }
        true
    }

    fn on_message(&mut self, _: u32, _: u64, _: &mut TimerWheel<usize>) {
        self.messages += 1;
        self.messages_this_turn += 1;
    }

    fn on_timer(&mut self, tick: usize, now: u64, timers: &mut TimerWheel<usize>) {
        assert_eq!(tick, self.ticks);
        self.ticks += 1;
        if self.ticks < self.wanted_ticks {
            timers.insert(now + 1, self.ticks);
        }
    }

    fn flush(&mut self, _: u64, _: &mut TimerWheel<usize>) -> bool {
        self.turns += 1;
        self.max_messages_per_turn = self.max_messages_per_turn.max(self.messages_this_turn);
        self.messages_this_turn = 0;
        false
    }

    fn should_stop(&self) -> bool {
        self.ticks == self.wanted_ticks && self.messages == self.expected_messages
    }
}

#[test]
fn a_source_that_always_has_more_does_not_starve_timers_or_the_mailbox() {
    watchdog();
    let Rig {
        mut poll,
        socket,
        addr,
        tx,
        rx,
    } = rig::<u32>(1024);
    for i in 0..300 {
        tx.try_send(i).unwrap();
    }
    client().send_to(b"go", addr).unwrap();
    let clock = Clock::new();
    let shard = thread::spawn(move || {
        let mut app = BusyApp {
            socket,
            io_calls: 0,
            io_calls_unreadable: 0,
            datagrams: 0,
            messages: 0,
            expected_messages: 300,
            messages_this_turn: 0,
            max_messages_per_turn: 0,
            ticks: 0,
            wanted_ticks: 20,
            turns: 0,
        };
        let mut timers = TimerWheel::new(clock.now_ms());
        timers.insert(clock.now_ms() + 1, 0);
        let cfg = LoopConfig {
            mailbox_budget: 3,
            max_sleep_ms: HOUR_MS,
        };
        run(&mut app, &mut poll, &rx, WAKE, &clock, &mut timers, &cfg).unwrap();
        app
    });
    let app = shard.join().unwrap();
    drop(tx);
    assert_eq!(app.datagrams, 1);
    assert_eq!(app.messages, 300);
    assert_eq!(app.ticks, 20);
    assert!(
        app.max_messages_per_turn <= 3,
        "budget exceeded: {}",
        app.max_messages_per_turn
    );
    assert!(app.turns >= 100, "300 messages at 3 a turn take 100 turns");
    // Called every turn after the first event, although no further event came.
    assert!(
        app.io_calls >= app.turns - 1,
        "{} calls in {} turns",
        app.io_calls,
        app.turns
    );
    assert_eq!(
        app.io_calls_unreadable, 0,
        "a pending source is called as readable"
    );
}

// ---------------------------------------------------------------------------------------------

/// Has a fixed amount of work, `steps`, done one step per call: after its one readable event
/// it reports more work until done; then flush asks for more `steps` times. With an hour-long
/// sleep and no timers, any sleep between steps would hang.
struct StepApp {
    socket: UdpSocket,
    io_steps_left: usize,
    flush_steps_left: usize,
    stop_when_done: bool,
    flushes: usize,
}

impl ShardApp for StepApp {
    type Msg = ();
    type Timer = ();

    fn on_io(&mut self, _: Token, _: bool, _: bool, _: u64, _: &mut TimerWheel<()>) -> bool {
        let mut buf = [0u8; 16];
        while self.socket.recv_from(&mut buf).is_ok() {}
        self.io_steps_left = self.io_steps_left.saturating_sub(1);
        self.io_steps_left > 0
    }

    fn on_message(&mut self, _: (), _: u64, _: &mut TimerWheel<()>) {
        self.stop_when_done = true;
    }

    fn on_timer(&mut self, _: (), _: u64, _: &mut TimerWheel<()>) {}

    fn flush(&mut self, _: u64, _: &mut TimerWheel<()>) -> bool {
        self.flushes += 1;
        if self.io_steps_left > 0 {
            return false;
        }
        self.flush_steps_left = self.flush_steps_left.saturating_sub(1);
        self.flush_steps_left > 0
    }

    fn should_stop(&self) -> bool {
        self.io_steps_left == 0 && self.flush_steps_left == 0
    }
}

#[test]
fn pending_io_and_pending_flush_are_continued_without_sleeping() {
    watchdog();
    let Rig {
        mut poll,
        socket,
        addr,
        tx: _tx,
        rx,
    } = rig::<()>(4);
    client().send_to(b"x", addr).unwrap();
    let clock = Clock::new();
    let mut app = StepApp {
        socket,
        io_steps_left: 500,
        flush_steps_left: 500,
        stop_when_done: false,
        flushes: 0,
    };
    let mut timers = TimerWheel::new(clock.now_ms());
    let cfg = LoopConfig {
        mailbox_budget: 16,
        max_sleep_ms: HOUR_MS,
    };
    run(&mut app, &mut poll, &rx, WAKE, &clock, &mut timers, &cfg).unwrap();
    assert_eq!(app.io_steps_left, 0);
    assert_eq!(app.flush_steps_left, 0);
    assert!(!app.stop_when_done);
    // 500 turns of I/O (the flush of the last one takes the first flush step), 499 more turns
    // of flushing, and the last flush on the way out.
    assert_eq!(app.flushes, 1000);
}

#[test]
fn an_app_that_is_already_stopped_flushes_once_and_returns() {
    let Rig {
        mut poll,
        socket,
        tx: _tx,
        rx,
        ..
    } = rig::<()>(4);
    let clock = Clock::new();
    let mut app = StepApp {
        socket,
        io_steps_left: 0,
        flush_steps_left: 0,
        stop_when_done: false,
        flushes: 0,
    };
    let mut timers = TimerWheel::new(clock.now_ms());
    run(
        &mut app,
        &mut poll,
        &rx,
        WAKE,
        &clock,
        &mut timers,
        &LoopConfig::default(),
    )
    .unwrap();
    assert_eq!(app.flushes, 1);
}
