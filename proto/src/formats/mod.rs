//! LwM2M content formats: decoding device payloads into typed content items, rendering them as the
//! MQTT `content` JSON, and encoding writes/creates.
//!
//! One codec per file; this module holds the public API and the dispatch by Content-Format number.
//! Every decoder is total on hostile input: no panics, lengths are checked against the remaining bytes
//! before anything is allocated, and nesting depth is bounded.

mod cbor;
mod json_out;
mod link;
mod lwm2m_cbor;
mod oma_json;
mod opaque;
mod senml_cbor;
mod senml_json;
mod text;
mod tlv;
mod value;
mod write;

#[cfg(test)]
mod tests;

use crate::model::{LwPath, ObjectModel};

pub use json_out::{write_content_json, write_json_string};
pub use link::{parse_links, split_links, Link};
pub use value::{ContentItem, Value};
pub use write::{
    encode, encode_composite, encode_paths, parse_write_value, EncodeError, WriteItem,
};

/// CoAP Content-Format numbers of the LwM2M data formats.
pub mod fmt_id {
    /// text/plain
    pub const TEXT: u16 = 0;
    /// application/link-format
    pub const LINK: u16 = 40;
    /// application/octet-stream
    pub const OPAQUE: u16 = 42;
    /// application/cbor (a single resource value, LwM2M 1.1)
    pub const CBOR: u16 = 60;
    /// application/senml+json
    pub const SENML_JSON: u16 = 110;
    /// application/senml+cbor
    pub const SENML_CBOR: u16 = 112;
    /// application/vnd.oma.lwm2m+tlv
    pub const TLV: u16 = 11542;
    /// application/vnd.oma.lwm2m+json
    pub const OMA_JSON: u16 = 11543;
    /// application/vnd.oma.lwm2m+cbor
    pub const LWM2M_CBOR: u16 = 11544;
    /// Pre-registration number of TLV used by early LwM2M 1.0 clients.
    pub const OLD_TLV: u16 = 1542;
    /// Pre-registration number of OMA JSON used by early LwM2M 1.0 clients.
    pub const OLD_JSON: u16 = 1543;
}

/// Maximum nesting accepted in CBOR payloads.
pub(crate) const MAX_DEPTH: usize = 16;

/// Why a device payload could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The Content-Format is not one the gateway decodes.
    #[error("unsupported content format {0}")]
    UnsupportedFormat(u16),
    /// The payload ends in the middle of an element (byte offset where more data was needed).
    #[error("payload truncated at byte {0}")]
    Truncated(usize),
    /// TLV structure is wrong: an element at a level the request path does not allow, or bad nesting.
    #[error("invalid TLV: {0}")]
    Tlv(&'static str),
    /// CBOR is not well-formed (reserved encodings, stray break, bad UTF-8, ...).
    #[error("invalid CBOR: {0}")]
    Cbor(&'static str),
    /// JSON is not well-formed.
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Well-formed JSON/CBOR that does not have the shape the format requires.
    #[error("invalid {format} payload: {reason}")]
    Structure {
        format: &'static str,
        reason: &'static str,
    },
    /// A name in the payload does not resolve to an LwM2M path.
    #[error("invalid path {0:?} in payload")]
    BadPath(String),
    /// A value is malformed for its encoding (bad object link, bad base64, ...).
    #[error("invalid value at {path}: {reason}")]
    BadValue { path: String, reason: &'static str },
    /// The format carries a single resource value but the request path is not a resource.
    #[error("{0} carries a single resource value, but the path is {1}")]
    NotSingleResource(&'static str, LwPath),
    /// Nesting deeper than the decoder accepts.
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    /// Bytes left over after a complete payload.
    #[error("trailing bytes after the {0} payload")]
    TrailingBytes(&'static str),
    /// A link-format entry is malformed.
    #[error("invalid link-format entry {0:?}")]
    BadLink(String),
}

/// Shortens attacker-controlled text before it goes into an error message.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// One value of a Send (`POST /dp`), with the absolute time its record carried.
#[derive(Debug, Clone, PartialEq)]
pub struct SentItem {
    pub item: ContentItem,
    /// Seconds since the Unix epoch.
    pub time: Option<f64>,
}

/// SenML times below 2^28 are relative to the time of arrival (RFC 8428 §4.5.3).
const RELATIVE_TIME_LIMIT: f64 = (1u64 << 28) as f64;

/// Decodes the body of a LwM2M Send (SenML JSON, SenML CBOR or LwM2M CBOR; anything else
/// is `UnsupportedFormat`), arriving at `arrival_s` (Unix seconds). Every value must name a
/// resource or a resource instance; records keep their order; a relative SenML time is
/// resolved against the arrival, an absolute one is passed as it is.
pub fn decode_send(
    format: Option<u16>,
    payload: &[u8],
    model: &dyn ObjectModel,
    arrival_s: f64,
) -> Result<Vec<SentItem>, DecodeError> {
    let root = LwPath::ROOT;
    let mut items = Vec::new();
    let mut times = Vec::new();
    match format {
        Some(fmt_id::SENML_JSON) => {
            senml_json::decode_records(payload, &root, model, &mut items, Some(&mut times))?
        }
        Some(fmt_id::SENML_CBOR) => {
            senml_cbor::decode_records(payload, &root, model, &mut items, Some(&mut times))?
        }
        Some(fmt_id::LWM2M_CBOR) => lwm2m_cbor::decode(payload, &root, model, &mut items)?,
        Some(other) => return Err(DecodeError::UnsupportedFormat(other)),
        None => return Err(DecodeError::UnsupportedFormat(fmt_id::TEXT)),
    }
    if let Some(bad) = items.iter().find(|i| i.path.len() < 3) {
        return Err(DecodeError::BadValue {
            path: bad.path.to_string(),
            reason: "a value names a resource or a resource instance",
        });
    }
    times.resize(items.len(), None);
    let resolve = |t: f64| {
        if t.is_finite() && t.abs() < RELATIVE_TIME_LIMIT {
            arrival_s + t
        } else {
            t
        }
    };
    Ok(items
        .into_iter()
        .zip(times)
        .map(|(item, time)| SentItem {
            item,
            time: time.map(resolve),
        })
        .collect())
}

/// Renders a Send's values as the MQTT `content` array: as a read response's, with
/// `"time"` (seconds, a JSON number) on the values whose record carried one.
pub fn write_sent_json(items: &[SentItem], out: &mut Vec<u8>) {
    json_out::write_items(items.iter().map(|s| (&s.item, s.time)), out);
}

/// Decode a device's payload (response to `req_path`, or a notification) by its Content-Format
/// (`None` = no option: text/plain for a single resource per LwM2M, else TLV). Values are typed
/// from the model where the path has a definition; formats that carry no type information (TLV,
/// text/plain) give `Value::Untyped` for unknown resources or for data that does not fit the
/// defined type, never an error. Self-describing formats (JSON, SenML, CBOR) keep the type they
/// carry, converted to the model's type where that is lossless.
pub fn decode(
    format: Option<u16>,
    payload: &[u8],
    req_path: &LwPath,
    model: &dyn ObjectModel,
) -> Result<Vec<ContentItem>, DecodeError> {
    let mut out = Vec::new();
    let format = match format {
        Some(f) => f,
        None => {
            let single = match req_path.len() {
                4 => true,
                3 => !value::is_multiple(model, req_path),
                _ => false,
            };
            if single {
                fmt_id::TEXT
            } else {
                fmt_id::TLV
            }
        }
    };
    match format {
        fmt_id::TEXT => text::decode(payload, req_path, model, &mut out)?,
        fmt_id::LINK => link::decode(payload, req_path, &mut out),
        fmt_id::OPAQUE => opaque::decode(payload, req_path, &mut out)?,
        fmt_id::CBOR => lwm2m_cbor::decode_single(payload, req_path, model, &mut out)?,
        fmt_id::TLV | fmt_id::OLD_TLV => tlv::decode(payload, req_path, model, &mut out)?,
        fmt_id::OMA_JSON | fmt_id::OLD_JSON => {
            oma_json::decode(payload, req_path, model, &mut out)?
        }
        fmt_id::SENML_JSON => senml_json::decode(payload, req_path, model, &mut out)?,
        fmt_id::SENML_CBOR => senml_cbor::decode(payload, req_path, model, &mut out)?,
        fmt_id::LWM2M_CBOR => lwm2m_cbor::decode(payload, req_path, model, &mut out)?,
        other => return Err(DecodeError::UnsupportedFormat(other)),
    }
    Ok(out)
}

/// Decodes the answer to a composite read or observe (or its notification): every record
/// carries its absolute path, so the payload is read from the root. A response without a
/// Content-Format is taken to be in `asked`, the format the request's Accept named. Every
/// value must lie at a resource or resource instance; a value above that (`/3/0`) is an
/// error, as is a name that is no path.
pub fn decode_composite(
    format: Option<u16>,
    asked: u16,
    payload: &[u8],
    model: &dyn ObjectModel,
) -> Result<Vec<ContentItem>, DecodeError> {
    let items = decode(Some(format.unwrap_or(asked)), payload, &LwPath::ROOT, model)?;
    if let Some(it) = items.iter().find(|it| it.path.len() < 3) {
        return Err(DecodeError::BadPath(it.path.to_string()));
    }
    Ok(items)
}
