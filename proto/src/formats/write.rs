//! Writes and creates: parsing MQTT command values and encoding request payloads.

use base64::Engine as _;
use simd_json::prelude::*;
use simd_json::BorrowedValue;

use super::json_out::{write_f64, write_i64, write_json_string, write_path, write_u64};
use super::value::{self, parse_bool, parse_f64, parse_i64, parse_objlnk, parse_u64, Value};
use super::{cbor, fmt_id, senml_cbor, tlv};
use crate::model::{LwPath, ObjectModel, ResourceType};

/// One value to write, at its absolute path.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteItem {
    pub path: LwPath,
    pub value: Value,
}

/// Why a write/create payload could not be encoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The format is not one writes can be encoded in.
    #[error("content format {0} cannot encode writes")]
    UnsupportedFormat(u16),
    /// An item's path does not lie at or below the request path.
    #[error("path {path} is not below the request path {base}")]
    OutsideBase { path: LwPath, base: LwPath },
    /// An item's path is not a resource or resource instance, or does not fit the request.
    #[error("path {0} cannot carry a value here")]
    BadItemPath(LwPath),
    /// The format carries one resource value: exactly one item at the request path is needed.
    #[error("{0} carries exactly one value at a resource path")]
    NotSingleResource(&'static str),
    /// A value the format cannot represent (e.g. a non-finite float, a non-byte value as opaque).
    #[error("{0}")]
    Unrepresentable(&'static str),
    /// A TLV element longer than the 24-bit length field allows.
    #[error("value of {0} bytes is too large for TLV")]
    TooLarge(usize),
}

// ---- parsing command values ----

fn type_from_name(t: &str) -> Result<ResourceType, String> {
    let n = t.trim().to_ascii_lowercase();
    Ok(match n.as_str() {
        "string" => ResourceType::String,
        "integer" | "int" => ResourceType::Integer,
        "unsigned integer" | "unsignedinteger" | "unsigned" => ResourceType::UnsignedInteger,
        "float" | "double" => ResourceType::Float,
        "boolean" | "bool" => ResourceType::Boolean,
        "opaque" => ResourceType::Opaque,
        "time" => ResourceType::Time,
        "objlnk" => ResourceType::Objlnk,
        "corelnk" => ResourceType::Corelnk,
        _ => return Err(format!("unknown value type \"{}\"", super::clip(t))),
    })
}

fn article_name(k: ResourceType) -> &'static str {
    match k {
        ResourceType::String => "a String",
        ResourceType::Integer => "an Integer",
        ResourceType::UnsignedInteger => "an Unsigned Integer",
        ResourceType::Float => "a Float",
        ResourceType::Boolean => "a Boolean",
        ResourceType::Opaque => "an Opaque (base64)",
        ResourceType::Time => "a Time",
        ResourceType::Objlnk => "an Objlnk (\"O:I\")",
        ResourceType::Corelnk => "a Corelnk",
        ResourceType::None => "a value",
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let t = s.trim();
    let t = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .unwrap_or(t);
    if t.len() & 1 != 0 {
        return None;
    }
    let nib = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    t.as_bytes()
        .chunks(2)
        .map(|p| Some((nib(p[0])? << 4) | nib(p[1])?))
        .collect()
}

/// Parse one command value: `type_name` as sent (case-insensitive), `v` the JSON value; `hex` when
/// the command's top-level encoding is "hex" (string values are then hex of the raw bytes: the
/// bytes themselves for Opaque, the TLV value encoding for other types). Without `type_name` the
/// model types the value; for an unknown resource the JSON type decides.
pub fn parse_write_value(
    type_name: Option<&str>,
    v: &BorrowedValue<'_>,
    hex: bool,
    path: &LwPath,
    model: &dyn ObjectModel,
) -> Result<Value, String> {
    let kind = match type_name {
        Some(t) => type_from_name(t)?,
        None => match value::resource_kind(model, path) {
            Some(ResourceType::None) => {
                return Err(format!("resource {path} is executable and has no value"))
            }
            Some(k) => k,
            None => {
                if v.is_bool() {
                    ResourceType::Boolean
                } else if v.is_f64() {
                    ResourceType::Float
                } else if v.as_i64().is_some() {
                    ResourceType::Integer
                } else if v.as_u64().is_some() {
                    ResourceType::UnsignedInteger
                } else if v.is_str() {
                    if hex {
                        ResourceType::Opaque
                    } else {
                        ResourceType::String
                    }
                } else {
                    return Err(format!(
                        "value {} has no type and resource {path} is not defined",
                        shown(v)
                    ));
                }
            }
        },
    };
    let not = || format!("value {} is not {}", shown(v), article_name(kind));
    if hex {
        if let Some(s) = v.as_str() {
            let bytes =
                decode_hex(s).ok_or_else(|| format!("value {} is not a hex string", shown(v)))?;
            return match kind {
                ResourceType::Opaque => Ok(Value::Opaque(bytes)),
                k => value::from_bytes(k, &bytes).ok_or_else(not),
            };
        }
    }
    let s = v.as_str();
    let r = match kind {
        ResourceType::Integer => int_of(v).map(Value::Integer),
        ResourceType::Time => int_of(v).map(Value::Time),
        ResourceType::UnsignedInteger => if let Some(u) = v.as_u64() {
            Some(u)
        } else if v.is_f64() {
            v.as_f64().and_then(value::f64_to_u64)
        } else {
            s.and_then(parse_u64)
        }
        .map(Value::Unsigned),
        ResourceType::Float => if v.is_str() {
            s.and_then(parse_f64)
        } else if v.is_bool() {
            None
        } else {
            v.cast_f64().filter(|f| f.is_finite())
        }
        .map(Value::Float),
        ResourceType::Boolean => if let Some(b) = v.as_bool() {
            Some(b)
        } else if let Some(t) = s {
            parse_bool(t)
        } else {
            match v.as_i64() {
                Some(0) => Some(false),
                Some(1) => Some(true),
                _ => None,
            }
        }
        .map(Value::Boolean),
        ResourceType::String | ResourceType::Corelnk => {
            let text = match s {
                Some(t) => Some(t.to_string()),
                None if v.is_bool() || v.is_number() => Some(v.to_string()),
                None => None,
            };
            text.map(|t| {
                if kind == ResourceType::String {
                    Value::String(t)
                } else {
                    Value::Corelnk(t)
                }
            })
        }
        ResourceType::Opaque => s.and_then(value::decode_base64).map(Value::Opaque),
        ResourceType::Objlnk => s.and_then(parse_objlnk).map(|(o, i)| Value::Objlnk(o, i)),
        ResourceType::None => None,
    };
    r.ok_or_else(not)
}

fn int_of(v: &BorrowedValue<'_>) -> Option<i64> {
    if let Some(i) = v.as_i64() {
        Some(i)
    } else if v.is_f64() {
        v.as_f64().and_then(value::f64_to_i64)
    } else {
        v.as_str().and_then(parse_i64)
    }
}

/// The JSON text of a value for error messages (strings quoted), shortened.
fn shown(v: &BorrowedValue<'_>) -> String {
    match v.as_str() {
        Some(t) => {
            let mut out = Vec::new();
            write_json_string(&super::clip(t), &mut out);
            String::from_utf8(out).unwrap_or_default()
        }
        None => super::clip(&v.to_string()),
    }
}

// ---- encoding ----

/// Encode a write/create payload in `format` (TLV, SenML JSON, SenML CBOR, LwM2M CBOR, OMA JSON;
/// text/plain, opaque and CBOR for a single resource). `base` is the request path; items' paths are
/// absolute and must lie at or below it.
pub fn encode(format: u16, base: &LwPath, items: &[WriteItem]) -> Result<Vec<u8>, EncodeError> {
    check_items(base, items)?;
    let mut out = Vec::new();
    match format {
        fmt_id::TLV | fmt_id::OLD_TLV => encode_tlv(base, items, &mut out)?,
        fmt_id::SENML_JSON => encode_senml_json(base, items, &mut out),
        fmt_id::OMA_JSON | fmt_id::OLD_JSON => encode_oma_json(base, items, &mut out),
        fmt_id::SENML_CBOR => encode_senml_cbor(base, items, &mut out),
        fmt_id::LWM2M_CBOR => encode_lwm2m_cbor(base, items, &mut out)?,
        fmt_id::TEXT => {
            let v = single(base, items, "text/plain")?;
            encode_text(v, &mut out);
        }
        fmt_id::OPAQUE => match single(base, items, "opaque")? {
            Value::Opaque(b) | Value::Untyped(b) => out.extend_from_slice(b),
            Value::String(s) => out.extend_from_slice(s.as_bytes()),
            _ => return Err(EncodeError::Unrepresentable("opaque carries only bytes")),
        },
        fmt_id::CBOR => {
            let v = single(base, items, "CBOR")?;
            cbor_value(v, &mut out);
        }
        f => return Err(EncodeError::UnsupportedFormat(f)),
    }
    Ok(out)
}

/// Every item lies at or below `base`, is a resource or resource instance, and is representable.
fn check_items(base: &LwPath, items: &[WriteItem]) -> Result<(), EncodeError> {
    for it in items {
        if !it.path.starts_with(base) {
            return Err(EncodeError::OutsideBase {
                path: it.path,
                base: *base,
            });
        }
        if it.path.len() < 3 {
            return Err(EncodeError::BadItemPath(it.path));
        }
        if let Value::Float(f) = it.value {
            if !f.is_finite() {
                return Err(EncodeError::Unrepresentable("a float that is not finite"));
            }
        }
    }
    Ok(())
}

/// The body of a Read-Composite or Observe-Composite (FETCH, LwM2M 1.1): one
/// SenML record per path, holding only its name, the absolute path (`[{"n":"/3/0/9"},...]`, the
/// CBOR form `[{0:"/3/0/9"},...]`). SenML JSON (110) or SenML CBOR (112) only: a device that
/// prefers LwM2M CBOR gets the paths in SenML CBOR and answers in LwM2M CBOR (Anjay takes LwM2M
/// CBOR as the answer's format of a composite read, never as its request's: anjay_dynamic.c,
/// SUPPORTED_COMPOSITE_READ_FORMATS, no input constructor for it).
pub fn encode_paths(format: u16, paths: &[LwPath]) -> Result<Vec<u8>, EncodeError> {
    let mut out = Vec::with_capacity(16 * paths.len() + 2);
    match format {
        fmt_id::SENML_JSON => {
            out.push(b'[');
            for (k, p) in paths.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"n\":\"");
                write_path(p, &mut out);
                out.extend_from_slice(b"\"}");
            }
            out.push(b']');
        }
        fmt_id::SENML_CBOR => {
            cbor::write_array(&mut out, paths.len());
            for p in paths {
                cbor::write_map(&mut out, 1);
                cbor::write_int(&mut out, senml_cbor::N);
                cbor::write_text(&mut out, &p.to_string());
            }
        }
        f => return Err(EncodeError::UnsupportedFormat(f)),
    }
    Ok(out)
}

/// The body of a Write-Composite (iPATCH, LwM2M 1.1): values of any objects, each under
/// its absolute path. SenML (110, 112): one record per value with the whole path as its name and
/// no base name (`[{"n":"/3/0/14","vs":"+02"},...]`); LwM2M CBOR (11544): nested maps from the
/// root (`{3:{0:{14:"+02"}}}`).
pub fn encode_composite(format: u16, items: &[WriteItem]) -> Result<Vec<u8>, EncodeError> {
    check_items(&LwPath::ROOT, items)?;
    let mut out = Vec::new();
    match format {
        fmt_id::SENML_JSON => {
            out.push(b'[');
            for (k, it) in items.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"n\":\"");
                write_path(&it.path, &mut out);
                out.extend_from_slice(b"\",");
                json_value(&it.value, true, &mut out);
                out.push(b'}');
            }
            out.push(b']');
        }
        fmt_id::SENML_CBOR => {
            cbor::write_array(&mut out, items.len());
            for it in items {
                cbor::write_map(&mut out, 2);
                cbor::write_int(&mut out, senml_cbor::N);
                cbor::write_text(&mut out, &it.path.to_string());
                senml_cbor_value(&it.value, &mut out);
            }
        }
        fmt_id::LWM2M_CBOR => encode_lwm2m_cbor(&LwPath::ROOT, items, &mut out)?,
        f => return Err(EncodeError::UnsupportedFormat(f)),
    }
    Ok(out)
}

fn single<'a>(
    base: &LwPath,
    items: &'a [WriteItem],
    fmt: &'static str,
) -> Result<&'a Value, EncodeError> {
    match items {
        [it] if it.path == *base => Ok(&it.value),
        _ => Err(EncodeError::NotSingleResource(fmt)),
    }
}

fn encode_text(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Integer(i) | Value::Time(i) => write_i64(*i, out),
        Value::Unsigned(u) => write_u64(*u, out),
        Value::Float(f) => write_f64(*f, out),
        Value::Boolean(b) => out.push(if *b { b'1' } else { b'0' }),
        Value::String(s) | Value::Corelnk(s) => out.extend_from_slice(s.as_bytes()),
        Value::Objlnk(o, i) => {
            write_u64(*o as u64, out);
            out.push(b':');
            write_u64(*i as u64, out);
        }
        Value::Opaque(b) | Value::Untyped(b) => {
            let s = base64::engine::general_purpose::STANDARD.encode(b);
            out.extend_from_slice(s.as_bytes());
        }
    }
}

/// Items sorted by path (stable), so that elements of one instance/resource are adjacent.
fn sorted(items: &[WriteItem]) -> Vec<&WriteItem> {
    let mut v: Vec<&WriteItem> = items.iter().collect();
    v.sort_by_key(|i| i.path);
    v
}

fn encode_tlv(base: &LwPath, items: &[WriteItem], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let items = sorted(items);
    match base.len() {
        0 => match items.first() {
            None => Ok(()),
            Some(_) => Err(EncodeError::Unrepresentable(
                "TLV cannot carry values of several objects",
            )),
        },
        // Create on an object: one object instance element per instance.
        1 => {
            let mut rest = &items[..];
            while let Some(first) = rest.first() {
                let inst = first.path.ids()[1];
                let n = rest.iter().take_while(|i| i.path.ids()[1] == inst).count();
                let (group, tail) = rest.split_at(n);
                tlv::write_container(out, tlv::OBJECT_INSTANCE, inst, |o| tlv_resources(group, o))?;
                rest = tail;
            }
            Ok(())
        }
        2 => tlv_resources(&items, out),
        3 => match &items[..] {
            [it] if it.path == *base => {
                tlv::write_value(out, tlv::RESOURCE, base.ids()[2], &it.value)
            }
            _ => {
                if let Some(it) = items.iter().find(|i| i.path.len() != 4) {
                    return Err(EncodeError::BadItemPath(it.path));
                }
                tlv::write_container(out, tlv::MULTIPLE_RESOURCE, base.ids()[2], |o| {
                    items.iter().try_for_each(|it| {
                        tlv::write_value(o, tlv::RESOURCE_INSTANCE, it.path.ids()[3], &it.value)
                    })
                })
            }
        },
        _ => {
            for it in &items {
                tlv::write_value(out, tlv::RESOURCE_INSTANCE, it.path.ids()[3], &it.value)?;
            }
            Ok(())
        }
    }
}

/// Resource and multiple-resource elements for items of one object instance (sorted).
fn tlv_resources(items: &[&WriteItem], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut rest = items;
    while let Some(first) = rest.first() {
        let res = first.path.ids()[2];
        if first.path.len() == 3 {
            if rest
                .get(1)
                .is_some_and(|n| n.path.len() == 4 && n.path.ids()[2] == res)
            {
                return Err(EncodeError::BadItemPath(rest[1].path));
            }
            tlv::write_value(out, tlv::RESOURCE, res, &first.value)?;
            rest = &rest[1..];
            continue;
        }
        let n = rest
            .iter()
            .take_while(|i| i.path.len() == 4 && i.path.ids()[..3] == first.path.ids()[..3])
            .count();
        let (group, tail) = rest.split_at(n);
        tlv::write_container(out, tlv::MULTIPLE_RESOURCE, res, |o| {
            group.iter().try_for_each(|it| {
                tlv::write_value(o, tlv::RESOURCE_INSTANCE, it.path.ids()[3], &it.value)
            })
        })?;
        rest = tail;
    }
    Ok(())
}

/// The SenML base name for `base`: `"/3/0/"` (`"/"` for the root).
fn base_name(base: &LwPath, out: &mut Vec<u8>) {
    if !base.is_empty() {
        write_path(base, out);
    }
    out.push(b'/');
}

/// The name of `path` relative to `base` (`"1"`, `"7/0"`, `""` when equal).
fn rel_name(base: &LwPath, path: &LwPath, out: &mut Vec<u8>) {
    for (k, id) in path.ids()[base.len()..].iter().enumerate() {
        if k > 0 {
            out.push(b'/');
        }
        write_u64(*id as u64, out);
    }
}

/// The SenML base name and name of `path` in a write to `base`, such that `bn` + `n` (RFC 8428
/// concatenation) is exactly the path. A value at the request path itself carries it whole in `bn`
/// (`"/3/0/14"`, no `n`); values below it share `bn` = `"/3/0/"` with `n` = `"1"`, `"7/0"`.
fn senml_names(base: &LwPath, path: &LwPath) -> (String, Option<String>) {
    if path == base {
        return (base.to_string(), None);
    }
    let bn = if base.is_empty() {
        "/".to_string()
    } else {
        format!("{base}/")
    };
    let n = path.ids()[base.len()..].iter().map(u16::to_string);
    (bn, Some(n.collect::<Vec<_>>().join("/")))
}

/// Each record's `bn` (only where it differs from the base name in force, so always on the first
/// record), `n` (where the record is below its base name) and value.
fn senml_records<'a>(
    base: &'a LwPath,
    items: &'a [WriteItem],
) -> impl Iterator<Item = (Option<String>, Option<String>, &'a Value)> + 'a {
    let mut in_force: Option<String> = None;
    items.iter().map(move |it| {
        let (bn, n) = senml_names(base, &it.path);
        let new_bn = (in_force.as_ref() != Some(&bn)).then(|| bn.clone());
        in_force = Some(bn);
        (new_bn, n, &it.value)
    })
}

fn encode_senml_json(base: &LwPath, items: &[WriteItem], out: &mut Vec<u8>) {
    out.push(b'[');
    for (k, (bn, n, value)) in senml_records(base, items).enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.push(b'{');
        for (label, text) in [("bn", bn), ("n", n)] {
            if let Some(t) = text {
                write_json_string(label, out);
                out.push(b':');
                write_json_string(&t, out);
                out.push(b',');
            }
        }
        json_value(value, true, out);
        out.push(b'}');
    }
    out.push(b']');
}

/// OMA LwM2M JSON: `bn` + `n` is each written path, as in SenML: a write of the resource
/// itself carries it whole in `bn` (`"/3/0/14"`, `"n":""`).
fn encode_oma_json(base: &LwPath, items: &[WriteItem], out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"bn\":\"");
    if items.iter().all(|it| it.path == *base) && !base.is_empty() {
        write_path(base, out);
    } else {
        base_name(base, out);
    }
    out.extend_from_slice(b"\",\"e\":[");
    for (k, it) in items.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"n\":\"");
        rel_name(base, &it.path, out);
        out.extend_from_slice(b"\",");
        json_value(&it.value, false, out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
}

/// One JSON value field; opaque goes as `vd` (base64url, SenML) or `sv` (base64, OMA JSON).
fn json_value(v: &Value, senml: bool, out: &mut Vec<u8>) {
    let num: &[u8] = b"\"v\":";
    let (s, b, lnk): (&[u8], &[u8], &[u8]) = if senml {
        (b"\"vs\":", b"\"vb\":", b"\"vlo\":")
    } else {
        (b"\"sv\":", b"\"bv\":", b"\"ov\":")
    };
    match v {
        Value::Integer(i) | Value::Time(i) => {
            out.extend_from_slice(num);
            write_i64(*i, out);
        }
        Value::Unsigned(u) => {
            out.extend_from_slice(num);
            write_u64(*u, out);
        }
        Value::Float(f) => {
            out.extend_from_slice(num);
            write_f64(*f, out);
        }
        Value::Boolean(x) => {
            out.extend_from_slice(b);
            out.extend_from_slice(if *x { b"true" } else { b"false" });
        }
        Value::String(t) | Value::Corelnk(t) => {
            out.extend_from_slice(s);
            write_json_string(t, out);
        }
        Value::Objlnk(o, i) => {
            out.extend_from_slice(lnk);
            out.push(b'"');
            write_u64(*o as u64, out);
            out.push(b':');
            write_u64(*i as u64, out);
            out.push(b'"');
        }
        Value::Opaque(d) | Value::Untyped(d) => {
            if senml {
                out.extend_from_slice(b"\"vd\":\"");
                // RFC 8428 §5: `vd` is base64url (RFC 4648 §5) without padding, and that is
                // what is sent (evidence in docs/mqtt.md, "Opaque values in SenML JSON"):
                // - Eclipse Leshan decodes only that: SenMLJsonJacksonEncoderDecoder.java:61-62
                //   (BASE64URL, padding FORBIDEN; Java's URL decoder refuses `+` and `/`);
                // - Anjay too: anjay_senml_in.c:791-792 (AVS_BASE64_URL_SAFE_CHARS, padding
                //   character '\0': `+`, `/` and `=` all fail avs_base64_decode_custom);
                // - Wakaama decodes only the standard alphabet, padded or not (core/utils.c:1081,
                //   prv_base64Value: `+` and `/`; `-` or `_` fail the record, hence its 4.06).
                // No one string suits all three when the bytes encode to `-`/`_` (`+`/`/`): then
                // base64url keeps Leshan and Anjay. Otherwise the unpadded base64url text is also
                // unpadded standard base64, which Wakaama decodes, so all three read it.
                let t = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d);
                out.extend_from_slice(t.as_bytes());
            } else {
                out.extend_from_slice(s);
                out.push(b'"');
                super::json_out::write_base64(d, out);
            }
            out.push(b'"');
        }
    }
}

fn cbor_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Integer(i) | Value::Time(i) => cbor::write_int(out, *i),
        Value::Unsigned(u) => cbor::write_uint(out, *u),
        Value::Float(f) => cbor::write_float(out, *f),
        Value::Boolean(b) => cbor::write_bool(out, *b),
        Value::String(s) | Value::Corelnk(s) => cbor::write_text(out, s),
        Value::Opaque(b) | Value::Untyped(b) => cbor::write_bytes(out, b),
        Value::Objlnk(o, i) => cbor::write_text(out, &format!("{o}:{i}")),
    }
}

fn encode_senml_cbor(base: &LwPath, items: &[WriteItem], out: &mut Vec<u8>) {
    cbor::write_array(out, items.len());
    for (bn, n, value) in senml_records(base, items) {
        cbor::write_map(
            out,
            1 + usize::from(bn.is_some()) + usize::from(n.is_some()),
        );
        for (label, text) in [(senml_cbor::BN, bn), (senml_cbor::N, n)] {
            if let Some(t) = text {
                cbor::write_int(out, label);
                cbor::write_text(out, &t);
            }
        }
        senml_cbor_value(value, out);
    }
}

/// A SenML CBOR record's value: its label, then the value.
fn senml_cbor_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Integer(_) | Value::Time(_) | Value::Unsigned(_) | Value::Float(_) => {
            cbor::write_int(out, senml_cbor::V)
        }
        Value::Boolean(_) => cbor::write_int(out, senml_cbor::VB),
        Value::String(_) | Value::Corelnk(_) => cbor::write_int(out, senml_cbor::VS),
        Value::Opaque(_) | Value::Untyped(_) => cbor::write_int(out, senml_cbor::VD),
        Value::Objlnk(..) => cbor::write_text(out, senml_cbor::VLO),
    }
    cbor_value(value, out);
}

/// LwM2M CBOR: `{[base ids]: {nested maps relative to base}}`, or `{[path]: value}` for a single
/// value at the base path.
fn encode_lwm2m_cbor(
    base: &LwPath,
    items: &[WriteItem],
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let items = sorted(items);
    if let [it] = &items[..] {
        if it.path == *base {
            cbor::write_map(out, 1);
            cbor_path(base.ids(), out);
            cbor_value(&it.value, out);
            return Ok(());
        }
    }
    if base.is_empty() {
        return cbor_level(&items, 0, out);
    }
    cbor::write_map(out, 1);
    cbor_path(base.ids(), out);
    cbor_level(&items, base.len(), out)
}

fn cbor_path(ids: &[u16], out: &mut Vec<u8>) {
    if let [id] = ids {
        cbor::write_uint(out, *id as u64);
    } else {
        cbor::write_array(out, ids.len());
        for id in ids {
            cbor::write_uint(out, *id as u64);
        }
    }
}

/// A map of the (sorted) items keyed by their path component at `depth`.
fn cbor_level(items: &[&WriteItem], depth: usize, out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let mut groups = 0;
    let mut prev = None;
    for it in items {
        let id = it.path.ids().get(depth).copied();
        if id.is_none() {
            return Err(EncodeError::BadItemPath(it.path));
        }
        if id != prev {
            groups += 1;
            prev = id;
        }
    }
    cbor::write_map(out, groups);
    let mut rest = items;
    while let Some(first) = rest.first() {
        let id = first.path.ids()[depth];
        let n = rest
            .iter()
            .take_while(|i| i.path.ids()[depth] == id)
            .count();
        let (group, tail) = rest.split_at(n);
        cbor::write_uint(out, id as u64);
        if first.path.len() == depth + 1 {
            if n > 1 {
                return Err(EncodeError::BadItemPath(group[1].path));
            }
            cbor_value(&first.value, out);
        } else {
            cbor_level(group, depth + 1, out)?;
        }
        rest = tail;
    }
    Ok(())
}
