//! The MQTT side of a run: one client that subscribes to the gateway's uplink
//! topics (registrations, command responses, notifications) and, during steady
//! state, publishes commands (a weighted mix of read, write, execute and observe) at
//! the requested rate to registered devices, matching each response by its `reqID`
//! to measure the round trip.

use crate::mqtt::{json_str, json_uint, topic_endpoint, Client};
use crate::stats::{add, Hist};
use crate::worker::{PHASE_DONE, PHASE_STEADY};
use crate::Shared;
use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// A kind of command the driver sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
    Execute,
    Observe,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Execute => "execute",
            Kind::Observe => "observe",
        }
    }

    /// The response code of a device that did what it was asked.
    fn success(self) -> &'static str {
        match self {
            Kind::Read | Kind::Observe => "2.05",
            Kind::Write | Kind::Execute => "2.04",
        }
    }

    fn data(self, read_path: &str) -> String {
        match self {
            Kind::Read => format!("{{\"path\":\"{read_path}\"}}"),
            Kind::Write => r#"{"path":"/3/0/14","type":"String","value":"+01"}"#.into(),
            Kind::Execute => r#"{"path":"/3/0/4"}"#.into(),
            Kind::Observe => r#"{"path":"/3/0/9"}"#.into(),
        }
    }
}

/// `--command-mix`: each kind with its weight; the driver cycles through a schedule in
/// which each kind appears as often as its weight says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMix {
    pub weights: Vec<(Kind, u32)>,
}

impl CommandMix {
    fn schedule(&self) -> Vec<Kind> {
        let mut out = Vec::new();
        let max = self.weights.iter().map(|w| w.1).max().unwrap_or(0);
        // Interleaved: round r takes every kind whose weight exceeds r.
        for r in 0..max {
            out.extend(self.weights.iter().filter(|w| w.1 > r).map(|w| w.0));
        }
        out
    }
}

impl std::fmt::Display for CommandMix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .weights
            .iter()
            .map(|(k, w)| format!("{}={w}", k.name()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

pub fn parse_mix(s: &str) -> Result<CommandMix, String> {
    let mut weights = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, w) = part.split_once('=').unwrap_or((part, "1"));
        let kind = match k.trim() {
            "read" => Kind::Read,
            "write" => Kind::Write,
            "execute" => Kind::Execute,
            "observe" => Kind::Observe,
            other => {
                return Err(format!(
                    "unknown command kind {other:?} (read, write, execute, observe)"
                ))
            }
        };
        let w: u32 = w
            .trim()
            .parse()
            .map_err(|_| format!("weight of {k:?}: expected a whole number"))?;
        if w > 0 {
            weights.push((kind, w.min(1000)));
        }
    }
    if weights.is_empty() {
        return Err("the mix needs at least one kind with a weight above 0".into());
    }
    Ok(CommandMix { weights })
}

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
    let mut pending: HashMap<u64, (u64, Kind)> = HashMap::new();
    let schedule = sh.opts.command_mix.schedule();
    let data: Vec<String> = schedule
        .iter()
        .map(|k| k.data(&sh.opts.command_path))
        .collect();
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
                // A prime stride: consecutive commands go to devices spread over all
                // that registered, not to the first ones.
                let dev = targets[(cursor * 1_000_003) % targets.len()];
                let ep = format!("{prefix}{dev}");
                cursor += 1;
                if let Some(q) = &sh.cmd_queued {
                    q.push(dev, sh.clock.us());
                }
                let id = next_req;
                next_req += 1;
                let slot = (id as usize - 1) % schedule.len();
                let kind = schedule[slot];
                let payload = format!(
                    "{{\"reqID\":{id},\"msgType\":\"{}\",\"data\":{}}}",
                    kind.name(),
                    data[slot]
                );
                c.publish(&format!("lwm2m/{ep}/dn/cmd"), payload.as_bytes(), 0)?;
                pending.insert(id, (sh.clock.us(), kind));
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
                        add(&sh.c.mqtt_registered_own, 1);
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
                Some(t @ ("read" | "write" | "execute" | "observe")) => {
                    let Some(id) = json_uint(body, "reqID") else {
                        continue;
                    };
                    if let Some((sent, kind)) = pending.remove(&id) {
                        res.command_rtt.record(now.saturating_sub(sent));
                        add(&sh.c.cmd_answered, 1);
                        if t != kind.name() || json_str(body, "code") != Some(kind.success()) {
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
            pending.retain(|_, (sent, _)| now.saturating_sub(*sent) < timeout_us);
            add(&sh.c.cmd_timed_out, (before - pending.len()) as u64);
        }
    }
    add(&sh.c.cmd_timed_out, pending.len() as u64);
    res.registered_endpoints = known.len() as u64;
    c.disconnect();
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parses_and_interleaves() {
        let m = parse_mix("read=3, write=1,observe").unwrap();
        assert_eq!(m.to_string(), "read=3,write=1,observe=1");
        use Kind::*;
        assert_eq!(m.schedule(), [Read, Write, Observe, Read, Read]);
        assert_eq!(parse_mix("read").unwrap().schedule(), [Read]);
        assert!(parse_mix("delete=1").is_err());
        assert!(parse_mix("read=0").is_err());
        assert!(parse_mix("read=x").is_err());
    }
}
