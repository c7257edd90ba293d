//! HTTP authentication of registrations, EMQX's protocol: for every Register
//! the gateway asks an HTTP server (GET or POST, placeholders substituted in
//! the URL, headers and body) and the answer decides. A 200 with
//! `{"result":"allow"}` or a 204 allows; `"deny"`, `"ignore"` or any other
//! status denies; an unreachable server, a timeout or a malformed answer
//! denies as [`AuthOutcome::Error`] (counted apart).
//!
//! The requests run on a pool of `pool_size` worker threads, each with one
//! kept-alive connection (plain TCP or rustls), fed by a bounded queue: a
//! shard thread only ever calls [`AuthService::submit`], which never blocks,
//! and gets the outcome through its callback (typically a message into its
//! mailbox).

mod client;
mod template;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use rustls::ClientConfig;
use simd_json::prelude::*;

use crate::config::{Authentication, HttpMethod};
use crate::metrics::{Histogram, HistogramSnapshot, Writer, LATENCY_US_BUCKETS};
use client::{Conn, Failure, Response, Target};
use template::{render, rendered, url_encode, Enc};

/// Requests waiting for a worker; beyond this [`AuthService::submit`] refuses.
pub const QUEUE_CAPACITY: usize = 4096;

/// How often an idle worker checks whether the pool shrank.
const IDLE_CHECK: Duration = Duration::from_millis(200);

/// What the authentication server is told about a registering device: the protocol
/// core's request.
pub use crate::lwm2m::AuthRequest;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthOutcome {
    Allow,
    Deny,
    /// Server down, timeout, bad answer: also a denial, counted separately.
    Error(String),
}

impl AuthOutcome {
    pub fn allowed(&self) -> bool {
        matches!(self, AuthOutcome::Allow)
    }
}

/// Counters since start. `allow + deny + error + timeout` is the number of
/// requests the server was asked (or tried to be asked); `error` and
/// `timeout` are disjoint and both end as [`AuthOutcome::Error`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthStats {
    pub allow: u64,
    pub deny: u64,
    pub error: u64,
    pub timeout: u64,
    /// Refused by [`AuthService::submit`] because the queue was full.
    pub rejected: u64,
    /// Answered `Allow` without asking because authentication is disabled.
    pub bypassed: u64,
    /// Connections opened to the authentication server.
    pub connects: u64,
    /// Requests waiting in the queue now.
    pub queued: usize,
    /// Latency of the requests asked, in microseconds (connect included).
    pub latency_us: HistogramSnapshot,
}

type Done = Box<dyn FnOnce(AuthOutcome) + Send>;

struct Job {
    req: AuthRequest,
    done: Done,
}

/// A configuration ready for the workers.
struct Prepared {
    cfg: Authentication,
    generation: u64,
    plan: Result<Plan, String>,
}

struct Plan {
    target: Target,
    tls: Option<Arc<ClientConfig>>,
    /// Header name and value template, in order; hop-by-hop and framing
    /// headers removed.
    headers: Vec<(String, String)>,
    own_host: bool,
    json_body: bool,
    has_content_type: bool,
}

fn prepare(cfg: &Authentication, generation: u64) -> Prepared {
    let plan = (|| {
        let target = client::parse_url(&cfg.url)?;
        let tls = if target.tls {
            Some(client::tls_config(cfg.ssl.verify == "verify_peer")?)
        } else {
            None
        };
        let mut headers = Vec::new();
        let mut own_host = true;
        let mut content_type = None;
        for (k, v) in &cfg.headers {
            let lower = k.to_ascii_lowercase();
            let token = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(format!("authentication.headers: bad header name {k:?}"));
            }
            match lower.as_str() {
                "content-length" | "transfer-encoding" | "connection" | "keep-alive"
                | "upgrade" => continue,
                "host" => own_host = false,
                "content-type" => content_type = Some(v.to_ascii_lowercase()),
                _ => {}
            }
            headers.push((k.clone(), v.clone()));
        }
        Ok(Plan {
            target,
            tls,
            headers,
            own_host,
            json_body: content_type.as_deref().is_none_or(|c| c.contains("json")),
            has_content_type: content_type.is_some(),
        })
    })();
    Prepared {
        cfg: cfg.clone(),
        generation,
        plan,
    }
}

#[derive(Default)]
struct Counters {
    allow: AtomicU64,
    deny: AtomicU64,
    error: AtomicU64,
    timeout: AtomicU64,
    rejected: AtomicU64,
    bypassed: AtomicU64,
    connects: AtomicU64,
}

/// What the workers share with the service.
struct Shared {
    current: RwLock<Arc<Prepared>>,
    counters: Counters,
    latency: Histogram,
}

struct Inner {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    shared: Arc<Shared>,
    enabled: AtomicBool,
    generation: AtomicU64,
    /// One stop flag per running worker.
    workers: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for w in self.workers.get_mut().drain(..) {
            w.store(true, Ordering::Relaxed);
        }
    }
}

/// The authentication client pool. Cheap to clone; the workers stop when the
/// last clone is dropped (or on [`AuthService::shutdown`]).
#[derive(Clone)]
pub struct AuthService {
    inner: Arc<Inner>,
}

impl fmt::Debug for AuthService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthService")
            .field("config", &self.inner.shared.current.read().cfg)
            .finish()
    }
}

impl AuthService {
    /// Starts the worker threads (`pool_size` of them; one while disabled, to
    /// answer `Allow` to whatever is still submitted).
    pub fn start(cfg: &Authentication) -> AuthService {
        Self::with_queue_capacity(cfg, QUEUE_CAPACITY)
    }

    /// [`AuthService::start`] with another queue bound.
    pub fn with_queue_capacity(cfg: &Authentication, capacity: usize) -> AuthService {
        let (tx, rx) = crossbeam_channel::bounded(capacity.max(1));
        let shared = Arc::new(Shared {
            current: RwLock::new(Arc::new(prepare(cfg, 0))),
            counters: Counters::default(),
            latency: Histogram::new(LATENCY_US_BUCKETS),
        });
        let svc = AuthService {
            inner: Arc::new(Inner {
                tx,
                rx,
                shared,
                enabled: AtomicBool::new(cfg.enable),
                generation: AtomicU64::new(0),
                workers: Mutex::new(Vec::new()),
            }),
        };
        svc.resize(cfg);
        svc
    }

    fn resize(&self, cfg: &Authentication) {
        let want = if cfg.enable { cfg.pool_size.max(1) } else { 1 };
        let mut workers = self.inner.workers.lock();
        while workers.len() > want {
            if let Some(w) = workers.pop() {
                w.store(true, Ordering::Relaxed);
            }
        }
        while workers.len() < want {
            let stop = Arc::new(AtomicBool::new(false));
            let (shared, rx, flag) = (
                self.inner.shared.clone(),
                self.inner.rx.clone(),
                stop.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("auth-{}", workers.len()))
                .spawn(move || worker(&shared, &rx, &flag));
            match spawned {
                Ok(_) => workers.push(stop),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start an authentication worker");
                    break;
                }
            }
        }
    }

    /// Queues `req` without blocking; `done` is called on a worker thread
    /// with the outcome. `Err(req)` when the queue is full (the caller denies
    /// and counts; `done` is dropped uncalled).
    pub fn submit(
        &self,
        req: AuthRequest,
        done: Box<dyn FnOnce(AuthOutcome) + Send>,
    ) -> Result<(), AuthRequest> {
        match self.inner.tx.try_send(Job { req, done }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) | Err(TrySendError::Disconnected(job)) => {
                self.inner
                    .shared
                    .counters
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
                Err(job.req)
            }
        }
    }

    /// Whether registrations must be authenticated.
    pub fn enabled(&self) -> bool {
        self.inner.enabled.load(Ordering::Relaxed)
    }

    /// Replaces the configuration at run time. Requests already queued use
    /// the new one; kept-alive connections made for the old one are closed.
    /// A bad URL does not fail here: every request then ends in `Error`.
    pub fn reconfigure(&self, cfg: &Authentication) {
        let generation = self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let prepared = Arc::new(prepare(cfg, generation));
        if let Err(e) = &prepared.plan {
            if cfg.enable {
                tracing::warn!(error = %e, "authentication configuration unusable: registrations will be denied");
            }
        }
        *self.inner.shared.current.write() = prepared;
        self.inner.enabled.store(cfg.enable, Ordering::Relaxed);
        self.resize(cfg);
    }

    /// Checks a configuration the way [`AuthService::reconfigure`] would use
    /// it (URL, header names, TLS set-up), for the management API to refuse
    /// it up front.
    pub fn validate(cfg: &Authentication) -> Result<(), String> {
        if !cfg.enable {
            return Ok(());
        }
        prepare(cfg, 0).plan.map(|_| ())
    }

    pub fn config(&self) -> Authentication {
        self.inner.shared.current.read().cfg.clone()
    }

    pub fn stats(&self) -> AuthStats {
        let c = &self.inner.shared.counters;
        AuthStats {
            allow: c.allow.load(Ordering::Relaxed),
            deny: c.deny.load(Ordering::Relaxed),
            error: c.error.load(Ordering::Relaxed),
            timeout: c.timeout.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            bypassed: c.bypassed.load(Ordering::Relaxed),
            connects: c.connects.load(Ordering::Relaxed),
            queued: self.inner.tx.len(),
            latency_us: self.inner.shared.latency.snapshot(),
        }
    }

    /// Writes the `lwm2m_auth_*` metric families.
    pub fn write_metrics(&self, w: &mut Writer<'_>) {
        let s = self.stats();
        let help = "Authentication requests by outcome (error and timeout both deny).";
        for (outcome, v) in [
            ("allow", s.allow),
            ("deny", s.deny),
            ("error", s.error),
            ("timeout", s.timeout),
        ] {
            w.counter(
                "lwm2m_auth_requests_total",
                help,
                &[("outcome", outcome)],
                v,
            );
        }
        w.counter(
            "lwm2m_auth_rejected_total",
            "Registrations denied because the authentication queue was full.",
            &[],
            s.rejected,
        );
        w.counter(
            "lwm2m_auth_bypassed_total",
            "Requests allowed without asking because authentication was disabled.",
            &[],
            s.bypassed,
        );
        w.counter(
            "lwm2m_auth_connections_total",
            "Connections opened to the authentication server.",
            &[],
            s.connects,
        );
        w.gauge(
            "lwm2m_auth_queue_depth",
            "Authentication requests waiting for a worker.",
            &[],
            s.queued,
        );
        w.gauge(
            "lwm2m_auth_enabled",
            "Whether registrations are authenticated.",
            &[],
            self.enabled(),
        );
        s.latency_us.write(
            w,
            "lwm2m_auth_latency_seconds",
            "Authentication request latency.",
            &[],
            1e6,
        );
    }

    /// Stops the workers after the request each is handling (queued requests
    /// are dropped uncalled once every clone is gone).
    pub fn shutdown(&self) {
        for w in self.inner.workers.lock().drain(..) {
            w.store(true, Ordering::Relaxed);
        }
    }
}

fn worker(shared: &Shared, rx: &Receiver<Job>, stop: &AtomicBool) {
    let mut conn: Option<(u64, Conn)> = None;
    while !stop.load(Ordering::Relaxed) {
        let job = match rx.recv_timeout(IDLE_CHECK) {
            Ok(j) => j,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let prepared = shared.current.read().clone();
        let outcome = authenticate(shared, &prepared, &job.req, &mut conn);
        let done = job.done;
        if catch_unwind(AssertUnwindSafe(move || done(outcome))).is_err() {
            tracing::error!("authentication callback panicked");
        }
    }
    if let Some((_, c)) = conn {
        c.close();
    }
}

fn authenticate(
    shared: &Shared,
    p: &Prepared,
    req: &AuthRequest,
    conn: &mut Option<(u64, Conn)>,
) -> AuthOutcome {
    let c = &shared.counters;
    if !p.cfg.enable {
        c.bypassed.fetch_add(1, Ordering::Relaxed);
        return AuthOutcome::Allow;
    }
    let plan = match &p.plan {
        Ok(plan) => plan,
        Err(e) => {
            c.error.fetch_add(1, Ordering::Relaxed);
            return AuthOutcome::Error(e.clone());
        }
    };
    let start = Instant::now();
    let request = build_request(&p.cfg, plan, req);
    let result = exchange(shared, p, plan, &request, conn);
    shared.latency.observe_duration_us(start.elapsed());
    let outcome = match result {
        Ok(resp) => classify(&resp),
        Err(f) => {
            if f.is_timeout() { &c.timeout } else { &c.error }.fetch_add(1, Ordering::Relaxed);
            let msg = f.message();
            tracing::debug!(endpoint = %req.endpoint_name, error = %msg, "authentication request failed");
            return AuthOutcome::Error(msg);
        }
    };
    match &outcome {
        AuthOutcome::Allow => &c.allow,
        AuthOutcome::Deny => &c.deny,
        AuthOutcome::Error(_) => &c.error,
    }
    .fetch_add(1, Ordering::Relaxed);
    outcome
}

/// Sends on the kept-alive connection (opening one if needed); a reused
/// connection that turns out closed before answering is replaced once.
fn exchange(
    shared: &Shared,
    p: &Prepared,
    plan: &Plan,
    request: &[u8],
    slot: &mut Option<(u64, Conn)>,
) -> Result<Response, Failure> {
    let mut deadline = None;
    for attempt in 0..2 {
        let mut c = match slot.take() {
            Some((g, c)) if g == p.generation && c.looks_alive() => c,
            old => {
                if let Some((_, c)) = old {
                    c.close();
                }
                shared.counters.connects.fetch_add(1, Ordering::Relaxed);
                Conn::connect(&plan.target, plan.tls.as_ref(), p.cfg.connect_timeout)?
            }
        };
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + p.cfg.request_timeout);
        match c.exchange(request, deadline) {
            Ok(resp) => {
                if resp.keep_alive {
                    *slot = Some((p.generation, c));
                } else {
                    c.close();
                }
                return Ok(resp);
            }
            Err(Failure::Io { retry: true, msg }) if attempt == 0 => {
                tracing::debug!(error = %msg, "kept-alive authentication connection closed; reconnecting");
                c.close();
            }
            Err(f) => {
                c.close();
                return Err(f);
            }
        }
    }
    unreachable!("the second attempt always returns")
}

fn build_request(cfg: &Authentication, plan: &Plan, req: &AuthRequest) -> Vec<u8> {
    let mut target = String::with_capacity(plan.target.path.len() + 64);
    render(&mut target, &plan.target.path, req, Enc::Url);
    let mut body = Vec::new();
    match cfg.method {
        HttpMethod::Get => {
            let mut sep = if target.contains('?') { '&' } else { '?' };
            for (k, v) in &cfg.body {
                target.push(sep);
                sep = '&';
                url_encode(&mut target, k);
                target.push('=');
                url_encode(&mut target, &rendered(v, req, Enc::Raw));
            }
        }
        HttpMethod::Post if plan.json_body => {
            body.push(b'{');
            for (i, (k, v)) in cfg.body.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                crate::json::key(&mut body, k);
                crate::json::string(&mut body, &rendered(v, req, Enc::Raw));
            }
            body.push(b'}');
        }
        HttpMethod::Post => {
            let mut form = String::new();
            for (k, v) in &cfg.body {
                if !form.is_empty() {
                    form.push('&');
                }
                url_encode(&mut form, k);
                form.push('=');
                url_encode(&mut form, &rendered(v, req, Enc::Raw));
            }
            body = form.into_bytes();
        }
    }
    let method = match cfg.method {
        HttpMethod::Get => "GET",
        HttpMethod::Post => "POST",
    };
    let mut head = String::with_capacity(256 + target.len());
    head.push_str(method);
    head.push(' ');
    head.push_str(&target);
    head.push_str(" HTTP/1.1\r\n");
    if plan.own_host {
        head.push_str("Host: ");
        head.push_str(&plan.target.host_header);
        head.push_str("\r\n");
    }
    for (k, v) in &plan.headers {
        head.push_str(k);
        head.push_str(": ");
        render(&mut head, v, req, Enc::Header);
        head.push_str("\r\n");
    }
    if cfg.method == HttpMethod::Post {
        if !plan.has_content_type {
            head.push_str("Content-Type: application/json\r\n");
        }
        head.push_str("Content-Length: ");
        head.push_str(&body.len().to_string());
        head.push_str("\r\n");
    }
    head.push_str("Connection: keep-alive\r\n\r\n");
    let mut out = head.into_bytes();
    out.extend_from_slice(&body);
    out
}

/// EMQX's rules for the answer.
fn classify(resp: &Response) -> AuthOutcome {
    match resp.status {
        204 => AuthOutcome::Allow,
        200 => match result_field(resp) {
            Ok(r) if r == "allow" => AuthOutcome::Allow,
            Ok(_) => AuthOutcome::Deny,
            Err(e) => AuthOutcome::Error(format!("bad response: {e}")),
        },
        _ => AuthOutcome::Deny,
    }
}

/// The `result` of a 200 answer (JSON, or a form when the server says so).
fn result_field(resp: &Response) -> Result<String, String> {
    let form = resp
        .content_type
        .as_deref()
        .is_some_and(|c| c.contains("x-www-form-urlencoded"));
    if form {
        let body = String::from_utf8_lossy(&resp.body);
        return body
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "result")
            .map(|(_, v)| v.trim().to_ascii_lowercase())
            .ok_or_else(|| "form body without result".to_string());
    }
    let mut body = resp.body.clone();
    let v = simd_json::to_borrowed_value(&mut body).map_err(|_| "body is not JSON".to_string())?;
    v.get("result")
        .and_then(|r| r.as_str())
        .map(|r| r.to_ascii_lowercase())
        .ok_or_else(|| "JSON body without a \"result\" string".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn resp(status: u16, ct: Option<&str>, body: &str) -> Response {
        Response {
            status,
            content_type: ct.map(str::to_string),
            body: body.as_bytes().to_vec(),
            keep_alive: true,
        }
    }

    #[test]
    fn answers() {
        use AuthOutcome::*;
        assert_eq!(
            classify(&resp(
                200,
                Some("application/json"),
                r#"{"result":"allow"}"#
            )),
            Allow
        );
        assert_eq!(
            classify(&resp(
                200,
                None,
                r#"{"result":"allow","is_superuser":false}"#
            )),
            Allow
        );
        assert_eq!(classify(&resp(204, None, "")), Allow);
        assert_eq!(classify(&resp(200, None, r#"{"result":"deny"}"#)), Deny);
        assert_eq!(classify(&resp(200, None, r#"{"result":"ignore"}"#)), Deny);
        assert_eq!(classify(&resp(201, None, r#"{"result":"allow"}"#)), Deny);
        assert_eq!(classify(&resp(403, None, "")), Deny);
        assert_eq!(classify(&resp(500, None, "oops")), Deny);
        assert_eq!(
            classify(&resp(
                200,
                Some("application/x-www-form-urlencoded"),
                "a=1&result=allow"
            )),
            Allow
        );
        assert!(matches!(classify(&resp(200, None, "allow")), Error(_)));
        assert!(matches!(classify(&resp(200, None, r#"{"x":1}"#)), Error(_)));
        assert!(matches!(classify(&resp(200, None, "")), Error(_)));
    }

    fn req() -> AuthRequest {
        AuthRequest {
            endpoint_name: "ep1".into(),
            clientid: "c 1".into(),
            username: "u\"".into(),
            password: "pw".into(),
            peerhost: "10.1.2.3".into(),
        }
    }

    #[test]
    fn requests() {
        let mut cfg = Authentication {
            enable: true,
            url: "http://auth.local:8080/check?ep=${endpoint_name}".into(),
            headers: BTreeMap::from([
                ("content-type".into(), "application/json".into()),
                ("X-Peer".into(), "${peerhost}".into()),
                ("Content-Length".into(), "5".into()),
            ]),
            body: BTreeMap::from([
                ("clientid".into(), "${clientid}".into()),
                ("user".into(), "${username}".into()),
            ]),
            ..Authentication::default()
        };
        let p = prepare(&cfg, 0);
        let got = String::from_utf8(build_request(&cfg, p.plan.as_ref().unwrap(), &req())).unwrap();
        let body = r#"{"clientid":"c 1","user":"u\""}"#;
        assert_eq!(
            got,
            format!(
                "POST /check?ep=ep1 HTTP/1.1\r\nHost: auth.local:8080\r\nX-Peer: 10.1.2.3\r\ncontent-type: application/json\r\n\
                 Content-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
                body.len()
            )
        );
        cfg.method = HttpMethod::Get;
        let p = prepare(&cfg, 0);
        let got = String::from_utf8(build_request(&cfg, p.plan.as_ref().unwrap(), &req())).unwrap();
        assert!(
            got.starts_with("GET /check?ep=ep1&clientid=c%201&user=u%22 HTTP/1.1\r\n"),
            "{got}"
        );
        assert!(!got.contains("Content-Length"), "{got}");
        cfg.method = HttpMethod::Post;
        cfg.headers = BTreeMap::from([(
            "Content-Type".into(),
            "application/x-www-form-urlencoded".into(),
        )]);
        let p = prepare(&cfg, 0);
        let got = String::from_utf8(build_request(&cfg, p.plan.as_ref().unwrap(), &req())).unwrap();
        assert!(got.ends_with("\r\n\r\nclientid=c%201&user=u%22"), "{got}");
        cfg.headers = BTreeMap::from([("bad header".into(), "x".into())]);
        assert!(AuthService::validate(&cfg).is_err());
        cfg.headers.clear();
        cfg.url = "ftp://x".into();
        assert!(AuthService::validate(&cfg).is_err());
    }
}
