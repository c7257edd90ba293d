//! The MQTT side of a run: one client that subscribes to the gateway's uplink
//! topics (registrations, command responses, notifications) and, during steady
//! state, publishes read commands at the requested rate to registered devices,
//! matching each response by its `reqID` to measure the round trip.

use crate::mqtt::{json_str, json_uint, topic_endpoint, Client};
use crate::stats::{add, Hist};
use crate::worker::{PHASE_DONE, PHASE_STEADY};
use crate::Shared;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What the MQTT side measured.
#[derive(Default)]
pub struct DriverResult {
    pub command_rtt: Hist,
    pub notify_latency: Hist,
    /// Distinct endpoints seen in register messages.
    pub registered_endpoints: u64,
    /// Command responses that arrived more than once.
    pub duplicate_responses: u64,
}

/// Connects and subscribes (before any device registers, so nothing is missed).
pub fn connect(sh: &Shared) -> io::Result<Client> {
    let addr = sh.opts.mqtt.expect("driver needs --mqtt");
    let id = format!(
        "lwm2m-loadgen-{}-{}",
        std::process::id(),
        sh.opts.devices_offset
    );
    let mut c = Client::connect(addr, &id)?;
    c.subscribe(&["lwm2m/+/up/resp", "lwm2m/+/up/notify"], 0)?;
    Ok(c)
}

/// Runs until the phase is DONE.
pub fn run(sh: Arc<Shared>, mut c: Client) -> io::Result<DriverResult> {
    let mut res = DriverResult::default();
    let prefix = sh.opts.prefix.clone();
    let mut known: HashSet<String> = HashSet::new();
    let mut pending: HashMap<u64, u64> = HashMap::new();
    let mut answered: HashSet<u64> = HashSet::new();
    let mut next_req: u64 = 1;
    let mut cursor = 0usize;
    let mut targets: Vec<u32> = Vec::new();
    let mut cmd_start: Option<u64> = None;
    let mut cmd_done: u64 = 0;
    let timeout_us = (sh.opts.command_timeout * 1e6) as u64;
    let mut last_sweep = 0u64;
    let mut inbox = Vec::new();
    loop {
        let phase = sh.phase.load(Ordering::Acquire);
        let now = sh.clock.us();
        if phase == PHASE_STEADY && sh.opts.commands > 0.0 && targets.is_empty() {
            // Command the devices that registered over CoAP (their register messages
            // may still be queued on the MQTT side).
            targets = sh.registered.lock().map(|r| r.clone()).unwrap_or_default();
        }
        if phase == PHASE_STEADY && sh.opts.commands > 0.0 && !targets.is_empty() {
            let start = *cmd_start.get_or_insert(now);
            let target = ((now - start) as f64 / 1e6 * sh.opts.commands) as u64;
            while cmd_done < target {
                cmd_done += 1;
                let dev = targets[cursor % targets.len()];
                let ep = format!("{prefix}{dev}");
                cursor += 1;
                if let Some(q) = &sh.cmd_queued {
                    q.push(dev, sh.clock.us());
                }
                let id = next_req;
                next_req += 1;
                let payload = format!(
                    "{{\"reqID\":{id},\"msgType\":\"read\",\"data\":{{\"path\":\"{}\"}}}}",
                    sh.opts.command_path
                );
                c.publish(&format!("lwm2m/{ep}/dn/cmd"), payload.as_bytes(), 0)?;
                pending.insert(id, sh.clock.us());
                add(&sh.c.cmd_sent, 1);
            }
            c.flush()?;
        }
        if phase == PHASE_DONE {
            break;
        }
        c.poll(Duration::from_millis(1), &mut inbox)?;
        let now = sh.clock.us();
        for p in inbox.drain(..) {
            let Some(ep) = topic_endpoint(&p.topic) else {
                continue;
            };
            let body = &p.payload[..];
            match json_str(body, "msgType") {
                Some("register") => {
                    add(&sh.c.mqtt_register_msgs, 1);
                    if ep.starts_with(&prefix) && !known.contains(ep) {
                        known.insert(ep.to_string());
                    }
                }
                Some("notify") => {
                    add(&sh.c.mqtt_notify_msgs, 1);
                    let dev = ep.strip_prefix(&prefix).and_then(|s| s.parse::<u32>().ok());
                    let seq = json_uint(body, "seqNum");
                    if let (Some(t), Some(dev), Some(seq)) = (&sh.notify_sent, dev, seq) {
                        if let Some(sent) = t.take(dev, seq as u32) {
                            res.notify_latency.record(now.saturating_sub(sent));
                        }
                    }
                }
                Some("read") => {
                    let Some(id) = json_uint(body, "reqID") else {
                        continue;
                    };
                    if let Some(sent) = pending.remove(&id) {
                        res.command_rtt.record(now.saturating_sub(sent));
                        add(&sh.c.cmd_answered, 1);
                        if json_str(body, "code") != Some("2.05") {
                            add(&sh.c.cmd_errors, 1);
                        }
                        answered.insert(id);
                    } else if answered.contains(&id) {
                        res.duplicate_responses += 1;
                    }
                }
                _ => add(&sh.c.mqtt_other_msgs, 1),
            }
        }
        if now - last_sweep > 500_000 {
            last_sweep = now;
            let before = pending.len();
            pending.retain(|_, sent| now.saturating_sub(*sent) < timeout_us);
            add(&sh.c.cmd_timed_out, (before - pending.len()) as u64);
        }
    }
    add(&sh.c.cmd_timed_out, pending.len() as u64);
    res.registered_endpoints = known.len() as u64;
    c.disconnect();
    Ok(res)
}
