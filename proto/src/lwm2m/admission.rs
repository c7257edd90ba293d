//! Admission of new registrations: a token bucket per shard for `max_conn_rate`
//! (the listener's rate split evenly over the shards, so no shard waits on
//! another) and the listener-wide `max_connections` cap read from the directory.
//! Beyond either, a Register gets 5.03 with Max-Age so devices back off.

/// A token bucket on the core's millisecond clock.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second; 0 means unlimited.
    rate: f64,
    burst: f64,
    tokens: f64,
    last_ms: u64,
}

impl TokenBucket {
    pub fn new(rate_per_s: f64) -> Self {
        let burst = rate_per_s.max(1.0);
        Self {
            rate: rate_per_s,
            burst,
            tokens: burst,
            last_ms: 0,
        }
    }

    /// Takes one token if there is one; else returns how many seconds until there is.
    pub fn take(&mut self, now: u64) -> Result<(), u32> {
        if self.rate <= 0.0 || !self.rate.is_finite() {
            return Ok(());
        }
        let dt = now.saturating_sub(self.last_ms) as f64 / 1000.0;
        self.last_ms = self.last_ms.max(now);
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / self.rate;
            Err(wait.ceil().max(1.0) as u32)
        }
    }

    /// Returns a token taken for something that passes it on (the first block
    /// of a Register body hands its token to the Register itself).
    pub fn give_back(&mut self) {
        if self.rate > 0.0 && self.rate.is_finite() {
            self.tokens = (self.tokens + 1.0).min(self.burst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_refills_at_rate() {
        let mut b = TokenBucket::new(10.0);
        for _ in 0..10 {
            assert!(b.take(0).is_ok());
        }
        assert_eq!(b.take(0), Err(1));
        assert!(b.take(100).is_ok(), "one token per 100 ms");
        assert!(b.take(100).is_err());
        assert!(TokenBucket::new(0.0).take(0).is_ok(), "0 = unlimited");
        b.give_back();
        assert!(b.take(100).is_ok(), "a token given back is taken again");
        assert!(b.take(100).is_err());
    }
}
