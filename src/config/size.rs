//! Byte sizes: `"4MB"`, `"512KB"`, `"1GB"`, `"1024"` (bytes), or a TOML
//! integer (bytes). Units are binary and case-insensitive: KB = 1024 bytes,
//! MB = 1024 KB, GB = 1024 MB; `K`/`M`/`G` and `KiB`/`MiB`/`GiB` mean the same.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

const HINT: &str =
    "expected a number of bytes with an optional unit (B, KB, MB, GB) such as \"4MB\"";

/// Parses a size string into bytes (see the module documentation).
pub fn parse_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!("invalid size \"{input}\": {HINT}"));
    }
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| format!("invalid size \"{input}\": number too large"))?;
    let unit = s[digits..].trim_start().to_ascii_lowercase();
    let mult: u64 = match unit.as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "invalid size \"{input}\": unknown unit \"{}\"; {HINT}",
                &s[digits..].trim_start()
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size \"{input}\": too large"))
}

/// Formats a byte count the way the configuration file writes it: the
/// largest unit that represents it exactly (`"8MB"`, `"512KB"`, `"1000"`).
pub fn format_size(bytes: u64) -> String {
    for (unit, shift) in [("GB", 30), ("MB", 20), ("KB", 10)] {
        let low_bits = bytes & ((1u64 << shift) - 1);
        if bytes != 0 && low_bits == 0 {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// `deserialize_with` helper for `u64` size fields.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    d.deserialize_any(SizeVisitor)
}

struct SizeVisitor;

impl<'de> Visitor<'de> for SizeVisitor {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a size string such as \"4MB\" or an integer number of bytes")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        parse_size(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
        Ok(v)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form() {
        assert_eq!(parse_size("4MB"), Ok(4 << 20));
        assert_eq!(parse_size("8MB"), Ok(8 << 20));
        assert_eq!(parse_size("512KB"), Ok(512 << 10));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1024B"), Ok(1024));
        assert_eq!(parse_size("4mb"), Ok(4 << 20));
        assert_eq!(parse_size("4 MB"), Ok(4 << 20));
        assert_eq!(parse_size("16K"), Ok(16 << 10));
        assert_eq!(parse_size("2MiB"), Ok(2 << 20));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn bad_forms() {
        for bad in ["", "MB", "4XB", "-4MB", "4.5MB", "99999999999GB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn format_round_trips() {
        for s in ["4MB", "512KB", "1GB", "1000", "0"] {
            assert_eq!(format_size(parse_size(s).unwrap()), s);
        }
    }
}
