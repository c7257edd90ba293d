//! The shards' shared monotonic millisecond clock.

use std::time::{Duration, Instant};

/// Monotonic milliseconds since a fixed start. `Copy`: every shard gets a copy of one
/// `Clock`, so their timestamps share an origin and compare across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    start: Instant,
}

impl Clock {
    /// A clock that starts now.
    pub fn new() -> Self {
        Clock {
            start: Instant::now(),
        }
    }

    /// A clock whose zero is `start`.
    pub fn with_start(start: Instant) -> Self {
        Clock { start }
    }

    /// The instant of millisecond 0.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Milliseconds since the start; never decreases.
    pub fn now_ms(&self) -> u64 {
        duration_ms(self.start.elapsed())
    }

    /// The `Instant` of a millisecond timestamp of this clock.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    /// The first millisecond timestamp of this clock at or after `at` (0 for instants
    /// before the start).
    pub fn ms_at(&self, at: Instant) -> u64 {
        let d = at.saturating_duration_since(self.start);
        let ms = duration_ms(d);
        if Duration::from_millis(ms) < d {
            ms.saturating_add(1)
        } else {
            ms
        }
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Whole milliseconds of `d`, saturating at `u64::MAX`.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_share_the_origin_and_time_never_goes_back() {
        let a = Clock::new();
        let b = a;
        assert_eq!(a.start(), b.start());
        let mut last = a.now_ms();
        for _ in 0..1000 {
            let t = b.now_ms();
            assert!(t >= last);
            last = t;
        }
        assert_eq!(a.instant_at(5), a.start() + Duration::from_millis(5));
    }

    #[test]
    fn ms_at_rounds_up_and_inverts_instant_at() {
        let c = Clock::new();
        assert_eq!(c.ms_at(c.instant_at(7)), 7);
        assert_eq!(c.ms_at(c.instant_at(7) + Duration::from_micros(1)), 8);
        assert_eq!(c.ms_at(c.instant_at(7) - Duration::from_micros(1)), 7);
        assert_eq!(c.ms_at(c.start()), 0);
    }
}
