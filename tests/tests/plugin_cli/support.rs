//! What every test here shares: the freshly built plugin run through kubectl, a fixture with its
//! own install namespace and orgs, and object builders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::{SignedDuration, Timestamp, Unit};
use kube::CustomResourceExt;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use s2z_core::org::Org;
use s2z_tests::env::eventually;
use s2z_tests::plane::{kubectl_as, repo_root};
use s2z_tests::{Plane, TestEnv, kubectl};
use serde_json::{Value, json};

pub(crate) const WAIT: Duration = Duration::from_secs(60);
pub(crate) const SLEEP: &str = "s2z.dev/sleep-requested-at";

/// The directory holding the freshly built `kubectl-s2z`, put first on kubectl's PATH.
pub(crate) fn plugin_dir() -> Result<PathBuf> {
    let dir = repo_root().join("target/debug");
    let bin = dir.join("kubectl-s2z");
    ensure!(
        bin.exists(),
        "{} is missing: run `cargo build -p kubectl-s2z` first (make test does)",
        bin.display()
    );
    Ok(dir)
}

/// What one `kubectl s2z ...` run did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    pub(crate) fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout is not JSON: {self:?}"))
    }

    /// Asserts the exit code, showing the whole run when it differs.
    pub(crate) fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    /// Asserts a runtime error: the code, the message on stderr, nothing on stdout, no usage.
    pub(crate) fn fails(&self, code: i32, message: &str) -> &Self {
        self.code(code);
        assert!(
            self.stderr.contains(message),
            "stderr lacks {message:?}: {self:#?}"
        );
        assert!(self.stderr.starts_with("error: failed to "), "{self:#?}");
        assert!(
            !self.stderr.contains("Usage:"),
            "runtime errors print no usage: {self:#?}"
        );
        assert!(self.stdout.is_empty(), "{self:#?}");
        self
    }
}

pub(crate) fn run_with(plane: &Plane, kubeconfig: Option<&Path>, args: &[&str]) -> Result<Run> {
    let dir = plugin_dir()?;
    let mut full = vec!["s2z"];
    full.extend_from_slice(args);
    let out = match kubeconfig {
        Some(kc) => kubectl_as(plane, kc, &[&dir], &full)?,
        None => kubectl(plane, &[&dir], &full)?,
    };
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// `kubectl s2z <args>` as the admin.
pub(crate) fn s2z(env: &TestEnv, args: &[&str]) -> Result<Run> {
    run_with(&env.plane, None, args)
}

/// A command line for `kubectl s2z`, for runs that need a live process (watch, broken pipe).
pub(crate) fn s2z_command(plane: &Plane, args: &[&str]) -> Result<Command> {
    let dir = plugin_dir()?;
    let mut path = vec![dir, plane.bin_dir.clone()];
    if let Some(old) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&old));
    }
    let mut command = Command::new(plane.bin_dir.join("kubectl"));
    command
        .arg("s2z")
        .args(args)
        .env("KUBECONFIG", &plane.admin_kubeconfig)
        .env("PATH", std::env::join_paths(path)?)
        .env_remove("NO_COLOR");
    Ok(command)
}

/// Installs the Org CRD (idempotent): manifests/base/crd.yaml when present, else generated from
/// the Rust type; server-side apply, then waits until orgs can be listed.
pub(crate) async fn ensure_crd(client: &kube::Client) -> Result<()> {
    let path = repo_root().join("manifests/base/crd.yaml");
    let crd: CustomResourceDefinition = if path.exists() {
        let text = std::fs::read_to_string(&path)?;
        serde_yaml::from_str(&text)
            .with_context(|| format!("failed to parse {}", path.display()))?
    } else {
        Org::crd()
    };
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "orgs.s2z.dev",
        &PatchParams::apply("s2z-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .context("failed to apply the Org CRD")?;
    let orgs: Api<Org> = Api::all(client.clone());
    eventually("orgs.s2z.dev served", WAIT, || async {
        Ok(orgs
            .list(&ListParams::default().limit(1))
            .await
            .ok()
            .map(|_| ()))
    })
    .await
}

/// A test's orgs, namespaces and install namespace.
pub(crate) struct Fixture {
    pub(crate) env: TestEnv,
    /// The per-test install namespace, passed as `-n`.
    pub(crate) sys: String,
}

impl Fixture {
    pub(crate) async fn new(test: &str) -> Result<Self> {
        let mut env = TestEnv::new(test).await?;
        ensure_crd(&env.client).await?;
        let sys = env.namespace("sys", &[]).await?;
        Ok(Fixture { env, sys })
    }

    /// `kubectl s2z -n <sys> <args>`.
    pub(crate) fn s2z(&self, args: &[&str]) -> Result<Run> {
        let mut full = vec!["-n", self.sys.as_str()];
        full.extend_from_slice(args);
        s2z(&self.env, &full)
    }

    /// Writes the settings ConfigMap of this test's install namespace.
    pub(crate) async fn settings(&self, data: &[(&str, &str)]) -> Result<()> {
        let data: BTreeMap<String, String> = data
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let cm: ConfigMap = serde_json::from_value(json!({
            "metadata": {"name": "s2z-settings"}, "data": data,
        }))?;
        Api::<ConfigMap>::namespaced(self.env.client.clone(), &self.sys)
            .patch(
                "s2z-settings",
                &PatchParams::apply("s2z-tests").force(),
                &Patch::Apply(&cm),
            )
            .await?;
        Ok(())
    }

    pub(crate) async fn settings_data(&self) -> Result<Option<BTreeMap<String, String>>> {
        let cm = Api::<ConfigMap>::namespaced(self.env.client.clone(), &self.sys)
            .get_opt("s2z-settings")
            .await?;
        Ok(cm.map(|cm| cm.data.unwrap_or_default()))
    }

    pub(crate) async fn get_org(&self, name: &str) -> Result<Org> {
        Ok(Api::<Org>::all(self.env.client.clone()).get(name).await?)
    }

    /// Whether the org carries a `kubectl s2z sleep` request.
    pub(crate) async fn has_sleep_request(&self, name: &str) -> Result<bool> {
        let org = self.get_org(name).await?;
        Ok(org
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(SLEEP))
    }

    /// A namespace of `org`.
    pub(crate) async fn org_namespace(&mut self, suffix: &str, org: &str) -> Result<String> {
        self.env.namespace(suffix, &[("s2z.dev/org", org)]).await
    }

    pub(crate) async fn cleanup(self) -> Result<()> {
        self.env.cleanup().await
    }
}

pub(crate) fn revisions_api(client: &kube::Client, ns: &str) -> (Api<DynamicObject>, ApiResource) {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "serving.knative.dev",
        "v1",
        "Revision",
    ));
    (
        Api::namespaced_with(client.clone(), ns, &resource),
        resource,
    )
}

/// Creates a Knative Revision with the given labels and annotations.
pub(crate) async fn revision(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: Value,
    annotations: Value,
) -> Result<()> {
    let (api, resource) = revisions_api(client, ns);
    let mut object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": annotations},
        "spec": {"containers": [{"image": "example.invalid/app:1"}]},
    }))?;
    object.types = Some(kube::api::TypeMeta {
        api_version: resource.api_version.clone(),
        kind: resource.kind.clone(),
    });
    api.create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("failed to create revision {ns}/{name}"))?;
    Ok(())
}

/// RFC 3339, whole seconds, `seconds` ago.
pub(crate) fn ago(seconds: i64) -> String {
    let t = Timestamp::now() - SignedDuration::from_secs(seconds);
    t.round(Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

pub(crate) fn org_row<'a>(report: &'a Value, name: &str) -> Result<&'a Value> {
    report["orgs"]
        .as_array()
        .and_then(|orgs| orgs.iter().find(|o| o["name"] == name))
        .with_context(|| format!("org {name} not in {report:#}"))
}

pub(crate) fn names(report: &Value) -> Vec<String> {
    report["orgs"]
        .as_array()
        .map(|orgs| {
            orgs.iter()
                .filter_map(|o| o["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}
