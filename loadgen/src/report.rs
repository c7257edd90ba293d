//! The result of a run: achieved rates, loss, timeouts and latency percentiles,
//! printed as a table or serialized as JSON, plus the checks that decide the exit code.

use crate::stats::Percentiles;
use serde::Serialize;
use std::fmt::Write;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// "lwm2m" or "echo".
    pub mode: String,
    pub devices: usize,
    pub threads: usize,
    pub registration: Option<Registration>,
    pub steady: Option<Steady>,
    pub commands: Option<Commands>,
    pub echo: Option<Echo>,
    /// DTLS devices (--dtls).
    pub dtls: Option<Dtls>,
    /// Queue-mode devices (--queue-mode).
    pub queue: Option<Queue>,
    pub deregistered: Option<u64>,
    /// CPU and memory of the watched process (--watch-pid).
    pub watch: Option<crate::procstat::Watch>,
    /// Datagrams the kernel refused to send.
    pub send_failed: u64,
    pub checks: Vec<Check>,
    /// Every check held: nothing failed.
    pub passed: bool,
    /// Some checks failed, and `--allow-failures` accepted each of them (the run exits 0).
    pub failures_allowed: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Registration {
    pub devices: usize,
    pub target_rate: f64,
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
    /// Of `failed`: answered 5.03 Service Unavailable, the gateway's admission refusal.
    pub service_unavailable: u64,
    /// Of `service_unavailable`: Registers the device sent again after Max-Age.
    pub retried: u64,
    pub timed_out: u64,
    pub retransmissions: u64,
    pub seconds: f64,
    /// Successful registrations per second over the phase.
    pub rate_per_s: f64,
    pub latency: Percentiles,
    /// Register messages seen on MQTT (None without --mqtt).
    pub mqtt_register_msgs: Option<u64>,
    pub mqtt_registered_endpoints: Option<u64>,
    /// The loadgen's own CPU µs (every thread) over the registration phase, per
    /// registration answered 2.01: its share of a machine it shares with the gateway.
    pub loadgen_cpu_us_per_registration: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct Steady {
    pub seconds: f64,
    pub updates_sent: u64,
    pub updates_ok: u64,
    pub updates_failed: u64,
    pub updates_timed_out: u64,
    pub update_rate_per_s: f64,
    pub update_latency: Percentiles,
    /// Observe requests the devices accepted (from auto-observe or commands).
    pub observations: u64,
    /// Requests from the gateway the devices answered (all phases).
    pub server_requests: u64,
    pub notify_con: bool,
    pub notify_target_rate: f64,
    pub notify_sent: u64,
    pub notify_rate_per_s: f64,
    pub notify_acked: u64,
    pub notify_timed_out: u64,
    pub notify_reset: u64,
    pub notify_ack_latency: Percentiles,
    /// Notifications seen on MQTT, their rate over the steady phase, the ones
    /// missing, and the device → MQTT latency (None without --mqtt).
    pub mqtt_notify_received: Option<u64>,
    pub mqtt_notify_rate_per_s: Option<f64>,
    pub notify_lost: Option<u64>,
    pub notify_latency: Option<Percentiles>,
}

#[derive(Debug, Default, Serialize)]
pub struct Commands {
    pub target_rate: f64,
    /// The path of the read commands.
    pub path: String,
    /// The kinds of commands and their weights (`--command-mix`).
    pub mix: String,
    pub sent: u64,
    pub answered: u64,
    /// Answered with something other than the kind's success code (2.05 or 2.04).
    pub errors: u64,
    pub timed_out: u64,
    pub duplicates: u64,
    /// Answered before steady state ended; `rate_per_s` is this over the steady seconds.
    pub answered_in_steady: u64,
    pub rate_per_s: f64,
    pub rtt: Percentiles,
}

#[derive(Debug, Default, Serialize)]
pub struct Echo {
    pub target_rate: f64,
    pub size: usize,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub seconds: f64,
    pub rate_per_s: f64,
    pub rtt: Percentiles,
}

#[derive(Debug, Default, Serialize)]
pub struct Dtls {
    pub handshakes_started: u64,
    pub handshakes_ok: u64,
    /// Refused, failed or not completed within --handshake-timeout.
    pub handshakes_failed: u64,
    /// `--dtls-resume`: handshakes offering the previous session, and those the
    /// gateway resumed (the rest were full handshakes).
    pub reconnects: u64,
    pub resumed: u64,
    /// Sessions that broke after their handshake.
    pub session_errors: u64,
    /// Records the sessions rejected (bad MAC, replays, out of state).
    pub bad_records: u64,
    pub handshake_latency: Percentiles,
}

#[derive(Debug, Default, Serialize)]
pub struct Queue {
    /// The awake window the devices assume (the gateway's qmode_time_window).
    pub window_s: f64,
    /// How the devices asked for queue mode: 1.0 `b=UQ`, 1.1 the `Q` parameter.
    pub lwm2m: String,
    /// Requests of the gateway that reached a device outside its awake window.
    pub requests_while_asleep: u64,
    /// With commands: those that reached their device, those published while the
    /// device slept (held by the gateway until its Update), those that reached
    /// it while asleep (must be 0), and MQTT publish → device latency.
    pub commands_delivered: Option<u64>,
    pub commands_held: Option<u64>,
    pub commands_delivered_asleep: Option<u64>,
    pub queue_latency: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    /// Everything it checks succeeded.
    pub ok: bool,
    /// Not ok, but enough got through for `--allow-failures`.
    pub allowed: bool,
    pub detail: String,
}

/// Why registrations get 5.03 from the gateway.
pub const UNAVAILABLE_CAUSE: &str = "the gateway's admission limits: max_conn_rate \
     (new registrations per second per listener, 1000 by default) or max_connections, \
     counted in /metrics as lwm2m_admission_rate_limited_total and \
     lwm2m_admission_over_capacity_total; or its MQTT backlog above the watermark, \
     lwm2m_shed_total";

fn lat(p: &Percentiles) -> String {
    if p.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
        us(p.p50_us),
        us(p.p90_us),
        us(p.p99_us),
        us(p.p999_us),
        us(p.max_us),
        p.count
    )
}

fn us(v: u64) -> String {
    if v >= 10_000 {
        format!("{:.1}ms", v as f64 / 1000.0)
    } else {
        format!("{v}µs")
    }
}

impl Report {
    /// Sets the checks and the verdict: passed when every check is ok; failures allowed
    /// when the others are all allowed.
    pub fn conclude(&mut self, checks: Vec<Check>) {
        self.passed = checks.iter().all(|c| c.ok);
        self.failures_allowed = !self.passed && checks.iter().all(|c| c.ok || c.allowed);
        self.checks = checks;
    }

    /// The run's exit status is success.
    pub fn success(&self) -> bool {
        self.passed || self.failures_allowed
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("report serializes")
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(s, "  {k:<28} {v}");
        };
        row(
            "mode",
            format!(
                "{} ({} devices, {} threads)",
                self.mode, self.devices, self.threads
            ),
        );
        if let Some(r) = &self.registration {
            r.rows(&mut row);
        }
        if let Some(st) = &self.steady {
            st.rows(&mut row);
        }
        if let Some(c) = &self.commands {
            row(
                "commands",
                format!(
                    "{}/{} answered, {} errors, {} timed out, {} duplicates, {:.0}/s (target {:.0}/s, {})",
                    c.answered, c.sent, c.errors, c.timed_out, c.duplicates, c.rate_per_s, c.target_rate, c.mix
                ),
            );
            row("  round trip", lat(&c.rtt));
        }
        if let Some(d) = &self.dtls {
            row(
                "dtls handshakes",
                format!(
                    "{}/{} completed, {} failed, {} session errors, {} bad records",
                    d.handshakes_ok,
                    d.handshakes_started,
                    d.handshakes_failed,
                    d.session_errors,
                    d.bad_records
                ),
            );
            if d.reconnects > 0 {
                row(
                    "  reconnections",
                    format!("{} resumed of {} offered", d.resumed, d.reconnects),
                );
            }
            row("  handshake latency", lat(&d.handshake_latency));
        }
        if let Some(q) = &self.queue {
            q.rows(&mut row);
        }
        if let Some(e) = &self.echo {
            row(
                "echo",
                format!(
                    "{}/{} echoed, {} lost, {:.0}/s over {:.2}s ({} bytes)",
                    e.received, e.sent, e.lost, e.rate_per_s, e.seconds, e.size
                ),
            );
            row("  round trip", lat(&e.rtt));
        }
        if let Some(w) = &self.watch {
            let f = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
            row(
                "watched pid",
                format!(
                    "{}: CPU µs per registration {}, RSS bytes per endpoint {}, CPU µs per notification {}, per command {}, per echo {}",
                    w.pid,
                    f(w.cpu_us_per_registration),
                    f(w.rss_bytes_per_endpoint),
                    f(w.cpu_us_per_notification),
                    f(w.cpu_us_per_command),
                    f(w.cpu_us_per_echo)
                ),
            );
        }
        if let Some(d) = self.deregistered {
            row("deregistered", d.to_string());
        }
        if self.send_failed > 0 {
            row("send failed", self.send_failed.to_string());
        }
        for c in &self.checks {
            let verdict = match (c.ok, c.allowed) {
                (true, _) => "ok",
                (false, true) => "failed (allowed)",
                (false, false) => "FAILED",
            };
            row(
                &format!("check {}", c.name),
                format!("{verdict} {}", c.detail),
            );
        }
        let result = if self.passed {
            "passed"
        } else if self.failures_allowed {
            "failures allowed by --allow-failures (not passed)"
        } else {
            "FAILED"
        };
        row("result", result.into());
        s
    }
}

/// A table row: key, value.
type Rows<'a> = dyn FnMut(&str, String) + 'a;

impl Registration {
    /// Its rows of [`Report::table`].
    fn rows(&self, row: &mut Rows<'_>) {
        row(
            "registration",
            format!(
                "{}/{} ok, {} failed, {} timed out, {} retransmissions",
                self.ok, self.devices, self.failed, self.timed_out, self.retransmissions
            ),
        );
        row(
            "  rate",
            format!(
                "{:.0}/s achieved over {:.2}s (target {})",
                self.rate_per_s,
                self.seconds,
                if self.target_rate > 0.0 {
                    format!("{:.0}/s", self.target_rate)
                } else {
                    "max".into()
                }
            ),
        );
        if self.service_unavailable > 0 {
            row(
                "  5.03 answers",
                format!(
                    "{} ({} retried after Max-Age; {UNAVAILABLE_CAUSE})",
                    self.service_unavailable, self.retried
                ),
            );
        }
        row("  latency", lat(&self.latency));
        if let Some(c) = self.loadgen_cpu_us_per_registration {
            row("  loadgen CPU µs per registration", format!("{c:.2}"));
        }
        if let Some(m) = self.mqtt_registered_endpoints {
            row(
                "  on MQTT",
                format!(
                    "{} register messages, {m} endpoints",
                    self.mqtt_register_msgs.unwrap_or(0)
                ),
            );
        }
    }
}

impl Steady {
    /// Its rows of [`Report::table`].
    fn rows(&self, row: &mut Rows<'_>) {
        row("steady", format!("{:.2}s", self.seconds));
        row(
            "  updates",
            format!(
                "{}/{} ok, {} failed, {} timed out, {:.0}/s",
                self.updates_ok,
                self.updates_sent,
                self.updates_failed,
                self.updates_timed_out,
                self.update_rate_per_s
            ),
        );
        row("  update latency", lat(&self.update_latency));
        row(
            "  observations",
            format!(
                "{} (server requests {})",
                self.observations, self.server_requests
            ),
        );
        row(
            "  notifications",
            format!(
                "{} {} sent, {:.0}/s (target {:.0}/s)",
                self.notify_sent,
                if self.notify_con { "CON" } else { "NON" },
                self.notify_rate_per_s,
                self.notify_target_rate
            ),
        );
        if self.notify_con {
            row(
                "  notify acks",
                format!(
                    "{} acked, {} timed out, {} reset; {}",
                    self.notify_acked,
                    self.notify_timed_out,
                    self.notify_reset,
                    lat(&self.notify_ack_latency)
                ),
            );
        }
        if let Some(r) = self.mqtt_notify_received {
            row(
                "  notify on MQTT",
                format!(
                    "{r} received ({:.0}/s), {} lost",
                    self.mqtt_notify_rate_per_s.unwrap_or(0.0),
                    self.notify_lost.unwrap_or(0)
                ),
            );
            row(
                "  notify latency",
                self.notify_latency.as_ref().map(lat).unwrap_or_default(),
            );
        }
    }
}

impl Queue {
    /// Its rows of [`Report::table`].
    fn rows(&self, row: &mut Rows<'_>) {
        row(
            "queue mode",
            format!(
                "LwM2M {} ({}), awake window {:.1}s, {} requests while asleep",
                self.lwm2m,
                if self.lwm2m == "1.0" { "b=UQ" } else { "Q" },
                self.window_s,
                self.requests_while_asleep
            ),
        );
        if let Some(n) = self.commands_delivered {
            row(
                "  queued commands",
                format!(
                    "{n} delivered, {} held until an Update, {} delivered while asleep",
                    self.commands_held.unwrap_or(0),
                    self.commands_delivered_asleep.unwrap_or(0)
                ),
            );
            row(
                "  queueing latency",
                self.queue_latency.as_ref().map(lat).unwrap_or_default(),
            );
        }
    }
}
