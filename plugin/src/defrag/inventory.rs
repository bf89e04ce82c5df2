//! What is on the node: every pod, classified, with its GPUs and blockers, and for each Knative
//! revision its replicas and its PodAutoscaler's scale. Read once before anything is changed,
//! and again when a run resumes.

use std::collections::BTreeMap;

use futures::future::try_join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use s2z_core::defrag::{Blocker, PodClass, classify, gpu_count, gpu_type, pod_blockers};
use s2z_core::defrag_plan::{
    DrainNeeds, NODE_STARTED_ANNOTATION, OrphanRecord, orphan_record, selector_matches,
};
use s2z_core::labels::{POD_TEMPLATE_HASH_LABEL, REVISION_LABEL};

use super::error::{DefragError, is_status};
use crate::client::{Cluster, Req, Shape, list_all};

/// Knative's PodAutoscaler, read dynamically: only `status.actualScale` is needed.
pub fn pod_autoscalers() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "autoscaling.internal.knative.dev",
            "v1alpha1",
            "PodAutoscaler",
        ),
        "podautoscalers",
    )
}

/// `status.actualScale` of a PodAutoscaler: the ready pods labelled with its revision, orphans
/// included.
pub fn actual_scale(pa: &DynamicObject) -> Option<i64> {
    pa.data.get("status")?.get("actualScale")?.as_i64()
}

/// `spec.replicas` of a Deployment; the API defaults it to 1.
pub fn replicas(deployment: &Deployment) -> i64 {
    deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .map_or(1, i64::from)
}

/// The node, as defrag needs it.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Name.
    pub name: String,
    /// Cordoned.
    pub unschedulable: bool,
    /// Its annotations (s2z's defrag bookkeeping among them).
    pub annotations: BTreeMap<String, String>,
    /// GPU model from its labels.
    pub gpu_type: Option<String>,
    /// Allocatable GPUs.
    pub gpus: u32,
}

impl NodeFacts {
    /// From the API object.
    pub fn from_node(node: &Node) -> Self {
        let labels = node.metadata.labels.clone().unwrap_or_default();
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.clone())
            .unwrap_or_default();
        NodeFacts {
            name: node.metadata.name.clone().unwrap_or_default(),
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            annotations: node.metadata.annotations.clone().unwrap_or_default(),
            gpu_type: gpu_type(&labels).map(String::from),
            gpus: gpu_count(&allocatable),
        }
    }

    /// When a defrag of this node started, if one did.
    pub fn defrag_started(&self) -> Option<&str> {
        self.annotations
            .get(NODE_STARTED_ANNOTATION)
            .map(String::as_str)
    }
}

/// One pod on the node.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
    /// resourceVersion when read: the guard of every patch.
    pub resource_version: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// Owning ReplicaSet (name, UID), if a ReplicaSet controls it.
    pub replica_set: Option<(String, String)>,
    /// Whether it has any ownerReferences.
    pub has_owner_references: bool,
    /// What defrag does with it.
    pub class: PodClass,
    /// GPUs it holds.
    pub gpus: u32,
    /// Phase, or Terminating.
    pub status: String,
    /// Ready condition true.
    pub ready: bool,
    /// Being deleted.
    pub terminating: bool,
    /// Its Knative revision.
    pub revision: Option<String>,
    /// s2z's record, if s2z orphaned it.
    pub orphan: Option<OrphanRecord>,
    /// Why draining it may be blocked.
    pub blockers: Vec<Blocker>,
    /// Uses emptyDir volumes.
    pub emptydir: bool,
}

impl PodFacts {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// A Knative pod still owned by its ReplicaSet: the ones defrag orphans.
    pub fn to_orphan(&self) -> bool {
        self.class == PodClass::Knative
            && !self.terminating
            && self.orphan.is_none()
            && self.replica_set.is_some()
            && self.labels.contains_key(POD_TEMPLATE_HASH_LABEL)
    }

    /// From the API object; PDB blockers are added by [`read`].
    pub fn from_pod(pod: &Pod) -> Self {
        let meta = &pod.metadata;
        let labels = meta.labels.clone().unwrap_or_default();
        let annotations = meta.annotations.clone().unwrap_or_default();
        let owners = meta.owner_references.clone().unwrap_or_default();
        let owner_kinds: Vec<&str> = owners.iter().map(|o| o.kind.as_str()).collect();
        let replica_set = owners
            .iter()
            .find(|o| o.kind == "ReplicaSet" && o.controller == Some(true))
            .map(|o| (o.name.clone(), o.uid.clone()));
        let spec = pod.spec.as_ref();
        let gpus = spec
            .map(|s| {
                s.containers
                    .iter()
                    .filter_map(|c| c.resources.as_ref())
                    .map(|r| {
                        let limits = r.limits.as_ref().map(gpu_count).unwrap_or(0);
                        let requests = r.requests.as_ref().map(gpu_count).unwrap_or(0);
                        limits.max(requests)
                    })
                    .fold(0, u32::saturating_add)
            })
            .unwrap_or(0);
        let emptydir = spec
            .and_then(|s| s.volumes.as_ref())
            .is_some_and(|v| v.iter().any(|v| v.empty_dir.is_some()));
        let status = pod.status.as_ref();
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
        let terminating = meta.deletion_timestamp.is_some();
        let phase = status
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into());
        let status = match (terminating, phase.as_str(), ready) {
            (true, _, _) => "Terminating".to_string(),
            (false, "Running", false) => "Running (not ready)".to_string(),
            (false, phase, _) => phase.to_string(),
        };
        let mut class = classify(&owner_kinds, &labels, &annotations);
        // An unowned revision pod s2z did not orphan is someone else's: drain decides its fate.
        if class == PodClass::Knative && replica_set.is_none() && !owners.is_empty() {
            class = PodClass::LeftForDrain("owned by a non-ReplicaSet owner".into());
        }
        PodFacts {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            resource_version: meta.resource_version.clone().unwrap_or_default(),
            revision: labels.get(REVISION_LABEL).cloned(),
            orphan: orphan_record(&labels, &annotations),
            blockers: pod_blockers(&annotations),
            has_owner_references: !owners.is_empty(),
            labels,
            annotations,
            replica_set,
            class,
            gpus,
            status,
            ready,
            terminating,
            emptydir,
        }
    }
}

/// Whether a pod has finished: drain ignores it, and so does defrag.
fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// One Knative revision with pods on the node.
#[derive(Debug, Clone)]
pub struct RevisionFacts {
    /// Namespace.
    pub namespace: String,
    /// Revision name (also its PodAutoscaler's name).
    pub revision: String,
    /// Its live pods on the node (m in seed 002's rule).
    pub on_node: i64,
    /// Of those, already orphaned by s2z.
    pub orphaned: i64,
    /// The Deployment's replicas now, if the Deployment exists.
    pub replicas: Option<i64>,
    /// The PodAutoscaler's actualScale, if it exists and reports one.
    pub kpa_scale: Option<i64>,
    /// The PodAutoscaler exists.
    pub has_autoscaler: bool,
    /// Replicas when the defrag started: recorded on the orphans, else now.
    pub initial_replicas: i64,
}

impl RevisionFacts {
    /// `namespace/revision`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.revision)
    }
}

/// Everything defrag knows about the node before acting.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// The node.
    pub node: NodeFacts,
    /// Its unfinished pods, sorted by namespace and name.
    pub pods: Vec<PodFacts>,
    /// Its Knative revisions, sorted.
    pub revisions: Vec<RevisionFacts>,
}

impl Inventory {
    /// True when a previous run left state behind: the node's start annotation or orphans.
    pub fn resuming(&self) -> bool {
        self.node.defrag_started().is_some() || self.pods.iter().any(|p| p.orphan.is_some())
    }

    /// Pods already orphaned by s2z.
    pub fn orphans(&self) -> impl Iterator<Item = &PodFacts> {
        self.pods.iter().filter(|p| p.orphan.is_some())
    }

    /// Revisions missing their PodAutoscaler or Deployment.
    pub fn unreadable(&self) -> Vec<String> {
        self.revisions
            .iter()
            .filter(|r| !r.has_autoscaler || r.replicas.is_none())
            .map(RevisionFacts::key)
            .collect()
    }

    /// What `kubectl drain` will need once the revisions are safe.
    pub fn drain_needs(&self) -> DrainNeeds {
        DrainNeeds {
            daemonsets: self.pods.iter().any(|p| p.class == PodClass::DaemonSet),
            emptydir: self
                .pods
                .iter()
                .any(|p| p.emptydir && !matches!(p.class, PodClass::DaemonSet | PodClass::Mirror)),
            uncontrolled: self
                .pods
                .iter()
                .any(|p| p.class == PodClass::Knative || !p.has_owner_references),
        }
    }

    /// Pods with no owner that s2z did not orphan: `kubectl drain --force` deletes them for good.
    pub fn bare_pods(&self) -> Vec<String> {
        self.pods
            .iter()
            .filter(|p| !p.has_owner_references && matches!(p.class, PodClass::LeftForDrain(_)))
            .map(PodFacts::key)
            .collect()
    }

    /// GPUs held by the node's pods.
    pub fn gpus_allocated(&self) -> u32 {
        self.pods
            .iter()
            .map(|p| p.gpus)
            .fold(0, u32::saturating_add)
    }
}

/// Reads the node or fails with [`DefragError::UnknownNode`].
pub async fn node(cluster: &Cluster, name: &str) -> Result<Node, DefragError> {
    let req = Req::new("get", "nodes").named(name);
    Api::<Node>::all(cluster.client.clone())
        .get(name)
        .await
        .map_err(|e| {
            if is_status(&e, 404) {
                DefragError::UnknownNode(name.to_string())
            } else {
                DefragError::api(cluster, &req, e)
            }
        })
}

/// Unfinished pods on `node`, across namespaces, as the API object.
pub async fn pods_on(cluster: &Cluster, node: &str) -> Result<Vec<Pod>, DefragError> {
    let req = Req::new("list", "pods");
    let lp = ListParams::default().fields(&format!("spec.nodeName={node}"));
    let pods: Vec<Pod> = list_all(cluster, &req, "/api/v1/pods", &lp, Shape::Full)
        .await
        .map_err(DefragError::from)?;
    Ok(pods.into_iter().filter(|p| !finished(p)).collect())
}

/// Every PodDisruptionBudget in the cluster.
pub async fn budgets(cluster: &Cluster) -> Result<Vec<PodDisruptionBudget>, DefragError> {
    let req = Req::new("list", "poddisruptionbudgets.policy");
    list_all(
        cluster,
        &req,
        "/apis/policy/v1/poddisruptionbudgets",
        &ListParams::default(),
        Shape::Full,
    )
    .await
    .map_err(DefragError::from)
}

/// Adds a [`Blocker::Pdb`] to each pod selected by a budget that allows no disruption now.
pub fn add_budget_blockers(pods: &mut [PodFacts], budgets: &[PodDisruptionBudget]) {
    for pdb in budgets {
        let exhausted = pdb
            .status
            .as_ref()
            .is_some_and(|s| s.disruptions_allowed.is_some_and(|d| d <= 0));
        let selector = pdb.spec.as_ref().and_then(|s| s.selector.as_ref());
        let (Some(selector), true) = (selector, exhausted) else {
            continue;
        };
        let namespace = pdb.metadata.namespace.as_deref().unwrap_or_default();
        let name = pdb.metadata.name.clone().unwrap_or_default();
        for pod in pods.iter_mut() {
            if pod.namespace == namespace && selector_matches(selector, &pod.labels) {
                pod.blockers.push(Blocker::Pdb(name.clone()));
            }
        }
    }
}

/// The PodAutoscaler of a revision, `None` when it does not exist.
pub async fn autoscaler(
    cluster: &Cluster,
    namespace: &str,
    revision: &str,
) -> Result<Option<DynamicObject>, DefragError> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(cluster.client.clone(), namespace, &pod_autoscalers());
    let req = Req::new("get", "podautoscalers.autoscaling.internal.knative.dev")
        .named(revision)
        .in_namespace(namespace);
    match api.get(revision).await {
        Ok(pa) => Ok(Some(pa)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(DefragError::api(cluster, &req, e)),
    }
}

/// The Deployments of a revision, found by label: Knative hashes long Deployment names, so the
/// name is never built.
pub async fn deployments(
    cluster: &Cluster,
    namespace: &str,
    revision: &str,
) -> Result<Vec<Deployment>, DefragError> {
    let req = Req::new("list", "deployments.apps").in_namespace(namespace);
    let lp = ListParams::default().labels(&format!("{REVISION_LABEL}={revision}"));
    Api::<Deployment>::namespaced(cluster.client.clone(), namespace)
        .list(&lp)
        .await
        .map(|l| l.items)
        .map_err(|e| DefragError::api(cluster, &req, e))
}

/// Reads the inventory of `node_name`.
pub async fn read(cluster: &Cluster, node_name: &str) -> Result<Inventory, DefragError> {
    let node = NodeFacts::from_node(&node(cluster, node_name).await?);
    let (pods, budgets) = futures::try_join!(pods_on(cluster, node_name), budgets(cluster))?;
    let mut pods: Vec<PodFacts> = pods.iter().map(PodFacts::from_pod).collect();
    // Orphans of another node's defrag cannot be here (pods do not move); ignore foreign records.
    for pod in &mut pods {
        if pod.orphan.as_ref().is_some_and(|o| o.node != node.name) {
            pod.orphan = None;
        }
    }
    add_budget_blockers(&mut pods, &budgets);
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));

    let mut grouped: BTreeMap<(String, String), Vec<&PodFacts>> = BTreeMap::new();
    for pod in &pods {
        if let (PodClass::Knative, Some(rev), false) = (&pod.class, &pod.revision, pod.terminating)
        {
            grouped
                .entry((pod.namespace.clone(), rev.clone()))
                .or_default()
                .push(pod);
        }
    }
    let revisions = try_join_all(grouped.into_iter().map(|((namespace, revision), members)| {
        revision_facts(cluster, namespace, revision, members)
    }))
    .await?;
    Ok(Inventory {
        node,
        pods,
        revisions,
    })
}

async fn revision_facts(
    cluster: &Cluster,
    namespace: String,
    revision: String,
    members: Vec<&PodFacts>,
) -> Result<RevisionFacts, DefragError> {
    let (pa, deployments) = futures::try_join!(
        autoscaler(cluster, &namespace, &revision),
        deployments(cluster, &namespace, &revision)
    )?;
    let replicas = (!deployments.is_empty()).then(|| deployments.iter().map(replicas).sum());
    let recorded = members
        .iter()
        .find_map(|p| p.orphan.as_ref().and_then(|o| o.initial_replicas));
    Ok(RevisionFacts {
        on_node: members.len() as i64,
        orphaned: members.iter().filter(|p| p.orphan.is_some()).count() as i64,
        kpa_scale: pa.as_ref().and_then(actual_scale),
        has_autoscaler: pa.is_some(),
        initial_replicas: recorded.or(replicas).unwrap_or(0),
        replicas,
        namespace,
        revision,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> PodFacts {
        match serde_json::from_value::<Pod>(value) {
            Ok(p) => PodFacts::from_pod(&p),
            Err(e) => panic!("bad fixture: {e}"),
        }
    }

    #[test]
    fn a_replicaset_revision_pod_is_to_be_orphaned() {
        let p = pod(json!({
            "metadata": {"name": "r-1", "namespace": "ns", "uid": "u", "resourceVersion": "7",
                "labels": {REVISION_LABEL: "r", POD_TEMPLATE_HASH_LABEL: "abc"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r-abc", "uid": "rs", "controller": true}]},
            "spec": {"containers": [{"name": "m", "resources": {"limits": {"nvidia.com/gpu": "2"}}}],
                     "volumes": [{"name": "cache", "emptyDir": {}}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }));
        assert_eq!(p.class, PodClass::Knative);
        assert!(p.to_orphan());
        assert_eq!(p.gpus, 2);
        assert!(p.emptydir && p.ready);
        assert_eq!(p.status, "Running");
        assert_eq!(p.replica_set, Some(("r-abc".into(), "rs".into())));
    }

    #[test]
    fn terminating_and_unready_pods_say_so() {
        let p = pod(json!({
            "metadata": {"name": "x", "namespace": "ns", "deletionTimestamp": "2026-01-01T00:00:00Z",
                "labels": {REVISION_LABEL: "r", POD_TEMPLATE_HASH_LABEL: "abc"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "r-abc", "uid": "rs", "controller": true}]},
            "status": {"phase": "Running"},
        }));
        assert_eq!(p.status, "Terminating");
        assert!(!p.to_orphan());
        let p = pod(json!({"metadata": {"name": "y"}, "status": {"phase": "Running"}}));
        assert_eq!(p.status, "Running (not ready)");
        assert!(matches!(p.class, PodClass::LeftForDrain(_)));
    }

    #[test]
    fn exhausted_budgets_block_the_pods_they_select() {
        let mut pods = vec![
            pod(json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"app": "db"}}})),
            pod(json!({"metadata": {"name": "b", "namespace": "other", "labels": {"app": "db"}}})),
            pod(json!({"metadata": {"name": "c", "namespace": "ns", "labels": {"app": "web"}}})),
        ];
        let budgets: Vec<PodDisruptionBudget> = vec![
            serde_json::from_value(json!({
                "metadata": {"name": "db", "namespace": "ns"},
                "spec": {"selector": {"matchLabels": {"app": "db"}}},
                "status": {"disruptionsAllowed": 0, "currentHealthy": 1, "desiredHealthy": 1, "expectedPods": 1},
            }))
            .unwrap_or_default(),
            serde_json::from_value(json!({
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"selector": {"matchLabels": {"app": "web"}}},
                "status": {"disruptionsAllowed": 1, "currentHealthy": 2, "desiredHealthy": 1, "expectedPods": 2},
            }))
            .unwrap_or_default(),
        ];
        add_budget_blockers(&mut pods, &budgets);
        assert_eq!(pods[0].blockers, vec![Blocker::Pdb("db".into())]);
        assert!(pods[1].blockers.is_empty(), "other namespace");
        assert!(pods[2].blockers.is_empty(), "budget has room");
    }
}
