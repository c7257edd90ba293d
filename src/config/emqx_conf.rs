//! EMQX's configuration as it is: a `.conf`/`.hocon` file holding EMQX's
//! `gateway.lwm2m { ... }` block (EMQX's key names, units and forms), with the gateway's
//! own tables (`mqtt`, `engine`, `api`, `coap`, `queue`, `store`, `bootstrap`, `log`)
//! beside it at the top level. The HOCON document is turned into the TOML configuration's
//! shape and read by the same deserializer, so a misspelt key is the same error; keys
//! EMQX has and the gateway does not use are dropped with a warning naming each.

use toml::{Table, Value};

use super::{Config, ConfigError};

/// Top-level tables of the gateway's own that may stand beside `gateway.lwm2m`.
const OWN_TABLES: &[&str] = &[
    "mqtt",
    "engine",
    "api",
    "coap",
    "queue",
    "store",
    "cluster",
    "bootstrap",
    "log",
];

/// Keys of EMQX's `gateway.lwm2m` block the gateway does not use.
const EMQX_ONLY_GATEWAY: &[&str] = &["clientinfo_override"];

/// Keys of an EMQX listener the gateway does not use.
const EMQX_ONLY_LISTENER: &[&str] = &[
    "enable",
    "enable_authn",
    "access_rules",
    "mountpoint",
    "acceptors",
    "udp_options",
    "proxy_protocol",
    "proxy_protocol_timeout",
    "limiter",
];

/// A HOCON configuration and the warnings about what EMQX has that the gateway does
/// not use.
pub(super) fn from_hocon_str(text: &str) -> Result<(Config, Vec<String>), ConfigError> {
    let doc = ::hocon::parse(text).map_err(|e| ConfigError::invalid("(HOCON)", e.to_string()))?;
    let mut warnings = Vec::new();
    let mut out = Table::new();
    for key in doc.keys() {
        let Some(v) = doc.get(key).map(to_toml) else {
            continue;
        };
        match (key, v) {
            ("gateway", Some(Value::Table(gateways))) => {
                for (name, g) in gateways {
                    match (name.as_str(), g) {
                        ("lwm2m", Value::Table(lwm2m)) => {
                            lwm2m_block(lwm2m, &mut out, &mut warnings)?
                        }
                        ("lwm2m", _) => {
                            return Err(ConfigError::invalid(
                                "gateway.lwm2m",
                                "expected an object { ... }",
                            ))
                        }
                        (other, _) => warnings.push(format!("gateway.{other}")),
                    }
                }
            }
            ("log", Some(Value::Table(t))) if !t.keys().all(|k| k == "format") => {
                // EMQX's own `log { console { ... } }`.
                warnings.push("log".to_string());
            }
            (k, Some(v)) if OWN_TABLES.contains(&k) => {
                out.insert(k.to_string(), v);
            }
            (k, _) => warnings.push(k.to_string()),
        }
    }
    let toml = toml::to_string(&out)
        .map_err(|e| ConfigError::invalid("(HOCON)", format!("not representable: {e}")))?;
    let config = Config::from_toml_str(&toml)?;
    Ok((config, warnings))
}

/// The keys of `gateway.lwm2m`, in the TOML configuration's shape.
fn lwm2m_block(
    block: Table,
    out: &mut Table,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    for (k, v) in block {
        match k.as_str() {
            "enable" => {
                match v {
                    Value::Boolean(true) => {}
                    Value::Boolean(false) => return Err(ConfigError::invalid(
                        "gateway.lwm2m.enable",
                        "false: the gateway would serve nothing (remove the key or set it to true)",
                    )),
                    _ => {
                        return Err(ConfigError::invalid(
                            "gateway.lwm2m.enable",
                            "expected true or false",
                        ))
                    }
                }
            }
            k if EMQX_ONLY_GATEWAY.contains(&k) => warnings.push(format!("gateway.lwm2m.{k}")),
            "auto_observe" => {
                out.insert(k, auto_observe(v));
            }
            "listeners" => {
                let Value::Table(kinds) = v else {
                    return Err(ConfigError::invalid(
                        "gateway.lwm2m.listeners",
                        "expected an object",
                    ));
                };
                out.insert(k, Value::Table(listeners(kinds, warnings)));
            }
            _ => {
                out.insert(k, v);
            }
        }
    }
    Ok(())
}

/// EMQX's forms of `auto_observe`: a boolean, `"on"`/`"off"`, or paths separated by
/// commas (`"/3/0,/3/0/1"`).
fn auto_observe(v: Value) -> Value {
    match v {
        Value::String(s) => match s.trim() {
            "on" | "true" => Value::Boolean(true),
            "off" | "false" | "" => Value::Boolean(false),
            paths => Value::Array(
                paths
                    .split(',')
                    .map(|p| Value::String(p.trim().to_string()))
                    .collect(),
            ),
        },
        other => other,
    }
}

/// `listeners.<kind>.<name>`: EMQX-only keys dropped with a warning, and DTLS's
/// `dtls_options` certificate files moved to the listener (`cacertfile` is `cafile`).
fn listeners(kinds: Table, warnings: &mut Vec<String>) -> Table {
    let mut out = Table::new();
    for (kind, named) in kinds {
        let Value::Table(named) = named else {
            out.insert(kind, named);
            continue;
        };
        let mut kind_out = Table::new();
        for (name, l) in named {
            let Value::Table(l) = l else {
                kind_out.insert(name, l);
                continue;
            };
            let at = format!("gateway.lwm2m.listeners.{kind}.{name}");
            let mut l_out = Table::new();
            for (k, v) in l {
                match (k.as_str(), v) {
                    ("dtls_options", Value::Table(opts)) => {
                        for (o, ov) in opts {
                            match o.as_str() {
                                "certfile" | "keyfile" => {
                                    l_out.insert(o, ov);
                                }
                                "cacertfile" => {
                                    l_out.insert("cafile".to_string(), ov);
                                }
                                _ => warnings.push(format!("{at}.dtls_options.{o}")),
                            }
                        }
                    }
                    (k, _) if EMQX_ONLY_LISTENER.contains(&k) => warnings.push(format!("{at}.{k}")),
                    (_, v) => {
                        l_out.insert(k, v);
                    }
                }
            }
            kind_out.insert(name, Value::Table(l_out));
        }
        out.insert(kind, Value::Table(kind_out));
    }
    out
}

/// A HOCON value as TOML (None for null, which TOML cannot say: the key is left out).
fn to_toml(v: &::hocon::value::HoconValue) -> Option<Value> {
    use ::hocon::value::{HoconValue, ScalarType};
    Some(match v {
        HoconValue::Object(m) => Value::Table(
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), to_toml(v)?)))
                .collect(),
        ),
        HoconValue::Array(a) => Value::Array(a.iter().filter_map(to_toml).collect()),
        HoconValue::Scalar(s) => match s.value_type {
            ScalarType::Null => return None,
            ScalarType::Boolean => Value::Boolean(s.raw == "true"),
            ScalarType::Number => match s.raw.parse::<i64>() {
                Ok(i) => Value::Integer(i),
                Err(_) => Value::Float(s.raw.parse().ok()?),
            },
            // Strings, and any kind a later parser version adds, as their text.
            _ => Value::String(s.raw.clone()),
        },
        _ => return None,
    })
}
