//! The webhook on the real control plane: each test runs its own `s2z-webhook` process on the
//! host, registered with the API server by URL, with its own install namespace (its own
//! `s2z-settings`) and its own Knative namespace (its own `config-autoscaler`), and checks what
//! the API server stores for new Revisions.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use s2z_core::labels::{DECLARED_ANNOTATION, INITIAL_SCALE, MIN_SCALE, MODEL_LABEL, RETENTION};
use s2z_core::org::Org;
use s2z_tests::env::eventually;
use s2z_tests::webhook::{WebhookProcess, delete_mwc, ensure_org_crd, register_mwc};
use s2z_tests::{TestEnv, kubectl};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const MAX_SCALE: &str = "autoscaling.knative.dev/max-scale";
const TARGET: &str = "autoscaling.knative.dev/target";

type Annotations = BTreeMap<String, String>;

/// One test's webhook, namespaces and orgs.
struct Fixture {
    env: TestEnv,
    webhook: WebhookProcess,
    mwc: String,
    probes: u32,
}

impl Fixture {
    /// Installs the CRD, writes this test's `s2z-settings` and `config-autoscaler`, starts a
    /// webhook reading them, and registers it for this test's org namespaces only.
    async fn new(
        test: &str,
        settings: &[(&str, &str)],
        allow_zero_initial_scale: bool,
    ) -> Result<Self> {
        let mut env = TestEnv::new(test).await?;
        ensure_org_crd(&env.client).await?;
        let id = env.id.clone();
        let sys = env.namespace("sys", &[("s2z.dev/test", &id)]).await?;
        let knative = env.namespace("kn", &[("s2z.dev/test", &id)]).await?;
        let settings: BTreeMap<&str, &str> = settings.iter().copied().collect();
        configmap(&env, &sys, "s2z-settings", json!(settings)).await?;
        let autoscaler = json!({
            "enable-scale-to-zero": "true",
            "allow-zero-initial-scale": allow_zero_initial_scale.to_string(),
        });
        configmap(&env, &knative, "config-autoscaler", autoscaler).await?;

        // Only this test's Orgs, and no controller: another test's orgs and revisions are
        // never touched, and what is stored is the webhook's doing alone.
        let org_selector = format!("s2z.dev/test={id}");
        let args = [
            "--namespace",
            &sys,
            "--knative-namespace",
            &knative,
            "--org-selector",
            &org_selector,
            "--controller=false",
        ];
        let webhook = WebhookProcess::start(&env.plane, &args).await?;
        let mwc = env.name("s2z");
        let selector = json!({"matchExpressions": [
            {"key": "s2z.dev/org", "operator": "Exists"},
            {"key": "s2z.dev/test", "operator": "In", "values": [id]},
        ]});
        register_mwc(
            &env.client,
            &mwc,
            &webhook.url(),
            &webhook.cert.ca_bundle(),
            selector,
        )
        .await?;
        Ok(Self {
            env,
            webhook,
            mwc,
            probes: 0,
        })
    }

    /// Creates the Org `<id>-<suffix>`, then sets its status (through the status subresource,
    /// as the controller does) when `status` is given.
    async fn org(&mut self, suffix: &str, spec: Value, status: Option<Value>) -> Result<String> {
        self.env.org(suffix, spec, Value::Null, status).await
    }

    /// A namespace of `org`, matched by this test's webhook configuration.
    async fn org_namespace(&mut self, suffix: &str, org: &str) -> Result<String> {
        let id = self.env.id.clone();
        self.env
            .namespace(suffix, &[("s2z.dev/org", org), ("s2z.dev/test", &id)])
            .await
    }

    fn revisions(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.env.client.clone(), namespace, &revision_resource())
    }

    /// Creates a Revision through the API and returns its stored annotations.
    async fn create(
        &self,
        namespace: &str,
        name: &str,
        labels: Value,
        annotations: Value,
    ) -> Result<Annotations> {
        let revision = serde_json::from_value(revision(name, labels, annotations))?;
        let api = self.revisions(namespace);
        api.create(&PostParams::default(), &revision)
            .await
            .with_context(|| format!("failed to create revision {namespace}/{name}"))?;
        stored_annotations(&api, name).await
    }

    /// Creates probe revisions in `namespace` until one is stored the way `ready` wants: then
    /// the API server calls this test's webhook and the webhook's caches hold the org as set
    /// up. Waiting on the outcome, not on a sleep, keeps the test exact and fast.
    async fn wait_until(
        &mut self,
        namespace: &str,
        what: &str,
        ready: impl Fn(&Annotations) -> bool,
    ) -> Result<()> {
        let what = format!("a probe revision in {namespace} to be stored {what}");
        let mut probes = self.probes;
        // The last probe's annotations, for the failure message.
        let last = std::cell::RefCell::new(Annotations::new());
        let this: &Self = self;
        let result = eventually(&what, WAIT, || {
            probes += 1;
            let name = format!("probe-{probes:05}");
            let (ready, last) = (&ready, &last);
            async move {
                let annotations = this.create(namespace, &name, json!({}), json!({})).await?;
                let done = ready(&annotations);
                last.replace(annotations);
                Ok(done.then_some(()))
            }
        })
        .await;
        let result = result.with_context(|| {
            format!(
                "last probe stored {:?}\nwebhook log:\n{}",
                last.borrow(),
                this.webhook.logs()
            )
        });
        self.probes = probes;
        result
    }

    /// Deletes what this test made outside its namespaces, then the namespaces.
    async fn cleanup(mut self) -> Result<()> {
        self.webhook.kill();
        delete_mwc(&self.env.client, &self.mwc).await?;
        self.env.cleanup().await
    }
}

fn revision_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
        "revisions",
    )
}

/// A Revision as Knative's Configuration reconciler would create it, minus status.
fn revision(name: &str, labels: Value, annotations: Value) -> Value {
    let mut all_labels = json!({
        "serving.knative.dev/configuration": "hello",
        "serving.knative.dev/configurationGeneration": "1",
        "serving.knative.dev/service": "hello",
    });
    if let (Some(all), Some(extra)) = (all_labels.as_object_mut(), labels.as_object()) {
        all.extend(extra.clone());
    }
    let mut metadata = json!({"name": name, "labels": all_labels});
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        metadata["annotations"] = annotations;
    }
    json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": metadata,
        "spec": {
            "containerConcurrency": 0,
            "timeoutSeconds": 300,
            "containers": [{"image": "example.invalid/app@sha256:0000", "ports": [{"containerPort": 8080}]}],
        },
    })
}

async fn stored_annotations(api: &Api<DynamicObject>, name: &str) -> Result<Annotations> {
    let stored = api
        .get(name)
        .await
        .with_context(|| format!("failed to read back revision {name}"))?;
    Ok(stored.metadata.annotations.unwrap_or_default())
}

async fn configmap(env: &TestEnv, namespace: &str, name: &str, data: Value) -> Result<()> {
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": name}, "data": data}))?;
    Api::<ConfigMap>::namespaced(env.client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply("s2z-tests").force(),
            &Patch::Apply(&cm),
        )
        .await
        .with_context(|| format!("failed to write ConfigMap {namespace}/{name}"))?;
    Ok(())
}

/// An RFC 3339 timestamp `ago` before now, to the second.
fn ago(ago: Duration) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(now.saturating_sub(ago).as_secs()).unwrap_or_default();
    Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The declared values s2z remembered on a revision.
fn declared(annotations: &Annotations) -> Result<Annotations> {
    let raw = annotations
        .get(DECLARED_ANNOTATION)
        .with_context(|| format!("no {DECLARED_ANNOTATION} in {annotations:?}"))?;
    serde_json::from_str(raw)
        .with_context(|| format!("{DECLARED_ANNOTATION} is not a JSON object: {raw}"))
}

fn get<'a>(annotations: &'a Annotations, key: &str) -> Option<&'a str> {
    annotations.get(key).map(String::as_str)
}

/// Creates a Revision with the real kubectl (`kubectl create -f`), returning its stderr, where
/// kubectl prints the admission warnings the API server passes on.
fn kubectl_create(env: &TestEnv, namespace: &str, object: &Value) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("revision.json");
    std::fs::write(&file, serde_json::to_vec_pretty(object)?)?;
    let path = file.to_string_lossy();
    let out = kubectl(&env.plane, &[], &["create", "-n", namespace, "-f", &path])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "kubectl create failed: {stderr}{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(stderr)
}

/// Dormancy by inactivity: the last activity is an hour old and this test's settings make the
/// period 10 minutes (the default of a day would keep the org active, so this also proves the
/// webhook reads its own `s2z-settings`).
const SHORT_PERIOD: &[(&str, &str)] = &[
    ("orgDormancyPeriodSecs", "600"),
    ("orgWarmupRatelimitStr", "1/m"),
];

fn idle_status() -> Value {
    json!({"lastActivityAt": ago(Duration::from_secs(3600))})
}

fn busy_status() -> Value {
    json!({"lastActivityAt": ago(Duration::ZERO)})
}

#[tokio::test]
async fn dormant_org_revision_starts_at_zero_when_the_cluster_allows_it() -> Result<()> {
    let mut f = Fixture::new("wh-dormant-zero", SHORT_PERIOD, true).await?;
    let org = f
        .org(
            "idle",
            json!({"scaleDownWindow": "5m"}),
            Some(idle_status()),
        )
        .await?;
    let ns = f.org_namespace("apps", &org).await?;
    f.wait_until(&ns, "with min-scale 0", |a| get(a, MIN_SCALE) == Some("0"))
        .await?;

    // A deploy of the dormant org, through the real kubectl, with a declared max-scale.
    let object = revision(
        "hello-00002",
        json!({}),
        json!({MAX_SCALE: "5", TARGET: "10"}),
    );
    let stderr = kubectl_create(&f.env, &ns, &object)?;
    assert!(
        !stderr.contains("Warning"),
        "no warning expected when initial-scale 0 is allowed: {stderr}"
    );
    let stored = stored_annotations(&f.revisions(&ns), "hello-00002").await?;
    assert_eq!(get(&stored, MIN_SCALE), Some("0"), "{stored:?}");
    assert_eq!(get(&stored, INITIAL_SCALE), Some("0"), "{stored:?}");
    assert_eq!(
        get(&stored, RETENTION),
        Some("300s"),
        "the org's scale-down window: {stored:?}"
    );
    assert_eq!(
        get(&stored, MAX_SCALE),
        Some("5"),
        "declared values are kept: {stored:?}"
    );
    assert_eq!(get(&stored, TARGET), Some("10"), "{stored:?}");
    let declared = declared(&stored)?;
    assert_eq!(get(&declared, MAX_SCALE), Some("5"), "{declared:?}");
    assert_eq!(
        get(&declared, MIN_SCALE),
        None,
        "nothing declared, nothing remembered: {declared:?}"
    );
    f.cleanup().await
}

#[tokio::test]
async fn dormant_org_revision_gets_min_scale_zero_and_a_warning_when_initial_zero_is_forbidden()
-> Result<()> {
    // Dormant through `kubectl s2z sleep`'s annotation rather than inactivity.
    let mut f = Fixture::new("wh-dormant-warn", &[], false).await?;
    let org = f.org("sleepy", json!({}), None).await?;
    Api::<Org>::all(f.env.client.clone())
        .patch(
            &org,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"s2z.dev/sleep-requested-at": ago(Duration::ZERO)}}})),
        )
        .await?;
    let ns = f.org_namespace("apps", &org).await?;
    f.wait_until(&ns, "with min-scale 0", |a| get(a, MIN_SCALE) == Some("0"))
        .await?;

    let stderr = kubectl_create(&f.env, &ns, &revision("hello-00002", json!({}), json!({})))?;
    assert!(
        stderr.contains("Warning:") && stderr.contains("allow-zero-initial-scale=false"),
        "kubectl must show the webhook's warning, got: {stderr:?}"
    );
    let stored = stored_annotations(&f.revisions(&ns), "hello-00002").await?;
    assert_eq!(get(&stored, MIN_SCALE), Some("0"), "{stored:?}");
    assert_eq!(
        get(&stored, INITIAL_SCALE),
        None,
        "Knative would reject initial-scale 0 here: {stored:?}"
    );
    declared(&stored)?;
    f.cleanup().await
}

#[tokio::test]
async fn active_org_revision_stays_warm() -> Result<()> {
    let mut f = Fixture::new("wh-active", SHORT_PERIOD, true).await?;
    let org = f.org("busy", json!({}), Some(busy_status())).await?;
    let ns = f.org_namespace("apps", &org).await?;
    f.wait_until(&ns, "with min-scale 1", |a| get(a, MIN_SCALE) == Some("1"))
        .await?;

    let plain = f.create(&ns, "hello-00002", json!({}), json!({})).await?;
    assert_eq!(get(&plain, MIN_SCALE), Some("1"), "{plain:?}");
    assert_eq!(get(&plain, INITIAL_SCALE), None, "{plain:?}");

    // A user who asked for scale to zero is kept warm while the org is active, and the wish is
    // remembered for when the org goes dormant and comes back.
    let zero = f
        .create(&ns, "hello-00003", json!({}), json!({MIN_SCALE: "0"}))
        .await?;
    assert_eq!(get(&zero, MIN_SCALE), Some("1"), "{zero:?}");
    assert_eq!(get(&declared(&zero)?, MIN_SCALE), Some("0"), "{zero:?}");
    f.cleanup().await
}

#[tokio::test]
async fn exempt_org_revision_is_born_warm() -> Result<()> {
    let mut f = Fixture::new("wh-exempt", SHORT_PERIOD, true).await?;
    // First dormant, to see the webhook act on this org; then exempt, which it must show by
    // giving new revisions the warm floor, whatever they declare.
    let org = f.org("vip", json!({}), Some(idle_status())).await?;
    let ns = f.org_namespace("apps", &org).await?;
    f.wait_until(&ns, "with min-scale 0", |a| get(a, MIN_SCALE) == Some("0"))
        .await?;
    Api::<Org>::all(f.env.client.clone())
        .patch(
            &org,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"scaleToZeroAllowed": false}})),
        )
        .await?;
    f.wait_until(&ns, "with min-scale 1", |a| get(a, MIN_SCALE) == Some("1"))
        .await?;

    let sent = json!({MIN_SCALE: "0", TARGET: "10"});
    let stored = f.create(&ns, "hello-00002", json!({}), sent).await?;
    assert_eq!(get(&stored, MIN_SCALE), Some("1"), "{stored:?}");
    assert_eq!(get(&stored, TARGET), Some("10"), "{stored:?}");
    // What was declared is recorded, so that allowing scale to zero again restores it.
    assert_eq!(get(&declared(&stored)?, MIN_SCALE), Some("0"), "{stored:?}");
    f.cleanup().await
}

#[tokio::test]
async fn model_keeps_declared_min_scale_while_active_and_remembers_it_while_dormant() -> Result<()>
{
    let mut f = Fixture::new("wh-model", SHORT_PERIOD, true).await?;
    let live = f.org("live", json!({}), Some(busy_status())).await?;
    let idle = f.org("idle", json!({}), Some(idle_status())).await?;
    let live_ns = f.org_namespace("live", &live).await?;
    let idle_ns = f.org_namespace("idle", &idle).await?;
    f.wait_until(&live_ns, "with min-scale 1", |a| {
        get(a, MIN_SCALE) == Some("1")
    })
    .await?;
    f.wait_until(&idle_ns, "with min-scale 0", |a| {
        get(a, MIN_SCALE) == Some("0")
    })
    .await?;

    // KServe's `minReplicas: 3` arrives as min-scale 3 on the predictor's revision.
    let model = json!({MODEL_LABEL: "bert", "component": "predictor"});
    let declared_min = json!({MIN_SCALE: "3", MAX_SCALE: "6"});
    let active = f
        .create(
            &live_ns,
            "bert-predictor-00001",
            model.clone(),
            declared_min.clone(),
        )
        .await?;
    assert_eq!(
        get(&active, MIN_SCALE),
        Some("3"),
        "an active model keeps its own floor: {active:?}"
    );
    assert_eq!(get(&active, MAX_SCALE), Some("6"), "{active:?}");
    assert_eq!(get(&declared(&active)?, MIN_SCALE), Some("3"), "{active:?}");

    let dormant = f
        .create(&idle_ns, "bert-predictor-00001", model, declared_min)
        .await?;
    assert_eq!(get(&dormant, MIN_SCALE), Some("0"), "{dormant:?}");
    assert_eq!(get(&dormant, INITIAL_SCALE), Some("0"), "{dormant:?}");
    assert_eq!(get(&dormant, MAX_SCALE), Some("6"), "{dormant:?}");
    let remembered = declared(&dormant)?;
    assert_eq!(
        get(&remembered, MIN_SCALE),
        Some("3"),
        "min-scale 3 must be remembered: {remembered:?}"
    );
    assert_eq!(get(&remembered, MAX_SCALE), Some("6"), "{remembered:?}");
    f.cleanup().await
}

#[tokio::test]
async fn revision_in_a_namespace_without_org_is_never_sent_to_the_webhook() -> Result<()> {
    let mut f = Fixture::new("wh-no-org", SHORT_PERIOD, true).await?;
    let org = f.org("busy", json!({}), Some(busy_status())).await?;
    let ns = f.org_namespace("apps", &org).await?;
    let id = f.env.id.clone();
    // Same test label as the org namespaces, no org label.
    let plain = f.env.namespace("plain", &[("s2z.dev/test", &id)]).await?;
    f.wait_until(&ns, "with min-scale 1", |a| get(a, MIN_SCALE) == Some("1"))
        .await?;

    // The API server calls webhooks before create returns, so a call would already be counted.
    let before = f.webhook.admission_requests().await?;
    let stored = f
        .create(&plain, "hello-00001", json!({}), json!({}))
        .await?;
    assert!(stored.is_empty(), "{stored:?}");
    let after = f.webhook.admission_requests().await?;
    assert_eq!(
        after, before,
        "the webhook was called for a namespace without org"
    );

    // The counter is live: a revision of the org is counted.
    let stored = f.create(&ns, "hello-00001", json!({}), json!({})).await?;
    assert_eq!(get(&stored, MIN_SCALE), Some("1"));
    let counted = f.webhook.admission_requests().await?;
    assert!(
        counted > after,
        "the org's revision was not counted: {after} -> {counted}"
    );
    f.cleanup().await
}

#[tokio::test]
async fn revision_is_created_while_the_webhook_is_down() -> Result<()> {
    let mut f = Fixture::new("wh-down", SHORT_PERIOD, true).await?;
    let org = f.org("busy", json!({}), Some(busy_status())).await?;
    let ns = f.org_namespace("apps", &org).await?;
    f.wait_until(&ns, "with min-scale 1", |a| get(a, MIN_SCALE) == Some("1"))
        .await?;

    f.webhook.kill();
    // failurePolicy Ignore: the deploy goes through, unmutated (the controller fixes it later).
    let stored = f
        .create(&ns, "hello-00002", json!({}), json!({TARGET: "10"}))
        .await?;
    assert_eq!(
        stored,
        Annotations::from([(TARGET.to_owned(), "10".to_owned())])
    );
    f.cleanup().await
}
