//! Timer slack: a far deadline moved a little later, onto a coarser grid, so that the many
//! timers a busy shard arms at distinct milliseconds (a retransmission timer per request,
//! most of them stale by the time they come due) share their wake-ups.
//!
//! A deadline `d` ms ahead is rounded up to a multiple of the largest power of two not above
//! `d / 64`, capped at [`MAX_SLACK_MS`]: at most 1/64 of the delay late (1.6%) and never more
//! than 63 ms. Deadlines less than 128 ms ahead are kept to the millisecond. Linux does the
//! same for the timeouts of a thread's sleeps (`timerslack_ns`); here it is the caller's choice,
//! per timer, because only the caller knows which timers tolerate it.

/// The coarsest grid a deadline is rounded to, in milliseconds.
pub const MAX_SLACK_MS: u64 = 64;

/// `deadline_ms`, rounded up onto a grid as coarse as its distance from `now_ms` allows (see
/// the [module docs](self)). Never earlier than `deadline_ms`; at most `(deadline_ms -
/// now_ms) / 64` and at most 63 ms later.
pub fn with_slack(now_ms: u64, deadline_ms: u64) -> u64 {
    let ahead = deadline_ms.saturating_sub(now_ms);
    let allowed = (ahead / 64).min(MAX_SLACK_MS);
    if allowed < 2 {
        return deadline_ms;
    }
    // The largest power of two not above `allowed`.
    let grid = 1u64 << (63 - allowed.leading_zeros());
    deadline_ms.div_ceil(grid).saturating_mul(grid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_deadlines_are_exact() {
        for ahead in 0..128 {
            assert_eq!(with_slack(1_000_003, 1_000_003 + ahead), 1_000_003 + ahead);
        }
        assert_eq!(with_slack(500, 100), 100, "a past deadline stays as it is");
    }

    #[test]
    fn far_deadlines_land_on_a_grid_never_early_and_barely_late() {
        let now = 7_777_777;
        for ahead in (128..400_000).step_by(7) {
            let d = now + ahead;
            let s = with_slack(now, d);
            assert!(s >= d, "early: {d} -> {s}");
            assert!(
                s - d <= ahead / 64,
                "more than 1/64 late: {ahead} -> +{}",
                s - d
            );
            assert!(s - d < MAX_SLACK_MS, "more than 63 ms late");
        }
        // A CoAP retransmission timer (2 to 3 s): a grid of 16 or 32 ms.
        assert_eq!(with_slack(now, now + 2_000) % 16, 0);
        // Timers armed at different milliseconds share the grid's wake-ups.
        let distinct: std::collections::BTreeSet<u64> = (0..1000)
            .map(|i| with_slack(now + i, now + i + 2_500))
            .collect();
        assert!(
            distinct.len() <= 1000 / 32 + 2,
            "{} wake-ups",
            distinct.len()
        );
    }

    #[test]
    fn the_end_of_time_does_not_overflow() {
        assert!(with_slack(0, u64::MAX - 5) >= u64::MAX - 5);
    }
}
