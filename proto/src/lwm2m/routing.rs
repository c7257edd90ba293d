//! Which endpoint a command topic names. Resolved once, on the shard whose broker
//! connection received the command (the engine's router), and handed to the core with the
//! command: the core looks the endpoint up by name and never parses the topic again.

use super::command::Arrival;
use super::directory::Directory;
use super::settings::CoreSettings;
use super::template::{filter_matches, Template};

/// What a command topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The endpoint name: the placeholder's value (a mountpoint keyed by the name), or the
    /// registration that rendered the topic's mountpoint; without one, the mountpoint
    /// itself (no endpoint has that name: the command is answered "not registered").
    pub endpoint: String,
    /// The topic's mountpoint (the rendered prefix): where an answer goes when the
    /// endpoint is not registered.
    pub mountpoint: String,
}

/// A command an MQTT application published, with what its topic resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedCommand {
    pub to: Resolved,
    pub payload: Vec<u8>,
    /// Times it was forwarded between shards (bounded).
    pub hops: u8,
    /// Its MQTT 5 message-expiry interval and when a shard first took it.
    pub arrival: Arrival,
}

impl RoutedCommand {
    /// `payload` published on `topic`, resolved with the settings' mountpoint and command
    /// topic and the directory, as the engine's router resolves it (tests and fuzzing
    /// hand commands to a core this way); None when it is not a command topic.
    pub fn from_topic(
        settings: &CoreSettings,
        dir: &Directory,
        topic: &str,
        payload: Vec<u8>,
        arrival: Arrival,
    ) -> Option<Self> {
        let to = resolve(&settings.mountpoint, &settings.command.topic, dir, topic)?;
        Some(RoutedCommand {
            to,
            payload,
            hops: 0,
            arrival,
        })
    }
}

/// The endpoint `topic` names under `mountpoint` (the template whose suffix is the command
/// translator's topic, `command_topic`); None when it is not a command topic of the gateway.
pub fn resolve(
    mountpoint: &Template,
    command_topic: &str,
    dir: &Directory,
    topic: &str,
) -> Option<Resolved> {
    let (rendered, rest, captured) = mountpoint.match_prefix(topic)?;
    if !filter_matches(command_topic, rest) {
        return None;
    }
    let endpoint = match captured.filter(|_| mountpoint.keyed_by_name()) {
        Some(name) => name.to_string(),
        None => dir.route(rendered).unwrap_or_else(|| rendered.to_string()),
    };
    Some(Resolved {
        endpoint,
        mountpoint: rendered.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lwm2m::directory::DirEntry;

    #[test]
    fn topics_resolve_to_endpoints() {
        let dir = Directory::new();
        let by_name = Template::parse("lwm2m/${endpoint_name}/").with_suffix("dn/#");
        let r = resolve(&by_name, "dn/#", &dir, "lwm2m/dev1/dn/cmd").unwrap();
        assert_eq!(
            (r.endpoint.as_str(), r.mountpoint.as_str()),
            ("dev1", "lwm2m/dev1/")
        );
        assert_eq!(resolve(&by_name, "dn/#", &dir, "lwm2m/dev1/up/resp"), None);
        assert_eq!(resolve(&by_name, "dn/#", &dir, "other/dev1/dn/cmd"), None);

        let by_id = Template::parse("gw/${clientid}/").with_suffix("dn/#");
        let unknown = resolve(&by_id, "dn/#", &dir, "gw/imei9/dn/x").unwrap();
        assert_eq!(unknown.endpoint, "gw/imei9/");
        let at = DirEntry {
            shard: 1,
            location: 3,
        };
        dir.claim("dev1", at, false).unwrap();
        dir.set_route("gw/imei9/", "dev1", 3);
        let known = resolve(&by_id, "dn/#", &dir, "gw/imei9/dn/x").unwrap();
        assert_eq!(known.endpoint, "dev1");
    }
}
