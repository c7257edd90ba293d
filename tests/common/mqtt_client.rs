//! A small blocking MQTT 3.1.1 client for tests, over std `TcpStream`, using the gateway's codec
//! (`rumqttc::mqttbytes::v4`). It acknowledges the QoS 1 and QoS 2 publishes it receives.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    Connect, ConnectReturnCode, Packet, PubAck, PubComp, PubRec, PubRel, Publish, Subscribe,
    SubscribeFilter, SubscribeReasonCode, Unsubscribe,
};
use rumqttc::mqttbytes::{self, QoS};

const MAX_PACKET: usize = 16 * 1024 * 1024;
const KEEPALIVE_SECS: u16 = 120;
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

pub struct MqttClient {
    stream: TcpStream,
    rbuf: BytesMut,
    received: VecDeque<(String, Vec<u8>)>,
    next_pkid: u16,
    last_ping: Instant,
}

fn qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

impl MqttClient {
    /// Connects and waits for an accepting CONNACK.
    pub fn connect(
        addr: impl ToSocketAddrs,
        client_id: &str,
        clean_session: bool,
    ) -> io::Result<Self> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let mut client = MqttClient {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            received: VecDeque::new(),
            next_pkid: 0,
            last_ping: Instant::now(),
        };
        let mut connect = Connect::new(client_id);
        connect.keep_alive = KEEPALIVE_SECS;
        connect.clean_session = clean_session;
        client.send(&Packet::Connect(connect))?;
        match client.next_packet(Some(Instant::now() + ACK_TIMEOUT))? {
            Some(Packet::ConnAck(ack)) if ack.code == ConnectReturnCode::Success => Ok(client),
            other => Err(io::Error::other(format!("no accepting CONNACK: {other:?}"))),
        }
    }

    /// Connects with a clean session and subscribes to `filter`: an application
    /// listening to the gateway.
    pub fn subscriber(addr: impl ToSocketAddrs, client_id: &str, filter: &str, q: u8) -> Self {
        let mut c = Self::connect(addr, client_id, true).unwrap();
        c.subscribe(filter, q).unwrap();
        c
    }

    /// Subscribes and waits for the SUBACK; Err if the broker refuses.
    pub fn subscribe(&mut self, filter: &str, q: u8) -> io::Result<()> {
        self.subscribe_many(&[filter], q)
    }

    /// One SUBSCRIBE packet with every filter; waits for the SUBACK.
    pub fn subscribe_many(&mut self, filters: &[&str], q: u8) -> io::Result<()> {
        let pkid = self.pkid();
        let filters = filters
            .iter()
            .map(|f| SubscribeFilter::new(f.to_string(), qos(q)))
            .collect();
        self.send(&Packet::Subscribe(Subscribe { pkid, filters }))?;
        match self.wait_for(|p| matches!(p, Packet::SubAck(a) if a.pkid == pkid))? {
            Packet::SubAck(a)
                if a.return_codes
                    .iter()
                    .all(|c| *c != SubscribeReasonCode::Failure) =>
            {
                Ok(())
            }
            other => Err(io::Error::other(format!("subscription refused: {other:?}"))),
        }
    }

    pub fn unsubscribe(&mut self, filter: &str) -> io::Result<()> {
        let pkid = self.pkid();
        self.send(&Packet::Unsubscribe(Unsubscribe {
            pkid,
            topics: vec![filter.to_string()],
        }))?;
        self.wait_for(|p| matches!(p, Packet::UnsubAck(a) if a.pkid == pkid))?;
        Ok(())
    }

    /// Publishes; for QoS 1 waits for PUBACK, for QoS 2 runs PUBREC/PUBREL/PUBCOMP.
    pub fn publish(&mut self, topic: &str, payload: &[u8], q: u8) -> io::Result<()> {
        let mut publish = Publish::new(topic, qos(q), payload.to_vec());
        if q == 0 {
            return self.send(&Packet::Publish(publish));
        }
        let pkid = self.pkid();
        publish.pkid = pkid;
        self.send(&Packet::Publish(publish))?;
        if q == 1 {
            self.wait_for(|p| matches!(p, Packet::PubAck(a) if a.pkid == pkid))?;
        } else {
            self.wait_for(|p| matches!(p, Packet::PubRec(a) if a.pkid == pkid))?;
            self.send(&Packet::PubRel(PubRel::new(pkid)))?;
            self.wait_for(|p| matches!(p, Packet::PubComp(a) if a.pkid == pkid))?;
        }
        Ok(())
    }

    /// The next PUBLISH delivered to this client (acknowledged), or None after `timeout`.
    /// Duplicates (DUP re-deliveries) are returned as they come.
    pub fn recv_publish(&mut self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        self.try_recv_publish(timeout).ok().flatten()
    }

    /// Receives until `n` messages arrived or nothing came for `idle`.
    pub fn collect(&mut self, n: usize, idle: Duration) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.recv_publish(idle) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// The next message within `within` whose topic and JSON payload `want` takes,
    /// skipping the others (a payload that is not JSON fails).
    pub fn next_json(
        &mut self,
        within: Duration,
        want: impl Fn(&str, &simd_json::OwnedValue) -> bool,
    ) -> Option<(String, simd_json::OwnedValue)> {
        let deadline = Instant::now() + within;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let (t, p) = self.recv_publish(left)?;
            let v = super::json(&p);
            if want(&t, &v) {
                return Some((t, v));
            }
        }
        None
    }

    /// Like `recv_publish`, but a lost connection is an Err.
    pub fn try_recv_publish(&mut self, timeout: Duration) -> io::Result<Option<(String, Vec<u8>)>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(m) = self.received.pop_front() {
                return Ok(Some(m));
            }
            match self.next_packet(Some(deadline))? {
                None => return Ok(None),
                Some(p) => self.handle_unsolicited(p)?,
            }
        }
    }

    /// Sends a PINGREQ without waiting for its answer.
    pub fn ping(&mut self) -> io::Result<()> {
        self.send(&Packet::PingReq)
    }

    pub fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect);
    }

    fn pkid(&mut self) -> u16 {
        self.next_pkid = self.next_pkid.wrapping_add(1).max(1);
        self.next_pkid
    }

    fn send(&mut self, packet: &Packet) -> io::Result<()> {
        let mut buf = BytesMut::new();
        packet
            .write(&mut buf, MAX_PACKET)
            .map_err(io::Error::other)?;
        self.stream.write_all(&buf)
    }

    /// Waits for a packet matching `want`, handling publishes and acks meanwhile.
    fn wait_for(&mut self, want: impl Fn(&Packet) -> bool) -> io::Result<Packet> {
        let deadline = Instant::now() + ACK_TIMEOUT;
        loop {
            match self.next_packet(Some(deadline))? {
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no ack from broker",
                    ))
                }
                Some(p) if want(&p) => return Ok(p),
                Some(p) => self.handle_unsolicited(p)?,
            }
        }
    }

    fn handle_unsolicited(&mut self, p: Packet) -> io::Result<()> {
        match p {
            Packet::Publish(p) => {
                // A publish that arrived is received even when its acknowledgement can no
                // longer be written (the broker died): what the broker sent before it died
                // is still read from the socket, and the read that finds the connection
                // gone ends it.
                self.received.push_back((p.topic, p.payload.to_vec()));
                let ack = match p.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => Some(Packet::PubAck(PubAck::new(p.pkid))),
                    QoS::ExactlyOnce => Some(Packet::PubRec(PubRec::new(p.pkid))),
                };
                if let Some(ack) = ack {
                    let _ = self.send(&ack);
                }
            }
            Packet::PubRel(r) => self.send(&Packet::PubComp(PubComp::new(r.pkid)))?,
            _ => {}
        }
        Ok(())
    }

    /// Reads one packet; None when `deadline` passes first.
    fn next_packet(&mut self, deadline: Option<Instant>) -> io::Result<Option<Packet>> {
        let mut scratch = [0u8; 16 * 1024];
        loop {
            match Packet::read(&mut self.rbuf, MAX_PACKET) {
                Ok(p) => return Ok(Some(p)),
                Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
            if self.last_ping.elapsed() > Duration::from_secs(KEEPALIVE_SECS as u64 / 2) {
                self.last_ping = Instant::now();
                // A failed write shows in the read that follows.
                let _ = self.send(&Packet::PingReq);
            }
            let now = Instant::now();
            let wait = match deadline {
                Some(d) if d <= now => return Ok(None),
                Some(d) => (d - now).min(Duration::from_secs(1)),
                None => Duration::from_secs(1),
            };
            self.stream.set_read_timeout(Some(wait))?;
            match self.stream.read(&mut scratch) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "broker closed",
                    ))
                }
                Ok(n) => self.rbuf.extend_from_slice(&scratch[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
