//! Prometheus text exposition format (version 0.0.4): a writer that emits the
//! `# HELP` and `# TYPE` lines once per metric family, label value escaping,
//! and a lock-free [`Histogram`] that many threads can observe into.
//!
//! ```
//! use lwm2m_gateway::metrics::{Histogram, Writer, LATENCY_US_BUCKETS};
//! let mut out = String::new();
//! let mut w = Writer::new(&mut out);
//! w.counter("lwm2m_datagrams_in_total", "Datagrams received.", &[("shard", "0")], 10u64);
//! w.counter("lwm2m_datagrams_in_total", "Datagrams received.", &[("shard", "1")], 12u64);
//! let h = Histogram::new(LATENCY_US_BUCKETS);
//! h.observe(1_500);
//! h.write(&mut w, "lwm2m_auth_latency_seconds", "Authentication round trips.", &[], 1e6);
//! assert_eq!(out.matches("# TYPE lwm2m_datagrams_in_total counter").count(), 1);
//! ```

pub mod process;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Latency bucket bounds in microseconds, 100 µs to 10 s (render them with
/// `divisor = 1e6` to get Prometheus' customary seconds).
pub const LATENCY_US_BUCKETS: &[u64] = &[
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A sample value: integers are written exactly, floats in Prometheus' form
/// (`+Inf`, `-Inf`, `NaN`).
pub trait Value {
    fn write_to(&self, out: &mut String);
}

macro_rules! int_value {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn write_to(&self, out: &mut String) {
                let _ = write!(out, "{}", self);
            }
        }
    )*};
}
int_value!(u8, u16, u32, u64, usize, i8, i16, i32, i64, isize);

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        write_f64(out, *self);
    }
}

impl Value for f32 {
    fn write_to(&self, out: &mut String) {
        write_f64(out, f64::from(*self));
    }
}

impl Value for bool {
    fn write_to(&self, out: &mut String) {
        out.push(if *self { '1' } else { '0' });
    }
}

fn write_f64(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Appends `v` escaped as a label value (`\\`, `\"`, `\n`).
pub fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Appends `v` escaped as `# HELP` text (`\\`, `\n`).
fn escape_help(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Whether `name` is a valid metric or label name (`[a-zA-Z_:][a-zA-Z0-9_:]*`;
/// label names may not contain `:`, which this does not check).
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Writes samples to a `String`, emitting `# HELP`/`# TYPE` the first time a
/// family is seen. Samples of one family should be written together (the
/// format wants a family's lines contiguous).
pub struct Writer<'a> {
    out: &'a mut String,
    families: HashSet<String>,
}

impl<'a> Writer<'a> {
    /// A writer appending to `out`; families already declared in `out` (by a
    /// `# TYPE` line) are not declared again.
    pub fn new(out: &'a mut String) -> Self {
        let families = out
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split(' ').next())
            .map(str::to_string)
            .collect();
        Writer { out, families }
    }

    /// The text written so far (including what `out` held before).
    pub fn as_str(&self) -> &str {
        self.out
    }

    fn family(&mut self, name: &str, help: &str, kind: &str) {
        debug_assert!(valid_name(name), "bad metric name {name:?}");
        if self.families.contains(name) {
            return;
        }
        self.families.insert(name.to_string());
        self.out.push_str("# HELP ");
        self.out.push_str(name);
        self.out.push(' ');
        escape_help(self.out, help);
        self.out.push_str("\n# TYPE ");
        self.out.push_str(name);
        self.out.push(' ');
        self.out.push_str(kind);
        self.out.push('\n');
    }

    fn sample(
        &mut self,
        name: &str,
        suffix: &str,
        labels: &[(&str, &str)],
        extra: Option<(&str, &str)>,
        value: &dyn Value,
    ) {
        self.out.push_str(name);
        self.out.push_str(suffix);
        let extra = extra.iter().copied();
        let mut first = true;
        for (k, v) in labels.iter().copied().chain(extra) {
            self.out.push(if first { '{' } else { ',' });
            first = false;
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label_value(self.out, v);
            self.out.push('"');
        }
        if !first {
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(self.out);
        self.out.push('\n');
    }

    /// A counter sample (`name` should end in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: impl Value) {
        self.family(name, help, "counter");
        self.sample(name, "", labels, None, &value);
    }

    /// A gauge sample.
    pub fn gauge(&mut self, name: &str, help: &str, labels: &[(&str, &str)], value: impl Value) {
        self.family(name, help, "gauge");
        self.sample(name, "", labels, None, &value);
    }

    /// A histogram: `buckets` are `(le, cumulative count)` in increasing `le`;
    /// the `+Inf` bucket is added from `count` unless the last bound already
    /// is infinite.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) {
        self.family(name, help, "histogram");
        let mut le = String::new();
        let mut saw_inf = false;
        for &(bound, cumulative) in buckets {
            le.clear();
            write_f64(&mut le, bound);
            saw_inf |= bound == f64::INFINITY;
            self.sample(name, "_bucket", labels, Some(("le", &le)), &cumulative);
        }
        if !saw_inf {
            self.sample(name, "_bucket", labels, Some(("le", "+Inf")), &count);
        }
        self.sample(name, "_sum", labels, None, &sum);
        self.sample(name, "_count", labels, None, &count);
    }
}

/// One counter sample appended to `out` (declaring the family if `out` does
/// not yet declare it; for many samples a [`Writer`] is cheaper).
pub fn counter(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    value: impl Value,
) {
    Writer::new(out).counter(name, help, labels, value);
}

/// One gauge sample appended to `out`; see [`counter`].
pub fn gauge(out: &mut String, name: &str, help: &str, labels: &[(&str, &str)], value: impl Value) {
    Writer::new(out).gauge(name, help, labels, value);
}

/// One histogram appended to `out`; see [`Writer::histogram`].
pub fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    labels: &[(&str, &str)],
    buckets: &[(f64, u64)],
    sum: f64,
    count: u64,
) {
    Writer::new(out).histogram(name, help, labels, buckets, sum, count);
}

/// A histogram of integer observations (e.g. microseconds) with fixed bucket
/// bounds, updated with relaxed atomics from any number of threads.
#[derive(Debug)]
pub struct Histogram {
    bounds: Box<[u64]>,
    /// One per bound plus the overflow bucket; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A consistent-enough copy of a [`Histogram`]: `count` is the sum of the
/// buckets read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)` per finite bound.
    pub buckets: Vec<(u64, u64)>,
    pub sum: u64,
    pub count: u64,
}

impl Histogram {
    /// `bounds` must be strictly increasing.
    pub fn new(bounds: &[u64]) -> Self {
        assert!(
            bounds.windows(2).all(|w| w[0] < w[1]),
            "histogram bounds must increase"
        );
        Histogram {
            bounds: bounds.into(),
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    /// Records one observation (falls in the first bucket whose bound is ≥ `v`).
    pub fn observe(&self, v: u64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration in microseconds.
    pub fn observe_duration_us(&self, d: std::time::Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn bounds(&self) -> &[u64] {
        &self.bounds
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0u64;
        let mut buckets = Vec::with_capacity(self.bounds.len());
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            if let Some(&bound) = self.bounds.get(i) {
                buckets.push((bound, cumulative));
            }
        }
        HistogramSnapshot {
            buckets,
            sum: self.sum.load(Ordering::Relaxed),
            count: cumulative,
        }
    }

    /// Writes the histogram with bounds and sum divided by `divisor` (`1e6`
    /// turns microseconds into seconds; dividing keeps `0.0001` exact in text).
    pub fn write(
        &self,
        w: &mut Writer<'_>,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        divisor: f64,
    ) {
        self.snapshot().write(w, name, help, labels, divisor);
    }
}

impl HistogramSnapshot {
    /// See [`Histogram::write`].
    pub fn write(
        &self,
        w: &mut Writer<'_>,
        name: &str,
        help: &str,
        labels: &[(&str, &str)],
        divisor: f64,
    ) {
        let buckets: Vec<(f64, u64)> = self
            .buckets
            .iter()
            .map(|&(b, c)| (b as f64 / divisor, c))
            .collect();
        w.histogram(
            name,
            help,
            labels,
            &buckets,
            self.sum as f64 / divisor,
            self.count,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_declared_once_and_labels_escaped() {
        let mut out = String::new();
        let mut w = Writer::new(&mut out);
        w.counter("a_total", "A things.\nMore", &[("k", "x\"y\\z\nw")], 3u64);
        w.counter("a_total", "A things.", &[("k", "b")], 4u64);
        w.gauge("g", "G.", &[], -2i64);
        w.gauge("f", "F.", &[("a", "1"), ("b", "2")], 0.5f64);
        assert_eq!(
            out,
            "# HELP a_total A things.\\nMore\n# TYPE a_total counter\n\
             a_total{k=\"x\\\"y\\\\z\\nw\"} 3\na_total{k=\"b\"} 4\n\
             # HELP g G.\n# TYPE g gauge\ng -2\n\
             # HELP f F.\n# TYPE f gauge\nf{a=\"1\",b=\"2\"} 0.5\n"
        );
        // The free functions see the families already in the text.
        counter(&mut out, "a_total", "A things.", &[("k", "c")], 1u64);
        assert_eq!(out.matches("# TYPE a_total").count(), 1);
        gauge(&mut out, "new_gauge", "N.", &[], f64::INFINITY);
        assert!(out.ends_with("# TYPE new_gauge gauge\nnew_gauge +Inf\n"));
    }

    #[test]
    fn histogram_text() {
        let mut out = String::new();
        histogram(
            &mut out,
            "h",
            "H.",
            &[("x", "1")],
            &[(0.1, 1), (1.0, 3)],
            2.5,
            4,
        );
        assert_eq!(
            out,
            "# HELP h H.\n# TYPE h histogram\n\
             h_bucket{x=\"1\",le=\"0.1\"} 1\nh_bucket{x=\"1\",le=\"1\"} 3\nh_bucket{x=\"1\",le=\"+Inf\"} 4\n\
             h_sum{x=\"1\"} 2.5\nh_count{x=\"1\"} 4\n"
        );
    }

    #[test]
    fn lock_free_histogram() {
        let h = std::sync::Arc::new(Histogram::new(&[10, 100, 1000]));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let h = h.clone();
                std::thread::spawn(move || {
                    for v in [5, 10, 11, 100, 500, 5000] {
                        h.observe(v);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(10, 8), (100, 16), (1000, 20)]);
        assert_eq!(s.count, 24);
        assert_eq!(s.sum, 4 * (5 + 10 + 11 + 100 + 500 + 5000));
        let mut out = String::new();
        h.write(&mut Writer::new(&mut out), "lat_seconds", "L.", &[], 1e3);
        assert!(out.contains("lat_seconds_bucket{le=\"0.01\"} 8\n"), "{out}");
        assert!(
            out.contains("lat_seconds_bucket{le=\"+Inf\"} 24\n"),
            "{out}"
        );
        assert!(out.contains("lat_seconds_count 24\n"), "{out}");
    }

    #[test]
    fn names() {
        assert!(valid_name("lwm2m_up:rate_total"));
        assert!(!valid_name("9x"));
        assert!(!valid_name("a-b"));
        assert!(!valid_name(""));
    }
}
