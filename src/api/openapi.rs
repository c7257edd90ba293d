//! The OpenAPI 3 document of the management API (`GET /api/v5/openapi.json`),
//! generated from the route table the router uses.

use super::route_table::{Route, ROUTES};
use crate::json;

/// The document, as JSON.
pub fn document() -> Vec<u8> {
    let mut out = Vec::with_capacity(32 * 1024);
    out.extend_from_slice(
        br#"{"openapi":"3.0.3","info":{"title":"lwm2m-gateway management API","version":"#,
    );
    json::string(&mut out, env!("CARGO_PKG_VERSION"));
    out.extend_from_slice(
        br#","description":"EMQX's gateway API for the LwM2M gateway, and every LwM2M operation over REST. Management endpoints need HTTP basic auth with api.api_key and api.api_secret. Errors are {\"code\":..,\"message\":..}."},"components":{"securitySchemes":{"basic":{"type":"http","scheme":"basic"}}},"paths":{"#,
    );
    for (i, r) in ROUTES.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::key(&mut out, r.pattern);
        path_item(&mut out, r);
    }
    out.extend_from_slice(b"}}");
    out
}

fn path_item(out: &mut Vec<u8>, r: &Route) {
    out.push(b'{');
    for (i, op) in r.ops.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::key(out, &op.method.to_ascii_lowercase());
        out.push(b'{');
        json::key(out, "summary");
        json::string(out, op.summary);
        out.extend_from_slice(b",\"operationId\":");
        json::string(out, &operation_id(r.pattern, op.method));
        if r.open {
            out.extend_from_slice(b",\"security\":[]");
        } else {
            out.extend_from_slice(br#","security":[{"basic":[]}]"#);
        }
        out.extend_from_slice(b",\"parameters\":[");
        let mut first = true;
        let path_params = r
            .pattern
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'));
        for name in path_params {
            sep(out, &mut first);
            param(out, name, "path", true, "percent-encoded when it holds '/'");
        }
        for p in op.query {
            sep(out, &mut first);
            param(out, p.name, "query", p.required, p.description);
        }
        out.push(b']');
        if let Some(body) = op.body {
            out.extend_from_slice(br#","requestBody":{"required":false,"description":"#);
            json::string(out, body);
            out.extend_from_slice(
                br#","content":{"application/json":{"schema":{"type":"object"}}}}"#,
            );
        }
        out.extend_from_slice(b",\"responses\":{");
        for (j, (status, what)) in op.responses.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            json::key(out, &status.to_string());
            out.push(b'{');
            json::key(out, "description");
            json::string(out, what);
            out.push(b'}');
        }
        out.extend_from_slice(b"}}");
    }
    out.push(b'}');
}

fn sep(out: &mut Vec<u8>, first: &mut bool) {
    if !*first {
        out.push(b',');
    }
    *first = false;
}

fn param(out: &mut Vec<u8>, name: &str, at: &str, required: bool, description: &str) {
    out.push(b'{');
    json::key(out, "name");
    json::string(out, name);
    out.extend_from_slice(b",\"in\":");
    json::string(out, at);
    out.extend_from_slice(if required {
        b",\"required\":true"
    } else {
        b",\"required\":false"
    });
    out.extend_from_slice(b",\"description\":");
    json::string(out, description);
    out.extend_from_slice(br#","schema":{"type":"string"}}"#);
}

/// `get_api_v5_gateways_lwm2m_clients_clientid_read`-style ids, unique per path+method.
fn operation_id(pattern: &str, method: &str) -> String {
    let mut id = method.to_ascii_lowercase();
    for seg in pattern.split('/').filter(|s| !s.is_empty()) {
        id.push('_');
        id.extend(
            seg.chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }),
        );
    }
    id
}

#[cfg(test)]
mod tests {
    use simd_json::prelude::*;

    #[test]
    fn the_document_is_json_with_every_route() {
        let mut doc = super::document();
        let v = simd_json::to_owned_value(&mut doc).expect("valid JSON");
        let paths = v["paths"].as_object().unwrap();
        assert_eq!(paths.len(), super::ROUTES.len());
        let read = &paths["/api/v5/gateways/lwm2m/clients/{clientid}/read"]["post"];
        assert_eq!(read["parameters"][0]["in"].as_str(), Some("path"));
        assert!(read["responses"]["504"].is_object());
    }
}
