//! CoRE link format (RFC 6690), used by Discover responses and Register/Update payloads.

use super::value::{ContentItem, Value};
use super::{clip, DecodeError};
use crate::model::LwPath;

/// One link: the target inside `<>` and its attributes (quotes stripped from values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link<'a> {
    pub target: &'a str,
    pub attrs: Vec<(&'a str, Option<&'a str>)>,
}

impl<'a> Link<'a> {
    /// The value of attribute `name` (`Some(None)` for a flag attribute without a value).
    pub fn attr(&self, name: &str) -> Option<Option<&'a str>> {
        self.attrs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }
}

/// Splits `s` at `sep` outside `"..."` (with `\` escapes) and outside `<...>`; pieces are trimmed
/// and empty pieces dropped.
fn split_outside<'a>(s: &'a str, sep: u8) -> impl Iterator<Item = &'a str> + 'a {
    let bytes = s.as_bytes();
    let mut start = 0;
    let mut i = 0;
    let mut quoted = false;
    let mut angle = false;
    let mut done = false;
    std::iter::from_fn(move || {
        while !done {
            if i >= bytes.len() {
                done = true;
                let piece = s[start..].trim();
                if !piece.is_empty() {
                    return Some(piece);
                }
                return None;
            }
            let c = bytes[i];
            i += 1;
            if quoted {
                if c == b'\\' {
                    i += 1;
                } else if c == b'"' {
                    quoted = false;
                }
            } else if c == b'"' {
                quoted = true;
            } else if c == b'<' {
                angle = true;
            } else if c == b'>' {
                angle = false;
            } else if c == sep && !angle {
                let piece = s[start..i - 1].trim();
                start = i;
                if !piece.is_empty() {
                    return Some(piece);
                }
            }
        }
        None
    })
}

/// Discover: link-format payload split into entries as strings, e.g.
/// `["</3/0>;pmin=10","</3/0/1>"]`, respecting quoted commas.
pub fn split_links(payload: &str) -> Vec<&str> {
    split_outside(payload, b',').collect()
}

/// Parses a link-format payload (RFC 6690) into links.
pub fn parse_links(payload: &str) -> Result<Vec<Link<'_>>, DecodeError> {
    let mut links = Vec::new();
    for entry in split_links(payload) {
        let bad = || DecodeError::BadLink(clip(entry));
        let rest = entry.strip_prefix('<').ok_or_else(bad)?;
        let close = rest.find('>').ok_or_else(bad)?;
        let target = &rest[..close];
        let params = rest[close + 1..].trim_start();
        if !params.is_empty() && !params.starts_with(';') {
            return Err(bad());
        }
        let mut attrs = Vec::new();
        for p in split_outside(params, b';') {
            let (name, value) = match p.split_once('=') {
                Some((n, v)) => {
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .map(|x| x.strip_suffix('"').unwrap_or(x))
                        .unwrap_or(v);
                    (n.trim(), Some(v))
                }
                None => (p, None),
            };
            if name.is_empty() {
                return Err(bad());
            }
            attrs.push((name, value));
        }
        links.push(Link { target, attrs });
    }
    Ok(links)
}

/// A link-format payload decoded as content: one Corelnk value at the request path.
pub(crate) fn decode(payload: &[u8], req: &LwPath, out: &mut Vec<ContentItem>) {
    let value = match std::str::from_utf8(payload) {
        Ok(s) => Value::Corelnk(s.to_string()),
        Err(_) => Value::Untyped(payload.to_vec()),
    };
    out.push(ContentItem { path: *req, value });
}
