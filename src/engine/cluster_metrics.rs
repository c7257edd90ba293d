//! The `lwm2m_cluster_*` families (`[store] kind = "redis"`): registrations moving
//! between the nodes sharing the store, and whether Redis answers.

use crate::cluster::ClusterStats;
use crate::lwm2m::CoreStats;
use crate::metrics::Writer;

pub(super) fn write_cluster(c: &ClusterStats, snaps: &[CoreStats], w: &mut Writer<'_>) {
    use ClusterStats as S;
    let sum = |f: fn(&CoreStats) -> u64| snaps.iter().map(f).sum::<u64>();
    let counters = [
        (
            "lwm2m_cluster_takeovers_total",
            "Registrations this node took over through the Redis store for a request.",
            S::get(&c.takeovers),
        ),
        (
            "lwm2m_cluster_adopted_total",
            "Registrations taken over that the shards took in (their request then handled).",
            sum(|s| s.cluster_adopted),
        ),
        (
            "lwm2m_cluster_peer_lookups_total",
            "Lookups of a registration by a device's address (a datagram from an address no registration here has, a notification after a move).",
            S::get(&c.peer_lookups),
        ),
        (
            "lwm2m_cluster_peer_takeovers_total",
            "Registrations those lookups found and this node took over.",
            S::get(&c.peer_takeovers),
        ),
        (
            "lwm2m_cluster_peer_waits_total",
            "Datagrams from an address dropped while its lookup was in flight (the device retransmits).",
            sum(|s| s.peer_takes_waiting),
        ),
        (
            "lwm2m_cluster_peer_limited_total",
            "Datagrams from unknown addresses dropped over the rate of lookups by address (1,000/s per shard).",
            sum(|s| s.peer_takes_limited),
        ),
        (
            "lwm2m_cluster_take_misses_total",
            "Takes that found no registration at the location (answered 4.04).",
            S::get(&c.take_misses),
        ),
        (
            "lwm2m_cluster_take_failures_total",
            "Takes that failed: Redis unreachable, a record that does not decode, a full queue (answered 4.04).",
            S::get(&c.take_failures),
        ),
        (
            "lwm2m_cluster_releases_sent_total",
            "Notices sent to other nodes that a registration was taken from them.",
            S::get(&c.releases_sent),
        ),
        (
            "lwm2m_cluster_releases_received_total",
            "Notices received that another node took a registration from this one.",
            S::get(&c.releases_received),
        ),
        (
            "lwm2m_cluster_forwards_sent_total",
            "Commands for endpoints another node holds, forwarded to it through Redis.",
            S::get(&c.forwards_sent),
        ),
        (
            "lwm2m_cluster_forwards_received_total",
            "Commands another node forwarded to this one.",
            S::get(&c.forwards_received),
        ),
        (
            "lwm2m_cluster_forwards_unowned_total",
            "Commands for endpoints no node holds (answered here as for an unknown endpoint).",
            S::get(&c.forwards_unowned),
        ),
        (
            "lwm2m_cluster_released_total",
            "Registrations let go (silently) because another node took them over.",
            sum(|s| s.cluster_released),
        ),
        (
            "lwm2m_cluster_handovers_kept_total",
            "Command subscriptions of registrations another node took over, kept until that node's own subscription is in place.",
            sum(|s| s.handovers_kept),
        ),
        (
            "lwm2m_cluster_handovers_confirmed_total",
            "Kept subscriptions given up because the new node said its subscription was in place.",
            sum(|s| s.handovers_confirmed),
        ),
        (
            "lwm2m_cluster_handovers_timed_out_total",
            "Kept subscriptions given up at the deadline (10 s) without the new node's notice.",
            sum(|s| s.handovers_timed_out),
        ),
        (
            "lwm2m_cluster_unsubscribes_sent_total",
            "Notices sent to the node a registration was taken from once this node's subscription was acknowledged.",
            S::get(&c.unsubscribes_sent),
        ),
        (
            "lwm2m_cluster_unsubscribes_unsent_total",
            "Such notices that could not be sent (the other node gives its subscription up at its deadline).",
            S::get(&c.unsubscribes_unsent),
        ),
        (
            "lwm2m_cluster_unsubscribes_received_total",
            "Such notices received from other nodes.",
            S::get(&c.unsubscribes_received),
        ),
    ];
    for (name, help, v) in counters {
        w.counter(name, help, &[], v);
    }
    w.gauge(
        "lwm2m_cluster_handovers_pending",
        "Command subscriptions kept for handovers now.",
        &[],
        sum(|s| s.handovers_pending),
    );
    w.gauge(
        "lwm2m_cluster_redis_up",
        "1 while the cluster side's Redis connection answers, 0 while it does not.",
        &[],
        c.reachable() as u64,
    );
}
