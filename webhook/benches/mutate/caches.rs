//! The caches, filled as the watches would fill them: 10,000 orgs with their namespaces and the
//! settings and Knative ConfigMaps.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::PartialObjectMeta;
use s2z_core::org::Org;
use s2z_webhook::cache::{CacheScope, Caches};
use serde_json::json;

/// The state of org `i`: a third dormant, a third active, a third exempt.
pub(crate) fn org_kind(i: usize) -> &'static str {
    ["dormant", "active", "exempt"][i % 3]
}

pub(crate) fn org_name(i: usize) -> String {
    format!("org-{i:05}")
}

pub(crate) fn namespace_name(i: usize) -> String {
    format!("org-{i:05}-apps")
}

/// Orgs as the API server returns them to a watch: metadata with managedFields (the plugin's
/// apply and the controller's status writes), a full status with conditions.
pub(crate) fn org(i: usize) -> Result<Org> {
    let name = org_name(i);
    let (allowed, last_activity, state) = match org_kind(i) {
        "dormant" => (true, "2025-01-01T00:00:00Z", "Dormant"),
        "active" => (true, "2099-01-01T00:00:00Z", "Active"),
        _ => (false, "2025-01-01T00:00:00Z", "Exempt"),
    };
    let value = json!({
        "apiVersion": "s2z.dev/v1alpha1",
        "kind": "Org",
        "metadata": {
            "name": name,
            "uid": format!("6f1c2d3e-0000-4000-8000-{i:012}"),
            "resourceVersion": format!("{}", 100_000 + i),
            "generation": 2,
            "creationTimestamp": "2024-06-01T10:00:00Z",
            "labels": {"app.kubernetes.io/managed-by": "platform", "tier": "standard"},
            "managedFields": [
                {
                    "manager": "kubectl-s2z", "operation": "Apply", "apiVersion": "s2z.dev/v1alpha1",
                    "time": "2024-06-01T10:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {"f:app.kubernetes.io/managed-by": {}, "f:tier": {}}},
                                 "f:spec": {"f:scaleToZeroAllowed": {}, "f:scaleDownWindow": {}}},
                },
                {
                    "manager": "s2z-controller", "operation": "Update", "apiVersion": "s2z.dev/v1alpha1",
                    "time": "2025-05-30T12:00:00Z", "fieldsType": "FieldsV1", "subresource": "status",
                    "fieldsV1": {"f:status": {"f:conditions": {}, "f:lastActivityAt": {}, "f:models": {"f:scaledToZero": {}, "f:total": {}},
                                 "f:observedGeneration": {}, "f:pynodes": {"f:scaledToZero": {}, "f:total": {}}, "f:state": {}, "f:stateSince": {}}},
                },
            ],
        },
        "spec": {"scaleToZeroAllowed": allowed, "scaleDownWindow": "10m"},
        "status": {
            "lastActivityAt": last_activity,
            "state": state,
            "stateSince": "2025-01-02T00:00:00Z",
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Evaluated", "message": "",
                 "lastTransitionTime": "2025-01-02T00:00:00Z", "observedGeneration": 2},
                {"type": "Dormant", "status": if state == "Dormant" { "True" } else { "False" }, "reason": state,
                 "message": format!("org is {state}"), "lastTransitionTime": "2025-01-02T00:00:00Z", "observedGeneration": 2},
            ],
            "pynodes": {"total": 4, "scaledToZero": 4},
            "models": {"total": 1, "scaledToZero": 1},
            "observedGeneration": 2,
        },
    });
    serde_json::from_value(value).with_context(|| format!("failed to build org {i}"))
}

/// A namespace as the metadata-only watch delivers and stores it.
pub(crate) fn namespace(i: usize) -> Result<PartialObjectMeta<Namespace>> {
    let name = namespace_name(i);
    serde_json::from_value(json!({
      "apiVersion": "meta.k8s.io/v1",
      "kind": "PartialObjectMetadata",
      "metadata": {
        "name": name,
        "uid": format!("0a1b2c3d-0000-4000-8000-{i:012}"),
        "resourceVersion": format!("{}", 200_000 + i),
        "creationTimestamp": "2024-06-01T10:00:00Z",
        "labels": {"kubernetes.io/metadata.name": name, "s2z.dev/org": org_name(i)},
        "managedFields": [{
            "manager": "platform-provisioner", "operation": "Update", "apiVersion": "v1",
            "time": "2024-06-01T10:00:00Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:kubernetes.io/metadata.name": {}, "f:s2z.dev/org": {}}}},
        }],
      },
    }))
    .with_context(|| format!("failed to build namespace {i}"))
}

pub(crate) fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
    let data: BTreeMap<String, String> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Fills the caches one object at a time, as a watch does: no list of 10,000 objects is held
/// besides the stores, so the resident memory measured is theirs. `Caches::preloaded` slims
/// each object (no managedFields) as the production watches do.
pub(crate) fn fill_caches(orgs: usize) -> Result<Arc<Caches>> {
    // Surface a malformed object with its error; the streams below stop at the first one.
    org(0)?;
    namespace(0)?;
    let caches = Caches::preloaded(
        CacheScope {
            namespace: "s2z-system".into(),
            knative_namespace: "knative-serving".into(),
        },
        (0..orgs).map_while(|i| org(i).ok()),
        (0..orgs).map_while(|i| namespace(i).ok()),
        [
            configmap(
                "s2z-settings",
                &[
                    ("orgDormancyPeriodSecs", "86400"),
                    ("orgWarmupRatelimitStr", "2/hour"),
                ],
            ),
            configmap(
                "config-autoscaler",
                &[
                    ("allow-zero-initial-scale", "true"),
                    ("enable-scale-to-zero", "true"),
                ],
            ),
        ],
    );
    let (orgs_cached, namespaces_cached) = (
        caches.orgs().state().len(),
        caches.namespaces().state().len(),
    );
    ensure!(
        orgs_cached == orgs && namespaces_cached == orgs,
        "failed to fill the caches: {orgs_cached} orgs and {namespaces_cached} namespaces of {orgs}"
    );
    Ok(caches)
}
