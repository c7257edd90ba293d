//! The process's own metrics, as Prometheus' client libraries name them
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), read from
//! `/proc/self` at each scrape, and `lwm2m_build_info`. Where `/proc` cannot be read
//! (not Linux) the family is left out rather than reported as zero.

use super::Writer;

/// Clock ticks per second of `/proc/self/stat`'s CPU times (`sysconf(_SC_CLK_TCK)`,
/// 100 on every Linux architecture this runs on).
const TICKS_PER_S: f64 = 100.0;

/// Writes the process families and the build information.
pub fn write(w: &mut Writer<'_>) {
    w.gauge(
        "lwm2m_build_info",
        "The gateway's version (always 1).",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    if let Some(s) = stat() {
        w.counter(
            "process_cpu_seconds_total",
            "User and system CPU time spent, seconds.",
            &[],
            (s.utime + s.stime) as f64 / TICKS_PER_S,
        );
        w.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size, bytes.",
            &[],
            s.vsize,
        );
        w.gauge(
            "process_resident_memory_bytes",
            "Resident memory size, bytes.",
            &[],
            s.rss_pages * page_size(),
        );
        if let Some(boot) = boot_time_s() {
            w.gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch, seconds.",
                &[],
                boot as f64 + s.starttime as f64 / TICKS_PER_S,
            );
        }
        w.gauge("process_threads", "Threads of the process.", &[], s.threads);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        w.gauge(
            "process_open_fds",
            "Open file descriptors.",
            &[],
            fds.count() as u64,
        );
    }
    if let Some(max) = max_fds() {
        w.gauge(
            "process_max_fds",
            "The limit of open file descriptors.",
            &[],
            max,
        );
    }
}

/// The fields of `/proc/self/stat` used here.
struct Stat {
    utime: u64,
    stime: u64,
    threads: u64,
    starttime: u64,
    vsize: u64,
    rss_pages: u64,
}

fn stat() -> Option<Stat> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&text)
}

/// Parses `/proc/<pid>/stat` (proc(5)): the command name is in parentheses and may
/// hold spaces, so the fields are counted after its closing parenthesis.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3, so field n is f[n - 3].
    let field = |n: usize| f.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        utime: field(14)?,
        stime: field(15)?,
        threads: field(20)?,
        starttime: field(22)?,
        vsize: field(23)?,
        rss_pages: field(24)?,
    })
}

fn page_size() -> u64 {
    // The page size is 4 KiB on the architectures this runs on; /proc/self/smaps_rollup
    // would say, but costs a walk of every mapping at each scrape.
    4096
}

fn boot_time_s() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn max_fds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_name_with_spaces_and_parentheses() {
        let line = "4242 (lwm2m (gw) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615";
        let s = parse_stat(line).expect("parsed");
        assert_eq!((s.utime, s.stime), (250, 75));
        assert_eq!(s.threads, 9);
        assert_eq!(s.starttime, 123456);
        assert_eq!(s.vsize, 987654321);
        assert_eq!(s.rss_pages, 2048);
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S 1").is_none());
    }

    #[test]
    fn this_process_is_described() {
        let mut out = String::new();
        write(&mut Writer::new(&mut out));
        for family in [
            "lwm2m_build_info",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            assert!(
                out.contains(&format!("# TYPE {family} ")),
                "{family}:\n{out}"
            );
        }
        let rss = out
            .lines()
            .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap();
        assert!(rss > 1e6, "{rss}");
    }
}
