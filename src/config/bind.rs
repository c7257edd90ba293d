//! Listen addresses: `"0.0.0.0:5783"`, `"[::]:5783"`, or a bare port
//! (`"5783"` or TOML `5783`) meaning all IPv4 interfaces (`0.0.0.0:5783`).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use serde::de::{self, Deserializer, Visitor};

/// Parses a listen address (see the module documentation).
pub fn parse_bind(input: &str) -> Result<SocketAddr, String> {
    let s = input.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u16>()
            .map(|port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|_| format!("invalid port \"{input}\": must be 0..=65535"));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "invalid address \"{input}\": expected \"ip:port\" (\"0.0.0.0:5783\"), \
             \"[ipv6]:port\" (\"[::]:5783\") or a bare port (\"5783\")"
        )
    })
}

/// `deserialize_with` helper for `SocketAddr` fields.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_any(BindVisitor)
}

struct BindVisitor;

impl<'de> Visitor<'de> for BindVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an address \"ip:port\" or a port number")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        parse_bind(v).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<SocketAddr, E> {
        u16::try_from(v)
            .map(|port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .map_err(|_| E::custom(format!("invalid port {v}: must be 0..=65535")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<SocketAddr, E> {
        self.visit_i64(i64::try_from(v).unwrap_or(-1))
    }
}

/// `deserialize_with` helper for connection limits: a non-negative integer,
/// or `"infinity"` (EMQX's spelling of "no limit", read as `u64::MAX`).
pub fn deserialize_limit<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(LimitVisitor)
}

struct LimitVisitor;

impl<'de> Visitor<'de> for LimitVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer or \"infinity\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        match v.trim() {
            "infinity" => Ok(u64::MAX),
            s => s.parse().map_err(|_| {
                E::custom(format!(
                    "invalid value \"{v}\": expected a non-negative integer or \"infinity\""
                ))
            }),
        }
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("invalid value {v}: must not be negative")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(
            parse_bind("0.0.0.0:5783").unwrap().to_string(),
            "0.0.0.0:5783"
        );
        assert_eq!(parse_bind("[::]:5783").unwrap().to_string(), "[::]:5783");
        assert_eq!(parse_bind("5783").unwrap().to_string(), "0.0.0.0:5783");
        assert_eq!(parse_bind("127.0.0.1:0").unwrap().port(), 0);
        for bad in ["", "localhost:5783", "70000", "1.2.3.4", ":5783", "[::]"] {
            assert!(parse_bind(bad).is_err(), "{bad:?} accepted");
        }
    }
}
