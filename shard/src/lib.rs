//! Thread-per-core runtime: shard threads, a hierarchical timer wheel, mailboxes.
//!
//! This crate knows nothing of LwM2M or CoAP. A shard is one thread, optionally pinned to a
//! core, that owns its sockets, its state and its [`TimerWheel`], and runs [`run`]: a mio
//! event loop with a bounded amount of work per turn. Other threads talk to a shard only
//! through its [mailbox](mailbox()): a bounded queue whose senders wake the shard's `poll`
//! only when it may be asleep. All shards share one [`Clock`], so their millisecond
//! timestamps compare.
//!
//! ```no_run
//! use std::sync::Arc;
//! use shard::{mailbox, Clock, LoopConfig, ShardApp, TimerWheel};
//!
//! struct App { stop: bool }
//! impl ShardApp for App {
//!     type Msg = u32;
//!     type Timer = ();
//!     fn on_io(&mut self, _: mio::Token, _: bool, _: bool, _: u64, _: &mut TimerWheel<()>) -> bool { false }
//!     fn on_message(&mut self, _: u32, now: u64, timers: &mut TimerWheel<()>) { timers.insert(now + 10, ()) }
//!     fn on_timer(&mut self, _: (), _: u64, _: &mut TimerWheel<()>) { self.stop = true }
//!     fn flush(&mut self, _: u64, _: &mut TimerWheel<()>) -> bool { false }
//!     fn should_stop(&self) -> bool { self.stop }
//! }
//!
//! let clock = Clock::new();
//! let mut poll = mio::Poll::new()?;
//! let waker_token = mio::Token(0);
//! let waker = Arc::new(mio::Waker::new(poll.registry(), waker_token)?);
//! let (tx, rx) = mailbox::<u32>(1024, waker);
//! tx.try_send(1).unwrap();
//! let mut timers = TimerWheel::new(clock.now_ms());
//! shard::run(&mut App { stop: false }, &mut poll, &rx, waker_token, &clock, &mut timers, &LoopConfig::default())?;
//! # Ok::<(), std::io::Error>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod event_loop;
pub mod mailbox;
pub mod runtime;
pub mod slack;
pub mod wheel;

pub use clock::Clock;
pub use event_loop::{run, LoopConfig, ShardApp};
pub use mailbox::{mailbox, MailboxReceiver, MailboxSender, TrySendError};
pub use runtime::{pin_status, resolve_count, spawn_shards, PinStatus, ShardSpawn};
pub use slack::with_slack;
pub use wheel::{TimerWheel, HORIZON_MS};
