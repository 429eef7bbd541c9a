//! Every query in the Grafana dashboard and every alert rule in manifests/monitoring
//! uses a metric drover (or drover-extender) exports, so no panel or alert stays
//! silently empty.

use std::collections::BTreeSet;

fn root() -> std::path::PathBuf {
    drover_testenv::repo_root()
}

/// The `drover_*` metric names in a PromQL expression.
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("drover_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn exported() -> BTreeSet<String> {
    let mut names = drover::metrics::Metrics::new().names();
    // drover-extender serves its own next to the cache's.
    let planned =
        prometheus::IntCounter::new("drover_extender_gangs_planned_total", "x").expect("metric");
    names.extend(drover_extender::metrics::ExtenderMetrics::new(planned).names());
    let mut all: BTreeSet<String> = names.iter().cloned().collect();
    // A histogram exports _bucket, _sum and _count series.
    for n in &names {
        for s in ["_bucket", "_sum", "_count"] {
            all.insert(format!("{n}{s}"));
        }
    }
    all
}

#[test]
fn every_dashboard_panel_queries_metrics_drover_exports() {
    let text = std::fs::read_to_string(root().join("manifests/monitoring/grafana-dashboard.json"))
        .expect("the dashboard exists");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let exported = exported();
    let mut panels = 0;
    for p in dash["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            continue;
        }
        panels += 1;
        let title = p["title"].as_str().unwrap_or("?");
        let targets = p["targets"].as_array().expect("every panel has targets");
        let mut used = 0;
        for t in targets {
            let expr = t["expr"].as_str().expect("every target has an expr");
            for m in metrics_in(expr) {
                assert!(
                    exported.contains(&m),
                    "panel {title:?} queries {m}, which drover does not export"
                );
                used += 1;
            }
        }
        assert!(used > 0, "panel {title:?} queries no drover metric");
    }
    assert!(panels >= 10, "only {panels} panels");
}

#[test]
fn every_alert_uses_metrics_drover_exports() {
    let text = std::fs::read_to_string(root().join("manifests/monitoring/prometheusrule.yaml"))
        .expect("the rules exist");
    let rule: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let exported = exported();
    let mut alerts = 0;
    for g in rule["spec"]["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let expr = r["expr"].as_str().expect("expr");
            let found = metrics_in(expr);
            assert!(!found.is_empty(), "{expr}");
            for m in found {
                assert!(
                    exported.contains(&m),
                    "alert uses {m}, which drover does not export"
                );
            }
            alerts += 1;
        }
    }
    assert_eq!(alerts, 3);
}

#[test]
fn the_scanner_finds_names_and_the_check_can_fail() {
    assert_eq!(
        metrics_in("sum(rate(drover_a_total[5m])) / drover_b"),
        vec!["drover_a_total", "drover_b"]
    );
    assert!(!exported().contains("drover_no_such_metric"));
    assert!(exported().contains("drover_scheduling_decision_duration_seconds_bucket"));
}
