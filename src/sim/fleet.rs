//! A fleet of simulated devices sharing one pktinfo socket.

use crate::coap::{codes, opt, Message, MessageWriter, MsgType};
use netio::{RecvBatchPktinfo, SendBatchPktinfo};
use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

/// RFC 7252 defaults for the devices' own retransmissions.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_RETRANSMIT: u32 = 4;

#[derive(Debug, Clone)]
pub struct FleetConfig {
    pub devices: usize,
    pub name_prefix: String,
    /// Index of the first device's address (see [`device_addr`]).
    pub first_index: u32,
    pub lifetime_s: u32,
    pub lwm2m: String,
    pub binding: String,
    /// The Register payload (link-format object list).
    pub objects: String,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            devices: 1,
            name_prefix: "sim".into(),
            first_index: 0,
            lifetime_s: 300,
            lwm2m: "1.0".into(),
            binding: "U".into(),
            objects: "</1/0>,</2/0>,</3/0>,</4/0>,</5/0>,</6/0>,</7/0>,</3303/0>".into(),
        }
    }
}

/// The loopback address of device `i`: 127.(10 + i/64516).(1 + i/254 % 254).(1 + i % 254).
pub fn device_addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        10 + (i / 64_516) as u8,
        1 + ((i / 254) % 254) as u8,
        1 + (i % 254) as u8,
    )
}

/// The device index whose address is `a` (the inverse of [`device_addr`]).
pub fn device_index(a: Ipv4Addr) -> Option<u32> {
    let [o0, o1, o2, o3] = a.octets();
    if o0 != 127 || o1 < 10 || o2 == 0 || o2 == 255 || o3 == 0 || o3 == 255 {
        return None;
    }
    Some((o1 as u32 - 10) * 64_516 + (o2 as u32 - 1) * 254 + (o3 as u32 - 1))
}

/// One outstanding confirmable request of a device.
struct Pending {
    mid: u16,
    bytes: Vec<u8>,
    sent_at: Instant,
    timeout: Duration,
    tries: u32,
}

pub struct Device {
    pub name: String,
    pub addr: Ipv4Addr,
    /// Location path segment after `rd/`, once registered.
    pub location: Option<String>,
    /// Code of the last response the device got to its own request.
    pub last_code: Option<u8>,
    pending: Option<Pending>,
}

/// How a device's exchange ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub ok: usize,
    pub failed: usize,
    pub timed_out: usize,
    pub retransmissions: usize,
}

/// A request from the gateway to a device.
pub struct ServerRequest<'a> {
    pub device: usize,
    pub msg: Message<'a>,
}

/// Answers server requests: returns (code, content-format, payload) or None to ignore.
pub type Handler = Box<dyn FnMut(&ServerRequest<'_>) -> Option<(u8, Option<u16>, Vec<u8>)> + Send>;

pub struct Fleet {
    cfg: FleetConfig,
    sock: UdpSocket,
    gateway: SocketAddrV4,
    pub devices: Vec<Device>,
    by_addr: HashMap<Ipv4Addr, u32>,
    send: SendBatchPktinfo,
    recv: RecvBatchPktinfo,
    next_mid: u16,
    handler: Option<Handler>,
    /// Server requests seen (including duplicates).
    pub requests_seen: u64,
}

impl Fleet {
    pub fn new(cfg: FleetConfig, gateway: SocketAddr) -> io::Result<Self> {
        let SocketAddr::V4(gateway) = gateway else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "IPv4 gateway only",
            ));
        };
        let opts = netio::SocketOptions {
            reuse_port: false,
            rcvbuf: 16 << 20,
            sndbuf: 16 << 20,
        };
        let sock = netio::bind_udp(SocketAddr::from(([0, 0, 0, 0], 0)), &opts)?;
        netio::enable_pktinfo(&sock)?;
        let mut devices = Vec::with_capacity(cfg.devices);
        let mut by_addr = HashMap::with_capacity(cfg.devices);
        for i in 0..cfg.devices as u32 {
            let addr = device_addr(cfg.first_index + i);
            by_addr.insert(addr, i);
            devices.push(Device {
                name: format!("{}{}", cfg.name_prefix, cfg.first_index + i),
                addr,
                location: None,
                last_code: None,
                pending: None,
            });
        }
        Ok(Self {
            cfg,
            sock,
            gateway,
            devices,
            by_addr,
            send: SendBatchPktinfo::new(256),
            recv: RecvBatchPktinfo::new(256, 65_536),
            next_mid: 1,
            handler: None,
            requests_seen: 0,
        })
    }

    /// Sets how devices answer requests from the gateway.
    pub fn set_handler(&mut self, h: Handler) {
        self.handler = Some(h);
    }

    /// Makes the devices answer like a real client (see [`super::client`]): reads,
    /// discover, writes, executes, deletes and observes (the observation itself is
    /// not remembered: these devices never notify).
    pub fn answer_like_client(&mut self) {
        let first = self.cfg.first_index;
        self.set_handler(Box::new(move |req| {
            let a = super::client::answer(&req.msg, first + req.device as u32, 0);
            Some((a.code, a.format, a.payload))
        }));
    }

    /// The port every device uses.
    pub fn port(&self) -> u16 {
        self.sock.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// The Register request of device `i` (query in a fixed order).
    pub fn register_bytes(&mut self, i: usize) -> Vec<u8> {
        let mid = self.mid();
        let name = self.devices[i].name.clone();
        let mut buf = Vec::with_capacity(128);
        let mut w =
            MessageWriter::new(&mut buf, MsgType::Con, codes::POST, mid, &mid.to_be_bytes());
        w.option(opt::URI_PATH, b"rd")
            .option_uint(opt::CONTENT_FORMAT, 40)
            .option(opt::URI_QUERY, format!("ep={name}").as_bytes())
            .option(
                opt::URI_QUERY,
                format!("lt={}", self.cfg.lifetime_s).as_bytes(),
            )
            .option(
                opt::URI_QUERY,
                format!("lwm2m={}", self.cfg.lwm2m).as_bytes(),
            )
            .option(opt::URI_QUERY, format!("b={}", self.cfg.binding).as_bytes());
        w.payload(self.cfg.objects.as_bytes());
        buf
    }

    /// An Update (or, with `delete`, a De-register) of device `i`.
    pub fn registration_bytes(&mut self, i: usize, delete: bool) -> Option<Vec<u8>> {
        let loc = self.devices[i].location.clone()?;
        let mid = self.mid();
        let code = if delete { codes::DELETE } else { codes::POST };
        let mut buf = Vec::with_capacity(32);
        let mut w = MessageWriter::new(&mut buf, MsgType::Con, code, mid, &mid.to_be_bytes());
        w.option(opt::URI_PATH, b"rd")
            .option(opt::URI_PATH, loc.as_bytes());
        w.finish();
        Some(buf)
    }

    /// Starts a confirmable request of device `i` (replacing any outstanding one).
    pub fn start(&mut self, i: usize, bytes: Vec<u8>) {
        let mid = u16::from_be_bytes([bytes[2], bytes[3]]);
        let to = self.gateway;
        self.send.push(self.devices[i].addr, to, &bytes);
        self.devices[i].pending = Some(Pending {
            mid,
            bytes,
            sent_at: Instant::now(),
            timeout: ACK_TIMEOUT,
            tries: 0,
        });
    }

    /// Sends a datagram from device `i` without expecting an answer.
    pub fn send_raw(&mut self, i: usize, bytes: &[u8]) {
        let to = self.gateway;
        self.send.push(self.devices[i].addr, to, bytes);
    }

    pub fn outstanding(&self) -> usize {
        self.devices.iter().filter(|d| d.pending.is_some()).count()
    }

    /// Registers every device, at most `rate` new registrations per second (None:
    /// as fast as the socket takes them), and waits for the answers until `timeout`.
    pub fn register_all(&mut self, rate: Option<u64>, timeout: Duration) -> io::Result<Outcome> {
        let n = self.devices.len();
        self.run(n, rate, timeout, |f, i| Some(f.register_bytes(i)))
    }

    /// Sends an Update from every registered device.
    pub fn update_all(&mut self, timeout: Duration) -> io::Result<Outcome> {
        let n = self.devices.len();
        self.run(n, None, timeout, |f, i| f.registration_bytes(i, false))
    }

    /// De-registers every registered device.
    pub fn deregister_all(&mut self, timeout: Duration) -> io::Result<Outcome> {
        let n = self.devices.len();
        self.run(n, None, timeout, |f, i| f.registration_bytes(i, true))
    }

    fn run(
        &mut self,
        n: usize,
        rate: Option<u64>,
        timeout: Duration,
        mut build: impl FnMut(&mut Self, usize) -> Option<Vec<u8>>,
    ) -> io::Result<Outcome> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut out = Outcome::default();
        let mut next = 0;
        let mut started = vec![false; n];
        while Instant::now() < deadline {
            // Pace new requests.
            let allowed = match rate {
                Some(r) => ((start.elapsed().as_secs_f64() * r as f64) as usize + 1).min(n),
                None => n,
            };
            let mut burst = 0;
            while next < allowed && burst < 256 {
                if let Some(b) = build(self, next) {
                    self.start(next, b);
                    started[next] = true;
                }
                next += 1;
                burst += 1;
            }
            out.retransmissions += self.retransmit();
            self.flush()?;
            self.receive(Duration::from_millis(2))?;
            if next >= n && self.outstanding() == 0 {
                break;
            }
        }
        for (i, d) in self.devices.iter_mut().enumerate().take(n) {
            if !started[i] {
                continue;
            }
            if d.pending.take().is_some() {
                out.timed_out += 1;
            } else if d.last_code.is_some_and(|c| c >> 5 == 2) {
                out.ok += 1;
            } else {
                out.failed += 1;
            }
        }
        Ok(out)
    }

    /// Retransmits requests whose timer ran out; gives up after MAX_RETRANSMIT.
    fn retransmit(&mut self) -> usize {
        let now = Instant::now();
        let mut count = 0;
        let to = self.gateway;
        for d in &mut self.devices {
            let Some(p) = &mut d.pending else { continue };
            if now.duration_since(p.sent_at) < p.timeout {
                continue;
            }
            if p.tries >= MAX_RETRANSMIT {
                continue;
            }
            p.tries += 1;
            p.timeout *= 2;
            p.sent_at = now;
            self.send.push(d.addr, to, &p.bytes);
            count += 1;
        }
        count
    }

    pub fn flush(&mut self) -> io::Result<()> {
        while !self.send.is_empty() {
            self.send.flush(&self.sock)?;
            if !self.send.is_empty() {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        Ok(())
    }

    /// Receives for up to `wait`, handling responses and server requests.
    pub fn receive(&mut self, wait: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + wait;
        let mut handled = 0;
        loop {
            let n = match self.recv.recv(&self.sock) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Ok(handled);
                    }
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for k in 0..n {
                let (_, dst, data, truncated) = self.recv.get(k);
                if truncated {
                    continue;
                }
                let Some(&i) = self.by_addr.get(&dst) else {
                    continue;
                };
                let data = data.to_vec();
                self.on_datagram(i as usize, &data);
                handled += 1;
            }
            self.flush()?;
        }
    }

    fn on_datagram(&mut self, i: usize, data: &[u8]) {
        let Ok(msg) = Message::parse(data) else {
            return;
        };
        if msg.is_request() {
            self.on_request(i, &msg);
            return;
        }
        let d = &mut self.devices[i];
        let Some(p) = &d.pending else { return };
        if msg.mtype != MsgType::Ack || msg.mid != p.mid {
            return;
        }
        d.pending = None;
        d.last_code = Some(msg.code);
        if msg.code == codes::CREATED {
            let segs: Vec<_> = msg.option_values(opt::LOCATION_PATH).collect();
            if segs.len() == 2 && segs[0] == b"rd" {
                d.location = Some(String::from_utf8_lossy(segs[1]).into_owned());
            }
        } else if msg.code == codes::DELETED {
            d.location = None;
        }
    }

    fn on_request(&mut self, i: usize, msg: &Message<'_>) {
        self.requests_seen += 1;
        let req = ServerRequest {
            device: i,
            msg: *msg,
        };
        let answer = match &mut self.handler {
            Some(h) => h(&req),
            None => Some((codes::NOT_FOUND, None, Vec::new())),
        };
        let Some((code, cf, payload)) = answer else {
            return;
        };
        let mtype = if msg.mtype == MsgType::Con {
            MsgType::Ack
        } else {
            MsgType::Non
        };
        let mut buf = Vec::with_capacity(16 + payload.len());
        let mut w = MessageWriter::new(&mut buf, mtype, code, msg.mid, msg.token);
        if let Some(cf) = cf {
            w.option_uint(opt::CONTENT_FORMAT, cf as u32);
        }
        w.payload(&payload);
        let (addr, to) = (self.devices[i].addr, self.gateway);
        self.send.push(addr, to, &buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_loopback() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..200_000 {
            let a = device_addr(i);
            assert_eq!(a.octets()[0], 127);
            assert_ne!(a.octets()[3], 0);
            assert_ne!(a.octets()[3], 255);
            assert!(seen.insert(a));
            assert_eq!(device_index(a), Some(i));
        }
        assert_eq!(device_index(Ipv4Addr::new(127, 0, 0, 1)), None);
    }
}
