//! Timer wheel: exact firing times, random deadlines against a sorted reference, scale.

use std::collections::BTreeSet;

use shard::{TimerWheel, HORIZON_MS};

/// splitmix64: a small deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn advance<T>(wheel: &mut TimerWheel<T>, now: u64) -> Vec<T> {
    let mut fired = Vec::new();
    wheel.advance(now, &mut fired);
    fired
}

/// Sleeps from `start` to `deadline` the way the event loop does: always to the wheel's next
/// deadline. Checks that the entry fires exactly at its deadline and never early, and returns
/// the number of wake-ups it took.
fn fire_by_next_deadline(start: u64, deadline: u64) -> usize {
    let mut wheel = TimerWheel::new(start);
    wheel.insert(deadline, deadline);
    let mut now = start;
    let mut wakeups = 0;
    loop {
        let next = wheel.next_deadline().expect("entry pending");
        assert!(
            next <= deadline,
            "next_deadline {next} after deadline {deadline}"
        );
        assert!(next >= now, "next_deadline {next} before now {now}");
        now = next;
        wakeups += 1;
        let fired = advance(&mut wheel, now);
        if now == deadline {
            assert_eq!(fired, vec![deadline], "start {start}");
            assert!(wheel.is_empty());
            assert_eq!(wheel.next_deadline(), None);
            return wakeups;
        }
        assert!(
            fired.is_empty(),
            "fired early at {now} (deadline {deadline})"
        );
        assert!(wakeups < 100, "too many wake-ups for {start} -> {deadline}");
        // The loop wakes one ms later next time at the earliest.
        now += 1;
    }
}

fn interesting_deadlines(start: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for level in 0..=6u32 {
        let span = 64u64.pow(level);
        for base in [start + span, start.next_multiple_of(span).max(start)] {
            for d in [base.saturating_sub(1), base, base + 1] {
                if d >= start {
                    out.push(d);
                }
            }
        }
    }
    out.push(start);
    out
}

const STARTS: [u64; 9] = [
    0,
    1,
    63,
    64,
    4095,
    4096,
    123_456,
    64 * 64 * 64 * 64 * 64 - 1,
    (1 << 36) - 5,
];

#[test]
fn fires_exactly_at_every_level_boundary() {
    for start in STARTS {
        for deadline in interesting_deadlines(start) {
            // Jump to just before the deadline, then to it.
            let mut wheel = TimerWheel::new(start);
            wheel.insert(deadline, deadline);
            assert_eq!(wheel.len(), 1);
            if deadline > start {
                assert!(
                    advance(&mut wheel, deadline - 1).is_empty(),
                    "{start} -> {deadline}"
                );
            }
            assert_eq!(
                advance(&mut wheel, deadline),
                vec![deadline],
                "{start} -> {deadline}"
            );
            assert!(wheel.is_empty());

            // Sleep from one next_deadline to the next, like the event loop.
            // One wake-up per level cascaded through, when within 63 top-level slots.
            let wakeups = fire_by_next_deadline(start, deadline);
            let bound = if deadline - start < 63 << 30 { 6 } else { 10 };
            assert!(
                wakeups <= bound,
                "{wakeups} wake-ups for {start} -> {deadline}"
            );
        }
    }
}

#[test]
fn fires_exactly_when_stepping_one_ms_across_low_levels() {
    for start in [0u64, 37, 4000] {
        let mut wheel = TimerWheel::new(start);
        let deadlines: Vec<u64> = (0..70_000).step_by(7).map(|d| start + d).collect();
        for &d in &deadlines {
            wheel.insert(d, d);
        }
        let mut expected = deadlines.iter().copied().peekable();
        for now in start..start + 70_010 {
            for d in advance(&mut wheel, now) {
                assert_eq!(Some(d), expected.next(), "at {now}");
                assert_eq!(d, now);
            }
            assert!(
                !matches!(expected.peek(), Some(&d) if d <= now),
                "late at {now}"
            );
        }
        assert!(wheel.is_empty());
    }
}

#[test]
fn beyond_the_horizon_is_reinserted_until_due() {
    for start in [0u64, 5, (1 << 36) - 5, 1 << 40] {
        for deadline in [
            start + HORIZON_MS,
            start + HORIZON_MS + 1,
            start + 3 * HORIZON_MS + 12_345,
        ] {
            let wakeups = fire_by_next_deadline(start, deadline);
            assert!(
                wakeups <= 30,
                "{wakeups} wake-ups for {start} -> {deadline}"
            );

            let mut wheel = TimerWheel::new(start);
            wheel.insert(deadline, ());
            assert!(advance(&mut wheel, deadline - 1).is_empty());
            assert_eq!(advance(&mut wheel, deadline).len(), 1);
        }
    }
    // The largest deadline is accepted and never fires early.
    let mut wheel = TimerWheel::new(0);
    wheel.insert(u64::MAX, ());
    assert!(advance(&mut wheel, 10 * HORIZON_MS).is_empty());
    assert_eq!(wheel.len(), 1);
    assert!(wheel.next_deadline().unwrap() > 10 * HORIZON_MS);
}

#[test]
fn past_deadlines_fire_on_the_next_advance_in_deadline_order() {
    let mut wheel = TimerWheel::new(1000);
    assert!(advance(&mut wheel, 2000).is_empty());
    wheel.insert(1500, 1500);
    wheel.insert(10, 10);
    wheel.insert(2000, 2000); // the current time: due as well
    wheel.insert(2001, 2001);
    assert_eq!(wheel.next_deadline(), Some(10));
    assert_eq!(advance(&mut wheel, 2000), vec![10, 1500, 2000]);
    assert_eq!(wheel.next_deadline(), Some(2001));
    // A clock that goes back fires nothing new, but still fires the overdue.
    wheel.insert(0, 0);
    assert_eq!(advance(&mut wheel, 1999), vec![0]);
    assert_eq!(advance(&mut wheel, 2001), vec![2001]);

    // At creation time: a deadline equal to "now" fires on the first advance to now.
    let mut wheel = TimerWheel::new(500);
    wheel.insert(500, ());
    wheel.insert(3, ());
    assert_eq!(advance(&mut wheel, 500).len(), 2);
}

/// Reference model: every pending `(deadline, id)`, sorted.
struct Model {
    wheel: TimerWheel<(u64, u64)>,
    pending: BTreeSet<(u64, u64)>,
    next_id: u64,
    now: u64,
}

impl Model {
    fn new(start: u64) -> Self {
        Model {
            wheel: TimerWheel::new(start),
            pending: BTreeSet::new(),
            next_id: 0,
            now: start,
        }
    }

    fn insert(&mut self, deadline: u64) {
        let id = self.next_id;
        self.next_id += 1;
        self.wheel.insert(deadline, (deadline, id));
        self.pending.insert((deadline, id));
    }

    fn check_next_deadline(&self) {
        let next = self.wheel.next_deadline();
        match self.pending.first() {
            None => assert_eq!(next, None),
            Some(&(earliest, _)) => {
                let next = next.expect("pending entries");
                assert!(next <= earliest, "next_deadline {next} after {earliest}");
                if earliest > self.now {
                    assert!(
                        next > self.now,
                        "next_deadline {next} not after now {}",
                        self.now
                    );
                }
            }
        }
    }

    fn advance(&mut self, now: u64) {
        self.check_next_deadline();
        self.now = now;
        let fired = advance(&mut self.wheel, now);
        for pair in fired.windows(2) {
            assert!(pair[0].0 <= pair[1].0, "out of order: {pair:?}");
        }
        let mut fired_sorted = fired.clone();
        fired_sorted.sort_unstable();
        let later = self.pending.split_off(&(now + 1, 0));
        let due: Vec<(u64, u64)> = std::mem::replace(&mut self.pending, later)
            .into_iter()
            .collect();
        assert_eq!(fired_sorted, due, "at {now}");
        assert_eq!(self.wheel.len(), self.pending.len());
    }
}

fn random_deadline(rng: &mut Rng, now: u64) -> u64 {
    match rng.below(10) {
        0 => now.saturating_sub(rng.below(100)),
        1..=3 => now + rng.below(100),
        4..=5 => now + rng.below(10_000),
        6 => now + rng.below(5_000_000),
        7 => now + rng.below(1 << 31),
        8 => now + rng.below(HORIZON_MS),
        _ => now + rng.below(3 * HORIZON_MS),
    }
}

#[test]
fn random_deadlines_match_a_sorted_reference_stepping_one_ms() {
    let mut rng = Rng(1);
    for start in [0u64, 1_000_003] {
        let mut model = Model::new(start);
        for _ in 0..20_000 {
            let d = start + rng.below(30_000);
            model.insert(d);
        }
        for now in start..start + 31_000 {
            if rng.below(4) == 0 {
                let d = random_deadline(&mut rng, now);
                model.insert(d);
            }
            model.advance(now);
        }
    }
}

#[test]
fn random_deadlines_match_a_sorted_reference_in_big_jumps() {
    let mut rng = Rng(2);
    for start in [0u64, 77, (1 << 36) - 1000] {
        let mut model = Model::new(start);
        for _ in 0..50_000 {
            let d = random_deadline(&mut rng, start);
            model.insert(d);
        }
        let mut now = start;
        for step in 0..3_000 {
            now += match step % 4 {
                0 => rng.below(70),
                1 => rng.below(5_000),
                2 => rng.below(1 << 26),
                _ => rng.below(HORIZON_MS / 500),
            };
            for _ in 0..rng.below(20) {
                let d = random_deadline(&mut rng, now);
                model.insert(d);
            }
            model.advance(now);
        }
        model.advance(now + 4 * HORIZON_MS);
        assert!(model.wheel.is_empty());
    }
}

#[test]
fn random_deadlines_match_when_sleeping_to_next_deadline() {
    let mut rng = Rng(3);
    let mut model = Model::new(0);
    for _ in 0..5_000 {
        let d = random_deadline(&mut rng, 0);
        model.insert(d);
    }
    let mut steps = 0;
    while let Some(next) = model.wheel.next_deadline() {
        let now = next.max(model.now);
        model.advance(now);
        // The event loop never polls the same millisecond twice without reason.
        model.now = now;
        if rng.below(8) == 0 {
            let d = random_deadline(&mut rng, now);
            model.insert(d);
        }
        steps += 1;
        assert!(steps < 200_000);
    }
    assert!(model.pending.is_empty());
}

#[test]
fn a_million_entries() {
    const N: u64 = 1_000_000;
    const SPAN: u64 = 10_000_000;
    let mut rng = Rng(4);
    let mut wheel = TimerWheel::new(0);
    let mut deadlines = Vec::with_capacity(N as usize);
    for _ in 0..N {
        let d = rng.below(SPAN);
        deadlines.push(d);
        wheel.insert(d, d);
    }
    assert_eq!(wheel.len(), N as usize);
    deadlines.sort_unstable();
    let mut fired = Vec::new();
    let mut total = 0usize;
    let mut last = 0;
    let mut now = 0;
    while now < SPAN {
        now += 1 + rng.below(20_000);
        fired.clear();
        wheel.advance(now, &mut fired);
        for &d in &fired {
            assert!(d <= now, "{d} fired early at {now}");
            assert!(d >= last, "out of order");
            last = d;
        }
        total += fired.len();
        let due = deadlines.partition_point(|&d| d <= now);
        assert_eq!(total, due, "late at {now}");
    }
    assert_eq!(total, N as usize);
    assert!(wheel.is_empty());
}
