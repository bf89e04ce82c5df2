//! The writes: cordon and uncordon the node, orphan a pod and hand it back, delete a surplus
//! orphan. Every pod write is a JSON patch guarded by `test` operations on the pod's UID and
//! resourceVersion, so a pod that changed since it was read is re-read and re-judged rather than
//! patched blindly.

use chrono::{SecondsFormat, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use s2z_core::defrag_plan::{
    CORDONED_BEFORE, CORDONED_BY_S2Z, NODE_CORDON_ANNOTATION, NODE_STARTED_ANNOTATION, OrphanFacts,
    RestoreFacts, orphan_patch, restore_patch,
};
use serde_json::{Value, json};

use super::error::{DefragError, is_status};
use super::inventory::{NodeFacts, PodFacts};
use crate::client::{Cluster, Req};

/// Field manager recorded on every write, as for the rest of the plugin.
pub const FIELD_MANAGER: &str = "kubectl-s2z";

/// How many times a pod that keeps changing is re-read before giving up on it.
const ATTEMPTS: usize = 4;

fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Now, RFC 3339 to the second.
pub fn now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What cordoning did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cordon {
    /// s2z cordoned it now.
    Cordoned,
    /// It was already cordoned (by s2z in an earlier run, or by someone else).
    Already,
}

/// Cordons the node and records the defrag's start on it. A node cordoned by someone else is
/// marked so that `--abort` leaves it cordoned.
pub async fn cordon(cluster: &Cluster, node: &NodeFacts) -> Result<Cordon, DefragError> {
    let resumed = node.defrag_started().is_some();
    if resumed && node.unschedulable {
        return Ok(Cordon::Already);
    }
    let mut annotations = serde_json::Map::new();
    if !resumed {
        annotations.insert(NODE_STARTED_ANNOTATION.into(), now().into());
        let by = if node.unschedulable {
            CORDONED_BEFORE
        } else {
            CORDONED_BY_S2Z
        };
        annotations.insert(NODE_CORDON_ANNOTATION.into(), by.into());
    }
    let patch = json!({
        "metadata": {"annotations": annotations},
        "spec": {"unschedulable": true},
    });
    let req = Req::new("patch", "nodes").named(&node.name);
    Api::<Node>::all(cluster.client.clone())
        .patch(&node.name, &params(), &Patch::Merge(patch))
        .await
        .map_err(|e| DefragError::api(cluster, &req, e))?;
    Ok(if node.unschedulable {
        Cordon::Already
    } else {
        Cordon::Cordoned
    })
}

/// Removes the defrag's marks from the node, and uncordons it if s2z cordoned it. Returns
/// whether it uncordoned.
pub async fn uncordon(cluster: &Cluster, node: &NodeFacts) -> Result<bool, DefragError> {
    let ours = node
        .annotations
        .get(NODE_CORDON_ANNOTATION)
        .is_some_and(|v| v == CORDONED_BY_S2Z);
    let mut patch = json!({
        "metadata": {"annotations": {NODE_STARTED_ANNOTATION: null, NODE_CORDON_ANNOTATION: null}},
    });
    if ours {
        patch["spec"] = json!({"unschedulable": false});
    }
    let req = Req::new("patch", "nodes").named(&node.name);
    Api::<Node>::all(cluster.client.clone())
        .patch(&node.name, &params(), &Patch::Merge(patch))
        .await
        .map_err(|e| DefragError::api(cluster, &req, e))?;
    Ok(ours)
}

/// What happened to one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodOutcome {
    /// Written.
    Done,
    /// Not written, and why: the pod changed into something not to touch.
    Skipped(String),
}

fn pods(cluster: &Cluster, namespace: &str) -> Api<Pod> {
    Api::namespaced(cluster.client.clone(), namespace)
}

async fn json_patch(
    cluster: &Cluster,
    pod: &PodFacts,
    patch: Value,
) -> Result<Option<()>, DefragError> {
    let req = Req::new("patch", "pods")
        .named(&pod.name)
        .in_namespace(&pod.namespace);
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| {
        DefragError::Cluster(crate::error::Error::Api {
            what: req.what(),
            why: format!("failed to build the JSON patch: {e}"),
        })
    })?;
    match pods(cluster, &pod.namespace)
        .patch(&pod.name, &params(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => Ok(Some(())),
        // A failed `test` operation: the pod changed since it was read.
        Err(e) if is_status(&e, 422) || is_status(&e, 409) => Ok(None),
        Err(e) => Err(DefragError::api(cluster, &req, e)),
    }
}

/// Re-reads a pod after a failed guard; `None` when it is gone.
async fn reread(cluster: &Cluster, pod: &PodFacts) -> Result<Option<PodFacts>, DefragError> {
    let req = Req::new("get", "pods")
        .named(&pod.name)
        .in_namespace(&pod.namespace);
    match pods(cluster, &pod.namespace).get(&pod.name).await {
        Ok(p) if p.metadata.uid.as_deref() == Some(pod.uid.as_str()) => {
            Ok(Some(PodFacts::from_pod(&p)))
        }
        Ok(_) => Ok(None),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(DefragError::api(cluster, &req, e)),
    }
}

/// Applies the guarded patch `plan` makes for the pod as last read, re-reading and re-planning
/// when the guard (uid + resourceVersion) refuses it, up to [`ATTEMPTS`] times. `plan` returns
/// `Err(outcome)` when the pod, as it is now, should be left alone.
async fn patch_guarded(
    cluster: &Cluster,
    pod: &PodFacts,
    mut plan: impl FnMut(&PodFacts) -> Result<Value, PodOutcome>,
) -> Result<PodOutcome, DefragError> {
    let mut current = pod.clone();
    for _ in 0..ATTEMPTS {
        let patch = match plan(&current) {
            Ok(patch) => patch,
            Err(outcome) => return Ok(outcome),
        };
        if json_patch(cluster, &current, patch).await?.is_some() {
            return Ok(PodOutcome::Done);
        }
        match reread(cluster, &current).await? {
            Some(fresh) => current = fresh,
            None => return Ok(PodOutcome::Skipped("it was deleted".into())),
        }
    }
    Ok(PodOutcome::Skipped(format!(
        "it kept changing ({ATTEMPTS} attempts)"
    )))
}

/// Orphans one pod from its ReplicaSet (seed 002).
pub async fn orphan(
    cluster: &Cluster,
    pod: &PodFacts,
    node: &str,
    initial_replicas: i64,
) -> Result<PodOutcome, DefragError> {
    patch_guarded(cluster, pod, |current| {
        if current.orphan.is_some() {
            return Err(PodOutcome::Skipped("already orphaned".into()));
        }
        if !current.to_orphan() {
            return Err(PodOutcome::Skipped(format!(
                "it changed: {}",
                super::output::action(current)
            )));
        }
        let (owner, owner_uid) = current.replica_set.clone().unwrap_or_default();
        let stamp = now();
        Ok(orphan_patch(&OrphanFacts {
            uid: &current.uid,
            resource_version: &current.resource_version,
            has_annotations: !current.annotations.is_empty(),
            has_owner_references: current.has_owner_references,
            hash: current
                .labels
                .get(s2z_core::labels::POD_TEMPLATE_HASH_LABEL)
                .map(String::as_str),
            node,
            owner: &owner,
            owner_uid: &owner_uid,
            initial_replicas,
            now: &stamp,
        }))
    })
    .await
}

/// Hands an orphan back: restores its `pod-template-hash` so its ReplicaSet adopts it.
pub async fn restore(cluster: &Cluster, pod: &PodFacts) -> Result<PodOutcome, DefragError> {
    patch_guarded(cluster, pod, |current| {
        let Some(record) = current.orphan.as_ref() else {
            return Err(PodOutcome::Skipped("no longer an s2z orphan".into()));
        };
        if current.terminating {
            return Err(PodOutcome::Skipped("it is being deleted".into()));
        }
        Ok(restore_patch(&RestoreFacts {
            uid: &current.uid,
            resource_version: &current.resource_version,
            hash: &record.hash,
            labels: &current.labels,
            annotations: &current.annotations,
        }))
    })
    .await
}

/// Deletes a surplus orphan, only if it is still the same pod.
pub async fn delete(cluster: &Cluster, pod: &PodFacts) -> Result<PodOutcome, DefragError> {
    let req = Req::new("delete", "pods")
        .named(&pod.name)
        .in_namespace(&pod.namespace);
    let dp = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(pod.uid.clone()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match pods(cluster, &pod.namespace).delete(&pod.name, &dp).await {
        Ok(_) => Ok(PodOutcome::Done),
        Err(e) if is_status(&e, 404) || is_status(&e, 409) => {
            Ok(PodOutcome::Skipped("it was already gone".into()))
        }
        Err(e) => Err(DefragError::api(cluster, &req, e)),
    }
}
