//! Repairs the two slips hand-written configuration bodies make, so that the documented
//! `curl -d '{ ... }'` examples work as they are: a missing comma between two members or
//! elements that stand on separate lines, and a trailing comma before `}` or `]`.
//! Anything else that is not JSON stays an error for the JSON parser to report.

/// `input` with missing line-break commas inserted and trailing commas removed; `None` when
/// nothing needed repair (the caller then reports the parser's error on the original).
pub(super) fn repair(input: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(input.len() + 8);
    let mut changed = false;
    // Where in `out` a value ended, with no comma, colon or bracket after it yet.
    let mut value_end: Option<usize> = None;
    // Where in `out` the last comma outside strings was written.
    let mut last_comma: Option<usize> = None;
    let mut newline_since_value = false;
    let mut i = 0;
    while i < input.len() {
        let c = input[i];
        match c {
            b'"' => {
                if value_end.is_some() && newline_since_value {
                    out.push(b',');
                    changed = true;
                }
                let start = i;
                i += 1;
                while i < input.len() && input[i] != b'"' {
                    i += if input[i] == b'\\' { 2 } else { 1 };
                }
                let end = (i + 1).min(input.len());
                out.extend_from_slice(&input[start..end]);
                i = end;
                value_end = Some(out.len());
                last_comma = None;
                newline_since_value = false;
                continue;
            }
            b'}' | b']' => {
                if let Some(at) = last_comma.take() {
                    if out[at + 1..].iter().all(u8::is_ascii_whitespace) {
                        out.remove(at);
                        changed = true;
                    }
                }
                out.push(c);
                value_end = Some(out.len());
                newline_since_value = false;
            }
            b',' => {
                out.push(c);
                last_comma = Some(out.len() - 1);
                value_end = None;
            }
            b'{' | b'[' if value_end.is_some() && newline_since_value => {
                out.extend_from_slice(&[b',', c]);
                changed = true;
                value_end = None;
                last_comma = None;
            }
            b':' | b'{' | b'[' => {
                out.push(c);
                value_end = None;
                last_comma = None;
            }
            b'\n' | b'\r' => {
                out.push(c);
                newline_since_value = value_end.is_some();
            }
            c if c.is_ascii_whitespace() => out.push(c),
            _ => {
                // A bare literal (number, true, false, null) starts or continues.
                let starts = i == 0 || !is_literal_byte(input[i - 1]);
                if starts && value_end.is_some() && newline_since_value {
                    out.push(b',');
                    changed = true;
                }
                out.push(c);
                if i + 1 >= input.len() || !is_literal_byte(input[i + 1]) {
                    value_end = Some(out.len());
                    newline_since_value = false;
                } else {
                    value_end = None;
                }
                last_comma = None;
            }
        }
        i += 1;
    }
    changed.then_some(out)
}

fn is_literal_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(s: &str) -> String {
        String::from_utf8(repair(s.as_bytes()).expect("repaired")).unwrap()
    }

    #[test]
    fn the_documented_body_parses_after_repair() {
        let body = "{\n  \"name\": \"lwm2m\"\n  \"lifetime_min\": \"1s\",\n  \"auto_observe\": true,\n  \"listeners\": [\n    {\n      \"bind\": \"5783\",\n      \"max_connections\": 1024000,\n    }\n  ],\n}";
        let mut out = repair(body.as_bytes()).expect("repaired");
        let v = simd_json::to_owned_value(&mut out).expect("valid JSON after repair");
        use simd_json::prelude::*;
        assert_eq!(v["name"].as_str(), Some("lwm2m"));
        assert_eq!(
            v["listeners"][0]["max_connections"].as_u64(),
            Some(1_024_000)
        );
    }

    #[test]
    fn what_is_repaired_and_what_is_not() {
        assert_eq!(fixed("[1,\n2,\n]"), "[1,\n2\n]");
        assert_eq!(fixed("[{}\n{}]"), "[{}\n,{}]");
        assert_eq!(
            fixed("{\"a\": 1\n\"b\": [true\nfalse]}"),
            "{\"a\": 1\n,\"b\": [true\n,false]}"
        );
        // Strings keep their commas, brackets and escaped quotes.
        assert_eq!(fixed("{\"a\": \"x,]}\\\"\",}"), "{\"a\": \"x,]}\\\"\"}");
        // Valid JSON and same-line slips are left alone.
        assert_eq!(repair(b"{\"a\": 1, \"b\": [1, 2]}"), None);
        assert_eq!(repair(b"{\"a\": 1 \"b\": 2}"), None);
        assert_eq!(repair(b"not json"), None);
        // Truncated input does not panic.
        for n in 0..20 {
            let _ = repair(&b"{\"a\": \"x\\\n,\n}"[..n.min(13)]);
        }
    }
}
