use super::plan::*;
use super::*;
use crate::cluster::{Inventory, Meta, Object};
use s2z_core::labels::{MIN_SCALE, MODEL_LABEL};
use s2z_core::org::{OrgSpec, OrgStatus};
use s2z_core::settings::KnativeConfig;
use s2z_core::testing::{map, t as time};
use serde_json::json;

fn org(name: &str, activity: &str, reported: Option<OrgState>) -> Org {
    let mut org = Org::new(name, OrgSpec::default());
    org.metadata.creation_timestamp = serde_json::from_value(json!("2025-01-01T00:00:00Z")).ok();
    org.status = Some(OrgStatus {
        last_activity_at: Some(activity.into()),
        state: reported,
        ..OrgStatus::default()
    });
    org
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

fn inventory() -> Inventory {
    Inventory {
        orgs: vec![
            // Idle for two days but still reported Active: flips.
            org("idle", "2025-01-29T00:00:00Z", Some(OrgState::Active)),
            // Active and reported so, revisions already right: not in the sweep.
            org("busy", "2025-01-31T11:00:00Z", Some(OrgState::Active)),
            // Never reported: flips from <none>.
            org("fresh", "2025-01-31T11:00:00Z", None),
        ],
        namespaces: [("idle", "idle"), ("busy", "busy"), ("fresh", "fresh")]
            .into_iter()
            .map(|(n, o)| (n.to_string(), o.to_string()))
            .collect(),
        revisions: vec![
            revision("idle", "web-00001", &[], &[(MIN_SCALE, "1")]),
            revision(
                "idle",
                "bert-predictor-00001",
                &[(MODEL_LABEL, "bert")],
                &[(MIN_SCALE, "3")],
            ),
            revision(
                "busy",
                "web-00001",
                &[],
                &[(MIN_SCALE, "1"), ("s2z.dev/declared", "{}")],
            ),
            revision("busy", "broken-00001", &[], &[(MIN_SCALE, "abc")]),
        ],
        pods: vec![],
        notes: vec![],
    }
}

fn report(dry_run: bool) -> SweepReport {
    plan(
        &inventory(),
        &Settings::default(),
        &KnativeConfig::default(),
        time("2025-01-31T12:00:00Z"),
        dry_run,
    )
}

#[test]
fn idle_orgs_flip_and_their_revisions_scale_to_zero() {
    let report = report(true);
    let orgs: Vec<(&str, Option<OrgState>, OrgState, usize)> = report
        .orgs
        .iter()
        .map(|o| (o.name.as_str(), o.from, o.to, o.revisions_to_change))
        .collect();
    assert_eq!(
        orgs,
        vec![
            ("idle", Some(OrgState::Active), OrgState::Dormant, 2),
            ("fresh", None, OrgState::Active, 0),
        ]
    );
    assert_eq!(report.orgs_checked, 3);
    let web = &report.revisions[0];
    assert_eq!(
        (web.name.as_str(), web.kind.as_str()),
        ("web-00001", "pynode")
    );
    let min = web.changes.iter().find(|c| c.key == MIN_SCALE);
    assert_eq!(
        min.map(|c| (c.from.as_deref(), c.to.as_deref())),
        Some((Some("1"), Some("0")))
    );
    assert_eq!(report.revisions[1].kind, "model");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    assert!(report.warnings[0].starts_with("revision busy/broken-00001 is left unchanged"));
}

#[test]
fn dry_run_table() {
    insta::assert_snapshot!(render(&report(true), false));
}

#[test]
fn json_schema() -> serde_json::Result<()> {
    let value = serde_json::to_value(report(true))?;
    assert_eq!(value["kind"], "SweepReport");
    assert_eq!(value["dryRun"], true);
    assert_eq!(value["orgs"][0]["result"], "planned");
    assert_eq!(value["orgs"][1]["from"], serde_json::Value::Null);
    assert_eq!(
        value["revisions"][0]["changes"][0]["key"]
            .as_str()
            .map(|k| k.starts_with("autoscaling.knative.dev/") || k == "s2z.dev/declared"),
        Some(true)
    );
    Ok(())
}

fn object(state: &str, since: Option<&str>, evaluated: Option<&str>) -> DynamicObject {
    let resource = ApiResource::erase::<Org>(&());
    let mut object = DynamicObject::new("idle", &resource);
    object.data = json!({
        "spec": {"scaleToZeroAllowed": true},
        "status": {
            "state": state,
            "stateSince": since,
            "lastActivityAt": "2025-01-29T00:00:00Z",
            "lastEvaluatedAt": evaluated,
        },
    });
    object
}

#[test]
fn the_controller_answers_with_a_newer_evaluation_in_the_expected_state() {
    let requested = time("2025-01-31T12:00:00.400Z");
    let settings = Settings::default();
    let drift = Expectation {
        state: OrgState::Dormant,
        flips: false,
    };
    let answers = |o: &DynamicObject, e: Expectation| answered(o, e, requested, &settings);
    assert!(!answers(&object("Active", None, None), drift));
    assert!(
        !answers(
            &object("Dormant", None, Some("2025-01-31T11:59:59Z")),
            drift
        ),
        "an evaluation before the request does not count"
    );
    assert!(
        answers(
            &object("Dormant", None, Some("2025-01-31T12:00:00Z")),
            drift
        ),
        "whole-second stamps in the request's second count"
    );
    assert!(
        !answers(&object("Active", None, Some("2025-01-31T12:00:01Z")), drift),
        "evaluated, but not in a state the rule allows"
    );
    let flip = Expectation {
        state: OrgState::Dormant,
        flips: true,
    };
    assert!(
        answers(&object("Dormant", Some("2025-01-31T12:00:02Z"), None), flip),
        "a flip entered after the request answers it"
    );
    assert!(
        !answers(&object("Dormant", Some("2025-01-31T11:00:00Z"), None), flip),
        "an older flip does not"
    );
    assert!(
        !answers(
            &object("Dormant", Some("2025-01-31T12:00:02Z"), None),
            drift
        ),
        "without a flip only lastEvaluatedAt answers"
    );
}
