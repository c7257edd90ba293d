//! Durations written as strings with a unit: `"100ms"`, `"22s"`, `"5m"`,
//! `"2h"`, `"1d"`, or several of them run together (`"1h30m"`). A bare
//! integer (TOML `30` or the string `"30"`) means seconds.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

const HINT: &str =
    "expected a number with a unit (ms, s, m, h, d) such as \"22s\"; a bare number means seconds";

/// Parses a duration string (see the module documentation).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let s = input.trim();
    if s.is_empty() {
        return Err(format!("invalid duration \"{input}\": {HINT}"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("invalid duration \"{input}\": number too large"));
    }
    let lower = s.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let mut total = Duration::ZERO;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if start == i {
            return Err(format!("invalid duration \"{input}\": {HINT}"));
        }
        let n: u64 = lower[start..i]
            .parse()
            .map_err(|_| format!("invalid duration \"{input}\": number too large"))?;
        let ustart = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let part = match &lower[ustart..i] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => n.checked_mul(60).map(Duration::from_secs),
            "h" => n.checked_mul(3600).map(Duration::from_secs),
            "d" => n.checked_mul(86400).map(Duration::from_secs),
            "" => {
                return Err(format!(
                    "invalid duration \"{input}\": missing unit; {HINT}"
                ))
            }
            unit => {
                return Err(format!(
                    "invalid duration \"{input}\": unknown unit \"{unit}\"; {HINT}"
                ))
            }
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| format!("invalid duration \"{input}\": too large"))?;
    }
    Ok(total)
}

/// Formats a duration the way the configuration file writes it (`"22s"`,
/// `"100ms"`, `"5m"`): the largest unit that represents it exactly.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let (s, sub) = (ms / 1000, ms % 1000);
    if sub > 0 {
        return format!("{ms}ms");
    }
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60)] {
        let (q, r) = (s / n, s % n);
        if r == 0 {
            return format!("{q}{unit}");
        }
    }
    format!("{s}s")
}

/// `deserialize_with` helper for `Duration` fields.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration string such as \"22s\" or an integer number of seconds")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        u64::try_from(v)
            .map(Duration::from_secs)
            .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("22s"), Ok(Duration::from_secs(22)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("86400s"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 0s "), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1S"), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn bad_forms() {
        for bad in [
            "",
            "s",
            "5x",
            "1.5s",
            "-1s",
            "ms5",
            "5 s",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn format_round_trips() {
        for s in ["100ms", "22s", "5m", "2h", "1d", "0s", "1500ms", "90s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }
}
