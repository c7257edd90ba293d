//! Parsing Register and Update requests (LwM2M 1.0–1.2 Registration Interface):
//! query parameters, the link-format object list, and the checks that turn a bad
//! request into a 4.00 with a diagnostic.

use crate::coap::{opt, Message};

/// A Register or Update that failed validation; the text goes into the 4.00 payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRequest(pub String);

impl BadRequest {
    fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
}

/// The query parameters of a Register or Update.
#[derive(Debug, Default)]
pub struct Params<'a> {
    pub ep: Option<&'a str>,
    pub lt: Option<u32>,
    pub lwm2m: Option<&'a str>,
    pub binding: Option<&'a str>,
    /// The LwM2M 1.1+ queue-mode flag `Q`.
    pub queue: bool,
    /// Every other parameter, in order, secrets already removed.
    pub others: Vec<(&'a str, &'a str)>,
}

const MAX_PARAMS: usize = 32;
const MAX_NAME: usize = 255;

/// Reads and validates the Uri-Query options of a Register/Update.
pub fn parse_params<'a>(msg: &Message<'a>) -> Result<Params<'a>, BadRequest> {
    let mut p = Params::default();
    let mut count = 0;
    for raw in msg.option_values(opt::URI_QUERY) {
        count += 1;
        if count > MAX_PARAMS {
            return Err(BadRequest::new("too many query parameters"));
        }
        let q = std::str::from_utf8(raw)
            .map_err(|_| BadRequest::new("query parameter is not UTF-8"))?;
        let (k, v) = q.split_once('=').unwrap_or((q, ""));
        if k.is_empty() {
            return Err(BadRequest::new("empty query parameter name"));
        }
        if k.contains('\0') || v.contains('\0') {
            return Err(BadRequest::new("NUL in query parameter"));
        }
        match k {
            "ep" => p.ep = Some(v),
            "lt" => {
                p.lt = Some(v.parse().map_err(|_| {
                    BadRequest::new(format!("lifetime lt={v:?} is not a non-negative integer"))
                })?)
            }
            "lwm2m" => p.lwm2m = Some(v),
            "b" => p.binding = Some(v),
            "Q" => {
                p.queue = true;
                p.others.push((k, v));
            }
            _ if is_secret(k) => {}
            _ => p.others.push((k, v)),
        }
    }
    if let Some(v) = p.lwm2m {
        if !version_supported(v) {
            return Err(BadRequest::new(format!(
                "unsupported LwM2M version lwm2m={v:?}: 1.0, 1.0.x, 1, 1.1, 1.1.x, 1.2 and 1.2.x are"
            )));
        }
    }
    Ok(p)
}

/// Checks an endpoint name: present, non-empty, at most 255 bytes, and usable in an
/// MQTT topic level (no `/`, `+`, `#`, no control characters).
pub fn check_endpoint_name(ep: Option<&str>) -> Result<&str, BadRequest> {
    let ep = ep.ok_or_else(|| BadRequest::new("missing endpoint name (query parameter ep)"))?;
    if ep.is_empty() {
        return Err(BadRequest::new("empty endpoint name"));
    }
    if ep.len() > MAX_NAME {
        return Err(BadRequest::new("endpoint name longer than 255 bytes"));
    }
    if ep
        .chars()
        .any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(BadRequest::new(
            "endpoint name contains '/', '+', '#' or a control character",
        ));
    }
    Ok(ep)
}

/// LwM2M versions this gateway serves.
pub fn version_supported(v: &str) -> bool {
    let mut it = v.split('.');
    let major = it.next();
    let minor = it.next();
    let patch = it.next();
    if it.next().is_some() || major != Some("1") {
        return false;
    }
    let digits = |s: &str| !s.is_empty() && s.len() <= 3 && s.bytes().all(|b| b.is_ascii_digit());
    match (minor, patch) {
        (None, _) => true,
        (Some(m), p) => matches!(m, "0" | "1" | "2") && p.is_none_or(digits),
    }
}

/// Query keys whose values are credentials: never stored, never published.
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    const EXACT: &[&str] = &[
        "pwd",
        "pass",
        "passphrase",
        "psk",
        "pin",
        "private_key",
        "privatekey",
        "api_key",
        "apikey",
        "credential",
        "credentials",
        "auth",
        "authorization",
    ];
    const PART: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "private_key",
        "api_key",
    ];
    EXACT.contains(&k.as_str()) || PART.iter().any(|p| k.contains(p))
}

/// The object list of a Register/Update payload.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ObjectList {
    /// The `rt="oma.lwm2m"` link's target, `"/"` when absent.
    pub alternate_path: String,
    /// Link targets with the alternate path stripped, joined by `,`.
    pub paths: String,
    /// The `ct` attribute of the `rt="oma.lwm2m"` link: the device's preferred
    /// content format (LwM2M 1.1+).
    pub content_format: Option<u16>,
    /// The first of SenML JSON (110), SenML CBOR (112) and LwM2M CBOR (11544) that `ct` lists:
    /// the format of composite operations.
    pub composite_format: Option<u16>,
}

impl ObjectList {
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.paths.split(',').filter(|s| !s.is_empty())
    }
}

/// Parses a CoRE link-format object list (RFC 6690 as LwM2M uses it).
pub fn parse_object_list(payload: &[u8]) -> Result<ObjectList, BadRequest> {
    let text =
        std::str::from_utf8(payload).map_err(|_| BadRequest::new("object list is not UTF-8"))?;
    let mut links: Vec<(&str, bool)> = Vec::new();
    let mut content_format = None;
    let mut composite_format = None;
    for entry in split_outside_quotes(text, ',') {
        let entry = entry.trim();
        if entry.is_empty() {
            continue;
        }
        let rest = entry.strip_prefix('<').ok_or_else(|| {
            BadRequest::new(format!(
                "object list entry {entry:?} does not start with '<'"
            ))
        })?;
        let end = rest
            .find('>')
            .ok_or_else(|| BadRequest::new(format!("object list entry {entry:?} has no '>'")))?;
        let target = &rest[..end];
        if target.is_empty() || target.chars().any(|c| c.is_control() || c == '"') {
            return Err(BadRequest::new(format!("bad link target {target:?}")));
        }
        let mut is_root = false;
        let mut ct = None;
        let mut composite = None;
        for attr in split_outside_quotes(&rest[end + 1..], ';') {
            let (k, v) = attr.trim().split_once('=').unwrap_or((attr.trim(), ""));
            match k {
                "rt" if v.trim_matches('"') == "oma.lwm2m" => is_root = true,
                "ct" => {
                    ct = preferred_format(v.trim_matches('"'));
                    composite = composite_of(v.trim_matches('"'));
                }
                _ => {}
            }
        }
        if is_root {
            content_format = ct;
            composite_format = composite;
        }
        links.push((target, is_root));
    }
    let alternate = links
        .iter()
        .find(|(_, root)| *root)
        .map(|(t, _)| t.trim_end_matches('/'))
        .unwrap_or("");
    let mut out = ObjectList {
        alternate_path: if alternate.is_empty() {
            "/".into()
        } else {
            alternate.to_string()
        },
        paths: String::new(),
        content_format,
        composite_format,
    };
    for (target, root) in links {
        if root {
            continue;
        }
        let stripped = match target.strip_prefix(alternate) {
            Some(s) if !alternate.is_empty() && s.starts_with('/') => s,
            _ => target,
        };
        if !out.paths.is_empty() {
            out.paths.push(',');
        }
        out.paths.push_str(stripped);
    }
    Ok(out)
}

/// Splits on `sep` where it is not inside double quotes.
fn split_outside_quotes(s: &str, sep: char) -> impl Iterator<Item = &str> {
    let mut in_quotes = false;
    let mut start = 0;
    let mut done = false;
    let bytes = s.as_bytes();
    let mut i = 0;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        while i < bytes.len() {
            let c = bytes[i];
            i += 1;
            if c == b'"' {
                in_quotes = !in_quotes;
            } else if c == sep as u8 && !in_quotes {
                let piece = &s[start..i - 1];
                start = i;
                return Some(piece);
            }
        }
        done = true;
        Some(&s[start..])
    })
}

/// The format to write in, from a root link's `ct` (one or more space-separated formats, the
/// device's preferred first): the first one that carries several resources and that the gateway
/// encodes (TLV, SenML JSON/CBOR, LwM2M CBOR, OMA JSON), else the first listed.
fn preferred_format(ct: &str) -> Option<u16> {
    use crate::formats::fmt_id;
    let listed = ct.split(' ').filter_map(|c| c.parse::<u16>().ok());
    let multi = |f: &u16| {
        matches!(
            *f,
            fmt_id::TLV
                | fmt_id::SENML_JSON
                | fmt_id::SENML_CBOR
                | fmt_id::LWM2M_CBOR
                | fmt_id::OMA_JSON
        )
    };
    listed.clone().find(multi).or_else(|| listed.clone().next())
}

/// The first format of a `ct` list that composite operations can use.
fn composite_of(ct: &str) -> Option<u16> {
    use crate::formats::fmt_id;
    ct.split(' ')
        .filter_map(|c| c.parse::<u16>().ok())
        .find(|f| {
            matches!(
                *f,
                fmt_id::SENML_JSON | fmt_id::SENML_CBOR | fmt_id::LWM2M_CBOR
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        for v in ["1.0", "1.0.2", "1", "1.1", "1.2", "1.1.1", "1.2.2"] {
            assert!(version_supported(v), "{v}");
        }
        for v in ["", "2.0", "1.3", "0.9", "1.0.x", "1.0.", "1.0.2.1", "v1.0"] {
            assert!(!version_supported(v), "{v}");
        }
    }

    #[test]
    fn object_list_plain() {
        let l = parse_object_list(b"</1/0>,</3/0>;ver=1.1,</5/0>").unwrap();
        assert_eq!(l.alternate_path, "/");
        assert_eq!(l.iter().collect::<Vec<_>>(), ["/1/0", "/3/0", "/5/0"]);
    }

    #[test]
    fn object_list_alternate_path() {
        let l = parse_object_list(b"</lwm2m>;rt=\"oma.lwm2m\";ct=11543,</lwm2m/1/0>,</lwm2m/3/0>")
            .unwrap();
        assert_eq!(l.alternate_path, "/lwm2m");
        assert_eq!(l.iter().collect::<Vec<_>>(), ["/1/0", "/3/0"]);
        let l = parse_object_list(b"</>;rt=\"oma.lwm2m\",</1/0>").unwrap();
        assert_eq!(l.alternate_path, "/");
        assert_eq!(l.iter().collect::<Vec<_>>(), ["/1/0"]);
    }

    #[test]
    fn root_link_ct_lists_pick_a_multi_resource_format() {
        let ct = |body: &[u8]| parse_object_list(body).unwrap().content_format;
        // CBOR (60) cannot carry several resources: the first format that can is taken.
        assert_eq!(
            ct(b"</>;rt=\"oma.lwm2m\";ct=\"60 110 11542\",</3/0>"),
            Some(110)
        );
        assert_eq!(
            ct(b"</>;rt=\"oma.lwm2m\";ct=\"11542 112\",</3/0>"),
            Some(11542)
        );
        assert_eq!(ct(b"</>;rt=\"oma.lwm2m\";ct=60,</3/0>"), Some(60));
        assert_eq!(ct(b"</>;rt=\"oma.lwm2m\";ct=\"0 42\",</3/0>"), Some(0));
        assert_eq!(ct(b"</>;rt=\"oma.lwm2m\",</3/0>"), None);
        let composite = |body: &[u8]| parse_object_list(body).unwrap().composite_format;
        assert_eq!(composite(b"</>;rt=\"oma.lwm2m\";ct=112,</3/0>"), Some(112));
        assert_eq!(
            composite(b"</>;rt=\"oma.lwm2m\";ct=\"11542 11544 110\",</3/0>"),
            Some(11544)
        );
        assert_eq!(composite(b"</>;rt=\"oma.lwm2m\";ct=11542,</3/0>"), None);
        assert_eq!(composite(b"</3/0>;ct=112"), None, "only the root link's");
    }

    #[test]
    fn object_list_quoted_commas_and_errors() {
        let l = parse_object_list(b"</1/0>;title=\"a,b\",</3/0>").unwrap();
        assert_eq!(l.iter().collect::<Vec<_>>(), ["/1/0", "/3/0"]);
        assert!(parse_object_list(b"/1/0").is_err());
        assert!(parse_object_list(b"</1/0").is_err());
        assert!(parse_object_list(&[0xff, 0xfe]).is_err());
        assert!(parse_object_list(b"<>").is_err());
    }

    #[test]
    fn secrets() {
        for k in [
            "password",
            "PASSWORD",
            "passwd",
            "secret",
            "token",
            "access_token",
            "private_key",
            "api_key",
            "client_secret",
            "psk",
        ] {
            assert!(is_secret(k), "{k}");
        }
        for k in ["imei", "apn", "sms", "device_id", "b", "lwm2m"] {
            assert!(!is_secret(k), "{k}");
        }
    }

    #[test]
    fn endpoint_names() {
        assert!(check_endpoint_name(None).is_err());
        assert!(check_endpoint_name(Some("")).is_err());
        assert!(check_endpoint_name(Some("a/b")).is_err());
        assert!(check_endpoint_name(Some("a+")).is_err());
        assert!(check_endpoint_name(Some(&"x".repeat(256))).is_err());
        assert_eq!(
            check_endpoint_name(Some("urn:imei:123")).unwrap(),
            "urn:imei:123"
        );
    }
}
