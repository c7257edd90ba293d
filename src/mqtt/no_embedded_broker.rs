//! Builds without the `embedded-broker` cargo feature have no embedded broker (rumqttd is not
//! compiled in): the gateway talks to an external broker, and `mqtt.server = "embedded"` (the
//! default) is refused when the gateway starts.

use std::io;
use std::net::SocketAddr;

/// Why `mqtt.server = "embedded"` cannot be served by this build, and what to do instead.
pub const NO_EMBEDDED_BROKER: &str = "this build has no embedded MQTT broker (it was built \
     without the cargo feature \"embedded-broker\"); set mqtt.server to an external broker, \
     e.g. server = \"mqtt://127.0.0.1:1883\" or \"mqtts://broker.example:8883\" in [mqtt], or \
     --mqtt mqtt://HOST:PORT";

/// Always fails with [`NO_EMBEDDED_BROKER`] (kind `Unsupported`).
pub fn start_embedded_broker(_bind: SocketAddr, _bind_v5: Option<SocketAddr>) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        NO_EMBEDDED_BROKER,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_broker_is_refused_with_the_way_out() {
        let bind = "127.0.0.1:1883".parse().unwrap();
        let e = start_embedded_broker(bind, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Unsupported);
        let text = e.to_string();
        assert!(text.contains("no embedded MQTT broker"), "{text}");
        assert!(text.contains("embedded-broker"), "{text}");
        assert!(text.contains("mqtt.server"), "{text}");
    }
}
