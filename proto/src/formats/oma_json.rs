//! OMA LwM2M JSON (11543, and 1543 of early 1.0 clients):
//! `{"bn":"/3/0/","e":[{"n":"0","sv":"..."},{"n":"9","v":100},{"n":"x","bv":true},{"n":"y","ov":"3:0"}]}`.
//! Without `bn`, names are relative to the request path. Opaque resources carry base64 in `sv`.

use simd_json::prelude::*;

use super::senml_json::{join_name, number, to_value};
use super::value::{coerce, decode_base64, parse_objlnk, resource_kind, ContentItem, Value};
use super::DecodeError;
use crate::model::{LwPath, ObjectModel, ResourceType};

fn structure(reason: &'static str) -> DecodeError {
    DecodeError::Structure {
        format: "LwM2M JSON",
        reason,
    }
}

pub(crate) fn decode(
    payload: &[u8],
    req: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
) -> Result<(), DecodeError> {
    let mut scratch = payload.to_vec();
    let root = to_value(&mut scratch)?;
    let root = root
        .as_object()
        .ok_or_else(|| structure("the payload is not an object"))?;
    let mut req_base = super::value::StackStr::new();
    let bn: &str = match root.get("bn") {
        Some(b) => b.as_str().ok_or_else(|| structure("bn is not a string"))?,
        None => {
            use std::fmt::Write as _;
            if !req.is_empty() {
                let _ = write!(req_base, "{req}");
            }
            let _ = req_base.write_str("/");
            req_base.as_str()
        }
    };
    let entries = root
        .get("e")
        .and_then(|e| e.as_array())
        .ok_or_else(|| structure("e is missing or not an array"))?;
    for e in entries.iter() {
        let e = e
            .as_object()
            .ok_or_else(|| structure("an entry is not an object"))?;
        let n = match e.get("n") {
            Some(n) => n.as_str().ok_or_else(|| structure("n is not a string"))?,
            None => "",
        };
        let path = join_name(bn, n, req)?;
        let kind = resource_kind(model, &path);
        let bad = |reason| DecodeError::BadValue {
            path: path.to_string(),
            reason,
        };
        let raw = if let Some(v) = e.get("v") {
            number(v).ok_or_else(|| structure("v is not a number"))?
        } else if let Some(v) = e.get("sv") {
            let s = v.as_str().ok_or_else(|| structure("sv is not a string"))?;
            match kind {
                Some(ResourceType::Opaque) => match decode_base64(s) {
                    Some(b) => Value::Opaque(b),
                    None => Value::String(s.to_string()),
                },
                _ => Value::String(s.to_string()),
            }
        } else if let Some(v) = e.get("bv") {
            Value::Boolean(
                v.as_bool()
                    .ok_or_else(|| structure("bv is not a boolean"))?,
            )
        } else if let Some(v) = e.get("ov") {
            let s = v.as_str().ok_or_else(|| structure("ov is not a string"))?;
            let (o, i) = parse_objlnk(s).ok_or_else(|| bad("ov is not an object link \"O:I\""))?;
            Value::Objlnk(o, i)
        } else {
            continue;
        };
        out.push(ContentItem {
            path,
            value: coerce(kind, raw),
        });
    }
    Ok(())
}
