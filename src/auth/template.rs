//! Placeholder substitution (`${clientid}`, `${username}`, `${password}`,
//! `${peerhost}`, `${endpoint_name}`) and the encodings each place needs.

use super::AuthRequest;

/// How a substituted value is written.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Enc {
    /// As is (body values; encoded afterwards as a whole).
    Raw,
    /// Percent-encoded (URL path and query).
    Url,
    /// As is, with CR and LF removed (header values).
    Header,
}

fn lookup<'a>(req: &'a AuthRequest, name: &str) -> Option<&'a str> {
    Some(match name {
        "clientid" => &req.clientid,
        "username" => &req.username,
        "password" => &req.password,
        "peerhost" => &req.peerhost,
        "endpoint_name" => &req.endpoint_name,
        _ => return None,
    })
}

/// Appends `template` to `out` with every known `${name}` replaced by the
/// request's value (encoded as `enc` says); unknown placeholders stay as they
/// are.
pub(crate) fn render(out: &mut String, template: &str, req: &AuthRequest, enc: Enc) {
    let mut rest = template;
    while let Some(i) = rest.find("${") {
        let (lit, tail) = rest.split_at(i);
        push_literal(out, lit, enc);
        let Some(end) = tail.find('}') else {
            push_literal(out, tail, enc);
            return;
        };
        match lookup(req, &tail[2..end]) {
            Some(v) => match enc {
                Enc::Raw => out.push_str(v),
                Enc::Url => url_encode(out, v),
                Enc::Header => push_literal(out, v, Enc::Header),
            },
            None => push_literal(out, &tail[..=end], enc),
        }
        rest = &tail[end + 1..];
    }
    push_literal(out, rest, enc);
}

/// Template text is written as the user configured it (the URL's own
/// reserved characters stay), except that header values never carry CR/LF.
fn push_literal(out: &mut String, s: &str, enc: Enc) {
    if enc == Enc::Header {
        out.extend(s.chars().filter(|&c| c != '\r' && c != '\n'));
    } else {
        out.push_str(s);
    }
}

pub(crate) fn rendered(template: &str, req: &AuthRequest, enc: Enc) -> String {
    let mut s = String::with_capacity(template.len() + 16);
    render(&mut s, template, req, enc);
    s
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn url_encode(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> AuthRequest {
        AuthRequest {
            endpoint_name: "ep 1".into(),
            clientid: "c/1".into(),
            username: "u".into(),
            password: "p&w=\r\nx".into(),
            peerhost: "10.0.0.1".into(),
        }
    }

    #[test]
    fn substitution() {
        let r = req();
        assert_eq!(
            rendered("/a/${clientid}?e=${endpoint_name}&x=${nope}", &r, Enc::Url),
            "/a/c%2F1?e=ep%201&x=${nope}"
        );
        assert_eq!(
            rendered("${username}:${password}", &r, Enc::Raw),
            "u:p&w=\r\nx"
        );
        assert_eq!(
            rendered("Bearer ${password}\n", &r, Enc::Header),
            "Bearer p&w=x"
        );
        assert_eq!(rendered("${peerhost}${", &r, Enc::Raw), "10.0.0.1${");
        assert_eq!(rendered("ü${clientid}ü", &r, Enc::Url), "üc%2F1ü");
    }
}
