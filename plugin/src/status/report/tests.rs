use super::*;
use crate::cluster::{Container, Meta, Object, Pod, PodCondition, PodSpec, PodStatus, Resources};
use s2z_core::labels::{
    MIN_SCALE, MODEL_LABEL, REVISION_LABEL, ROUTING_STATE_LABEL, SLEEP_ANNOTATION,
};
use s2z_core::org::{OrgSpec, OrgStatus};
use s2z_core::testing::{map, t as time};
use serde_json::json;

const NOW: &str = "2025-01-31T12:00:00Z";

fn org(name: &str, allowed: bool, created: &str, status: Option<OrgStatus>) -> Org {
    let mut org = Org::new(
        name,
        OrgSpec {
            scale_to_zero_allowed: allowed,
            ..OrgSpec::default()
        },
    );
    org.metadata.creation_timestamp = serde_json::from_value(json!(created)).ok();
    org.status = status;
    org
}

fn status(activity: Option<&str>, state: Option<OrgState>) -> Option<OrgStatus> {
    Some(OrgStatus {
        last_activity_at: activity.map(String::from),
        state,
        ..OrgStatus::default()
    })
}

fn revision(ns: &str, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Object {
    Object {
        metadata: Meta {
            name: name.into(),
            namespace: ns.into(),
            labels: map(labels),
            annotations: map(annotations),
        },
    }
}

/// A Ready pod of `revision` holding `gpus`.
fn pod(ns: &str, revision: &str, gpus: u64) -> Pod {
    let mut limits = BTreeMap::new();
    if gpus > 0 {
        limits.insert("nvidia.com/gpu".to_string(), json!(gpus.to_string()));
    }
    Pod {
        metadata: Meta {
            name: format!("{ns}-pod"),
            namespace: ns.into(),
            labels: map(&[(REVISION_LABEL, revision)]),
            ..Meta::default()
        },
        spec: PodSpec {
            containers: vec![Container {
                resources: Resources {
                    limits,
                    ..Resources::default()
                },
            }],
            ..PodSpec::default()
        },
        status: PodStatus {
            conditions: vec![PodCondition {
                kind: "Ready".into(),
                status: "True".into(),
            }],
        },
    }
}

/// A running pod of `revision` that has not passed readiness yet.
fn starting(ns: &str, revision: &str) -> Pod {
    let mut pod = pod(ns, revision, 0);
    pod.status.conditions[0].status = "False".into();
    pod
}

/// Four orgs covering every state: active and reported, dormant by inactivity but not yet
/// reported, put to sleep, and exempt.
fn inventory() -> Inventory {
    let mut sleepy = org(
        "globex",
        true,
        "2025-01-01T00:00:00Z",
        status(Some("2025-01-31T10:00:00Z"), Some(OrgState::Dormant)),
    );
    sleepy.metadata.annotations = Some(map(&[(SLEEP_ANNOTATION, "2025-01-31T11:00:00Z")]));
    if let Some(s) = sleepy.status.as_mut() {
        s.state_since = Some("2025-01-31T11:00:05Z".into());
        // One earlier dormant hour with 1 GPU, and the current period running.
        s.savings = Some(s2z_core::org::Savings {
            floor_pods: 2,
            floor_gpus: 1,
            pod_seconds: 7200,
            gpu_seconds: 3600,
        });
    }
    Inventory {
        orgs: vec![
            org(
                "acme",
                true,
                "2025-01-01T00:00:00Z",
                status(Some("2025-01-31T11:55:00Z"), Some(OrgState::Active)),
            ),
            org(
                "bigco",
                false,
                "2025-01-01T00:00:00Z",
                status(None, Some(OrgState::Exempt)),
            ),
            sleepy,
            org(
                "initech",
                true,
                "2025-01-01T00:00:00Z",
                status(Some("2025-01-28T09:00:00Z"), Some(OrgState::Active)),
            ),
        ],
        namespaces: [
            ("acme-prod", "acme"),
            ("acme-dev", "acme"),
            ("bigco", "bigco"),
            ("globex", "globex"),
            ("initech", "initech"),
        ]
        .into_iter()
        .map(|(n, o)| (n.to_string(), o.to_string()))
        .collect(),
        revisions: vec![
            revision("acme-prod", "web-00001", &[], &[(MIN_SCALE, "1")]),
            revision("acme-dev", "web-00001", &[], &[(MIN_SCALE, "0")]),
            revision(
                "acme-prod",
                "bert-predictor-00001",
                &[(MODEL_LABEL, "bert")],
                &[(MIN_SCALE, "3")],
            ),
            revision("bigco", "api-00002", &[], &[(MIN_SCALE, "2")]),
            revision(
                "bigco",
                "llama-predictor-00001",
                &[(MODEL_LABEL, "llama")],
                &[(MIN_SCALE, "1")],
            ),
            // Old revision no route sends traffic to: Knative keeps it at zero.
            revision(
                "bigco",
                "api-00001",
                &[(ROUTING_STATE_LABEL, "reserve")],
                &[(MIN_SCALE, "2")],
            ),
            revision("globex", "app-00003", &[], &[(MIN_SCALE, "0")]),
            // Dormant and still declaring min-scale 1 (not yet patched): not listed as waiting.
            revision("globex", "app-00002", &[], &[(MIN_SCALE, "1")]),
            revision("initech", "tps-00001", &[], &[]),
        ],
        pods: vec![
            pod("acme-prod", "web-00001", 0),
            pod("acme-prod", "bert-predictor-00001", 1),
            pod("acme-prod", "bert-predictor-00001", 1),
            starting("acme-prod", "bert-predictor-00001"),
            pod("bigco", "api-00002", 4),
            pod("bigco", "api-00002", 4),
            pod("initech", "tps-00001", 0),
        ],
        notes: vec![],
    }
}

fn settings() -> SettingsView {
    SettingsView::from_data(
        "s2z-system",
        Some(map(&[
            ("orgDormancyPeriodSecs", "86400"),
            ("orgWarmupRatelimitStr", "2/hour"),
        ])),
    )
}

fn report() -> StatusReport {
    build(&inventory(), &settings(), time(NOW), StateFilter::default())
}

#[test]
fn states_follow_the_rule_at_now() {
    let report = report();
    let states: Vec<(&str, OrgState, Option<OrgState>)> = report
        .orgs
        .iter()
        .map(|o| (o.name.as_str(), o.state, o.reported_state))
        .collect();
    assert_eq!(
        states,
        vec![
            ("acme", OrgState::Active, Some(OrgState::Active)),
            ("bigco", OrgState::Exempt, Some(OrgState::Exempt)),
            ("globex", OrgState::Dormant, Some(OrgState::Dormant)),
            ("initech", OrgState::Dormant, Some(OrgState::Active)),
        ]
    );
    let acme = &report.orgs[0];
    assert_eq!(acme.dormant_at.as_deref(), Some("2025-02-01T11:55:00Z"));
    assert_eq!(acme.pynodes, Workloads { total: 2, warm: 1 });
    assert_eq!(acme.models, Workloads { total: 1, warm: 1 });
    assert_eq!((acme.running_pods, acme.gpus), (4, 2));
    assert_eq!(
        acme.namespaces,
        vec!["acme-dev".to_string(), "acme-prod".to_string()]
    );
    let globex = &report.orgs[2];
    assert_eq!(
        globex.dormant_since.as_deref(),
        Some("2025-01-31T11:00:05Z"),
        "reported stateSince wins"
    );
    let initech = &report.orgs[3];
    assert_eq!(
        initech.dormant_since.as_deref(),
        Some("2025-01-29T09:00:00Z"),
        "computed: last activity + period"
    );
    assert_eq!(
        report.totals,
        Totals {
            orgs: 4,
            active: 1,
            dormant: 2,
            exempt: 1,
            running_pods: 7,
            gpus: 10,
            waiting_for_pods: 2,
            saved_pod_seconds: 7200 + 2 * 3595,
            saved_gpu_seconds: 3600 + 3595,
        }
    );
}

#[test]
fn waiting_lists_warm_revisions_short_of_ready_pods() {
    let report = report();
    let waiting: Vec<(&str, &str, u32, u32)> = report
        .orgs
        .iter()
        .flat_map(|o| o.waiting_for_pods.iter())
        .map(|w| (w.namespace.as_str(), w.name.as_str(), w.ready, w.min_scale))
        .collect();
    // bert: 2 Ready of 3 (the third pod runs but is not Ready yet); llama: none of 1. Not
    // listed: web (1 of 1), api-00002 (2 of 2), api-00001 (reserve), min-scale 0 revisions, and
    // the dormant orgs' revisions.
    assert_eq!(
        waiting,
        vec![
            ("acme-prod", "bert-predictor-00001", 2, 3),
            ("bigco", "llama-predictor-00001", 0, 1),
        ]
    );
    assert_eq!(report.orgs[0].waiting_for_pods[0].kind, "model");
    let text = render_table(&report, false, false);
    assert!(text.contains("2 revisions waiting for pods"), "{text}");
}

#[test]
fn savings_add_the_running_dormant_period() {
    let report = report();
    let globex = &report.orgs[2];
    // Dormant since 11:00:05 (reported), now 12:00:00: 3595 s more at the floor.
    assert_eq!(
        globex.savings,
        Some(s2z_core::org::Savings {
            pod_seconds: 7200 + 2 * 3595,
            gpu_seconds: 3600 + 3595,
            floor_pods: 2,
            floor_gpus: 1,
        })
    );
    assert_eq!(report.orgs[0].savings, None, "never dormant: no ledger");
    let text = render_table(&report, false, false);
    assert!(
        text.lines()
            .any(|l| l.starts_with("globex") && l.trim_end().ends_with("2.0 GPU-h")),
        "{text}"
    );
    assert!(text.contains("saved 2.0 GPU-h, 4.0 pod-h"), "{text}");
    assert_eq!(amount(59, "GPU"), "59 GPU-s");
    assert_eq!(amount(90, "pod"), "1.5 pod-min");
}

#[test]
fn filters_select_by_computed_state() {
    let only = |state| {
        build(
            &inventory(),
            &settings(),
            time(NOW),
            StateFilter { only: Some(state) },
        )
        .orgs
        .into_iter()
        .map(|o| o.name)
        .collect::<Vec<_>>()
    };
    assert_eq!(only(OrgState::Dormant), vec!["globex", "initech"]);
    assert_eq!(only(OrgState::Active), vec!["acme"]);
    assert_eq!(only(OrgState::Exempt), vec!["bigco"]);
}

#[test]
fn table() {
    let report = report();
    let text = format!(
        "{}\n{}",
        header(&report.settings, false),
        render_table(&report, false, false)
    );
    insta::assert_snapshot!(text);
}

#[test]
fn wide_table() {
    insta::assert_snapshot!(render_table(&report(), true, false));
}

#[test]
fn header_warns_when_the_rate_limit_outlasts_the_dormancy_period() {
    let view = SettingsView::from_data(
        "s2z-system",
        Some(map(&[
            ("orgDormancyPeriodSecs", "1800"),
            ("orgWarmupRatelimitStr", "2/hour"),
        ])),
    );
    let text = header(&SettingsSummary::of(&view), false);
    insta::assert_snapshot!(text);
    let disabled = SettingsView::from_data(
        "s2z-system",
        Some(map(&[
            ("orgDormancyPeriodSecs", "1800"),
            ("orgWarmupRatelimitStr", "2/hour"),
            ("ratelimitEnabled", "false"),
        ])),
    );
    let text = header(&SettingsSummary::of(&disabled), false);
    assert!(!text.contains("Warning"), "{text}");
    assert!(text.contains("2/hour (disabled)"), "{text}");
}

#[test]
fn json_schema() -> Result<(), serde_json::Error> {
    let report = report();
    let value = serde_json::to_value(&report)?;
    assert_eq!(value["apiVersion"], "s2z.dev/v1alpha1");
    assert_eq!(value["kind"], "StatusReport");
    insta::assert_json_snapshot!(value["orgs"][0], @r#"
    {
      "allowed": true,
      "dormancyPeriodSecs": 86400,
      "dormantAt": "2025-02-01T11:55:00Z",
      "dormantSince": null,
      "gpus": 2,
      "lastActivityAt": "2025-01-31T11:55:00Z",
      "models": {
        "total": 1,
        "warm": 1
      },
      "name": "acme",
      "namespaces": [
        "acme-dev",
        "acme-prod"
      ],
      "pynodes": {
        "total": 2,
        "warm": 1
      },
      "reportedState": "Active",
      "runningPods": 4,
      "savings": null,
      "sleepRequestedAt": null,
      "state": "Active",
      "waitingForPods": [
        {
          "kind": "model",
          "minScale": 3,
          "name": "bert-predictor-00001",
          "namespace": "acme-prod",
          "ready": 2
        }
      ]
    }
    "#);
    let back: StatusReport = serde_json::from_value(value)?;
    assert_eq!(back, report);
    Ok(())
}
