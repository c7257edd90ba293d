//! Raw CoAP as a device speaks it: requests built from parts, a device's UDP socket,
//! the gateway's requests as the device reads them, and the device's answers.

use lwm2m_gateway::coap::{opt, BlockOpt, Message, MessageWriter, MsgType};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

/// A confirmable request from parts; options go out in number order (those of one
/// number in the order given).
pub struct Req {
    code: u8,
    mid: u16,
    token: Vec<u8>,
    opts: Vec<(u16, Vec<u8>)>,
    payload: Vec<u8>,
}

impl Req {
    pub fn con(code: u8, mid: u16, token: &[u8]) -> Self {
        Self {
            code,
            mid,
            token: token.to_vec(),
            opts: Vec::new(),
            payload: Vec::new(),
        }
    }

    /// Uri-Path segments.
    pub fn path(self, segments: &[&str]) -> Self {
        segments
            .iter()
            .fold(self, |r, s| r.opt(opt::URI_PATH, s.as_bytes()))
    }

    /// Uri-Query parameters.
    pub fn query(self, params: &[&str]) -> Self {
        params
            .iter()
            .fold(self, |r, q| r.opt(opt::URI_QUERY, q.as_bytes()))
    }

    pub fn opt(mut self, number: u16, value: &[u8]) -> Self {
        self.opts.push((number, value.to_vec()));
        self
    }

    /// A uint option, minimally encoded.
    pub fn uint(self, number: u16, value: u32) -> Self {
        let skip = (value.leading_zeros() / 8) as usize;
        self.opt(number, &value.to_be_bytes()[skip..])
    }

    pub fn body(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut opts: Vec<&(u16, Vec<u8>)> = self.opts.iter().collect();
        opts.sort_by_key(|o| o.0);
        let mut buf = Vec::new();
        let mut w = MessageWriter::new(&mut buf, MsgType::Con, self.code, self.mid, &self.token);
        for (n, v) in opts {
            w.option(*n, v);
        }
        w.payload(&self.payload);
        buf
    }
}

/// A device's socket on `ip` (any 127.x address works on Linux loopback), its port
/// chosen by the system, its reads waiting `timeout` at most.
pub fn socket(ip: [u8; 4], timeout: Duration) -> UdpSocket {
    let s = UdpSocket::bind(SocketAddr::from((ip, 0))).unwrap();
    s.set_read_timeout(Some(timeout)).unwrap();
    s
}

/// The next datagram from the gateway (none within the read timeout fails).
pub fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let (n, _) = sock.recv_from(&mut buf).expect("datagram from the gateway");
    buf.truncate(n);
    buf
}

/// Sends `req` to the gateway at `gw` and returns the next datagram.
pub fn exchange(sock: &UdpSocket, gw: SocketAddr, req: &[u8]) -> Vec<u8> {
    sock.send_to(req, gw).unwrap();
    recv(sock)
}

/// The registration location a Location-Path `rd/<location>` names.
pub fn location(m: &Message<'_>) -> Option<String> {
    let segments: Vec<_> = m.option_values(opt::LOCATION_PATH).collect();
    (segments.len() == 2).then(|| String::from_utf8_lossy(segments[1]).into_owned())
}

/// The device's piggybacked answer to the request `mid`/`token`, with uint options
/// (in any order).
pub fn ack(mid: u16, token: &[u8], code: u8, opts: &[(u16, u32)], payload: &[u8]) -> Vec<u8> {
    let mut opts = opts.to_vec();
    opts.sort_by_key(|o| o.0);
    let mut buf = Vec::new();
    let mut w = MessageWriter::new(&mut buf, MsgType::Ack, code, mid, token);
    for (n, v) in opts {
        w.option_uint(n, v);
    }
    w.payload(payload);
    buf
}

/// A request of the gateway's as the device received it.
#[derive(Debug)]
pub struct Request {
    pub mtype: MsgType,
    pub code: u8,
    pub mid: u16,
    pub token: Vec<u8>,
    /// "/3/0/1".
    pub path: String,
    pub observe: Option<u32>,
    pub accept: Option<u32>,
    pub format: Option<u32>,
    pub query: Vec<String>,
    pub block1: Option<BlockOpt>,
    pub block2: Option<BlockOpt>,
    pub payload: Vec<u8>,
}

impl Request {
    pub fn parse(datagram: &[u8]) -> Self {
        let m = Message::parse(datagram).unwrap();
        assert!(m.is_request(), "expected a request: {m:?}");
        Request {
            mtype: m.mtype,
            code: m.code,
            mid: m.mid,
            token: m.token.to_vec(),
            path: m
                .option_values(opt::URI_PATH)
                .map(|s| format!("/{}", String::from_utf8_lossy(s)))
                .collect(),
            observe: m.option_uint(opt::OBSERVE),
            accept: m.option_uint(opt::ACCEPT),
            format: m.option_uint(opt::CONTENT_FORMAT),
            query: m
                .option_values(opt::URI_QUERY)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect(),
            block1: m.option(opt::BLOCK1).and_then(BlockOpt::decode),
            block2: m.option(opt::BLOCK2).and_then(BlockOpt::decode),
            payload: m.payload.to_vec(),
        }
    }

    /// The device's piggybacked answer to it.
    pub fn ack(&self, code: u8, opts: &[(u16, u32)], payload: &[u8]) -> Vec<u8> {
        ack(self.mid, &self.token, code, opts, payload)
    }
}
