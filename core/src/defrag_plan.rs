//! The bookkeeping behind `kubectl s2z defrag`, as pure functions: the guarded JSON patches that
//! orphan a pod and hand it back, the annotations that make an interrupted defrag resumable,
//! label-selector matching for PodDisruptionBudgets, and the drain command printed at the end.
//!
//! The arithmetic of when a node is safe lives in [`crate::defrag`]; this module is about what
//! gets written to the cluster, so that every write can be checked here without one.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use crate::labels::DEFRAG_ORPHAN_LABEL;
use crate::labels::POD_TEMPLATE_HASH_LABEL;

/// Orphan annotation: the node the pod was orphaned on (the label value may be shortened).
pub const FROM_ANNOTATION: &str = "s2z.dev/defrag-from";
/// Orphan annotation: the ReplicaSet that owned the pod, so abort can hand it back.
pub const OWNER_ANNOTATION: &str = "s2z.dev/defrag-owner";
/// Orphan annotation: that ReplicaSet's UID; a ReplicaSet recreated under the same name is not
/// the same owner.
pub const OWNER_UID_ANNOTATION: &str = "s2z.dev/defrag-owner-uid";
/// Orphan annotation: the `pod-template-hash` label removed from the pod.
pub const HASH_ANNOTATION: &str = "s2z.dev/defrag-hash";
/// Orphan annotation: the revision's replicas when the defrag started, which seed 002's rule
/// compares against; kept on the pod so that a resumed run uses the same baseline.
pub const INITIAL_REPLICAS_ANNOTATION: &str = "s2z.dev/defrag-initial-replicas";
/// Orphan annotation: when the pod was orphaned (RFC 3339).
pub const ORPHANED_AT_ANNOTATION: &str = "s2z.dev/defrag-orphaned-at";

/// Node annotation: when s2z started defragging the node (RFC 3339).
pub const NODE_STARTED_ANNOTATION: &str = "s2z.dev/defrag-started-at";
/// Node annotation: who cordoned the node, [`CORDONED_BY_S2Z`] or [`CORDONED_BEFORE`]; abort
/// only uncordons a node s2z cordoned.
pub const NODE_CORDON_ANNOTATION: &str = "s2z.dev/defrag-cordoned";
/// [`NODE_CORDON_ANNOTATION`] value: s2z cordoned the node.
pub const CORDONED_BY_S2Z: &str = "s2z";
/// [`NODE_CORDON_ANNOTATION`] value: the node was already cordoned when s2z started.
pub const CORDONED_BEFORE: &str = "before";

/// Every annotation s2z puts on an orphan, removed again when the pod is handed back.
pub const ORPHAN_ANNOTATIONS: [&str; 6] = [
    FROM_ANNOTATION,
    OWNER_ANNOTATION,
    OWNER_UID_ANNOTATION,
    HASH_ANNOTATION,
    INITIAL_REPLICAS_ANNOTATION,
    ORPHANED_AT_ANNOTATION,
];

/// The value of [`DEFRAG_ORPHAN_LABEL`] for `node`.
///
/// Label values are at most 63 characters but node names may be 253, so long names keep a
/// prefix and gain a hash; [`FROM_ANNOTATION`] always holds the full name, and readers compare
/// against it.
pub fn node_label_value(node: &str) -> String {
    const MAX: usize = 63;
    if node.len() <= MAX {
        return node.to_string();
    }
    // FNV-1a: stable across releases and platforms, unlike std's hasher.
    let hash = node.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let suffix = format!("{:016x}", hash);
    let keep = MAX - suffix.len() - 1;
    let prefix: String = node.chars().take(keep).collect();
    // A label value must end with an alphanumeric character, which the hex suffix does.
    format!("{}-{suffix}", prefix.trim_end_matches(['-', '.', '_']))
}

/// Escapes one segment of a JSON pointer (RFC 6901): label keys contain `/`.
pub fn pointer_segment(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

fn label_path(key: &str) -> String {
    format!("/metadata/labels/{}", pointer_segment(key))
}

fn annotation_path(key: &str) -> String {
    format!("/metadata/annotations/{}", pointer_segment(key))
}

/// The `test` operations that make a patch fail with 422 when the pod changed since it was read:
/// same object (UID) and same version.
fn guard(uid: &str, resource_version: &str) -> Vec<Value> {
    vec![
        json!({"op": "test", "path": "/metadata/uid", "value": uid}),
        json!({"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}),
    ]
}

/// What [`orphan_patch`] needs to know about the pod and the defrag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrphanFacts<'a> {
    /// The pod's UID.
    pub uid: &'a str,
    /// The pod's resourceVersion when it was read.
    pub resource_version: &'a str,
    /// Whether the pod has an annotations map at all (JSON patch cannot add into a missing one).
    pub has_annotations: bool,
    /// Whether the pod has ownerReferences to remove.
    pub has_owner_references: bool,
    /// Its `pod-template-hash` label, if present.
    pub hash: Option<&'a str>,
    /// The node being emptied.
    pub node: &'a str,
    /// The owning ReplicaSet's name.
    pub owner: &'a str,
    /// The owning ReplicaSet's UID.
    pub owner_uid: &'a str,
    /// The revision's replicas when the defrag started.
    pub initial_replicas: i64,
    /// Now, RFC 3339.
    pub now: &'a str,
}

/// The JSON patch that orphans a pod (seed 002): it removes the ownerReferences and the
/// `pod-template-hash` label, so the ReplicaSet starts a replacement while the pod keeps serving,
/// and records where the pod came from. It fails as a whole if the pod changed since it was read.
pub fn orphan_patch(f: &OrphanFacts<'_>) -> Value {
    let mut ops = guard(f.uid, f.resource_version);
    if f.has_owner_references {
        ops.push(json!({"op": "remove", "path": "/metadata/ownerReferences"}));
    }
    if f.hash.is_some() {
        ops.push(json!({"op": "remove", "path": label_path(POD_TEMPLATE_HASH_LABEL)}));
    }
    // A pod the ReplicaSet made always has labels (its selector), so adding into them is safe.
    ops.push(json!({"op": "add", "path": label_path(DEFRAG_ORPHAN_LABEL), "value": node_label_value(f.node)}));
    if !f.has_annotations {
        ops.push(json!({"op": "add", "path": "/metadata/annotations", "value": {}}));
    }
    let initial = f.initial_replicas.to_string();
    let records = [
        (FROM_ANNOTATION, f.node),
        (OWNER_ANNOTATION, f.owner),
        (OWNER_UID_ANNOTATION, f.owner_uid),
        (HASH_ANNOTATION, f.hash.unwrap_or_default()),
        (INITIAL_REPLICAS_ANNOTATION, initial.as_str()),
        (ORPHANED_AT_ANNOTATION, f.now),
    ];
    for (key, value) in records {
        ops.push(json!({"op": "add", "path": annotation_path(key), "value": value}));
    }
    Value::Array(ops)
}

/// What s2z recorded on an orphan, read back from its labels and annotations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrphanRecord {
    /// The node it was orphaned on.
    pub node: String,
    /// The ReplicaSet that owned it.
    pub owner: String,
    /// That ReplicaSet's UID, when recorded.
    pub owner_uid: Option<String>,
    /// The `pod-template-hash` it had.
    pub hash: String,
    /// The revision's replicas when the defrag started, when recorded and readable.
    pub initial_replicas: Option<i64>,
    /// When it was orphaned.
    pub orphaned_at: Option<String>,
}

/// The record of a pod s2z orphaned, or `None` for any other pod.
pub fn orphan_record(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Option<OrphanRecord> {
    if !labels.contains_key(DEFRAG_ORPHAN_LABEL) {
        return None;
    }
    let get = |key: &str| annotations.get(key).filter(|v| !v.is_empty()).cloned();
    Some(OrphanRecord {
        node: get(FROM_ANNOTATION)?,
        owner: get(OWNER_ANNOTATION).unwrap_or_default(),
        owner_uid: get(OWNER_UID_ANNOTATION),
        hash: get(HASH_ANNOTATION).unwrap_or_default(),
        initial_replicas: get(INITIAL_REPLICAS_ANNOTATION).and_then(|v| v.trim().parse().ok()),
        orphaned_at: get(ORPHANED_AT_ANNOTATION),
    })
}

/// What [`restore_patch`] needs to know about the orphan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFacts<'a> {
    /// The pod's UID.
    pub uid: &'a str,
    /// The pod's resourceVersion when it was read.
    pub resource_version: &'a str,
    /// The `pod-template-hash` to put back.
    pub hash: &'a str,
    /// The pod's labels now.
    pub labels: &'a BTreeMap<String, String>,
    /// The pod's annotations now.
    pub annotations: &'a BTreeMap<String, String>,
}

/// The JSON patch that hands an orphan back: it restores `pod-template-hash`, so the ReplicaSet
/// adopts the pod (and, now one over its count, removes its lowest-ranked pod, a not-yet-ready
/// replacement first), and removes s2z's label and annotations. Guarded like [`orphan_patch`].
pub fn restore_patch(f: &RestoreFacts<'_>) -> Value {
    let mut ops = guard(f.uid, f.resource_version);
    // "add" replaces an existing member, so this also repairs a hash someone edited.
    ops.push(json!({"op": "add", "path": label_path(POD_TEMPLATE_HASH_LABEL), "value": f.hash}));
    if f.labels.contains_key(DEFRAG_ORPHAN_LABEL) {
        ops.push(json!({"op": "remove", "path": label_path(DEFRAG_ORPHAN_LABEL)}));
    }
    for key in ORPHAN_ANNOTATIONS {
        if f.annotations.contains_key(key) {
            ops.push(json!({"op": "remove", "path": annotation_path(key)}));
        }
    }
    Value::Array(ops)
}

/// Whether a label selector selects a pod with `labels`, as the API server decides it for
/// PodDisruptionBudgets in policy/v1: an empty selector selects every pod of the namespace.
/// An operator this code does not know selects nothing, so a malformed budget is not reported
/// as blocking pods it cannot block.
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// What the pods left on the node need from `kubectl drain`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainNeeds {
    /// DaemonSet pods are present (`--ignore-daemonsets`).
    pub daemonsets: bool,
    /// Some pod uses emptyDir volumes (`--delete-emptydir-data`).
    pub emptydir: bool,
    /// Some pod has no controller, the orphans at least (`--force`).
    pub uncontrolled: bool,
}

/// The `kubectl drain` command that finishes the job.
///
/// `--ignore-daemonsets` is always given: drain refuses to start without it when a DaemonSet pod
/// is present, and it is harmless otherwise. The orphans have no controller, so drain refuses
/// them without `--force`.
pub fn drain_command(node: &str, needs: DrainNeeds) -> String {
    let mut command = format!("kubectl drain {node} --ignore-daemonsets");
    if needs.emptydir {
        command.push_str(" --delete-emptydir-data");
    }
    if needs.uncontrolled {
        command.push_str(" --force");
    }
    command
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::map;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn facts() -> OrphanFacts<'static> {
        OrphanFacts {
            uid: "u1",
            resource_version: "42",
            has_annotations: true,
            has_owner_references: true,
            hash: Some("547cc9b97f"),
            node: "gpu-1",
            owner: "rev-00001-deployment-547cc9b97f",
            owner_uid: "rs-uid",
            initial_replicas: 3,
            now: "2026-01-01T00:00:00Z",
        }
    }

    #[test]
    fn orphan_patch_is_guarded_and_records_everything_abort_needs() {
        let patch = orphan_patch(&facts());
        let ops = patch.as_array().map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/metadata/uid", "value": "u1"})
        );
        assert_eq!(
            ops[1],
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": "42"})
        );
        assert!(ops.contains(&json!({"op": "remove", "path": "/metadata/ownerReferences"})));
        assert!(
            ops.contains(&json!({"op": "remove", "path": "/metadata/labels/pod-template-hash"}))
        );
        assert!(ops.contains(
            &json!({"op": "add", "path": "/metadata/labels/s2z.dev~1defrag-node", "value": "gpu-1"})
        ));
        assert!(ops.contains(&json!({"op": "add", "path": "/metadata/annotations/s2z.dev~1defrag-hash", "value": "547cc9b97f"})));
        assert!(ops.contains(&json!({"op": "add", "path": "/metadata/annotations/s2z.dev~1defrag-initial-replicas", "value": "3"})));
        assert!(
            !ops.contains(&json!({"op": "add", "path": "/metadata/annotations", "value": {}})),
            "must not wipe existing annotations"
        );
    }

    #[test]
    fn orphan_patch_creates_a_missing_annotations_map_first() {
        let patch = orphan_patch(&OrphanFacts {
            has_annotations: false,
            ..facts()
        });
        let ops = patch.as_array().map(Vec::as_slice).unwrap_or_default();
        let create = ops.iter().position(|op| {
            op == &json!({"op": "add", "path": "/metadata/annotations", "value": {}})
        });
        let first_annotation = ops.iter().position(|op| {
            op["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/metadata/annotations/"))
        });
        assert!(create.is_some() && create < first_annotation, "{patch}");
    }

    #[test]
    fn record_round_trips_through_the_patch() {
        // Apply the orphan patch's adds to plain maps and read the record back.
        let patch = orphan_patch(&facts());
        let mut labels = map(&[("pod-template-hash", "547cc9b97f")]);
        let mut annotations = BTreeMap::new();
        for op in patch.as_array().into_iter().flatten() {
            let path = op["path"].as_str().unwrap_or_default();
            let value = op["value"].as_str().unwrap_or_default().to_string();
            let unescape = |s: &str| s.replace("~1", "/").replace("~0", "~");
            match (op["op"].as_str(), path) {
                (Some("add"), p) if p.starts_with("/metadata/labels/") => {
                    labels.insert(unescape(&p["/metadata/labels/".len()..]), value);
                }
                (Some("add"), p) if p.starts_with("/metadata/annotations/") => {
                    annotations.insert(unescape(&p["/metadata/annotations/".len()..]), value);
                }
                (Some("remove"), p) if p.starts_with("/metadata/labels/") => {
                    labels.remove(&unescape(&p["/metadata/labels/".len()..]));
                }
                _ => {}
            }
        }
        assert!(!labels.contains_key("pod-template-hash"));
        let record = orphan_record(&labels, &annotations);
        assert_eq!(
            record,
            Some(OrphanRecord {
                node: "gpu-1".into(),
                owner: "rev-00001-deployment-547cc9b97f".into(),
                owner_uid: Some("rs-uid".into()),
                hash: "547cc9b97f".into(),
                initial_replicas: Some(3),
                orphaned_at: Some("2026-01-01T00:00:00Z".into()),
            })
        );

        let restore = restore_patch(&RestoreFacts {
            uid: "u1",
            resource_version: "43",
            hash: "547cc9b97f",
            labels: &labels,
            annotations: &annotations,
        });
        let ops = restore.as_array().map(Vec::as_slice).unwrap_or_default();
        assert_eq!(ops[1]["value"], "43");
        assert!(ops.contains(&json!({"op": "add", "path": "/metadata/labels/pod-template-hash", "value": "547cc9b97f"})));
        assert!(
            ops.contains(&json!({"op": "remove", "path": "/metadata/labels/s2z.dev~1defrag-node"}))
        );
        let removed = ops
            .iter()
            .filter(|op| {
                op["op"] == "remove"
                    && op["path"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("/metadata/annotations/"))
            })
            .count();
        assert_eq!(removed, ORPHAN_ANNOTATIONS.len());
    }

    #[test]
    fn pods_s2z_did_not_orphan_have_no_record() {
        assert_eq!(
            orphan_record(&map(&[]), &map(&[(FROM_ANNOTATION, "n")])),
            None
        );
        assert_eq!(
            orphan_record(&map(&[(DEFRAG_ORPHAN_LABEL, "n")]), &map(&[])),
            None,
            "the full node name is required"
        );
    }

    #[test]
    fn long_node_names_make_valid_distinct_label_values() {
        let short = "gke-us-central1-prod-dws-h100-1c-mega-fd11a600-csnq";
        assert_eq!(node_label_value(short), short);
        let a = format!("{}-a", "x".repeat(100));
        let b = format!("{}-b", "x".repeat(100));
        for v in [node_label_value(&a), node_label_value(&b)] {
            assert!(v.len() <= 63, "{v}");
            assert!(v.chars().last().is_some_and(|c| c.is_ascii_alphanumeric()));
        }
        assert_ne!(node_label_value(&a), node_label_value(&b));
        assert_eq!(node_label_value(&a), node_label_value(&a));
    }

    #[test]
    fn selectors_match_like_the_api_server() {
        let pod = map(&[("app", "web"), ("tier", "gpu")]);
        let sel = |labels: &[(&str, &str)], exprs: Vec<(&str, &str, Vec<&str>)>| LabelSelector {
            match_labels: (!labels.is_empty()).then(|| map(labels)),
            match_expressions: (!exprs.is_empty()).then(|| {
                exprs
                    .into_iter()
                    .map(|(key, op, values)| LabelSelectorRequirement {
                        key: key.into(),
                        operator: op.into(),
                        values: Some(values.into_iter().map(String::from).collect()),
                    })
                    .collect()
            }),
        };
        assert!(
            selector_matches(&sel(&[], vec![]), &pod),
            "empty selects all"
        );
        assert!(selector_matches(&sel(&[("app", "web")], vec![]), &pod));
        assert!(!selector_matches(&sel(&[("app", "db")], vec![]), &pod));
        assert!(selector_matches(
            &sel(&[], vec![("tier", "In", vec!["gpu", "cpu"])]),
            &pod
        ));
        assert!(!selector_matches(
            &sel(&[], vec![("tier", "NotIn", vec!["gpu"])]),
            &pod
        ));
        assert!(selector_matches(
            &sel(&[], vec![("zone", "NotIn", vec!["a"])]),
            &pod
        ));
        assert!(selector_matches(
            &sel(&[], vec![("app", "Exists", vec![])]),
            &pod
        ));
        assert!(!selector_matches(
            &sel(&[], vec![("app", "DoesNotExist", vec![])]),
            &pod
        ));
        assert!(!selector_matches(
            &sel(&[], vec![("app", "Like", vec![])]),
            &pod
        ));
    }

    #[test]
    fn drain_command_asks_for_what_the_node_needs() {
        assert_eq!(
            drain_command("n1", DrainNeeds::default()),
            "kubectl drain n1 --ignore-daemonsets"
        );
        assert_eq!(
            drain_command(
                "n1",
                DrainNeeds {
                    daemonsets: true,
                    emptydir: true,
                    uncontrolled: true
                }
            ),
            "kubectl drain n1 --ignore-daemonsets --delete-emptydir-data --force"
        );
    }
}
