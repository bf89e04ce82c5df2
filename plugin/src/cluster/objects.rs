//! The small structs namespaces, revisions and pods are read into: only the fields the plugin
//! uses, so that listing thousands of objects stays cheap to decode and to hold.

use std::collections::BTreeMap;

use s2z_core::defrag::GPU_RESOURCES;
use serde::Deserialize;

/// The metadata fields the plugin reads from namespaces, revisions and pods.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Meta {
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Namespace.
    #[serde(default)]
    pub namespace: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A namespace or a revision: metadata only.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Object {
    /// Its metadata.
    pub metadata: Meta,
}

/// A pod, reduced to where it runs, what GPUs it holds and whether it is Ready.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Pod {
    /// Its metadata.
    pub metadata: Meta,
    /// Its containers' resources.
    #[serde(default)]
    pub spec: PodSpec,
    /// Its conditions.
    #[serde(default)]
    pub status: PodStatus,
}

/// The part of a pod's status that says whether it serves.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct PodStatus {
    /// Conditions, `Ready` among them.
    #[serde(default)]
    pub conditions: Vec<PodCondition>,
}

/// One pod condition.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct PodCondition {
    /// `Ready`, `PodScheduled`, ...
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
}

/// The part of a pod spec that holds resources.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    /// Containers.
    #[serde(default)]
    pub containers: Vec<Container>,
    /// Init containers.
    #[serde(default)]
    pub init_containers: Vec<Container>,
}

/// A container's resources.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Container {
    /// Requests and limits.
    #[serde(default)]
    pub resources: Resources,
}

/// Requests and limits, as quantity strings.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Resources {
    /// Limits.
    #[serde(default)]
    pub limits: BTreeMap<String, serde_json::Value>,
    /// Requests.
    #[serde(default)]
    pub requests: BTreeMap<String, serde_json::Value>,
}

fn quantity(value: Option<&serde_json::Value>) -> u64 {
    match value {
        Some(serde_json::Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().unwrap_or(0),
        _ => 0,
    }
}

impl Container {
    /// GPUs of this container, of every vendor core counts (`s2z_core::defrag::GPU_RESOURCES`,
    /// as defrag and the controller's savings ledger do): per resource the limit, else the
    /// request (they must match for extended resources).
    pub fn gpus(&self) -> u64 {
        GPU_RESOURCES
            .iter()
            .map(|name| {
                let limit = quantity(self.resources.limits.get(*name));
                if limit > 0 {
                    limit
                } else {
                    quantity(self.resources.requests.get(*name))
                }
            })
            .fold(0, u64::saturating_add)
    }
}

impl Pod {
    /// Whether the pod passes its readiness checks (condition `Ready` is `True`), which is when
    /// Knative counts it and sends it requests.
    pub fn is_ready(&self) -> bool {
        self.status
            .conditions
            .iter()
            .any(|c| c.kind == "Ready" && c.status == "True")
    }

    /// GPUs the pod holds, the way the scheduler counts them: the larger of the containers'
    /// sum and the largest init container.
    pub fn gpus(&self) -> u64 {
        let running: u64 = self.spec.containers.iter().map(Container::gpus).sum();
        let init = self
            .spec
            .init_containers
            .iter()
            .map(Container::gpus)
            .max()
            .unwrap_or(0);
        running.max(init)
    }
}
