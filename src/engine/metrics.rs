//! The gateway's Prometheus metrics: per-shard protocol counters, socket and
//! mailbox drops, command routing, MQTT. Read from snapshots and atomics; nothing
//! here touches a shard. The text format wants each family's lines together (one
//! HELP and TYPE, then every sample): each family is written by one loop over the
//! shards, never interleaved with another.

use super::admin::GatewayAdmin;
use crate::lwm2m::command::Op;
use crate::lwm2m::stats::{Outcome, UNKNOWN_MSG_TYPE};
use crate::metrics::Writer;
use crate::mqtt::MqttStats;
use std::sync::atomic::Ordering;

pub fn write(a: &GatewayAdmin, w: &mut Writer<'_>) {
    let snaps: Vec<_> = a.core_stats.iter().map(|s| *s.lock()).collect();
    let labels: Vec<String> = (0..snaps.len()).map(|i| i.to_string()).collect();
    macro_rules! per_shard {
        ($kind:ident, $name:expr, $help:expr, $field:ident) => {
            for (i, s) in snaps.iter().enumerate() {
                w.$kind($name, $help, &[("shard", &labels[i])], s.$field);
            }
        };
    }
    for (i, c) in a.shard_counters.iter().enumerate() {
        w.gauge(
            "lwm2m_endpoints",
            "Registered endpoints.",
            &[("shard", &labels[i])],
            c.endpoints.load(Ordering::Relaxed),
        );
    }
    per_shard!(
        counter,
        "lwm2m_datagrams_in_total",
        "Datagrams received.",
        datagrams_in
    );
    per_shard!(
        counter,
        "lwm2m_datagrams_out_total",
        "Datagrams sent.",
        datagrams_out
    );
    let drop_help = "Datagrams dropped, by reason.";
    for (i, s) in snaps.iter().enumerate() {
        let c = &a.shard_counters[i];
        for (reason, v) in [
            ("malformed", s.malformed),
            ("unmatched", s.unmatched),
            ("oversized", c.oversized.load(Ordering::Relaxed)),
            ("send_failed", c.send_failed.load(Ordering::Relaxed)),
        ] {
            w.counter(
                "lwm2m_datagrams_dropped_total",
                drop_help,
                &[("shard", &labels[i]), ("reason", reason)],
                v,
            );
        }
    }
    per_shard!(
        counter,
        "lwm2m_duplicates_total",
        "Retransmitted requests answered from the cache.",
        duplicates
    );
    per_shard!(
        counter,
        "lwm2m_registrations_total",
        "Registrations.",
        registrations
    );
    per_shard!(
        counter,
        "lwm2m_updates_total",
        "Registration updates.",
        updates
    );
    per_shard!(
        counter,
        "lwm2m_deregistrations_total",
        "De-registrations.",
        deregistrations
    );
    per_shard!(
        counter,
        "lwm2m_expiries_total",
        "Registrations that expired.",
        expiries
    );
    per_shard!(
        counter,
        "lwm2m_rebinds_total",
        "Updates that moved an endpoint to a new address.",
        rebinds
    );
    per_shard!(
        counter,
        "lwm2m_bad_requests_total",
        "Requests answered 4.00.",
        bad_requests
    );
    per_shard!(
        counter,
        "lwm2m_admission_rate_limited_total",
        "Registers refused by max_conn_rate.",
        rate_limited
    );
    per_shard!(
        counter,
        "lwm2m_admission_over_capacity_total",
        "Registers refused by max_connections.",
        over_capacity
    );
    per_shard!(
        counter,
        "lwm2m_bad_topics_total",
        "Registers refused 4.00 because a value they carry would make an invalid MQTT topic or filter (also in lwm2m_bad_requests_total).",
        bad_topics
    );
    per_shard!(
        counter,
        "lwm2m_auth_held_total",
        "Registers held while the authentication server was asked.",
        auth_requests
    );
    per_shard!(
        counter,
        "lwm2m_auth_denied_total",
        "Registers denied by authentication.",
        auth_denied
    );
    per_shard!(
        counter,
        "lwm2m_auth_held_timeouts_total",
        "Held Registers the authentication server did not answer in time (denied, also in lwm2m_auth_denied_total).",
        auth_timeouts
    );
    for (i, s) in snaps.iter().enumerate() {
        for op in crate::lwm2m::command::Op::ALL {
            w.counter(
                "lwm2m_commands_by_type_total",
                "Commands accepted for a device, by msgType.",
                &[("shard", &labels[i]), ("msg_type", op.name())],
                s.commands_by_op[op.index()],
            );
        }
    }
    for (i, tx) in a.shards.iter().enumerate() {
        w.gauge(
            "lwm2m_mailbox_depth",
            "Messages waiting in the shard's mailbox.",
            &[("shard", &labels[i])],
            tx.len() as u64,
        );
    }
    let req_help = "Requests refused or answered without touching a registration, by reason.";
    for (i, s) in snaps.iter().enumerate() {
        for (reason, v) in [
            ("not_found", s.not_found),
            ("bad_option", s.bad_options),
            ("forbidden", s.forbidden),
            ("ping", s.pings),
        ] {
            w.counter(
                "lwm2m_requests_refused_total",
                req_help,
                &[("shard", &labels[i]), ("reason", reason)],
                v,
            );
        }
    }
    per_shard!(
        counter,
        "lwm2m_resets_sent_total",
        "Resets sent (malformed messages, pings).",
        resets_sent
    );
    per_shard!(
        counter,
        "lwm2m_registrations_replaced_total",
        "Registrations that replaced an earlier one of the same endpoint name.",
        replaced
    );
    per_shard!(
        counter,
        "lwm2m_kicked_total",
        "Registrations removed through the management API.",
        kicked
    );
    per_shard!(
        counter,
        "lwm2m_takeovers_out_total",
        "Registrations handed to another shard (NAT rebinding).",
        takeovers_out
    );
    per_shard!(
        counter,
        "lwm2m_takeovers_in_total",
        "Registrations taken over from another shard (NAT rebinding).",
        takeovers_in
    );
    per_shard!(
        counter,
        "lwm2m_takeover_timeouts_total",
        "Takeovers from another shard unanswered in time (asked again by the next request).",
        takeover_timeouts
    );
    per_shard!(
        counter,
        "lwm2m_auth_held_full_total",
        "Registers refused because the shard held too many awaiting authentication.",
        auth_overflow
    );
    let cmd_help = "Commands by outcome.";
    for (i, s) in snaps.iter().enumerate() {
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
                &[("shard", &labels[i]), ("outcome", outcome)],
                v,
            );
        }
    }
    // Summed over the shards: 9 msgTypes x 8 outcomes per shard would swamp the page.
    let mut ended = [[0u64; Outcome::ALL.len()]; 10];
    for s in &snaps {
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
    per_shard!(
        gauge,
        "lwm2m_commands_waiting",
        "Commands waiting in device queues (queue-mode devices asleep, behind NSTART, DTLS session lost).",
        commands_waiting
    );
    for (i, s) in snaps.iter().enumerate() {
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
            &[("shard", &labels[i])],
            &buckets,
            h.sum_ms as f64 / 1000.0,
            h.count,
        );
    }
    per_shard!(
        counter,
        "lwm2m_retransmissions_total",
        "CoAP retransmissions of our requests.",
        retransmissions
    );
    per_shard!(
        counter,
        "lwm2m_notifications_total",
        "Notifications delivered to MQTT.",
        notifications
    );
    per_shard!(
        counter,
        "lwm2m_notifications_stale_total",
        "Notifications older than one delivered.",
        stale_notifications
    );
    per_shard!(
        counter,
        "lwm2m_blocks_sent_total",
        "Block-wise blocks sent.",
        blocks_sent
    );
    per_shard!(
        counter,
        "lwm2m_blocks_received_total",
        "Block-wise blocks received.",
        blocks_received
    );
    per_shard!(
        counter,
        "lwm2m_block_transfers_total",
        "Block-wise transfers completed.",
        block_transfers
    );
    per_shard!(
        counter,
        "lwm2m_block_aborts_total",
        "Block-wise transfers aborted.",
        block_aborts
    );
    per_shard!(
        counter,
        "lwm2m_block_expired_total",
        "Partial block-wise transfers dropped after exchange_lifetime.",
        block_expired
    );
    per_shard!(
        gauge,
        "lwm2m_block_bytes_held",
        "Bytes held by block-wise state (bodies, request keys, stored responses).",
        block_bytes_held
    );
    per_shard!(
        gauge,
        "lwm2m_block_partials",
        "Partial request bodies devices are sending.",
        block_partials
    );
    for (i, s) in snaps.iter().enumerate() {
        for l in crate::lwm2m::blockwise::BlockLimit::ALL {
            w.counter(
                "lwm2m_block_limit_hits_total",
                "Block-wise bodies refused, aborted or evicted, by the limit that did it.",
                &[("shard", &labels[i]), ("reason", l.name())],
                s.block_limits[l.index()],
            );
        }
    }
    // Families from the shards' atomics, one loop per family.
    macro_rules! per_shard_atomic {
        ($kind:ident, $name:expr, $help:expr, $field:ident) => {
            for (i, c) in a.shard_counters.iter().enumerate() {
                w.$kind(
                    $name,
                    $help,
                    &[("shard", &labels[i])],
                    c.$field.load(Ordering::Relaxed),
                );
            }
        };
    }
    per_shard_atomic!(
        counter,
        "lwm2m_mailbox_dropped_total",
        "Cross-shard messages dropped (destination gone, or a recoverable one over the backlog cap).",
        mailbox_dropped
    );
    per_shard_atomic!(
        counter,
        "lwm2m_mailbox_deferred_total",
        "Cross-shard messages that waited for room in a full mailbox.",
        mailbox_deferred
    );
    per_shard_atomic!(
        gauge,
        "lwm2m_mailbox_backlog",
        "Cross-shard messages waiting for room in a full mailbox.",
        mailbox_backlog
    );
    write_dtls(a, &snaps, &labels, w);
    let r = &a.router;
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
        snaps.iter().map(|s| s.commands_shed).sum::<u64>(),
    );
    w.counter(
        "lwm2m_commands_foreign_topic_total",
        "Publishes on no command topic.",
        &[],
        r.foreign_topic.load(Ordering::Relaxed),
    );
    let m = &a.mqtt;
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

/// The DTLS listener's families (zero when no DTLS listener is configured).
fn write_dtls(
    a: &GatewayAdmin,
    snaps: &[crate::lwm2m::CoreStats],
    labels: &[String],
    w: &mut Writer<'_>,
) {
    let stats: Vec<crate::dtls::DtlsStats> = a
        .shard_counters
        .iter()
        .map(|c| c.dtls.lock().clone())
        .collect();
    macro_rules! each {
        ($kind:ident, $name:expr, $help:expr, |$s:ident, $c:ident, $core:ident| [$(($label:expr, $v:expr)),+ $(,)?]) => {
            for (i, $s) in stats.iter().enumerate() {
                let $c = &a.shard_counters[i];
                let $core = &snaps[i];
                let _ = (&$s, $c, $core);
                $(
                    let mut l: Vec<(&str, &str)> = vec![("shard", &labels[i])];
                    let extra: Option<(&str, &str)> = $label;
                    l.extend(extra);
                    w.$kind($name, $help, &l, $v);
                )+
            }
        };
    }
    each!(
        gauge,
        "lwm2m_dtls_sessions",
        "Established DTLS sessions.",
        |s, c, k| [(None, s.sessions)]
    );
    each!(
        gauge,
        "lwm2m_dtls_half_open",
        "DTLS handshakes in progress, by stage (waiting for the cookie, or past it).",
        |s, c, k| [
            (
                Some(("stage", "cookie")),
                s.half_open - s.half_open_verified.min(s.half_open)
            ),
            (Some(("stage", "verified")), s.half_open_verified),
        ]
    );
    each!(
        counter,
        "lwm2m_dtls_handshakes_started_total",
        "DTLS handshakes started (first ClientHello from an address).",
        |s, c, k| [(None, s.handshakes_started)]
    );
    each!(
        counter,
        "lwm2m_dtls_handshakes_verified_total",
        "DTLS handshakes whose cookie came back (the address is real).",
        |s, c, k| [(None, s.handshakes_verified)]
    );
    each!(
        counter,
        "lwm2m_dtls_handshakes_completed_total",
        "DTLS handshakes completed.",
        |s, c, k| [(None, s.handshakes_completed)]
    );
    each!(
        counter,
        "lwm2m_dtls_handshakes_failed_total",
        "DTLS handshakes that failed or timed out.",
        |s, c, k| [(None, s.handshakes_failed + s.handshake_timeouts)]
    );
    each!(
        counter,
        "lwm2m_dtls_handshake_timeouts_total",
        "DTLS handshakes dropped for not finishing in time (cookie or handshake timeout).",
        |s, c, k| [(None, s.handshake_timeouts)]
    );
    each!(
        counter,
        "lwm2m_dtls_half_open_dropped_total",
        "ClientHellos or handshakes dropped by a half-open cap with nothing evictable, by cap.",
        |s, c, k| [
            (Some(("cap", "shard")), s.half_open_drops),
            (Some(("cap", "address")), s.half_open_per_addr_drops),
            (Some(("cap", "verified")), s.verified_full),
        ]
    );
    each!(
        counter,
        "lwm2m_dtls_half_open_evicted_total",
        "Handshakes still waiting for their cookie evicted for a newer ClientHello, by cap.",
        |s, c, k| [
            (Some(("cap", "shard")), s.half_open_evicted),
            (Some(("cap", "address")), s.half_open_per_addr_evicted),
        ]
    );
    each!(
        counter,
        "lwm2m_dtls_session_table_full_total",
        "ClientHellos or completed handshakes refused because the session table was full.",
        |s, c, k| [(None, s.session_table_full)]
    );
    each!(
        counter,
        "lwm2m_dtls_sessions_closed_total",
        "DTLS sessions ended, by reason.",
        |s, c, k| [
            (Some(("reason", "idle")), s.idle_evictions),
            (Some(("reason", "replaced")), s.replaced),
            (Some(("reason", "peer_closed")), s.peer_closed),
            (Some(("reason", "error")), s.session_errors),
        ]
    );
    each!(
        counter,
        "lwm2m_dtls_cert_rejected_total",
        "Client certificates that failed verification.",
        |s, c, k| [(None, s.cert_rejected)]
    );
    each!(
        counter,
        "lwm2m_dtls_decrypt_errors_total",
        "DTLS records that failed to decrypt.",
        |s, c, k| [(None, s.decrypt_errors)]
    );
    each!(
        counter,
        "lwm2m_dtls_amplification_drops_total",
        "Datagrams not sent to an unverified address (more bytes than it sent).",
        |s, c, k| [(None, s.amplification_drops)]
    );
    each!(
        counter,
        "lwm2m_dtls_datagrams_in_total",
        "Datagrams received on the DTLS port.",
        |s, c, k| [(None, s.datagrams_in)]
    );
    each!(
        counter,
        "lwm2m_dtls_datagrams_out_total",
        "Datagrams sent on the DTLS port.",
        |s, c, k| [(None, s.datagrams_out)]
    );
    each!(
        counter,
        "lwm2m_dtls_datagrams_dropped_total",
        "DTLS datagrams dropped, by reason.",
        |s, c, k| [
            (
                Some(("reason", "oversized")),
                c.dtls_oversized.load(Ordering::Relaxed)
            ),
            (Some(("reason", "junk")), s.junk_dropped),
        ]
    );
    each!(
        counter,
        "lwm2m_dtls_no_session_total",
        "Datagrams for a DTLS peer not sent because it had no session (never sent in plain text).",
        |s, c, k| [(None, c.dtls_no_session.load(Ordering::Relaxed))]
    );
    each!(
        counter,
        "lwm2m_dtls_plain_refused_total",
        "Plain CoAP datagrams from the address of a DTLS registration (dropped).",
        |s, c, k| [(None, k.plain_from_secure_peer)]
    );
    each!(
        counter,
        "lwm2m_dtls_registrations_session_lost_total",
        "DTLS registrations whose session ended (their commands wait for a new session).",
        |s, c, k| [(None, k.dtls_sessions_lost)]
    );
}
