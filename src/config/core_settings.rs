//! The protocol core's settings, resolved once from the configuration (the core knows
//! nothing of the configuration file).

use super::{AutoObserve, Config, SubscribeMode, UpdateCondition};
use crate::lwm2m::settings::{AutoObserveSet, CoreSettings, Translator};
use crate::lwm2m::template::Template;
use crate::model::LwPath;

impl From<&Config> for CoreSettings {
    fn from(c: &Config) -> Self {
        let t = |x: &crate::config::Translator| Translator {
            topic: x.topic.clone(),
            qos: x.qos,
        };
        Self {
            lifetime_min_s: secs(c.lifetime_min),
            lifetime_max_s: secs(c.lifetime_max),
            mountpoint: Template::parse(&c.mountpoint).with_suffix(&c.translators.command.topic),
            command: t(&c.translators.command),
            response: t(&c.translators.response),
            notify: t(&c.translators.notify),
            register: t(&c.translators.register),
            update: t(&c.translators.update),
            send: t(&c.translators.send),
            deregister: t(&c.translators.deregister),
            bootstrap: t(&c.translators.bootstrap),
            // Set by the engine when `[bootstrap]` is enabled.
            bootstrap_configs: None,
            update_needs_object_list: c.update_msg_publish_condition
                == UpdateCondition::ContainsObjectList,
            per_endpoint_subscriptions: c.mqtt.subscribe.resolve(&c.mqtt.server)
                == SubscribeMode::PerEndpoint,
            exchange_lifetime_ms: c.coap.exchange_lifetime.as_millis() as u64,
            ack_timeout_ms: c.coap.ack_timeout.as_millis() as u64,
            ack_random_factor: c.coap.ack_random_factor,
            max_retransmit: c.coap.max_retransmit,
            nstart: c.coap.nstart.max(1),
            qmode_window_ms: c.qmode_time_window.as_millis() as u64,
            max_queued: c.queue.max_queued,
            queue_ttl_ms: c.queue.default_ttl.as_millis() as u64,
            auth: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(c.authentication.enable)),
            auth_timeout_ms: (c.authentication.connect_timeout + c.authentication.request_timeout)
                .as_millis() as u64
                + 1000,
            enable_stats: c.enable_stats,
            dtls_psk: None,
            dtls_require_cn: c.listeners.dtls.values().any(|l| l.cafile.is_some()),
            // Set by the engine from the OS's randomness.
            location_key: [0; 2],
            // Set by the engine from its clock.
            clock_epoch_ms: 0,
            store_records: c.store.kind != crate::config::StoreKind::None,
            shared_store: c.store.kind == crate::config::StoreKind::Redis,
            max_connections: c.udp_listener().max_connections,
            max_conn_rate: c.udp_listener().max_conn_rate,
            dtls_max_connections: c
                .listeners
                .dtls
                .values()
                .next()
                .map_or(1_024_000, |l| l.max_connections),
            dtls_max_conn_rate: c
                .listeners
                .dtls
                .values()
                .next()
                .map_or(1000, |l| l.max_conn_rate),
            block_enable: c.blockwise.enable,
            block_szx: crate::lwm2m::blockwise::szx_of(c.blockwise.max_block_size as usize),
            max_body_size: c.blockwise.max_body_size,
            block_lifetime_ms: c.blockwise.exchange_lifetime.as_millis() as u64,
            // One body per device with its request key (Uri-Query up to a
            // datagram); a shard holds at most sixteen at once.
            block_device_cap: c.blockwise.max_body_size.saturating_add(2048),
            block_shard_cap: c.blockwise.max_body_size.saturating_mul(16),
            auto_observe: match &c.auto_observe {
                AutoObserve::Off => AutoObserveSet::Off,
                AutoObserve::All => AutoObserveSet::All,
                AutoObserve::Paths(p) => {
                    AutoObserveSet::Paths(p.iter().filter_map(|s| LwPath::parse(s).ok()).collect())
                }
            },
        }
    }
}

fn secs(d: std::time::Duration) -> u32 {
    d.as_secs().min(u32::MAX as u64) as u32
}
