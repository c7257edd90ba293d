//! The LwM2M keys' own value types: auto_observe, the Update publish
//! condition, the translators and the block-wise transfer settings.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// `auto_observe`: `false`, `true`, or a list of paths to observe after
/// registration (`["/3/0", "/3303/0/5700"]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AutoObserve {
    /// Observe nothing automatically.
    #[default]
    Off,
    /// Observe every object instance the device registers.
    All,
    /// Observe these paths (`/obj[/inst[/res]]`, numeric).
    Paths(Vec<String>),
}

impl<'de> Deserialize<'de> for AutoObserve {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AutoObserve;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("true, false, or a list of paths such as [\"/3/0\"]")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<AutoObserve, E> {
                Ok(if v {
                    AutoObserve::All
                } else {
                    AutoObserve::Off
                })
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AutoObserve, A::Error> {
                let mut paths = Vec::new();
                while let Some(p) = seq.next_element::<String>()? {
                    paths.push(p);
                }
                Ok(AutoObserve::Paths(paths))
            }
        }
        d.deserialize_any(V)
    }
}

/// Checks an LwM2M path `/obj[/inst[/res]]` with numeric ids (objects and
/// resources up to 65535).
pub fn check_lwm2m_path(p: &str) -> Result<(), String> {
    let bad = || {
        format!("invalid path \"{p}\": expected /object[/instance[/resource]] with numeric ids, e.g. \"/3/0\"")
    };
    let rest = p.strip_prefix('/').ok_or_else(bad)?;
    let parts: Vec<&str> = rest.split('/').collect();
    if parts.is_empty() || parts.len() > 3 {
        return Err(bad());
    }
    for part in parts {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        part.parse::<u16>().map_err(|_| bad())?;
    }
    Ok(())
}

/// `update_msg_publish_condition`: when an Update is published to MQTT.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateCondition {
    /// Publish every Update.
    #[default]
    Always,
    /// Publish only Updates that carry an object list.
    ContainsObjectList,
}

/// One MQTT topic (relative to the mountpoint) and the QoS to use on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translator {
    pub topic: String,
    pub qos: u8,
}

impl Translator {
    fn new(topic: &str) -> Self {
        Translator {
            topic: topic.to_string(),
            qos: 0,
        }
    }
}

/// `[translators]`: the topics of each message kind. A translator given with
/// only one of its keys keeps its own default for the other.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "RawTranslators")]
pub struct Translators {
    /// Downlink commands (the gateway subscribes; may hold MQTT wildcards).
    pub command: Translator,
    pub response: Translator,
    pub notify: Translator,
    pub register: Translator,
    pub update: Translator,
    /// LwM2M 1.1 Send (`POST /dp`).
    pub send: Translator,
    /// The end of a registration; without its own table, the register translator's.
    pub deregister: Translator,
    /// Bootstrap progress (`started`, `finished`, `failed`).
    pub bootstrap: Translator,
}

impl Default for Translators {
    fn default() -> Self {
        Translators {
            command: Translator::new("dn/#"),
            response: Translator::new("up/resp"),
            notify: Translator::new("up/notify"),
            register: Translator::new("up/resp"),
            update: Translator::new("up/update"),
            send: Translator::new("up/send"),
            deregister: Translator::new("up/resp"),
            bootstrap: Translator::new("up/bootstrap"),
        }
    }
}

impl Translators {
    /// The translators by key name, in file order.
    pub fn iter(&self) -> [(&'static str, &Translator); 8] {
        [
            ("command", &self.command),
            ("response", &self.response),
            ("notify", &self.notify),
            ("register", &self.register),
            ("update", &self.update),
            ("send", &self.send),
            ("deregister", &self.deregister),
            ("bootstrap", &self.bootstrap),
        ]
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTranslators {
    command: RawTranslator,
    response: RawTranslator,
    notify: RawTranslator,
    register: RawTranslator,
    update: RawTranslator,
    send: RawTranslator,
    deregister: RawTranslator,
    bootstrap: RawTranslator,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTranslator {
    topic: Option<String>,
    qos: Option<u8>,
}

impl RawTranslator {
    fn over(self, default: Translator) -> Translator {
        Translator {
            topic: self.topic.unwrap_or(default.topic),
            qos: self.qos.unwrap_or(default.qos),
        }
    }
}

impl From<RawTranslators> for Translators {
    fn from(r: RawTranslators) -> Self {
        let d = Translators::default();
        let register = r.register.over(d.register);
        Translators {
            command: r.command.over(d.command),
            response: r.response.over(d.response),
            notify: r.notify.over(d.notify),
            deregister: r.deregister.over(register.clone()),
            register,
            update: r.update.over(d.update),
            send: r.send.over(d.send),
            bootstrap: r.bootstrap.over(d.bootstrap),
        }
    }
}

/// `[blockwise]`: CoAP block-wise transfer (RFC 7959).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Blockwise {
    pub enable: bool,
    /// 16, 32, 64, 128, 256, 512 or 1024.
    pub max_block_size: u16,
    /// Largest reassembled body, bytes.
    #[serde(deserialize_with = "super::size::deserialize")]
    pub max_body_size: u64,
    /// How long a block-wise exchange's state is kept.
    #[serde(deserialize_with = "super::duration::deserialize")]
    pub exchange_lifetime: Duration,
}

impl Default for Blockwise {
    fn default() -> Self {
        Blockwise {
            enable: true,
            max_block_size: 1024,
            max_body_size: 4 << 20,
            exchange_lifetime: Duration::from_secs(247),
        }
    }
}

/// The block sizes CoAP allows.
pub const BLOCK_SIZES: [u16; 7] = [16, 32, 64, 128, 256, 512, 1024];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["/3", "/3/0", "/3303/0/5700", "/65535/65535/65535"] {
            assert!(check_lwm2m_path(ok).is_ok(), "{ok}");
        }
        for bad in ["", "/", "3/0", "/3/", "/a/0", "/3/0/1/2", "/70000", "/3//0"] {
            assert!(check_lwm2m_path(bad).is_err(), "{bad}");
        }
    }
}
