//! Hierarchical hashed timer wheel with millisecond ticks.
//!
//! # Layout
//! Six levels of 64 slots. A slot of level `L` spans `64^L` ms, so the wheel covers
//! `64^6` ms (about 795 days). Time is an absolute `u64` millisecond count on the caller's
//! clock: the caller passes `now` to [`TimerWheel::advance`]; the wheel never reads a clock.
//!
//! An entry with deadline `d` goes to the level of the highest 6-bit digit in which `d`
//! differs from the wheel's current time, in the slot named by that digit of `d`. The slot
//! is *reached* when the current time arrives at `d` with its lower digits cleared; at that
//! moment a level-0 slot fires its entries (they all have deadline exactly `d`) and a higher
//! slot cascades: every entry is placed again relative to the new current time, which puts it
//! on a lower level. Each entry therefore moves at most five times before it fires, so
//! insertion is O(1) and firing is amortised O(1). Slot vectors keep their allocation when
//! they are emptied, so a steady state of inserts and firings allocates nothing; the price is
//! that each of the 384 slots keeps the capacity of the largest batch it ever held.
//!
//! [`TimerWheel::next_deadline`] is exact for the next 64 ms and a lower bound beyond: the time
//! the earliest occupied slot is reached. A caller that sleeps until it wakes at most six times
//! on the way to a deadline (once per level it cascades through), never late.
//!
//! A deadline beyond the horizon is parked in the farthest top-level slot that is still not
//! later than the deadline; when that slot is reached the entry is placed again, as many
//! times as it takes.
//!
//! # No cancellation
//! There is no `cancel`. A caller that may want to forget a timer stores a generation number
//! in the item (for example `(endpoint_id, generation)`), bumps the generation in its own
//! state when the timer becomes obsolete, and ignores a fired item whose generation is stale.
//! This keeps every entry a plain `(deadline, T)` in a vector, with no handles or back-links.

use std::mem;

/// Bits of a deadline that index one level.
const LEVEL_BITS: usize = 6;
/// Slots per level.
const SLOTS: usize = 1 << LEVEL_BITS;
/// Levels in the wheel.
const LEVELS: usize = 6;
/// Mask of one level's digit.
const DIGIT_MASK: u64 = SLOTS as u64 - 1;
/// Shift of the top level's digit.
const TOP_SHIFT: usize = LEVEL_BITS * (LEVELS - 1);

/// Milliseconds the wheel covers without re-placing an entry: `64^6` (about 795 days).
pub const HORIZON_MS: u64 = 1 << (LEVEL_BITS * LEVELS);

struct Entry<T> {
    deadline: u64,
    item: T,
}

struct Level<T> {
    /// Bit `i` set when `slots[i]` is non-empty.
    occupied: u64,
    slots: [Vec<Entry<T>>; SLOTS],
}

impl<T> Level<T> {
    fn new() -> Self {
        Level {
            occupied: 0,
            slots: std::array::from_fn(|_| Vec::new()),
        }
    }
}

/// A hierarchical timer wheel holding items of type `T` (see the [module docs](self)).
pub struct TimerWheel<T> {
    levels: [Level<T>; LEVELS],
    /// The first millisecond not yet processed. Every entry in a slot has `deadline >= elapsed`.
    elapsed: u64,
    /// Entries inserted with a deadline already processed; they fire on the next advance.
    overdue: Vec<Entry<T>>,
    /// Smallest deadline in `overdue` (meaningless when it is empty).
    overdue_min: u64,
    len: usize,
}

impl<T> TimerWheel<T> {
    /// An empty wheel whose current time is `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        TimerWheel {
            levels: std::array::from_fn(|_| Level::new()),
            elapsed: now_ms,
            overdue: Vec::new(),
            overdue_min: u64::MAX,
            len: 0,
        }
    }

    /// Schedules `item` at `deadline_ms`. A deadline at or before the current time fires on
    /// the next [`advance`](Self::advance). O(1).
    pub fn insert(&mut self, deadline_ms: u64, item: T) {
        self.len += 1;
        let entry = Entry {
            deadline: deadline_ms,
            item,
        };
        if deadline_ms < self.elapsed {
            self.overdue_min = self.overdue_min.min(deadline_ms);
            self.overdue.push(entry);
        } else {
            self.place(entry);
        }
    }

    /// Fires everything due at or before `now_ms`, appending the items to `fired` in deadline
    /// order (ties come out in no particular order). A `now_ms` earlier than a previous one only
    /// fires the overdue entries.
    pub fn advance(&mut self, now_ms: u64, fired: &mut Vec<T>) {
        self.fire_overdue(fired);
        if now_ms < self.elapsed {
            return;
        }
        while let Some((level, index, reach)) = self.next_slot() {
            if reach > now_ms {
                break;
            }
            self.elapsed = self.elapsed.max(reach);
            self.process_slot(level, index, fired);
        }
        self.elapsed = now_ms.saturating_add(1);
    }

    /// The earliest pending deadline, or `None` when the wheel is empty.
    ///
    /// Exact for a deadline in the next 64 ms and for an overdue entry (which is then earlier
    /// than the current time); otherwise a lower bound: the time the slot holding the earliest
    /// entries is reached, never later than their deadline and never earlier than the current
    /// time. Advancing to it may fire nothing, and the caller simply asks again.
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.overdue.is_empty() {
            return Some(self.overdue_min);
        }
        self.next_slot().map(|(_, _, reach)| reach)
    }

    /// Number of pending entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no entry is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn fire_overdue(&mut self, fired: &mut Vec<T>) {
        if self.overdue.is_empty() {
            return;
        }
        // Stable: equal deadlines keep insertion order.
        self.overdue.sort_by_key(|e| e.deadline);
        self.len -= self.overdue.len();
        fired.extend(self.overdue.drain(..).map(|e| e.item));
        self.overdue_min = u64::MAX;
    }

    /// Puts an entry with `deadline >= elapsed` into its slot.
    fn place(&mut self, entry: Entry<T>) {
        debug_assert!(entry.deadline >= self.elapsed);
        let (level, index) = slot_for(self.elapsed, entry.deadline);
        let lvl = &mut self.levels[level];
        lvl.occupied |= 1 << index;
        lvl.slots[index].push(entry);
    }

    /// The occupied slot reached first: `(level, index, reach time)`. On a tie the higher
    /// level wins, so that its cascade lands before the level-0 slot of the same time fires.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for level in (0..LEVELS).rev() {
            let occupied = self.levels[level].occupied;
            if occupied == 0 {
                continue;
            }
            let shift = level * LEVEL_BITS;
            let current = self.elapsed >> shift;
            // Distance, in slots of this level, from the current digit to the next occupied one.
            // Every entry was placed less than 64 slots ahead, so the rotation is unambiguous.
            let ahead = u64::from(
                occupied
                    .rotate_right((current & DIGIT_MASK) as u32)
                    .trailing_zeros(),
            );
            let reach = (current + ahead) << shift;
            let earlier = match best {
                Some((_, _, r)) => reach < r,
                None => true,
            };
            if earlier {
                best = Some((level, ((current + ahead) & DIGIT_MASK) as usize, reach));
            }
        }
        best
    }

    /// Empties one reached slot: level 0 fires, higher levels cascade.
    fn process_slot(&mut self, level: usize, index: usize, fired: &mut Vec<T>) {
        let mut entries = mem::take(&mut self.levels[level].slots[index]);
        self.levels[level].occupied &= !(1 << index);
        if level == 0 {
            self.len -= entries.len();
            fired.extend(entries.drain(..).map(|e| e.item));
        } else {
            for entry in entries.drain(..) {
                if entry.deadline < self.elapsed {
                    // Unreachable while the placement invariant holds; firing is the safe answer.
                    self.len -= 1;
                    fired.push(entry.item);
                } else {
                    self.place(entry);
                }
            }
        }
        // Give the (now empty) allocation back to the slot for reuse. A cascade never places
        // an entry in the slot being emptied, so the slot is still empty here.
        let slot = &mut self.levels[level].slots[index];
        if slot.is_empty() {
            *slot = entries;
        }
    }
}

/// `(level, slot index)` for `deadline >= elapsed`.
fn slot_for(elapsed: u64, deadline: u64) -> (usize, usize) {
    // Highest differing digit; the low digit always counts, so equal times land on level 0.
    let masked = (elapsed ^ deadline) | DIGIT_MASK;
    let level = (63 - masked.leading_zeros() as usize) / LEVEL_BITS;
    if level < LEVELS {
        let index = (deadline >> (level * LEVEL_BITS)) & DIGIT_MASK;
        return (level, index as usize);
    }
    // Beyond the horizon: the farthest top-level slot (63 slots ahead), or the one holding the
    // deadline if that comes first. No overflow: a higher epoch than `elapsed`'s exists, so
    // `elapsed >> TOP_SHIFT` is far below `2^34 - 63`.
    let farthest = ((elapsed >> TOP_SHIFT) + DIGIT_MASK) << TOP_SHIFT;
    let parked = deadline.min(farthest);
    (LEVELS - 1, ((parked >> TOP_SHIFT) & DIGIT_MASK) as usize)
}

impl<T> std::fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimerWheel")
            .field("elapsed", &self.elapsed)
            .field("len", &self.len)
            .field("next_deadline", &self.next_deadline())
            .finish()
    }
}
