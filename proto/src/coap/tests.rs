//! The codec checked against coap-lite, an independent implementation, and against
//! hostile input.

use super::codes::{self, code};
use super::*;
use coap_lite::{CoapOption, MessageClass, MessageType, Packet};
use std::collections::LinkedList;

fn sample() -> Vec<u8> {
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Con, codes::POST, 0x1234, &[1, 2, 3, 4]);
    w.option(opt::URI_PATH, b"rd")
        .option_uint(opt::CONTENT_FORMAT, 40)
        .option(opt::URI_QUERY, b"ep=dev1")
        .option(opt::URI_QUERY, b"lt=300")
        .option(opt::URI_QUERY, &[b'x'; 300]);
    w.payload(b"</1/0>,</3/0>");
    buf
}

#[test]
fn our_encoding_parsed_by_coap_lite() {
    let buf = sample();
    let p = Packet::from_bytes(&buf).expect("coap-lite parses our message");
    assert_eq!(p.header.message_id, 0x1234);
    assert_eq!(p.get_token(), &[1, 2, 3, 4]);
    assert_eq!(u8::from(p.header.code), codes::POST);
    assert_eq!(p.header.get_type(), MessageType::Confirmable);
    let q: Vec<_> = p
        .get_option(CoapOption::UriQuery)
        .unwrap()
        .iter()
        .cloned()
        .collect();
    assert_eq!(q[0], b"ep=dev1");
    assert_eq!(q[2].len(), 300);
    assert_eq!(
        p.get_first_option(CoapOption::ContentFormat).unwrap(),
        &vec![40u8]
    );
    assert_eq!(p.payload, b"</1/0>,</3/0>");
}

#[test]
fn coap_lite_encoding_parsed_by_us() {
    let mut p = Packet::new();
    p.header.message_id = 7;
    p.header.set_type(MessageType::NonConfirmable);
    p.header.code = MessageClass::from(code(2, 5));
    p.set_token(vec![9; 8]);
    p.add_option(CoapOption::Observe, vec![1, 0]);
    let mut lp = LinkedList::new();
    lp.push_back(b"rd".to_vec());
    lp.push_back(b"abc".to_vec());
    p.set_option(CoapOption::LocationPath, lp);
    p.add_option(CoapOption::Block2, vec![0x1e]);
    p.add_option(CoapOption::Unknown(2049), vec![0; 20]);
    p.payload = vec![0xaa; 600];
    let bytes = p.to_bytes().unwrap();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.mtype, MsgType::Non);
    assert_eq!(m.code, codes::CONTENT);
    assert_eq!(m.mid, 7);
    assert_eq!(m.token, &[9; 8]);
    assert_eq!(m.option_uint(opt::OBSERVE), Some(256));
    let loc: Vec<_> = m.option_values(opt::LOCATION_PATH).collect();
    assert_eq!(loc, vec![&b"rd"[..], &b"abc"[..]]);
    let b = BlockOpt::decode(m.option(opt::BLOCK2).unwrap()).unwrap();
    assert_eq!((b.num, b.more, b.size()), (1, true, 1024));
    assert_eq!(m.option(2049).unwrap().len(), 20);
    assert_eq!(m.payload.len(), 600);
}

#[test]
fn round_trip_through_both() {
    let buf = sample();
    let m = Message::parse(&buf).unwrap();
    let mut again = Vec::new();
    let mut w = MessageWriter::new(&mut again, m.mtype, m.code, m.mid, m.token);
    for (n, v) in m.options() {
        w.option(n, v);
    }
    w.payload(m.payload);
    assert_eq!(again, buf);
}

#[test]
fn every_truncation_is_total() {
    let buf = sample();
    for n in 0..buf.len() {
        // Any result is fine; a panic is not. Accepted prefixes must iterate cleanly.
        if let Ok(m) = Message::parse(&buf[..n]) {
            let _ = m.options().count();
        }
    }
}

#[test]
fn random_bytes_are_total() {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 64) as usize;
        let mut buf = Vec::with_capacity(len);
        let mut y = x;
        for _ in 0..len {
            y = y
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            buf.push((y >> 56) as u8);
        }
        if !buf.is_empty() {
            buf[0] = 0x40 | (buf[0] & 0x3f);
        }
        if let Ok(m) = Message::parse(&buf) {
            for (_, v) in m.options() {
                let _ = BlockOpt::decode(v);
            }
        }
    }
}

#[test]
fn rejects_format_errors() {
    assert_eq!(
        Message::parse(&[0x40, 1]).unwrap_err(),
        ParseError::TooShort
    );
    assert_eq!(
        Message::parse(&[0x80, 1, 0, 0]).unwrap_err(),
        ParseError::BadVersion
    );
    assert_eq!(
        Message::parse(&[0x49, 1, 0, 0]).unwrap_err(),
        ParseError::BadToken
    );
    assert_eq!(
        Message::parse(&[0x42, 1, 0, 0, 1]).unwrap_err(),
        ParseError::BadToken
    );
    assert_eq!(
        Message::parse(&[0x40, 1, 0, 0, 0xff]).unwrap_err(),
        ParseError::EmptyPayload
    );
    assert_eq!(
        Message::parse(&[0x40, 1, 0, 0, 0xf1, 0]).unwrap_err(),
        ParseError::BadOption
    );
    assert_eq!(
        Message::parse(&[0x40, 1, 0, 0, 0x13, 0]).unwrap_err(),
        ParseError::BadOption
    );
    assert_eq!(
        Message::parse(&[0x41, 0, 0, 0, 1]).unwrap_err(),
        ParseError::BadEmpty
    );
    // Option number overflow past 65535.
    let mut v = vec![0x40, 1, 0, 0];
    for _ in 0..300 {
        v.extend_from_slice(&[0xe0, 0xff, 0xff]);
    }
    assert_eq!(Message::parse(&v).unwrap_err(), ParseError::BadOption);
    let ping = Message::parse(&[0x40, 0, 0, 9]).unwrap();
    assert!(ping.is_empty());
}
