//! `lwm2m-loadgen`: many simulated LwM2M devices in one process, each with its own
//! 127.x.y.z source address (IP_PKTINFO on one socket per device thread), plus an
//! MQTT-side driver, against a running gateway. Also the baselines of the
//! benchmark: a UDP echo server and a plain MQTT publisher.
//!
//! [`run`] executes one load run described by [`RunOpts`] and returns a [`Report`];
//! the binary is a thin CLI around it, and the end-to-end smoke test calls it as a
//! library.

pub mod driver;
pub mod dtls;
pub mod echo;
pub mod mqtt;
pub mod opts;
pub mod procstat;
pub mod publish;
pub mod relay;
pub mod report;
mod run;
pub mod stats;
pub mod worker;

pub use opts::RunOpts;
pub use report::Report;
pub use run::run;

use stats::{Clock, Counters};
use std::sync::atomic::{AtomicU64, AtomicU8};
pub use tracker::{CmdTracker, NotifyTracker};

/// State shared by every thread of a run.
pub struct Shared {
    pub opts: RunOpts,
    pub clock: Clock,
    pub c: Counters,
    pub phase: AtomicU8,
    pub steady_start_us: AtomicU64,
    /// Confirmable requests started / finished (answered or given up).
    pub pending: AtomicU64,
    pub pending_done: AtomicU64,
    /// Device threads that queued their De-registers.
    pub dereg_queued: AtomicU64,
    /// Global indices of the devices that registered (2.01), for the command driver.
    pub registered: std::sync::Mutex<Vec<u32>>,
    /// Send times of notifications, when the MQTT side measures their latency.
    pub notify_sent: Option<NotifyTracker>,
    /// Queue mode with commands: publish times of the commands not yet delivered,
    /// per device in order, so the device can measure how long each one waited.
    pub cmd_queued: Option<CmdTracker>,
}

mod tracker {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    const SHARDS: usize = 16;

    /// Send times of notifications by (device, Observe sequence number), so the
    /// MQTT side can compute each one's end-to-end latency.
    pub struct NotifyTracker {
        shards: Vec<Mutex<HashMap<u64, u64>>>,
    }

    impl Default for NotifyTracker {
        fn default() -> Self {
            Self {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            }
        }
    }

    impl NotifyTracker {
        fn key(dev: u32, seq: u32) -> u64 {
            (dev as u64) << 32 | seq as u64
        }

        pub fn insert(&self, dev: u32, seq: u32, us: u64) {
            let mut m = self.shards[dev as usize % SHARDS].lock().expect("lock");
            m.insert(Self::key(dev, seq), us);
        }

        pub fn take(&self, dev: u32, seq: u32) -> Option<u64> {
            let mut m = self.shards[dev as usize % SHARDS].lock().expect("lock");
            m.remove(&Self::key(dev, seq))
        }
    }

    /// Publish times of commands by device, oldest first (the gateway delivers a
    /// device's commands in order, one at a time).
    pub struct CmdTracker {
        shards: Vec<Mutex<HashMap<u32, VecDeque<u64>>>>,
    }

    impl Default for CmdTracker {
        fn default() -> Self {
            Self {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            }
        }
    }

    impl CmdTracker {
        pub fn push(&self, dev: u32, us: u64) {
            let mut m = self.shards[dev as usize % SHARDS].lock().expect("lock");
            m.entry(dev).or_default().push_back(us);
        }

        /// The publish time of the device's oldest undelivered command.
        pub fn pop(&self, dev: u32) -> Option<u64> {
            let mut m = self.shards[dev as usize % SHARDS].lock().expect("lock");
            let q = m.get_mut(&dev)?;
            let t = q.pop_front();
            if q.is_empty() {
                m.remove(&dev);
            }
            t
        }
    }
}
