//! Starting and stopping the gateway: the embedded broker (if configured), one UDP
//! socket, thread and set of broker connections per shard, and the orderly shutdown
//! that stops receiving and lets every shard publish what it holds and disconnect.

use super::admin::GatewayAdmin;
use super::dtls_side::{DtlsSide, DTLS};
use super::mail::{ShardMail, ShardTimer};
use super::mqtt_side::{MqttSide, MQTT_TOKEN_BASE};
use super::restore::{restore_into, StartGate};
use super::router::{CommandRouter, RouterCounters};
use super::udp_shard::{ShardCounters, UdpShard, UDP};
use crate::api::ApiServer;
use crate::auth::AuthService;
use crate::bootstrap::BootstrapStore;
use crate::cluster::ClusterSide;
use crate::config::{Config, MqttProtocol, MqttServer, StoreKind};
use crate::dtls::{CertConfig, DtlsServer, DtlsSettings, PskStore, ResumptionCache};
use crate::events::EventFeed;
use crate::lwm2m::endpoint::Endpoint;
use crate::lwm2m::{CoreSettings, CoreStats, Directory, MqttOut, ShardCore};
use crate::mqtt::{self, BrokerAddrs, MqttClient, MqttOptions, MqttStats, ServerAddr};
use crate::objects::{self, SharedRegistry};
use crate::store::{Backend, FileStore, RedisStore, StoreError, StoreStats, StoreWriter};
use mio::{Interest, Poll, Token, Waker};
use parking_lot::Mutex;
use shard::{Clock, LoopConfig, MailboxReceiver, MailboxSender, ShardSpawn, TimerWheel};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const WAKER: Token = Token(0);
/// How bind errors name each listener.
const UDP_LISTENER: &str = "UDP listener";
const DTLS_LISTENER: &str = "DTLS listener";
const API_LISTENER: &str = "management API listener (api.bind)";

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The embedded broker could not start (its error names the address and its key).
    #[error("embedded MQTT broker: {source}")]
    Broker { source: std::io::Error },
    /// A listener socket could not be bound (`what` names the listener).
    #[error("{what} on {bind}: {source}")]
    Bind {
        what: &'static str,
        bind: SocketAddr,
        source: std::io::Error,
    },
    /// The store could not be opened or read (damaged, of another format, in use):
    /// the start is refused rather than serving without the devices it holds.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A thread or poller could not be created.
    #[error("starting {what}: {source}")]
    Start {
        what: &'static str,
        source: std::io::Error,
    },
}

/// What each shard thread takes at start.
struct ShardParts {
    poll: Poll,
    socket: std::net::UdpSocket,
    dtls_socket: Option<std::net::UdpSocket>,
    mailbox: MailboxReceiver<ShardMail>,
}

/// A running gateway.
pub struct Gateway {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    shard_threads: Vec<JoinHandle<()>>,
    mqtt_stats: Arc<MqttStats>,
    /// Broker connections over all shards.
    mqtt_connections: usize,
    /// Commands come through the one wildcard subscription (on shard 0).
    wildcard: bool,
    watcher: Option<JoinHandle<()>>,
    api: Option<ApiServer>,
    /// Closed first on stop, so the API's listeners let go.
    events: Arc<EventFeed>,
    auth: AuthService,
    udp_addr: SocketAddr,
    pub dir: Arc<Directory>,
    pub shard_counters: Vec<Arc<ShardCounters>>,
    pub router_counters: Arc<RouterCounters>,
    /// The store's writer (`[store] kind = "file"`), stopped after the shards.
    store: Option<StoreWriter>,
    /// The cluster side (`[store] kind = "redis"`), stopped after the shards.
    cluster: Option<ClusterSide>,
    pub store_stats: Option<Arc<StoreStats>>,
}

impl Gateway {
    /// Starts everything the configuration asks for.
    pub fn start(cfg: &Config) -> Result<Self, GatewayError> {
        Self::start_from(cfg, None)
    }

    /// As [`Gateway::start`], for a configuration read from `file` (where the management
    /// API's `PUT ?persist=true` writes changes back).
    pub fn start_from(cfg: &Config, file: Option<PathBuf>) -> Result<Self, GatewayError> {
        let server = broker_address(cfg)?;
        let mut settings = CoreSettings::from(cfg);
        let capacity = cfg.directory_capacity();
        let filters = if cfg.per_endpoint() { capacity } else { 0 };
        let dir = Arc::new(Directory::with_capacity(capacity, filters));
        let registry = load_registry(&cfg.xml_dir);
        let stop = Arc::new(AtomicBool::new(false));
        let shards = shard::resolve_count(cfg.engine.shards);
        let dtls = dtls_setup(cfg, &stop, shards)?;
        settings.dtls_psk = dtls
            .as_ref()
            .and_then(|d| d.1.psk.clone())
            .map(|p| p as Arc<dyn crate::lwm2m::PskPolicy>);
        let bootstrap = bootstrap_setup(cfg, dtls.as_ref(), &stop)?;
        settings.bootstrap_configs = bootstrap
            .clone()
            .map(|b| b as Arc<dyn crate::lwm2m::BootstrapSource>);
        settings.location_key =
            os_random_key().map_err(|e| start_err("registration location key", e))?;
        let clock = Clock::new();
        let epoch_ms = clock_epoch_ms(&clock);
        settings.clock_epoch_ms = epoch_ms;
        let settings = Arc::new(settings);
        let (store, restored) = open_store(cfg, epoch_ms, shards)?;
        let store_stats = store.as_ref().map(|(_, s)| s.clone());
        let watcher =
            objects::spawn_watcher(registry.clone(), cfg.xml_dir.clone(), RELOAD, stop.clone())
                .map_err(|e| start_err("object definition watcher", e))?;
        let listener = cfg.udp_listener();

        // Sockets first: a bad bind fails the start before any thread runs.
        let sockets = bind_sockets(UDP_LISTENER, listener.bind, shards, cfg)?;
        let udp_addr = sockets[0].local_addr().map_err(|e| GatewayError::Bind {
            what: UDP_LISTENER,
            bind: listener.bind,
            source: e,
        })?;
        let api_listener = bind_api(cfg)?;

        let ShardSetup {
            parts,
            senders,
            wakers,
        } = shard_parts(cfg, sockets, dtls.as_ref().map(|d| d.0), shards)?;
        let senders: Arc<Vec<MailboxSender<ShardMail>>> = Arc::new(senders);
        let dtls_bound = tell_dtls_port(bootstrap.as_deref(), &parts);
        let cluster = start_cluster(cfg, epoch_ms, &dir, &senders)?;

        let (router, router_counters) = command_router(&settings, &dir, shards);
        let mqtt_opts = mqtt_options(cfg, server);
        let broker = broker_addrs(cfg, &mqtt_opts.server)?;
        let mqtt_connections = shards * connections_per_shard(mqtt_opts.connections, shards);
        let per_endpoint = settings.per_endpoint_subscriptions;
        let mqtt_tls = mqtt::tls_for(&mqtt_opts).map_err(|e| start_err("MQTT TLS settings", e))?;
        let mqtt_stats = Arc::new(MqttStats::default());
        // The wildcard filter (when commands are not subscribed per endpoint) lives
        // on shard 0's connections; shard 0 hands each command to its endpoint's shard.
        let wildcard = (!settings.per_endpoint_subscriptions).then(|| command_wildcard(&settings));

        let seed = seed();
        let parts = Arc::new(Mutex::new(parts));
        let shard_counters: Vec<Arc<ShardCounters>> = (0..shards).map(|_| Arc::default()).collect();
        let core_stats: Vec<Arc<Mutex<CoreStats>>> = (0..shards).map(|_| Arc::default()).collect();
        let auth = AuthService::start(&cfg.authentication);
        let events = Arc::new(EventFeed::new(&cfg.mountpoint));
        let spec = ShardSpawn {
            count: shards,
            pin_cores: cfg.engine.pin_cores,
            name_prefix: "shard".into(),
        };
        let admin = Arc::new(GatewayAdmin {
            dir: dir.clone(),
            shards: senders.clone(),
            auth: auth.clone(),
            config: Mutex::new(cfg.clone()),
            settings: Mutex::new(settings.clone()),
            core_stats: core_stats.clone(),
            shard_counters: shard_counters.clone(),
            router: router_counters.clone(),
            mqtt: mqtt_stats.clone(),
            epoch_ms,
            bootstrap: bootstrap.clone(),
            store: store_stats.clone(),
            cluster: cluster.as_ref().map(|c| c.view.clone()),
            config_path: file,
            serving: AtomicBool::new(true),
            bound: (udp_addr, dtls_bound),
            registry: registry.clone(),
            events: events.clone(),
        });
        let ctx = Arc::new(ShardContext {
            dtls: dtls.map(|d| d.1),
            settings,
            registry,
            dir: dir.clone(),
            mqtt: mqtt_opts,
            broker,
            mqtt_tls,
            mqtt_stats: mqtt_stats.clone(),
            wildcard: Mutex::new(wildcard),
            router,
            peers: senders,
            stop: stop.clone(),
            counters: shard_counters.clone(),
            core_stats: core_stats.clone(),
            auth: auth.clone(),
            clock,
            seed,
            recv_batch: cfg.engine.recv_batch,
            max_datagram: cfg.engine.max_datagram,
            bootstrap,
            store: store.as_ref().map(|(w, _)| w.sender()),
            cluster: cluster.as_ref().map(|c| c.sender()),
            restored: Mutex::new(restored.into_iter().map(Some).collect()),
            gate: StartGate::new(shards),
            events: events.clone(),
        });
        let shard_threads = shard::spawn_shards(&spec, move |i| {
            let p = parts.lock()[i].take().expect("each shard starts once");
            if let Err(e) = run_shard(i, p, &ctx) {
                tracing::error!(shard = i, error = %e, "shard stopped with an error");
            }
        })
        .map_err(|e| start_err("shard threads", e))?;
        tracing::info!(%udp_addr, shards, "UDP listener up");
        let api = start_api(api_listener, cfg, admin)?;
        Ok(Self {
            stop,
            wakers,
            shard_threads,
            mqtt_stats,
            mqtt_connections,
            wildcard: !per_endpoint,
            watcher: Some(watcher),
            api: Some(api),
            events,
            auth,
            udp_addr,
            dir,
            shard_counters,
            router_counters,
            store: store.map(|(w, _)| w),
            store_stats,
            cluster,
        })
    }

    /// The bound address of the UDP listener (useful when the port was 0).
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    pub fn mqtt_stats(&self) -> &Arc<MqttStats> {
        &self.mqtt_stats
    }

    /// Waits up to `timeout` for every shard's broker connections to be up and, in
    /// wildcard mode, for the broker to acknowledge the command subscription: from then
    /// on a command an application publishes reaches the gateway. False on timeout (the
    /// connections keep trying; commands published meanwhile find no subscription).
    pub fn wait_for_broker(&self, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let up = MqttStats::get(&self.mqtt_stats.connected) >= self.mqtt_connections as u64;
            let subscribed = !self.wildcard || MqttStats::get(&self.mqtt_stats.subacks) >= 1;
            if up && subscribed {
                return true;
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops receiving; every shard publishes what it holds (waiting up to 5 s for the
    /// broker's acknowledgements) and disconnects.
    pub fn stop(mut self) {
        self.events.close();
        if let Some(api) = self.api.take() {
            api.stop();
        }
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.shard_threads.drain(..) {
            let _ = t.join();
        }
        for (i, c) in self.shard_counters.iter().enumerate() {
            tracing::info!(
                shard = i,
                endpoints = c.endpoints.load(Ordering::Relaxed),
                datagrams_in = c.datagrams_in.load(Ordering::Relaxed),
                "shard stopped"
            );
        }
        if let Some(w) = self.store.take() {
            // After the shards: everything they queued is written.
            w.stop();
        }
        if let Some(c) = self.cluster.take() {
            c.stop();
        }
        if let Some(t) = self.watcher.take() {
            let _ = t.join();
        }
        self.auth.shutdown();
    }
}

struct ShardContext {
    dtls: Option<DtlsSettings>,
    bootstrap: Option<Arc<BootstrapStore>>,
    core_stats: Vec<Arc<Mutex<CoreStats>>>,
    auth: AuthService,
    settings: Arc<CoreSettings>,
    registry: Arc<SharedRegistry>,
    dir: Arc<Directory>,
    mqtt: MqttOptions,
    /// The broker's addresses, kept up to date off the shards.
    broker: Arc<BrokerAddrs>,
    mqtt_tls: Option<Arc<rustls::ClientConfig>>,
    mqtt_stats: Arc<MqttStats>,
    /// The command wildcard subscription, taken by shard 0.
    wildcard: Mutex<Option<MqttOut>>,
    router: Arc<CommandRouter>,
    peers: Arc<Vec<MailboxSender<ShardMail>>>,
    stop: Arc<AtomicBool>,
    counters: Vec<Arc<ShardCounters>>,
    clock: Clock,
    seed: u64,
    recv_batch: usize,
    max_datagram: usize,
    /// The store writer's queue, when registrations are kept.
    store: Option<crate::store::StoreSender>,
    /// The cluster thread's queue (`[store] kind = "redis"`).
    cluster: Option<crate::cluster::ClusterSender>,
    /// Each shard's share of the registrations read back from the store, taken once.
    restored: Mutex<Vec<Option<Vec<Endpoint>>>>,
    /// No shard serves a device before every shard took its share in.
    gate: StartGate,
    /// What is published, for the API's listeners.
    events: Arc<EventFeed>,
}

fn run_shard(i: usize, p: ShardParts, ctx: &ShardContext) -> std::io::Result<()> {
    // Arrives at the gate when this shard restored its share, or when it fails before.
    let pass = ctx.gate.pass();
    let ShardParts {
        mut poll,
        socket,
        dtls_socket,
        mailbox,
    } = p;
    let mut socket = mio::net::UdpSocket::from_std(socket);
    poll.registry()
        .register(&mut socket, UDP, Interest::READABLE | Interest::WRITABLE)?;
    let core = ShardCore::with_shards(
        i as u16,
        ctx.counters.len(),
        ctx.settings.clone(),
        ctx.dir.clone(),
        ctx.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    let start_ms = ctx.clock.now_ms();
    let mqtt = shard_mqtt(i, ctx, poll.registry().try_clone()?, start_ms);
    let mut app = UdpShard::new(
        core,
        socket,
        ctx.recv_batch,
        ctx.max_datagram,
        mqtt,
        ctx.router.clone(),
        ctx.peers.clone(),
        ctx.stop.clone(),
        ctx.counters[i].clone(),
        ctx.core_stats[i].clone(),
        ctx.auth.clone(),
        ctx.registry.clone(),
    );
    app.bootstrap = ctx.bootstrap.clone();
    app.store = ctx.store.clone();
    app.cluster = ctx.cluster.clone();
    if let (Some(s), Some(ds)) = (dtls_socket, &ctx.dtls) {
        let mut s = mio::net::UdpSocket::from_std(s);
        poll.registry()
            .register(&mut s, DTLS, Interest::READABLE | Interest::WRITABLE)?;
        let mut server = DtlsServer::new(ds.clone()).map_err(std::io::Error::other)?;
        server.set_shard(i as u16, ctx.peers.len() as u16);
        app.dtls = Some(DtlsSide::new(
            s,
            server,
            ctx.recv_batch,
            ctx.max_datagram,
            ctx.clock,
        ));
    }
    let mut timers: TimerWheel<ShardTimer> = TimerWheel::new(start_ms);
    let restored = ctx.restored.lock()[i].take().unwrap_or_default();
    restore_into(&mut app, start_ms, restored, &mut timers);
    pass.wait();
    let cfg = LoopConfig {
        mailbox_budget: 1024,
        max_sleep_ms: 1000,
    };
    shard::run(
        &mut app,
        &mut poll,
        &mailbox,
        WAKER,
        &ctx.clock,
        &mut timers,
        &cfg,
    )
}

/// How often the object definitions' directory is looked at for changes.
const RELOAD: Duration = Duration::from_secs(2);

/// The router that hands each command to the shard of its endpoint, and its counters.
fn command_router(
    settings: &CoreSettings,
    dir: &Arc<Directory>,
    shards: usize,
) -> (Arc<CommandRouter>, Arc<RouterCounters>) {
    let counters = Arc::new(RouterCounters::default());
    let router = Arc::new(CommandRouter {
        mountpoint: settings.mountpoint.clone(),
        command_topic: settings.command.topic.clone(),
        dir: dir.clone(),
        shards,
        counters: counters.clone(),
    });
    (router, counters)
}

/// The store of `[store]`: opened, read back (each shard's share of the registrations)
/// and its writer started; nothing with `kind = "none"`.
#[allow(clippy::type_complexity)]
fn open_store(
    cfg: &Config,
    epoch_ms: u64,
    shards: usize,
) -> Result<(Option<(StoreWriter, Arc<StoreStats>)>, Vec<Vec<Endpoint>>), GatewayError> {
    let mut backend: Box<dyn Backend> = match cfg.store.kind {
        StoreKind::None => return Ok((None, (0..shards).map(|_| Vec::new()).collect())),
        StoreKind::File => Box::new(FileStore::open(&cfg.store.path)?),
        StoreKind::Redis => Box::new(RedisStore::open(&cfg.store.url, &cfg.cluster.node_name())?),
    };
    let restored = crate::store::load(&mut *backend, epoch_ms, shards)?;
    let stats = Arc::new(StoreStats::default());
    stats.restored.store(restored.count, Ordering::Relaxed);
    stats
        .restore_ms
        .store(restored.elapsed.as_millis() as u64, Ordering::Relaxed);
    tracing::info!(
        store = %backend.describe(),
        registrations = restored.count,
        read_ms = restored.elapsed.as_millis() as u64,
        "store opened"
    );
    let writer =
        StoreWriter::start(backend, stats.clone()).map_err(|e| start_err("store writer", e))?;
    Ok((Some((writer, stats)), restored.shards))
}

/// The cluster side of `[store] kind = "redis"` (nothing otherwise): its answers go to
/// the shards' mailboxes.
fn start_cluster(
    cfg: &Config,
    epoch_ms: u64,
    dir: &Arc<Directory>,
    senders: &Arc<Vec<MailboxSender<ShardMail>>>,
) -> Result<Option<ClusterSide>, GatewayError> {
    if cfg.store.kind != StoreKind::Redis {
        return Ok(None);
    }
    let peers = senders.clone();
    let deliver: crate::cluster::Deliver = Arc::new(move |shard, answer| {
        if let Some(p) = peers.get(shard as usize) {
            let _ = p.send_timeout(ShardMail::Cluster(answer), Duration::from_secs(1));
        }
    });
    let node = cfg.cluster.node_name();
    let shards = senders.len() as u16;
    let side = ClusterSide::start(
        &cfg.store.url,
        &node,
        epoch_ms,
        shards,
        dir.clone(),
        deliver,
    )?;
    tracing::info!(%node, url = %cfg.store.url, "cluster side up");
    Ok(Some(side))
}

/// Shard `i`'s broker connections: `mqtt.connections` spread over the shards (at
/// least one each), named `{client_id}-{n}` with n unique in the process, holding
/// their share of `mqtt.buffer_messages`, on the shard's clock (`now_ms`: the start).
fn shard_mqtt(i: usize, ctx: &ShardContext, registry: mio::Registry, now_ms: u64) -> MqttSide {
    let shards = ctx.counters.len().max(1);
    let per_shard = connections_per_shard(ctx.mqtt.connections, shards);
    let cap = ctx.mqtt.buffer_messages.div_ceil(shards).max(1);
    let mut client = MqttClient::new(
        ctx.mqtt.clone(),
        i * per_shard,
        per_shard,
        MQTT_TOKEN_BASE,
        cap,
        ctx.mqtt_stats.clone(),
        ctx.mqtt_tls.clone(),
        ctx.broker.clone(),
        ctx.seed ^ (i as u64 + 1).wrapping_mul(0xd6e8_feb8_6659_fd93),
        ctx.clock.instant_at(now_ms),
    );
    let share = ctx
        .settings
        .shared_store
        .then_some(super::mqtt_side::SHARE_GROUP);
    if i == 0 {
        if let Some(sub) = ctx.wildcard.lock().take() {
            client.accept(super::mqtt_side::shared(sub, share));
        }
    }
    MqttSide::new(client, registry, ctx.clock)
        .with_events(ctx.events.clone())
        .with_share(share)
}

/// `mqtt.connections` spread over the shards, at least one each.
fn connections_per_shard(connections: usize, shards: usize) -> usize {
    connections.div_ceil(shards.max(1)).max(1)
}

/// The shards' start-up pieces: what each thread takes, and the senders and wakers of
/// their mailboxes.
struct ShardSetup {
    parts: Vec<Option<ShardParts>>,
    senders: Vec<MailboxSender<ShardMail>>,
    wakers: Vec<Arc<Waker>>,
}

/// What each shard thread takes at start (its poller, its UDP socket and, with a DTLS
/// listener on `dtls_bind`, its DTLS socket, bound here, and its mailbox), with the senders
/// of the mailboxes and their wakers.
fn shard_parts(
    cfg: &Config,
    sockets: Vec<std::net::UdpSocket>,
    dtls_bind: Option<SocketAddr>,
    shards: usize,
) -> Result<ShardSetup, GatewayError> {
    let mut parts = Vec::with_capacity(shards);
    let mut senders = Vec::with_capacity(shards);
    let mut wakers = Vec::with_capacity(shards);
    let mut dtls_sockets: Vec<Option<std::net::UdpSocket>> = match dtls_bind {
        Some(bind) => bind_sockets(DTLS_LISTENER, bind, shards, cfg)?
            .into_iter()
            .map(Some)
            .collect(),
        None => (0..shards).map(|_| None).collect(),
    };
    if let (Some(bind), Some(Some(s))) = (dtls_bind, dtls_sockets.first()) {
        tracing::info!(bind = %s.local_addr().unwrap_or(bind), "DTLS listener up");
    }
    for (i, socket) in sockets.into_iter().enumerate() {
        let poll = Poll::new().map_err(|e| start_err("poller", e))?;
        let waker =
            Arc::new(Waker::new(poll.registry(), WAKER).map_err(|e| start_err("waker", e))?);
        let (tx, rx) = shard::mailbox(cfg.engine.mailbox_capacity, waker.clone());
        senders.push(tx);
        wakers.push(waker);
        parts.push(Some(ShardParts {
            poll,
            socket,
            dtls_socket: dtls_sockets[i].take(),
            mailbox: rx,
        }));
    }
    Ok(ShardSetup {
        parts,
        senders,
        wakers,
    })
}

/// The subscription to the command wildcard filter (when commands are not subscribed per
/// endpoint), for shard 0's connections; warns when the filter also matches the gateway's
/// own uplink topics.
fn command_wildcard(settings: &CoreSettings) -> MqttOut {
    let filter = settings.wildcard_command_filter();
    tracing::info!(%filter, "subscribing command wildcard");
    if wildcard_covers_uplinks(settings, &filter) {
        tracing::warn!(
            %filter,
            "the command wildcard also matches the gateway's own uplink topics, which \
             the broker will send back (counted as foreign topics); end the mountpoint \
             with '/' to avoid it"
        );
    }
    MqttOut::Subscribe {
        lane: 0,
        filter,
        qos: settings.command.qos,
    }
}

/// Unix time (ms) of `clock`'s zero: what turns the shards' monotonic times into
/// wall-clock times for the API.
fn clock_epoch_ms(clock: &Clock) -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .saturating_sub(clock.now_ms())
}

/// The DTLS listener's bind address and settings, with its PSK file loaded (and
/// watched) and its certificate read; None when no DTLS listener is configured. Its
/// `max_sessions` is split evenly over the `shards` (each shard has its own session table).
fn dtls_setup(
    cfg: &Config,
    stop: &Arc<AtomicBool>,
    shards: usize,
) -> Result<Option<(SocketAddr, DtlsSettings)>, GatewayError> {
    let Some(l) = cfg.listeners.dtls.values().next() else {
        return Ok(None);
    };
    let bad = |what: String| GatewayError::Start {
        what: "DTLS listener",
        source: std::io::Error::other(what),
    };
    let psk = match &l.psk_file {
        Some(p) => {
            let store =
                Arc::new(PskStore::load(p).map_err(|e| bad(format!("{}: {e}", p.display())))?);
            store
                .spawn_watcher(Duration::from_secs(2), stop.clone())
                .map_err(|e| start_err("PSK file watcher", e))?;
            Some(store)
        }
        None => None,
    };
    let cert = match (&l.certfile, &l.keyfile) {
        (Some(c), Some(k)) => Some(Arc::new(
            CertConfig::load(c, k, l.cafile.as_deref()).map_err(|e| bad(e.to_string()))?,
        )),
        _ => None,
    };
    let session_cache = (!l.session_lifetime.is_zero() && l.session_cache_size > 0).then(|| {
        Arc::new(ResumptionCache::new(
            l.session_lifetime,
            usize::try_from(l.session_cache_size).unwrap_or(usize::MAX),
            psk.clone(),
        ))
    });
    Ok(Some((
        l.bind,
        DtlsSettings {
            session_cache,
            psk,
            cert,
            idle_timeout: l.idle_timeout,
            connection_id_len: if l.connection_id {
                l.connection_id_length as usize
            } else {
                0
            },
            max_sessions: usize::try_from(l.max_sessions.div_ceil(shards.max(1) as u64))
                .unwrap_or(usize::MAX),
            ..DtlsSettings::default()
        },
    )))
}

/// The Bootstrap-Server's configurations when `[bootstrap] enable`: the file loaded (a
/// missing one is empty; a bad one fails the start) and watched; credentials for this
/// gateway go to the DTLS listener's PSK store.
fn bootstrap_setup(
    cfg: &Config,
    dtls: Option<&(SocketAddr, DtlsSettings)>,
    stop: &Arc<AtomicBool>,
) -> Result<Option<Arc<BootstrapStore>>, GatewayError> {
    if !cfg.bootstrap.enable {
        return Ok(None);
    }
    let psk = dtls.and_then(|(addr, d)| Some((d.psk.clone()?, addr.port())));
    let store =
        BootstrapStore::load(&cfg.bootstrap.config_file, psk).map_err(|e| GatewayError::Start {
            what: "bootstrap configuration",
            source: std::io::Error::other(e.to_string()),
        })?;
    let store = Arc::new(store);
    store
        .spawn_watcher(Duration::from_secs(2), stop.clone())
        .map_err(|e| start_err("bootstrap configuration watcher", e))?;
    tracing::info!(
        path = %cfg.bootstrap.config_file.display(),
        entries = store.current().len(),
        "Bootstrap-Server enabled"
    );
    Ok(Some(store))
}

fn start_api(
    listener: std::net::TcpListener,
    cfg: &Config,
    admin: Arc<GatewayAdmin>,
) -> Result<ApiServer, GatewayError> {
    let api = ApiServer::start_on(
        listener,
        cfg.api.api_key.clone(),
        cfg.api.api_secret.expose().to_string(),
        admin,
    )
    .map_err(|e| start_err("management API", e))?;
    tracing::info!(bind = %api.local_addr(), "management API up");
    Ok(api)
}

/// The Bootstrap-Server learns the DTLS listener's bound port (the configuration may
/// say 0): credentials for `coaps://…:port` are this gateway's. Returns the bound address.
fn tell_dtls_port(
    bootstrap: Option<&BootstrapStore>,
    parts: &[Option<ShardParts>],
) -> Option<SocketAddr> {
    let bound = parts
        .first()
        .and_then(|p| p.as_ref()?.dtls_socket.as_ref()?.local_addr().ok());
    if let (Some(b), Some(a)) = (bootstrap, bound) {
        b.set_dtls_port(a.port());
    }
    bound
}

/// Loads the object definitions of `dir`; a bad file is logged and skipped. When `dir`
/// does not exist, the built-in definitions (the shipped `etc/lwm2m_xml`) are used until it
/// appears (the watcher loads it then).
/// The management API's listener, bound before any thread starts.
fn bind_api(cfg: &Config) -> Result<std::net::TcpListener, GatewayError> {
    std::net::TcpListener::bind(cfg.api.bind).map_err(|source| GatewayError::Bind {
        what: API_LISTENER,
        bind: cfg.api.bind,
        source,
    })
}

fn load_registry(dir: &std::path::Path) -> Arc<SharedRegistry> {
    let shown = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    if !dir.is_dir() {
        let reg = objects::builtin_registry();
        let objects = reg.len();
        let what = "xml_dir does not exist: using the built-in object definitions until it appears";
        if dir == Config::default().xml_dir {
            // Nothing configured it: the built-in copy is the expected default.
            tracing::info!(xml_dir = %shown.display(), objects, "{what}");
        } else {
            tracing::warn!(xml_dir = %shown.display(), objects, "{what}");
        }
        return Arc::new(SharedRegistry::new(reg));
    }
    let (reg, errors) = SharedRegistry::from_dir(dir);
    for e in &errors {
        tracing::warn!(error = %e, "object definition skipped");
    }
    let objects = reg.load().len();
    if objects == 0 {
        tracing::warn!(xml_dir = %shown.display(), "no object definitions loaded: values are delivered untyped");
    } else {
        tracing::info!(xml_dir = %shown.display(), objects, "object definitions loaded");
    }
    Arc::new(reg)
}

/// The shards' sockets on `bind` (SO_REUSEPORT: one per shard), refused when a socket of
/// another process shares the port (it would take part of the devices' traffic).
fn bind_sockets(
    what: &'static str,
    bind: SocketAddr,
    shards: usize,
    cfg: &Config,
) -> Result<Vec<std::net::UdpSocket>, GatewayError> {
    let opts = netio::SocketOptions {
        reuse_port: true,
        rcvbuf: cfg.engine.socket_rcvbuf as usize,
        sndbuf: cfg.engine.socket_sndbuf as usize,
    };
    let fail = |source| GatewayError::Bind { what, bind, source };
    let mut addr = bind;
    let mut out = Vec::with_capacity(shards);
    for _ in 0..shards {
        let s = netio::bind_udp(addr, &opts).map_err(fail)?;
        // With port 0 the first socket picks the port; the others share it.
        if addr.port() == 0 {
            addr = s.local_addr().map_err(fail)?;
        }
        out.push(s);
    }
    match netio::foreign_udp_sockets(addr) {
        Ok(0) => Ok(out),
        Ok(n) => Err(fail(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!(
                "port {} is already served by another process ({n} socket(s) not ours \
                 bound to it; SO_REUSEPORT would give it part of the devices' traffic)",
                addr.port()
            ),
        ))),
        Err(e) => {
            tracing::warn!(%addr, error = %e, "cannot check whether another process shares the port");
            Ok(out)
        }
    }
}

fn broker_address(cfg: &Config) -> Result<ServerAddr, GatewayError> {
    Ok(match &cfg.mqtt.server {
        MqttServer::Embedded => {
            // The MQTT 5 listener only when the gateway speaks MQTT 5: rumqttd breaks the
            // 3.1.1 listener when it forwards an MQTT 5 publish with properties (a command's
            // message expiry) to a 3.1.1 subscriber, which the gateway would then be.
            let bind = cfg.mqtt.embedded_bind;
            let bind_v5 =
                (cfg.mqtt.protocol == MqttProtocol::V5).then_some(cfg.mqtt.embedded_bind_v5);
            mqtt::start_embedded_broker(bind, bind_v5)
                .map_err(|source| GatewayError::Broker { source })?;
            tracing::info!(%bind, bind_v5 = ?bind_v5, "embedded MQTT broker up");
            // The gateway connects to the listener of the version it speaks.
            let own = bind_v5.unwrap_or(bind);
            let host = match own.ip() {
                ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
                ip => ip,
            };
            ServerAddr::Tcp {
                host: host.to_string(),
                port: own.port(),
            }
        }
        MqttServer::Tcp { host, port } => ServerAddr::Tcp {
            host: host.clone(),
            port: *port,
        },
        MqttServer::Tls { host, port } => ServerAddr::Tls {
            host: host.clone(),
            port: *port,
            ca_file: cfg.mqtt.ca_file.clone(),
        },
    })
}

/// The broker's addresses: its name looked up now, before any shard runs, then again by
/// the resolver thread (never on a shard). A name that gives no address now does not
/// stop the start, as a broker that is down does not: devices are served and their
/// messages held while the name is looked up again.
fn broker_addrs(cfg: &Config, server: &ServerAddr) -> Result<Arc<BrokerAddrs>, GatewayError> {
    let addrs = BrokerAddrs::new(server);
    if let Err(e) = addrs.resolve_now() {
        tracing::warn!(
            server = %cfg.mqtt.server,
            error = %e,
            "mqtt.server: the broker's name does not resolve; starting without the broker \
             (devices are served, their messages held) and looking the name up again"
        );
    }
    addrs
        .spawn_resolver()
        .map_err(|e| start_err("MQTT broker name resolver", e))?;
    Ok(addrs)
}

fn mqtt_options(cfg: &Config, server: ServerAddr) -> MqttOptions {
    let m = &cfg.mqtt;
    MqttOptions {
        server,
        client_id: m.client_id.replace("${node}", &cfg.cluster.node_name()),
        username: m.username.clone(),
        password: m.password.expose().to_string(),
        keepalive: m.keepalive,
        connections: cfg.mqtt_connections(),
        max_inflight: m.max_inflight,
        buffer_messages: cfg.mqtt_buffer_messages(),
        // Commands carry whole payloads (a firmware image as base64) before
        // block-wise transfer splits them for the device.
        max_packet_size: 16 << 20,
        protocol: match m.protocol {
            MqttProtocol::V5 => mqtt::Protocol::V5,
            MqttProtocol::V311 => mqtt::Protocol::V311,
        },
    }
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (std::process::id() as u64) << 32
}

/// Whether the wildcard command filter also matches an uplink topic (a mountpoint whose
/// last level holds a placeholder and no '/': `lwm2m/+/#` matches `lwm2m/<ep>up/resp`).
fn wildcard_covers_uplinks(s: &CoreSettings, filter: &str) -> bool {
    use crate::lwm2m::template::{filter_matches, Vars};
    let v = "x";
    let mut mountpoint = String::new();
    s.mountpoint.render(
        &Vars {
            endpoint_name: v,
            clientid: v,
            username: v,
            peerhost: v,
        },
        &mut mountpoint,
    );
    [&s.register, &s.update, &s.response, &s.notify]
        .iter()
        .any(|t| filter_matches(filter, &format!("{mountpoint}{}", t.topic)))
}

/// 128 bits from the OS's random source: the key that makes registration locations
/// unguessable (see `lwm2m::location`).
fn os_random_key() -> std::io::Result<[u64; 2]> {
    use std::io::Read;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let (lo, hi) = b.split_at(8);
    let word = |s: &[u8]| u64::from_le_bytes(s.try_into().expect("8 bytes"));
    Ok([word(lo), word(hi)])
}

fn start_err(what: &'static str, source: std::io::Error) -> GatewayError {
    GatewayError::Start { what, source }
}
