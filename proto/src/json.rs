//! A minimal compact JSON writer appending to a caller-owned buffer: what the
//! gateway publishes is built here without intermediate values.

/// Appends `s` as a JSON string literal, escaping per RFC 8259 (one implementation,
/// shared with the content-format renderer).
pub fn string(out: &mut Vec<u8>, s: &str) {
    crate::formats::write_json_string(s, out);
}

/// Appends `"key":` (the key is escaped).
pub fn key(out: &mut Vec<u8>, k: &str) {
    string(out, k);
    out.push(b':');
}

/// Appends an unsigned integer.
pub fn uint(out: &mut Vec<u8>, v: u64) {
    let mut buf = itoa::Buffer::new();
    out.extend_from_slice(buf.format(v).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut o = Vec::new();
        string(&mut o, "a\"b\\c\nd\u{1}é");
        assert_eq!(String::from_utf8(o).unwrap(), "\"a\\\"b\\\\c\\nd\\u0001é\"");
        let mut o = Vec::new();
        key(&mut o, "lt");
        uint(&mut o, 86400);
        assert_eq!(o, b"\"lt\":86400");
    }
}
