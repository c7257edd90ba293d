//! MQTT payloads about commands: responses, notifications, transport events and
//! errors, each echoing the command (`reqID` and every other member) with `data`
//! replaced.

use super::command::Echo;
use crate::coap::codes;
use crate::json;

/// Opens `{<members>,"msgType":T` (or without msgType when `msg_type` is None).
fn open(out: &mut Vec<u8>, echo: &Echo, msg_type: Option<&str>) {
    out.push(b'{');
    out.extend_from_slice(echo.members.as_bytes());
    if let Some(t) = msg_type {
        if !echo.members.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(b"\"msgType\":");
        json::string(out, t);
    }
}

fn sep(out: &mut Vec<u8>) {
    if out.last() != Some(&b'{') {
        out.push(b',');
    }
}

/// The `"reqPath":..,"code":..,"codeMsg":..` members (`reqPath` a list for a composite
/// command).
fn result_head(out: &mut Vec<u8>, echo: &Echo, code: u8) {
    out.extend_from_slice(b"\"data\":{");
    if !echo.req_paths.is_empty() {
        out.extend_from_slice(b"\"reqPath\":[");
        for (i, p) in echo.req_paths.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            json::string(out, p);
        }
        out.extend_from_slice(b"],");
    } else if let Some(p) = &echo.req_path {
        out.extend_from_slice(b"\"reqPath\":");
        json::string(out, p);
        out.push(b',');
    }
    out.extend_from_slice(b"\"code\":\"");
    codes::write_dotted(code, out);
    out.extend_from_slice(b"\",\"codeMsg\":");
    json::string(out, codes::code_name(code));
}

/// A response or notification: `content` is a JSON array already rendered (or None).
pub fn result(
    out: &mut Vec<u8>,
    echo: &Echo,
    msg_type: &str,
    seq: Option<u32>,
    code: u8,
    content: Option<&[u8]>,
    extra: &[(&str, &str)],
) {
    open(out, echo, Some(msg_type));
    if let Some(s) = seq {
        out.extend_from_slice(b",\"seqNum\":");
        json::uint(out, s as u64);
    }
    sep(out);
    result_head(out, echo, code);
    if let Some(c) = content {
        out.extend_from_slice(b",\"content\":");
        out.extend_from_slice(c);
    }
    for (k, v) in extra {
        out.push(b',');
        json::key(out, k);
        json::string(out, v);
    }
    out.extend_from_slice(b"}}");
}

/// A command that failed before or without a device answer: `code` with `error`.
pub fn error(out: &mut Vec<u8>, echo: &Echo, code: u8, error: &str) {
    let t = echo.msg_type.as_deref();
    open(out, echo, t);
    sep(out);
    result_head(out, echo, code);
    out.extend_from_slice(b",\"error\":");
    json::string(out, error);
    out.extend_from_slice(b"}}");
}

/// A transport event (`ack`, `coap_reset`, `coap_timeout`): the command echoed with
/// its own `data` and `msgType` replaced.
pub fn event(out: &mut Vec<u8>, echo: &Echo, msg_type: &str) {
    open(out, echo, Some(msg_type));
    sep(out);
    out.extend_from_slice(b"\"data\":");
    out.extend_from_slice(echo.data.as_bytes());
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo() -> Echo {
        Echo {
            members: "\"reqID\":1,\"cacheID\":\"x\"".into(),
            msg_type: Some("read".into()),
            data: "{\"path\":\"/3/0/1\"}".into(),
            req_path: Some("/3/0/1".into()),
            req_paths: Box::default(),
        }
    }

    fn s(v: Vec<u8>) -> String {
        String::from_utf8(v).unwrap()
    }

    #[test]
    fn shapes() {
        let mut o = Vec::new();
        result(
            &mut o,
            &echo(),
            "read",
            None,
            codes::CONTENT,
            Some(b"[]"),
            &[],
        );
        assert_eq!(
            s(o),
            r#"{"reqID":1,"cacheID":"x","msgType":"read","data":{"reqPath":"/3/0/1","code":"2.05","codeMsg":"content","content":[]}}"#
        );
        let mut o = Vec::new();
        result(
            &mut o,
            &echo(),
            "notify",
            Some(7),
            codes::CONTENT,
            None,
            &[],
        );
        assert_eq!(
            s(o),
            r#"{"reqID":1,"cacheID":"x","msgType":"notify","seqNum":7,"data":{"reqPath":"/3/0/1","code":"2.05","codeMsg":"content"}}"#
        );
        let mut o = Vec::new();
        event(&mut o, &echo(), "coap_timeout");
        assert_eq!(
            s(o),
            r#"{"reqID":1,"cacheID":"x","msgType":"coap_timeout","data":{"path":"/3/0/1"}}"#
        );
        let composite = Echo {
            msg_type: Some("read-composite".into()),
            req_path: None,
            req_paths: vec!["/3/0/9".into(), "/1/0/1".into()].into(),
            ..echo()
        };
        let mut o = Vec::new();
        result(
            &mut o,
            &composite,
            "read-composite",
            None,
            codes::CONTENT,
            Some(b"[]"),
            &[],
        );
        assert_eq!(
            s(o),
            r#"{"reqID":1,"cacheID":"x","msgType":"read-composite","data":{"reqPath":["/3/0/9","/1/0/1"],"code":"2.05","codeMsg":"content","content":[]}}"#
        );
        let mut o = Vec::new();
        error(&mut o, &Echo::default(), codes::BAD_REQUEST, "bad \"x\"");
        assert_eq!(
            s(o),
            r#"{"data":{"code":"4.00","codeMsg":"bad_request","error":"bad \"x\""}}"#
        );
    }
}
