//! SenML CBOR (112, RFC 8428 §6) with the LwM2M 1.1 conventions. Labels: -2 bn, -5 bv, 0 n,
//! 2 v, 3 vs, 4 vb, 8 vd (byte string), and the text label "vlo" (object link); times -3 bt and
//! 6 t are read only for a Send (`decode_records`).
//! Text labels of the JSON form (`"bn"`, `"n"`, `"v"`, ...) are accepted as well.

use super::cbor::{self, Item};
use super::senml_json::join_name;
use super::value::{
    coerce, decode_base64, from_u64, parse_objlnk, resource_kind, ContentItem, Value,
};
use super::DecodeError;
use crate::model::{LwPath, ObjectModel};

pub(crate) const BN: i64 = -2;
pub(crate) const BT: i64 = -3;
pub(crate) const BV: i64 = -5;
pub(crate) const T: i64 = 6;
pub(crate) const N: i64 = 0;
pub(crate) const V: i64 = 2;
pub(crate) const VS: i64 = 3;
pub(crate) const VB: i64 = 4;
pub(crate) const VD: i64 = 8;
pub(crate) const VLO: &str = "vlo";

fn structure(reason: &'static str) -> DecodeError {
    DecodeError::Structure {
        format: "SenML CBOR",
        reason,
    }
}

/// Label of a record field, unified between integer and text forms.
#[derive(PartialEq)]
enum Label {
    Bn,
    Bt,
    Bv,
    T,
    N,
    V,
    Vs,
    Vb,
    Vd,
    Vlo,
    Other,
}

fn label(k: &Item<'_>) -> Label {
    if let Some(i) = k.as_int() {
        return match i as i64 {
            _ if i != (i as i64) as i128 => Label::Other,
            BN => Label::Bn,
            BT => Label::Bt,
            BV => Label::Bv,
            T => Label::T,
            N => Label::N,
            V => Label::V,
            VS => Label::Vs,
            VB => Label::Vb,
            VD => Label::Vd,
            _ => Label::Other,
        };
    }
    match k.as_text() {
        Some("bn") => Label::Bn,
        Some("bt") => Label::Bt,
        Some("bv") => Label::Bv,
        Some("t") => Label::T,
        Some("n") => Label::N,
        Some("v") => Label::V,
        Some("vs") => Label::Vs,
        Some("vb") => Label::Vb,
        Some("vd") => Label::Vd,
        Some(VLO) => Label::Vlo,
        _ => Label::Other,
    }
}

/// A CBOR number as a value.
pub(crate) fn cbor_number(it: &Item<'_>) -> Option<Value> {
    match it.untagged() {
        Item::Uint(u) => Some(from_u64(*u)),
        Item::Nint(n) => i64::try_from(*n).ok().map(|n| Value::Integer(-1 - n)),
        Item::Float(f) => Some(Value::Float(*f)),
        _ => None,
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

/// A CBOR number as f64 (a time).
fn cbor_f64(v: &Item<'_>, what: &'static str) -> Result<f64, DecodeError> {
    match cbor_number(v) {
        Some(Value::Integer(i)) => Ok(i as f64),
        Some(Value::Unsigned(u)) => Ok(u as f64),
        Some(Value::Float(f)) => Ok(f),
        _ => Err(structure(what)),
    }
}

/// As [`decode`], and for each item its record's time (`bt` + `t`) in `times`.
pub(crate) fn decode_records(
    payload: &[u8],
    req: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
    mut times: Option<&mut Vec<Option<f64>>>,
) -> Result<(), DecodeError> {
    let root = cbor::parse(payload)?;
    let Item::Array(records) = root.untagged() else {
        return Err(structure("the payload is not an array of records"));
    };
    let mut bn: &str = "";
    let mut bv: Option<f64> = None;
    let mut bt: Option<f64> = None;
    for rec in records {
        let Item::Map(fields) = rec.untagged() else {
            return Err(structure("a record is not a map"));
        };
        let mut n: &str = "";
        let mut t: Option<f64> = None;
        let mut val: Option<(Label, &Item<'_>)> = None;
        for (k, v) in fields {
            match label(k) {
                Label::Bn => bn = v.as_text().ok_or_else(|| structure("bn is not text"))?,
                Label::Bv => {
                    bv = match cbor_number(v) {
                        Some(Value::Integer(i)) => Some(i as f64),
                        Some(Value::Unsigned(u)) => Some(u as f64),
                        Some(Value::Float(f)) => Some(f),
                        _ => return Err(structure("bv is not a number")),
                    }
                }
                Label::N => n = v.as_text().ok_or_else(|| structure("n is not text"))?,
                Label::Bt => bt = Some(cbor_f64(v, "bt is not a number")?),
                Label::T => t = Some(cbor_f64(v, "t is not a number")?),
                Label::Other => {}
                l => {
                    if val.is_none() {
                        val = Some((l, v));
                    }
                }
            }
        }
        let Some((l, v)) = val else { continue };
        let path = join_name(bn, n, req)?;
        let bad = |reason| DecodeError::BadValue {
            path: path.to_string(),
            reason,
        };
        let raw = match l {
            Label::V => match (
                bv,
                cbor_number(v).ok_or_else(|| structure("v is not a number"))?,
            ) {
                (Some(b), Value::Integer(i)) => Value::Float(b + i as f64),
                (Some(b), Value::Unsigned(u)) => Value::Float(b + u as f64),
                (Some(b), Value::Float(f)) => Value::Float(b + f),
                (_, num) => num,
            },
            Label::Vs => Value::String(
                v.as_text()
                    .ok_or_else(|| structure("vs is not text"))?
                    .to_string(),
            ),
            Label::Vb => match v.untagged() {
                Item::Bool(b) => Value::Boolean(*b),
                _ => return Err(structure("vb is not a boolean")),
            },
            Label::Vd => match v.untagged() {
                Item::Bytes(b) => Value::Opaque(b.to_vec()),
                Item::Text(t) => {
                    Value::Opaque(decode_base64(t).ok_or_else(|| bad("vd is not base64"))?)
                }
                _ => return Err(structure("vd is not a byte string")),
            },
            _ => {
                let s = v.as_text().ok_or_else(|| structure("vlo is not text"))?;
                let (o, i) =
                    parse_objlnk(s).ok_or_else(|| bad("vlo is not an object link \"O:I\""))?;
                Value::Objlnk(o, i)
            }
        };
        let value = coerce(resource_kind(model, &path), raw);
        out.push(ContentItem { path, value });
        if let Some(times) = times.as_deref_mut() {
            times.push(super::value::record_time(bt, t));
        }
    }
    Ok(())
}
