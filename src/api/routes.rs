//! Routing, credentials and the handlers of the management API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use simd_json::prelude::*;

use super::http::{percent_decode, Request, Response};
use super::route_table;
use super::stats::ApiStats;
use super::{Admin, ClientInfo, LookupAnswer};
use crate::json;

/// Default and largest `limit` of the clients list.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

pub(crate) struct Ctx {
    pub(super) admin: Arc<dyn Admin>,
    api_key: String,
    api_secret: String,
    pub(super) node: String,
    stats: Arc<ApiStats>,
    /// Generated `reqID`s of the commands the API sends.
    pub(super) req_seq: AtomicU64,
    /// Requests waiting for a device's answer (`?wait=`), at most [`super::MAX_WAITING`].
    pub(super) waiting: std::sync::atomic::AtomicUsize,
    /// Set when the API stops (a waiting request gives up).
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Event streams open now.
    streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl Ctx {
    pub(super) fn new(
        admin: Arc<dyn Admin>,
        api_key: String,
        api_secret: String,
        stats: Arc<ApiStats>,
        stop: Arc<std::sync::atomic::AtomicBool>,
    ) -> Ctx {
        let node = admin.node();
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ctx {
            admin,
            api_key,
            api_secret,
            node,
            stats,
            // Distinct across restarts, below 2^53 (exact as a JSON number).
            req_seq: AtomicU64::new((secs & 0xFFFF_FFFF) << 20),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            stop,
            streams: Arc::default(),
        }
    }

    pub(super) fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

pub(crate) fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!("lwm2m-gateway@{host}")
}

fn method_not_allowed(allow: String) -> Response {
    Response::error(405, "METHOD_NOT_ALLOWED", &format!("allowed: {allow}"))
        .with_header("Allow", allow)
}

pub(super) fn not_found(what: &str) -> Response {
    Response::error(404, "NOT_FOUND", what)
}

pub(super) fn bad_request(msg: &str) -> Response {
    Response::error(400, "BAD_REQUEST", msg)
}

/// Whether `req` asks for `/health` (answered without waiting for a worker).
pub(crate) fn is_health(req: &Request) -> bool {
    req.path.split('/').filter(|s| !s.is_empty()).eq(["health"])
}

pub(crate) fn handle(ctx: &Ctx, req: &Request) -> Response {
    let segs: Vec<String> = req
        .path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode(s, false))
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let found = route_table::find(&segs);
    // Credentials before anything is said of a path that is not open.
    if !found.as_ref().is_some_and(|(r, _)| r.open) {
        if let Err(r) = check_credentials(ctx, req) {
            return r;
        }
    }
    let Some((route, params)) = found else {
        return match segs.as_slice() {
            ["api", "v5", "gateways", name, ..] if *name != "lwm2m" => {
                not_found(&format!("gateway {name:?} not found (only lwm2m)"))
            }
            _ => not_found("no such endpoint"),
        };
    };
    let Some(op) = route.op(&req.method) else {
        return method_not_allowed(route.allow());
    };
    dispatch(ctx, req, route.pattern, op.method, &params)
}

/// The handler of a route of the table (`method` is GET for HEAD).
fn dispatch(ctx: &Ctx, req: &Request, pattern: &str, method: &str, p: &[&str]) -> Response {
    const C: &str = "/api/v5/gateways/lwm2m/clients/{clientid}";
    let id = p.first().copied().unwrap_or("");
    match (pattern, method) {
        ("/health", _) => {
            let (code, status) = if ctx.admin.healthy() {
                (200, "ok")
            } else {
                (503, "unavailable")
            };
            let body = match ctx.admin.store_state() {
                Some(store) => format!(r#"{{"status":"{status}","store":"{store}"}}"#),
                None => format!(r#"{{"status":"{status}"}}"#),
            };
            Response::json(code, body.into_bytes())
        }
        ("/metrics" | "/api/v5/prometheus/stats", _) => {
            let mut out = String::with_capacity(16 * 1024);
            ctx.admin.metrics(&mut out);
            ctx.stats.write(&mut out);
            let mut r = Response::json(200, out.into_bytes());
            r.content_type = crate::metrics::CONTENT_TYPE;
            r
        }
        ("/", _) => super::console::asset(req, "index.html")
            .unwrap_or_else(|| not_found("the console is not built in")),
        // A name that is not a console file is answered as any unknown path: 401
        // without credentials, else 404.
        ("/console/{file}", _) => match super::console::asset(req, id) {
            Some(r) => r,
            None => check_credentials(ctx, req)
                .err()
                .unwrap_or_else(|| not_found("no such endpoint")),
        },
        ("/api/v5/openapi.json", _) => Response::json(200, super::openapi::document()),
        ("/api/v5/gateways", _) => super::gateways::list(ctx),
        ("/api/v5/gateways/lwm2m", "GET") => {
            Response::json(200, ctx.admin.gateway_config().into_bytes())
        }
        ("/api/v5/gateways/lwm2m", "PUT") => put_config(ctx, req),
        ("/api/v5/gateways/lwm2m/enable/{enable}", _) => super::gateways::enable(ctx, id),
        ("/api/v5/gateways/lwm2m/authentication", "GET") => {
            Response::json(200, ctx.admin.authentication().into_bytes())
        }
        ("/api/v5/gateways/lwm2m/authentication", "PUT" | "POST") => {
            update(req, |b| ctx.admin.update_authentication(b))
        }
        ("/api/v5/gateways/lwm2m/authentication", "DELETE") => {
            match ctx.admin.delete_authentication() {
                Ok(()) => Response::no_content(),
                Err(e) => bad_request(&e),
            }
        }
        ("/api/v5/gateways/lwm2m/listeners", _) => super::gateways::listeners(ctx),
        ("/api/v5/gateways/lwm2m/listeners/{id}", "GET") => super::gateways::listener(ctx, id),
        ("/api/v5/gateways/lwm2m/listeners/{id}", "PUT") => {
            super::gateways::update_listener(ctx, req, id)
        }
        ("/api/v5/gateways/lwm2m/clients", _) => list_clients(ctx, req),
        (C, "GET") => match ctx.admin.client(id) {
            Some(c) => {
                let mut out = Vec::with_capacity(512);
                client_json(&mut out, &c, &ctx.node);
                Response::json(200, out)
            }
            None => not_found("Client not found"),
        },
        (C, "DELETE") => {
            if ctx.admin.kick(id) {
                Response::no_content()
            } else {
                not_found("Client not found")
            }
        }
        ("/api/v5/gateways/lwm2m/clients/{clientid}/subscriptions", "GET") => {
            super::subscriptions::list(ctx, id)
        }
        ("/api/v5/gateways/lwm2m/clients/{clientid}/subscriptions", "POST") => {
            super::subscriptions::add(ctx, req, id)
        }
        ("/api/v5/gateways/lwm2m/clients/{clientid}/subscriptions/{topic}", _) => {
            super::subscriptions::remove(ctx, id, p.get(1).copied().unwrap_or(""))
        }
        ("/api/v5/gateways/lwm2m/clients/{clientid}/lookup", _) => lookup(ctx, req, id),
        ("/api/v5/gateways/lwm2m/clients/{clientid}/command", _) => {
            super::console::command(&*ctx.admin, req, id)
        }
        ("/api/v5/gateways/lwm2m/objects", _) => super::console::objects(&*ctx.admin, req, None),
        ("/api/v5/gateways/lwm2m/objects/{id}", _) => {
            super::console::objects(&*ctx.admin, req, Some(id))
        }
        (op, "POST") if op.starts_with(C) => {
            let op = op[C.len()..].trim_start_matches('/');
            super::commands::command(ctx, req, id, op)
        }
        ("/api/v5/gateways/lwm2m/events", _) => super::sse::open(&*ctx.admin, &ctx.streams, req),
        ("/api/v5/gateways/lwm2m/bootstrap", _) => super::bootstrap::list(&*ctx.admin),
        ("/api/v5/gateways/lwm2m/bootstrap/{name}", _) => {
            super::bootstrap::one(&*ctx.admin, req, id)
        }
        _ => Response::error(
            501,
            "NOT_IMPLEMENTED",
            "this route has no handler (a defect: please report it)",
        ),
    }
}

/// `PUT /api/v5/gateways/lwm2m`, with `persist=true` also written to the configuration
/// file (checked to be writable back before anything is applied).
fn put_config(ctx: &Ctx, req: &Request) -> Response {
    let persist = match req.param("persist") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return bad_request(&format!("persist: expected true or false, got {other:?}"))
        }
    };
    if persist {
        if let Err(why) = ctx.admin.config_file() {
            return Response::error(409, "CANNOT_PERSIST", &why);
        }
    }
    let mut applied = None;
    let r = update(req, |b| {
        let out = ctx.admin.update_gateway_config(b)?;
        applied = Some(b.to_vec());
        Ok(out)
    });
    match (persist, applied) {
        (true, Some(body)) => match ctx.admin.persist_gateway_config(&body) {
            Ok(()) => r,
            Err(e) => Response::error(
                500,
                "PERSIST_FAILED",
                &format!("applied, but not written to the configuration file: {e}"),
            ),
        },
        _ => r,
    }
}

/// Basic auth against `api_key`/`api_secret`, compared in constant time.
fn check_credentials(ctx: &Ctx, req: &Request) -> Result<(), Response> {
    let unauthorized = |msg: &str| {
        Response::error(401, "BAD_API_KEY_OR_SECRET", msg).with_header(
            "WWW-Authenticate",
            "Basic realm=\"lwm2m-gateway\"".to_string(),
        )
    };
    if ctx.api_secret.is_empty() {
        return Err(unauthorized(
            "the management API is disabled: api.api_secret must be set (in the configuration, \
             with --api-secret or with the LWM2M_API_SECRET environment variable)",
        ));
    }
    let Some(h) = req.header("authorization") else {
        return Err(unauthorized(
            "credentials required (HTTP basic auth with api_key:api_secret)",
        ));
    };
    let decoded = h
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        });
    let ok = decoded.is_some_and(|d| match d.iter().position(|&b| b == b':') {
        Some(i) => {
            // Both compared even when the first differs.
            let k = ct_eq(&d[..i], ctx.api_key.as_bytes());
            let s = ct_eq(&d[i + 1..], ctx.api_secret.as_bytes());
            k & s
        }
        None => false,
    });
    if ok {
        Ok(())
    } else {
        Err(unauthorized("Check api_key/api_secret"))
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for (i, &x) in a.iter().enumerate() {
        diff |= u64::from(x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0));
    }
    diff == 0
}

/// A PUT of configuration: the body must be a JSON object. A body that is JSON but for a
/// missing line-break comma or a trailing comma (as in the documented curl examples) is
/// repaired first.
pub(super) fn update(
    req: &Request,
    apply: impl FnOnce(&[u8]) -> Result<String, String>,
) -> Response {
    let mut copy = req.body.clone();
    let mut body = std::borrow::Cow::Borrowed(&req.body[..]);
    if let Err(e) = simd_json::to_borrowed_value(&mut copy) {
        let repaired = super::relaxed_json::repair(&req.body)
            .filter(|r| simd_json::to_borrowed_value(&mut r.clone()).is_ok());
        match repaired {
            Some(r) => body = std::borrow::Cow::Owned(r),
            None => return bad_request(&format!("the request body is not valid JSON: {e}")),
        }
    }
    let mut copy = body.to_vec();
    if !simd_json::to_borrowed_value(&mut copy).is_ok_and(|v| v.is_object()) {
        return bad_request("the request body must be a JSON object");
    }
    match apply(&body) {
        Ok(s) if s.is_empty() => Response::no_content(),
        Ok(s) => Response::json(200, s.into_bytes()),
        Err(e) => bad_request(&e),
    }
}

/// Filters of the clients list.
#[derive(Default)]
struct Filter<'a> {
    clientid: Option<&'a str>,
    endpoint_name: Option<&'a str>,
    like_endpoint_name: Option<&'a str>,
    like_clientid: Option<&'a str>,
    username: Option<&'a str>,
    like_username: Option<&'a str>,
    ip_address: Option<&'a str>,
    gte_lifetime: Option<u32>,
    lte_lifetime: Option<u32>,
}

impl Filter<'_> {
    fn matches(&self, c: &ClientInfo) -> bool {
        let eq = |f: Option<&str>, v: &str| f.is_none_or(|f| f == v);
        let like = |f: Option<&str>, v: &str| f.is_none_or(|f| v.contains(f));
        eq(self.clientid, &c.clientid)
            && eq(self.endpoint_name, &c.endpoint_name)
            && like(self.like_endpoint_name, &c.endpoint_name)
            && like(self.like_clientid, &c.clientid)
            && eq(self.username, &c.username)
            && like(self.like_username, &c.username)
            && eq(self.ip_address, &c.peerhost)
            && self.gte_lifetime.is_none_or(|l| c.lifetime >= l)
            && self.lte_lifetime.is_none_or(|l| c.lifetime <= l)
    }
}

fn number<T: std::str::FromStr>(req: &Request, name: &str) -> Result<Option<T>, Response> {
    match req.param(name) {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            bad_request(&format!(
                "{name}: expected a non-negative integer, got {v:?}"
            ))
        }),
    }
}

fn list_clients(ctx: &Ctx, req: &Request) -> Response {
    let parsed = (|| {
        let page: usize = number(req, "page")?.unwrap_or(1);
        let limit: usize = number(req, "limit")?.unwrap_or(DEFAULT_LIMIT);
        if page == 0 {
            return Err(bad_request("page: must be at least 1"));
        }
        if limit == 0 || limit > MAX_LIMIT {
            return Err(bad_request(&format!(
                "limit: must be between 1 and {MAX_LIMIT}"
            )));
        }
        let filter = Filter {
            clientid: req.param("clientid"),
            endpoint_name: req.param("endpoint_name"),
            like_endpoint_name: req.param("like_endpoint_name"),
            like_clientid: req.param("like_clientid"),
            username: req.param("username"),
            like_username: req.param("like_username"),
            ip_address: req.param("ip_address"),
            gte_lifetime: number(req, "gte_lifetime")?,
            lte_lifetime: number(req, "lte_lifetime")?,
        };
        Ok((page, limit, filter))
    })();
    let (page, limit, filter) = match parsed {
        Ok(p) => p,
        Err(r) => return r,
    };
    let mut all: Vec<ClientInfo> = ctx
        .admin
        .clients()
        .into_iter()
        .filter(|c| filter.matches(c))
        .collect();
    all.sort_by(|a, b| a.clientid.cmp(&b.clientid));
    let count = all.len();
    let start = (page - 1).saturating_mul(limit);
    let mut out = Vec::with_capacity(64 + limit.min(count) * 400);
    out.extend_from_slice(b"{\"data\":[");
    for (i, c) in all.iter().skip(start).take(limit).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        client_json(&mut out, c, &ctx.node);
    }
    out.extend_from_slice(b"],\"meta\":{");
    json::key(&mut out, "page");
    json::uint(&mut out, page as u64);
    out.push(b',');
    json::key(&mut out, "limit");
    json::uint(&mut out, limit as u64);
    out.push(b',');
    json::key(&mut out, "count");
    json::uint(&mut out, count as u64);
    out.push(b',');
    json::key(&mut out, "hasnext");
    out.extend_from_slice(if start.saturating_add(limit) < count {
        b"true"
    } else {
        b"false"
    });
    out.extend_from_slice(b"}}");
    Response::json(200, out)
}

/// One client in EMQX's field names (plus the LwM2M ones).
fn client_json(out: &mut Vec<u8>, c: &ClientInfo, node: &str) {
    let s = |out: &mut Vec<u8>, k: &str, v: &str| {
        json::key(out, k);
        json::string(out, v);
        out.push(b',');
    };
    let n = |out: &mut Vec<u8>, k: &str, v: u64| {
        json::key(out, k);
        json::uint(out, v);
        out.push(b',');
    };
    let b = |out: &mut Vec<u8>, k: &str, v: bool| {
        json::key(out, k);
        out.extend_from_slice(if v { b"true" } else { b"false" });
        out.push(b',');
    };
    out.push(b'{');
    s(out, "node", c.node.as_deref().unwrap_or(node));
    s(out, "clientid", &c.clientid);
    s(out, "username", &c.username);
    s(out, "endpoint_name", &c.endpoint_name);
    s(out, "proto_name", "LwM2M");
    s(out, "proto_ver", &c.lwm2m_version);
    s(out, "ip_address", &c.peerhost);
    n(out, "port", u64::from(c.port));
    b(out, "is_bridge", false);
    b(out, "connected", true);
    s(out, "connected_at", &rfc3339_ms(c.registered_at_ms));
    s(out, "created_at", &rfc3339_ms(c.registered_at_ms));
    s(out, "last_seen_at", &rfc3339_ms(c.last_seen_ms));
    n(out, "lifetime", u64::from(c.lifetime));
    n(out, "keepalive", u64::from(c.lifetime));
    s(out, "binding", &c.binding);
    b(out, "queue_mode", c.queue_mode);
    b(out, "dtls", c.secure);
    n(out, "shard", u64::from(c.shard));
    if let Some(st) = &c.stats {
        n(out, "recv_msg", st.recv_msg);
        n(out, "send_msg", st.send_msg);
        n(out, "notifications", st.notifications);
        n(out, "commands", st.commands);
    }
    json::key(out, "object_list");
    out.push(b'[');
    for (i, o) in c.object_list.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::string(out, o);
    }
    out.extend_from_slice(b"]}");
}

/// `2024-05-06T07:08:09.010+00:00` (EMQX's form) from Unix milliseconds.
pub(crate) fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let sod = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+00:00",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        ms % 1000
    )
}

/// EMQX's lookup: the last result of a `read` or `discover` (`action`) of `path` that the
/// device answered, `6.01 reply_not_received` when there is none. Sends nothing to the device.
fn lookup(ctx: &Ctx, req: &Request, id: &str) -> Response {
    let Some(path) = req.param("path").filter(|p| !p.trim().is_empty()) else {
        return bad_request("path: required, e.g. path=/3/0/1");
    };
    let action = req.param("action").unwrap_or("discover");
    if !matches!(action, "discover" | "read") {
        return bad_request(&format!(
            "action: expected discover or read, got {action:?}"
        ));
    }
    let norm = format!(
        "/{}",
        path.split('?').next().unwrap_or("").trim_start_matches('/')
    );
    let (code, content) = match ctx.admin.lookup(id, &norm, action) {
        LookupAnswer::NoClient => return not_found("Client not found"),
        LookupAnswer::NotReceived => (None, None),
        LookupAnswer::Found { code, content } => (Some(code), content),
    };
    let mut out = Vec::with_capacity(128 + content.as_ref().map_or(0, Vec::len));
    out.push(b'{');
    json::key(&mut out, "clientid");
    json::string(&mut out, id);
    out.push(b',');
    json::key(&mut out, "path");
    json::string(&mut out, path);
    out.push(b',');
    json::key(&mut out, "action");
    json::string(&mut out, action);
    out.push(b',');
    json::key(&mut out, "code");
    match code {
        Some(c) => {
            let mut dotted = Vec::new();
            crate::coap::codes::write_dotted(c, &mut dotted);
            json::string(&mut out, &String::from_utf8_lossy(&dotted));
            out.push(b',');
            json::key(&mut out, "codeMsg");
            json::string(&mut out, crate::coap::codes::code_name(c));
        }
        None => {
            json::string(&mut out, "6.01");
            out.push(b',');
            json::key(&mut out, "codeMsg");
            json::string(&mut out, "reply_not_received");
        }
    }
    if let Some(c) = content {
        out.push(b',');
        json::key(&mut out, "content");
        out.extend_from_slice(&c);
    }
    out.push(b'}');
    Response::json(200, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(
            rfc3339_ms(1_709_251_199_999),
            "2024-02-29T23:59:59.999+00:00"
        );
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000+00:00");
    }

    #[test]
    fn constant_time_eq() {
        assert!(ct_eq(b"secret", b"secret"));
        assert!(!ct_eq(b"secret", b"secreT"));
        assert!(!ct_eq(b"secret", b"secret1"));
        assert!(!ct_eq(b"", b"x"));
        assert!(ct_eq(b"", b""));
    }
}
