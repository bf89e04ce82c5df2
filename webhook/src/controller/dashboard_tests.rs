//! The Grafana dashboard shipped in manifests/components/grafana-dashboard asks only for what
//! s2z-webhook exports: every query's metric names are looked up in the text of the binary's own
//! registry (admission, controller, activity and schedule metrics, as `run` registers them).

use std::collections::BTreeSet;

use chrono::{Duration, Utc};
use prometheus_client::registry::Registry;
use s2z_core::org::{Org, OrgSpec, OrgState, OrgStatus};
use serde_json::Value;

use crate::activity::metrics::ActivityMetrics;
use crate::admission::ObjectKind;
use crate::cache::{CacheScope, Caches};
use crate::controller::metrics::ControllerMetrics;
use crate::metrics::{AdmissionMetrics, RequestKind, RequestOutcome, render};

const DASHBOARD: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../manifests/components/grafana-dashboard/s2z-dashboard.json"
));

/// The registry as `run` builds it, leading, with one active org due in an hour.
fn exported() -> String {
    let mut org = Org::new("acme", OrgSpec::default());
    org.status = Some(OrgStatus {
        state: Some(OrgState::Active),
        dormant_at: Some((Utc::now() + Duration::hours(1)).to_rfc3339()),
        ..OrgStatus::default()
    });
    let caches = Caches::preloaded(
        CacheScope {
            namespace: "s2z-system".into(),
            knative_namespace: "knative-serving".into(),
        },
        [org],
        [],
        [],
    );
    let mut registry = Registry::with_prefix("s2z_webhook");
    // A labelled family is rendered once it has a sample: one of each.
    let admission = AdmissionMetrics::register(&mut registry);
    admission.observe(
        RequestOutcome::Patched,
        RequestKind(ObjectKind::Model),
        true,
        std::time::Duration::from_millis(1),
    );
    let controller = ControllerMetrics::register(&mut registry);
    controller.reconciled(false, std::time::Duration::from_millis(1));
    controller.patched("deployment-scale", true);
    controller.status_written("changed");
    controller.flipped(Some(OrgState::Dormant), OrgState::Active, None);
    controller.event("OrgActive");
    controller.woke(Some(std::time::Duration::from_secs(3)));
    let activity = ActivityMetrics::register(&mut registry);
    activity.request(202);
    activity.signal("immediate");
    activity.write("written");
    activity.pending(0);
    activity.auth_cache("token", true);
    let (_tx, leader) = tokio::sync::watch::channel(true);
    super::register(&mut registry, caches, leader);
    render(&registry).unwrap_or_default()
}

/// Metric family names from `# TYPE <name> <type>` lines.
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// `s2z_webhook_*` names in a PromQL expression, as families: a counter's `_total`, a
/// histogram's `_bucket`, `_sum` and `_count` name the family without the suffix.
fn names_in(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("s2z_webhook_"))
        .map(|w| {
            ["_total", "_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| w.strip_suffix(s))
                .unwrap_or(w)
                .to_string()
        })
        .collect()
}

fn exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                title.clone(),
                target["expr"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

#[test]
fn every_dashboard_query_names_an_exported_metric() -> Result<(), serde_json::Error> {
    let dashboard: Value = serde_json::from_str(DASHBOARD)?;
    let exported = families(&exported());
    let queries = exprs(&dashboard);
    assert!(queries.len() >= 10, "too few queries: {queries:?}");
    let mut missing = Vec::new();
    for (title, expr) in &queries {
        let names = names_in(expr);
        if names.is_empty() {
            missing.push(format!("{title}: no s2z metric in {expr:?}"));
        }
        for name in names {
            if !exported.contains(&name) {
                missing.push(format!("{title}: {name} is not exported ({expr})"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{}\nexported: {exported:?}",
        missing.join("\n")
    );
    Ok(())
}

#[test]
fn the_check_catches_a_metric_that_does_not_exist() {
    let exported = families(&exported());
    let names = names_in("sum(rate(s2z_webhook_controller_naps_total[5m]))");
    assert_eq!(names, vec!["s2z_webhook_controller_naps".to_string()]);
    assert!(!exported.contains(&names[0]));
    assert!(exported.contains("s2z_webhook_controller_flips"));
}

#[test]
fn panels_have_unique_ids_and_the_datasource_variable() -> Result<(), serde_json::Error> {
    let dashboard: Value = serde_json::from_str(DASHBOARD)?;
    let panels = dashboard["panels"].as_array().cloned().unwrap_or_default();
    let ids: BTreeSet<u64> = panels.iter().filter_map(|p| p["id"].as_u64()).collect();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
    for panel in &panels {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
    }
    Ok(())
}

#[test]
fn the_schedule_is_exported_while_leading_only() {
    let text = exported();
    for line in [
        r#"s2z_webhook_controller_orgs{state="Active"} 1"#,
        r#"s2z_webhook_controller_orgs_due{within="1h"} 1"#,
        r#"s2z_webhook_controller_orgs_due{within="5m"} 0"#,
    ] {
        assert!(text.contains(line), "missing {line}:\n{text}");
    }
    assert!(
        text.contains("s2z_webhook_controller_next_flip_seconds "),
        "{text}"
    );

    let mut registry = Registry::with_prefix("s2z_webhook");
    let (_tx, follower) = tokio::sync::watch::channel(false);
    let caches = Caches::preloaded(
        CacheScope {
            namespace: "s2z-system".into(),
            knative_namespace: "knative-serving".into(),
        },
        [],
        [],
        [],
    );
    super::register(&mut registry, caches, follower);
    let text = render(&registry).unwrap_or_default();
    assert!(!text.contains("controller_orgs"), "{text}");
}
