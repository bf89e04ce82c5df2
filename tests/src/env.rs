//! Per-test isolation: unique namespaces (and org names) so tests can run in parallel on one
//! plane.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use s2z_core::org::Org;
use serde_json::{Value, json};

use crate::plane::{Plane, cluster, knative_cluster};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One test's slice of the plane.
pub struct TestEnv {
    pub plane: Plane,
    pub client: kube::Client,
    /// A short unique id: `<test>-<pid>-<n>`, safe as a name and as a label value.
    pub id: String,
    namespaces: Vec<String>,
    orgs: Vec<String>,
}

impl TestEnv {
    /// Connects (or starts the plane) and reserves a unique id for `test`.
    pub async fn new(test: &str) -> Result<Self> {
        let (plane, client) = cluster().await?;
        Ok(Self::on(plane, client, test))
    }

    /// Like [`new`](Self::new), on the plane that runs real Knative Serving
    /// ([`knative_cluster`]).
    pub async fn knative(test: &str) -> Result<Self> {
        let (plane, client) = knative_cluster().await?;
        Ok(Self::on(plane, client, test))
    }

    fn on(plane: Plane, client: kube::Client, test: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let slug: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '-'
                }
            })
            .take(30)
            .collect();
        let id = format!("{}-{}-{n}", slug.trim_matches('-'), std::process::id());
        Self {
            plane,
            client,
            id,
            namespaces: Vec::new(),
            orgs: Vec::new(),
        }
    }

    /// A unique name derived from this test's id.
    pub fn name(&self, suffix: &str) -> String {
        format!("{}-{suffix}", self.id)
    }

    /// Creates a namespace `<id>-<suffix>` with the given labels.
    pub async fn namespace(&mut self, suffix: &str, labels: &[(&str, &str)]) -> Result<String> {
        let name = self.name(suffix);
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("failed to create namespace {name}"))?;
        self.namespaces.push(name.clone());
        Ok(name)
    }

    /// Creates an Org `<id>-<suffix>` labelled `s2z.dev/test=<id>`, with `spec`, `annotations`
    /// (`null` for none) and, when given, `status` (written through the status subresource, as
    /// the controller writes it).
    pub async fn org(
        &mut self,
        suffix: &str,
        spec: Value,
        annotations: Value,
        status: Option<Value>,
    ) -> Result<String> {
        let name = self.name(suffix);
        let org: Org = serde_json::from_value(json!({
            "apiVersion": "s2z.dev/v1alpha1",
            "kind": "Org",
            "metadata": {"name": name, "labels": {"s2z.dev/test": self.id}, "annotations": annotations},
            "spec": spec,
        }))?;
        let api: Api<Org> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &org)
            .await
            .with_context(|| format!("failed to create org {name}"))?;
        self.orgs.push(name.clone());
        if let Some(status) = status {
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .with_context(|| format!("failed to set the status of org {name}"))?;
        }
        Ok(name)
    }

    /// Deletes the orgs and namespaces this test made. Call at the end of a test that passed; a
    /// failed test leaves them for inspection (the plane is thrown away by `down`).
    pub async fn cleanup(self) -> Result<()> {
        let orgs = Api::<Org>::all(self.client.clone());
        for org in &self.orgs {
            orgs.delete(org, &DeleteParams::default()).await.ok();
        }
        let api = Api::<Namespace>::all(self.client.clone());
        for ns in &self.namespaces {
            api.delete(ns, &DeleteParams::background()).await.ok();
        }
        Ok(())
    }
}

/// Polls `check` every 100 ms until it returns `Ok(Some(v))`, or fails after `timeout` with the
/// last observation. A wait, not a timing assertion: the timeout only bounds a broken run.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let start = Instant::now();
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if start.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The status (`"True"`, `"False"`, `"Unknown"`) of condition `type_` in an object's
/// `status.conditions`, the Knative and Kubernetes convention.
pub fn condition<'a>(obj: &'a serde_json::Value, type_: &str) -> Option<&'a str> {
    obj.pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .get("status")?
        .as_str()
}

/// Creates `obj`, or leaves it as it is when it already exists (a reused plane): for benches
/// that fill a plane they may have filled before.
pub async fn create_or_keep<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
