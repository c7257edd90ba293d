//! The event loop that drives one shard.
//!
//! One turn:
//! 1. compute the poll timeout: zero when there is work left from the last turn (a source that
//!    ran out of budget, a flush that asked for more, queued mailbox messages), otherwise until
//!    the timer wheel's next deadline, capped at [`LoopConfig::max_sleep_ms`];
//! 2. poll, retrying on `EINTR`;
//! 3. dispatch I/O events, and call again every source that reported unfinished work last turn
//!    (mio is edge-triggered: no new event will come for data already waiting);
//! 4. drain at most [`LoopConfig::mailbox_budget`] messages;
//! 5. advance the wheel to now and hand every fired item to [`ShardApp::on_timer`];
//! 6. flush batched output, then check [`ShardApp::should_stop`].
//!
//! The application bounds its own work per I/O call and says so by returning `true`, the loop
//! bounds the mailbox, so receiving never starves timers or sending.

use std::io;
use std::time::Duration;

use mio::{Events, Poll, Token};

use crate::clock::Clock;
use crate::mailbox::MailboxReceiver;
use crate::wheel::TimerWheel;

/// The application a shard runs. Every callback gets the current time and the shard's timer
/// wheel, in which it may schedule more timers.
pub trait ShardApp {
    /// Messages other threads send to the shard.
    type Msg: Send + 'static;
    /// Items stored in the timer wheel.
    type Timer;

    /// A registered mio source is readable and/or writable (or a previous call returned true).
    /// Return true if there is still more to do (the budget ran out): the loop will call again
    /// next turn without sleeping.
    fn on_io(
        &mut self,
        token: Token,
        readable: bool,
        writable: bool,
        now_ms: u64,
        timers: &mut TimerWheel<Self::Timer>,
    ) -> bool;

    /// A message arrived in the mailbox.
    fn on_message(&mut self, msg: Self::Msg, now_ms: u64, timers: &mut TimerWheel<Self::Timer>);

    /// A timer fired. Items whose generation is stale should be ignored here.
    fn on_timer(&mut self, t: Self::Timer, now_ms: u64, timers: &mut TimerWheel<Self::Timer>);

    /// End of a loop turn: flush batched output. Return true to keep flushing next turn
    /// without sleeping.
    fn flush(&mut self, now_ms: u64, timers: &mut TimerWheel<Self::Timer>) -> bool;

    /// Checked every turn; true ends the loop (after one last flush).
    fn should_stop(&self) -> bool;
}

/// Limits of one loop turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoopConfig {
    /// Mailbox messages handled per turn.
    pub mailbox_budget: usize,
    /// Longest sleep in `poll`, in milliseconds, even with no timer due.
    pub max_sleep_ms: u64,
}

impl Default for LoopConfig {
    fn default() -> Self {
        LoopConfig {
            mailbox_budget: 256,
            max_sleep_ms: 1000,
        }
    }
}

/// Capacity of the mio event buffer.
const EVENT_CAPACITY: usize = 1024;

/// Runs the shard until `app.should_stop()`. `waker_token` is the token of the mailbox's
/// waker; events for it only wake the loop. `timers` should have been created with a time
/// of `clock`. Returns an error only if `poll` fails with something other than `EINTR`.
pub fn run<A: ShardApp>(
    app: &mut A,
    poll: &mut Poll,
    mailbox: &MailboxReceiver<A::Msg>,
    waker_token: Token,
    clock: &Clock,
    timers: &mut TimerWheel<A::Timer>,
    cfg: &LoopConfig,
) -> io::Result<()> {
    let mut events = Events::with_capacity(EVENT_CAPACITY);
    let mut state = TurnState::new();
    loop {
        if app.should_stop() {
            app.flush(clock.now_ms(), timers);
            return Ok(());
        }
        let slept = poll_once(poll, &mut events, mailbox, clock, timers, cfg, &state)?;
        if slept {
            mailbox.woke();
        }
        let now = clock.now_ms();
        dispatch_io(app, &events, waker_token, now, timers, &mut state);
        drain_mailbox(app, mailbox, now, timers, cfg.mailbox_budget);
        fire_timers(app, now, timers, &mut state.fired);
        state.flush_more = app.flush(now, timers);
    }
}

/// What one turn leaves for the next.
struct TurnState<T> {
    /// Sources that returned true last turn, to be called again.
    pending: Vec<Token>,
    /// Scratch: sources that return true this turn.
    next_pending: Vec<Token>,
    /// The last flush asked for another.
    flush_more: bool,
    /// Scratch for fired timer items.
    fired: Vec<T>,
}

impl<T> TurnState<T> {
    fn new() -> Self {
        TurnState {
            pending: Vec::new(),
            next_pending: Vec::new(),
            flush_more: false,
            fired: Vec::new(),
        }
    }
}

/// Polls once with the turn's timeout; returns whether the mailbox waker was armed.
fn poll_once<M, T>(
    poll: &mut Poll,
    events: &mut Events,
    mailbox: &MailboxReceiver<M>,
    clock: &Clock,
    timers: &TimerWheel<T>,
    cfg: &LoopConfig,
    state: &TurnState<T>,
) -> io::Result<bool> {
    let busy = !state.pending.is_empty() || state.flush_more;
    let armed = !busy && mailbox.prepare_sleep();
    let timeout = if armed {
        Some(sleep_time(
            clock.now_ms(),
            timers.next_deadline(),
            cfg.max_sleep_ms,
        ))
    } else {
        Some(Duration::ZERO)
    };
    loop {
        match poll.poll(events, timeout) {
            Ok(()) => return Ok(armed),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if armed {
                    mailbox.woke();
                }
                return Err(e);
            }
        }
    }
}

/// How long to sleep at `now` with the wheel's next deadline.
fn sleep_time(now: u64, next_deadline: Option<u64>, max_sleep_ms: u64) -> Duration {
    let ms = match next_deadline {
        Some(deadline) => deadline.saturating_sub(now).min(max_sleep_ms),
        None => max_sleep_ms,
    };
    Duration::from_millis(ms)
}

/// Calls `on_io` for every event and every source left pending by the last turn.
fn dispatch_io<A: ShardApp>(
    app: &mut A,
    events: &Events,
    waker_token: Token,
    now: u64,
    timers: &mut TimerWheel<A::Timer>,
    state: &mut TurnState<A::Timer>,
) {
    let mut carried = std::mem::take(&mut state.pending);
    let next = &mut state.next_pending;
    next.clear();
    for event in events.iter() {
        let token = event.token();
        if token == waker_token {
            continue;
        }
        // A source pending from last turn still has data to read, whatever this event says.
        let was_pending = match carried.iter().position(|&t| t == token) {
            Some(i) => {
                carried.swap_remove(i);
                true
            }
            None => false,
        };
        let readable =
            was_pending || event.is_readable() || event.is_read_closed() || event.is_error();
        let writable = event.is_writable() || event.is_write_closed();
        if app.on_io(token, readable, writable, now, timers) && !next.contains(&token) {
            next.push(token);
        }
    }
    for &token in &carried {
        if app.on_io(token, true, false, now, timers) && !next.contains(&token) {
            next.push(token);
        }
    }
    carried.clear();
    // `next_pending` becomes `pending`; the old vector is reused as next turn's scratch.
    state.pending = std::mem::replace(&mut state.next_pending, carried);
}

/// Hands at most `budget` queued messages to the application.
fn drain_mailbox<A: ShardApp>(
    app: &mut A,
    mailbox: &MailboxReceiver<A::Msg>,
    now: u64,
    timers: &mut TimerWheel<A::Timer>,
    budget: usize,
) {
    for _ in 0..budget {
        match mailbox.try_recv() {
            Some(msg) => app.on_message(msg, now, timers),
            None => break,
        }
    }
}

/// Advances the wheel to `now` and hands every fired item to the application.
fn fire_timers<A: ShardApp>(
    app: &mut A,
    now: u64,
    timers: &mut TimerWheel<A::Timer>,
    fired: &mut Vec<A::Timer>,
) {
    timers.advance(now, fired);
    for t in fired.drain(..) {
        app.on_timer(t, now, timers);
    }
}
