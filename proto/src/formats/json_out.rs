//! Rendering content items as the MQTT `content` JSON array.

use std::io::Write as _;

use base64::Engine as _;

use super::value::{ContentItem, Value};
use crate::model::LwPath;

/// Render items as the MQTT `content` JSON array: `[{"path":"/3/0/1","value":"..."}...]`; numbers
/// as JSON numbers, booleans as JSON booleans, opaque & untyped as base64 strings, objlnk as
/// `"O:I"`; untyped items also carry `"type":"untyped"`. Appends to `out`. Non-finite floats become
/// `null`. Strings are escaped per JSON.
pub fn write_content_json(items: &[ContentItem], out: &mut Vec<u8>) {
    write_items(items.iter().map(|i| (i, None)), out);
}

/// The `content` array of items, each with its time when it has one.
pub(crate) fn write_items<'a>(
    items: impl Iterator<Item = (&'a ContentItem, Option<f64>)>,
    out: &mut Vec<u8>,
) {
    out.push(b'[');
    for (i, (item, time)) in items.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"path\":\"");
        write_path(&item.path, out);
        out.extend_from_slice(b"\",\"value\":");
        write_value(&item.value, out);
        if matches!(item.value, Value::Untyped(_)) {
            out.extend_from_slice(b",\"type\":\"untyped\"");
        }
        if let Some(t) = time {
            out.extend_from_slice(b",\"time\":");
            write_f64_compact(t, out);
        }
        out.push(b'}');
    }
    out.push(b']');
}

/// A float as a JSON number, integral values without a fraction (`1700000000`).
fn write_f64_compact(v: f64, out: &mut Vec<u8>) {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
        write_i64(v as i64, out);
    } else {
        write_f64(v, out);
    }
}

/// Appends `/3/0/1` (`/` for the root).
pub(crate) fn write_path(p: &LwPath, out: &mut Vec<u8>) {
    if p.is_empty() {
        out.push(b'/');
    }
    for id in p.ids() {
        out.push(b'/');
        write_u64(*id as u64, out);
    }
}

pub(crate) fn write_u64(mut v: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

pub(crate) fn write_i64(v: i64, out: &mut Vec<u8>) {
    if v < 0 {
        out.push(b'-');
    }
    write_u64(v.unsigned_abs(), out);
}

/// A float as a JSON number (`null` when not finite).
pub(crate) fn write_f64(v: f64, out: &mut Vec<u8>) {
    if v.is_finite() {
        // Debug keeps a fraction or exponent ("100.0", "1e300"): valid JSON, and shortest round-trip.
        let _ = write!(out, "{v:?}");
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Appends standard base64 (with padding) of `b`.
pub(crate) fn write_base64(b: &[u8], out: &mut Vec<u8>) {
    let engine = &base64::engine::general_purpose::STANDARD;
    let start = out.len();
    let n = base64::encoded_len(b.len(), true).unwrap_or(0);
    out.resize(start + n, 0);
    match engine.encode_slice(b, &mut out[start..]) {
        Ok(written) => out.truncate(start + written),
        Err(_) => out.truncate(start),
    }
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Integer(i) | Value::Time(i) => write_i64(*i, out),
        Value::Unsigned(u) => write_u64(*u, out),
        Value::Float(f) => write_f64(*f, out),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::String(s) | Value::Corelnk(s) => write_json_string(s, out),
        Value::Opaque(b) | Value::Untyped(b) => {
            out.push(b'"');
            write_base64(b, out);
            out.push(b'"');
        }
        Value::Objlnk(o, i) => {
            out.push(b'"');
            write_u64(*o as u64, out);
            out.push(b':');
            write_u64(*i as u64, out);
            out.push(b'"');
        }
    }
}

/// Appends `s` as a JSON string with escaping (quotes, backslash, control characters).
pub fn write_json_string(s: &str, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: &[u8] = match c {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(c >> 4) as usize],
                HEX[(c & 0xf) as usize],
            ]);
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}
