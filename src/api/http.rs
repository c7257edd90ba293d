//! The HTTP/1.1 side of the management API, without I/O: taking whole
//! requests out of a connection's buffered bytes under size limits, and
//! encoding responses. Small on purpose: the API is low-rate.

use std::io::Write;

/// Largest request head (request line and headers).
pub(crate) const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// A parsed request.
#[derive(Debug, Default)]
pub(crate) struct Request {
    pub method: String,
    /// The raw path, before `?`.
    pub path: String,
    /// Decoded query parameters, in order.
    pub query: Vec<(String, String)>,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub keep_alive: bool,
}

impl Request {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first value of a query parameter.
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response to write.
#[derive(Debug)]
pub(crate) struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
    /// An event stream: the connection goes to a thread of its own (`sse.rs`).
    pub stream: Option<super::sse::EventStream>,
}

pub(crate) const JSON: &str = "application/json";

impl Response {
    pub(super) fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: JSON,
            headers: Vec::new(),
            body,
            stream: None,
        }
    }

    pub(super) fn no_content() -> Response {
        Response {
            status: 204,
            content_type: "",
            headers: Vec::new(),
            body: Vec::new(),
            stream: None,
        }
    }

    /// EMQX's error shape: `{"code":"...","message":"..."}`.
    pub(super) fn error(status: u16, code: &str, message: &str) -> Response {
        let mut b = Vec::with_capacity(64 + message.len());
        b.push(b'{');
        crate::json::key(&mut b, "code");
        crate::json::string(&mut b, code);
        b.push(b',');
        crate::json::key(&mut b, "message");
        crate::json::string(&mut b, message);
        b.push(b'}');
        Response::json(status, b)
    }

    pub(super) fn with_header(mut self, name: &'static str, value: String) -> Response {
        self.headers.push((name, value));
        self
    }
}

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// Serializes a response; `head_only` for HEAD requests.
pub(crate) fn encode(resp: &Response, keep_alive: bool, head_only: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + resp.body.len());
    let _ = write!(out, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    if !resp.content_type.is_empty() {
        let _ = write!(out, "Content-Type: {}\r\n", resp.content_type);
    }
    for (k, v) in &resp.headers {
        let v: String = v.chars().filter(|&c| c != '\r' && c != '\n').collect();
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if resp.status != 204 {
        let _ = write!(out, "Content-Length: {}\r\n", resp.body.len());
    }
    out.extend_from_slice(if keep_alive {
        b"Connection: keep-alive\r\n\r\n"
    } else {
        b"Connection: close\r\n\r\n"
    });
    if !head_only {
        out.extend_from_slice(&resp.body);
    }
    out
}

/// A request that cannot be served: answer with this status, error code and
/// message, then close.
#[derive(Debug)]
pub(crate) struct Reject(pub u16, pub &'static str, pub String);

/// What the buffered bytes of a connection hold.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A whole request (taken out of the buffer).
    Request(Request),
    /// Not yet a whole request. `expects_continue`: the head is complete, its
    /// body is not, and the client asked for `100 Continue`.
    Partial { expects_continue: bool },
}

/// Takes the next whole request out of `buf` (sans I/O: the caller reads the
/// bytes). Blank lines before a request are dropped (RFC 9112 §2.2).
pub(crate) fn take_request(buf: &mut Vec<u8>) -> Result<Parsed, Reject> {
    let skip = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    buf.drain(..skip);
    let too_large = || Reject(431, "BAD_REQUEST", "request head too large".into());
    let (mut req, head_len, content_length) = match parse_head(buf)? {
        Some(parsed) if parsed.1 > MAX_HEAD => return Err(too_large()),
        Some(parsed) => parsed,
        None if buf.len() > MAX_HEAD => return Err(too_large()),
        None => {
            return Ok(Parsed::Partial {
                expects_continue: false,
            })
        }
    };
    if content_length > MAX_BODY {
        return Err(Reject(
            413,
            "BAD_REQUEST",
            format!("request body over {MAX_BODY} bytes"),
        ));
    }
    if buf.len() < head_len + content_length {
        let expects_continue = req
            .header("expect")
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        return Ok(Parsed::Partial { expects_continue });
    }
    req.body = buf[head_len..head_len + content_length].to_vec();
    buf.drain(..head_len + content_length);
    Ok(Parsed::Request(req))
}

/// Parses a complete head: `Ok(None)` if more bytes are needed.
fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize, usize)>, Reject> {
    let bad = |m: &str| Reject(400, "BAD_REQUEST", m.to_string());
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Request::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reject(431, "BAD_REQUEST", "too many headers".into()))
        }
        Err(e) => return Err(bad(&format!("malformed request: {e}"))),
    };
    let method = r.method.unwrap_or_default().to_string();
    let target = r.path.unwrap_or_default();
    let version = r.version.unwrap_or(1);
    if !target.starts_with('/') {
        return Err(bad("request target must be an absolute path"));
    }
    let mut req = Request {
        method,
        ..Request::default()
    };
    let mut content_length: Option<usize> = None;
    let mut close = false;
    let mut keep_alive = false;
    for h in r.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        match name.as_str() {
            "content-length" => {
                let n: usize = value.parse().map_err(|_| bad("bad Content-Length"))?;
                if content_length.is_some_and(|c| c != n) {
                    return Err(bad("conflicting Content-Length"));
                }
                content_length = Some(n);
            }
            "transfer-encoding" => {
                return Err(Reject(
                    411,
                    "BAD_REQUEST",
                    "Transfer-Encoding is not supported; send Content-Length".into(),
                ))
            }
            "connection" => {
                let v = value.to_ascii_lowercase();
                close |= v.split(',').any(|t| t.trim() == "close");
                keep_alive |= v.split(',').any(|t| t.trim() == "keep-alive");
            }
            _ => {}
        }
        req.headers.push((name, value));
    }
    req.keep_alive = if version == 0 { keep_alive } else { !close };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    req.path = path.to_string();
    req.query = parse_query(query);
    Ok(Some((req, head_len, content_length.unwrap_or(0))))
}

/// `a=1&b=x%20y` into decoded pairs (`+` is a space).
pub(crate) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// Decodes `%XX` escapes (and `+` as a space when `plus`); invalid escapes
/// stay as they are, invalid UTF-8 becomes U+FFFD.
pub(crate) fn percent_decode(s: &str, plus: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(if plus && b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding() {
        assert_eq!(percent_decode("a%2Fb+c%zz%4", true), "a/b c%zz%4");
        assert_eq!(percent_decode("a+b%20", false), "a+b ");
        assert_eq!(percent_decode("%ff", false), "\u{fffd}");
        assert_eq!(
            parse_query("path=/3/0/1&x&&v=a%3Db"),
            vec![
                ("path".to_string(), "/3/0/1".to_string()),
                ("x".to_string(), String::new()),
                ("v".to_string(), "a=b".to_string())
            ]
        );
    }

    #[test]
    fn whole_requests_only() {
        let mut buf =
            b"\r\nPOST /a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nab".to_vec();
        assert!(matches!(
            take_request(&mut buf),
            Ok(Parsed::Partial {
                expects_continue: true
            })
        ));
        buf.extend_from_slice(b"cGET /b HTTP/1.1\r\n");
        let Ok(Parsed::Request(r)) = take_request(&mut buf) else {
            panic!("a whole request");
        };
        assert_eq!((r.path.as_str(), r.body.as_slice()), ("/a", &b"abc"[..]));
        assert_eq!(buf, b"GET /b HTTP/1.1\r\n");
        assert!(matches!(
            take_request(&mut buf),
            Ok(Parsed::Partial {
                expects_continue: false
            })
        ));
        buf.extend_from_slice(b"\r\n");
        assert!(matches!(take_request(&mut buf), Ok(Parsed::Request(_))));
        assert!(buf.is_empty());
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 1, b'a');
        assert!(matches!(take_request(&mut big), Err(Reject(431, ..))));
    }

    #[test]
    fn heads() {
        let (r, n, cl) =
            parse_head(b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
                .ok()
                .flatten()
                .unwrap();
        assert_eq!(
            (r.method.as_str(), r.path.as_str(), n, cl, r.keep_alive),
            ("GET", "/a", 51, 3, true)
        );
        assert_eq!(r.param("b"), Some("1"));
        assert!(matches!(parse_head(b"GET / HTTP/1.1\r\n"), Ok(None)));
        let (r, _, _) = parse_head(b"GET / HTTP/1.0\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert!(!r.keep_alive);
        assert!(matches!(
            parse_head(b"\x00\x01 garbage\r\n\r\n"),
            Err(Reject(400, ..))
        ));
        assert!(matches!(
            parse_head(b"GET http://x/ HTTP/1.1\r\n\r\n"),
            Err(Reject(400, ..))
        ));
        assert!(matches!(
            parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(Reject(411, ..))
        ));
    }
}
