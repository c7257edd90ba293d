//! Every LwM2M operation over REST (`POST .../clients/{clientid}/{op}`): the command JSON
//! an MQTT application would publish (docs/mqtt.md), handed to [`Admin::command`]; with
//! `?wait=5s` the device's answer comes back in the HTTP response (`wait.rs`).
//!
//! The command's `data` is the request's JSON body when there is one, else it is built
//! from the query: `path` (and `type`, `value` for write; `args` for execute; the
//! attributes for write-attr; `enable=false` turns observe into cancel-observe). `reqID`
//! is the caller's (`?reqID=`) or generated, and returned in `X-Request-Id`.

use std::sync::atomic::Ordering;

use simd_json::prelude::*;

use super::http::{Request, Response};
use super::routes::{bad_request, not_found, Ctx};
use crate::json;

/// The write-attr attributes taken from the query.
const ATTRIBUTES: &[&str] = &[
    "pmin", "pmax", "gt", "lt", "st", "epmin", "epmax", "edge", "con", "hqmax",
];

/// `op` is the last segment of the route (the table lists which exist).
pub(super) fn command(ctx: &Ctx, req: &Request, id: &str, op: &str) -> Response {
    let wait = match super::wait::parse(req.param("wait")) {
        Ok(w) => w,
        Err(e) => return bad_request(&e),
    };
    let msg_type = match msg_type(req, op) {
        Ok(t) => t,
        Err(e) => return bad_request(&e),
    };
    let data = match body_data(req) {
        Err(e) => return bad_request(&e),
        Ok(Some(d)) => d,
        Ok(None) => match query_data(req, op) {
            Ok(d) => d,
            Err(e) => return bad_request(&e),
        },
    };
    let Some(client) = ctx.admin.client(id) else {
        return not_found("Client not found");
    };
    // A device another node of a cluster holds: that node runs the command and
    // publishes the response, which this node's event feed never sees.
    let elsewhere = client.node.filter(|n| *n != ctx.admin.node());
    if let (Some(_), Some(node)) = (wait, &elsewhere) {
        return bad_request(&format!(
            "wait: the client is held by node {node:?}; ask that node, or send without wait \
             and read the response on MQTT"
        ));
    }
    let req_id = match req.param("reqID") {
        Some("") => return bad_request("reqID: empty"),
        Some(r) => r.to_string(),
        None => ctx.req_seq.fetch_add(1, Ordering::Relaxed).to_string(),
    };
    let mut cmd = Vec::with_capacity(64 + data.len());
    cmd.push(b'{');
    json::key(&mut cmd, "reqID");
    req_id_json(&mut cmd, &req_id);
    cmd.push(b',');
    json::key(&mut cmd, "msgType");
    json::string(&mut cmd, msg_type);
    cmd.push(b',');
    json::key(&mut cmd, "data");
    cmd.extend_from_slice(&data);
    cmd.push(b'}');
    match wait {
        None => match ctx.admin.command(id, cmd) {
            Ok(()) => Response::no_content().with_header("X-Request-Id", req_id),
            Err(e) => bad_request(&e),
        },
        Some(w) => super::wait::send_and_wait(ctx, id, cmd, &req_id, w),
    }
}

/// A reqID as the command carries it: a number when it is one (generated ones are),
/// else a string.
fn req_id_json(out: &mut Vec<u8>, r: &str) {
    match r.parse::<u64>() {
        Ok(n) if n < 1 << 53 && n.to_string() == r => json::uint(out, n),
        _ => json::string(out, r),
    }
}

fn msg_type(req: &Request, op: &str) -> Result<&'static str, String> {
    let enable = req.param("enable").unwrap_or("true");
    let cancel = match enable {
        "true" => false,
        "false" => true,
        other => return Err(format!("enable: expected true or false, got {other:?}")),
    };
    Ok(match op {
        "read" => "read",
        "write" => "write",
        "observe" if cancel => "cancel-observe",
        "observe" => "observe",
        "discover" => "discover",
        "execute" => "execute",
        "create" => "create",
        "delete" => "delete",
        "write-attr" => "write-attr",
        "read-composite" => "read-composite",
        "write-composite" => "write-composite",
        "observe-composite" if cancel => "cancel-observe-composite",
        "observe-composite" => "observe-composite",
        other => return Err(format!("{other}: not an operation")),
    })
}

/// The request's body as the command's `data` (None: no body).
fn body_data(req: &Request) -> Result<Option<Vec<u8>>, String> {
    if req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let mut copy = req.body.clone();
    let parsed = match simd_json::to_borrowed_value(&mut copy) {
        Ok(v) if v.is_object() => Ok(Some(v.encode().into_bytes())),
        Ok(_) => Err("the request body is not a JSON object".to_string()),
        Err(e) => Err(format!("the request body is not valid JSON: {e}")),
    };
    parsed
}

/// The command's `data` from the query, for a request without a body.
fn query_data(req: &Request, op: &str) -> Result<Vec<u8>, String> {
    let mut data = Vec::with_capacity(96);
    if op.ends_with("-composite") {
        if op == "write-composite" {
            return Err(
                r#"write-composite needs a body: {"content":[{"path":..,"type":..,"value":..},...]}"#
                    .into(),
            );
        }
        let paths = req
            .param("paths")
            .filter(|p| !p.trim().is_empty())
            .ok_or(r#"paths: required (paths=/3/0/9,/1/0/1), or a body {"paths":[...]}"#)?;
        data.extend_from_slice(b"{\"paths\":[");
        for (i, p) in paths.split(',').enumerate() {
            if i > 0 {
                data.push(b',');
            }
            json::string(&mut data, p.trim());
        }
        data.extend_from_slice(b"]}");
        return Ok(data);
    }
    if op == "create" {
        return Err(
            r#"create needs a body: {"basePath":"/OBJECT","content":[{"path":..,"type":..,"value":..},...]}"#
                .into(),
        );
    }
    let path = req
        .param("path")
        .filter(|p| !p.trim().is_empty())
        .ok_or("path: required, e.g. path=/3/0/1")?;
    data.push(b'{');
    json::key(&mut data, "path");
    json::string(&mut data, path);
    match op {
        "write" => {
            let (Some(ty), Some(value)) = (req.param("type"), req.param("value")) else {
                return Err("write needs path, type and value".into());
            };
            if !matches!(
                ty,
                "Integer" | "Float" | "Time" | "String" | "Boolean" | "Opaque" | "Objlnk"
            ) {
                return Err(format!(
                    "type: {ty:?} is not one of Integer, Float, Time, String, Boolean, Opaque, Objlnk"
                ));
            }
            data.push(b',');
            json::key(&mut data, "type");
            json::string(&mut data, ty);
            data.push(b',');
            json::key(&mut data, "value");
            write_value(&mut data, ty, value);
        }
        "execute" => {
            if let Some(args) = req.param("args") {
                data.push(b',');
                json::key(&mut data, "args");
                json::string(&mut data, args);
            }
        }
        "write-attr" => {
            let mut any = false;
            for a in ATTRIBUTES {
                if let Some(v) = req.param(a) {
                    data.push(b',');
                    json::key(&mut data, a);
                    json::string(&mut data, v);
                    any = true;
                }
            }
            if !any {
                return Err(format!(
                    "write-attr needs at least one attribute: {}",
                    ATTRIBUTES.join(", ")
                ));
            }
        }
        _ => {}
    }
    data.push(b'}');
    Ok(data)
}

/// A write value typed as the command contract expects: numbers as JSON
/// numbers, booleans as JSON booleans, everything else as a string.
fn write_value(out: &mut Vec<u8>, ty: &str, value: &str) {
    let v = value.trim();
    let numeric = match ty {
        "Integer" | "Time" => v.parse::<i64>().is_ok(),
        "Float" => v.parse::<f64>().is_ok_and(f64::is_finite) && !v.contains(['i', 'I', 'n', 'N']),
        _ => false,
    };
    if numeric {
        // Re-rendered so that e.g. "+5" or "1." become valid JSON.
        if ty == "Float" {
            let f: f64 = v.parse().unwrap_or(0.0);
            out.extend_from_slice(format!("{f:?}").as_bytes());
        } else {
            out.extend_from_slice(v.parse::<i64>().unwrap_or(0).to_string().as_bytes());
        }
    } else if ty == "Boolean" && matches!(v, "true" | "false") {
        out.extend_from_slice(v.as_bytes());
    } else {
        json::string(out, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values() {
        let w = |ty, v| {
            let mut o = Vec::new();
            write_value(&mut o, ty, v);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(w("Integer", "+5"), "5");
        assert_eq!(w("Integer", "5x"), "\"5x\"");
        assert_eq!(w("Time", "1700000000"), "1700000000");
        assert_eq!(w("Float", "1.5"), "1.5");
        assert_eq!(w("Float", "2"), "2.0");
        assert_eq!(w("Float", "NaN"), "\"NaN\"");
        assert_eq!(w("Boolean", "true"), "true");
        assert_eq!(w("Boolean", "1"), "\"1\"");
        assert_eq!(w("String", "42"), "\"42\"");
        assert_eq!(w("Objlnk", "3:0"), "\"3:0\"");
    }

    #[test]
    fn req_ids() {
        let r = |s| {
            let mut o = Vec::new();
            req_id_json(&mut o, s);
            String::from_utf8(o).unwrap()
        };
        assert_eq!(r("42"), "42");
        assert_eq!(r("042"), "\"042\"");
        assert_eq!(r("abc"), "\"abc\"");
        assert_eq!(r("9007199254740993"), "\"9007199254740993\"");
    }
}
