//! Real Knative Serving on the local control plane: the webhook, controller and autoscaler built
//! from the knative.dev/serving module (tests/knative) do all the work, from a ksvc down to pods on
//! KWOK nodes. These tests use the plane with real Knative and KServe (`s2z-cluster up --kserve`,
//! state in `.state/knative`), so the shared plane keeps its fixture CRDs.
//!
//! Not running here: an ingress and the net-* controllers. So a ksvc never becomes Ready (its
//! Route waits for an Ingress nobody reconciles); Configurations and Revisions do.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::GroupVersionKind;
use s2z_tests::Plane;
use s2z_tests::env::{condition, eventually};
use s2z_tests::plane::knative_cluster;
use serde_json::{Value, json};

/// Bounds a broken run only; on a healthy plane each wait ends within seconds.
const WAIT: Duration = Duration::from_secs(90);

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A digest reference: Knative never resolves it, and KWOK never pulls it.
const IMAGE: &str = "example.invalid/s2z/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// One test's namespace on the Knative plane.
struct KnEnv {
    plane: Plane,
    client: kube::Client,
    ns: String,
}

impl KnEnv {
    async fn new(test: &str) -> Result<Self> {
        let (plane, client) = knative_cluster().await?;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let ns = format!("{test}-{}-{n}", std::process::id());
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("create namespace {ns}"))?;
        Ok(Self { plane, client, ns })
    }

    fn api(&self, kind: &str, plural: &str) -> Api<DynamicObject> {
        let (group, version) = match kind {
            "PodAutoscaler" => ("autoscaling.internal.knative.dev", "v1alpha1"),
            _ => ("serving.knative.dev", "v1"),
        };
        let resource =
            ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural);
        Api::namespaced_with(self.client.clone(), &self.ns, &resource)
    }

    /// Creates a Knative Service with the given template annotations.
    async fn ksvc(&self, name: &str, annotations: Value) -> Result<DynamicObject> {
        let ksvc: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": {"template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"image": IMAGE}]},
            }},
        }))?;
        Ok(self
            .api("Service", "services")
            .create(&PostParams::default(), &ksvc)
            .await?)
    }

    /// The Configuration's first Revision, once Knative reports it Ready.
    async fn ready_revision(&self, service: &str) -> Result<DynamicObject> {
        let revisions = self.api("Revision", "revisions");
        let name = format!("{service}-00001");
        eventually(&format!("Revision {name} Ready"), WAIT, || async {
            let Some(rev) = revisions.get_opt(&name).await? else {
                return Ok(None);
            };
            Ok((condition(&rev.data, "Ready") == Some("True")).then_some(rev))
        })
        .await
    }

    /// The Deployment Knative made for a Revision, found by label (its name may be hashed).
    async fn deployment(&self, revision: &str) -> Result<Deployment> {
        let api = Api::<Deployment>::namespaced(self.client.clone(), &self.ns);
        let lp = ListParams::default().labels(&format!("serving.knative.dev/revision={revision}"));
        eventually(&format!("Deployment of {revision}"), WAIT, || async {
            Ok(api.list(&lp).await?.items.into_iter().next())
        })
        .await
    }

    async fn pods(&self, revision: &str) -> Result<Vec<Pod>> {
        let lp = ListParams::default().labels(&format!("serving.knative.dev/revision={revision}"));
        Ok(Api::<Pod>::namespaced(self.client.clone(), &self.ns)
            .list(&lp)
            .await?
            .items)
    }

    async fn cleanup(self) {
        Api::<Namespace>::all(self.client.clone())
            .delete(&self.ns, &DeleteParams::background())
            .await
            .ok();
    }
}

fn annotation<'a>(obj: &'a DynamicObject, key: &str) -> Option<&'a str> {
    obj.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

#[tokio::test]
async fn ksvc_runs_through_real_knative_to_ready_pods_on_kwok_nodes() -> Result<()> {
    let env = KnEnv::new("kn-ksvc").await?;
    ensure!(
        env.plane.knative,
        "the Knative plane's cluster.json lacks knative: true"
    );
    let release = env.plane.knative_release.clone().unwrap_or_default();
    ensure!(
        release.starts_with("knative-v1."),
        "unexpected release {release:?}"
    );
    // Installed as upstream's release YAML would: knative-serving carries the version.
    let system = Api::<Namespace>::all(env.client.clone())
        .get("knative-serving")
        .await?;
    let version = system
        .metadata
        .labels
        .unwrap_or_default()
        .get("app.kubernetes.io/version")
        .cloned();
    ensure!(
        version.as_deref() == release.strip_prefix("knative-v"),
        "knative-serving is labelled with version {version:?}, the plane runs {release}"
    );

    env.ksvc("hello", json!({})).await?;
    let configurations = env.api("Configuration", "configurations");
    eventually("Configuration hello Ready", WAIT, || async {
        let Some(c) = configurations.get_opt("hello").await? else {
            return Ok(None);
        };
        Ok((condition(&c.data, "Ready") == Some("True")).then_some(()))
    })
    .await?;
    let rev = env.ready_revision("hello").await?;
    // Knative's own defaulting webhook ran on the way in.
    ensure!(
        rev.data.pointer("/spec/containers/0/name") == Some(&json!("user-container")),
        "Revision not defaulted by Knative's webhook: {}",
        rev.data["spec"]
    );
    ensure!(
        rev.data.pointer("/spec/timeoutSeconds").is_some(),
        "Revision has no timeoutSeconds: {}",
        rev.data["spec"]
    );

    let pa = env
        .api("PodAutoscaler", "podautoscalers")
        .get("hello-00001")
        .await
        .context("the Revision's PodAutoscaler")?;
    ensure!(
        pa.data.pointer("/spec/scaleTargetRef/kind") == Some(&json!("Deployment")),
        "PA target: {}",
        pa.data["spec"]
    );

    let deployment = env.deployment("hello-00001").await?;
    let deployment_name = deployment.metadata.name.clone().unwrap_or_default();
    ensure!(
        deployment.spec.as_ref().and_then(|s| s.replicas) == Some(1),
        "Deployment {deployment_name} replicas: {:?}",
        deployment.spec.as_ref().and_then(|s| s.replicas)
    );
    let containers: Vec<String> = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers.iter().map(|c| c.name.clone()).collect())
        .unwrap_or_default();
    ensure!(
        containers == ["user-container", "queue-proxy"],
        "Deployment containers: {containers:?}"
    );

    let rs_api = Api::<ReplicaSet>::namespaced(env.client.clone(), &env.ns);
    let lp = ListParams::default().labels("serving.knative.dev/revision=hello-00001");
    let rs = eventually("ReplicaSet of the Deployment", WAIT, || async {
        Ok(rs_api.list(&lp).await?.items.into_iter().find(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Deployment" && o.name == deployment_name)
        }))
    })
    .await?;
    let rs_name = rs.metadata.name.unwrap_or_default();

    let pod = eventually("a Ready pod of hello-00001", WAIT, || async {
        Ok(env.pods("hello-00001").await?.into_iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        }))
    })
    .await?;
    ensure!(
        pod.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "ReplicaSet" && o.name == rs_name),
        "pod not owned by ReplicaSet {rs_name}"
    );
    let node_name = pod
        .spec
        .and_then(|s| s.node_name)
        .context("Ready pod without a node")?;
    let node = Api::<Node>::all(env.client.clone()).get(&node_name).await?;
    ensure!(
        node.metadata
            .annotations
            .unwrap_or_default()
            .get("kwok.x-k8s.io/node")
            .map(String::as_str)
            == Some("fake"),
        "pod runs on {node_name}, which KWOK does not manage"
    );

    // Knative's autoscaler adopted the PA, though it cannot scrape KWOK pods: it keeps the scale.
    let pas = env.api("PodAutoscaler", "podautoscalers");
    eventually("PodAutoscaler hello-00001 actualScale 1", WAIT, || async {
        let pa = pas.get("hello-00001").await?;
        Ok((pa.data.pointer("/status/actualScale") == Some(&json!(1))).then_some(()))
    })
    .await?;
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn zero_initial_scale_gives_a_deployment_with_no_pod() -> Result<()> {
    let env = KnEnv::new("kn-zero").await?;
    ensure!(
        env.plane.allow_zero_initial_scale,
        "the Knative plane was started without allow-zero-initial-scale"
    );
    env.ksvc(
        "zero",
        json!({
            "autoscaling.knative.dev/min-scale": "0",
            "autoscaling.knative.dev/initial-scale": "0",
        }),
    )
    .await?;
    let rev = env.ready_revision("zero").await?;
    ensure!(
        annotation(&rev, "autoscaling.knative.dev/initial-scale") == Some("0"),
        "Revision annotations: {:?}",
        rev.metadata.annotations
    );
    let deployment = env.deployment("zero-00001").await?;
    ensure!(
        deployment.spec.as_ref().and_then(|s| s.replicas) == Some(0),
        "Deployment replicas: {:?}",
        deployment.spec.as_ref().and_then(|s| s.replicas)
    );
    // The Revision is Ready with its Deployment at 0 replicas: no pod was ever asked for.
    let pods = env.pods("zero-00001").await?;
    ensure!(
        pods.is_empty(),
        "pods of a zero-initial-scale revision: {:?}",
        pods.iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let pa = env
        .api("PodAutoscaler", "podautoscalers")
        .get("zero-00001")
        .await?;
    ensure!(
        pa.data.pointer("/status/actualScale") == Some(&json!(0)),
        "PA status: {}",
        pa.data["status"]
    );
    env.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn knative_validating_webhook_rejects_invalid_scale_bounds() -> Result<()> {
    let env = KnEnv::new("kn-invalid").await?;
    let err = env
        .ksvc(
            "bad",
            json!({
                "autoscaling.knative.dev/min-scale": "3",
                "autoscaling.knative.dev/max-scale": "2",
            }),
        )
        .await
        .err()
        .context("Knative's webhook accepted min-scale 3 > max-scale 2")?;
    let msg = format!("{err:#}");
    ensure!(
        msg.contains("validation.webhook.serving.knative.dev") && msg.contains("max-scale"),
        "unexpected rejection: {msg}"
    );
    env.cleanup().await;
    Ok(())
}
