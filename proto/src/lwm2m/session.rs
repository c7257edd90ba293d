//! Device-management state of one endpoint: commands waiting to be sent, requests
//! in flight (CoAP client side, RFC 7252 §4), and observations (RFC 7641). Only
//! endpoints that have seen a command carry one; idle registrations cost nothing.

use super::command::Command;
use crate::model::LwPath;
use std::collections::VecDeque;

/// A command waiting for its turn (NSTART) or for a sleeping device to wake.
#[derive(Debug)]
pub struct Queued {
    pub cmd: Command,
    /// Token the request will carry; also identifies the deadline timer.
    pub token: u32,
    /// When it stops being worth sending; None: never.
    pub deadline: Option<Deadline>,
    /// An auto-observe request (not asked for by an application).
    pub auto: bool,
}

/// When a waiting command expires, and which limit set that time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Core clock, ms.
    pub at_ms: u64,
    pub limit: Limit,
}

/// The limit behind a [`Deadline`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The MQTT 5 message-expiry interval the command arrived with, seconds.
    MqttExpiry(u32),
    /// `queue.default_ttl` of a queue-mode device, ms.
    QueueTtl(u64),
}

impl Deadline {
    /// The earlier of the two limits, counted from `arrived_ms`: the command's MQTT
    /// message expiry (`expiry_s`) and, for a queue-mode device, `queue.default_ttl`
    /// (`ttl_ms`, 0 = none).
    pub fn earliest(arrived_ms: u64, expiry_s: Option<u32>, ttl_ms: u64) -> Option<Deadline> {
        let mqtt = expiry_s.map(|s| Deadline {
            at_ms: arrived_ms.saturating_add(s as u64 * 1000),
            limit: Limit::MqttExpiry(s),
        });
        let ttl = (ttl_ms > 0).then(|| Deadline {
            at_ms: arrived_ms.saturating_add(ttl_ms),
            limit: Limit::QueueTtl(ttl_ms),
        });
        match (mqtt, ttl) {
            (Some(m), Some(t)) => Some(if t.at_ms < m.at_ms { t } else { m }),
            (m, t) => m.or(t),
        }
    }

    /// What ran out, for the error message.
    pub fn describe(&self) -> String {
        match self.limit {
            Limit::MqttExpiry(s) => format!("its MQTT message-expiry interval ({s} s) ran out"),
            Limit::QueueTtl(ms) => {
                format!("queue.default_ttl ({} s) ran out", ms as f64 / 1000.0)
            }
        }
    }
}

/// A confirmable request sent to the device and not yet finished.
#[derive(Debug)]
pub struct Exchange {
    pub token: u32,
    pub mid: u16,
    /// The request, kept for retransmission.
    pub datagram: Vec<u8>,
    pub retransmits: u32,
    pub timeout_ms: u64,
    /// An empty ACK came: the response will be a separate one.
    pub acked: bool,
    /// When the empty ACK came; the separate response may take EXCHANGE_LIFETIME.
    pub acked_ms: u64,
    pub cmd: Command,
    pub auto: bool,
    /// A block-wise transfer (RFC 7959) this exchange is a step of.
    pub block: Option<Box<super::transfer::Transfer>>,
}

impl Exchange {
    /// This exchange fetches the rest of a notification sent in Block2 blocks: it is no
    /// command of its own (its command, the observe, has had its final message), so its
    /// end, whatever it is, publishes nothing.
    pub fn completes_notification(&self) -> bool {
        self.block.as_ref().is_some_and(|t| t.notify.is_some())
    }
}

/// An observation the device accepted: of one path (`observe`), or of several at once
/// (`observe-composite`, its paths in `cmd.paths`, `path` the root).
#[derive(Debug)]
pub struct Observation {
    pub token: u32,
    pub path: LwPath,
    /// The observe command, echoed in every notification; a composite observation's
    /// `cancel-observe-composite` repeats its body and Accept.
    pub cmd: Command,
    pub last_seq: Option<u32>,
    pub last_ms: u64,
}

/// How many device message IDs are remembered to acknowledge duplicates.
const RECENT_MIDS: usize = 16;
/// Read and discover results remembered per endpoint for the API's `lookup`.
const RESULTS: usize = 8;
/// Content larger than this is not remembered (the result is, without its content).
pub const RESULT_CONTENT_MAX: usize = 16 * 1024;

/// The last answer to a read or discover of one path (EMQX's `lookup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastResult {
    pub op: super::command::Op,
    pub path: Box<str>,
    pub code: u8,
    /// The `content` JSON as published.
    pub content: Option<Box<[u8]>>,
}

#[derive(Debug, Default)]
pub struct Session {
    pub queue: VecDeque<Queued>,
    pub inflight: Vec<Exchange>,
    pub observations: Vec<Observation>,
    recent_mids: VecDeque<(u16, u64)>,
    /// Newest last, one per (op, path).
    pub results: VecDeque<LastResult>,
}

impl Session {
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.inflight.is_empty() && self.observations.is_empty()
    }

    /// Whether a request in flight, a queued command or an observation uses `token`.
    pub fn uses_token(&self, token: u32) -> bool {
        self.exchange_by_token(token).is_some()
            || self.observation_by_token(token).is_some()
            || self.queue.iter().any(|q| q.token == token)
    }

    pub fn exchange_by_token(&self, token: u32) -> Option<usize> {
        self.inflight.iter().position(|e| e.token == token)
    }

    pub fn exchange_by_mid(&self, mid: u16) -> Option<usize> {
        self.inflight.iter().position(|e| e.mid == mid)
    }

    pub fn observation_by_token(&self, token: u32) -> Option<usize> {
        self.observations.iter().position(|o| o.token == token)
    }

    /// The single-path observation of `path`.
    pub fn observation_by_path(&self, path: &LwPath) -> Option<usize> {
        self.observations
            .iter()
            .position(|o| !o.cmd.op.is_composite() && o.path == *path)
    }

    /// The composite observation of `paths` (the same paths, in any order).
    pub fn observation_by_paths(&self, paths: &[LwPath]) -> Option<usize> {
        let mut want = paths.to_vec();
        want.sort_unstable();
        self.observations.iter().position(|o| {
            o.cmd.op.is_composite() && {
                let mut have = o.cmd.paths.clone();
                have.sort_unstable();
                have == want
            }
        })
    }

    /// The observation an observe or cancel command `cmd` is about: the composite one of its
    /// paths, or the one of its path.
    pub fn observation_of(&self, cmd: &Command) -> Option<usize> {
        if cmd.op.is_composite() {
            self.observation_by_paths(&cmd.paths)
        } else {
            self.observation_by_path(&cmd.path)
        }
    }

    /// Records a confirmable message ID from the device; true if it was seen within
    /// `lifetime_ms` (a retransmission).
    pub fn seen_mid(&mut self, mid: u16, now: u64, lifetime_ms: u64) -> bool {
        if self.was_seen(mid, now, lifetime_ms) {
            return true;
        }
        if self.recent_mids.len() == RECENT_MIDS {
            self.recent_mids.pop_front();
        }
        self.recent_mids.push_back((mid, now));
        false
    }
}

impl Session {
    /// Remembers `r`, replacing the result of the same op and path; the oldest goes when full.
    pub fn remember(&mut self, r: LastResult) {
        self.results.retain(|x| !(x.op == r.op && x.path == r.path));
        if self.results.len() == RESULTS {
            self.results.pop_front();
        }
        self.results.push_back(r);
    }

    pub fn result(&self, op: super::command::Op, path: &str) -> Option<&LastResult> {
        self.results.iter().find(|x| x.op == op && &*x.path == path)
    }

    /// Whether a CON with `mid` was acknowledged within `lifetime_ms` (without recording it).
    pub fn was_seen(&self, mid: u16, now: u64, lifetime_ms: u64) -> bool {
        self.recent_mids
            .iter()
            .any(|&(m, at)| m == mid && now.saturating_sub(at) < lifetime_ms)
    }
}

/// RFC 7641 §3.4: is a notification with sequence `v2` at `t2` newer than the last
/// one delivered (`v1` at `t1`)?
pub fn is_fresh(last: Option<u32>, last_ms: u64, v2: u32, now: u64) -> bool {
    let Some(v1) = last else { return true };
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || now > last_ms + 128_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_per_rfc7641() {
        assert!(is_fresh(None, 0, 5, 0));
        assert!(is_fresh(Some(5), 0, 6, 1));
        assert!(!is_fresh(Some(6), 0, 5, 1));
        assert!(!is_fresh(Some(6), 0, 6, 1));
        // Wrap-around of the 24-bit space.
        assert!(is_fresh(Some((1 << 24) - 1), 0, 1, 1));
        // An old sequence number after 128 s is taken as new.
        assert!(is_fresh(Some(6), 0, 5, 129_000));
    }

    #[test]
    fn deadline_is_the_earlier_limit() {
        assert_eq!(Deadline::earliest(1_000, None, 0), None);
        let d = Deadline::earliest(1_000, Some(30), 60_000).unwrap();
        assert_eq!((d.at_ms, d.limit), (31_000, Limit::MqttExpiry(30)));
        let d = Deadline::earliest(1_000, Some(90), 60_000).unwrap();
        assert_eq!((d.at_ms, d.limit), (61_000, Limit::QueueTtl(60_000)));
        let d = Deadline::earliest(1_000, None, 60_000).unwrap();
        assert_eq!(d.limit, Limit::QueueTtl(60_000));
        assert!(d.describe().contains("queue.default_ttl (60 s)"));
        let d = Deadline::earliest(1_000, Some(0), 0).unwrap();
        assert_eq!(d.at_ms, 1_000);
        assert!(d.describe().contains("MQTT message-expiry interval (0 s)"));
    }

    #[test]
    fn mid_dedup_is_bounded() {
        let mut s = Session::default();
        assert!(!s.seen_mid(1, 0, 247_000));
        assert!(s.seen_mid(1, 10, 247_000));
        assert!(!s.seen_mid(1, 300_000, 247_000));
        for m in 2..100 {
            s.seen_mid(m, 300_000, 247_000);
        }
        assert!(s.recent_mids.len() <= RECENT_MIDS);
    }
}
