//! What the core's machines may use while one input is handled, lent to them by
//! [`ShardCore`](super::ShardCore) for that call: the time, the settings, the outputs, the
//! counters and the shard's sources of message IDs, tokens and random numbers. Every
//! machine's own state stays its own; what it shares is these, passed explicitly.

use super::output::Outputs;
use super::settings::CoreSettings;
use super::stats::CoreStats;

/// One input's loan to a machine.
pub(super) struct Cx<'a> {
    pub now: u64,
    pub settings: &'a CoreSettings,
    pub out: &'a mut Outputs,
    pub stats: &'a mut CoreStats,
    pub ids: &'a mut Ids,
}

/// The shard's message IDs, tokens and random numbers (seeded, so a core is
/// deterministic for its seed).
#[derive(Debug)]
pub(super) struct Ids {
    next_mid: u16,
    token_seq: u32,
    rng: u64,
}

impl Ids {
    pub(super) fn new(seed: u64) -> Self {
        Ids {
            next_mid: (seed as u16) ^ 0x5a5a,
            token_seq: (seed >> 16) as u32,
            rng: seed | 1,
        }
    }

    /// A message ID for a message of ours.
    pub(super) fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// A token for a request of ours: unique among the shard's last 2^32, and not
    /// guessable from the previous one by a device that saw it.
    pub(super) fn token(&mut self) -> u32 {
        self.token_seq = self.token_seq.wrapping_add(1);
        // An odd multiplier is a bijection on u32: distinct sequence numbers give
        // distinct tokens.
        self.token_seq.wrapping_mul(0x9e37_79b1)
    }

    /// The next pseudo-random number (xorshift).
    pub(super) fn random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}
