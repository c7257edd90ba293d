//! What ships for watching the gateway: the Prometheus alert rules
//! (`etc/prometheus/lwm2m-gateway.rules.yml`) parse as YAML with the structure Prometheus
//! loads (groups of rules, each with an alert name, an expression, a severity and a
//! summary), and every metric they and the Grafana dashboard (`etc/grafana/`) name
//! exists on a running gateway's `/metrics`.

mod common;
#[path = "interop/support.rs"]
mod support;

use common::gateway::{Broker, GatewayProc};
use simd_json::prelude::*;
use std::collections::BTreeSet;
use std::process::Command;

const RULES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/etc/prometheus/lwm2m-gateway.rules.yml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/etc/grafana/lwm2m-gateway.json"
);

/// The gateway's metric names (a histogram's series names with its `_bucket`, `_sum`
/// and `_count` too) and Prometheus' own `up`.
fn names(families: &[String]) -> BTreeSet<String> {
    let mut out: BTreeSet<String> = ["up".to_string()].into();
    for f in families {
        for suffix in ["", "_bucket", "_sum", "_count"] {
            out.insert(format!("{f}{suffix}"));
        }
    }
    out
}

/// The metric names of a PromQL expression that are ours or Prometheus' `up`: the
/// identifiers starting with `lwm2m_` or `process_`, and `up`.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if c == '"' {
            in_string = !in_string;
        }
        if !in_string && (c.is_ascii_alphanumeric() || c == '_') {
            word.push(c);
            continue;
        }
        if word.starts_with("lwm2m_") || word.starts_with("process_") || word == "up" {
            out.push(word.clone());
        }
        word.clear();
    }
    out
}

fn json_file(path: &str) -> simd_json::OwnedValue {
    let mut bytes = std::fs::read(path).unwrap();
    simd_json::to_owned_value(&mut bytes).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn alert_rules_and_dashboard_name_only_metrics_that_exist() {
    let gw = GatewayProc::start(Broker::Embedded, "");
    let exposition = gw.metrics();
    let families: Vec<String> = exposition.types.keys().cloned().collect();
    assert!(families.len() > 50, "{families:?}");
    let known = names(&families);

    // The rules, as YAML (PyYAML in the interop venv), then as JSON.
    let py = support::venv_python_with("yaml");
    let out = Command::new(py)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
            RULES,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut text = out.stdout;
    let rules = simd_json::to_owned_value(&mut text).unwrap();
    let groups = rules["groups"].as_array().expect("groups");
    assert!(!groups.is_empty());
    let mut alerts = BTreeSet::new();
    for g in groups {
        assert!(g["name"].as_str().is_some_and(|n| !n.is_empty()));
        for r in g["rules"].as_array().expect("rules") {
            let name = r["alert"].as_str().expect("alert name").to_string();
            assert!(alerts.insert(name.clone()), "{name} twice");
            let expr = r["expr"].as_str().expect("expr");
            assert!(
                matches!(
                    r["labels"]["severity"].as_str(),
                    Some("warning" | "critical")
                ),
                "{name}: severity"
            );
            assert!(
                r["annotations"]["summary"].as_str().is_some(),
                "{name}: summary"
            );
            if let Some(f) = r.get("for") {
                let f = f.as_str().expect("for is a duration");
                assert!(f.ends_with('m') || f.ends_with('s'), "{name}: for {f}");
            }
            let used = metrics_in(expr);
            assert!(!used.is_empty(), "{name}: {expr}");
            for m in used {
                assert!(known.contains(&m), "{name}: {m} is not on /metrics");
            }
        }
    }
    assert!(alerts.len() >= 5, "{alerts:?}");

    // The dashboard.
    let dash = json_file(DASHBOARD);
    let mut ids = BTreeSet::new();
    let mut exprs = 0;
    for p in dash["panels"].as_array().expect("panels") {
        assert!(ids.insert(p["id"].as_u64().expect("panel id")));
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            exprs += 1;
            for m in metrics_in(expr) {
                assert!(
                    known.contains(&m),
                    "panel {}: {m} is not on /metrics",
                    p["title"]
                );
            }
        }
    }
    assert!(exprs >= 10);
}

#[test]
fn metric_names_are_found_in_expressions() {
    assert_eq!(
        metrics_in(r#"sum by (x) (rate(lwm2m_a_total{outcome="lwm2m_b"}[5m])) / up"#),
        ["lwm2m_a_total", "up"]
    );
}
