//! How a simulated device answers the gateway's requests, like a real LwM2M client:
//! reads (text/plain for one resource, TLV for an object instance), discover
//! (link-format), writes, executes, deletes, and observe / cancel-observe.
//!
//! The device's objects are fixed: Device (/3/0) with a few resources,
//! Temperature (/3303/0), Server (/1/0), and resource 0 (an Integer) for every
//! other instance in its object list. Values that change over time (the
//! temperature, the current time) follow a `tick` the caller passes, so each
//! notification carries a new value.

use crate::coap::{codes, opt, Message, MessageWriter, MsgType};

/// Content-Format numbers the devices use.
pub const FMT_TEXT: u16 = 0;
pub const FMT_LINK: u16 = 40;
pub const FMT_TLV: u16 = 11542;

/// A resource value as a device holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum SimValue {
    Str(String),
    Int(i64),
    Float(f64),
}

impl SimValue {
    fn text(&self, out: &mut Vec<u8>) {
        match self {
            SimValue::Str(s) => out.extend_from_slice(s.as_bytes()),
            SimValue::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
            SimValue::Float(f) => out.extend_from_slice(format!("{f:?}").as_bytes()),
        }
    }

    fn tlv_bytes(&self) -> Vec<u8> {
        match self {
            SimValue::Str(s) => s.as_bytes().to_vec(),
            SimValue::Int(i) => {
                let i = *i;
                if i8::try_from(i).is_ok() {
                    (i as i8).to_be_bytes().to_vec()
                } else if i16::try_from(i).is_ok() {
                    (i as i16).to_be_bytes().to_vec()
                } else if i32::try_from(i).is_ok() {
                    (i as i32).to_be_bytes().to_vec()
                } else {
                    i.to_be_bytes().to_vec()
                }
            }
            SimValue::Float(f) => f.to_be_bytes().to_vec(),
        }
    }
}

/// The resources of object instance `/obj/inst` of device `index` at `tick`.
pub fn resources(obj: u16, inst: u16, index: u32, tick: u32) -> Vec<(u16, SimValue)> {
    use SimValue::*;
    match (obj, inst) {
        (3, 0) => vec![
            (0, Str("lwm2m-gateway".into())),
            (1, Str("sim".into())),
            (2, Str(format!("SN{index}"))),
            (3, Str("1.0".into())),
            (9, Int(100 - (tick % 100) as i64)),
            (13, Int(1_700_000_000 + tick as i64)),
            (16, Str("U".into())),
        ],
        (3303, 0) => vec![
            (5700, Float(20.0 + (tick % 100) as f64 / 10.0)),
            (5701, Str("Cel".into())),
        ],
        (1, 0) => vec![(0, Int(1)), (1, Int(300)), (7, Str("U".into()))],
        _ => vec![(0, Int(tick as i64))],
    }
}

/// Appends one TLV resource entry (OMA TLV, type "resource with value").
pub fn tlv_resource(id: u16, value: &[u8], out: &mut Vec<u8>) {
    let len = value.len();
    let mut t: u8 = 0b11 << 6;
    if id > 255 {
        t |= 1 << 5;
    }
    let len_bytes: &[u8] = &(len as u32).to_be_bytes();
    let len_field: &[u8] = if len < 8 {
        t |= len as u8;
        &[]
    } else if len < 256 {
        t |= 1 << 3;
        &len_bytes[3..]
    } else if len < 65_536 {
        t |= 2 << 3;
        &len_bytes[2..]
    } else {
        t |= 3 << 3;
        &len_bytes[1..]
    };
    out.push(t);
    if id > 255 {
        out.extend_from_slice(&id.to_be_bytes());
    } else {
        out.push(id as u8);
    }
    out.extend_from_slice(len_field);
    out.extend_from_slice(value);
}

/// The numeric path segments of a request (at most 4; None if not numeric).
pub fn request_path(msg: &Message<'_>) -> Option<Vec<u16>> {
    let mut p = Vec::with_capacity(3);
    for seg in msg.option_values(opt::URI_PATH) {
        let s = std::str::from_utf8(seg).ok()?;
        p.push(s.parse().ok()?);
    }
    (p.len() <= 4).then_some(p)
}

/// The content of `path` (an object instance or a resource) at `tick`:
/// (Content-Format, payload), or None when the device has no such thing.
pub fn content(path: &[u16], index: u32, tick: u32) -> Option<(u16, Vec<u8>)> {
    match *path {
        [obj, inst] => {
            let mut out = Vec::with_capacity(64);
            for (id, v) in resources(obj, inst, index, tick) {
                tlv_resource(id, &v.tlv_bytes(), &mut out);
            }
            Some((FMT_TLV, out))
        }
        [obj, inst, res] => {
            let (_, v) = resources(obj, inst, index, tick)
                .into_iter()
                .find(|(id, _)| *id == res)?;
            let mut out = Vec::with_capacity(16);
            v.text(&mut out);
            Some((FMT_TEXT, out))
        }
        _ => None,
    }
}

/// What a device does with a request from the gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: u8,
    pub format: Option<u16>,
    pub payload: Vec<u8>,
    /// Observe option value to include (the first response to an observe).
    pub observe: Option<u32>,
    /// Set when the request started an observation of `path`.
    pub start_observe: Option<Vec<u16>>,
    /// Set when the request cancelled the observation of `path` (Observe=1).
    pub cancel_observe: Option<Vec<u16>>,
}

impl Answer {
    fn code(code: u8) -> Self {
        Self {
            code,
            format: None,
            payload: Vec::new(),
            observe: None,
            start_observe: None,
            cancel_observe: None,
        }
    }
}

/// Answers a request of the gateway to device `index` the way a real client would.
pub fn answer(msg: &Message<'_>, index: u32, tick: u32) -> Answer {
    let Some(path) = request_path(msg) else {
        return Answer::code(codes::NOT_FOUND);
    };
    match msg.code {
        codes::GET => {
            if msg.option_uint(opt::ACCEPT) == Some(FMT_LINK as u32) {
                let mut s = String::new();
                match *path.as_slice() {
                    [obj, inst] => {
                        s.push_str(&format!("</{obj}/{inst}>"));
                        for (id, _) in resources(obj, inst, index, tick) {
                            s.push_str(&format!(",</{obj}/{inst}/{id}>"));
                        }
                    }
                    _ => {
                        let p: Vec<String> = path.iter().map(|s| s.to_string()).collect();
                        s.push_str(&format!("</{}>", p.join("/")));
                    }
                }
                let mut a = Answer::code(codes::CONTENT);
                a.format = Some(FMT_LINK);
                a.payload = s.into_bytes();
                return a;
            }
            let Some((format, payload)) = content(&path, index, tick) else {
                return Answer::code(codes::NOT_FOUND);
            };
            let mut a = Answer::code(codes::CONTENT);
            a.format = Some(format);
            a.payload = payload;
            match msg.option_uint(opt::OBSERVE) {
                Some(0) => {
                    a.observe = Some(0);
                    a.start_observe = Some(path);
                }
                Some(1) => a.cancel_observe = Some(path),
                _ => {}
            }
            a
        }
        codes::PUT => Answer::code(codes::CHANGED),
        codes::POST => {
            if path.len() <= 1 {
                Answer::code(codes::CREATED)
            } else {
                Answer::code(codes::CHANGED)
            }
        }
        codes::DELETE => Answer::code(codes::DELETED),
        _ => Answer::code(codes::METHOD_NOT_ALLOWED),
    }
}

/// Writes the response to `req` (piggybacked ACK for a CON, NON otherwise, with
/// message id `non_mid`) into `out`.
pub fn write_response(req: &Message<'_>, a: &Answer, non_mid: u16, out: &mut Vec<u8>) {
    let (mtype, mid) = if req.mtype == MsgType::Con {
        (MsgType::Ack, req.mid)
    } else {
        (MsgType::Non, non_mid)
    };
    let mut w = MessageWriter::new(out, mtype, a.code, mid, req.token);
    if let Some(o) = a.observe {
        w.option_uint(opt::OBSERVE, o);
    }
    if let Some(f) = a.format {
        w.option_uint(opt::CONTENT_FORMAT, f as u32);
    }
    w.payload(&a.payload);
}

/// Writes a notification: `mtype` (CON or NON), a fresh message id, the
/// observation's token, Observe = `seq`, and the content of `path` at `tick`.
#[allow(clippy::too_many_arguments)]
pub fn write_notification(
    mtype: MsgType,
    mid: u16,
    token: &[u8],
    seq: u32,
    path: &[u16],
    index: u32,
    tick: u32,
    out: &mut Vec<u8>,
) {
    let (format, payload) = content(path, index, tick).unwrap_or((FMT_TEXT, b"0".to_vec()));
    let mut w = MessageWriter::new(out, mtype, codes::CONTENT, mid, token);
    w.option_uint(opt::OBSERVE, seq & 0xff_ffff)
        .option_uint(opt::CONTENT_FORMAT, format as u32);
    w.payload(&payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &[&str], observe: Option<u32>, accept: Option<u32>) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::GET, 9, &[1, 2, 3]);
        if let Some(o) = observe {
            w.option_uint(opt::OBSERVE, o);
        }
        for p in path {
            w.option(opt::URI_PATH, p.as_bytes());
        }
        if let Some(a) = accept {
            w.option_uint(opt::ACCEPT, a);
        }
        w.finish();
        buf
    }

    #[test]
    fn reads_text_and_tlv() {
        let b = get(&["3", "0", "0"], None, None);
        let a = answer(&Message::parse(&b).unwrap(), 5, 0);
        assert_eq!(a.code, codes::CONTENT);
        assert_eq!(a.format, Some(FMT_TEXT));
        assert_eq!(a.payload, b"lwm2m-gateway");

        let b = get(&["3", "0"], Some(0), None);
        let a = answer(&Message::parse(&b).unwrap(), 5, 0);
        assert_eq!(a.format, Some(FMT_TLV));
        assert_eq!(a.observe, Some(0));
        assert_eq!(a.start_observe, Some(vec![3, 0]));
        // First entry: resource 0, 13 bytes (8-bit length field).
        assert_eq!(&a.payload[..3], &[0b1100_1000, 0, 13]);

        let mut out = Vec::new();
        write_response(&Message::parse(&b).unwrap(), &a, 0, &mut out);
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.mtype, MsgType::Ack);
        assert_eq!(m.mid, 9);
        assert_eq!(m.token, &[1, 2, 3]);
        assert_eq!(m.option_uint(opt::OBSERVE), Some(0));
    }

    #[test]
    fn unknown_resource_is_not_found_and_discover_lists() {
        let b = get(&["3", "0", "77"], None, None);
        assert_eq!(
            answer(&Message::parse(&b).unwrap(), 0, 0).code,
            codes::NOT_FOUND
        );
        let b = get(&["3303", "0"], None, Some(40));
        let a = answer(&Message::parse(&b).unwrap(), 0, 0);
        assert_eq!(a.payload, b"</3303/0>,</3303/0/5700>,</3303/0/5701>");
    }

    #[test]
    fn notification_carries_sequence_and_token() {
        let mut out = Vec::new();
        write_notification(
            MsgType::Non,
            7,
            &[9, 9],
            3,
            &[3303, 0, 5700],
            1,
            5,
            &mut out,
        );
        let m = Message::parse(&out).unwrap();
        assert_eq!(m.token, &[9, 9]);
        assert_eq!(m.option_uint(opt::OBSERVE), Some(3));
        assert_eq!(m.payload, b"20.5");
    }
}
