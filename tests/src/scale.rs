//! What Knative really did to a revision's scale, read off the plane: the Deployment's replicas,
//! the PodAutoscaler's desired and actual scale, and the pods and which of them are Ready.

use anyhow::{Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;

/// One observation of a revision's scale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scale {
    /// `spec.replicas` of the revision's Deployment; `None` before Knative made it.
    pub deployment: Option<i32>,
    /// The PodAutoscaler's `status.desiredScale` (-1: the autoscaler has no data yet).
    pub desired: Option<i64>,
    /// The PodAutoscaler's `status.actualScale`: the Ready pods Knative counts.
    pub actual: Option<i64>,
    /// Every pod of the revision, Ready or not, not being deleted.
    pub pods: usize,
    /// The IPs of the Ready pods.
    pub ready_ips: Vec<String>,
}

impl Scale {
    /// Nothing runs and nothing is asked for: the Deployment at 0, the PA's actual scale 0, and
    /// no pod.
    pub fn is_zero(&self) -> bool {
        self.deployment == Some(0) && self.actual == Some(0) && self.pods == 0
    }

    /// The number of Ready pods.
    pub fn ready(&self) -> usize {
        self.ready_ips.len()
    }
}

/// A Knative Serving resource (`serving.knative.dev/v1`), e.g. `("Revision", "revisions")`.
pub fn serving(kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", kind),
        plural,
    )
}

/// The PodAutoscaler API of a namespace.
pub fn pod_autoscalers(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(
        "autoscaling.internal.knative.dev",
        "v1alpha1",
        "PodAutoscaler",
    );
    let resource = ApiResource::from_gvk_with_plural(&gvk, "podautoscalers");
    Api::namespaced_with(client.clone(), ns, &resource)
}

/// Reads the scale of `ns/revision` now.
pub async fn observe(client: &kube::Client, ns: &str, revision: &str) -> Result<Scale> {
    let lp = ListParams::default().labels(&format!("serving.knative.dev/revision={revision}"));
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .with_context(|| format!("failed to list the Deployments of {ns}/{revision}"))?
        .items
        .into_iter()
        .next()
        .and_then(|d| d.spec.and_then(|s| s.replicas));
    let pa = pod_autoscalers(client, ns)
        .get_opt(revision)
        .await
        .with_context(|| format!("failed to get the PodAutoscaler {ns}/{revision}"))?;
    let status = |field: &str| {
        pa.as_ref()
            .and_then(|pa| pa.data.pointer(&format!("/status/{field}")))
            .and_then(serde_json::Value::as_i64)
    };
    let pods: Vec<Pod> = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await
        .with_context(|| format!("failed to list the pods of {ns}/{revision}"))?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let ready_ips = pods
        .iter()
        .filter(|p| is_ready(p))
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    Ok(Scale {
        deployment,
        desired: status("desiredScale"),
        actual: status("actualScale"),
        pods: pods.len(),
        ready_ips,
    })
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
