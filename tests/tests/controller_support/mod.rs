//! Shared fixture of the controller and activity tests: a test's own install namespace (its
//! `s2z-settings` and its Lease), its own Knative namespace (`config-autoscaler`), orgs labelled
//! `s2z.dev/test=<id>` so that only this test's `s2z-webhook --org-selector` sees them, org
//! namespaces, Revisions created directly (no webhook registered: they "escape" it), and
//! ServiceAccount tokens for the activity endpoint.

#![allow(dead_code)]

mod shipped;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::core::GroupVersionKind;
use s2z_core::org::{Org, OrgState};
use s2z_tests::TestEnv;
use s2z_tests::env::eventually;
use s2z_tests::webhook::{WebhookProcess, ensure_org_crd};
use serde_json::{Value, json};

/// Bounds a broken run; the assertions on timing are separate and explicit.
pub const WAIT: Duration = Duration::from_secs(60);
/// Lease timing of the test processes: failover within 3 s.
pub const LEASE: [&str; 3] = [
    "--lease-duration=3s",
    "--renew-deadline=2s",
    "--retry-period=500ms",
];

pub type Annotations = BTreeMap<String, String>;

/// `serving.knative.dev/v1` Revision.
pub fn revisions_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
        "revisions",
    )
}

/// One test's slice of the plane.
pub struct Fixture {
    pub env: TestEnv,
    /// Install namespace: `s2z-settings`, the Lease, ServiceAccounts.
    pub sys: String,
    /// Knative namespace with this test's `config-autoscaler`.
    pub knative: String,
    cluster_rbac: Vec<String>,
}

impl Fixture {
    /// Installs the CRD and writes this test's settings and `config-autoscaler`
    /// (allow-zero-initial-scale true).
    pub async fn new(test: &str, settings: &[(&str, &str)]) -> Result<Self> {
        let mut env = TestEnv::new(test).await?;
        let id = env.id.clone();
        let knative = env.namespace("kn", &[("s2z.dev/test", &id)]).await?;
        let fx = Self::with(env, knative, settings).await?;
        fx.configmap(
            &fx.knative,
            "config-autoscaler",
            json!({"enable-scale-to-zero": "true", "allow-zero-initial-scale": "true"}),
        )
        .await?;
        Ok(fx)
    }

    /// Like [`new`](Self::new), on the plane running real Knative Serving: the webhook reads
    /// Knative's own `knative-serving/config-autoscaler` and detects the release from that
    /// namespace's labels, as in a real install.
    pub async fn on_knative(test: &str, settings: &[(&str, &str)]) -> Result<Self> {
        let env = TestEnv::knative(test).await?;
        Self::with(env, "knative-serving".to_string(), settings).await
    }

    async fn with(mut env: TestEnv, knative: String, settings: &[(&str, &str)]) -> Result<Self> {
        ensure_org_crd(&env.client).await?;
        let id = env.id.clone();
        let sys = env.namespace("sys", &[("s2z.dev/test", &id)]).await?;
        let fx = Self {
            env,
            sys,
            knative,
            cluster_rbac: Vec::new(),
        };
        fx.set_settings(settings).await?;
        Ok(fx)
    }

    /// The label selector of this test's orgs.
    pub fn selector(&self) -> String {
        format!("s2z.dev/test={}", self.env.id)
    }

    /// Flags for a controller-enabled webhook scoped to this test, plus `extra`.
    pub fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--controller=true".into(),
            format!("--namespace={}", self.sys),
            format!("--knative-namespace={}", self.knative),
            format!("--org-selector={}", self.selector()),
        ];
        args.extend(LEASE.iter().map(|a| a.to_string()));
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    }

    /// Starts a controller-enabled webhook for this test.
    pub async fn webhook(&self, extra: &[&str]) -> Result<WebhookProcess> {
        let args = self.args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        WebhookProcess::start(&self.env.plane, &args).await
    }

    /// Creates or replaces a ConfigMap.
    pub async fn configmap(&self, ns: &str, name: &str, data: Value) -> Result<()> {
        let cm: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": ns},
            "data": data,
        }))?;
        Api::<ConfigMap>::namespaced(self.env.client.clone(), ns)
            .patch(
                name,
                &PatchParams::apply("s2z-tests").force(),
                &Patch::Apply(&cm),
            )
            .await
            .with_context(|| format!("failed to write configmap {ns}/{name}"))?;
        Ok(())
    }

    /// Replaces this test's `s2z-settings`.
    pub async fn set_settings(&self, settings: &[(&str, &str)]) -> Result<()> {
        let data: BTreeMap<&str, &str> = settings.iter().copied().collect();
        self.configmap(&self.sys, "s2z-settings", json!(data)).await
    }

    /// Creates an org `<id>-<suffix>` labelled for this test.
    pub async fn org(&mut self, suffix: &str, spec: Value) -> Result<String> {
        self.env.org(suffix, spec, Value::Null, None).await
    }

    /// Creates a namespace of `org`.
    pub async fn org_namespace(&mut self, org: &str, suffix: &str) -> Result<String> {
        let id = self.env.id.clone();
        self.env
            .namespace(suffix, &[("s2z.dev/org", org), ("s2z.dev/test", &id)])
            .await
    }

    pub fn orgs_api(&self) -> Api<Org> {
        Api::all(self.env.client.clone())
    }

    pub fn revisions(&self, ns: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.env.client.clone(), ns, &revisions_resource())
    }

    /// Creates a Revision directly (no webhook is registered, so it escapes admission).
    pub async fn revision(
        &self,
        ns: &str,
        name: &str,
        model: bool,
        annotations: &[(&str, &str)],
    ) -> Result<()> {
        let mut labels = json!({"serving.knative.dev/configuration": name});
        if model {
            labels["serving.kserve.io/inferenceservice"] = json!(name);
        }
        let annotations: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        let rev: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
            "spec": {"containers": [{"image": "example.invalid/app:1"}]},
        }))?;
        self.revisions(ns)
            .create(&PostParams::default(), &rev)
            .await
            .with_context(|| format!("failed to create revision {ns}/{name}"))?;
        Ok(())
    }

    /// A revision's annotations.
    pub async fn annotations(&self, ns: &str, name: &str) -> Result<Annotations> {
        let rev = self.revisions(ns).get(name).await?;
        Ok(rev.metadata.annotations.unwrap_or_default())
    }

    /// Waits until a revision's annotation `key` equals `value` (`None`: absent).
    pub async fn wait_annotation(
        &self,
        ns: &str,
        name: &str,
        key: &str,
        value: Option<&str>,
        timeout: Duration,
    ) -> Result<Annotations> {
        eventually(&format!("{ns}/{name} {key}={value:?}"), timeout, || async {
            let a = self.annotations(ns, name).await?;
            Ok((a.get(key).map(String::as_str) == value).then_some(a))
        })
        .await
    }

    pub async fn get_org(&self, name: &str) -> Result<Org> {
        Ok(self.orgs_api().get(name).await?)
    }

    /// Waits until the org's status says `state`.
    pub async fn wait_state(&self, name: &str, state: OrgState, timeout: Duration) -> Result<Org> {
        eventually(&format!("org {name} {state}"), timeout, || async {
            let org = self.get_org(name).await?;
            let now = org.status.as_ref().and_then(|s| s.state);
            Ok((now == Some(state)).then_some(org))
        })
        .await
    }

    /// Events (events.k8s.io) about an object, oldest first.
    pub async fn events(&self, ns: &str, kind: &str, name: &str) -> Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.env.client.clone(), ns);
        let params =
            ListParams::default().fields(&format!("regarding.kind={kind},regarding.name={name}"));
        let mut events = api.list(&params).await?.items;
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        Ok(events)
    }

    /// The reasons of the Events about an Org (Orgs are cluster-scoped: their Events go to
    /// `default`), oldest first.
    pub async fn org_reasons(&self, org: &str) -> Result<Vec<String>> {
        let events = self.events("default", "Org", org).await?;
        Ok(events.into_iter().filter_map(|e| e.reason).collect())
    }

    /// A ServiceAccount in the install namespace and a token for it; with `allowed`, a
    /// ClusterRole granting `create` on `orgs/activity` (named orgs only, when given) is bound
    /// to it.
    pub async fn sender(&mut self, name: &str, allowed: Option<&[&str]>) -> Result<String> {
        let client = self.env.client.clone();
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &self.sys);
        let sa: ServiceAccount = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": self.sys},
        }))?;
        sas.create(&PostParams::default(), &sa).await?;
        if let Some(orgs) = allowed {
            let role_name = format!("{}-{name}", self.env.id);
            let mut rule = json!({
                "apiGroups": ["s2z.dev"], "resources": ["orgs/activity"], "verbs": ["create"],
            });
            if !orgs.is_empty() {
                rule["resourceNames"] = json!(orgs);
            }
            let role: ClusterRole = serde_json::from_value(json!({
                "metadata": {"name": role_name, "labels": {"s2z.dev/test": self.env.id}},
                "rules": [rule],
            }))?;
            Api::<ClusterRole>::all(client.clone())
                .create(&PostParams::default(), &role)
                .await?;
            let binding: ClusterRoleBinding = serde_json::from_value(json!({
                "metadata": {"name": role_name, "labels": {"s2z.dev/test": self.env.id}},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": self.sys}],
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role_name},
            }))?;
            Api::<ClusterRoleBinding>::all(client.clone())
                .create(&PostParams::default(), &binding)
                .await?;
            self.cluster_rbac.push(role_name);
        }
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let token = sas
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("failed to request a token for {name}"))?;
        token
            .status
            .and_then(|s| s.token)
            .context("the TokenRequest returned no token")
    }

    /// Deletes what the test made (orgs, cluster RBAC, namespaces).
    pub async fn cleanup(self) -> Result<()> {
        let client = self.env.client.clone();
        for name in &self.cluster_rbac {
            Api::<ClusterRoleBinding>::all(client.clone())
                .delete(name, &DeleteParams::default())
                .await
                .ok();
            Api::<ClusterRole>::all(client.clone())
                .delete(name, &DeleteParams::default())
                .await
                .ok();
        }
        self.env.cleanup().await
    }
}

/// The RFC 3339 text of `t`, milliseconds, like s2z writes.
pub fn stamp(t: chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses a status timestamp.
pub fn time(text: Option<&str>) -> Result<chrono::DateTime<chrono::Utc>> {
    let text = text.context("timestamp missing")?;
    Ok(s2z_core::dormancy::parse_time(text)?)
}
