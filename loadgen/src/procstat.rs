//! CPU time and resident memory of another process (the gateway, the echo server),
//! read from /proc around the phases of a run.

use serde::Serialize;

/// One reading of /proc/PID/stat and /proc/PID/status.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Sample {
    /// utime + stime of every thread, microseconds (clock-tick resolution).
    pub cpu_us: u64,
    pub rss_kb: u64,
}

fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime in microseconds from a /proc `stat` file (a process's or a thread's).
fn stat_cpu_us(path: &str) -> Option<u64> {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(clock_ticks);
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / ticks)
}

/// CPU time of the calling thread, microseconds (clock-tick resolution).
pub fn this_thread_cpu_us() -> Option<u64> {
    stat_cpu_us("/proc/thread-self/stat")
}

/// Reads the process's CPU time and RSS; None when it is gone.
pub fn sample(pid: u32) -> Option<Sample> {
    let cpu_us = stat_cpu_us(&format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(Sample { cpu_us, rss_kb })
}

/// What a watched process spent during the phases of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Watch {
    pub pid: u32,
    pub start: Sample,
    pub after_register: Option<Sample>,
    pub steady_start: Option<Sample>,
    pub steady_end: Option<Sample>,
    pub end: Option<Sample>,
    /// CPU µs the process spent in the registration phase, per successful registration.
    pub cpu_us_per_registration: Option<f64>,
    /// RSS growth over the registration phase, bytes per registered endpoint.
    pub rss_bytes_per_endpoint: Option<f64>,
    /// CPU µs the process spent in steady state.
    pub steady_cpu_us: Option<u64>,
    /// Steady-state CPU µs per notification delivered on MQTT (or sent, without --mqtt).
    pub cpu_us_per_notification: Option<f64>,
    /// Steady-state CPU µs per command answered.
    pub cpu_us_per_command: Option<f64>,
    /// Echo mode: CPU µs per datagram echoed.
    pub cpu_us_per_echo: Option<f64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_own_process() {
        let s = super::sample(std::process::id()).expect("own /proc entry");
        assert!(s.rss_kb > 0);
        assert!(super::sample(u32::MAX).is_none());
    }
}
