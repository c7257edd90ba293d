//! One simulated LwM2M device for trying the gateway by hand: it registers, answers the
//! gateway's requests the way a real client does (Device /3/0, Temperature /3303/0, Server
//! /1/0: read, discover, write, execute, create, delete, observe with a notification every
//! few seconds) and sends an Update before its lifetime ends.
//!
//! ```sh
//! cargo run --release --example device -- dev2                      # gateway on 127.0.0.1:5783
//! cargo run --release --example device -- dev2 192.0.2.7:5783 300  # gateway, lifetime (s)
//! ```

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use lwm2m_gateway::coap::{codes, opt, Message, MessageWriter, MsgType};
use lwm2m_gateway::sim::client::{answer, write_notification, write_response};

const OBJECTS: &[u8] = b"</1/0>,</3/0>,</3303/0>";
const NOTIFY_EVERY: Duration = Duration::from_secs(5);

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let ep = args.next().unwrap_or_else(|| "dev2".to_string());
    let gateway: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5783".into())
        .parse()
        .expect("gateway address ip:port");
    let lifetime: u64 = args
        .next()
        .map_or(60, |l| l.parse().expect("lifetime in seconds"));

    let sock = UdpSocket::bind(if gateway.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    })?;
    sock.connect(gateway)?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut mid: u16 = 1;
    let location = register(&sock, &ep, lifetime, &mut mid)?;
    println!("{ep} registered at /rd/{location}; answering the gateway's requests (Ctrl-C ends)");

    let start = Instant::now();
    let mut next_update = Instant::now() + Duration::from_secs(lifetime * 2 / 3);
    let mut observed: Vec<(Vec<u8>, Vec<u16>, u32)> = Vec::new();
    let mut next_notify = Instant::now() + NOTIFY_EVERY;
    let mut buf = [0u8; 2048];
    loop {
        let tick = start.elapsed().as_secs() as u32;
        if let Ok(n) = sock.recv(&mut buf) {
            let Ok(msg) = Message::parse(&buf[..n]) else {
                continue;
            };
            if !msg.is_request() {
                continue; // the gateway's answer to an Update or a notification's ACK
            }
            let a = answer(&msg, 0, tick);
            if let Some(path) = &a.start_observe {
                observed.retain(|(t, _, _)| t != msg.token);
                observed.push((msg.token.to_vec(), path.clone(), 1));
            }
            if a.cancel_observe.is_some() {
                observed.retain(|(t, _, _)| t != msg.token);
            }
            let mut out = Vec::new();
            mid = mid.wrapping_add(1);
            write_response(&msg, &a, mid, &mut out);
            sock.send(&out)?;
        }
        if Instant::now() >= next_notify {
            next_notify += NOTIFY_EVERY;
            for (token, path, seq) in &mut observed {
                *seq += 1;
                mid = mid.wrapping_add(1);
                let mut out = Vec::new();
                write_notification(MsgType::Non, mid, token, *seq, path, 0, tick, &mut out);
                sock.send(&out)?;
            }
        }
        if Instant::now() >= next_update {
            next_update += Duration::from_secs(lifetime * 2 / 3);
            mid = mid.wrapping_add(1);
            let mut out = Vec::new();
            let mut w = MessageWriter::new(&mut out, MsgType::Non, codes::POST, mid, &[0xd1]);
            w.option(opt::URI_PATH, b"rd");
            w.option(opt::URI_PATH, location.as_bytes());
            sock.send(&out)?;
        }
    }
}

/// Registers (retrying a few times) and returns the location the gateway gave.
fn register(sock: &UdpSocket, ep: &str, lifetime: u64, mid: &mut u16) -> std::io::Result<String> {
    let mut buf = [0u8; 2048];
    for _ in 0..10 {
        *mid = mid.wrapping_add(1);
        let mut out = Vec::new();
        let mut w = MessageWriter::new(&mut out, MsgType::Con, codes::POST, *mid, &[0x7e, 0x91]);
        w.option(opt::URI_PATH, b"rd");
        w.option_uint(opt::CONTENT_FORMAT, 40);
        for q in [
            format!("ep={ep}"),
            format!("lt={lifetime}"),
            "lwm2m=1.1".into(),
            "b=U".into(),
        ] {
            w.option(opt::URI_QUERY, q.as_bytes());
        }
        w.payload(OBJECTS);
        sock.send(&out)?;
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let Ok(n) = sock.recv(&mut buf) else { continue };
            let Ok(reply) = Message::parse(&buf[..n]) else {
                continue;
            };
            if reply.mid != *mid {
                continue;
            }
            if reply.code != codes::CREATED {
                let text = String::from_utf8_lossy(reply.payload);
                return Err(std::io::Error::other(format!(
                    "Register answered {}.{:02} {text}",
                    reply.code >> 5,
                    reply.code & 0x1f
                )));
            }
            let location: Vec<String> = reply
                .option_values(opt::LOCATION_PATH)
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .collect();
            return Ok(location.last().cloned().unwrap_or_default());
        }
    }
    Err(std::io::Error::other("no answer from the gateway"))
}
