//! SenML JSON (110, RFC 8428) with the LwM2M 1.1 conventions: the path of a record is the
//! concatenation of the base name (`bn`, which persists over the following records) and the name
//! (`n`); values are `v` (number), `vs` (string), `vb` (boolean), `vd` (base64url data) and `vlo`
//! (object link `"O:I"`). A base value (`bv`) is added to `v`. Times (`bt`, `t`) are read only
//! for a Send (`decode_timed`).

use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::value::{
    coerce, decode_base64, from_u64, parse_objlnk, resource_kind, ContentItem, Value,
};
use super::{clip, DecodeError};
use crate::model::{LwPath, ObjectModel};

/// Resolves `base` + `name` into a path. A `/` is inserted when neither side supplies one; an empty
/// result means the request path.
pub(crate) fn join_name(base: &str, name: &str, req: &LwPath) -> Result<LwPath, DecodeError> {
    if base.is_empty() && name.is_empty() {
        return Ok(*req);
    }
    let bad = || DecodeError::BadPath(clip(&format!("{base}{name}")));
    let mut buf = super::value::StackStr::new();
    use std::fmt::Write as _;
    let sep =
        if !base.is_empty() && !name.is_empty() && !base.ends_with('/') && !name.starts_with('/') {
            "/"
        } else {
            ""
        };
    // Paths are at most "/65535/65535/65535/65535/" long: anything longer is invalid anyway.
    write!(buf, "{base}{sep}{name}").map_err(|_| bad())?;
    LwPath::parse(buf.as_str()).map_err(|_| bad())
}

/// Parses JSON from a mutable copy of the payload (simd-json parses in place).
/// Maximum JSON nesting accepted (SenML needs 2, OMA JSON 3).
const MAX_JSON_DEPTH: usize = 16;

/// Refuses JSON nested deeper than `MAX_JSON_DEPTH` before the parser (and the recursive drop of
/// its value tree) sees it. Brackets inside strings do not count.
fn check_depth(bytes: &[u8]) -> Result<(), DecodeError> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &c in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' {
                in_str = false;
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_JSON_DEPTH {
                    return Err(DecodeError::TooDeep(MAX_JSON_DEPTH));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

pub(crate) fn to_value(scratch: &mut [u8]) -> Result<BorrowedValue<'_>, DecodeError> {
    check_depth(scratch)?;
    simd_json::to_borrowed_value(scratch).map_err(|e| DecodeError::Json(clip(&e.to_string())))
}

/// A JSON number as a value (`Integer` when integral and in range, else `Unsigned`/`Float`).
pub(crate) fn number(v: &BorrowedValue<'_>) -> Option<Value> {
    if let Some(i) = v.as_i64() {
        Some(Value::Integer(i))
    } else if let Some(u) = v.as_u64() {
        Some(from_u64(u))
    } else {
        v.as_f64().map(Value::Float)
    }
}

const FMT: &str = "SenML JSON";

fn structure(reason: &'static str) -> DecodeError {
    DecodeError::Structure {
        format: FMT,
        reason,
    }
}

pub(crate) fn decode(
    payload: &[u8],
    req: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
) -> Result<(), DecodeError> {
    decode_records(payload, req, model, out, None)
}

/// As [`decode`], and for each item its record's time (`bt` + `t`; None when the record
/// and the records before it carry neither) in `times`.
pub(crate) fn decode_records(
    payload: &[u8],
    req: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
    mut times: Option<&mut Vec<Option<f64>>>,
) -> Result<(), DecodeError> {
    let mut scratch = payload.to_vec();
    let root = to_value(&mut scratch)?;
    let records = root
        .as_array()
        .ok_or_else(|| structure("the payload is not an array of records"))?;
    let mut bn: &str = "";
    let mut bv: Option<f64> = None;
    let mut bt: Option<f64> = None;
    for rec in records.iter() {
        let rec = rec
            .as_object()
            .ok_or_else(|| structure("a record is not an object"))?;
        let field = |k: &str| rec.get(k);
        if let Some(b) = field("bn") {
            bn = b.as_str().ok_or_else(|| structure("bn is not a string"))?;
        }
        if let Some(b) = field("bv") {
            bv = Some(
                b.cast_f64()
                    .ok_or_else(|| structure("bv is not a number"))?,
            );
        }
        if let Some(b) = field("bt") {
            bt = Some(
                b.cast_f64()
                    .ok_or_else(|| structure("bt is not a number"))?,
            );
        }
        let t = match field("t") {
            Some(t) => Some(t.cast_f64().ok_or_else(|| structure("t is not a number"))?),
            None => None,
        };
        let n = match field("n") {
            Some(n) => n.as_str().ok_or_else(|| structure("n is not a string"))?,
            None => "",
        };
        let raw = if let Some(v) = field("v") {
            let num = number(v).ok_or_else(|| structure("v is not a number"))?;
            match (bv, num) {
                (Some(b), Value::Integer(i)) => Value::Float(b + i as f64),
                (Some(b), Value::Unsigned(u)) => Value::Float(b + u as f64),
                (Some(b), Value::Float(f)) => Value::Float(b + f),
                (_, num) => num,
            }
        } else if let Some(v) = field("vs") {
            Value::String(
                v.as_str()
                    .ok_or_else(|| structure("vs is not a string"))?
                    .to_string(),
            )
        } else if let Some(v) = field("vb") {
            Value::Boolean(
                v.as_bool()
                    .ok_or_else(|| structure("vb is not a boolean"))?,
            )
        } else if let Some(v) = field("vd") {
            let s = v.as_str().ok_or_else(|| structure("vd is not a string"))?;
            let path = join_name(bn, n, req)?;
            Value::Opaque(decode_base64(s).ok_or_else(|| DecodeError::BadValue {
                path: path.to_string(),
                reason: "vd is not base64",
            })?)
        } else if let Some(v) = field("vlo") {
            let s = v.as_str().ok_or_else(|| structure("vlo is not a string"))?;
            let path = join_name(bn, n, req)?;
            let (o, i) = parse_objlnk(s).ok_or_else(|| DecodeError::BadValue {
                path: path.to_string(),
                reason: "vlo is not an object link \"O:I\"",
            })?;
            Value::Objlnk(o, i)
        } else {
            // A record without a value (only base fields, or a null in a composite read).
            continue;
        };
        let path = join_name(bn, n, req)?;
        let value = coerce(resource_kind(model, &path), raw);
        out.push(ContentItem { path, value });
        if let Some(times) = times.as_deref_mut() {
            times.push(super::value::record_time(bt, t));
        }
    }
    Ok(())
}
