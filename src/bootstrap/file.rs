//! The bootstrap configuration file (`bootstrap.config_file`) and the management API's
//! JSON: one TOML table (or JSON object) per endpoint name, pattern (`*`) or `default`:
//!
//! ```toml
//! [dev1]
//! delete = ["/0", "/1"]            # Bootstrap-Delete targets, in order; default ["/0", "/1"]
//! [[dev1.servers]]                 # one account per entry: Security /0/i and Server /1/i
//! uri = "coaps://127.0.0.1:5784"
//! security = "psk"                 # "nosec" or "psk"
//! identity = "dev1"                # psk: identity (text)
//! key = "000102030405060708090a0b0c0d0e0f"   # psk: key, hex
//! short_id = 101
//! lifetime = 300                   # seconds; default 86400
//! binding = "U"                    # default "U"
//! ```
//!
//! Every error names the entry and field (`dev1.servers[0].uri`) and, in the file, its
//! line.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::formats::Value;
use crate::lwm2m::bs_config::{default_delete, FieldError, InstanceWrite};
use crate::lwm2m::{BootstrapConfig, BootstrapConfigs, SecurityMode, ServerAccount};
use crate::model::LwPath;

/// Why a bootstrap configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapFileError {
    #[error("cannot read bootstrap configuration {path}: {reason}")]
    Io { path: String, reason: String },
    /// `line` counts from 1 (0: unknown).
    #[error("bootstrap configuration {path}, line {line}: {field}: {reason}")]
    Field {
        path: String,
        line: usize,
        field: String,
        reason: String,
    },
}

/// One entry as written (TOML table or JSON object).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEntry {
    #[serde(default)]
    delete: Option<Vec<String>>,
    #[serde(default)]
    servers: Vec<RawServer>,
    #[serde(default)]
    objects: Vec<RawObject>,
    /// The API's answer carries the device's last outcome; a PUT of it is accepted.
    #[serde(default, rename = "last")]
    _last: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    uri: String,
    security: String,
    #[serde(default)]
    identity: Option<String>,
    #[serde(default)]
    key: Option<String>,
    short_id: u32,
    #[serde(default = "default_lifetime")]
    lifetime: u32,
    #[serde(default = "default_binding")]
    binding: String,
}

/// Another object instance: `{ path = "/3/0", values = { "14" = "+02" } }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawObject {
    path: String,
    values: BTreeMap<String, Scalar>,
}

/// A value as written; typed by the resource's definition.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
}

/// The shipped object definitions, which type the values of `objects`.
fn registry() -> &'static lwm2m_proto::objects::ObjectRegistry {
    static R: std::sync::OnceLock<lwm2m_proto::objects::ObjectRegistry> =
        std::sync::OnceLock::new();
    R.get_or_init(lwm2m_proto::objects::builtin_registry)
}

/// `v` as the value of resource `r` of `path`'s object, typed by its definition.
fn typed(path: &LwPath, r: u16, v: &Scalar) -> Result<Value, String> {
    use crate::model::{ObjectModel, ResourceType as T};
    let obj = path.object().unwrap_or(0);
    let def = registry()
        .resource(obj, r)
        .ok_or_else(|| format!("the object definitions have no resource /{obj}/{r}"))?;
    if def.multiple {
        return Err(format!(
            "/{obj}/{r} is a multiple-instance resource (not supported here)"
        ));
    }
    let want = |what: &str| format!("/{obj}/{r} ({}) takes {what}", def.name);
    Ok(match (def.kind, v) {
        (T::String, Scalar::Str(s)) => Value::String(s.clone()),
        (T::Corelnk, Scalar::Str(s)) => Value::Corelnk(s.clone()),
        (T::Integer, Scalar::Int(i)) => Value::Integer(*i),
        (T::Time, Scalar::Int(i)) => Value::Time(*i),
        (T::UnsignedInteger, Scalar::Int(i)) if *i >= 0 => Value::Unsigned(*i as u64),
        (T::Float, Scalar::Int(i)) => Value::Float(*i as f64),
        (T::Float, Scalar::Float(f)) if f.is_finite() => Value::Float(*f),
        (T::Boolean, Scalar::Bool(b)) => Value::Boolean(*b),
        (T::Opaque, Scalar::Str(s)) => Value::Opaque(decode_hex(s).ok_or_else(|| want("hex"))?),
        (T::Objlnk, Scalar::Str(s)) => {
            let (o, i) = s
                .split_once(':')
                .ok_or_else(|| want("\"object:instance\""))?;
            let n = |x: &str| x.parse::<u16>().map_err(|_| want("\"object:instance\""));
            Value::Objlnk(n(o)?, n(i)?)
        }
        (k, _) => return Err(want(&format!("{} values", k.name()))),
    })
}

fn scalar_json(v: &Value, out: &mut Vec<u8>) {
    use crate::formats::write_json_string as s;
    match v {
        Value::String(t) | Value::Corelnk(t) => s(t, out),
        Value::Integer(i) | Value::Time(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::Unsigned(u) => out.extend_from_slice(u.to_string().as_bytes()),
        Value::Float(f) => out.extend_from_slice(format!("{f:?}").as_bytes()),
        Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Objlnk(o, i) => s(&format!("{o}:{i}"), out),
        Value::Opaque(b) | Value::Untyped(b) => s(&hex(b), out),
    }
}

fn default_lifetime() -> u32 {
    86_400
}

fn default_binding() -> String {
    "U".into()
}

/// Where each field of an entry is in the file: spans of `servers[i].field` and `delete`.
#[derive(Debug, Deserialize, Default)]
struct SpanEntry {
    #[serde(default)]
    delete: Option<toml::Spanned<toml::Value>>,
    #[serde(default)]
    servers: Vec<toml::Spanned<BTreeMap<String, toml::Spanned<toml::Value>>>>,
}

impl RawEntry {
    /// The checked configuration; the error names the field (without the entry's name).
    pub(crate) fn into_config(self) -> Result<BootstrapConfig, FieldError> {
        let delete = match self.delete {
            None => default_delete(),
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    LwPath::parse(p).map_err(|e| FieldError {
                        field: format!("delete[{i}]"),
                        reason: format!("{p:?} is not a path: {e}"),
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let mut servers = Vec::with_capacity(self.servers.len());
        for (i, s) in self.servers.into_iter().enumerate() {
            let err = |f: &str, reason: String| FieldError {
                field: format!("servers[{i}].{f}"),
                reason,
            };
            let security = SecurityMode::from_name(&s.security).ok_or_else(|| {
                err(
                    "security",
                    format!(
                        "unknown security mode {:?} (\"nosec\" or \"psk\")",
                        s.security
                    ),
                )
            })?;
            let key =
                match &s.key {
                    None => None,
                    Some(k) => Some(decode_hex(k).ok_or_else(|| {
                        err("key", "not hex (an even number of hex digits)".into())
                    })?),
                };
            let short_id = u16::try_from(s.short_id)
                .map_err(|_| err("short_id", "must be 1 to 65534".into()))?;
            let account = ServerAccount {
                uri: s.uri,
                security,
                identity: s.identity,
                key,
                short_id,
                lifetime: s.lifetime,
                binding: s.binding,
            };
            account.check(&format!("servers[{i}]"))?;
            servers.push(account);
        }
        let mut objects = Vec::with_capacity(self.objects.len());
        for (i, o) in self.objects.into_iter().enumerate() {
            let path = LwPath::parse(&o.path).map_err(|e| FieldError {
                field: format!("objects[{i}].path"),
                reason: format!("{:?} is not a path: {e}", o.path),
            })?;
            let mut values = Vec::with_capacity(o.values.len());
            for (k, v) in &o.values {
                let err = |reason: String| FieldError {
                    field: format!("objects[{i}].values.{k}"),
                    reason,
                };
                let r: u16 = k
                    .parse()
                    .map_err(|_| err("a resource id (a number)".into()))?;
                values.push((r, typed(&path, r, v).map_err(err)?));
            }
            objects.push(InstanceWrite { path, values });
        }
        let config = BootstrapConfig {
            delete,
            servers,
            objects,
        };
        config.check()?;
        Ok(config)
    }
}

/// Decodes an even-length, non-empty hex string.
fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || s.len() % 2 == 1 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The line of byte offset `at` in `text` (from 1).
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// Parses and checks the text of a configuration file (`path` names it in errors).
pub fn parse_file(text: &str, path: &Path) -> Result<BootstrapConfigs, BootstrapFileError> {
    let shown = path.display().to_string();
    let fail = |line: usize, field: String, reason: String| BootstrapFileError::Field {
        path: shown.clone(),
        line,
        field,
        reason,
    };
    // Where everything is (and the entries' order: patterns match in file order).
    let spans: BTreeMap<String, toml::Spanned<SpanEntry>> =
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            fail(line, String::new(), e.message().trim().to_string())
        })?;
    let de = toml::Deserializer::new(text);
    let raw: BTreeMap<String, RawEntry> = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.span().map_or(0, |s| line_of(text, s.start));
        fail(line, field, inner.message().trim().to_string())
    })?;
    let mut order: Vec<(usize, String)> = spans
        .iter()
        .map(|(k, v)| (v.span().start, k.clone()))
        .collect();
    order.sort();
    let mut raw = raw;
    let mut configs = BootstrapConfigs::new();
    for (start, name) in order {
        let entry = raw.remove(&name).expect("both passes saw it");
        check_name(&name).map_err(|r| fail(line_of(text, start), name.clone(), r))?;
        let config = entry.into_config().map_err(|e| {
            let line = field_line(text, &spans[&name], &e.field).unwrap_or(line_of(text, start));
            fail(line, format!("{name}.{}", e.field), e.reason)
        })?;
        configs.insert(&name, config);
    }
    Ok(configs)
}

/// The line of `field` (`servers[1].uri`, `delete[0]`) in an entry.
fn field_line(text: &str, e: &toml::Spanned<SpanEntry>, field: &str) -> Option<usize> {
    let e = e.get_ref();
    if field.starts_with("delete") {
        return e.delete.as_ref().map(|d| line_of(text, d.span().start));
    }
    let rest = field.strip_prefix("servers[")?;
    let (i, rest) = rest.split_once(']')?;
    let server = e.servers.get(i.parse::<usize>().ok()?)?;
    match rest.strip_prefix('.').and_then(|f| server.get_ref().get(f)) {
        Some(v) => Some(line_of(text, v.span().start)),
        None => Some(line_of(text, server.span().start)),
    }
}

/// An entry's name: an endpoint name, a pattern with `*`, or `default`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 256 || name.chars().any(|c| c.is_control()) {
        return Err("an entry is named by an endpoint name, a pattern or default".into());
    }
    Ok(())
}

/// Reads and parses the file at `path`; a missing file is an empty configuration.
pub fn read_file(path: &Path) -> Result<BootstrapConfigs, BootstrapFileError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_file(&text, path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BootstrapConfigs::new()),
        Err(e) => Err(BootstrapFileError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }),
    }
}

/// One entry from the management API's JSON (`{"delete":[...],"servers":[...]}`).
pub fn entry_from_json(body: &[u8]) -> Result<BootstrapConfig, String> {
    let mut b = body.to_vec();
    let raw: RawEntry = simd_json::serde::from_slice(&mut b).map_err(|e| e.to_string())?;
    raw.into_config().map_err(|e| e.to_string())
}

/// Writes one entry as the API's JSON (the key included: the API is behind its
/// credentials, and the device gets it anyway).
pub fn entry_json(c: &BootstrapConfig, out: &mut Vec<u8>) {
    use crate::formats::write_json_string as s;
    out.extend_from_slice(b"{\"delete\":[");
    for (i, p) in c.delete.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        s(&p.to_string(), out);
    }
    out.extend_from_slice(b"],\"servers\":[");
    for (i, a) in c.servers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"uri\":");
        s(&a.uri, out);
        out.extend_from_slice(b",\"security\":");
        s(a.security.name(), out);
        if let Some(id) = &a.identity {
            out.extend_from_slice(b",\"identity\":");
            s(id, out);
        }
        if let Some(k) = &a.key {
            out.extend_from_slice(b",\"key\":");
            s(&hex(k), out);
        }
        out.extend_from_slice(
            format!(
                ",\"short_id\":{},\"lifetime\":{},\"binding\":",
                a.short_id, a.lifetime
            )
            .as_bytes(),
        );
        s(&a.binding, out);
        out.push(b'}');
    }
    out.extend_from_slice(b"]");
    if !c.objects.is_empty() {
        out.extend_from_slice(b",\"objects\":[");
        for (i, o) in c.objects.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"path\":");
            s(&o.path.to_string(), out);
            out.extend_from_slice(b",\"values\":{");
            for (j, (r, v)) in o.values.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                s(&r.to_string(), out);
                out.push(b':');
                scalar_json(v, out);
            }
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dev1]
delete = ["/0", "/1"]
[[dev1.servers]]
uri = "coaps://127.0.0.1:5784"
security = "psk"
identity = "dev1"
key = "000102030405060708090a0b0c0d0e0f"
short_id = 101
lifetime = 300
binding = "U"

["sensor-*"]
[["sensor-*".servers]]
uri = "coap://127.0.0.1:5783"
security = "nosec"
short_id = 1

[default]
delete = ["/0"]
[[default.objects]]
path = "/3/0"
values = { "14" = "+02", "13" = 1700000000, "15" = "Europe/Paris" }
"#;

    fn err(text: &str) -> (usize, String, String) {
        match parse_file(text, Path::new("bs.toml")).unwrap_err() {
            BootstrapFileError::Field {
                line,
                field,
                reason,
                ..
            } => (line, field, reason),
            e => panic!("{e}"),
        }
    }

    #[test]
    fn a_good_file() {
        let c = parse_file(GOOD, Path::new("bs.toml")).unwrap();
        let names: Vec<&str> = c.iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["dev1", "sensor-*", "default"], "file order");
        let d = c.find("dev1").unwrap();
        assert_eq!(
            d.servers[0].key.as_deref(),
            Some(&(0..16).collect::<Vec<u8>>()[..])
        );
        let s = c.find("sensor-3").unwrap();
        assert_eq!(s.delete, default_delete());
        assert_eq!(
            (s.servers[0].lifetime, s.servers[0].binding.as_str()),
            (86_400, "U")
        );
        let d0 = c.find("x").unwrap();
        assert!(d0.servers.is_empty());
        assert_eq!(d0.objects[0].values[0], (13, Value::Time(1_700_000_000)));
        assert_eq!(d0.objects[0].values[1], (14, Value::String("+02".into())));
        let mut j = Vec::new();
        entry_json(d0, &mut j);
        assert_eq!(entry_from_json(&j).unwrap(), **d0);
        // The JSON of an entry reads back the same.
        let mut j = Vec::new();
        entry_json(d, &mut j);
        assert_eq!(entry_from_json(&j).unwrap(), **d);
    }

    #[test]
    fn errors_name_the_field_and_line() {
        let bad = GOOD.replace("coaps://127.0.0.1:5784", "http://x");
        assert_eq!(err(&bad).0, 5);
        assert_eq!(err(&bad).1, "dev1.servers[0].uri");
        let bad = GOOD.replace("security = \"psk\"", "security = \"pskk\"");
        let e = err(&bad);
        assert_eq!((e.0, e.1.as_str()), (6, "dev1.servers[0].security"));
        assert!(e.2.contains("unknown security mode"), "{e:?}");
        let bad = GOOD.replace("0f\"", "0g\"");
        assert_eq!(err(&bad).0, 8);
        assert_eq!(err(&bad).1, "dev1.servers[0].key");
        let bad = GOOD.replace("identity = \"dev1\"\n", "");
        let e = err(&bad);
        assert_eq!(e.1, "dev1.servers[0].identity");
        assert_eq!(e.0, 4, "the account's line when the field is missing");
        let bad = GOOD.replace("short_id = 1\n", "short_id = 1\ncolour = 2\n");
        let e = err(&bad);
        assert!(e.2.contains("unknown field"), "{e:?}");
        assert_eq!(e.0, 18);
        let bad = GOOD.replace("delete = [\"/0\"]", "delete = [\"/zero\"]");
        assert_eq!(err(&bad).1, "default.delete[0]");
        assert_eq!(err("[a\n").0, 1);
        let bad = GOOD.replace("\"13\" = 1700000000", "\"13\" = \"soon\"");
        let e = err(&bad);
        assert_eq!(e.1, "default.objects[0].values.13");
        assert!(e.2.contains("Time values"), "{e:?}");
        let bad = GOOD.replace("\"14\" = \"+02\"", "\"99\" = 1");
        assert!(err(&bad).2.contains("no resource /3/99"));
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("etc/bootstrap.toml.example");
        let c = read_file(&path).unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c.find("sensor-9").unwrap().servers[0].short_id, 1);
    }

    /// Hostile files: every truncation and every single-byte change of a good one
    /// parses or is refused, never panics.
    #[test]
    fn mangled_files_never_panic() {
        let text = GOOD;
        for n in 0..text.len() {
            let _ = parse_file(&text[..n], Path::new("t"));
        }
        let bytes = text.as_bytes();
        for i in 0..bytes.len() {
            for b in [b'"', b'[', b']', b'=', b'\n', b'*', b'.', b'0', b'x'] {
                let mut m = bytes.to_vec();
                m[i] = b;
                if let Ok(t) = std::str::from_utf8(&m) {
                    let _ = parse_file(t, Path::new("t"));
                }
            }
        }
    }

    #[test]
    fn a_missing_file_is_empty() {
        let c = read_file(Path::new("/nonexistent/bootstrap.toml")).unwrap();
        assert!(c.is_empty());
    }
}
