//! Typed LwM2M values and the conversions the codecs share.

use std::fmt::Write as _;

use base64::Engine as _;

use crate::model::{LwPath, ObjectModel, ResourceType};

/// A decoded (or to-be-written) resource value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Integer(i64),
    Unsigned(u64),
    Float(f64),
    Boolean(bool),
    String(String),
    Opaque(Vec<u8>),
    /// Seconds since the Unix epoch.
    Time(i64),
    /// Object link: object id, instance id.
    Objlnk(u16, u16),
    Corelnk(String),
    /// No definition known: raw bytes, rendered base64 and flagged untyped.
    Untyped(Vec<u8>),
}

/// One value of a decoded payload, at its absolute path.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentItem {
    pub path: LwPath,
    pub value: Value,
}

/// A SenML record's time: base time plus time, None when neither was given (RFC 8428
/// §4.5.3; whether it is relative is the caller's to resolve).
pub(crate) fn record_time(bt: Option<f64>, t: Option<f64>) -> Option<f64> {
    match (bt, t) {
        (None, None) => None,
        (b, t) => Some(b.unwrap_or(0.0) + t.unwrap_or(0.0)),
    }
}

/// The defined type of the resource `path` points into (resource or resource instance).
pub(crate) fn resource_kind(model: &dyn ObjectModel, path: &LwPath) -> Option<ResourceType> {
    match (path.object(), path.resource()) {
        (Some(o), Some(r)) => model.resource(o, r).map(|d| d.kind),
        _ => None,
    }
}

/// True if the model defines `path`'s resource as multiple-instance.
pub(crate) fn is_multiple(model: &dyn ObjectModel, path: &LwPath) -> bool {
    match (path.object(), path.resource()) {
        (Some(o), Some(r)) => model.resource(o, r).is_some_and(|d| d.multiple),
        _ => false,
    }
}

/// Big-endian signed integer of 1, 2, 4 or 8 bytes.
pub(crate) fn be_signed(b: &[u8]) -> Option<i64> {
    Some(match b.len() {
        1 => b[0] as i8 as i64,
        2 => i16::from_be_bytes([b[0], b[1]]) as i64,
        4 => i32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64,
        8 => i64::from_be_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

/// Big-endian unsigned integer of 1, 2, 4 or 8 bytes.
pub(crate) fn be_unsigned(b: &[u8]) -> Option<u64> {
    Some(match b.len() {
        1 => b[0] as u64,
        2 => u16::from_be_bytes([b[0], b[1]]) as u64,
        4 => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64,
        8 => u64::from_be_bytes(b.try_into().ok()?),
        _ => return None,
    })
}

/// A fixed stack buffer for formatting short strings without allocating.
pub(crate) struct StackStr {
    buf: [u8; 64],
    len: usize,
}

impl StackStr {
    pub(crate) fn new() -> Self {
        Self {
            buf: [0; 64],
            len: 0,
        }
    }
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl std::fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(std::fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Widens a single-precision float the way a reader expects: `3.14f32` becomes `3.14`, not
/// `3.140000104904175` (the shortest decimal that identifies the `f32`).
pub(crate) fn f32_to_f64(f: f32) -> f64 {
    if !f.is_finite() {
        return f as f64;
    }
    let mut s = StackStr::new();
    if write!(s, "{f}").is_ok() {
        if let Ok(v) = s.as_str().parse::<f64>() {
            return v;
        }
    }
    f as f64
}

/// Interprets raw value bytes (TLV, or hex-encoded write values) as the defined type.
/// `None` when the bytes do not fit the type.
pub(crate) fn from_bytes(kind: ResourceType, b: &[u8]) -> Option<Value> {
    Some(match kind {
        ResourceType::Integer => Value::Integer(be_signed(b)?),
        ResourceType::UnsignedInteger => Value::Unsigned(be_unsigned(b)?),
        ResourceType::Time => Value::Time(be_signed(b)?),
        ResourceType::Float => match b.len() {
            4 => Value::Float(f32_to_f64(f32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
            8 => Value::Float(f64::from_be_bytes(b.try_into().ok()?)),
            _ => return None,
        },
        ResourceType::Boolean => match b {
            [0] => Value::Boolean(false),
            [1] => Value::Boolean(true),
            _ => return None,
        },
        ResourceType::String => Value::String(std::str::from_utf8(b).ok()?.to_string()),
        ResourceType::Corelnk => Value::Corelnk(std::str::from_utf8(b).ok()?.to_string()),
        ResourceType::Opaque => Value::Opaque(b.to_vec()),
        ResourceType::Objlnk => match b {
            [a0, a1, b0, b1] => Value::Objlnk(
                u16::from_be_bytes([*a0, *a1]),
                u16::from_be_bytes([*b0, *b1]),
            ),
            _ => return None,
        },
        ResourceType::None => return None,
    })
}

/// Types raw bytes from the model, falling back to `Untyped` for unknown resources or data that
/// does not fit the defined type.
pub(crate) fn typed_from_bytes(kind: Option<ResourceType>, b: &[u8]) -> Value {
    kind.and_then(|k| from_bytes(k, b))
        .unwrap_or_else(|| Value::Untyped(b.to_vec()))
}

/// Parses `"3:0"`.
pub(crate) fn parse_objlnk(s: &str) -> Option<(u16, u16)> {
    let (o, i) = s.trim().split_once(':')?;
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit());
    if !digits(o) || !digits(i) {
        return None;
    }
    Some((o.parse().ok()?, i.parse().ok()?))
}

/// Parses a boolean as text: `0`/`1`/`true`/`false` (case-insensitive).
pub(crate) fn parse_bool(s: &str) -> Option<bool> {
    let t = s.trim();
    if t == "1" || t.eq_ignore_ascii_case("true") {
        Some(true)
    } else if t == "0" || t.eq_ignore_ascii_case("false") {
        Some(false)
    } else {
        None
    }
}

/// Parses an integer given as text; an integral decimal such as `"5.0"` is accepted.
pub(crate) fn parse_i64(s: &str) -> Option<i64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<i64>() {
        return Some(v);
    }
    let f: f64 = t.parse().ok()?;
    f64_to_i64(f)
}

/// Parses an unsigned integer given as text; an integral decimal such as `"5.0"` is accepted.
pub(crate) fn parse_u64(s: &str) -> Option<u64> {
    let t = s.trim();
    if let Ok(v) = t.parse::<u64>() {
        return Some(v);
    }
    let f: f64 = t.parse().ok()?;
    f64_to_u64(f)
}

/// Parses a finite float given as text.
pub(crate) fn parse_f64(s: &str) -> Option<f64> {
    let t = s.trim();
    // Rust also accepts "inf"/"nan"; a number must start like one.
    let first = t.bytes().next()?;
    if !(first.is_ascii_digit() || first == b'-' || first == b'+' || first == b'.') {
        return None;
    }
    t.parse::<f64>().ok().filter(|f| f.is_finite())
}

pub(crate) fn f64_to_i64(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; i64::MAX is not.
    if f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)
    {
        Some(f as i64)
    } else {
        None
    }
}

pub(crate) fn f64_to_u64(f: f64) -> Option<u64> {
    if f.fract() == 0.0 && (0.0..18_446_744_073_709_551_616.0).contains(&f) {
        Some(f as u64)
    } else {
        None
    }
}

/// Decodes base64 liberally: standard or URL-safe alphabet, with or without padding.
pub(crate) fn decode_base64(s: &str) -> Option<Vec<u8>> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let t = s.trim();
    let url = t.contains(['-', '_']);
    let padded = t.ends_with('=');
    let engine = match (url, padded) {
        (false, true) => &STANDARD,
        (false, false) => &STANDARD_NO_PAD,
        (true, true) => &URL_SAFE,
        (true, false) => &URL_SAFE_NO_PAD,
    };
    engine.decode(t).ok()
}

/// Parses text/plain content as the defined type; `None` if it does not fit.
pub(crate) fn from_text(kind: ResourceType, s: &str) -> Option<Value> {
    Some(match kind {
        ResourceType::Integer => Value::Integer(parse_i64(s)?),
        ResourceType::UnsignedInteger => Value::Unsigned(parse_u64(s)?),
        ResourceType::Time => Value::Time(parse_i64(s)?),
        ResourceType::Float => Value::Float(parse_f64(s)?),
        ResourceType::Boolean => Value::Boolean(parse_bool(s)?),
        ResourceType::String => Value::String(s.to_string()),
        ResourceType::Corelnk => Value::Corelnk(s.to_string()),
        ResourceType::Objlnk => {
            let (o, i) = parse_objlnk(s)?;
            Value::Objlnk(o, i)
        }
        ResourceType::Opaque => Value::Opaque(decode_base64(s)?),
        ResourceType::None => return None,
    })
}

/// Converts a value that carried its own type (JSON, SenML, CBOR) to the model's type where the
/// conversion is lossless; otherwise returns it unchanged.
pub(crate) fn coerce(kind: Option<ResourceType>, v: Value) -> Value {
    let Some(kind) = kind else { return v };
    match (kind, &v) {
        (ResourceType::Integer, Value::Unsigned(u)) => {
            i64::try_from(*u).map(Value::Integer).unwrap_or(v)
        }
        (ResourceType::Integer, Value::Float(f)) => f64_to_i64(*f).map(Value::Integer).unwrap_or(v),
        (ResourceType::Integer, Value::Time(t)) => Value::Integer(*t),
        (ResourceType::UnsignedInteger, Value::Integer(i)) => {
            u64::try_from(*i).map(Value::Unsigned).unwrap_or(v)
        }
        (ResourceType::UnsignedInteger, Value::Float(f)) => {
            f64_to_u64(*f).map(Value::Unsigned).unwrap_or(v)
        }
        (ResourceType::Time, Value::Integer(i)) => Value::Time(*i),
        (ResourceType::Time, Value::Unsigned(u)) => i64::try_from(*u).map(Value::Time).unwrap_or(v),
        (ResourceType::Time, Value::Float(f)) => f64_to_i64(*f).map(Value::Time).unwrap_or(v),
        (ResourceType::Float, Value::Integer(i)) => Value::Float(*i as f64),
        (ResourceType::Float, Value::Unsigned(u)) => Value::Float(*u as f64),
        (ResourceType::Boolean, Value::Integer(0))
        | (ResourceType::Boolean, Value::Unsigned(0)) => Value::Boolean(false),
        (ResourceType::Boolean, Value::Integer(1))
        | (ResourceType::Boolean, Value::Unsigned(1)) => Value::Boolean(true),
        (ResourceType::Objlnk, Value::String(s)) => match parse_objlnk(s) {
            Some((o, i)) => Value::Objlnk(o, i),
            None => v,
        },
        (ResourceType::Corelnk, Value::String(_)) => match v {
            Value::String(s) => Value::Corelnk(s),
            other => other,
        },
        _ => v,
    }
}

/// Value of a CBOR integer: `Integer` when it fits an i64, else `Unsigned`.
pub(crate) fn from_u64(u: u64) -> Value {
    i64::try_from(u)
        .map(Value::Integer)
        .unwrap_or(Value::Unsigned(u))
}
