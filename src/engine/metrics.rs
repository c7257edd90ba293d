//! The gateway's Prometheus metrics: per-shard protocol counters, socket and
//! mailbox drops, command routing, MQTT. Read from snapshots and atomics; nothing
//! here touches a shard. The text format wants each family's lines together (one
//! HELP and TYPE, then every sample): each family is written by one loop over the
//! shards, never interleaved with another. The families come in a fixed order, one
//! function per group.

use super::admin::GatewayAdmin;
use super::udp_shard::ShardCounters;
use crate::dtls::DtlsStats;
use crate::lwm2m::command::Op;
use crate::lwm2m::stats::{Outcome, UNKNOWN_MSG_TYPE};
use crate::lwm2m::CoreStats;
use crate::metrics::Writer;
use crate::mqtt::MqttStats;
use std::sync::atomic::{AtomicU64, Ordering};
use Kind::{Counter, Gauge};

pub(super) fn write(a: &GatewayAdmin, w: &mut Writer<'_>) {
    let snaps: Vec<_> = a.core_stats.iter().map(|s| *s.lock()).collect();
    let labels: Vec<String> = (0..snaps.len()).map(|i| i.to_string()).collect();
    let sh = Shards {
        a,
        snaps: &snaps,
        labels: &labels,
    };
    write_traffic(&sh, w);
    write_registrations(&sh, w);
    write_commands_by_type(&sh, w);
    write_mailbox_depth(&sh, w);
    write_refusals(&sh, w);
    write_registration_moves(&sh, w);
    sh.core(
        w,
        Counter,
        "lwm2m_auth_held_full_total",
        "Registers refused because the shard held too many awaiting authentication.",
        |c| c.auth_overflow,
    );
    write_commands(&sh, w);
    write_coap_client(&sh, w);
    write_blockwise(&sh, w);
    write_sends(&sh, w);
    write_bootstraps(&sh, w);
    write_shedding(&sh, w);
    write_mailbox_backlog(&sh, w);
    write_dtls(&sh, w);
    write_routing(&sh, w);
    write_mqtt(&a.mqtt, w);
    if let Some(s) = &a.store {
        write_store(s, &snaps, w);
    }
    if let Some(c) = &a.cluster {
        super::cluster_metrics::write_cluster(&c.stats, &snaps, w);
    }
}

/// The store (`[store] kind = "file"`): its writer's work, the changes the shards
/// could not queue, and the restore at start.
fn write_store(s: &crate::store::StoreStats, snaps: &[CoreStats], w: &mut Writer<'_>) {
    use crate::store::StoreStats as S;
    let records: u64 = snaps.iter().map(|c| c.records_written).sum();
    let refused: u64 = snaps.iter().map(|c| c.restore_refused).sum();
    let counters = [
        (
            "lwm2m_store_records_queued_total",
            "Registration records the shards wrote out for the store.",
            records,
        ),
        (
            "lwm2m_store_writes_total",
            "Records written or removed by the store writer.",
            S::get(&s.writes),
        ),
        (
            "lwm2m_store_batches_total",
            "Batches the store writer committed.",
            S::get(&s.batches),
        ),
        (
            "lwm2m_store_errors_total",
            "Store batches that failed to commit (written again later).",
            S::get(&s.errors),
        ),
        (
            "lwm2m_store_queue_full_total",
            "Store changes dropped because the writer's queue was full.",
            S::get(&s.queue_full),
        ),
        (
            "lwm2m_store_restore_refused_total",
            "Restored registrations refused at start (name or location taken).",
            refused,
        ),
    ];
    for (name, help, v) in counters {
        w.counter(name, help, &[], v);
    }
    let gauges = [
        (
            "lwm2m_store_queued",
            "Store changes waiting to be written.",
            S::get(&s.queued),
        ),
        (
            "lwm2m_store_restored",
            "Registrations read back from the store at start.",
            S::get(&s.restored),
        ),
        (
            "lwm2m_store_restore_milliseconds",
            "How long reading the store back took at start.",
            S::get(&s.restore_ms),
        ),
        (
            "lwm2m_store_up",
            "1 while the store's writes succeed, 0 after a failed one.",
            (s.state() == crate::store::StoreState::Ok) as u64,
        ),
    ];
    for (name, help, v) in gauges {
        w.gauge(name, help, &[], v);
    }
}

/// A sample's type.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// What the per-shard families are written from: one snapshot of each shard's core
/// counters, the shards' atomics (through the admin) and their `shard` labels.
struct Shards<'a> {
    a: &'a GatewayAdmin,
    snaps: &'a [CoreStats],
    labels: &'a [String],
}

impl Shards<'_> {
    /// One family with one sample per shard, read from its core counters.
    fn core(
        &self,
        w: &mut Writer<'_>,
        kind: Kind,
        name: &str,
        help: &str,
        value: impl Fn(&CoreStats) -> u64,
    ) {
        for (i, s) in self.snaps.iter().enumerate() {
            sample(w, kind, name, help, &[("shard", &self.labels[i])], value(s));
        }
    }

    /// One family with one sample per shard, read from one of its atomics.
    fn atomic(
        &self,
        w: &mut Writer<'_>,
        kind: Kind,
        name: &str,
        help: &str,
        value: impl Fn(&ShardCounters) -> &AtomicU64,
    ) {
        for (i, c) in self.a.shard_counters.iter().enumerate() {
            let v = value(c).load(Ordering::Relaxed);
            sample(w, kind, name, help, &[("shard", &self.labels[i])], v);
        }
    }
}

fn sample(w: &mut Writer<'_>, kind: Kind, name: &str, help: &str, labels: &[(&str, &str)], v: u64) {
    match kind {
        Counter => w.counter(name, help, labels, v),
        Gauge => w.gauge(name, help, labels, v),
    }
}

/// Registered endpoints, datagrams in, out and dropped, duplicates.
fn write_traffic(sh: &Shards<'_>, w: &mut Writer<'_>) {
    sh.atomic(w, Gauge, "lwm2m_endpoints", "Registered endpoints.", |c| {
        &c.endpoints
    });
    sh.core(
        w,
        Counter,
        "lwm2m_datagrams_in_total",
        "Datagrams received.",
        |c| c.datagrams_in,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_datagrams_out_total",
        "Datagrams sent.",
        |c| c.datagrams_out,
    );
    let drop_help = "Datagrams dropped, by reason.";
    for (i, s) in sh.snaps.iter().enumerate() {
        let c = &sh.a.shard_counters[i];
        for (reason, v) in [
            ("malformed", s.malformed),
            ("unmatched", s.unmatched),
            ("oversized", c.oversized.load(Ordering::Relaxed)),
            ("send_failed", c.send_failed.load(Ordering::Relaxed)),
            (
                "gateway_disabled",
                c.disabled_dropped.load(Ordering::Relaxed),
            ),
        ] {
            w.counter(
                "lwm2m_datagrams_dropped_total",
                drop_help,
                &[("shard", &sh.labels[i]), ("reason", reason)],
                v,
            );
        }
    }
    sh.core(
        w,
        Counter,
        "lwm2m_duplicates_total",
        "Retransmitted requests answered from the cache.",
        |c| c.duplicates,
    );
}

/// Registrations and updates, and the Registers refused or held (admission,
/// topics, authentication).
fn write_registrations(sh: &Shards<'_>, w: &mut Writer<'_>) {
    sh.core(
        w,
        Counter,
        "lwm2m_registrations_total",
        "Registrations.",
        |c| c.registrations,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_updates_total",
        "Registration updates.",
        |c| c.updates,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_deregistrations_total",
        "De-registrations.",
        |c| c.deregistrations,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_expiries_total",
        "Registrations that expired.",
        |c| c.expiries,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_rebinds_total",
        "Updates that moved an endpoint to a new address.",
        |c| c.rebinds,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_bad_requests_total",
        "Requests answered 4.00.",
        |c| c.bad_requests,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_admission_rate_limited_total",
        "Registers refused by max_conn_rate.",
        |c| c.rate_limited,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_admission_over_capacity_total",
        "Registers refused by max_connections.",
        |c| c.over_capacity,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_bad_topics_total",
        "Registers refused 4.00 because a value they carry would make an invalid MQTT \
         topic or filter (also in lwm2m_bad_requests_total).",
        |c| c.bad_topics,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_auth_held_total",
        "Registers held while the authentication server was asked.",
        |c| c.auth_requests,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_auth_denied_total",
        "Registers denied by authentication.",
        |c| c.auth_denied,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_auth_held_timeouts_total",
        "Held Registers the authentication server did not answer in time (denied, \
         also in lwm2m_auth_denied_total).",
        |c| c.auth_timeouts,
    );
}

/// Commands accepted, by msgType.
fn write_commands_by_type(sh: &Shards<'_>, w: &mut Writer<'_>) {
    for (i, s) in sh.snaps.iter().enumerate() {
        for op in Op::ALL {
            w.counter(
                "lwm2m_commands_by_type_total",
                "Commands accepted for a device, by msgType.",
                &[("shard", &sh.labels[i]), ("msg_type", op.name())],
                s.commands_by_op[op.index()],
            );
        }
    }
}

/// Messages waiting in each shard's mailbox.
fn write_mailbox_depth(sh: &Shards<'_>, w: &mut Writer<'_>) {
    for (i, tx) in sh.a.shards.iter().enumerate() {
        w.gauge(
            "lwm2m_mailbox_depth",
            "Messages waiting in the shard's mailbox.",
            &[("shard", &sh.labels[i])],
            tx.len() as u64,
        );
    }
}

/// Requests refused or answered without a registration, and the resets sent.
fn write_refusals(sh: &Shards<'_>, w: &mut Writer<'_>) {
    let req_help = "Requests refused or answered without touching a registration, by reason.";
    for (i, s) in sh.snaps.iter().enumerate() {
        for (reason, v) in [
            ("not_found", s.not_found),
            ("bad_option", s.bad_options),
            ("forbidden", s.forbidden),
            ("ping", s.pings),
        ] {
            w.counter(
                "lwm2m_requests_refused_total",
                req_help,
                &[("shard", &sh.labels[i]), ("reason", reason)],
                v,
            );
        }
    }
    sh.core(
        w,
        Counter,
        "lwm2m_resets_sent_total",
        "Resets sent (malformed messages, pings).",
        |c| c.resets_sent,
    );
}

/// Registrations replaced, kicked, or moved between shards.
fn write_registration_moves(sh: &Shards<'_>, w: &mut Writer<'_>) {
    sh.core(
        w,
        Counter,
        "lwm2m_registrations_replaced_total",
        "Registrations that replaced an earlier one of the same endpoint name.",
        |c| c.replaced,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_kicked_total",
        "Registrations removed through the management API.",
        |c| c.kicked,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_takeovers_out_total",
        "Registrations handed to another shard (NAT rebinding).",
        |c| c.takeovers_out,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_takeovers_in_total",
        "Registrations taken over from another shard (NAT rebinding).",
        |c| c.takeovers_in,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_takeover_timeouts_total",
        "Takeovers from another shard unanswered in time (asked again by the next request).",
        |c| c.takeover_timeouts,
    );
}

/// Commands by outcome (per shard, then by msgType summed over the shards), those
/// waiting, and their round trips.
fn write_commands(sh: &Shards<'_>, w: &mut Writer<'_>) {
    let cmd_help = "Commands by outcome.";
    for (i, s) in sh.snaps.iter().enumerate() {
        for (outcome, v) in [
            ("accepted", s.commands),
            ("rejected", s.commands_rejected),
            ("expired", s.commands_expired),
            ("dropped", s.commands_dropped),
            ("queue_full", s.queue_overflows),
            ("response", s.responses),
            ("timeout", s.timeouts),
            ("reset", s.resets_received),
        ] {
            w.counter(
                "lwm2m_commands_total",
                cmd_help,
                &[("shard", &sh.labels[i]), ("outcome", outcome)],
                v,
            );
        }
    }
    // Summed over the shards: 13 msgTypes x 9 outcomes per shard would swamp the page.
    let mut ended = [[0u64; Outcome::ALL.len()]; UNKNOWN_MSG_TYPE + 1];
    for s in sh.snaps {
        for (row, shard_row) in ended.iter_mut().zip(s.outcomes.iter()) {
            for (n, v) in row.iter_mut().zip(shard_row) {
                *n += v;
            }
        }
    }
    let ended_help = "Commands ended (their one final MQTT message), by msgType and outcome; \
                      msg_type \"unknown\" for commands refused before a known msgType was read.";
    for op in Op::ALL {
        for outcome in Outcome::ALL {
            w.counter(
                "lwm2m_command_outcomes_total",
                ended_help,
                &[("msg_type", op.name()), ("outcome", outcome.name())],
                ended[op.index()][outcome as usize],
            );
        }
    }
    for outcome in [Outcome::Rejected, Outcome::Shed] {
        w.counter(
            "lwm2m_command_outcomes_total",
            ended_help,
            &[("msg_type", "unknown"), ("outcome", outcome.name())],
            ended[UNKNOWN_MSG_TYPE][outcome as usize],
        );
    }
    sh.core(
        w,
        Gauge,
        "lwm2m_commands_waiting",
        "Commands waiting in device queues (queue-mode devices asleep, behind NSTART, \
         DTLS session lost).",
        |c| c.commands_waiting,
    );
    for (i, s) in sh.snaps.iter().enumerate() {
        let h = &s.command_rtt;
        let mut cumulative = 0;
        let mut buckets: Vec<(f64, u64)> = Vec::with_capacity(h.buckets.len());
        for (b, n) in crate::lwm2m::stats::RTT_BOUNDS_MS
            .iter()
            .zip(h.buckets.iter())
        {
            cumulative += n;
            buckets.push((*b as f64 / 1000.0, cumulative));
        }
        buckets.push((f64::INFINITY, h.count));
        w.histogram(
            "lwm2m_command_round_trip_seconds",
            "MQTT command taken to the device's final response.",
            &[("shard", &sh.labels[i])],
            &buckets,
            h.sum_ms as f64 / 1000.0,
            h.count,
        );
    }
}

/// Our requests to devices: retransmissions, notifications.
fn write_coap_client(sh: &Shards<'_>, w: &mut Writer<'_>) {
    sh.core(
        w,
        Counter,
        "lwm2m_retransmissions_total",
        "CoAP retransmissions of our requests.",
        |c| c.retransmissions,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_notifications_total",
        "Notifications delivered to MQTT.",
        |c| c.notifications,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_notifications_stale_total",
        "Notifications older than one delivered.",
        |c| c.stale_notifications,
    );
}

/// Block-wise transfers (RFC 7959).
fn write_blockwise(sh: &Shards<'_>, w: &mut Writer<'_>) {
    sh.core(
        w,
        Counter,
        "lwm2m_blocks_sent_total",
        "Block-wise blocks sent.",
        |c| c.blocks_sent,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_blocks_received_total",
        "Block-wise blocks received.",
        |c| c.blocks_received,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_block_transfers_total",
        "Block-wise transfers completed.",
        |c| c.block_transfers,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_block_aborts_total",
        "Block-wise transfers aborted.",
        |c| c.block_aborts,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_block_expired_total",
        "Partial block-wise transfers dropped after exchange_lifetime.",
        |c| c.block_expired,
    );
    sh.core(
        w,
        Gauge,
        "lwm2m_block_bytes_held",
        "Bytes held by block-wise state (bodies, request keys, stored responses).",
        |c| c.block_bytes_held,
    );
    sh.core(
        w,
        Gauge,
        "lwm2m_block_partials",
        "Partial request bodies devices are sending.",
        |c| c.block_partials,
    );
    for (i, s) in sh.snaps.iter().enumerate() {
        for l in crate::lwm2m::blockwise::BlockLimit::ALL {
            w.counter(
                "lwm2m_block_limit_hits_total",
                "Block-wise bodies refused, aborted or evicted, by the limit that did it.",
                &[("shard", &sh.labels[i]), ("reason", l.name())],
                s.block_limits[l.index()],
            );
        }
    }
}

/// Shedding while the broker connections are congested.
fn write_shedding(sh: &Shards<'_>, w: &mut Writer<'_>) {
    sh.core(
        w,
        Gauge,
        "lwm2m_mqtt_congested",
        "1 while the shard's broker connections hold over half of mqtt.buffer_messages \
         (until below a quarter): new events are shed.",
        |c| c.congested,
    );
    for (i, s) in sh.snaps.iter().enumerate() {
        for x in crate::lwm2m::shed::Shed::ALL {
            w.counter(
                "lwm2m_shed_total",
                "Inputs shed while congested: Registers, Updates and Sends answered 5.03, \
                 notifications neither acknowledged nor published.",
                &[("shard", &sh.labels[i]), ("what", x.name())],
                s.shed[x.index()],
            );
        }
    }
}

/// LwM2M Sends (`POST /dp`): accepted, their values, refused by reason, deferred.
fn write_sends(sh: &Shards<'_>, w: &mut Writer<'_>) {
    sh.core(
        w,
        Counter,
        "lwm2m_sends_total",
        "LwM2M Sends (POST /dp) answered 2.04 and published.",
        |c| c.sends,
    );
    sh.core(
        w,
        Counter,
        "lwm2m_sent_values_total",
        "Values carried by the Sends published.",
        |c| c.sent_values,
    );
    for (i, s) in sh.snaps.iter().enumerate() {
        for r in crate::lwm2m::send::SendRefusal::ALL {
            w.counter(
                "lwm2m_sends_refused_total",
                "Sends refused: no registration (4.04), identity not allowed (4.03), \
                 content format (4.15), body that does not decode (4.00).",
                &[("shard", &sh.labels[i]), ("reason", r.name())],
                s.sends_refused[r.index()],
            );
        }
    }
    sh.core(
        w,
        Counter,
        "lwm2m_sends_deferred_total",
        "Sends left unanswered while their registration was taken over from another \
         shard (the device retransmits them).",
        |c| c.sends_deferred,
    );
}

/// The Bootstrap-Server: bootstraps by outcome, refusals by reason, its requests.
fn write_bootstraps(sh: &Shards<'_>, w: &mut Writer<'_>) {
    type Field = fn(&CoreStats) -> u64;
    let families: [(Kind, &str, &str, Field); 10] = [
        (
            Counter,
            "lwm2m_bootstraps_started_total",
            "Bootstrap-Requests answered 2.04 (the sequence started).",
            |c| c.bootstraps_started,
        ),
        (
            Counter,
            "lwm2m_bootstraps_finished_total",
            "Bootstraps whose Bootstrap-Finish the device acknowledged.",
            |c| c.bootstraps_finished,
        ),
        (
            Counter,
            "lwm2m_bootstraps_failed_total",
            "Bootstraps ended by a step's error code, Reset or timeout.",
            |c| c.bootstraps_failed,
        ),
        (
            Counter,
            "lwm2m_bootstraps_restarted_total",
            "Bootstraps restarted by a new Bootstrap-Request of the device.",
            |c| c.bootstraps_restarted,
        ),
        (
            Gauge,
            "lwm2m_bootstraps_active",
            "Bootstraps in progress.",
            |c| c.bootstraps_active,
        ),
        (
            Counter,
            "lwm2m_bootstrap_requests_total",
            "Bootstrap-Delete, -Write and -Finish requests sent (first transmissions).",
            |c| c.bootstrap_requests,
        ),
        (
            Counter,
            "lwm2m_bootstrap_retransmissions_total",
            "Bootstrap requests retransmitted.",
            |c| c.bootstrap_retransmissions,
        ),
        (
            Counter,
            "lwm2m_bootstrap_step_errors_total",
            "Bootstrap steps the device answered with an error code.",
            |c| c.bootstrap_errors,
        ),
        (
            Counter,
            "lwm2m_bootstrap_step_resets_total",
            "Bootstrap steps the device answered with a Reset.",
            |c| c.bootstrap_resets,
        ),
        (
            Counter,
            "lwm2m_bootstrap_step_timeouts_total",
            "Bootstrap steps the device never answered.",
            |c| c.bootstrap_timeouts,
        ),
    ];
    for (kind, name, help, f) in families {
        sh.core(w, kind, name, help, f);
    }
    for (i, s) in sh.snaps.iter().enumerate() {
        for r in crate::lwm2m::BsRefusal::ALL {
            w.counter(
                "lwm2m_bootstraps_refused_total",
                "Bootstrap-Requests refused: bad name (4.00), identity not allowed (4.03), \
                 no configuration (4.00/4.03), rate limited, too many in progress or broker congested (5.03).",
                &[("shard", &sh.labels[i]), ("reason", r.name())],
                s.bootstraps_refused[r.index()],
            );
        }
    }
}

/// Cross-shard messages dropped, deferred and waiting for a full mailbox.
fn write_mailbox_backlog(sh: &Shards<'_>, w: &mut Writer<'_>) {
    sh.atomic(
        w,
        Counter,
        "lwm2m_mailbox_dropped_total",
        "Cross-shard messages dropped (destination gone, or a recoverable one over \
         the backlog cap).",
        |c| &c.mailbox_dropped,
    );
    sh.atomic(
        w,
        Counter,
        "lwm2m_mailbox_deferred_total",
        "Cross-shard messages that waited for room in a full mailbox.",
        |c| &c.mailbox_deferred,
    );
    sh.atomic(
        w,
        Gauge,
        "lwm2m_mailbox_backlog",
        "Cross-shard messages waiting for room in a full mailbox.",
        |c| &c.mailbox_backlog,
    );
}

/// Command routing: to a shard, locally, or nowhere.
fn write_routing(sh: &Shards<'_>, w: &mut Writer<'_>) {
    let r = &sh.a.router;
    w.counter(
        "lwm2m_commands_routed_total",
        "Commands routed to a shard.",
        &[],
        r.routed.load(Ordering::Relaxed),
    );
    w.counter(
        "lwm2m_commands_local_total",
        "Commands that arrived on the broker connection of the shard holding their endpoint \
         (handled there, no hand-off between threads).",
        &[],
        r.local.load(Ordering::Relaxed),
    );
    w.counter(
        "lwm2m_commands_unknown_endpoint_total",
        "Commands for unregistered endpoints.",
        &[],
        r.unknown_endpoint.load(Ordering::Relaxed),
    );
    w.counter(
        "lwm2m_commands_shed_total",
        "Commands answered 5.03 at once because the shard holding their endpoint could not take \
         them (a full mailbox, or too many cross-shard messages waiting).",
        &[],
        sh.snaps.iter().map(|s| s.commands_shed).sum::<u64>(),
    );
    w.counter(
        "lwm2m_commands_foreign_topic_total",
        "Publishes on no command topic.",
        &[],
        r.foreign_topic.load(Ordering::Relaxed),
    );
}

/// The broker connections.
fn write_mqtt(m: &MqttStats, w: &mut Writer<'_>) {
    for (q, c) in m.published.iter().enumerate() {
        w.counter(
            "lwm2m_mqtt_published_total",
            "MQTT publishes, by QoS.",
            &[("qos", &q.to_string())],
            MqttStats::get(c),
        );
    }
    w.counter(
        "lwm2m_mqtt_acked_total",
        "QoS>=1 publishes acknowledged.",
        &[],
        MqttStats::get(&m.acked),
    );
    w.counter(
        "lwm2m_mqtt_reconnects_total",
        "Broker reconnection attempts.",
        &[],
        MqttStats::get(&m.reconnects),
    );
    w.gauge(
        "lwm2m_mqtt_connections_up",
        "Broker connections up.",
        &[],
        MqttStats::get(&m.connected),
    );
    w.gauge(
        "lwm2m_mqtt_buffered",
        "Publishes held (pending and in flight).",
        &[],
        MqttStats::get(&m.pending),
    );
    w.counter(
        "lwm2m_mqtt_dropped_total",
        "Publishes dropped by the buffer's overflow policy.",
        &[],
        MqttStats::get(&m.dropped_overflow),
    );
    w.counter(
        "lwm2m_mqtt_inbound_total",
        "Publishes received from the broker.",
        &[],
        MqttStats::get(&m.inbound),
    );
}

/// The DTLS listener's families (zero when no DTLS listener is configured), from one
/// copy of each shard's DTLS counters.
fn write_dtls(sh: &Shards<'_>, w: &mut Writer<'_>) {
    let d = Dtls {
        shards: sh,
        stats: sh
            .a
            .shard_counters
            .iter()
            .map(|c| c.dtls.lock().clone())
            .collect(),
    };
    write_dtls_handshakes(&d, w);
    write_dtls_sessions(&d, w);
    write_dtls_datagrams(&d, w);
}

/// What the DTLS families are written from.
struct Dtls<'a> {
    shards: &'a Shards<'a>,
    stats: Vec<DtlsStats>,
}

/// A sample's extra label after `shard`, if any.
type Extra = Option<(&'static str, &'static str)>;

impl Dtls<'_> {
    /// One family: for each shard, one sample per (extra label, value) that `values`
    /// reads from the shard's DTLS counters, atomics and core counters.
    fn family<const N: usize>(
        &self,
        w: &mut Writer<'_>,
        kind: Kind,
        name: &str,
        help: &str,
        values: impl Fn(&DtlsStats, &ShardCounters, &CoreStats) -> [(Extra, u64); N],
    ) {
        let sh = self.shards;
        for (i, stats) in self.stats.iter().enumerate() {
            for (extra, v) in values(stats, &sh.a.shard_counters[i], &sh.snaps[i]) {
                let mut l: Vec<(&str, &str)> = vec![("shard", &sh.labels[i])];
                l.extend(extra);
                sample(w, kind, name, help, &l, v);
            }
        }
    }
}

/// Sessions and handshakes: established, in progress, started, verified, completed,
/// failed, and those dropped or refused by the caps.
fn write_dtls_handshakes(d: &Dtls<'_>, w: &mut Writer<'_>) {
    d.family(
        w,
        Gauge,
        "lwm2m_dtls_sessions",
        "Established DTLS sessions.",
        |s, _, _| [(None, s.sessions)],
    );
    d.family(
        w,
        Gauge,
        "lwm2m_dtls_half_open",
        "DTLS handshakes in progress (each past the cookie exchange: a ClientHello without a valid cookie leaves no state).",
        |s, _, _| [(None, s.half_open)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_handshakes_started_total",
        "DTLS handshakes started (a ClientHello returning a valid cookie from an address with none in progress).",
        |s, _, _| [(None, s.handshakes_started)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_handshakes_verified_total",
        "DTLS handshakes whose cookie came back (the address is real).",
        |s, _, _| [(None, s.handshakes_verified)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_handshakes_completed_total",
        "DTLS handshakes completed.",
        |s, _, _| [(None, s.handshakes_completed)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_handshakes_failed_total",
        "DTLS handshakes that failed or timed out.",
        |s, _, _| [(None, s.handshakes_failed + s.handshake_timeouts)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_handshake_timeouts_total",
        "DTLS handshakes dropped for not finishing in time (cookie or handshake timeout).",
        |s, _, _| [(None, s.handshake_timeouts)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_hello_verify_requests_total",
        "HelloVerifyRequests sent without keeping any state, for ClientHellos without a cookie or with one that did not verify, by reason.",
        |s, _, _| {
            [
                (Some(("reason", "no_cookie")), s.hello_verify_no_cookie),
                (Some(("reason", "invalid_cookie")), s.hello_verify_invalid_cookie),
            ]
        },
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_half_open_dropped_total",
        "ClientHellos with a valid cookie dropped at a half-open cap, by cap.",
        |s, _, _| {
            [
                (Some(("cap", "address")), s.half_open_per_addr_drops),
                (Some(("cap", "verified")), s.verified_full),
            ]
        },
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_session_table_full_total",
        "ClientHellos or completed handshakes refused because the session table was full.",
        |s, _, _| [(None, s.session_table_full)],
    );
}

/// Sessions ended, certificates rejected, records that failed to decrypt, datagrams
/// held back from unverified addresses.
fn write_dtls_sessions(d: &Dtls<'_>, w: &mut Writer<'_>) {
    d.family(
        w,
        Counter,
        "lwm2m_dtls_sessions_closed_total",
        "DTLS sessions ended, by reason.",
        |s, _, _| {
            [
                (Some(("reason", "idle")), s.idle_evictions),
                (Some(("reason", "replaced")), s.replaced),
                (Some(("reason", "peer_closed")), s.peer_closed),
                (Some(("reason", "error")), s.session_errors),
            ]
        },
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_connection_id_total",
        "Connection IDs (RFC 9146): sessions that negotiated one, sessions moved to a new address by a record carrying theirs, records with a CID no session holds (dropped), records from a new address that authenticated nothing (not moved), records handed to the shard holding their session (and those its full mailbox dropped).",
        |s, _, _| {
            [
                (Some(("event", "negotiated")), s.cid_sessions),
                (Some(("event", "moved")), s.cid_moves),
                (Some(("event", "unknown")), s.cid_unknown),
                (Some(("event", "unauthenticated")), s.cid_unauthenticated),
                (Some(("event", "forwarded")), s.cid_forwarded),
                (Some(("event", "forward_dropped")), s.cid_forward_dropped),
            ]
        },
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_resumption_total",
        "Session resumption (RFC 5246 abbreviated handshake): sessions resumed, and session IDs offered and refused (unknown, expired, revoked: identity gone from the PSK file or its key changed), which get a full handshake.",
        |s, _, _| {
            [
                (Some(("event", "resumed")), s.resumed),
                (Some(("event", "unknown")), s.resume_refused_unknown),
                (Some(("event", "expired")), s.resume_refused_expired),
                (Some(("event", "revoked")), s.resume_refused_revoked),
            ]
        },
    );
    // Each shard reads the shared cache's size when it last handled anything.
    if let Some(n) = d.stats.iter().map(|s| s.session_cache_entries).max() {
        sample(
            w,
            Gauge,
            "lwm2m_dtls_session_cache_entries",
            "Resumable DTLS sessions in the listener's cache (shared by the shards).",
            &[],
            n,
        );
    }
    d.family(
        w,
        Counter,
        "lwm2m_dtls_cert_rejected_total",
        "Client certificates that failed verification.",
        |s, _, _| [(None, s.cert_rejected)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_decrypt_errors_total",
        "DTLS records that failed to decrypt.",
        |s, _, _| [(None, s.decrypt_errors)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_amplification_drops_total",
        "Datagrams not sent to an unverified address (more bytes than it sent).",
        |s, _, _| [(None, s.amplification_drops)],
    );
}

/// Datagrams on the DTLS port, and what plain CoAP or a lost session did to DTLS peers.
fn write_dtls_datagrams(d: &Dtls<'_>, w: &mut Writer<'_>) {
    d.family(
        w,
        Counter,
        "lwm2m_dtls_datagrams_in_total",
        "Datagrams received on the DTLS port.",
        |s, _, _| [(None, s.datagrams_in)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_datagrams_out_total",
        "Datagrams sent on the DTLS port.",
        |s, _, _| [(None, s.datagrams_out)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_datagrams_dropped_total",
        "DTLS datagrams dropped, by reason.",
        |s, c, _| {
            [
                (
                    Some(("reason", "oversized")),
                    c.dtls_oversized.load(Ordering::Relaxed),
                ),
                (Some(("reason", "junk")), s.junk_dropped),
                (Some(("reason", "malformed_hello")), s.hellos_malformed),
            ]
        },
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_hello_versions_normalised_total",
        "ClientHellos with a record version {254, x} other than DTLS 1.0 or 1.2 (mbedTLS 2.x), taken as DTLS 1.0.",
        |s, _, _| [(None, s.hello_versions_normalised)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_no_session_total",
        "Datagrams for a DTLS peer not sent because it had no session (never sent in plain text).",
        |_, c, _| [(None, c.dtls_no_session.load(Ordering::Relaxed))],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_plain_refused_total",
        "Plain CoAP datagrams from the address of a DTLS registration (dropped).",
        |_, _, k| [(None, k.plain_from_secure_peer)],
    );
    d.family(
        w,
        Counter,
        "lwm2m_dtls_registrations_session_lost_total",
        "DTLS registrations whose session ended (their commands wait for a new session).",
        |_, _, k| [(None, k.dtls_sessions_lost)],
    );
}
