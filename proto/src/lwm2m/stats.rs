//! Per-shard counters of the protocol core (plain integers: one shard owns them).

/// Upper bounds (ms) of the command round-trip histogram buckets; one more bucket
/// counts everything above the last.
pub const RTT_BOUNDS_MS: [u64; 12] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/// Command round trips (MQTT command taken → final response from the device), ms.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RttHistogram {
    /// Non-cumulative counts per bucket of [`RTT_BOUNDS_MS`], then the overflow.
    pub buckets: [u64; 13],
    pub sum_ms: u64,
    pub count: u64,
}

impl CoreStats {
    /// Counts a command's final message.
    pub fn ended(&mut self, op: Option<super::command::Op>, outcome: Outcome) {
        let row = op.map_or(UNKNOWN_MSG_TYPE, super::command::Op::index);
        self.outcomes[row][outcome as usize] += 1;
    }

    /// `n` commands left device queues. A gauge must never take a shard down: a
    /// miscount is a bug the debug builds (the tests) catch, and saturates in release.
    pub fn unqueued(&mut self, n: u64) {
        debug_assert!(self.commands_waiting >= n, "commands_waiting miscounted");
        self.commands_waiting = self.commands_waiting.saturating_sub(n);
    }
}

impl RttHistogram {
    pub fn observe(&mut self, ms: u64) {
        let i = RTT_BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(RTT_BOUNDS_MS.len());
        self.buckets[i] += 1;
        self.sum_ms += ms;
        self.count += 1;
    }
}

/// How a command ended: the kind of its one final MQTT message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The device's final response (any code).
    Response,
    /// No answer after the last retransmission (`coap_timeout`).
    Timeout,
    /// The device answered with a Reset (`coap_reset`).
    Reset,
    /// Its deadline passed while it waited in the device's queue.
    Expired,
    /// Its endpoint left (de-registered, expired, kicked, replaced).
    Dropped,
    /// The device's command queue was full.
    QueueFull,
    /// Refused before it reached the device (malformed, unknown endpoint, no session).
    Rejected,
    /// A block-wise transfer of it could not be finished (too large, out of order).
    BlockAborted,
    /// The gateway was overloaded: the shard holding its endpoint could not take it
    /// (a full mailbox, or too many cross-shard messages waiting); answered 5.03.
    Shed,
}

impl Outcome {
    /// Every outcome, in the order of their `as usize` values.
    pub const ALL: [Outcome; 9] = [
        Self::Response,
        Self::Timeout,
        Self::Reset,
        Self::Expired,
        Self::Dropped,
        Self::QueueFull,
        Self::Rejected,
        Self::BlockAborted,
        Self::Shed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Response => "response",
            Self::Timeout => "timeout",
            Self::Reset => "reset",
            Self::Expired => "expired",
            Self::Dropped => "dropped",
            Self::QueueFull => "queue_full",
            Self::Rejected => "rejected",
            Self::BlockAborted => "block_aborted",
            Self::Shed => "shed",
        }
    }
}

/// Rows of [`CoreStats::outcomes`]: one per `Op::index`, then this one for commands
/// whose msgType is missing or unknown.
pub const UNKNOWN_MSG_TYPE: usize = super::command::Op::COUNT;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreStats {
    /// Round trips of commands answered by their device.
    pub command_rtt: RttHistogram,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Not a well-formed CoAP message.
    pub malformed: u64,
    /// Resets we sent (format errors, pings).
    pub resets_sent: u64,
    pub pings: u64,
    /// Retransmitted requests answered from the reply cache.
    pub duplicates: u64,
    pub registrations: u64,
    /// Registrations that replaced an earlier one of the same endpoint name.
    pub replaced: u64,
    pub updates: u64,
    /// Updates that moved an endpoint to a new address.
    pub rebinds: u64,
    pub deregistrations: u64,
    pub expiries: u64,
    /// Registrations taken back from the store at start (`Input::Restore`).
    pub restored: u64,
    /// Restored registrations refused: their name or location was taken already.
    pub restore_refused: u64,
    /// Registrations taken over from another node through the shared store.
    pub cluster_adopted: u64,
    /// Takeovers through the shared store that found nothing (answered 4.04).
    pub cluster_missed: u64,
    /// Datagrams from unknown addresses held while the shared store was asked for the
    /// address's registration (`peer_takes.rs`).
    pub peer_takes_asked: u64,
    /// Datagrams from an address dropped while such a lookup was in flight.
    pub peer_takes_waiting: u64,
    /// Datagrams from unknown addresses dropped over the rate of such lookups.
    pub peer_takes_limited: u64,
    /// Registrations another node took over (removed here without a message).
    pub cluster_released: u64,
    /// Command subscriptions of registrations another node took over, kept for the
    /// handover (`handover.rs`).
    pub handovers_kept: u64,
    /// Kept subscriptions given up because the new node said its own was in place.
    pub handovers_confirmed: u64,
    /// Kept subscriptions given up at the deadline (the new node's notice never came).
    pub handovers_timed_out: u64,
    /// Subscriptions kept for handovers now (a gauge).
    pub handovers_pending: u64,
    /// Registration records written out for the store (`Output::Store` puts).
    pub records_written: u64,
    /// Requests answered 4.00 (bad parameters or payload).
    pub bad_requests: u64,
    /// Registers refused (4.00, also counted in `bad_requests`) because a value they
    /// carry would make an invalid MQTT topic or filter.
    pub bad_topics: u64,
    /// Takeovers from another shard that got no answer in time (asked again later).
    pub takeover_timeouts: u64,
    /// Requests for an unknown location or path (4.04/4.05).
    pub not_found: u64,
    /// Requests with an unknown critical option (4.02).
    pub bad_options: u64,
    /// Responses, ACKs and Resets that matched nothing.
    pub unmatched: u64,
    pub takeovers_out: u64,
    pub takeovers_in: u64,
    pub published: u64,
    /// Registers sent to the authentication server.
    pub auth_requests: u64,
    /// Registers the authentication server denied (or did not answer in time).
    pub auth_denied: u64,
    pub auth_timeouts: u64,
    /// Registers refused because too many waited for the authentication server.
    pub auth_overflow: u64,
    /// Requests refused 4.03 (DTLS identity not allowed for the endpoint).
    pub forbidden: u64,
    /// Registrations removed through the management API.
    pub kicked: u64,
    /// Registers refused by `max_conn_rate` (5.03).
    pub rate_limited: u64,
    /// Registers refused by `max_connections` (5.03).
    pub over_capacity: u64,
    /// Commands accepted for a device (including auto-observe).
    pub commands: u64,
    /// The same by operation, indexed by `Op::index`.
    pub commands_by_op: [u64; super::command::Op::COUNT],
    /// Commands answered 4.00 (malformed, unknown endpoint) or not ours.
    pub commands_rejected: u64,
    /// Queued commands whose time to live ran out.
    pub commands_expired: u64,
    /// Commands ended because their endpoint left.
    pub commands_dropped: u64,
    /// Commands forwarded to another shard that could not be handed over (answered 5.03).
    pub commands_shed: u64,
    /// Commands ended (their final MQTT message published), by msgType (`Op::index`, then
    /// [`UNKNOWN_MSG_TYPE`]) and [`Outcome`].
    pub outcomes: [[u64; Outcome::ALL.len()]; UNKNOWN_MSG_TYPE + 1],
    /// Commands waiting in device queues (sleeping queue-mode devices, NSTART, lost DTLS
    /// sessions) of the endpoints this shard holds (gauge, kept as commands enter and
    /// leave the queues).
    pub commands_waiting: u64,
    pub queue_overflows: u64,
    pub requests_sent: u64,
    pub retransmissions: u64,
    /// Exchanges that got no answer (coap_timeout).
    pub timeouts: u64,
    pub resets_received: u64,
    pub responses: u64,
    pub notifications: u64,
    /// Notifications older than one already delivered (RFC 7641 §3.4).
    pub stale_notifications: u64,
    /// Block-wise (RFC 7959): blocks sent (Block1 requests, Block2 follow-ups).
    pub blocks_sent: u64,
    /// Blocks received (Block2 responses, Block1 requests of devices).
    pub blocks_received: u64,
    /// Block-wise transfers completed, both directions.
    pub block_transfers: u64,
    /// Transfers aborted: over `max_body_size` or a memory cap, out of order.
    pub block_aborts: u64,
    /// Partial request bodies dropped after `exchange_lifetime` without progress.
    pub block_expired: u64,
    /// Bytes held by block-wise state at the last block-wise event (gauge).
    pub block_bytes_held: u64,
    /// Plain CoAP datagrams from the address of a registration made over DTLS
    /// (dropped: plain CoAP may not act for it).
    pub plain_from_secure_peer: u64,
    /// Registrations made over DTLS whose session ended (commands queue until a
    /// new session speaks for them).
    pub dtls_sessions_lost: u64,
    /// Partial request bodies held at the last block-wise event (gauge).
    pub block_partials: u64,
    /// Block-wise limits hit, by `blockwise::BlockLimit::index` (max_body_size,
    /// device_cap, shard_cap, partials, rate).
    pub block_limits: [u64; 5],
    /// LwM2M Sends (`POST /dp`) answered 2.04 and published.
    pub sends: u64,
    /// Values those Sends carried.
    pub sent_values: u64,
    /// Sends refused, by `send::SendRefusal::index` (not registered, forbidden,
    /// unsupported format, malformed).
    pub sends_refused: [u64; 4],
    /// Sends left unanswered while their registration was being taken over from
    /// another shard (the device retransmits them).
    pub sends_deferred: u64,
    /// Inputs shed while the broker connections were congested, by `shed::Shed::index`
    /// (register, update, send, notification).
    pub shed: [u64; 4],
    /// 1 while the broker connections are congested (gauge).
    pub congested: u64,
    /// Bootstraps started (Bootstrap-Request answered 2.04), finished (Bootstrap-Finish
    /// acknowledged) and failed (a step's error code, Reset or timeout).
    pub bootstraps_started: u64,
    pub bootstraps_finished: u64,
    pub bootstraps_failed: u64,
    /// Bootstrap-Requests refused, by `bootstrap_flow::BsRefusal::index` (malformed,
    /// forbidden, no configuration, rate limited, too many in progress).
    pub bootstraps_refused: [u64; 5],
    /// Bootstraps a new Bootstrap-Request of the same device restarted.
    pub bootstraps_restarted: u64,
    /// The gateway's bootstrap requests (Delete, Write, Finish), their retransmissions,
    /// and the steps that failed by error code, Reset and timeout.
    pub bootstrap_requests: u64,
    pub bootstrap_retransmissions: u64,
    pub bootstrap_errors: u64,
    pub bootstrap_resets: u64,
    pub bootstrap_timeouts: u64,
    /// Bootstraps in progress on the shard (gauge).
    pub bootstraps_active: u64,
}
