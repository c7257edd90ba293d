//! Counters shared between the threads of a run, and latency histograms.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Microseconds since the start of the run.
#[derive(Debug, Clone, Copy)]
pub struct Clock(pub Instant);

impl Clock {
    pub fn new() -> Self {
        Self(Instant::now())
    }

    pub fn us(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// A latency histogram in microseconds (1 µs .. 10 min, 3 significant digits).
pub struct Hist(pub Histogram<u64>);

impl Hist {
    pub fn new() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"))
    }

    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    pub fn merge(&mut self, other: &Hist) {
        let _ = self.0.add(&other.0);
    }

    pub fn summary(&self) -> Percentiles {
        let h = &self.0;
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

/// Latency percentiles of one histogram.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Live counters, read by the progress line while the run goes on.
#[derive(Default)]
pub struct Counters {
    pub reg_sent: AtomicU64,
    pub reg_ok: AtomicU64,
    pub reg_failed: AtomicU64,
    /// Register requests answered 5.03 Service Unavailable: each retried (after the
    /// answer's Max-Age) while the device has retries left, else counted in
    /// `reg_failed` too.
    pub reg_unavailable: AtomicU64,
    /// Of `reg_unavailable`: those the device retried.
    pub reg_retried: AtomicU64,
    pub reg_timed_out: AtomicU64,
    pub retransmissions: AtomicU64,
    pub updates_sent: AtomicU64,
    pub updates_ok: AtomicU64,
    pub updates_failed: AtomicU64,
    pub updates_timed_out: AtomicU64,
    pub dereg_ok: AtomicU64,
    pub server_requests: AtomicU64,
    pub observations: AtomicU64,
    pub notify_sent: AtomicU64,
    pub notify_acked: AtomicU64,
    pub notify_timed_out: AtomicU64,
    pub notify_reset: AtomicU64,
    pub echo_sent: AtomicU64,
    pub echo_received: AtomicU64,
    pub mqtt_register_msgs: AtomicU64,
    /// Distinct endpoints of this run (`--prefix`) seen in register messages: another
    /// loadgen's devices on the same broker are not counted.
    pub mqtt_registered_own: AtomicU64,
    pub mqtt_notify_msgs: AtomicU64,
    pub mqtt_other_msgs: AtomicU64,
    pub cmd_sent: AtomicU64,
    pub cmd_answered: AtomicU64,
    pub cmd_errors: AtomicU64,
    pub cmd_timed_out: AtomicU64,
    pub send_failed: AtomicU64,
    /// DTLS handshakes started, completed, failed (error or timeout); sessions
    /// that failed after the handshake; records the session rejected.
    pub hs_started: AtomicU64,
    pub hs_ok: AtomicU64,
    pub hs_failed: AtomicU64,
    /// `--dtls-resume`: reconnections (handshakes offering the previous session),
    /// those the gateway resumed (abbreviated handshake).
    pub hs_reconnects: AtomicU64,
    pub hs_resumed: AtomicU64,
    pub dtls_session_errors: AtomicU64,
    pub dtls_bad_records: AtomicU64,
    /// Queue mode: commands the devices received (matched to a publish), those
    /// that arrived while the device was asleep (must be 0: the gateway holds
    /// them), those published while the device slept (held by the gateway), and
    /// every request of the gateway that arrived while asleep.
    pub cmd_delivered: AtomicU64,
    pub cmd_delivered_asleep: AtomicU64,
    pub cmd_held: AtomicU64,
    pub requests_while_asleep: AtomicU64,
}

/// Shorthand for relaxed counter updates.
pub fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}
