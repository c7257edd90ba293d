//! The management HTTP API on `api.bind`, with EMQX's paths where EMQX has
//! the endpoint (`/api/v5/gateways/lwm2m/...`), plus `/metrics`
//! (Prometheus) and `/health`.
//!
//! Management endpoints need HTTP basic auth with `api.api_key` and
//! `api.api_secret`; `/metrics` and `/health` need nothing. The server is a
//! few std threads (an acceptor and [`WORKERS`] connection workers behind a
//! bounded queue); requests are bounded in size and time (a request must
//! arrive within 10 s of its first byte; a connection that has not started a
//! request gives its worker up as soon as another connection waits), and the
//! gateway is reached through the [`Admin`] trait.
//!
//! | method | path | |
//! |---|---|---|
//! | GET, PUT | `/api/v5/gateways/lwm2m` | configuration |
//! | GET, PUT (POST) | `/api/v5/gateways/lwm2m/authentication` | HTTP authentication |
//! | GET | `/api/v5/gateways/lwm2m/clients` | paged list, filters |
//! | GET, DELETE | `/api/v5/gateways/lwm2m/clients/{clientid}` | inspect, kick |
//! | POST | `.../clients/{clientid}/read?path=` | read command |
//! | POST | `.../clients/{clientid}/write?path=&type=&value=` | write command |
//! | POST | `.../clients/{clientid}/observe?path=&enable=` | observe / cancel-observe |
//! | GET | `.../clients/{clientid}/lookup?path=&action=discover\|read` | discover / read |
//! | GET | `/metrics` (also `/api/v5/prometheus/stats`), `/health` | no credentials |

mod http;
mod relaxed_json;
mod routes;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, TrySendError};

/// Connection worker threads.
pub const WORKERS: usize = 4;
/// Accepted connections waiting for a worker; beyond it new ones get 503.
pub const PENDING: usize = 64;
/// Requests served on one kept-alive connection before it is closed.
const MAX_REQUESTS_PER_CONNECTION: usize = 1000;

/// A registered device as the API shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub clientid: String,
    pub endpoint_name: String,
    pub username: String,
    pub peerhost: String,
    pub port: u16,
    pub lifetime: u32,
    pub lwm2m_version: String,
    pub binding: String,
    pub object_list: Vec<String>,
    /// Unix time in milliseconds.
    pub registered_at_ms: u64,
    pub last_seen_ms: u64,
    pub queue_mode: bool,
    pub shard: u16,
    /// Present with `enable_stats`.
    pub stats: Option<ClientStats>,
}

/// Per-endpoint counters (with `enable_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub recv_msg: u64,
    pub send_msg: u64,
    pub notifications: u64,
    pub commands: u64,
}

/// The last result of a read or discover of a path (the clients API's `lookup`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupAnswer {
    /// No such registration.
    NoClient,
    /// The device has not answered such a command yet.
    NotReceived,
    /// The CoAP response code and the `content` JSON (for a discover: EMQX's resource objects).
    Found { code: u8, content: Option<Vec<u8>> },
}

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
    /// The `node` field of the clients API (EMQX shows the Erlang node).
    fn node(&self) -> String {
        routes::default_node()
    }
}

/// The running API server; stopped by [`ApiServer::stop`] or on drop.
pub struct ApiServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
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
        let listener = TcpListener::bind(bind)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(routes::Ctx::new(admin, api_key, api_secret));
        let (tx, rx) = crossbeam_channel::bounded::<TcpStream>(PENDING);
        let mut workers = Vec::with_capacity(WORKERS);
        for i in 0..WORKERS {
            let (rx, ctx, stop) = (rx.clone(), ctx.clone(), stop.clone());
            workers.push(
                std::thread::Builder::new()
                    .name(format!("api-{i}"))
                    .spawn(move || worker(&rx, &ctx, &stop))?,
            );
        }
        let stop2 = stop.clone();
        let acceptor = std::thread::Builder::new()
            .name("api-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    let conn = match conn {
                        Ok(c) => c,
                        Err(e) => {
                            tracing::debug!(error = %e, "API accept failed");
                            // e.g. out of file descriptors: do not spin.
                            std::thread::sleep(Duration::from_millis(10));
                            continue;
                        }
                    };
                    if let Err(TrySendError::Full(mut c)) = tx.try_send(conn) {
                        let resp = http::Response::error(
                            503,
                            "SERVICE_UNAVAILABLE",
                            "too many connections",
                        );
                        let _ = c.set_write_timeout(Some(Duration::from_millis(200)));
                        let _ = io::Write::write_all(&mut c, &http::encode(&resp, false, false));
                    }
                }
            })?;
        tracing::info!(%addr, "management API listening");
        Ok(ApiServer {
            addr,
            stop,
            acceptor: Some(acceptor),
            workers,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets the workers finish the request at hand, joins.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(acceptor) = self.acceptor.take() else {
            return;
        };
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let _ = TcpStream::connect_timeout(
            &SocketAddr::new(ip, self.addr.port()),
            Duration::from_secs(1),
        );
        let _ = acceptor.join();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn worker(rx: &Receiver<TcpStream>, ctx: &routes::Ctx, stop: &AtomicBool) {
    while let Ok(stream) = rx.recv() {
        if stop.load(Ordering::Relaxed) {
            continue;
        }
        serve(stream, ctx, stop, &|| !rx.is_empty());
    }
}

fn serve(stream: TcpStream, ctx: &routes::Ctx, stop: &AtomicBool, waiting: &dyn Fn() -> bool) {
    let mut conn = http::Conn::new(stream);
    for _ in 0..MAX_REQUESTS_PER_CONNECTION {
        let req = match conn.read_request(stop, waiting) {
            Ok(r) => r,
            Err(http::ReadError::Closed) => return,
            Err(http::ReadError::Reject(status, code, msg)) => {
                let _ = conn.write(&http::encode(
                    &http::Response::error(status, code, &msg),
                    false,
                    false,
                ));
                return;
            }
        };
        let resp =
            catch_unwind(AssertUnwindSafe(|| routes::handle(ctx, &req))).unwrap_or_else(|_| {
                tracing::error!(method = %req.method, path = %req.path, "API handler panicked");
                http::Response::error(500, "INTERNAL_ERROR", "internal error")
            });
        let keep = req.keep_alive && !stop.load(Ordering::Relaxed);
        if conn
            .write(&http::encode(&resp, keep, req.method == "HEAD"))
            .is_err()
            || !keep
        {
            return;
        }
    }
}
