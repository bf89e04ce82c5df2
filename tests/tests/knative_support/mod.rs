//! Shared by the tests on the plane with real Knative Serving and KServe (`knative_s2z.rs`,
//! `kserve_s2z.rs`): the model (a real InferenceService), waits on what Knative made of it, and
//! one test's s2z (its webhook process, registration and org).

#![allow(dead_code)] // Each test file uses a different subset.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use s2z_core::labels::{DECLARED_ANNOTATION, INITIAL_SCALE, MIN_SCALE, SLEEP_ANNOTATION};
use s2z_core::org::OrgState;
use s2z_tests::env::{condition, eventually};
use s2z_tests::webhook::{WebhookProcess, delete_mwc, register_mwc};
use s2z_tests::{kserve, kubectl};
use serde_json::json;

use crate::controller_support::{Fixture, stamp};
use crate::defrag_support;

/// Bounds a broken run only; on a healthy plane each wait ends within seconds.
pub const WAIT: Duration = Duration::from_secs(90);

/// Long dormancy and no sweep: orgs flip only when a test asks.
pub const CALM: [(&str, &str); 3] = [
    ("orgDormancyPeriodSecs", "3600"),
    ("sweepIntervalSecs", "3600"),
    ("orgWarmupRatelimitStr", "100/s"),
];

/// A digest reference: Knative never resolves it, and KWOK never pulls it.
pub const IMAGE: &str = "example.invalid/s2z/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The model every test deploys: the InferenceService `bert`, whose predictor declares
/// `minReplicas` 3 and one GPU a pod; KServe names its Knative Service `bert-predictor`.
pub const ISVC: &str = "bert";
pub const MODEL: &str = "bert-predictor";
pub const DECLARED: u32 = 3;
/// How long a redeployed model's pods take to become Ready (loading weights).
pub const MODEL_LOAD: &str = "3s";
/// The pod annotation KWOK's `pod-ready` stage takes its delay from.
pub const MODEL_LOAD_ANNOTATION: &str = "pod-ready.stage.kwok.x-k8s.io/delay";

pub fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

pub fn api(client: &kube::Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let r = match kind {
        "Service" => resource("serving.knative.dev", "v1", kind, "services"),
        "Configuration" => resource("serving.knative.dev", "v1", kind, "configurations"),
        "Revision" => resource("serving.knative.dev", "v1", kind, "revisions"),
        "InferenceService" => kserve::inference_services(),
        _ => defrag_support::pa_resource(),
    };
    Api::namespaced_with(client.clone(), ns, &r)
}

/// Applies the model as a real InferenceService: a predictor with `minReplicas` [`DECLARED`] and
/// one GPU a pod. KServe's controller makes the Knative Service [`MODEL`] from it (serverless
/// mode), copying the InferenceService's annotations onto the Revision template; Knative makes
/// each Revision. `generation` goes into an env var, so each new value is a redeploy (a new
/// Revision). `pin` puts the pods on the test's private nodes. `load` is how long each pod takes
/// to become Ready, as a model server loading its weights would (KWOK's `pod-ready` stage waits
/// that long, see tests/cluster/build).
pub async fn apply_model(
    client: &kube::Client,
    ns: &str,
    generation: u32,
    pin: Option<&str>,
    load: Option<&str>,
) -> Result<()> {
    let mut predictor = kserve::predictor(IMAGE, DECLARED, 1, generation);
    if let Some(id) = pin {
        predictor["nodeSelector"] = json!({"s2z.dev/test": id});
        predictor["tolerations"] = json!([{"key": "s2z.dev/test", "operator": "Equal", "value": id, "effect": "NoSchedule"}]);
    }
    let mut annotations = json!({
        // Knative's shortest stable window, so that scale-down is seen within seconds.
        "autoscaling.knative.dev/window": "6s",
    });
    if let Some(load) = load {
        // Knative copies the Revision's annotations to its pods, where KWOK reads this one.
        annotations[MODEL_LOAD_ANNOTATION] = json!(load);
    }
    let isvc = kserve::inference_service(ns, ISVC, predictor, annotations);
    api(client, ns, "InferenceService")
        .patch(
            ISVC,
            &PatchParams::apply("s2z-tests").force(),
            &Patch::Apply(&isvc),
        )
        .await
        .with_context(|| {
            format!("failed to apply InferenceService {ns}/{ISVC} generation {generation}")
        })?;
    Ok(())
}

pub fn annotation(obj: &DynamicObject, key: &str) -> Option<String> {
    obj.metadata.annotations.as_ref()?.get(key).cloned()
}

/// Fails unless `rev` was born at zero by s2z's webhook: min-scale 0, initial-scale 0, and the
/// declared min-scale ([`DECLARED`], KServe's `minReplicas`) kept in `s2z.dev/declared` for the
/// wake.
pub fn ensure_born_at_zero(rev: &DynamicObject) -> Result<()> {
    let name = rev.metadata.name.as_deref().unwrap_or_default();
    ensure!(
        annotation(rev, MIN_SCALE).as_deref() == Some("0")
            && annotation(rev, INITIAL_SCALE).as_deref() == Some("0"),
        "{name} annotations: {:?}",
        rev.metadata.annotations
    );
    let declared = annotation(rev, DECLARED_ANNOTATION).unwrap_or_default();
    ensure!(
        declared.contains(&format!(r#""{MIN_SCALE}":"{DECLARED}""#)),
        "{name} declared: {declared}"
    );
    Ok(())
}

/// Waits until Knative reports the Revision Ready.
pub async fn ready_revision(client: &kube::Client, ns: &str, name: &str) -> Result<DynamicObject> {
    let revisions = api(client, ns, "Revision");
    eventually(&format!("Revision {name} Ready"), WAIT, || async {
        let Some(rev) = revisions.get_opt(name).await? else {
            return Ok(None);
        };
        Ok((condition(&rev.data, "Ready") == Some("True")).then_some(rev))
    })
    .await
}

/// Names of the Configuration's Revisions, sorted.
pub async fn revision_names(client: &kube::Client, ns: &str) -> Result<Vec<String>> {
    let lp = ListParams::default().labels(&format!("serving.knative.dev/configuration={MODEL}"));
    let mut names: Vec<String> = api(client, ns, "Revision")
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter_map(|r| r.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// The Deployment Knative made for a Revision, found by label (its name may be hashed).
pub async fn deployment(client: &kube::Client, ns: &str, rev: &str) -> Result<Deployment> {
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let lp = ListParams::default().labels(&format!("serving.knative.dev/revision={rev}"));
    eventually(&format!("Deployment of {rev}"), WAIT, || async {
        Ok(deployments.list(&lp).await?.items.into_iter().next())
    })
    .await
}

pub fn replicas(d: &Deployment) -> Option<i32> {
    d.spec.as_ref().and_then(|s| s.replicas)
}

pub async fn pods(client: &kube::Client, ns: &str, rev: &str) -> Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("serving.knative.dev/revision={rev}"));
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items)
}

/// Waits until exactly `count` pods of the revision are serving; returns them.
pub async fn wait_serving(
    client: &kube::Client,
    ns: &str,
    rev: &str,
    count: usize,
) -> Result<Vec<Pod>> {
    eventually(&format!("{count} serving pods of {rev}"), WAIT, || async {
        let serving: Vec<Pod> = pods(client, ns, rev)
            .await?
            .into_iter()
            .filter(defrag_support::serving)
            .collect();
        Ok((serving.len() == count).then_some(serving))
    })
    .await
}

/// Waits until the real autoscaler reports `scale` in the PodAutoscaler's `actualScale`.
pub async fn wait_actual_scale(
    client: &kube::Client,
    ns: &str,
    rev: &str,
    scale: i64,
) -> Result<()> {
    let pas = api(client, ns, "PodAutoscaler");
    eventually(&format!("{rev} actualScale {scale}"), WAIT, || async {
        let pa = pas.get(rev).await?;
        Ok((pa.data.pointer("/status/actualScale") == Some(&json!(scale))).then_some(()))
    })
    .await
}

/// One test's s2z on the Knative plane: the Fixture's install namespace and settings, a
/// controller-enabled webhook reading `knative-serving/config-autoscaler`, registered for this
/// test's org namespaces only, and one org with one namespace.
pub struct S2z {
    pub fx: Fixture,
    pub webhook: WebhookProcess,
    pub mwc: String,
    pub org: String,
    pub ns: String,
}

impl S2z {
    pub async fn start(test: &str) -> Result<Self> {
        Self::start_with(test, &[]).await
    }

    /// Like [`start`](Self::start), with more s2z-webhook arguments.
    pub async fn start_with(test: &str, args: &[&str]) -> Result<Self> {
        let mut fx = Fixture::on_knative(test, &CALM).await?;
        ensure!(
            fx.env.plane.knative,
            "the Knative plane's cluster.json lacks knative: true"
        );
        let webhook = fx.webhook(args).await?;
        let mwc = fx.env.name("s2z");
        let selector = json!({"matchExpressions": [
            {"key": "s2z.dev/org", "operator": "Exists"},
            {"key": "s2z.dev/test", "operator": "In", "values": [fx.env.id]},
        ]});
        register_mwc(
            &fx.env.client,
            &mwc,
            &webhook.url(),
            &webhook.cert.ca_bundle(),
            selector,
        )
        .await?;
        let org = fx.env.name("acme");
        let ns = fx.org_namespace(&org, "acme").await?;
        fx.org("acme", json!({})).await?;
        fx.wait_state(&org, OrgState::Active, WAIT).await?;
        Ok(Self {
            fx,
            webhook,
            mwc,
            org,
            ns,
        })
    }

    pub fn client(&self) -> &kube::Client {
        &self.fx.env.client
    }

    /// The first deploy, while the org is active: the model's Revision 00001 runs its declared
    /// pods.
    pub async fn deploy_warm(&self) -> Result<()> {
        apply_model(self.client(), &self.ns, 1, None, None).await?;
        let rev = format!("{MODEL}-00001");
        ready_revision(self.client(), &self.ns, &rev).await?;
        let d = deployment(self.client(), &self.ns, &rev).await?;
        ensure!(
            replicas(&d) == Some(DECLARED as i32),
            "{rev} replicas {:?}",
            replicas(&d)
        );
        wait_serving(self.client(), &self.ns, &rev, DECLARED as usize).await?;
        Ok(())
    }

    /// Puts the org to sleep the way `kubectl s2z sleep` does, and waits until the controller
    /// reports it Dormant and has scaled the existing Revision to zero. The controller judges
    /// from the same caches the webhook answers from, so the next Revision sees a dormant org.
    pub async fn sleep(&self) -> Result<()> {
        let patch = json!({"metadata": {"annotations": {SLEEP_ANNOTATION: stamp(Utc::now())}}});
        self.fx
            .orgs_api()
            .patch(&self.org, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .context("failed to request sleep")?;
        self.fx
            .wait_state(&self.org, OrgState::Dormant, WAIT)
            .await?;
        self.fx
            .wait_annotation(
                &self.ns,
                &format!("{MODEL}-00001"),
                MIN_SCALE,
                Some("0"),
                WAIT,
            )
            .await?;
        Ok(())
    }

    /// Waits until the org is Active and `rev` carries the declared min-scale again with no
    /// initial-scale left: what a wake restores, in place.
    pub async fn wait_restored(&self, rev: &str) -> Result<()> {
        self.fx
            .wait_state(&self.org, OrgState::Active, WAIT)
            .await?;
        let restored = self
            .fx
            .wait_annotation(&self.ns, rev, MIN_SCALE, Some(&DECLARED.to_string()), WAIT)
            .await?;
        ensure!(
            !restored.contains_key(INITIAL_SCALE),
            "initial-scale left on {rev}: {restored:?}"
        );
        Ok(())
    }

    /// The redeploy: a new template, so Knative creates Revision 00002; waits until it is Ready.
    /// Its pods take [`MODEL_LOAD`] to become Ready, so a wake is seen waiting for them.
    pub async fn redeploy(&self) -> Result<DynamicObject> {
        apply_model(self.client(), &self.ns, 2, None, Some(MODEL_LOAD)).await?;
        ready_revision(self.client(), &self.ns, &format!("{MODEL}-00002")).await
    }

    /// `kubectl s2z -n <install namespace> ARGS...` through the real kubectl, as a user runs it;
    /// its stdout, or an error with its stderr.
    pub fn plugin(&self, args: &[&str]) -> Result<String> {
        let dir = defrag_support::plugin_dir()?;
        let mut all = vec!["s2z", "-n", self.fx.sys.as_str()];
        all.extend_from_slice(args);
        let out = kubectl(&self.fx.env.plane, &[&dir], &all)?;
        ensure!(
            out.status.success(),
            "kubectl {}: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub async fn cleanup(self) -> Result<()> {
        delete_mwc(self.client(), &self.mwc).await?;
        drop(self.webhook);
        self.fx.cleanup().await
    }
}

/// `kubectl s2z status ORG -o json` through the real kubectl, as a user runs it: the org's
/// revisions waiting for pods.
pub fn waiting_for_pods(s2z: &S2z) -> Result<Vec<serde_json::Value>> {
    let out = s2z.plugin(&["status", s2z.org.as_str(), "-o", "json"])?;
    let report: serde_json::Value = serde_json::from_str(&out)?;
    Ok(report["orgs"][0]["waitingForPods"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Lets Knative Services use nodeSelector and tolerations, so that a test's pods land on its
/// private nodes only (Knative's webhook rejects both fields by default).
pub async fn allow_pinning(client: &kube::Client) -> Result<()> {
    let cm: ConfigMap = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "config-features", "namespace": "knative-serving"},
        "data": {"kubernetes.podspec-nodeselector": "enabled", "kubernetes.podspec-tolerations": "enabled"},
    }))?;
    Api::<ConfigMap>::namespaced(client.clone(), "knative-serving")
        .patch(
            "config-features",
            &PatchParams::apply("s2z-tests-pinning").force(),
            &Patch::Apply(&cm),
        )
        .await
        .context("failed to enable nodeSelector and tolerations in config-features")?;
    Ok(())
}

/// Waits until Knative's webhook, which reads config-features through an informer, accepts a
/// pinned Knative Service (a server-side dry run): KServe would otherwise see its first create
/// refused and retry with a growing backoff.
pub async fn wait_pinning_allowed(client: &kube::Client, ns: &str, id: &str) -> Result<()> {
    let ksvc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "s2z-pinning-probe", "namespace": ns},
        "spec": {"template": {"spec": {
            "containers": [{"image": IMAGE}],
            "nodeSelector": {"s2z.dev/test": id},
            "tolerations": [{"key": "s2z.dev/test", "operator": "Equal", "value": id, "effect": "NoSchedule"}],
        }}},
    }))?;
    let services = api(client, ns, "Service");
    let dry_run = kube::api::PostParams {
        dry_run: true,
        ..Default::default()
    };
    eventually("a pinned Knative Service accepted", WAIT, || async {
        Ok(services.create(&dry_run, &ksvc).await.ok().map(|_| ()))
    })
    .await
}
