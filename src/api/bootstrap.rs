//! The Bootstrap-Server's configurations in the management API:
//!
//! - `GET /api/v5/gateways/lwm2m/bootstrap`: `{"data":[{"endpoint":NAME,...entry}]}`, the
//!   configurations in use (the file's with the API's changes), in lookup order;
//! - `GET .../bootstrap/{name}`: the entry (`{"delete":[...],"servers":[...]}`) and, when
//!   a device of that name bootstrapped, `"last"`: `{"status":...,"error":...,"at":...}`;
//! - `PUT .../bootstrap/{name}`: sets the entry (the same JSON), validated as the file is;
//! - `DELETE .../bootstrap/{name}`: removes it (204; 404 when there was none).
//!
//! Without `[bootstrap] enable` every one answers 404.

use std::sync::Arc;

use super::http::{Request, Response};
use super::routes::rfc3339_ms;
use super::Admin;
use crate::bootstrap::{check_name, entry_from_json, entry_json, BootstrapStore, Outcome};
use crate::formats::write_json_string;

fn store(admin: &dyn Admin) -> Result<Arc<BootstrapStore>, Response> {
    admin.bootstrap().ok_or_else(|| {
        Response::error(
            404,
            "NOT_FOUND",
            "the Bootstrap-Server is not enabled ([bootstrap] enable)",
        )
    })
}

/// `GET .../bootstrap`.
pub(super) fn list(admin: &dyn Admin) -> Response {
    let s = match store(admin) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut out = b"{\"data\":[".to_vec();
    for (i, (name, c)) in s.current().iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let mut entry = Vec::new();
        entry_json(c, &mut entry);
        out.extend_from_slice(b"{\"endpoint\":");
        write_json_string(name, &mut out);
        out.push(b',');
        out.extend_from_slice(&entry[1..]);
    }
    out.extend_from_slice(b"]}");
    Response::json(200, out)
}

fn outcome_json(o: &Outcome, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"last\":{\"status\":");
    write_json_string(o.status.name(), out);
    if let Some(e) = &o.error {
        out.extend_from_slice(b",\"error\":");
        write_json_string(e, out);
    }
    out.extend_from_slice(b",\"at\":");
    write_json_string(&rfc3339_ms(o.at_ms), out);
    out.push(b'}');
}

/// `GET/PUT/DELETE .../bootstrap/{name}`.
pub(super) fn one(admin: &dyn Admin, req: &Request, name: &str) -> Response {
    let s = match store(admin) {
        Ok(s) => s,
        Err(r) => return r,
    };
    match req.method.as_str() {
        "GET" | "HEAD" => {
            let config = s.current().get(name).cloned();
            let last = s.outcome(name);
            if config.is_none() && last.is_none() {
                return Response::error(
                    404,
                    "NOT_FOUND",
                    "no bootstrap configuration or outcome of that name",
                );
            }
            let mut out = Vec::new();
            match &config {
                Some(c) => {
                    entry_json(c, &mut out);
                    out.pop();
                }
                None => out.push(b'{'),
            }
            if let Some(o) = &last {
                if config.is_some() {
                    out.push(b',');
                }
                outcome_json(o, &mut out);
            }
            out.push(b'}');
            Response::json(200, out)
        }
        "PUT" | "POST" => {
            if let Err(e) = check_name(name) {
                return Response::error(400, "BAD_REQUEST", &e);
            }
            match entry_from_json(&req.body) {
                Ok(c) => {
                    s.put(name, c);
                    Response::no_content()
                }
                Err(e) => Response::error(400, "BAD_REQUEST", &e),
            }
        }
        "DELETE" => {
            if s.delete(name) {
                Response::no_content()
            } else {
                Response::error(404, "NOT_FOUND", "no bootstrap configuration of that name")
            }
        }
        _ => Response::error(405, "METHOD_NOT_ALLOWED", "allowed: GET, PUT, DELETE")
            .with_header("Allow", "GET, PUT, DELETE".to_string()),
    }
}
