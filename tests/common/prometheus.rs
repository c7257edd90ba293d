//! A strict reader of the Prometheus text exposition format, for checking `/metrics`.

use std::collections::{BTreeMap, HashMap};

/// One sample: metric name, labels, value.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// `# TYPE` of each family.
    pub types: HashMap<String, String>,
}

impl Exposition {
    /// Parses `text`; panics naming the line when it is not valid exposition format: every
    /// sample belongs to a family with `# HELP` and `# TYPE` lines before it, a family has one
    /// HELP and one TYPE and all its lines together (no other family's lines in between),
    /// label values are quoted, values are numbers, and no series appears twice.
    pub fn parse(text: &str) -> Self {
        let mut e = Exposition::default();
        let mut helped = std::collections::HashSet::new();
        let mut seen = std::collections::HashSet::new();
        let mut families = Families::default();
        for (n, line) in text.lines().enumerate() {
            let at = || format!("line {}: {line:?}", n + 1);
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                families.enter(name, &at());
                assert!(helped.insert(name.to_string()), "second HELP, {}", at());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, ty) = (it.next().unwrap(), it.next().expect("a type"));
                assert!(
                    matches!(
                        ty,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ),
                    "{}",
                    at()
                );
                families.enter(name, &at());
                assert!(
                    e.types.insert(name.to_string(), ty.to_string()).is_none(),
                    "second TYPE, {}",
                    at()
                );
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment, {}", at());
            let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{}", at()));
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("value, {}", at())),
            };
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("labels, {}", at()));
                    (name.to_string(), parse_labels(body, &at()))
                }
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| e.types.get(*f).map(String::as_str) == Some("histogram"))
                })
                .unwrap_or(&name)
                .to_string();
            assert!(
                e.types.contains_key(&family) && helped.contains(&family),
                "no HELP/TYPE before the sample, {}",
                at()
            );
            families.enter(&family, &at());
            assert!(seen.insert(series.to_string()), "series twice, {}", at());
            e.samples.push(Sample {
                name,
                labels,
                value,
            });
        }
        e
    }

    /// The sum of `name` over the series whose labels include every pair of `with`.
    pub fn sum(&self, name: &str, with: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                with.iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.samples.iter().any(|s| s.name == name)
    }
}

/// Which family the lines so far belong to, and which families are finished: a line of a
/// finished family means its lines are not contiguous.
#[derive(Default)]
struct Families {
    current: Option<String>,
    done: std::collections::HashSet<String>,
}

impl Families {
    fn enter(&mut self, family: &str, at: &str) {
        if self.current.as_deref() == Some(family) {
            return;
        }
        assert!(
            !self.done.contains(family),
            "family {family} continues after other families' lines (not contiguous), {at}"
        );
        if let Some(prev) = self.current.replace(family.to_string()) {
            self.done.insert(prev);
        }
    }
}

fn parse_labels(body: &str, at: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = body;
    while !rest.is_empty() {
        let (k, r) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label, {at}"));
        let mut value = String::new();
        let mut chars = r.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => panic!("escape, {at}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value, {at}"),
            }
        };
        out.insert(k.to_string(), value);
        rest = r[end + 1..].strip_prefix(',').unwrap_or(&r[end + 1..]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Exposition;

    const GOOD: &str = "# HELP a_total A.\n# TYPE a_total counter\na_total{shard=\"0\"} 1\n\
                        a_total{shard=\"1\"} 2\n# HELP b B.\n# TYPE b gauge\nb 3\n";

    #[test]
    fn accepts_contiguous_families() {
        let e = Exposition::parse(GOOD);
        assert_eq!(e.sum("a_total", &[]), 3.0);
    }

    #[test]
    #[should_panic(expected = "not contiguous")]
    fn rejects_interleaved_families() {
        Exposition::parse(&format!("{GOOD}a_total{{shard=\"2\"}} 4\n"));
    }

    #[test]
    #[should_panic(expected = "second HELP")]
    fn rejects_a_second_help() {
        Exposition::parse("# HELP b B.\n# HELP b B.\n# TYPE b gauge\nb 1\n");
    }

    #[test]
    #[should_panic(expected = "second TYPE")]
    fn rejects_a_second_type() {
        Exposition::parse("# HELP b B.\n# TYPE b gauge\n# TYPE b gauge\nb 1\n");
    }
}
