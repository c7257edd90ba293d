//! The broker baseline: a plain MQTT publisher sending `count` messages as fast as
//! the connection takes them, received by a plain subscriber on the same broker.
//! Its end-to-end rate is the ceiling for the gateway's notification rate.

use crate::mqtt::Client;
use clap::Args;
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct PublishOpts {
    /// The broker, `host:port` or `mqtt://host:port`.
    #[arg(long, default_value = "127.0.0.1:1883", value_parser = crate::opts::parse_mqtt)]
    pub mqtt: SocketAddr,
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Messages to publish.
    #[arg(long, default_value_t = 200_000)]
    pub count: u64,
    /// Payload size, bytes (the gateway's notification JSON is about 150).
    #[arg(long, default_value_t = 150)]
    pub size: usize,
    /// Publisher connections, each sending its share (the gateway uses `mqtt.connections`, 2 by default).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    #[arg(long, default_value = "lwm2m-loadgen/bench/up/notify")]
    pub topic: String,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct PublishReport {
    pub qos: u8,
    pub connections: usize,
    pub size: usize,
    pub count: u64,
    pub publish_seconds: f64,
    /// How fast the broker took the publishes (TCP writes, and PUBACKs for QoS 1).
    pub publish_rate_per_s: f64,
    pub received: u64,
    pub lost: u64,
    /// From the first publish to the last delivery.
    pub end_to_end_seconds: f64,
    /// Deliveries per second to the subscriber: the broker's own rate.
    pub end_to_end_rate_per_s: f64,
    pub passed: bool,
}

impl PublishReport {
    pub fn table(&self) -> String {
        format!(
            "  broker baseline (QoS {}, {} bytes, {} publisher connections)\n  published {} in {:.2}s ({:.0}/s)\n  received {} ({} lost) in {:.2}s: {:.0}/s end to end\n",
            self.qos,
            self.size,
            self.connections,
            self.count,
            self.publish_seconds,
            self.publish_rate_per_s,
            self.received,
            self.lost,
            self.end_to_end_seconds,
            self.end_to_end_rate_per_s
        )
    }
}

pub fn run(o: &PublishOpts) -> io::Result<PublishReport> {
    let id = std::process::id();
    let mut sub = Client::connect(o.mqtt, &format!("loadgen-sub-{id}"))?;
    sub.subscribe(&[&o.topic], o.qos)?;
    let (tx, rx) = mpsc::channel::<Instant>();
    let count = o.count;
    let receiver = std::thread::spawn(move || -> io::Result<(u64, Option<Instant>)> {
        let mut got = 0u64;
        let mut last = None;
        let mut inbox = Vec::new();
        let mut publisher_done: Option<Instant> = None;
        while got < count {
            sub.poll(Duration::from_millis(5), &mut inbox)?;
            if !inbox.is_empty() {
                got += inbox.len() as u64;
                inbox.clear();
                last = Some(Instant::now());
            }
            if publisher_done.is_none() {
                publisher_done = rx.try_recv().ok();
            }
            let idle_since = last.max(publisher_done);
            if publisher_done.is_some()
                && idle_since.is_some_and(|t| t.elapsed() > Duration::from_secs(3))
            {
                break;
            }
        }
        Ok((got, last))
    });
    let conns = o.connections.max(1);
    let mut publishers = Vec::new();
    for k in 0..conns {
        publishers.push(Client::connect(o.mqtt, &format!("loadgen-pub-{id}-{k}"))?);
    }
    let start = Instant::now();
    let handles: Vec<_> = publishers
        .into_iter()
        .enumerate()
        .map(|(k, mut publ)| {
            let n = o.count / conns as u64 + u64::from((k as u64) < o.count % conns as u64);
            let (topic, qos, size) = (o.topic.clone(), o.qos, o.size);
            std::thread::spawn(move || -> io::Result<()> {
                let payload = vec![b'x'; size];
                let mut inbox = Vec::new();
                for i in 0..n {
                    publ.publish(&topic, &payload, qos)?;
                    if publ.queued_bytes() > 64 * 1024 {
                        publ.flush()?;
                    }
                    if qos > 0 && i % 256 == 255 {
                        publ.poll(Duration::ZERO, &mut inbox)?;
                    }
                }
                publ.flush()?;
                if qos > 0 {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while publ.pubacks < n && Instant::now() < deadline {
                        publ.poll(Duration::from_millis(5), &mut inbox)?;
                    }
                }
                publ.disconnect();
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join()
            .map_err(|_| io::Error::other("publisher panicked"))??;
    }
    let publish_seconds = start.elapsed().as_secs_f64();
    let _ = tx.send(Instant::now());
    let (received, last) = receiver
        .join()
        .map_err(|_| io::Error::other("subscriber panicked"))??;
    let e2e = last.map(|l| (l - start).as_secs_f64()).unwrap_or(0.0);
    Ok(PublishReport {
        qos: o.qos,
        connections: conns,
        size: o.size,
        count: o.count,
        publish_seconds,
        publish_rate_per_s: o.count as f64 / publish_seconds.max(1e-9),
        received,
        lost: o.count - received.min(o.count),
        end_to_end_seconds: e2e,
        end_to_end_rate_per_s: if e2e > 0.0 {
            received as f64 / e2e
        } else {
            0.0
        },
        passed: received > 0,
    })
}
