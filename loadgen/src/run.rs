//! The conductor of a run: starts the MQTT driver and the device threads, moves
//! them through the phases (register → wait for observations → steady state →
//! drain → de-register), prints the progress line, and builds the report.

use crate::procstat::{self, Watch};
use crate::report::{self, Check, Report};
use crate::stats::{get, Clock, Counters, Hist};
use crate::worker::{self, Worker, WorkerHists};
use crate::{driver, echo, RunOpts, Shared};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Runs one load run and returns its report (`report.passed` says whether its checks held).
pub fn run(opts: RunOpts) -> io::Result<Report> {
    let threads = opts.threads.max(1);
    let track = opts.mqtt.is_some() && opts.notify_rate > 0.0;
    let queued = opts.queue_mode && opts.mqtt.is_some() && opts.commands > 0.0;
    if opts.dtls {
        crate::dtls::key(&opts)?;
    }
    let sh = Arc::new(Shared {
        opts,
        clock: Clock::new(),
        c: Counters::default(),
        phase: AtomicU8::new(worker::PHASE_REGISTER),
        steady_start_us: AtomicU64::new(0),
        pending: AtomicU64::new(0),
        pending_done: AtomicU64::new(0),
        dereg_queued: AtomicU64::new(0),
        registered: Default::default(),
        notify_sent: track.then(Default::default),
        cmd_queued: queued.then(Default::default),
    });
    if sh.opts.echo {
        return run_echo(sh, threads);
    }
    Conductor::new(sh, threads).run()
}

/// Splits `n` devices over `threads`: (first global index, count) each.
fn split(offset: u32, n: usize, threads: usize) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    let mut base = offset;
    for t in 0..threads {
        let count = n / threads + usize::from(t < n % threads);
        out.push((base, count));
        base += count as u32;
    }
    out
}

struct Progress {
    sh: Arc<Shared>,
    next_us: u64,
    last: [u64; 5],
}

impl Progress {
    fn tick(&mut self, phase: &str) {
        let now = self.sh.clock.us();
        if self.sh.opts.quiet || now < self.next_us {
            return;
        }
        self.next_us = now + 1_000_000;
        let c = &self.sh.c;
        let cur = [
            get(&c.reg_ok),
            get(&c.updates_ok),
            get(&c.notify_sent),
            get(&c.mqtt_notify_msgs),
            get(&c.cmd_answered),
        ];
        let d: Vec<u64> = cur.iter().zip(self.last).map(|(a, b)| a - b).collect();
        self.last = cur;
        eprintln!(
            "[{:>5.1}s {phase:<9}] reg {}/{} (+{}/s, {} rtx) upd {} (+{}/s) notif {} (+{}/s) mqtt-notif {} (+{}/s) cmd {}/{} (+{}/s) srv-req {}",
            now as f64 / 1e6,
            cur[0],
            self.sh.opts.register,
            d[0],
            get(&c.retransmissions),
            cur[1],
            d[1],
            cur[2],
            d[2],
            cur[3],
            d[3],
            cur[4],
            get(&c.cmd_sent),
            d[4],
            get(&c.server_requests),
        );
    }
}

struct Conductor {
    sh: Arc<Shared>,
    /// Commands answered by the end of steady state (the throughput; later ones were queued).
    answered_in_steady: u64,
    threads: usize,
    progress: Progress,
}

impl Conductor {
    fn new(sh: Arc<Shared>, threads: usize) -> Self {
        let progress = Progress {
            sh: sh.clone(),
            next_us: 1_000_000,
            last: [0; 5],
        };
        Self {
            sh,
            answered_in_steady: 0,
            threads,
            progress,
        }
    }

    fn set_phase(&self, p: u8) {
        self.sh.phase.store(p, Ordering::Release);
    }

    /// Sleeps in small steps until `done` or `secs` pass; returns the seconds waited.
    /// Register messages may trail the answers (a broker taking subscriptions first):
    /// waits for them while they keep coming, at most `register_timeout`. Only this
    /// run's devices count: other loadgens' devices (other prefixes) registering through
    /// the same broker at the same time do not end the wait.
    fn wait_register_messages(&mut self) {
        let ok = get(&self.sh.c.reg_ok);
        let mut last = (u64::MAX, 0u64);
        let timeout = self.sh.opts.register_timeout;
        self.wait("register", timeout, |s| {
            let (now, seen) = (s.clock.us(), get(&s.c.mqtt_registered_own));
            if seen != last.0 {
                last = (seen, now);
            }
            seen >= ok || now - last.1 > 5_000_000
        });
    }

    fn wait(&mut self, phase: &str, secs: f64, mut done: impl FnMut(&Shared) -> bool) -> f64 {
        let start = self.sh.clock.us();
        let end = start + (secs * 1e6) as u64;
        loop {
            self.progress.tick(phase);
            let now = self.sh.clock.us();
            if done(&self.sh) || now >= end {
                return (now - start) as f64 / 1e6;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn run(mut self) -> io::Result<Report> {
        let sh = self.sh.clone();
        let o = &sh.opts;
        let n = o.register;
        let mqtt = match o.mqtt {
            Some(_) => Some(driver::connect(&sh)?),
            None => None,
        };
        let driver: Option<JoinHandle<io::Result<driver::DriverResult>>> = mqtt.map(|c| {
            let sh = sh.clone();
            std::thread::spawn(move || driver::run(sh, c))
        });
        let own_cpu = || procstat::sample(std::process::id()).map(|s| s.cpu_us);
        let own_cpu_start = own_cpu();
        let mut workers: Vec<JoinHandle<io::Result<WorkerHists>>> = Vec::new();
        for (base, count) in split(o.devices_offset, n, self.threads) {
            let w = Worker::new(sh.clone(), base, count, self.threads)?;
            workers.push(std::thread::spawn(move || w.run()));
        }
        let outstanding = |s: &Shared| get(&s.pending).saturating_sub(get(&s.pending_done));
        let sample = || o.watch_pid.and_then(procstat::sample);
        let mut watch = o.watch_pid.map(|pid| Watch {
            pid,
            start: procstat::sample(pid).unwrap_or_default(),
            ..Default::default()
        });

        // Registration storm.
        let reg_done = |s: &Shared| {
            get(&s.c.reg_ok) + get(&s.c.reg_failed) + get(&s.c.reg_timed_out) >= n as u64
        };
        let reg_secs = self.wait("register", o.register_timeout, reg_done);
        let own_cpu_register = own_cpu_start.zip(own_cpu()).map(|(a, b)| b - a);
        if let Some(w) = &mut watch {
            w.after_register = sample();
        }
        if o.mqtt.is_some() {
            self.wait_register_messages();
        }

        // The gateway's observe requests (auto-observe) come after the registrations.
        let steady = o.steady > 0.0;
        if steady && (o.notify_rate > 0.0 || o.commands > 0.0) {
            self.set_phase(worker::PHASE_OBSERVE_WAIT);
            let mut last = (u64::MAX, 0u64);
            self.wait("observe", o.observe_wait, |s| {
                let now = s.clock.us();
                let seen = get(&s.c.server_requests);
                if seen != last.0 {
                    last = (seen, now);
                }
                seen > 0 && now - last.1 > 500_000
            });
        }

        let mut steady_secs = 0.0;
        if steady {
            if let Some(w) = &mut watch {
                w.steady_start = sample();
            }
            sh.steady_start_us.store(sh.clock.us(), Ordering::Release);
            self.set_phase(worker::PHASE_STEADY);
            steady_secs = self.wait("steady", o.steady, |_| false);
            self.answered_in_steady = get(&sh.c.cmd_answered);
            if let Some(w) = &mut watch {
                w.steady_end = sample();
            }
        }

        // Drain: late answers, commands in flight, notifications still on their way.
        self.set_phase(worker::PHASE_DRAIN);
        let mut last = (u64::MAX, 0u64);
        let mut drain = o.drain;
        if o.queue_mode && o.commands > 0.0 && o.update_fraction > 0.0 {
            // Commands still held in the gateway go out at the devices' next Update.
            drain = drain.max(o.lifetime as f64 * o.update_fraction * 1.5 + 2.0);
        }
        self.wait("drain", drain, |s| {
            let now = s.clock.us();
            let mq = get(&s.c.mqtt_notify_msgs) + get(&s.c.cmd_answered);
            if mq != last.0 {
                last = (mq, now);
            }
            let cmds = get(&s.c.cmd_sent) <= get(&s.c.cmd_answered) + get(&s.c.cmd_timed_out);
            let notes = s.opts.mqtt.is_none()
                || s.opts.notify_rate <= 0.0
                || get(&s.c.mqtt_notify_msgs) >= get(&s.c.notify_sent)
                || now - last.1 > 1_000_000;
            outstanding(s) == 0 && cmds && notes
        });

        let mut deregistered = None;
        if o.deregister {
            self.set_phase(worker::PHASE_DEREGISTER);
            let threads = self.threads as u64;
            self.wait("deregister", 30.0, |s| {
                get(&s.dereg_queued) >= threads && outstanding(s) == 0
            });
            deregistered = Some(get(&sh.c.dereg_ok));
        }
        self.set_phase(worker::PHASE_DONE);
        if let Some(w) = &mut watch {
            w.end = sample();
        }

        let mut hists = WorkerHists::default();
        for w in workers {
            let h = w
                .join()
                .map_err(|_| io::Error::other("device thread panicked"))??;
            hists.register.merge(&h.register);
            hists.update.merge(&h.update);
            hists.notify_ack.merge(&h.notify_ack);
            hists.handshake.merge(&h.handshake);
            hists.queue_wait.merge(&h.queue_wait);
        }
        let drv = match driver {
            Some(d) => Some(
                d.join()
                    .map_err(|_| io::Error::other("MQTT thread panicked"))??,
            ),
            None => None,
        };
        let answered_in_steady = self.answered_in_steady;
        let mut r = build_report(
            &sh,
            self.threads,
            reg_secs,
            steady_secs,
            &hists,
            drv.as_ref(),
            deregistered,
        );
        if let Some(reg) = &mut r.registration {
            reg.loadgen_cpu_us_per_registration = own_cpu_register.and_then(|c| per(c, reg.ok));
        }
        if let Some(c) = &mut r.commands {
            c.answered_in_steady = answered_in_steady;
            c.rate_per_s = rate(answered_in_steady, steady_secs);
        }
        r.watch = watch.map(|w| finish_watch(w, &sh));
        Ok(r)
    }
}

fn per(cpu: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| cpu as f64 / n as f64)
}

fn finish_watch(mut w: Watch, sh: &Shared) -> Watch {
    let c = &sh.c;
    if let Some(a) = w.after_register {
        let ok = get(&c.reg_ok);
        w.cpu_us_per_registration = per(a.cpu_us - w.start.cpu_us, ok);
        if ok > 0 {
            w.rss_bytes_per_endpoint =
                Some((a.rss_kb as f64 - w.start.rss_kb as f64) * 1024.0 / ok as f64);
        }
    }
    if let (Some(a), Some(b)) = (w.steady_start, w.steady_end) {
        let cpu = b.cpu_us - a.cpu_us;
        w.steady_cpu_us = Some(cpu);
        let notes = if sh.opts.mqtt.is_some() {
            get(&c.mqtt_notify_msgs)
        } else {
            get(&c.notify_sent)
        };
        if sh.opts.notify_rate > 0.0 {
            w.cpu_us_per_notification = per(cpu, notes);
        }
        if sh.opts.commands > 0.0 {
            w.cpu_us_per_command = per(cpu, get(&c.cmd_answered));
        }
    }
    w
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn build_report(
    sh: &Shared,
    threads: usize,
    reg_secs: f64,
    steady_secs: f64,
    h: &WorkerHists,
    drv: Option<&driver::DriverResult>,
    deregistered: Option<u64>,
) -> Report {
    let o = &sh.opts;
    let c = &sh.c;
    let n = o.register;
    let mut r = Report {
        mode: "lwm2m".into(),
        devices: n,
        threads,
        deregistered,
        send_failed: get(&c.send_failed),
        ..Default::default()
    };
    let mut checks = Vec::new();
    // `all`: everything it checks succeeded; `enough`: what --allow-failures still requires.
    let mut check = |name: &str, all: bool, enough: bool, detail: String| {
        checks.push(new_check(o, name, all, enough, detail))
    };
    let inputs = Inputs {
        sh,
        reg_secs,
        steady_secs,
        h,
        drv,
    };
    if n > 0 {
        r.registration = Some(registration_section(&inputs, &mut check));
    }
    if o.steady > 0.0 {
        r.steady = Some(steady_section(&inputs, &mut check));
    }
    if o.commands > 0.0 && o.steady > 0.0 {
        r.commands = Some(commands_section(&inputs, &mut check));
    }
    if o.dtls {
        r.dtls = Some(dtls_section(&inputs, &mut check));
    }
    if o.queue_mode {
        r.queue = Some(queue_section(&inputs, &mut check));
    }
    r.conclude(checks);
    r
}

/// What the report's sections are built from.
struct Inputs<'a> {
    sh: &'a Shared,
    reg_secs: f64,
    steady_secs: f64,
    h: &'a WorkerHists,
    drv: Option<&'a driver::DriverResult>,
}

/// Adds a check: name, `all`, `enough`, detail (see [`new_check`]).
type CheckFn<'a> = dyn FnMut(&str, bool, bool, String) + 'a;

/// The registration phase: the section, and the checks that every device registered
/// (and, with an MQTT driver, that its register message was published).
fn registration_section(i: &Inputs<'_>, check: &mut CheckFn<'_>) -> report::Registration {
    let o = &i.sh.opts;
    let c = &i.sh.c;
    let n = i.sh.opts.register;
    let h = i.h;
    let drv = i.drv;
    let reg_secs = i.reg_secs;
    let ok = get(&c.reg_ok);
    let unavailable = get(&c.reg_unavailable);
    let section = report::Registration {
        devices: n,
        target_rate: o.rate,
        sent: get(&c.reg_sent),
        ok,
        failed: get(&c.reg_failed),
        service_unavailable: unavailable,
        retried: get(&c.reg_retried),
        timed_out: get(&c.reg_timed_out),
        retransmissions: get(&c.retransmissions),
        seconds: reg_secs,
        rate_per_s: rate(ok, reg_secs),
        latency: h.register.summary(),
        mqtt_register_msgs: drv.map(|_| get(&c.mqtt_register_msgs)),
        mqtt_registered_endpoints: drv.map(|d| d.registered_endpoints),
        loadgen_cpu_us_per_registration: None,
    };
    let mut detail = format!("{ok}/{n} devices registered");
    if unavailable > 0 {
        detail += &format!(
            ", {unavailable} answered 5.03 Service Unavailable ({} retried after Max-Age; \
             the gateway's admission: max_conn_rate, max_connections; or MQTT backlog)",
            get(&c.reg_retried)
        );
    }
    check("registered", ok == n as u64, ok > 0, detail);
    if let Some(d) = drv {
        // Never allowed to fail: a registration the gateway acknowledged must reach MQTT.
        check(
            "register published",
            d.registered_endpoints == ok,
            d.registered_endpoints >= ok,
            format!(
                "{}/{ok} registered endpoints seen on MQTT",
                d.registered_endpoints
            ),
        );
    }
    section
}

/// The steady state: updates and notifications, and their checks.
fn steady_section(i: &Inputs<'_>, check: &mut CheckFn<'_>) -> report::Steady {
    let o = &i.sh.opts;
    let c = &i.sh.c;
    let h = i.h;
    let drv = i.drv;
    let steady_secs = i.steady_secs;
    let sent = get(&c.notify_sent);
    let mq = get(&c.mqtt_notify_msgs);
    let upd_sent = get(&c.updates_sent);
    let upd_ok = get(&c.updates_ok);
    let section = report::Steady {
        seconds: steady_secs,
        updates_sent: upd_sent,
        updates_ok: upd_ok,
        updates_failed: get(&c.updates_failed),
        updates_timed_out: get(&c.updates_timed_out),
        update_rate_per_s: rate(upd_ok, steady_secs),
        update_latency: h.update.summary(),
        observations: get(&c.observations),
        server_requests: get(&c.server_requests),
        notify_con: o.notify_con,
        notify_target_rate: o.notify_rate,
        notify_sent: sent,
        notify_rate_per_s: rate(sent, steady_secs),
        notify_acked: get(&c.notify_acked),
        notify_timed_out: get(&c.notify_timed_out),
        notify_reset: get(&c.notify_reset),
        notify_ack_latency: h.notify_ack.summary(),
        mqtt_notify_received: drv.map(|_| mq),
        mqtt_notify_rate_per_s: drv.map(|_| rate(mq, steady_secs)),
        notify_lost: drv.map(|_| sent.saturating_sub(mq)),
        notify_latency: drv.map(|d| d.notify_latency.summary()),
    };
    if upd_sent > 0 {
        check(
            "updates",
            upd_ok == upd_sent,
            true,
            format!("{upd_ok}/{upd_sent} updates answered 2.04"),
        );
    }
    if o.notify_rate > 0.0 {
        check(
            "notifications",
            sent > 0,
            sent > 0,
            format!("{sent} sent ({} observations)", get(&c.observations)),
        );
        if drv.is_some() {
            // CON notifications the gateway acknowledged must all reach MQTT; NON ones
            // offered above capacity may be shed.
            let acked = get(&c.notify_acked);
            check(
                "notifications delivered",
                mq >= sent,
                !o.notify_con || mq >= acked,
                format!("{mq}/{sent} notifications reached MQTT ({acked} acknowledged)"),
            );
        }
    }
    section
}

/// The commands sent during the steady state, and their check.
fn commands_section(i: &Inputs<'_>, check: &mut CheckFn<'_>) -> report::Commands {
    let o = &i.sh.opts;
    let c = &i.sh.c;
    let drv = i.drv;
    let steady_secs = i.steady_secs;
    let sent = get(&c.cmd_sent);
    let answered = get(&c.cmd_answered);
    let errors = get(&c.cmd_errors);
    let section = report::Commands {
        target_rate: o.commands,
        path: o.command_path.clone(),
        mix: o.command_mix.to_string(),
        sent,
        answered,
        errors,
        timed_out: get(&c.cmd_timed_out),
        duplicates: drv.map(|d| d.duplicate_responses).unwrap_or(0),
        answered_in_steady: answered,
        rate_per_s: rate(answered, steady_secs),
        rtt: drv.map(|d| d.command_rtt.summary()).unwrap_or_default(),
    };
    let dups = drv.map(|d| d.duplicate_responses).unwrap_or(0);
    check(
        "commands answered",
        sent > 0 && answered == sent && errors == 0 && dups == 0,
        answered > 0,
        format!(
            "{answered}/{sent} answered, {errors} not their kind's success code, {dups} answered twice"
        ),
    );
    section
}

/// The DTLS handshakes, and their check.
fn dtls_section(i: &Inputs<'_>, check: &mut CheckFn<'_>) -> report::Dtls {
    let c = &i.sh.c;
    let n = i.sh.opts.register;
    let h = i.h;
    let (ok, failed) = (get(&c.hs_ok), get(&c.hs_failed));
    let section = report::Dtls {
        handshakes_started: get(&c.hs_started),
        handshakes_ok: ok,
        handshakes_failed: failed,
        reconnects: get(&c.hs_reconnects),
        resumed: get(&c.hs_resumed),
        session_errors: get(&c.dtls_session_errors),
        bad_records: get(&c.dtls_bad_records),
        handshake_latency: h.handshake.summary(),
    };
    check(
        "handshakes",
        ok >= n as u64 && failed == 0,
        ok > 0,
        format!("{ok}/{n} DTLS handshakes completed, {failed} failed"),
    );
    section
}

/// Queue mode: requests while asleep and commands held until a wake-up, and their check.
fn queue_section(i: &Inputs<'_>, check: &mut CheckFn<'_>) -> report::Queue {
    let sh = i.sh;
    let o = &i.sh.opts;
    let c = &i.sh.c;
    let h = i.h;
    let delivered = get(&c.cmd_delivered);
    let asleep = get(&c.cmd_delivered_asleep);
    let section = report::Queue {
        window_s: o.qmode_window,
        lwm2m: o.lwm2m.clone(),
        requests_while_asleep: get(&c.requests_while_asleep),
        commands_delivered: sh.cmd_queued.as_ref().map(|_| delivered),
        commands_held: sh.cmd_queued.as_ref().map(|_| get(&c.cmd_held)),
        commands_delivered_asleep: sh.cmd_queued.as_ref().map(|_| asleep),
        queue_latency: sh.cmd_queued.as_ref().map(|_| h.queue_wait.summary()),
    };
    if sh.cmd_queued.is_some() && o.steady > 0.0 {
        let sent = get(&c.cmd_sent);
        check(
            "commands after wake-up",
            delivered == sent && asleep == 0,
            asleep == 0,
            format!(
                "{delivered}/{sent} commands reached their device, {asleep} while it slept ({} held until an Update)",
                get(&c.cmd_held)
            ),
        );
    }
    section
}

/// A check of the run: `all` when everything it covers succeeded; with `--allow-failures`
/// a failed one is allowed when `enough` holds.
fn new_check(o: &RunOpts, name: &str, all: bool, enough: bool, detail: String) -> Check {
    Check {
        name: name.into(),
        ok: all,
        allowed: o.allow_failures && !all && enough,
        detail,
    }
}

fn run_echo(sh: Arc<Shared>, threads: usize) -> io::Result<Report> {
    let o = &sh.opts;
    let watch_start = o.watch_pid.and_then(procstat::sample);
    let mut handles = Vec::new();
    for (base, count) in split(o.devices_offset, o.devices, threads) {
        let sh = sh.clone();
        handles.push(std::thread::spawn(move || {
            echo::run_worker(sh, base, count, threads)
        }));
    }
    let mut progress = Progress {
        sh: sh.clone(),
        next_us: 1_000_000,
        last: [0; 5],
    };
    let start = sh.clock.us();
    while !handles.iter().all(|h| h.is_finished()) {
        if !o.quiet && sh.clock.us() >= progress.next_us {
            progress.next_us += 1_000_000;
            eprintln!(
                "[{:>5.1}s echo] sent {} received {}",
                sh.clock.us() as f64 / 1e6,
                get(&sh.c.echo_sent),
                get(&sh.c.echo_received)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = &mut progress;
    let mut hist = Hist::new();
    for h in handles {
        hist.merge(
            &h.join()
                .map_err(|_| io::Error::other("echo thread panicked"))??,
        );
    }
    let watch_end = o.watch_pid.and_then(procstat::sample);
    let secs = o.duration.min((sh.clock.us() - start) as f64 / 1e6);
    let sent = get(&sh.c.echo_sent);
    let received = get(&sh.c.echo_received);
    let mut r = Report {
        mode: "echo".into(),
        devices: o.devices,
        threads,
        send_failed: get(&sh.c.send_failed),
        echo: Some(report::Echo {
            target_rate: o.rate,
            size: o.size.max(16),
            sent,
            received,
            lost: sent.saturating_sub(received),
            seconds: secs,
            rate_per_s: rate(received, secs),
            rtt: hist.summary(),
        }),
        ..Default::default()
    };
    if let (Some(pid), Some(a), Some(b)) = (o.watch_pid, watch_start, watch_end) {
        r.watch = Some(Watch {
            pid,
            start: a,
            end: Some(b),
            cpu_us_per_echo: per(b.cpu_us - a.cpu_us, received),
            ..Default::default()
        });
    }
    r.conclude(vec![new_check(
        o,
        "echoed",
        received == sent,
        received > 0,
        format!("{received}/{sent} datagrams came back"),
    )]);
    Ok(r)
}
