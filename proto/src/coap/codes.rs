//! CoAP codes as single bytes (class << 5 | detail) and their names.

/// A CoAP code byte: `class << 5 | detail`.
pub type Code = u8;

/// Builds a code byte from its dotted form `class.detail`.
pub const fn code(class: u8, detail: u8) -> Code {
    (class << 5) | detail
}

pub const EMPTY: Code = 0;
pub const GET: Code = code(0, 1);
pub const POST: Code = code(0, 2);
pub const PUT: Code = code(0, 3);
pub const DELETE: Code = code(0, 4);
/// RFC 8132: FETCH 0.05, PATCH 0.06, iPATCH 0.07.
pub const FETCH: Code = code(0, 5);
pub const PATCH: Code = code(0, 6);
pub const IPATCH: Code = code(0, 7);
pub const CREATED: Code = code(2, 1);
pub const DELETED: Code = code(2, 2);
pub const VALID: Code = code(2, 3);
pub const CHANGED: Code = code(2, 4);
pub const CONTENT: Code = code(2, 5);
pub const CONTINUE: Code = code(2, 31);
pub const BAD_REQUEST: Code = code(4, 0);
pub const UNAUTHORIZED: Code = code(4, 1);
pub const BAD_OPTION: Code = code(4, 2);
pub const FORBIDDEN: Code = code(4, 3);
pub const NOT_FOUND: Code = code(4, 4);
pub const METHOD_NOT_ALLOWED: Code = code(4, 5);
pub const REQUEST_ENTITY_INCOMPLETE: Code = code(4, 8);
pub const REQUEST_ENTITY_TOO_LARGE: Code = code(4, 13);
pub const UNSUPPORTED_CONTENT_FORMAT: Code = code(4, 15);
pub const INTERNAL_SERVER_ERROR: Code = code(5, 0);
pub const SERVICE_UNAVAILABLE: Code = code(5, 3);

/// The class of a code (0 request/empty, 2 success, 4 client error, 5 server error).
pub const fn class(c: Code) -> u8 {
    c >> 5
}

/// The detail of a code.
pub const fn detail(c: Code) -> u8 {
    c & 0x1f
}

/// True for request codes (0.01 ..= 0.31).
pub const fn is_request(c: Code) -> bool {
    class(c) == 0 && c != EMPTY
}

/// True for response codes (2.xx ..= 5.xx).
pub const fn is_response(c: Code) -> bool {
    matches!(class(c), 2..=5)
}

/// Writes the dotted form (`"2.05"`) into `out`.
pub fn write_dotted(c: Code, out: &mut Vec<u8>) {
    out.push(b'0' + class(c));
    out.push(b'.');
    let d = detail(c);
    out.push(b'0' + d / 10);
    out.push(b'0' + d % 10);
}

/// The name the MQTT contract gives a response code (`"content"`), or `"unknown"`.
pub fn code_name(c: Code) -> &'static str {
    match (class(c), detail(c)) {
        (2, 1) => "created",
        (2, 2) => "deleted",
        (2, 3) => "valid",
        (2, 4) => "changed",
        (2, 5) => "content",
        (2, 31) => "continue",
        (4, 0) => "bad_request",
        (4, 1) => "unauthorized",
        (4, 2) => "bad_option",
        (4, 3) => "forbidden",
        (4, 4) => "not_found",
        (4, 5) => "method_not_allowed",
        (4, 6) => "not_acceptable",
        (4, 8) => "request_entity_incomplete",
        (4, 12) => "precondition_failed",
        (4, 13) => "request_entity_too_large",
        (4, 15) => "unsupported_content_format",
        (5, 0) => "internal_server_error",
        (5, 1) => "not_implemented",
        (5, 2) => "bad_gateway",
        (5, 3) => "service_unavailable",
        (5, 4) => "gateway_timeout",
        (5, 5) => "proxying_not_supported",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc8132_methods() {
        assert_eq!([FETCH, PATCH, IPATCH], [5, 6, 7]);
        let mut v = Vec::new();
        write_dotted(IPATCH, &mut v);
        assert_eq!(v, b"0.07");
        assert!(is_request(FETCH) && is_request(IPATCH));
    }

    #[test]
    fn dotted_and_names() {
        let mut v = Vec::new();
        write_dotted(CONTENT, &mut v);
        assert_eq!(v, b"2.05");
        v.clear();
        write_dotted(CONTINUE, &mut v);
        assert_eq!(v, b"2.31");
        assert_eq!(
            code_name(REQUEST_ENTITY_TOO_LARGE),
            "request_entity_too_large"
        );
        assert_eq!(code_name(code(4, 6)), "not_acceptable");
        assert!(is_request(POST) && !is_request(EMPTY) && is_response(CHANGED));
    }
}
