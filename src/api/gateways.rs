//! EMQX's gateway-level endpoints: the list of gateways (`GET /api/v5/gateways`), enabling
//! and disabling the gateway (`PUT .../lwm2m/enable/{true|false}`), and the listeners
//! (`GET .../listeners`, `GET/PUT .../listeners/{id}` with EMQX's ids, `lwm2m:udp:default`).

use simd_json::prelude::*;

use super::http::{Request, Response};
use super::routes::{bad_request, not_found, rfc3339_ms, update, Ctx};
use super::ListenerInfo;
use crate::json;

/// `GET /api/v5/gateways`: EMQX's list, with the one gateway this is.
pub(super) fn list(ctx: &Ctx) -> Response {
    let listeners = ctx.admin.listeners();
    let enabled = ctx.admin.enabled();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"[{\"name\":\"lwm2m\",\"status\":");
    json::string(&mut out, if enabled { "running" } else { "stopped" });
    out.extend_from_slice(b",\"enable\":");
    out.extend_from_slice(if enabled { b"true" } else { b"false" });
    if let Some(at) = ctx.admin.started_at_ms() {
        out.extend_from_slice(b",\"created_at\":");
        json::string(&mut out, &rfc3339_ms(at));
        out.extend_from_slice(b",\"started_at\":");
        json::string(&mut out, &rfc3339_ms(at));
    }
    let current: u64 = listeners.iter().map(|l| l.current_connections).sum();
    let max = listeners
        .iter()
        .filter(|l| l.running)
        .fold(0u64, |a, l| a.saturating_add(l.max_connections));
    out.extend_from_slice(b",\"current_connections\":");
    json::uint(&mut out, current);
    out.extend_from_slice(b",\"max_connections\":");
    json::uint(&mut out, max);
    out.extend_from_slice(b",\"listeners\":[");
    for (i, l) in listeners.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        json::key(&mut out, "id");
        json::string(&mut out, &l.id());
        out.push(b',');
        json::key(&mut out, "type");
        json::string(&mut out, l.kind);
        out.push(b',');
        json::key(&mut out, "name");
        json::string(&mut out, &l.name);
        out.push(b',');
        json::key(&mut out, "running");
        out.extend_from_slice(if l.running { b"true" } else { b"false" });
        out.push(b'}');
    }
    out.extend_from_slice(b"]}]");
    Response::json(200, out)
}

/// `PUT .../enable/{enable}`.
pub(super) fn enable(ctx: &Ctx, value: &str) -> Response {
    let on = match value {
        "true" => true,
        "false" => false,
        other => return bad_request(&format!("enable: expected true or false, got {other:?}")),
    };
    match ctx.admin.set_enabled(on) {
        Ok(()) => Response::no_content(),
        Err(e) => Response::error(500, "INTERNAL_ERROR", &e),
    }
}

fn listener_json(out: &mut Vec<u8>, l: &ListenerInfo) {
    out.push(b'{');
    json::key(out, "id");
    json::string(out, &l.id());
    out.push(b',');
    json::key(out, "type");
    json::string(out, l.kind);
    out.push(b',');
    json::key(out, "name");
    json::string(out, &l.name);
    out.push(b',');
    json::key(out, "enable");
    out.extend_from_slice(b"true,");
    json::key(out, "bind");
    json::string(out, &l.bind);
    out.push(b',');
    json::key(out, "running");
    out.extend_from_slice(if l.running { b"true" } else { b"false" });
    out.push(b',');
    let limit = |out: &mut Vec<u8>, k: &str, v: u64| {
        json::key(out, k);
        if v == u64::MAX {
            json::string(out, "infinity");
        } else {
            json::uint(out, v);
        }
    };
    limit(out, "max_connections", l.max_connections);
    out.push(b',');
    limit(out, "max_conn_rate", l.max_conn_rate);
    out.push(b',');
    json::key(out, "current_connections");
    json::uint(out, l.current_connections);
    out.extend_from_slice(b",\"status\":{\"running\":");
    out.extend_from_slice(if l.running { b"true" } else { b"false" });
    out.extend_from_slice(b",\"current_connections\":");
    json::uint(out, l.current_connections);
    out.extend_from_slice(b"}}");
}

/// `GET .../listeners`.
pub(super) fn listeners(ctx: &Ctx) -> Response {
    let mut out = b"[".to_vec();
    for (i, l) in ctx.admin.listeners().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        listener_json(&mut out, l);
    }
    out.push(b']');
    Response::json(200, out)
}

fn find(ctx: &Ctx, id: &str) -> Result<ListenerInfo, Response> {
    ctx.admin
        .listeners()
        .into_iter()
        .find(|l| l.id() == id)
        .ok_or_else(|| {
            not_found(&format!(
                "no listener {id:?} (ids are lwm2m:TYPE:NAME, e.g. lwm2m:udp:default)"
            ))
        })
}

/// `GET .../listeners/{id}`.
pub(super) fn listener(ctx: &Ctx, id: &str) -> Response {
    match find(ctx, id) {
        Ok(l) => {
            let mut out = Vec::with_capacity(256);
            listener_json(&mut out, &l);
            Response::json(200, out)
        }
        Err(r) => r,
    }
}

/// `PUT .../listeners/{id}`: the body is the listener (as GET shows it, or the keys to
/// change); applied as the configuration's `listeners` key is, so `max_connections` and
/// `max_conn_rate` change and `bind` must stay.
pub(super) fn update_listener(ctx: &Ctx, req: &Request, id: &str) -> Response {
    let l = match find(ctx, id) {
        Ok(l) => l,
        Err(r) => return r,
    };
    update(req, |body| {
        let mut copy = body.to_vec();
        let v = simd_json::to_owned_value(&mut copy).map_err(|e| e.to_string())?;
        let obj = v.as_object().ok_or("the listener must be a JSON object")?;
        let mut keep = simd_json::owned::Object::new();
        for (k, x) in obj.iter() {
            match k.as_str() {
                // What GET shows and PUT cannot set.
                "id" | "running" | "current_connections" | "status" => {}
                "type" if x.as_str() != Some(l.kind) => {
                    return Err(format!("type: the listener {id} is {}", l.kind))
                }
                "name" if x.as_str() != Some(l.name.as_str()) => {
                    return Err(format!("name: the listener {id} is named {}", l.name))
                }
                "enable" if x.as_bool() == Some(false) => {
                    return Err(
                        "enable: a listener cannot be stopped at run time (disable the \
                         gateway with PUT .../enable/false, or restart without it)"
                            .into(),
                    )
                }
                _ => {
                    keep.insert(k.clone(), x.clone());
                }
            }
        }
        keep.insert("type".into(), l.kind.into());
        keep.insert("name".into(), l.name.clone().into());
        let doc = format!(
            "{{\"listeners\":[{}]}}",
            simd_json::OwnedValue::Object(Box::new(keep)).encode()
        );
        ctx.admin.update_gateway_config(doc.as_bytes())?;
        let now = ctx
            .admin
            .listeners()
            .into_iter()
            .find(|x| x.id() == id)
            .ok_or("the listener is gone")?;
        let mut out = Vec::with_capacity(256);
        listener_json(&mut out, &now);
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
}
