//! Unit tests of the pure admission path: no cluster, no clock.

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use s2z_core::labels::{
    DECLARED_ANNOTATION, INITIAL_SCALE, MIN_SCALE, MIN_SCALE_CAMEL, MODEL_LABEL,
};
use s2z_core::org::{Org, OrgState};
use s2z_core::settings::KnativeConfig;
use serde_json::{Value, json};

use super::*;
use crate::view::{ClusterConfig, StaticView};

const UID: &str = "705ab4f5-6393-11e8-b7cc-42010a800002";

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 6, 1, 12, 0, 0)
        .single()
        .expect("valid time")
}

fn org(name: &str, allowed: bool, last_activity: &str) -> Org {
    serde_json::from_value(json!({
        "apiVersion": "s2z.dev/v1alpha1",
        "kind": "Org",
        "metadata": {"name": name, "creationTimestamp": "2025-01-01T00:00:00Z"},
        "spec": {"scaleToZeroAllowed": allowed},
        "status": {"lastActivityAt": last_activity},
    }))
    .expect("valid org")
}

/// `acme` is dormant (last active two days ago), `busy` active, `vip` exempt.
fn view(allow_zero_initial_scale: bool) -> StaticView {
    StaticView::new()
        .with_namespace("team-a", "acme")
        .with_namespace("team-b", "busy")
        .with_namespace("team-c", "vip")
        .with_namespace("team-d", "ghost")
        .with_org(org("acme", true, "2025-05-30T12:00:00Z"))
        .with_org(org("busy", true, "2025-06-01T11:00:00Z"))
        .with_org(org("vip", false, "2025-01-01T00:00:00Z"))
        .with_config(ClusterConfig {
            knative: KnativeConfig {
                allow_zero_initial_scale,
                ..KnativeConfig::default()
            },
            ..ClusterConfig::default()
        })
}

fn revision(namespace: &str, annotations: Option<Value>) -> Value {
    let mut metadata = json!({
        "name": "hello-00002",
        "namespace": namespace,
        "labels": {"serving.knative.dev/configuration": "hello"},
    });
    if let Some(annotations) = annotations {
        metadata["annotations"] = annotations;
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": metadata,
        "spec": {"containers": [{"image": "example.com/hello"}]},
    })
}

fn request(operation: &str, group: &str, kind: &str, object: &Value) -> Vec<u8> {
    let namespace = object["metadata"]["namespace"].clone();
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": UID,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": "revisions"},
            "name": "hello-00002",
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:knative-serving:controller"},
            "object": object,
            "dryRun": false,
        }
    }))
    .expect("serializable")
}

fn create(object: &Value) -> Vec<u8> {
    request("CREATE", REVISION_GROUP, REVISION_KIND, object)
}

/// The response as the API server reads it, and the object after its patch.
struct Answer {
    reviewed: Reviewed,
    raw: Value,
    allowed: bool,
    uid: String,
    /// The decoded JSON Patch bytes (`response.patch` is base64 on the wire).
    patch: Option<Vec<u8>>,
    warnings: Vec<String>,
    patched: Value,
}

impl Answer {
    fn annotations(&self) -> BTreeMap<String, String> {
        serde_json::from_value(self.patched["metadata"]["annotations"].clone()).unwrap_or_default()
    }

    fn warnings(&self) -> Vec<String> {
        self.warnings.clone()
    }
}

fn answer(view: &StaticView, object: &Value, body: &[u8]) -> Answer {
    let reviewed = review(body, view, now()).expect("answerable");
    let raw: Value = serde_json::from_slice(&reviewed.body).expect("response is JSON");
    assert_eq!(raw["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(raw["kind"], "AdmissionReview");
    let response = &raw["response"];
    let patch = response.get("patch").map(|patch| {
        let text = patch.as_str().expect("the patch is a base64 string");
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("the patch is base64")
    });
    assert_eq!(
        patch.is_some(),
        response.get("patchType").is_some(),
        "patchType goes with patch: {raw}"
    );
    let warnings: Vec<String> = match response.get("warnings") {
        Some(w) => serde_json::from_value(w.clone()).expect("warnings are strings"),
        None => Vec::new(),
    };
    let mut patched = object.clone();
    if let Some(patch) = &patch {
        let patch: json_patch::Patch = serde_json::from_slice(patch).expect("patch is JSON");
        json_patch::patch(&mut patched, &patch).expect("patch applies cleanly");
    }
    Answer {
        allowed: response["allowed"].as_bool().expect("allowed is a bool"),
        uid: response["uid"]
            .as_str()
            .expect("uid is a string")
            .to_owned(),
        reviewed,
        raw,
        patch,
        warnings,
        patched,
    }
}

fn run(view: &StaticView, object: Value) -> Answer {
    let body = create(&object);
    answer(view, &object, &body)
}

#[test]
fn non_json_is_rejected() {
    let err = review(b"{not json", &view(true), now()).expect_err("not JSON");
    assert!(matches!(err, ReviewError::NotJson(_)), "{err}");
    assert!(
        err.to_string()
            .starts_with("failed to read AdmissionReview")
    );
}

#[test]
fn other_types_are_rejected() {
    for body in [
        json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": UID}}),
        json!({"apiVersion": "v1", "kind": "Pod"}),
        json!([1, 2, 3]),
        json!("AdmissionReview"),
    ] {
        let err =
            review(body.to_string().as_bytes(), &view(true), now()).expect_err("not a review");
        assert!(
            matches!(err, ReviewError::NotAdmissionReview { .. }),
            "{err}"
        );
    }
}

#[test]
fn missing_request_or_uid_is_rejected() {
    let no_request = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let err =
        review(no_request.to_string().as_bytes(), &view(true), now()).expect_err("no request");
    assert!(matches!(err, ReviewError::NoRequest), "{err}");

    let mut body: Value = serde_json::from_slice(&create(&revision("team-a", None))).expect("json");
    body["request"]["uid"] = json!("");
    let err = review(body.to_string().as_bytes(), &view(true), now()).expect_err("empty uid");
    assert!(matches!(err, ReviewError::NoUid), "{err}");
    body["request"]
        .as_object_mut()
        .expect("object")
        .remove("uid");
    let err = review(body.to_string().as_bytes(), &view(true), now()).expect_err("no uid");
    assert!(matches!(err, ReviewError::NoUid), "{err}");
    assert!(err.to_string().contains("uid"));
}

#[test]
fn malformed_request_is_rejected() {
    let mut body: Value = serde_json::from_slice(&create(&revision("team-a", None))).expect("json");
    body["request"]["operation"] = json!("EXPLODE");
    let err = review(body.to_string().as_bytes(), &view(true), now()).expect_err("bad op");
    assert!(matches!(err, ReviewError::Malformed(_)), "{err}");
}

#[test]
fn other_kinds_are_allowed_unchanged() {
    let object = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"}});
    let answer = answer(&view(true), &object, &request("CREATE", "", "Pod", &object));
    assert!(answer.allowed);
    assert_eq!(answer.uid, UID);
    assert!(answer.patch.is_none());
    assert_eq!(answer.reviewed.outcome, Outcome::Skipped);
    assert_eq!(answer.reviewed.kind, ObjectKind::Other);
    assert_eq!(answer.raw["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer.raw["kind"], "AdmissionReview");
}

#[test]
fn non_create_is_allowed_unchanged() {
    let object = revision("team-a", None);
    let body = request("UPDATE", REVISION_GROUP, REVISION_KIND, &object);
    let answer = answer(&view(true), &object, &body);
    assert!(answer.allowed);
    assert!(answer.patch.is_none());
    assert_eq!(answer.reviewed.outcome, Outcome::Skipped);
}

#[test]
fn namespaces_of_no_org_are_skipped() {
    let answer = run(&view(true), revision("elsewhere", None));
    assert!(answer.patch.is_none());
    assert!(answer.warnings().is_empty());
    assert_eq!(answer.reviewed.outcome, Outcome::Skipped);
}

#[test]
fn a_label_naming_no_org_warns() {
    let answer = run(&view(true), revision("team-d", None));
    assert!(answer.allowed);
    assert!(answer.patch.is_none());
    assert_eq!(answer.reviewed.outcome, Outcome::Unchanged);
    let warnings = answer.warnings();
    assert!(
        warnings.iter().any(|w| w.contains("no Org ghost")),
        "{warnings:?}"
    );
}

#[test]
fn dormant_org_starts_at_zero() {
    let answer = run(&view(true), revision("team-a", Some(json!({"team": "x"}))));
    assert_eq!(answer.reviewed.state, Some(OrgState::Dormant));
    assert_eq!(answer.reviewed.outcome, Outcome::Patched);
    assert_eq!(answer.reviewed.kind, ObjectKind::Pynode);
    let annotations = answer.annotations();
    assert_eq!(annotations.get(MIN_SCALE).map(String::as_str), Some("0"));
    assert_eq!(
        annotations.get(INITIAL_SCALE).map(String::as_str),
        Some("0")
    );
    assert_eq!(annotations.get("team").map(String::as_str), Some("x"));
    assert!(annotations.contains_key(DECLARED_ANNOTATION));
    assert!(answer.warnings().is_empty(), "{:?}", answer.warnings());
    // Keys with "/" are escaped as "~1" in the patch paths.
    let patch: Value =
        serde_json::from_slice(answer.patch.as_deref().unwrap_or_default()).expect("patch");
    let paths: Vec<&str> = patch
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|op| op["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"/metadata/annotations/autoscaling.knative.dev~1min-scale"),
        "{paths:?}"
    );
    assert_eq!(answer.raw["response"]["patchType"], "JSONPatch");
}

#[test]
fn dormant_org_warns_when_initial_scale_zero_is_forbidden() {
    let answer = run(&view(false), revision("team-a", None));
    let annotations = answer.annotations();
    assert_eq!(annotations.get(MIN_SCALE).map(String::as_str), Some("0"));
    assert!(!annotations.contains_key(INITIAL_SCALE));
    let warnings = answer.warnings();
    assert!(
        warnings.iter().any(|w| w.contains("initial-scale")),
        "{warnings:?}"
    );
    assert!(warnings.iter().all(|w| w.starts_with("s2z: ")));
}

#[test]
fn revision_without_annotations_gets_the_map_created() {
    let object = revision("team-a", None);
    assert!(object["metadata"].get("annotations").is_none());
    let answer = run(&view(true), object);
    let patch: Value =
        serde_json::from_slice(answer.patch.as_deref().unwrap_or_default()).expect("patch");
    assert_eq!(patch[0]["op"], "add");
    assert_eq!(patch[0]["path"], "/metadata/annotations");
    assert_eq!(
        answer.annotations().get(MIN_SCALE).map(String::as_str),
        Some("0")
    );
}

#[test]
fn active_org_stays_warm_and_keeps_declared_values() {
    let answer = run(&view(true), revision("team-b", Some(json!({}))));
    assert_eq!(answer.reviewed.state, Some(OrgState::Active));
    assert_eq!(
        answer.annotations().get(MIN_SCALE).map(String::as_str),
        Some("1")
    );

    let mut model = revision("team-b", Some(json!({MIN_SCALE: "3"})));
    model["metadata"]["labels"][MODEL_LABEL] = json!("llama");
    let answer = run(&view(true), model);
    assert_eq!(answer.reviewed.kind, ObjectKind::Model);
    let annotations = answer.annotations();
    assert_eq!(annotations.get(MIN_SCALE).map(String::as_str), Some("3"));
    let declared: BTreeMap<String, String> =
        serde_json::from_str(&annotations[DECLARED_ANNOTATION]).expect("declared JSON");
    assert_eq!(declared.get(MIN_SCALE).map(String::as_str), Some("3"));
}

#[test]
fn dormant_then_active_restores_camel_case_declared_values() {
    let object = revision("team-a", Some(json!({MIN_SCALE_CAMEL: "2"})));
    let dormant = run(&view(true), object);
    assert_eq!(
        dormant.annotations().get(MIN_SCALE).map(String::as_str),
        Some("0")
    );
    let awake = StaticView::new()
        .with_namespace("team-a", "acme")
        .with_org(org("acme", true, "2025-06-01T11:59:00Z"));
    let active = run(&awake, dormant.patched.clone());
    let annotations = active.annotations();
    let min = annotations
        .get(MIN_SCALE)
        .or(annotations.get(MIN_SCALE_CAMEL))
        .map(String::as_str);
    assert_eq!(min, Some("2"), "{annotations:?}");
}

#[test]
fn exempt_org_is_born_warm() {
    let answer = run(
        &view(true),
        revision("team-c", Some(json!({MIN_SCALE: "0"}))),
    );
    assert_eq!(answer.reviewed.state, Some(OrgState::Exempt));
    assert_eq!(answer.reviewed.outcome, Outcome::Patched);
    let annotations = &answer.patched["metadata"]["annotations"];
    assert_eq!(annotations[MIN_SCALE], "1", "{annotations}");
}

#[test]
fn reinvocation_is_a_no_op() {
    for namespace in ["team-a", "team-b"] {
        let first = run(&view(true), revision(namespace, None));
        assert_eq!(first.reviewed.outcome, Outcome::Patched);
        let second = run(&view(true), first.patched.clone());
        assert!(second.patch.is_none(), "{namespace}");
        assert_eq!(second.reviewed.outcome, Outcome::Unchanged);
    }
}

#[test]
fn unparseable_annotations_are_left_with_a_warning() {
    let answer = run(
        &view(true),
        revision("team-a", Some(json!({MIN_SCALE: "abc"}))),
    );
    assert!(answer.allowed);
    assert!(answer.patch.is_none());
    assert_eq!(answer.reviewed.outcome, Outcome::Unchanged);
    assert!(!answer.warnings().is_empty());

    let answer = run(
        &view(true),
        revision("team-a", Some(json!({DECLARED_ANNOTATION: "{nope"}))),
    );
    assert!(answer.patch.is_none());
    assert!(!answer.warnings().is_empty());
}

#[test]
fn unreadable_object_is_left_with_a_warning() {
    let answer = run(&view(true), revision("team-a", Some(json!({"count": 3}))));
    assert!(answer.allowed);
    assert!(answer.patch.is_none());
    let warnings = answer.warnings();
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("failed to read the object")),
        "{warnings:?}"
    );
}

#[test]
fn unreadable_objects_of_other_kinds_are_skipped_silently() {
    let object = json!({"metadata": {"name": "p", "annotations": {"count": 3}}});
    let answer = answer(&view(true), &object, &request("CREATE", "", "Pod", &object));
    assert_eq!(answer.reviewed.outcome, Outcome::Skipped);
    assert!(answer.warnings().is_empty());
}

#[test]
fn invalid_settings_warn_but_still_decide() {
    let view = view(true).with_config(ClusterConfig {
        settings_error: Some("failed to parse orgDormancyPeriodSecs".into()),
        ..ClusterConfig::default()
    });
    let answer = run(&view, revision("team-a", None));
    assert_eq!(answer.reviewed.outcome, Outcome::Patched);
    assert!(answer.warnings().iter().any(|w| w.contains("s2z-settings")));
}

#[test]
fn annotation_patch_uses_add_replace_remove() {
    let current: BTreeMap<String, String> = [
        ("a/b".to_owned(), "1".to_owned()),
        ("gone".to_owned(), "x".to_owned()),
        ("same".to_owned(), "s".to_owned()),
    ]
    .into();
    let desired: BTreeMap<String, Option<String>> = [
        ("a/b".to_owned(), Some("2".to_owned())),
        ("gone".to_owned(), None),
        ("new~key".to_owned(), Some("n".to_owned())),
        ("same".to_owned(), Some("s".to_owned())),
        ("absent".to_owned(), None),
    ]
    .into();
    let ops = serde_json::to_value(annotation_patch(Some(&current), &desired)).expect("json");
    assert_eq!(
        ops,
        json!([
            {"op": "replace", "path": "/metadata/annotations/a~1b", "value": "2"},
            {"op": "remove", "path": "/metadata/annotations/gone"},
            {"op": "add", "path": "/metadata/annotations/new~0key", "value": "n"},
        ])
    );
    assert!(annotation_patch(None, &BTreeMap::new()).is_empty());
}

#[test]
fn the_patch_is_base64_as_admission_v1_specifies() {
    let answer = run(&view(true), revision("team-a", None));
    let response = &answer.raw["response"];
    // `patch` is []byte in admission.k8s.io/v1: a base64 string in JSON, not an array.
    assert!(response["patch"].is_string(), "{response}");
    assert_eq!(response["patchType"], "JSONPatch");
    assert_eq!(response["status"], json!({}));
    assert_eq!(response["uid"], UID);

    // An exempt org's revision that already declares a warm scale needs no patch.
    let exempt = run(
        &view(true),
        revision(
            "team-c",
            Some(
                json!({MIN_SCALE: "2", DECLARED_ANNOTATION: "{\"autoscaling.knative.dev/min-scale\":\"2\"}"}),
            ),
        ),
    );
    let response = exempt.raw["response"].as_object().expect("object");
    assert!(
        !response.contains_key("patch") && !response.contains_key("patchType"),
        "{response:?}"
    );
    assert!(!response.contains_key("warnings"));
}

#[test]
fn escaped_strings_read_like_plain_ones() {
    // Strings with escapes cannot be borrowed from the body; they must still match.
    let object = revision("team-a", None);
    let plain = String::from_utf8(create(&object)).expect("utf-8");
    let escaped = plain
        .replace(r#""namespace":"team-a""#, r#""namespace":"team\u002da""#)
        .replace(UID, "705ab4f5\\u002d6393-11e8-b7cc-42010a800002");
    assert_ne!(plain, escaped);
    let answer = answer(&view(true), &object, escaped.as_bytes());
    assert_eq!(answer.reviewed.outcome, Outcome::Patched);
    assert_eq!(answer.uid, UID);
    assert_eq!(answer.reviewed.object, "team-a/hello-00002");
}

#[test]
fn fields_not_read_are_not_checked() {
    // The object's spec, oldObject and options are skipped, whatever their shape.
    let object = revision("team-a", None);
    let mut body: Value = serde_json::from_slice(&create(&object)).expect("json");
    body["request"]["oldObject"] = json!({"metadata": {"annotations": {"n": 1}}});
    body["request"]["options"] = json!([1, 2]);
    body["request"]["object"]["spec"] = json!("anything");
    let answer = answer(&view(true), &object, body.to_string().as_bytes());
    assert_eq!(answer.reviewed.outcome, Outcome::Patched);
}

#[test]
fn required_request_fields_are_still_checked() {
    for field in ["kind", "resource", "operation", "userInfo"] {
        let mut body: Value =
            serde_json::from_slice(&create(&revision("team-a", None))).expect("json");
        body["request"]
            .as_object_mut()
            .expect("object")
            .remove(field);
        let err = review(body.to_string().as_bytes(), &view(true), now()).expect_err(field);
        assert!(matches!(err, ReviewError::Malformed(_)), "{field}: {err}");
    }
}

#[test]
fn json_after_the_review_is_still_not_json() {
    let mut body = create(&revision("team-a", None));
    body.extend_from_slice(b" trailing");
    let err = review(&body, &view(true), now()).expect_err("trailing garbage");
    assert!(matches!(err, ReviewError::NotJson(_)), "{err}");
}
