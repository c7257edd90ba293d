//! The floor of the command round trip: the MQTT path of a command with nothing in the
//! middle but a trivial relay. A driver publishes "commands" at a steady rate, paced
//! like the command driver of `run`; a relay client subscribed to them publishes each
//! straight back on a response topic; the driver times every round trip. Two broker
//! hops and one client in between, as for a gateway command, without the gateway's
//! work or the device's UDP round trip. The command round trip measured by `run` at
//! the same rate, on the same machine, compares against it.

use crate::mqtt::Client;
use crate::procstat;
use crate::stats::{Clock, Hist, Percentiles};
use clap::Args;
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Args)]
pub struct RelayOpts {
    /// The broker, `host:port` or `mqtt://host:port`.
    #[arg(long, default_value = "127.0.0.1:1883", value_parser = crate::opts::parse_mqtt)]
    pub mqtt: SocketAddr,
    /// Commands per second.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds of traffic.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Bytes of each response the relay publishes (the gateway's read response is about 150).
    #[arg(long, default_value_t = 150)]
    pub size: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct RelayReport {
    pub target_rate: f64,
    pub sent: u64,
    pub answered: u64,
    pub rate_per_s: f64,
    pub rtt: Percentiles,
    /// CPU µs the relay client's thread spent per command it relayed (one MQTT read and
    /// one publish each: half the socket work a gateway does for a command, without the
    /// CoAP side or any protocol work). None when /proc cannot be read.
    pub relay_cpu_us_per_command: Option<f64>,
    pub passed: bool,
}

impl RelayReport {
    pub fn table(&self) -> String {
        let r = &self.rtt;
        format!(
            "  MQTT relay floor: {} sent at {:.0}/s, {} answered ({:.0}/s)\n  round trip µs p50/p90/p99/p99.9/max {} / {} / {} / {} / {}\n",
            self.sent,
            self.target_rate,
            self.answered,
            self.rate_per_s,
            r.p50_us,
            r.p90_us,
            r.p99_us,
            r.p999_us,
            r.max_us
        ) + &self
            .relay_cpu_us_per_command
            .map(|c| format!("  relay client CPU µs per command: {c:.1}\n"))
            .unwrap_or_default()
    }
}

const CMD_FILTER: &str = "loadgen/relay/+/dn/cmd";
const RESP_FILTER: &str = "loadgen/relay/+/up/resp";

pub fn run(o: &RelayOpts) -> io::Result<RelayReport> {
    let id = std::process::id();
    let mut relay = Client::connect(o.mqtt, &format!("loadgen-relay-{id}"))?;
    relay.subscribe(&[CMD_FILTER], 0)?;
    let mut driver = Client::connect(o.mqtt, &format!("loadgen-relay-driver-{id}"))?;
    driver.subscribe(&[RESP_FILTER], 0)?;
    let stop = Arc::new(AtomicBool::new(false));
    let relay_thread = {
        let stop = stop.clone();
        let size = o.size;
        std::thread::spawn(move || relay_loop(relay, &stop, size))
    };

    let clock = Clock::new();
    let mut hist = Hist::new();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut inbox = Vec::new();
    let total = (o.rate * o.seconds) as u64;
    let wait_until = o.seconds + 3.0;
    loop {
        let now = clock.us();
        let due = ((now as f64 / 1e6 * o.rate) as u64).min(total);
        while sent < due {
            sent += 1;
            let payload = format!(
                "{{\"reqID\":{sent},\"t\":{},\"msgType\":\"read\",\"data\":{{\"path\":\"/3/0/0\"}}}}",
                clock.us()
            );
            driver.publish(
                &format!("loadgen/relay/d{}/dn/cmd", sent % 2000),
                payload.as_bytes(),
                0,
            )?;
        }
        driver.flush()?;
        driver.poll(Duration::from_millis(1), &mut inbox)?;
        let now = clock.us();
        for p in inbox.drain(..) {
            if let Some(t) = number_after(&p.payload, b"\"t\":") {
                hist.record(now.saturating_sub(t));
                answered += 1;
            }
        }
        if answered >= total || now as f64 / 1e6 > wait_until {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (relayed, relay_cpu_us) = relay_thread
        .join()
        .map_err(|_| io::Error::other("relay panicked"))??;
    driver.disconnect();
    Ok(RelayReport {
        target_rate: o.rate,
        sent,
        answered,
        rate_per_s: answered as f64 / o.seconds.max(1e-9),
        rtt: hist.summary(),
        relay_cpu_us_per_command: relay_cpu_us
            .filter(|_| relayed > 0)
            .map(|us| us as f64 / relayed as f64),
        passed: answered == sent,
    })
}

/// Publishes every command it receives back on the response topic of the same device.
/// Returns how many it relayed and the CPU time its thread spent meanwhile.
fn relay_loop(mut c: Client, stop: &AtomicBool, size: usize) -> io::Result<(u64, Option<u64>)> {
    let mut inbox = Vec::new();
    let cpu_start = procstat::this_thread_cpu_us();
    let mut relayed = 0u64;
    while !stop.load(Ordering::Relaxed) {
        c.poll(Duration::from_millis(5), &mut inbox)?;
        relayed += inbox.len() as u64;
        for p in inbox.drain(..) {
            let topic = p.topic.replace("/dn/cmd", "/up/resp");
            let mut body = p.payload.to_vec();
            body.resize(size.max(body.len()), b' ');
            c.publish(&topic, &body, 0)?;
        }
        c.flush()?;
    }
    let cpu_us = procstat::this_thread_cpu_us()
        .zip(cpu_start)
        .map(|(end, start)| end.saturating_sub(start));
    c.disconnect();
    Ok((relayed, cpu_us))
}

/// The unsigned integer after `key` in `s`.
fn number_after(s: &[u8], key: &[u8]) -> Option<u64> {
    let at = s.windows(key.len()).position(|w| w == key)? + key.len();
    let digits = s[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&s[at..at + digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::number_after;

    #[test]
    fn reads_the_send_time() {
        assert_eq!(
            number_after(br#"{"reqID":7,"t":12345,"x":1}"#, b"\"t\":"),
            Some(12345)
        );
        assert_eq!(number_after(br#"{"reqID":7}"#, b"\"t\":"), None);
    }
}
