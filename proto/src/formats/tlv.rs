//! OMA LwM2M TLV (OMA-TS-LightweightM2M-V1_0 §6.4.3).
//!
//! Type byte: bits 7-6 identifier type (00 object instance, 01 resource instance, 10 multiple
//! resource, 11 resource with value); bit 5 identifier width (0: 8 bits, 1: 16 bits); bits 4-3
//! length type (00: length in bits 2-0, 01/10/11: 8/16/24-bit length field).

use super::value::{resource_kind, typed_from_bytes, ContentItem, Value};
use super::write::EncodeError;
use super::DecodeError;
use crate::model::{LwPath, ObjectModel};

pub(crate) const OBJECT_INSTANCE: u8 = 0;
pub(crate) const RESOURCE_INSTANCE: u8 = 1;
pub(crate) const MULTIPLE_RESOURCE: u8 = 2;
pub(crate) const RESOURCE: u8 = 3;

struct Tlv<'a> {
    kind: u8,
    id: u16,
    value: &'a [u8],
}

/// The path depth an element of this identifier type sits at.
fn level(kind: u8) -> usize {
    match kind {
        OBJECT_INSTANCE => 2,
        RESOURCE | MULTIPLE_RESOURCE => 3,
        _ => 4,
    }
}

/// Reads one element at `*pos`; `base` is the offset of `buf` in the whole payload (for errors).
fn next<'a>(buf: &'a [u8], pos: &mut usize, base: usize) -> Result<Tlv<'a>, DecodeError> {
    let truncated = |at: usize| DecodeError::Truncated(base + at);
    let mut p = *pos;
    let t = *buf.get(p).ok_or(truncated(p))?;
    p += 1;
    let id = if t & 0x20 != 0 {
        let b = buf.get(p..p + 2).ok_or(truncated(buf.len()))?;
        p += 2;
        u16::from_be_bytes([b[0], b[1]])
    } else {
        let b = *buf.get(p).ok_or(truncated(buf.len()))?;
        p += 1;
        b as u16
    };
    let len_bytes = ((t >> 3) & 0x03) as usize;
    let len = if len_bytes == 0 {
        (t & 0x07) as usize
    } else {
        let b = buf.get(p..p + len_bytes).ok_or(truncated(buf.len()))?;
        p += len_bytes;
        b.iter().fold(0usize, |acc, &x| (acc << 8) | x as usize)
    };
    if buf.len() - p < len {
        return Err(truncated(buf.len()));
    }
    let value = &buf[p..p + len];
    *pos = p + len;
    Ok(Tlv {
        kind: t >> 6,
        id,
        value,
    })
}

/// Decodes a TLV payload answering `req`: elements one level below the request path, or the
/// requested element itself (a read of `/3/0` may come with or without its instance wrapper).
pub(crate) fn decode(
    payload: &[u8],
    req: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
) -> Result<(), DecodeError> {
    let depth = req.len();
    let mut pos = 0;
    while pos < payload.len() {
        let start = pos;
        let tlv = next(payload, &mut pos, 0)?;
        let lvl = level(tlv.kind);
        let parent = if lvl == depth + 1 {
            *req
        } else if lvl == depth && depth > 0 {
            LwPath::from_ids(&req.ids()[..depth - 1]).map_err(|_| DecodeError::Tlv("bad path"))?
        } else {
            return Err(DecodeError::Tlv(
                "element type does not match the request path",
            ));
        };
        element(&tlv, &parent, model, out, start)?;
    }
    Ok(())
}

fn element(
    tlv: &Tlv<'_>,
    parent: &LwPath,
    model: &dyn ObjectModel,
    out: &mut Vec<ContentItem>,
    offset: usize,
) -> Result<(), DecodeError> {
    let path = parent
        .child(tlv.id)
        .ok_or(DecodeError::Tlv("path deeper than four levels"))?;
    match tlv.kind {
        OBJECT_INSTANCE | MULTIPLE_RESOURCE => {
            let (allowed, why) = if tlv.kind == OBJECT_INSTANCE {
                (
                    [RESOURCE, MULTIPLE_RESOURCE],
                    "object instance may only contain resources",
                )
            } else {
                (
                    [RESOURCE_INSTANCE, RESOURCE_INSTANCE],
                    "multiple resource may only contain resource instances",
                )
            };
            let mut pos = 0;
            while pos < tlv.value.len() {
                let start = pos;
                let inner = next(tlv.value, &mut pos, offset)?;
                if !allowed.contains(&inner.kind) {
                    return Err(DecodeError::Tlv(why));
                }
                element(&inner, &path, model, out, offset + start)?;
            }
        }
        _ => out.push(ContentItem {
            path,
            value: typed_from_bytes(resource_kind(model, &path), tlv.value),
        }),
    }
    Ok(())
}

// ---- encoding ----

/// Appends a TLV header for a value of `len` bytes.
pub(crate) fn write_header(
    out: &mut Vec<u8>,
    kind: u8,
    id: u16,
    len: usize,
) -> Result<(), EncodeError> {
    let mut t = kind << 6;
    if id > 0xff {
        t |= 0x20;
    }
    let len_bytes = if len < 8 {
        t |= len as u8;
        0
    } else if len <= 0xff {
        t |= 0x08;
        1
    } else if len <= 0xffff {
        t |= 0x10;
        2
    } else if len <= 0xff_ffff {
        t |= 0x18;
        3
    } else {
        return Err(EncodeError::TooLarge(len));
    };
    out.push(t);
    if id > 0xff {
        out.extend_from_slice(&id.to_be_bytes());
    } else {
        out.push(id as u8);
    }
    out.extend_from_slice(&(len as u32).to_be_bytes()[4 - len_bytes..]);
    Ok(())
}

/// Smallest conformant big-endian signed encoding (1, 2, 4 or 8 bytes).
pub(crate) fn int_bytes(v: i64, buf: &mut [u8; 8]) -> &[u8] {
    *buf = v.to_be_bytes();
    if i8::try_from(v).is_ok() {
        &buf[7..]
    } else if i16::try_from(v).is_ok() {
        &buf[6..]
    } else if i32::try_from(v).is_ok() {
        &buf[4..]
    } else {
        &buf[..]
    }
}

/// Smallest unsigned big-endian encoding (1, 2, 4 or 8 bytes).
pub(crate) fn uint_bytes(v: u64, buf: &mut [u8; 8]) -> &[u8] {
    *buf = v.to_be_bytes();
    if v <= 0xff {
        &buf[7..]
    } else if v <= 0xffff {
        &buf[6..]
    } else if v <= 0xffff_ffff {
        &buf[4..]
    } else {
        &buf[..]
    }
}

/// The raw value bytes of a TLV element (also the raw form used for hex write values).
pub(crate) fn value_bytes<'v>(v: &'v Value, buf: &'v mut [u8; 8]) -> &'v [u8] {
    match v {
        Value::Integer(i) | Value::Time(i) => int_bytes(*i, buf),
        Value::Unsigned(u) => uint_bytes(*u, buf),
        Value::Float(f) => {
            let s = *f as f32;
            if s as f64 == *f || f.is_nan() {
                buf[..4].copy_from_slice(&s.to_be_bytes());
                &buf[..4]
            } else {
                *buf = f.to_be_bytes();
                &buf[..]
            }
        }
        Value::Boolean(b) => {
            buf[0] = *b as u8;
            &buf[..1]
        }
        Value::Objlnk(o, i) => {
            buf[..2].copy_from_slice(&o.to_be_bytes());
            buf[2..4].copy_from_slice(&i.to_be_bytes());
            &buf[..4]
        }
        Value::String(s) | Value::Corelnk(s) => s.as_bytes(),
        Value::Opaque(b) | Value::Untyped(b) => b,
    }
}

/// Appends one element carrying a value.
pub(crate) fn write_value(
    out: &mut Vec<u8>,
    kind: u8,
    id: u16,
    v: &Value,
) -> Result<(), EncodeError> {
    let mut buf = [0u8; 8];
    let b = value_bytes(v, &mut buf);
    write_header(out, kind, id, b.len())?;
    out.extend_from_slice(b);
    Ok(())
}

/// Appends a container element (object instance or multiple resource) whose content `fill` writes.
pub(crate) fn write_container(
    out: &mut Vec<u8>,
    kind: u8,
    id: u16,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>,
) -> Result<(), EncodeError> {
    let mut inner = Vec::new();
    fill(&mut inner)?;
    write_header(out, kind, id, inner.len())?;
    out.extend_from_slice(&inner);
    Ok(())
}
