//! MQTT commands (`{"reqID":..,"msgType":..,"data":{..}}`) parsed into what the
//! gateway sends to a device. Liberal in what it accepts (paths with or without a
//! leading `/`, trailing `/` on base paths, numbers as strings and strings as
//! numbers, `null` attributes), strict in what it sends. Every error says what is
//! wrong, and carries the parts of the command needed to answer it on MQTT.

use crate::coap::codes;
use crate::formats::{self, fmt_id, parse_write_value, WriteItem};
use crate::model::{LwPath, ObjectModel};
use simd_json::prelude::*;
use simd_json::BorrowedValue;

/// The LwM2M operation a command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Discover,
    Write,
    WriteAttr,
    Execute,
    Create,
    Delete,
    Observe,
    CancelObserve,
    /// LwM2M 1.1 composite operations: FETCH (with Observe 0 or 1) and iPATCH of the root.
    ReadComposite,
    ObserveComposite,
    CancelObserveComposite,
    WriteComposite,
}

impl Op {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "read" => Self::Read,
            "discover" => Self::Discover,
            "write" => Self::Write,
            "write-attr" => Self::WriteAttr,
            "execute" => Self::Execute,
            "create" => Self::Create,
            "delete" => Self::Delete,
            "observe" => Self::Observe,
            "cancel-observe" => Self::CancelObserve,
            "read-composite" => Self::ReadComposite,
            "observe-composite" => Self::ObserveComposite,
            "cancel-observe-composite" => Self::CancelObserveComposite,
            "write-composite" => Self::WriteComposite,
            _ => return None,
        })
    }

    /// How many operations there are.
    pub const COUNT: usize = 13;

    /// Every operation, in the order of [`Op::index`].
    pub const ALL: [Op; Op::COUNT] = [
        Self::Read,
        Self::Discover,
        Self::Write,
        Self::WriteAttr,
        Self::Execute,
        Self::Create,
        Self::Delete,
        Self::Observe,
        Self::CancelObserve,
        Self::ReadComposite,
        Self::ObserveComposite,
        Self::CancelObserveComposite,
        Self::WriteComposite,
    ];

    /// The operation a `msgType` names, if any.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::parse(s)
    }

    /// Position in [`Op::ALL`] (for per-operation counters).
    pub fn index(self) -> usize {
        self as usize
    }

    /// A composite operation (LwM2M 1.1): several paths in one request to the root.
    pub fn is_composite(self) -> bool {
        matches!(
            self,
            Self::ReadComposite
                | Self::ObserveComposite
                | Self::CancelObserveComposite
                | Self::WriteComposite
        )
    }

    /// Starts an observation (`observe`, `observe-composite`).
    pub fn observes(self) -> bool {
        matches!(self, Self::Observe | Self::ObserveComposite)
    }

    /// Cancels an observation (`cancel-observe`, `cancel-observe-composite`).
    pub fn cancels(self) -> bool {
        matches!(self, Self::CancelObserve | Self::CancelObserveComposite)
    }

    /// Its answer carries values (`content` in the response).
    pub fn reads(self) -> bool {
        matches!(
            self,
            Self::Read
                | Self::Observe
                | Self::CancelObserve
                | Self::Discover
                | Self::ReadComposite
                | Self::ObserveComposite
                | Self::CancelObserveComposite
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Discover => "discover",
            Self::Write => "write",
            Self::WriteAttr => "write-attr",
            Self::Execute => "execute",
            Self::Create => "create",
            Self::Delete => "delete",
            Self::Observe => "observe",
            Self::CancelObserve => "cancel-observe",
            Self::ReadComposite => "read-composite",
            Self::ObserveComposite => "observe-composite",
            Self::CancelObserveComposite => "cancel-observe-composite",
            Self::WriteComposite => "write-composite",
        }
    }
}

/// The parts of a command that every message about it repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Echo {
    /// Every top-level member except `msgType` and `data`, as JSON (`"reqID":1,...`),
    /// without braces; empty when there are none.
    pub members: Box<str>,
    /// The command's `msgType` as sent (None when absent or not a string).
    pub msg_type: Option<Box<str>>,
    /// The command's `data` as JSON (`{}` when absent).
    pub data: Box<str>,
    /// `path` (else `basePath`) without its `?query`, with a leading `/`.
    pub req_path: Option<Box<str>>,
    /// A composite command's paths (the written ones for `write-composite`), each with a
    /// leading `/`: `reqPath` is then this list. Empty for other commands.
    pub req_paths: Box<[Box<str>]>,
}

/// A command ready to be sent.
#[derive(Debug, Clone)]
pub struct Command {
    pub op: Op,
    pub echo: Echo,
    /// Target path (the base path for batch writes and creates; the root for composite
    /// operations, which name their paths in `paths`).
    pub path: LwPath,
    /// A composite command's paths: those read or observed, or those written. Empty for
    /// other commands.
    pub paths: Vec<LwPath>,
    /// The Accept option, when the command fixes it (composite operations: the format the
    /// device announced); else it follows from the path (`dm::accept_for`).
    pub accept: Option<u16>,
    /// Uri-Query options (from a `?k=v` suffix or write-attr attributes).
    pub query: Vec<String>,
    pub code: u8,
    /// Content-Format and body.
    pub payload: Option<(u16, Vec<u8>)>,
    /// `mheaders.ttl == 0`: send at once even to a sleeping queue-mode device.
    pub bypass_queue: bool,
    /// When the gateway took the command (core clock, ms): the round trip's start.
    pub received_ms: u64,
}

/// How long an application's command stays worth sending, as far as the gateway knows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrival {
    /// When a shard first took the command (core clock, ms); None until one has.
    /// Forwarding to another shard keeps it, so the command's deadline stays absolute.
    pub at_ms: Option<u64>,
    /// The MQTT 5 message-expiry interval the broker delivered the command with (seconds).
    pub expiry_s: Option<u32>,
}

/// A command that cannot be sent; answered with 4.00 and `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError {
    pub echo: Echo,
    pub error: String,
}

/// How writes and composite requests are encoded for this device.
#[derive(Debug, Clone, Copy)]
pub struct Encoding {
    /// The format of writes and creates.
    pub format: u16,
    /// The format of composite operations: SenML JSON (110), SenML CBOR (112) or LwM2M CBOR
    /// (11544). It is the Accept of a composite read or observe and the format of a
    /// Write-Composite; the paths of a read or observe go in SenML JSON when it is SenML JSON,
    /// else in SenML CBOR (LwM2M CBOR has no list of paths).
    pub composite: u16,
}

impl Encoding {
    /// Writes in `format`, composite operations in SenML JSON.
    pub fn writes(format: u16) -> Self {
        Encoding {
            format,
            composite: fmt_id::SENML_JSON,
        }
    }
}

/// Parses a command payload (the buffer is used for in-place JSON parsing).
pub fn parse(
    buf: &mut [u8],
    model: &dyn ObjectModel,
    enc: Encoding,
) -> Result<Command, CommandError> {
    let v = simd_json::to_borrowed_value(buf).map_err(|e| CommandError {
        echo: Echo {
            data: "{}".into(),
            ..Echo::default()
        },
        error: format!("command is not valid JSON: {e}"),
    })?;
    let Some(obj) = v.as_object() else {
        return Err(CommandError {
            echo: Echo {
                data: "{}".into(),
                ..Echo::default()
            },
            error: "command is not a JSON object".into(),
        });
    };
    let mut members = String::new();
    for (k, val) in obj.iter() {
        if k == "msgType" || k == "data" {
            continue;
        }
        if !members.is_empty() {
            members.push(',');
        }
        let mut kb = Vec::new();
        crate::json::string(&mut kb, k);
        members.push_str(std::str::from_utf8(&kb).unwrap_or("\"\""));
        members.push(':');
        members.push_str(&val.encode());
    }
    let data = obj.get("data");
    let mut echo = Echo {
        members: members.into(),
        msg_type: obj.get("msgType").and_then(|m| m.as_str()).map(Into::into),
        data: data
            .map(|d| d.encode())
            .unwrap_or_else(|| "{}".into())
            .into(),
        req_path: None,
        req_paths: Box::default(),
    };
    let fail = |echo: &Echo, error: String| CommandError {
        echo: echo.clone(),
        error,
    };
    let op = match obj.get("msgType") {
        None => return Err(fail(&echo, "missing msgType".into())),
        Some(m) => match m.as_str() {
            Some(s) => Op::parse(s).ok_or_else(|| fail(&echo, format!("unknown msgType {s:?}")))?,
            None => return Err(fail(&echo, "msgType is not a string".into())),
        },
    };
    let data = match data {
        Some(d) if d.is_object() => d,
        Some(_) => return Err(fail(&echo, "data is not an object".into())),
        None => return Err(fail(&echo, "missing data".into())),
    };
    let raw_path = str_field(data, "path").or_else(|| str_field(data, "basePath"));
    if op.is_composite() {
        echo.req_paths = composite_req_paths(op, data);
    } else if let Some(p) = raw_path {
        let no_query = p.split('?').next().unwrap_or("");
        let mut rp = String::with_capacity(no_query.len() + 1);
        if !no_query.starts_with('/') {
            rp.push('/');
        }
        rp.push_str(no_query);
        echo.req_path = Some(rp.into());
    }
    let hex = obj.get("encoding").and_then(|e| e.as_str()) == Some("hex");
    let bypass_queue = obj
        .get("mheaders")
        .and_then(|m| m.get("ttl"))
        .map(|t| number(t) == Some(0.0))
        .unwrap_or(false);
    build(op, data, hex, model, enc)
        .map(|b| Command {
            op,
            echo: echo.clone(),
            path: b.path,
            paths: b.paths,
            accept: b.accept,
            query: b.query,
            code: b.code,
            payload: b.payload,
            bypass_queue,
            received_ms: 0,
        })
        .map_err(|e| fail(&echo, e))
}

/// The request a command becomes.
struct Built {
    path: LwPath,
    query: Vec<String>,
    code: u8,
    payload: Option<(u16, Vec<u8>)>,
    paths: Vec<LwPath>,
    accept: Option<u16>,
}

impl Built {
    fn new(path: LwPath, query: Vec<String>, code: u8, payload: Option<(u16, Vec<u8>)>) -> Self {
        Built {
            path,
            query,
            code,
            payload,
            paths: Vec::new(),
            accept: None,
        }
    }
}

fn build(
    op: Op,
    data: &BorrowedValue<'_>,
    hex: bool,
    model: &dyn ObjectModel,
    enc: Encoding,
) -> Result<Built, String> {
    match op {
        Op::Read | Op::Discover | Op::Observe | Op::CancelObserve | Op::Delete => {
            let (path, query) = path_field(data, "path")?;
            if op == Op::Delete && path.is_empty() {
                return Err("delete needs an object or object instance path".into());
            }
            let code = if op == Op::Delete {
                codes::DELETE
            } else {
                codes::GET
            };
            Ok(Built::new(path, query, code, None))
        }
        Op::ReadComposite | Op::ObserveComposite | Op::CancelObserveComposite => {
            let paths = composite_paths(data)?;
            let answer = composite_format(enc);
            let asks_in = if answer == fmt_id::SENML_JSON {
                fmt_id::SENML_JSON
            } else {
                fmt_id::SENML_CBOR
            };
            let body = formats::encode_paths(asks_in, &paths).map_err(|e| e.to_string())?;
            Ok(Built {
                paths,
                accept: Some(answer),
                ..Built::new(
                    LwPath::ROOT,
                    Vec::new(),
                    codes::FETCH,
                    Some((asks_in, body)),
                )
            })
        }
        Op::WriteComposite => {
            let items = composite_items(data, hex, model)?;
            let f = composite_format(enc);
            let body = formats::encode_composite(f, &items).map_err(|e| e.to_string())?;
            Ok(Built {
                paths: items.iter().map(|i| i.path).collect(),
                ..Built::new(LwPath::ROOT, Vec::new(), codes::IPATCH, Some((f, body)))
            })
        }
        Op::Execute => {
            let (path, query) = path_field(data, "path")?;
            if path.len() != 3 {
                return Err(format!("execute needs a resource path, got {path}"));
            }
            let payload = match data.get("args") {
                None => None,
                Some(a) if a.is_null() => None,
                Some(a) => {
                    let s = scalar_string(a).ok_or("args is not a string")?;
                    (!s.is_empty()).then(|| (fmt_id::TEXT, s.into_bytes()))
                }
            };
            Ok(Built::new(path, query, codes::POST, payload))
        }
        Op::WriteAttr => {
            let (path, mut query) = path_field(data, "path")?;
            for (k, v) in data.as_object().into_iter().flat_map(|o| o.iter()) {
                if k == "path" || v.is_null() {
                    continue;
                }
                if !ATTRIBUTES.contains(&k.as_ref()) {
                    return Err(format!("unknown attribute {k:?}"));
                }
                let s = if k == "edge" || k == "con" {
                    flag(v)
                        .map(String::from)
                        .ok_or_else(|| format!("attribute {k} is not 0 or 1 (or a boolean)"))?
                } else {
                    let s = scalar_string(v)
                        .ok_or_else(|| format!("attribute {k} is not a number or string"))?;
                    if s.trim().parse::<f64>().is_err() {
                        return Err(format!("attribute {k}={s:?} is not a number"));
                    }
                    s.trim().to_string()
                };
                query.push(format!("{k}={s}"));
            }
            if query.is_empty() {
                return Err("write-attr sets no attribute".into());
            }
            Ok(Built::new(path, query, codes::PUT, None))
        }
        Op::Write => write(data, hex, model, enc),
        Op::Create => create(data, hex, model, enc),
    }
}

/// Notification attributes Write-Attributes may set (LwM2M 1.0–1.2).
const ATTRIBUTES: &[&str] = &[
    "pmin", "pmax", "gt", "lt", "st", "epmin", "epmax", "edge", "con", "hqmax",
];

/// A 0/1 attribute (`edge`, `con`, LwM2M 1.2) as `"0"` or `"1"`: from 0, 1, `"0"`, `"1"`,
/// `true`, `false`, `"true"` or `"false"`.
fn flag(v: &BorrowedValue<'_>) -> Option<&'static str> {
    if let Some(b) = v.as_bool() {
        return Some(if b { "1" } else { "0" });
    }
    match scalar_string(v)?.trim() {
        "1" | "true" => Some("1"),
        "0" | "false" => Some("0"),
        _ => None,
    }
}

/// The format of composite operations for a device (SenML JSON unless it announced SenML
/// CBOR or LwM2M CBOR).
fn composite_format(enc: Encoding) -> u16 {
    match enc.composite {
        f @ (fmt_id::SENML_CBOR | fmt_id::LWM2M_CBOR) => f,
        _ => fmt_id::SENML_JSON,
    }
}

/// `reqPath` of a composite command: the strings among its `paths` (read and observe) or its
/// `content` items' `path`s (write), each with a leading `/`.
fn composite_req_paths(op: Op, data: &BorrowedValue<'_>) -> Box<[Box<str>]> {
    let strings: Vec<&str> = if op == Op::WriteComposite {
        data.get("content")
            .and_then(|c| c.as_array())
            .into_iter()
            .flatten()
            .filter_map(|c| str_field(c, "path"))
            .collect()
    } else {
        data.get("paths")
            .and_then(|p| p.as_array())
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .collect()
    };
    strings
        .into_iter()
        .map(|p| {
            let p = p.trim();
            if p.starts_with('/') {
                p.into()
            } else {
                format!("/{p}").into()
            }
        })
        .collect()
}

/// Paths of a composite command must name distinct parts of the data model: at least an
/// object each, none within another (the device would answer one value twice).
fn check_distinct(paths: &[LwPath], what: &str) -> Result<(), String> {
    for (i, p) in paths.iter().enumerate() {
        if p.is_empty() {
            return Err(format!("{what}[{i}] is the root: name an object at least"));
        }
        if let Some((j, q)) = paths[..i]
            .iter()
            .enumerate()
            .find(|(_, q)| p.starts_with(q) || q.starts_with(p))
        {
            return Err(format!(
                "{what}[{i}] {p} overlaps {what}[{j}] {q}: composite paths must be distinct"
            ));
        }
    }
    Ok(())
}

/// `data.paths` of a composite read or observe: a non-empty array of distinct paths.
fn composite_paths(data: &BorrowedValue<'_>) -> Result<Vec<LwPath>, String> {
    let list = match data.get("paths") {
        None => return Err("missing paths (an array of paths)".into()),
        Some(v) => v.as_array().ok_or("paths is not an array")?,
    };
    if list.is_empty() {
        return Err("paths is empty".into());
    }
    let mut paths = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let s = v
            .as_str()
            .ok_or_else(|| format!("paths[{i}] is not a string"))?;
        paths.push(LwPath::parse(s).map_err(|e| format!("bad paths[{i}] {s:?}: {e}"))?);
    }
    check_distinct(&paths, "paths")?;
    Ok(paths)
}

/// `data.content` of a write-composite: values at absolute resource or resource-instance
/// paths, typed as for `write`, each path once.
fn composite_items(
    data: &BorrowedValue<'_>,
    hex: bool,
    model: &dyn ObjectModel,
) -> Result<Vec<WriteItem>, String> {
    let content = data
        .get("content")
        .and_then(|c| c.as_array())
        .ok_or("missing content array")?;
    if content.is_empty() {
        return Err("content is empty".into());
    }
    let mut items = Vec::with_capacity(content.len());
    for (i, c) in content.iter().enumerate() {
        let raw = str_field(c, "path").ok_or_else(|| format!("content[{i}] has no path"))?;
        let path = LwPath::parse(raw).map_err(|e| format!("bad content[{i}].path {raw:?}: {e}"))?;
        if path.len() < 3 {
            return Err(format!(
                "content[{i}].path {path} is not a resource or resource instance"
            ));
        }
        let value = c
            .get("value")
            .ok_or_else(|| format!("content[{i}] has no value"))?;
        let v = parse_write_value(str_field(c, "type"), value, hex, &path, model)
            .map_err(|e| format!("content[{i}]: {e}"))?;
        items.push(WriteItem { path, value: v });
    }
    let paths: Vec<LwPath> = items.iter().map(|i| i.path).collect();
    check_distinct(&paths, "content")?;
    Ok(items)
}

fn write(
    data: &BorrowedValue<'_>,
    hex: bool,
    model: &dyn ObjectModel,
    enc: Encoding,
) -> Result<Built, String> {
    if data.get("basePath").is_some() {
        let (base, query) = path_field(data, "basePath")?;
        let items = content_items(data, &base, hex, model)?;
        let code = match base.len() {
            3 => codes::PUT,
            2 => codes::POST,
            _ => {
                return Err(format!(
                    "write basePath must be an object instance or a resource, got {base}"
                ))
            }
        };
        let body = formats::encode(enc.format, &base, &items).map_err(|e| e.to_string())?;
        return Ok(Built::new(base, query, code, Some((enc.format, body))));
    }
    let (path, query) = path_field(data, "path")?;
    if path.len() < 3 {
        return Err(format!(
            "write needs a resource path (or basePath and content), got {path}"
        ));
    }
    let value = data.get("value").ok_or("missing value")?;
    let v = parse_write_value(str_field(data, "type"), value, hex, &path, model)?;
    let items = [WriteItem { path, value: v }];
    let body = formats::encode(enc.format, &path, &items).map_err(|e| e.to_string())?;
    Ok(Built::new(
        path,
        query,
        codes::PUT,
        Some((enc.format, body)),
    ))
}

fn create(
    data: &BorrowedValue<'_>,
    hex: bool,
    model: &dyn ObjectModel,
    enc: Encoding,
) -> Result<Built, String> {
    let (base, query) = path_field(data, "basePath")?;
    if base.len() != 1 {
        return Err(format!("create basePath must be an object, got {base}"));
    }
    let items = content_items(data, &base, hex, model)?;
    // Resources without an instance id: the device picks the instance. They are
    // encoded as the resources of a placeholder instance (no instance wrapper).
    let bare = items.iter().all(|i| i.path.len() == 2);
    let (enc_base, items) = if bare {
        let inst = base.child(0).expect("depth 1");
        let moved = items
            .into_iter()
            .map(|i| WriteItem {
                path: inst.child(i.path.instance().unwrap_or(0)).expect("depth 2"),
                value: i.value,
            })
            .collect::<Vec<_>>();
        (inst, moved)
    } else {
        (base, items)
    };
    let body = formats::encode(enc.format, &enc_base, &items).map_err(|e| e.to_string())?;
    Ok(Built::new(
        base,
        query,
        codes::POST,
        Some((enc.format, body)),
    ))
}

/// `content` items with paths joined to `base`.
fn content_items(
    data: &BorrowedValue<'_>,
    base: &LwPath,
    hex: bool,
    model: &dyn ObjectModel,
) -> Result<Vec<WriteItem>, String> {
    let content = data
        .get("content")
        .and_then(|c| c.as_array())
        .ok_or("missing content array")?;
    if content.is_empty() {
        return Err("content is empty".into());
    }
    let mut items = Vec::with_capacity(content.len());
    for (i, c) in content.iter().enumerate() {
        let rel = str_field(c, "path").ok_or_else(|| format!("content[{i}] has no path"))?;
        let mut path = *base;
        for seg in rel.split('/').filter(|s| !s.is_empty()) {
            let id: u16 = seg
                .parse()
                .map_err(|_| format!("content[{i}].path {rel:?} is not numeric"))?;
            path = path
                .child(id)
                .ok_or_else(|| format!("content[{i}].path {rel:?} is too deep"))?;
        }
        if path == *base {
            return Err(format!("content[{i}].path is empty"));
        }
        let value = c
            .get("value")
            .ok_or_else(|| format!("content[{i}] has no value"))?;
        let v = parse_write_value(str_field(c, "type"), value, hex, &path, model)
            .map_err(|e| format!("content[{i}]: {e}"))?;
        items.push(WriteItem { path, value: v });
    }
    Ok(items)
}

/// Reads a path field: `"/3/0/1"`, `"3/0/1"`, `"/1/0/"`, with an optional `?k=v&k2`
/// suffix that becomes Uri-Query options.
fn path_field(data: &BorrowedValue<'_>, key: &str) -> Result<(LwPath, Vec<String>), String> {
    let raw = match data.get(key) {
        None => return Err(format!("missing {key}")),
        Some(v) => v.as_str().ok_or_else(|| format!("{key} is not a string"))?,
    };
    let (p, q) = raw.split_once('?').unwrap_or((raw, ""));
    let path = LwPath::parse(p).map_err(|e| format!("bad {key} {raw:?}: {e}"))?;
    let query = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    Ok((path, query))
}

fn str_field<'v>(data: &'v BorrowedValue<'_>, key: &str) -> Option<&'v str> {
    data.get(key).and_then(|v| v.as_str())
}

/// A string or number as text (numbers in their shortest form).
fn scalar_string(v: &BorrowedValue<'_>) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_string());
    }
    if let Some(i) = v.as_i64() {
        return Some(i.to_string());
    }
    if let Some(u) = v.as_u64() {
        return Some(u.to_string());
    }
    v.as_f64().map(|f| f.to_string())
}

fn number(v: &BorrowedValue<'_>) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_i64().map(|i| i as f64))
        .or_else(|| v.as_u64().map(|u| u as f64))
        .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Result<Command, CommandError> {
        let mut b = json.as_bytes().to_vec();
        parse(&mut b, &(), Encoding::writes(fmt_id::TLV))
    }

    #[test]
    fn every_operation_has_its_row_and_name() {
        assert_eq!(Op::ALL.len(), Op::COUNT);
        for (i, op) in Op::ALL.into_iter().enumerate() {
            assert_eq!(op.index(), i);
            assert_eq!(Op::from_name(op.name()), Some(op));
        }
        let composite: Vec<_> = Op::ALL.into_iter().filter(|o| o.is_composite()).collect();
        assert_eq!(composite.len(), 4);
    }

    #[test]
    fn composite_commands_carry_their_paths() {
        let c = p(r#"{"reqID":1,"msgType":"read-composite","data":{"paths":["3/0/9","/1/0/1"]}}"#)
            .unwrap();
        assert_eq!((c.code, c.path.to_string()), (codes::FETCH, "/".into()));
        assert_eq!(c.paths.len(), 2);
        assert_eq!(&*c.echo.req_paths, ["/3/0/9".into(), "/1/0/1".into()]);
        assert_eq!(c.echo.req_path, None);
        assert_eq!(c.accept, Some(fmt_id::SENML_JSON));
        assert_eq!(
            c.payload,
            Some((
                fmt_id::SENML_JSON,
                br#"[{"n":"/3/0/9"},{"n":"/1/0/1"}]"#.to_vec()
            ))
        );
        let mut b = br#"{"reqID":2,"msgType":"write-composite","data":{"content":[{"path":"/3/0/14","type":"String","value":"+02"}]}}"#.to_vec();
        let enc = Encoding {
            format: fmt_id::TLV,
            composite: fmt_id::LWM2M_CBOR,
        };
        let c = parse(&mut b, &(), enc).unwrap();
        assert_eq!((c.code, c.accept), (codes::IPATCH, None));
        assert_eq!(
            c.payload,
            Some((
                fmt_id::LWM2M_CBOR,
                b"\xa1\x03\xa1\x00\xa1\x0e\x63+02".to_vec()
            ))
        );
        assert_eq!(&*c.echo.req_paths, ["/3/0/14".into()]);
    }

    #[test]
    fn echo_keeps_every_other_member() {
        let c = p(r#"{"reqID":"7","cacheID":3,"msgType":"read","data":{"path":"3/0/1?x=1"},"mheaders":{"ttl":0}}"#).unwrap();
        assert_eq!(c.op, Op::Read);
        assert_eq!(
            &*c.echo.members,
            r#""reqID":"7","cacheID":3,"mheaders":{"ttl":0}"#
        );
        assert_eq!(c.echo.req_path.as_deref(), Some("/3/0/1"));
        assert_eq!(c.path.to_string(), "/3/0/1");
        assert_eq!(c.query, vec!["x=1"]);
        assert!(c.bypass_queue);
        assert_eq!(c.code, codes::GET);
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"reqID":1,"data":{}}"#, "missing msgType"),
            (
                r#"{"reqID":1,"msgType":"jump","data":{}}"#,
                "unknown msgType",
            ),
            (r#"{"reqID":1,"msgType":"read"}"#, "missing data"),
            (r#"{"reqID":1,"msgType":"read","data":{}}"#, "missing path"),
            (
                r#"{"reqID":1,"msgType":"read","data":{"path":5}}"#,
                "path is not a string",
            ),
            (
                r#"{"reqID":1,"msgType":"read","data":{"path":"/a/b"}}"#,
                "bad path",
            ),
            (
                r#"{"reqID":1,"msgType":"execute","data":{"path":"/3/0"}}"#,
                "resource path",
            ),
            (
                r#"{"reqID":1,"msgType":"write","data":{"path":"/3/0/13","type":"Integer","value":"x"}}"#,
                "not an Integer",
            ),
            (
                r#"{"reqID":1,"msgType":"write","data":{"path":"/3/0/13","type":"Integer"}}"#,
                "missing value",
            ),
            (
                r#"{"reqID":1,"msgType":"write","data":{"basePath":"/3","content":[{"path":"0/1","type":"String","value":"a"}]}}"#,
                "object instance or a resource",
            ),
            (
                r#"{"reqID":1,"msgType":"write-attr","data":{"path":"/3/0/9","pmin":"abc"}}"#,
                "not a number",
            ),
            (
                r#"{"reqID":1,"msgType":"write-attr","data":{"path":"/3/0/9","zz":"1"}}"#,
                "unknown attribute",
            ),
            (
                r#"{"reqID":1,"msgType":"create","data":{"basePath":"/3/0","content":[]}}"#,
                "must be an object",
            ),
        ];
        for (json, want) in cases {
            let e = p(json).unwrap_err();
            assert!(e.error.contains(want), "{json}: {:?}", e.error);
        }
        let e = p(r#"{"reqID":9,"msgType":"read","data":{"path":"/x"}}"#).unwrap_err();
        assert_eq!(&*e.echo.members, r#""reqID":9"#);
        assert_eq!(e.echo.msg_type.as_deref(), Some("read"));
        assert_eq!(e.echo.req_path.as_deref(), Some("/x"));
    }

    #[test]
    fn write_attr_liberal() {
        let c = p(r#"{"reqID":1,"msgType":"write-attr","data":{"path":"/3/0/9","pmin":"10","pmax":60,"gt":null,"lt":null,"st":"5.0"}}"#).unwrap();
        assert_eq!(c.code, codes::PUT);
        assert_eq!(c.query, vec!["pmin=10", "pmax=60", "st=5.0"]);
    }

    #[test]
    fn writes_and_creates() {
        let c = p(r#"{"reqID":1,"msgType":"write","data":{"path":"/3/0/13","type":"Time","value":1700000000}}"#).unwrap();
        assert_eq!(c.code, codes::PUT);
        let (cf, body) = c.payload.unwrap();
        assert_eq!(cf, fmt_id::TLV);
        assert_eq!(body, vec![0xc4, 13, 0x65, 0x53, 0xf1, 0x00]);
        let c = p(r#"{"reqID":1,"msgType":"write","data":{"basePath":"/31024/11/","content":[{"path":"1","type":"String","value":"a"},{"path":"2","type":"Integer","value":"5"}]}}"#).unwrap();
        assert_eq!(c.code, codes::POST);
        assert_eq!(c.path.to_string(), "/31024/11");
        let c = p(r#"{"reqID":1,"msgType":"create","data":{"basePath":"/31024","content":[{"path":"11/1","type":"String","value":"x"}]}}"#).unwrap();
        assert_eq!(c.code, codes::POST);
        assert_eq!(c.path.to_string(), "/31024");
        let (_, body) = c.payload.unwrap();
        assert_eq!(body[0] & 0xc0, 0x00, "wrapped in an object instance");
        let c = p(r#"{"reqID":1,"msgType":"create","data":{"basePath":"/31024","content":[{"path":"1","type":"String","value":"x"}]}}"#).unwrap();
        let (_, body) = c.payload.unwrap();
        assert_eq!(body[0] & 0xc0, 0xc0, "bare resources");
        let c =
            p(r#"{"reqID":1,"msgType":"execute","data":{"path":"/3/0/4","args":"5"}}"#).unwrap();
        assert_eq!(c.payload, Some((fmt_id::TEXT, b"5".to_vec())));
        let c = p(r#"{"reqID":1,"msgType":"delete","data":{"path":"/31024/11"}}"#).unwrap();
        assert_eq!(c.code, codes::DELETE);
    }
}
