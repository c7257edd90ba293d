//! The web console (`console/` at the top of the repository, compiled into the binary)
//! and the two endpoints it needs beyond EMQX's API:
//!
//! - `GET /` and `GET /console/{file}`: the page and its assets, without credentials
//!   (they hold no data; every call the page makes is authenticated);
//! - `GET /api/v5/gateways/lwm2m/objects`: the object definitions the gateway knows
//!   (`{"data":[{"id","name","version","multiple"}]}`), and `GET .../objects/{id}`: one
//!   of them with its resources (`id`, `name`, `type`, `operations`, `multiple`);
//! - `POST /api/v5/gateways/lwm2m/clients/{clientid}/command`: a command JSON exactly as
//!   an MQTT application publishes it (`{"reqID":..,"msgType":..,"data":{..}}`), handed
//!   to the device; 204, the outcome comes as usual (MQTT, the event stream).

use simd_json::prelude::*;

use super::http::{Request, Response};
use super::Admin;
use crate::json;
use crate::objects::LoadedObject;

/// The console's files: (name under `/console/`, content type, bytes).
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_bytes!("../../console/index.html"),
    ),
    (
        "console.css",
        "text/css; charset=utf-8",
        include_bytes!("../../console/console.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/api.js"),
    ),
    (
        "devices.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/devices.js"),
    ),
    (
        "device.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/device.js"),
    ),
    (
        "events.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/events.js"),
    ),
    (
        "gateway.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../../console/gateway.js"),
    ),
];

/// `GET /` (the page) or `GET /console/{name}`; None when `name` is not a console file.
pub(super) fn asset(req: &Request, name: &str) -> Option<Response> {
    let &(_, content_type, bytes) = ASSETS.iter().find(|(n, _, _)| *n == name)?;
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return Some(
            Response::error(405, "METHOD_NOT_ALLOWED", "allowed: GET, HEAD")
                .with_header("Allow", "GET, HEAD".to_string()),
        );
    }
    let mut r = Response::json(200, bytes.to_vec());
    r.content_type = content_type;
    Some(
        r.with_header("Cache-Control", "no-cache".to_string())
            .with_header("X-Content-Type-Options", "nosniff".to_string())
            .with_header(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'".to_string(),
            ),
    )
}

/// `GET .../objects` and `GET .../objects/{id}` (`id` None for the list).
pub(super) fn objects(admin: &dyn Admin, req: &Request, id: Option<&str>) -> Response {
    if !matches!(req.method.as_str(), "GET" | "HEAD") {
        return Response::error(405, "METHOD_NOT_ALLOWED", "allowed: GET")
            .with_header("Allow", "GET".to_string());
    }
    let Some(registry) = admin.objects() else {
        return Response::error(404, "NOT_FOUND", "no object definitions");
    };
    let Some(id) = id else {
        let mut out = b"{\"data\":[".to_vec();
        let mut all: Vec<&LoadedObject> = registry.iter().collect();
        all.sort_by_key(|o| o.def.id);
        for (i, o) in all.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            object_head(&mut out, o);
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        return Response::json(200, out);
    };
    let Ok(id) = id.parse::<u16>() else {
        return Response::error(
            400,
            "BAD_REQUEST",
            &format!("object id: expected an integer 0..65535, got {id:?}"),
        );
    };
    let Some(o) = registry.get(id) else {
        return Response::error(404, "NOT_FOUND", &format!("object {id} is not defined"));
    };
    let mut out = Vec::with_capacity(256 + 128 * o.def.resources.len());
    object_head(&mut out, o);
    out.extend_from_slice(b",\"resources\":[");
    for (i, r) in o.def.resources.values().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        json::key(&mut out, "id");
        json::uint(&mut out, u64::from(r.id));
        out.push(b',');
        json::key(&mut out, "name");
        json::string(&mut out, &r.name);
        out.push(b',');
        json::key(&mut out, "type");
        json::string(&mut out, r.kind.name());
        out.push(b',');
        let ops = r.operations;
        let ops: String = [(ops.read, 'R'), (ops.write, 'W'), (ops.execute, 'E')]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| c)
            .collect();
        json::key(&mut out, "operations");
        json::string(&mut out, &ops);
        out.push(b',');
        json::key(&mut out, "multiple");
        out.extend_from_slice(if r.multiple { b"true" } else { b"false" });
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    Response::json(200, out)
}

/// `{"id":..,"name":..,"version":..,"multiple":..` (open: the caller closes it).
fn object_head(out: &mut Vec<u8>, o: &LoadedObject) {
    out.push(b'{');
    json::key(out, "id");
    json::uint(out, u64::from(o.def.id));
    out.push(b',');
    json::key(out, "name");
    json::string(out, &o.def.name);
    out.push(b',');
    json::key(out, "version");
    json::string(out, &o.version.to_string());
    out.push(b',');
    json::key(out, "multiple");
    out.extend_from_slice(if o.def.multiple { b"true" } else { b"false" });
}

/// `POST .../clients/{clientid}/command`: the body is the command JSON.
pub(super) fn command(admin: &dyn Admin, req: &Request, clientid: &str) -> Response {
    if req.method != "POST" {
        return Response::error(405, "METHOD_NOT_ALLOWED", "allowed: POST")
            .with_header("Allow", "POST".to_string());
    }
    let mut copy = req.body.clone();
    let checked = match simd_json::to_borrowed_value(&mut copy) {
        Ok(v) if !v.is_object() => Err("the body must be a JSON object (a command)".to_string()),
        Ok(v) if v.get_str("msgType").is_none_or(str::is_empty) => {
            Err("msgType: required, a string (read, write, execute, ...)".to_string())
        }
        Ok(v) if v.get("data").is_some_and(|d| !d.is_object()) => {
            Err("data: must be a JSON object".to_string())
        }
        Ok(_) => Ok(()),
        Err(e) => Err(format!("the body is not valid JSON: {e}")),
    };
    if let Err(e) = checked {
        return Response::error(400, "BAD_REQUEST", &e);
    }
    if admin.client(clientid).is_none() {
        return Response::error(404, "NOT_FOUND", "Client not found");
    }
    match admin.command(clientid, req.body.clone()) {
        Ok(()) => Response::no_content(),
        Err(e) => Response::error(400, "BAD_REQUEST", &e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_with_its_type() {
        let req = Request {
            method: "GET".into(),
            ..Request::default()
        };
        for (name, ty, bytes) in ASSETS {
            let r = asset(&req, name).expect(name);
            assert_eq!((r.status, r.content_type), (200, *ty), "{name}");
            assert_eq!(r.body, *bytes);
            assert!(!bytes.is_empty(), "{name} is empty");
        }
        assert!(asset(&req, "../Cargo.toml").is_none());
        let post = Request {
            method: "POST".into(),
            ..Request::default()
        };
        assert_eq!(asset(&post, "app.js").map(|r| r.status), Some(405));
    }

    #[test]
    fn the_page_names_only_files_that_are_served() {
        let html = std::str::from_utf8(ASSETS[0].2).unwrap();
        let js: Vec<&str> = ASSETS.iter().map(|a| a.0).collect();
        for part in html.split("/console/").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '_')
                .collect();
            assert!(js.contains(&name.as_str()), "index.html names {name}");
        }
        for (name, _, bytes) in ASSETS.iter().filter(|a| a.0.ends_with(".js")) {
            let text = std::str::from_utf8(bytes).unwrap();
            for part in text.split("from './").skip(1) {
                let dep = part.split('\'').next().unwrap();
                assert!(js.contains(&dep), "{name} imports {dep}");
            }
        }
    }
}
