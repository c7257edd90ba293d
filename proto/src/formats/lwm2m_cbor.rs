//! LwM2M CBOR (11544, OMA-TS-LightweightM2M_Core-V1_2 §7.4.6): nested maps keyed by path
//! components from the root. A key is an unsigned integer (one component) or an array of them
//! (several); a value is a map (deeper level) or a leaf typed by its CBOR major type (integers,
//! floats, booleans, text, byte strings; text is an object link `"O:I"` where the model says so,
//! tag 1 marks a time). `null` leaves are skipped.
//!
//! Also plain CBOR (60): a single leaf value for the request path.

use super::cbor::{self, Item};
use super::senml_cbor::cbor_number;
use super::value::{coerce, resource_kind, ContentItem, Value};
use super::DecodeError;
use crate::model::{LwPath, ObjectModel};

fn structure(reason: &'static str) -> DecodeError {
    DecodeError::Structure {
        format: "LwM2M CBOR",
        reason,
    }
}

/// A leaf value as its CBOR type says; `Ok(None)` for null/undefined.
fn leaf(it: &Item<'_>) -> Result<Option<Value>, DecodeError> {
    if let Item::Tag(1, inner) = it {
        return match cbor_number(inner) {
            Some(Value::Integer(t)) => Ok(Some(Value::Time(t))),
            Some(Value::Float(f)) => Ok(super::value::f64_to_i64(f.floor()).map(Value::Time)),
            _ => Err(structure("tag 1 (time) on a non-number")),
        };
    }
    Ok(Some(match it.untagged() {
        Item::Uint(_) | Item::Nint(_) | Item::Float(_) => {
            cbor_number(it).ok_or_else(|| structure("integer out of range"))?
        }
        Item::Bytes(b) => Value::Opaque(b.to_vec()),
        Item::Text(t) => Value::String(t.to_string()),
        Item::Bool(b) => Value::Boolean(*b),
        Item::Null | Item::Undefined => return Ok(None),
        _ => return Err(structure("unsupported value type")),
    }))
}

fn push_id(path: &LwPath, k: &Item<'_>) -> Result<LwPath, DecodeError> {
    let id = match k.untagged() {
        Item::Uint(u) => u16::try_from(*u).map_err(|_| structure("path component above 65535"))?,
        _ => return Err(structure("path component is not an unsigned integer")),
    };
    path.child(id)
        .ok_or_else(|| structure("path deeper than four levels"))
}

fn walk(
    map: &[(Item<'_>, Item<'_>)],
    at: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
) -> Result<(), DecodeError> {
    for (k, v) in map {
        let path = match k.untagged() {
            Item::Array(ids) => {
                if ids.is_empty() {
                    return Err(structure("empty path array"));
                }
                let mut p = *at;
                for id in ids {
                    p = push_id(&p, id)?;
                }
                p
            }
            _ => push_id(at, k)?,
        };
        match v.untagged() {
            // Each level adds at least one path component, so recursion stops at depth 4.
            Item::Map(inner) => walk(inner, &path, model, out)?,
            _ => {
                let Some(raw) = leaf(v)? else { continue };
                if path.len() < 3 {
                    return Err(structure("a value above resource level"));
                }
                out.push(ContentItem {
                    path,
                    value: coerce(resource_kind(model, &path), raw),
                });
            }
        }
    }
    Ok(())
}

pub(crate) fn decode(
    payload: &[u8],
    _req: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
) -> Result<(), DecodeError> {
    let root = cbor::parse(payload)?;
    let Item::Map(map) = root.untagged() else {
        return Err(structure("the payload is not a map"));
    };
    walk(map, &LwPath::ROOT, model, out)
}

/// Plain CBOR (60): one value for the request path.
pub(crate) fn decode_single(
    payload: &[u8],
    req: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
) -> Result<(), DecodeError> {
    if req.len() < 3 {
        return Err(DecodeError::NotSingleResource("CBOR", *req));
    }
    let root = cbor::parse(payload)?;
    if let Some(raw) = leaf(&root)? {
        out.push(ContentItem {
            path: *req,
            value: coerce(resource_kind(model, req), raw),
        });
    }
    Ok(())
}
