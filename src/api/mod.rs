//! The management HTTP API on `api.bind`, with EMQX's paths where EMQX has
//! the endpoint (`/api/v5/gateways/lwm2m/...`), plus `/metrics`
//! (Prometheus) and `/health`.
//!
//! Management endpoints need HTTP basic auth with `api.api_key` and
//! `api.api_secret`; `/metrics` and `/health` need nothing. One event-loop
//! thread reads and writes every connection without blocking and [`WORKERS`]
//! threads answer whole requests (`/health` is answered by the event loop
//! itself), reaching the gateway through the [`Admin`] trait. Limits, so that
//! whoever reaches the port cannot shut it: requests are bounded in size; a
//! connection idle for 5 s is closed, a request not complete 10 s after its
//! first byte is answered 408 and closed, a response unread for 10 s is
//! abandoned; at most [`MAX_CONNECTIONS`] are open, and a new one then
//! replaces the one that has waited longest. Each is counted in `/metrics`
//! (`lwm2m_api_connections_closed_total`).
//!
//! Every route is in [`route_table::ROUTES`], which the router consults first (404, 405)
//! and the OpenAPI document (`GET /api/v5/openapi.json`, [`openapi`]) is generated from;
//! `docs/api.md` documents them. In short:
//!
//! | method | path | |
//! |---|---|---|
//! | GET | `/api/v5/gateways` | EMQX's gateway list (`gateways.rs`) |
//! | GET, PUT | `/api/v5/gateways/lwm2m` | configuration (`?persist=true`: to the file) |
//! | PUT | `.../lwm2m/enable/{true\|false}` | stop / resume serving devices |
//! | GET, PUT, POST, DELETE | `.../lwm2m/authentication` | HTTP authentication |
//! | GET; GET, PUT | `.../lwm2m/listeners`; `.../listeners/{id}` | listeners |
//! | GET | `.../lwm2m/clients` | paged list, filters |
//! | GET, DELETE | `.../lwm2m/clients/{clientid}` | inspect, kick |
//! | GET, POST; DELETE | `.../clients/{clientid}/subscriptions[/{topic}]` | the command subscription (`subscriptions.rs`) |
//! | POST | `.../clients/{clientid}/{op}` | every LwM2M operation, `?wait=` for the answer (`commands.rs`, `wait.rs`) |
//! | GET | `.../clients/{clientid}/lookup?path=&action=discover\|read` | the last answer |
//! | GET, PUT, DELETE | `.../lwm2m/bootstrap[/{name}]` | Bootstrap-Server configurations |
//! | GET | `.../lwm2m/events?clientid=` | live events (Server-Sent Events, `sse.rs`) |
//! | POST | `.../clients/{clientid}/command` | any command JSON (the console's way) |
//! | GET | `.../lwm2m/objects`, `.../objects/{id}` | object definitions |
//! | GET | `/metrics` (also `/api/v5/prometheus/stats`), `/health`, `/api/v5/openapi.json` | no credentials |
//! | GET | `/`, `/console/{file}` | the web console (`console.rs`), no credentials |

mod bootstrap;
mod commands;
mod conn;
mod console;
mod event_loop;
mod gateways;
mod http;
pub mod openapi;
mod relaxed_json;
pub mod route_table;
mod routes;
mod sse;
mod stats;
mod subscriptions;
mod wait;
mod workers;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use mio::{Interest, Poll, Waker};

pub use conn::{IDLE_TIMEOUT, REQUEST_TIMEOUT, WRITE_TIMEOUT};
pub use event_loop::MAX_CONNECTIONS;

/// Worker threads answering requests.
pub const WORKERS: usize = 4;
/// Whole requests waiting for a worker; beyond it requests get 503.
pub const PENDING: usize = 64;
/// Requests that may wait for a device's answer (`?wait=`) at once, each holding a
/// worker; one worker stays free for everything else.
pub const MAX_WAITING: usize = WORKERS - 1;
pub(crate) use routes::default_node;
pub use wait::MAX_WAIT;

/// A listener as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// `"udp"` or `"dtls"`.
    pub kind: &'static str,
    pub name: String,
    /// The configured address (`bound` when it differs, e.g. port 0).
    pub bind: String,
    /// Serving devices now (bound, and the gateway enabled).
    pub running: bool,
    /// Registrations that came through it.
    pub current_connections: u64,
    /// `u64::MAX`: infinity.
    pub max_connections: u64,
    pub max_conn_rate: u64,
}

impl ListenerInfo {
    /// EMQX's listener id, `lwm2m:udp:default`.
    pub fn id(&self) -> String {
        format!("lwm2m:{}:{}", self.kind, self.name)
    }
}

/// The MQTT subscription that brings a device its commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandSubscription {
    /// The device's command topic filter (`lwm2m/dev1/dn/#`).
    pub topic: String,
    /// What the gateway subscribed on the broker: `topic` itself with per-endpoint
    /// subscriptions, else the one wildcard filter covering every device.
    pub filter: String,
    pub qos: u8,
    pub per_endpoint: bool,
}

/// What the API shows of registrations: the protocol core's answers.
pub use crate::lwm2m::info::{ClientInfo, ClientStats, LookupAnswer};

/// What the API needs from the running gateway. Methods are called on the
/// API's worker threads and should not block for long.
pub trait Admin: Send + Sync + 'static {
    fn clients(&self) -> Vec<ClientInfo>;
    fn client(&self, clientid: &str) -> Option<ClientInfo>;
    /// Removes the registration (and its subscription); false if unknown.
    fn kick(&self, clientid: &str) -> bool;
    /// Send a command JSON (as an MQTT application would publish it) to the
    /// endpoint; the response is published on MQTT as usual.
    fn command(&self, clientid: &str, command_json: Vec<u8>) -> Result<(), String>;
    /// The last answer to a `read` or `discover` (`action`) of `path`; commands nothing.
    fn lookup(&self, clientid: &str, path: &str, action: &str) -> LookupAnswer;
    /// JSON of the current configuration (EMQX shape).
    fn gateway_config(&self) -> String;
    /// Applies what can change at run time; `Err` says which key cannot.
    /// `json` is a JSON object (checked by the API).
    fn update_gateway_config(&self, json: &[u8]) -> Result<String, String>;
    /// JSON of the authentication configuration.
    fn authentication(&self) -> String;
    /// `json` is a JSON object (checked by the API).
    fn update_authentication(&self, json: &[u8]) -> Result<String, String>;
    /// Appends the Prometheus text exposition.
    fn metrics(&self, out: &mut String);
    fn healthy(&self) -> bool;
    /// The store's state for `/health` (`ok`, `failing`); None without a store.
    fn store_state(&self) -> Option<&'static str> {
        None
    }
    /// The `node` field of the clients API (EMQX shows the Erlang node).
    fn node(&self) -> String {
        default_node()
    }
    /// The Bootstrap-Server's configurations and outcomes (None: not enabled).
    fn bootstrap(&self) -> Option<Arc<crate::bootstrap::BootstrapStore>> {
        None
    }
    /// Whether the gateway serves devices (EMQX's gateway `enable`).
    fn enabled(&self) -> bool {
        true
    }
    /// `false`: stop serving devices (every registration ends as kicked, datagrams are
    /// dropped until enabled again); `true`: serve again.
    fn set_enabled(&self, _on: bool) -> Result<(), String> {
        Err("this gateway cannot be disabled at run time".into())
    }
    /// When the gateway started (Unix ms).
    fn started_at_ms(&self) -> Option<u64> {
        None
    }
    /// The configured listeners.
    fn listeners(&self) -> Vec<ListenerInfo> {
        Vec::new()
    }
    /// The subscription bringing the client its commands (None: no such client).
    fn command_subscription(&self, _clientid: &str) -> Option<CommandSubscription> {
        None
    }
    /// Removes the authenticator: devices register without authentication.
    fn delete_authentication(&self) -> Result<(), String> {
        self.update_authentication(br#"{"enable":false}"#)
            .map(|_| ())
    }
    /// The configuration file a `PUT ?persist=true` writes, or why there is none.
    fn config_file(&self) -> Result<std::path::PathBuf, String> {
        Err("the gateway cannot write its configuration back".into())
    }
    /// Writes the keys of `json` (a configuration PUT already applied) to the
    /// configuration file, atomically.
    fn persist_gateway_config(&self, _json: &[u8]) -> Result<(), String> {
        Err("the gateway cannot write its configuration back".into())
    }
    /// The object definitions in use (the console names resources with them).
    fn objects(&self) -> Option<Arc<crate::objects::ObjectRegistry>> {
        None
    }
    /// What the gateway publishes, as it is published (None: no feed).
    fn events(&self) -> Option<Arc<crate::events::EventFeed>> {
        None
    }
}

/// The running API server; stopped by [`ApiServer::stop`] or on drop.
pub struct ApiServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    threads: Vec<JoinHandle<()>>,
}

impl ApiServer {
    /// Binds `bind` and starts serving. An empty `api_secret` leaves the
    /// management endpoints answering 401 (with a message saying so).
    pub fn start(
        bind: SocketAddr,
        api_key: String,
        api_secret: String,
        admin: Arc<dyn Admin>,
    ) -> io::Result<ApiServer> {
        let listener = std::net::TcpListener::bind(bind)?;
        Self::start_on(listener, api_key, api_secret, admin)
    }

    /// As [`ApiServer::start`], on a listener bound beforehand.
    pub fn start_on(
        listener: std::net::TcpListener,
        api_key: String,
        api_secret: String,
        admin: Arc<dyn Admin>,
    ) -> io::Result<ApiServer> {
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, event_loop::LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), event_loop::WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(stats::ApiStats::default());
        let ctx = Arc::new(routes::Ctx::new(
            admin,
            api_key,
            api_secret,
            stats.clone(),
            stop.clone(),
        ));
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(PENDING);
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let mut threads = Vec::with_capacity(WORKERS + 1);
        for i in 0..WORKERS {
            let (jobs, done, waker) = (jobs_rx.clone(), done_tx.clone(), waker.clone());
            let (ctx, stop) = (ctx.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("api-{i}"))
                    .spawn(move || workers::run(&jobs, &done, &waker, &ctx, &stop))?,
            );
        }
        let el =
            event_loop::EventLoop::new(poll, listener, jobs_tx, done_rx, ctx, stats, stop.clone());
        threads.push(
            std::thread::Builder::new()
                .name("api-loop".into())
                .spawn(move || el.run())?,
        );
        tracing::info!(%addr, "management API listening");
        Ok(ApiServer {
            addr,
            stop,
            waker,
            threads,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection; workers finish the
    /// request at hand. Returns once the port is released.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
        // The event loop is last: joining it first drops the job queue, which
        // ends the workers.
        if let Some(el) = self.threads.pop() {
            let _ = el.join();
        }
        for w in self.threads.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
