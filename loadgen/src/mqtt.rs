//! A small blocking MQTT 3.1.1 client over `TcpStream` using rumqttc's codec
//! (`rumqttc::mqttbytes::v4`): writes are buffered and flushed explicitly, reads
//! wait at most a given time. Enough for the command driver and the broker
//! baseline; QoS 1/2 deliveries to it are acknowledged.

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, PubRel, Publish, Subscribe,
    SubscribeFilter,
};
use rumqttc::mqttbytes::{self, QoS};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const MAX_PACKET: usize = 16 << 20;
const KEEPALIVE_S: u16 = 60;

pub fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

pub struct Client {
    stream: TcpStream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    scratch: Vec<u8>,
    next_pkid: u16,
    last_ping: Instant,
    /// PUBACKs received for our QoS 1 publishes.
    pub pubacks: u64,
}

impl Client {
    /// Connects with a clean session and waits for an accepting CONNACK.
    pub fn connect(addr: SocketAddr, client_id: &str) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        stream.set_nodelay(true)?;
        let mut c = Self {
            stream,
            rbuf: BytesMut::with_capacity(1 << 20),
            wbuf: BytesMut::with_capacity(1 << 20),
            scratch: vec![0; 1 << 20],
            next_pkid: 0,
            last_ping: Instant::now(),
            pubacks: 0,
        };
        let mut connect = Connect::new(client_id);
        connect.keep_alive = KEEPALIVE_S;
        connect.clean_session = true;
        c.queue(&Packet::Connect(connect))?;
        c.flush()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        match c.read_packet(deadline)? {
            Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => Ok(c),
            Some(other) => Err(io::Error::other(format!("no accepting CONNACK: {other:?}"))),
            None => Err(io::Error::other("no CONNACK in 10 s")),
        }
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        self.next_pkid
    }

    /// Subscribes and waits for the SUBACK (publishes arriving meanwhile are dropped).
    pub fn subscribe(&mut self, filters: &[&str], q: u8) -> io::Result<()> {
        let pkid = self.pkid();
        let filters = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.to_string(), qos(q)))
            .collect();
        self.queue(&Packet::Subscribe(Subscribe { pkid, filters }))?;
        self.flush()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.read_packet(deadline)? {
                Some(Packet::SubAck(a)) if a.pkid == pkid => return Ok(()),
                Some(_) => {}
                None => return Err(io::Error::other("no SUBACK in 10 s")),
            }
        }
    }

    /// Queues a publish (not sent until [`flush`](Self::flush)).
    pub fn publish(&mut self, topic: &str, payload: &[u8], q: u8) -> io::Result<()> {
        let mut p = Publish::new(topic, qos(q), payload.to_vec());
        if q > 0 {
            p.pkid = self.pkid();
        }
        self.queue(&Packet::Publish(p))
    }

    pub fn queued_bytes(&self) -> usize {
        self.wbuf.len()
    }

    fn queue(&mut self, p: &Packet) -> io::Result<()> {
        p.write(&mut self.wbuf, MAX_PACKET)
            .map(|_| ())
            .map_err(io::Error::other)
    }

    /// Writes everything queued (blocking).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.last_ping.elapsed() > Duration::from_secs(KEEPALIVE_S as u64 / 2) {
            self.last_ping = Instant::now();
            Packet::PingReq
                .write(&mut self.wbuf, MAX_PACKET)
                .map_err(io::Error::other)?;
        }
        if !self.wbuf.is_empty() {
            self.stream
                .set_write_timeout(Some(Duration::from_secs(30)))?;
            self.stream.write_all(&self.wbuf)?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads what arrives within `wait` (at least one read attempt) and returns the
    /// publishes received, acknowledging QoS 1/2 ones.
    pub fn poll(&mut self, wait: Duration, out: &mut Vec<Publish>) -> io::Result<()> {
        let deadline = Instant::now() + wait;
        let mut first = true;
        loop {
            while let Some(p) = self.parse()? {
                self.handle(p, out)?;
            }
            if !first && Instant::now() >= deadline {
                break;
            }
            if !out.is_empty() && !first {
                break;
            }
            first = false;
            if !self.read_some(deadline)? {
                break;
            }
        }
        self.flush()
    }

    fn handle(&mut self, p: Packet, out: &mut Vec<Publish>) -> io::Result<()> {
        match p {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => self.queue(&Packet::PubAck(PubAck::new(p.pkid)))?,
                    QoS::ExactlyOnce => self.queue(&Packet::PubRec(PubRec::new(p.pkid)))?,
                }
                out.push(p);
            }
            Packet::PubRel(r) => self.queue(&Packet::PubComp(PubComp::new(r.pkid)))?,
            Packet::PubRec(r) => self.queue(&Packet::PubRel(PubRel::new(r.pkid)))?,
            Packet::PubAck(_) => self.pubacks += 1,
            _ => {}
        }
        Ok(())
    }

    fn parse(&mut self) -> io::Result<Option<Packet>> {
        match Packet::read(&mut self.rbuf, MAX_PACKET) {
            Ok(p) => Ok(Some(p)),
            Err(mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }

    /// One read that waits until `deadline` at most; false when nothing came.
    fn read_some(&mut self, deadline: Instant) -> io::Result<bool> {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_micros(100));
        self.stream.set_read_timeout(Some(wait))?;
        match self.stream.read(&mut self.scratch) {
            Ok(0) => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "broker closed the connection",
            )),
            Ok(n) => {
                self.rbuf.extend_from_slice(&self.scratch[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn read_packet(&mut self, deadline: Instant) -> io::Result<Option<Packet>> {
        loop {
            if let Some(p) = self.parse()? {
                return Ok(Some(p));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            self.read_some(deadline)?;
        }
    }

    pub fn disconnect(mut self) {
        let _ = self.queue(&Packet::Disconnect);
        let _ = self.flush();
    }
}

/// The value of string member `key` in a flat JSON text (first occurrence).
pub fn json_str<'a>(json: &'a [u8], key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let i = find(json, pat.as_bytes())? + pat.len();
    let end = json[i..].iter().position(|&b| b == b'"')?;
    std::str::from_utf8(&json[i..i + end]).ok()
}

/// The value of unsigned number member `key` (first occurrence; a quoted number too).
pub fn json_uint(json: &[u8], key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let mut i = find(json, pat.as_bytes())? + pat.len();
    if json.get(i) == Some(&b'"') {
        i += 1;
    }
    let digits = json[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&json[i..i + digits]).ok()?.parse().ok()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The endpoint name in a topic `<prefix>/<ep>/up/...` (the default mountpoint `lwm2m/${endpoint_name}/`).
pub fn topic_endpoint(topic: &str) -> Option<&str> {
    let mut parts = topic.split('/');
    parts.next()?;
    parts.next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields() {
        let j = br#"{"reqID":42,"msgType":"notify","seqNum":"7","data":{"code":"2.05"}}"#;
        assert_eq!(json_uint(j, "reqID"), Some(42));
        assert_eq!(json_uint(j, "seqNum"), Some(7));
        assert_eq!(json_str(j, "msgType"), Some("notify"));
        assert_eq!(json_str(j, "code"), Some("2.05"));
        assert_eq!(json_str(j, "nope"), None);
        assert_eq!(topic_endpoint("lwm2m/lg12/up/resp"), Some("lg12"));
    }
}
