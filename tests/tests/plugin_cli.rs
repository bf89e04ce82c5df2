//! `kubectl s2z` on the real control plane, run through the real kubectl exactly as a user runs
//! it: every command, its success and error paths, and its exit codes.
//!
//! Each test gets its own install namespace (`-n`), so settings never leak between tests, and its
//! own uniquely named orgs. The s2z controller may or may not be running on the shared plane; the
//! tests hold either way (see the sweep tests).
//!
//! Needs `cargo build -p kubectl-s2z` first (`make test` does it).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::{SignedDuration, Timestamp, Unit};
use kube::CustomResourceExt;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use s2z_core::labels::RECONCILE_ANNOTATION;
use s2z_core::org::Org;
use s2z_tests::env::eventually;
use s2z_tests::plane::{kubectl_as, repo_root};
use s2z_tests::{Plane, TestEnv, kubectl};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const SLEEP: &str = "s2z.dev/sleep-requested-at";

// ---------------------------------------------------------------------------------------------
// Support

/// The directory holding the freshly built `kubectl-s2z`, put first on kubectl's PATH.
fn plugin_dir() -> Result<PathBuf> {
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
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout is not JSON: {self:?}"))
    }

    /// Asserts the exit code, showing the whole run when it differs.
    fn code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "unexpected exit code: {self:#?}");
        self
    }

    /// Asserts a runtime error: the code, the message on stderr, nothing on stdout, no usage.
    fn fails(&self, code: i32, message: &str) -> &Self {
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

fn run_with(plane: &Plane, kubeconfig: Option<&Path>, args: &[&str]) -> Result<Run> {
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
fn s2z(env: &TestEnv, args: &[&str]) -> Result<Run> {
    run_with(&env.plane, None, args)
}

/// A command line for `kubectl s2z`, for runs that need a live process (watch, broken pipe).
fn s2z_command(plane: &Plane, args: &[&str]) -> Result<Command> {
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
async fn ensure_crd(client: &kube::Client) -> Result<()> {
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
struct Fixture {
    env: TestEnv,
    /// The per-test install namespace, passed as `-n`.
    sys: String,
}

impl Fixture {
    async fn new(test: &str) -> Result<Self> {
        let mut env = TestEnv::new(test).await?;
        ensure_crd(&env.client).await?;
        let sys = env.namespace("sys", &[]).await?;
        Ok(Fixture { env, sys })
    }

    /// `kubectl s2z -n <sys> <args>`.
    fn s2z(&self, args: &[&str]) -> Result<Run> {
        let mut full = vec!["-n", self.sys.as_str()];
        full.extend_from_slice(args);
        s2z(&self.env, &full)
    }

    /// Writes the settings ConfigMap of this test's install namespace.
    async fn settings(&self, data: &[(&str, &str)]) -> Result<()> {
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

    async fn settings_data(&self) -> Result<Option<BTreeMap<String, String>>> {
        let cm = Api::<ConfigMap>::namespaced(self.env.client.clone(), &self.sys)
            .get_opt("s2z-settings")
            .await?;
        Ok(cm.map(|cm| cm.data.unwrap_or_default()))
    }

    /// Creates an org labelled with this test's id, with an optional status and annotations.
    async fn org(
        &mut self,
        suffix: &str,
        spec: Value,
        annotations: Value,
        status: Option<Value>,
    ) -> Result<String> {
        self.env.org(suffix, spec, annotations, status).await
    }

    async fn get_org(&self, name: &str) -> Result<Org> {
        Ok(Api::<Org>::all(self.env.client.clone()).get(name).await?)
    }

    /// A namespace of `org`.
    async fn org_namespace(&mut self, suffix: &str, org: &str) -> Result<String> {
        self.env.namespace(suffix, &[("s2z.dev/org", org)]).await
    }

    async fn cleanup(self) -> Result<()> {
        self.env.cleanup().await
    }
}

fn revisions_api(client: &kube::Client, ns: &str) -> (Api<DynamicObject>, ApiResource) {
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
async fn revision(
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
fn ago(seconds: i64) -> String {
    let t = Timestamp::now() - SignedDuration::from_secs(seconds);
    t.round(Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn org_row<'a>(report: &'a Value, name: &str) -> Result<&'a Value> {
    report["orgs"]
        .as_array()
        .and_then(|orgs| orgs.iter().find(|o| o["name"] == name))
        .with_context(|| format!("org {name} not in {report:#}"))
}

fn names(report: &Value) -> Vec<String> {
    report["orgs"]
        .as_array()
        .map(|orgs| {
            orgs.iter()
                .filter_map(|o| o["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// status

/// A private fake node with 8 GPUs, tainted so nothing else lands on it.
async fn gpu_node(env: &TestEnv) -> Result<String> {
    let names = s2z_tests::nodes::private_nodes(env, &[8], &[]).await?;
    names.into_iter().next().context("no node created")
}

/// A running revision pod holding `gpus` GPUs on `node`.
async fn gpu_pod(
    env: &TestEnv,
    ns: &str,
    name: &str,
    rev: &str,
    node: &str,
    gpus: u32,
) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"serving.knative.dev/revision": rev}},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "s2z.dev/test", "operator": "Equal", "value": env.id, "effect": "NoSchedule"}],
            "containers": [{"name": "user-container", "image": "example.invalid/model:1",
                "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    eventually(&format!("pod {ns}/{name} running"), WAIT, || async {
        let pod = pods.get(name).await?;
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        Ok((phase == "Running").then_some(()))
    })
    .await
}

#[tokio::test]
async fn status_shows_states_workloads_pods_and_gpus() -> Result<()> {
    let mut fx = Fixture::new("plg-status").await?;
    fx.settings(&[
        ("orgDormancyPeriodSecs", "3600"),
        ("orgWarmupRatelimitStr", "2/hour"),
    ])
    .await?;
    let active = fx
        .org(
            "act",
            json!({}),
            json!({}),
            Some(json!({"lastActivityAt": ago(300), "state": "Active"})),
        )
        .await?;
    let dormant = fx
        .org(
            "dor",
            json!({}),
            json!({}),
            Some(json!({"lastActivityAt": ago(3 * 3600)})),
        )
        .await?;
    let exempt = fx
        .org("exm", json!({"scaleToZeroAllowed": false}), json!({}), None)
        .await?;
    let ns = fx.org_namespace("act-ns", &active).await?;
    let client = fx.env.client.clone();
    revision(
        &client,
        &ns,
        "web-00001",
        json!({}),
        json!({"autoscaling.knative.dev/min-scale": "1"}),
    )
    .await?;
    revision(
        &client,
        &ns,
        "bert-predictor-00001",
        json!({"serving.kserve.io/inferenceservice": "bert"}),
        json!({"autoscaling.knative.dev/min-scale": "0"}),
    )
    .await?;
    let node = gpu_node(&fx.env).await?;
    gpu_pod(&fx.env, &ns, "web-a", "web-00001", &node, 1).await?;
    gpu_pod(&fx.env, &ns, "bert-a", "bert-predictor-00001", &node, 2).await?;

    // The table: header with the settings, one row per org, totals.
    let run = fx.s2z(&["status", &active, &dormant, &exempt])?;
    run.code(0);
    assert!(
        run.stdout
            .starts_with("Dormancy period: 1h   Warm-up rate limit: 2/hour"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("ORG "), "{run:#?}");
    for (org, state) in [
        (&active, "Active"),
        (&dormant, "Dormant"),
        (&exempt, "Exempt"),
    ] {
        let line = run.stdout.lines().find(|l| l.starts_with(org.as_str()));
        assert!(
            line.is_some_and(|l| l.contains(state)),
            "{org} {state}: {run:#?}"
        );
    }
    assert!(
        run.stdout
            .contains("3 orgs: 1 active, 1 dormant, 1 exempt; 2 running pods, 3 GPUs held"),
        "{run:#?}"
    );

    // The JSON document.
    let report = fx
        .s2z(&["status", &active, &dormant, &exempt, "-o", "json"])?
        .json()?;
    assert_eq!(report["apiVersion"], "s2z.dev/v1alpha1");
    assert_eq!(report["kind"], "StatusReport");
    assert_eq!(report["settings"]["dormancyPeriodSecs"], 3600);
    let a = org_row(&report, &active)?;
    assert_eq!(a["state"], "Active");
    assert_eq!(a["pynodes"], json!({"total": 1, "warm": 1}));
    assert_eq!(a["models"], json!({"total": 1, "warm": 0}));
    assert_eq!(a["runningPods"], 2);
    assert_eq!(a["gpus"], 3);
    assert_eq!(a["namespaces"], json!([ns]));
    assert!(a["dormantAt"].is_string());
    let d = org_row(&report, &dormant)?;
    assert_eq!(d["state"], "Dormant");
    assert!(d["dormantSince"].is_string(), "{d}");
    assert_eq!(org_row(&report, &exempt)?["allowed"], false);

    // Filters: by state, and by label selector (no names: the cluster-wide path).
    let dormant_only = fx
        .s2z(&[
            "status",
            &active,
            &dormant,
            &exempt,
            "--dormant",
            "-o",
            "json",
        ])?
        .json()?;
    assert_eq!(names(&dormant_only), vec![dormant.clone()]);
    let active_only = fx
        .s2z(&[
            "status",
            "-l",
            &format!("s2z.dev/test={}", fx.env.id),
            "--active",
            "-o",
            "json",
        ])?
        .json()?;
    assert_eq!(names(&active_only), vec![active.clone()]);
    let selected = fx
        .s2z(&[
            "status",
            "-l",
            &format!("s2z.dev/test={}", fx.env.id),
            "-o",
            "json",
        ])?
        .json()?;
    let mut all = vec![active.clone(), dormant.clone(), exempt.clone()];
    all.sort();
    assert_eq!(names(&selected), all);
    assert_eq!(
        org_row(&selected, &active)?["gpus"],
        3,
        "same numbers via the cluster-wide lists"
    );

    // YAML and wide.
    let yaml = fx.s2z(&["status", &active, "-o", "yaml"])?;
    yaml.code(0);
    let doc: Value = serde_yaml::from_str(&yaml.stdout)?;
    assert_eq!(doc["kind"], "StatusReport");
    let wide = fx.s2z(&["status", &active, "-o", "wide"])?;
    wide.code(0);
    assert!(
        wide.stdout.contains("NAMESPACES") && wide.stdout.contains(&ns),
        "{wide:#?}"
    );

    // Colour only when asked.
    assert!(!run.stdout.contains('\x1b'));
    let coloured = fx.s2z(&["status", &active, "--color=always"])?;
    assert!(coloured.stdout.contains("\x1b["), "{coloured:#?}");

    Api::<Node>::all(fx.env.client.clone())
        .delete(&node, &DeleteParams::default())
        .await
        .ok();
    fx.cleanup().await
}

#[tokio::test]
async fn status_pages_through_more_revisions_than_one_page() -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    // The plugin lists 500 objects per page by default; 520 revisions need a continue token.
    const COUNT: usize = 520;
    let mut fx = Fixture::new("plg-pages").await?;
    let org = fx.org("a", json!({}), json!({}), None).await?;
    let ns = fx.org_namespace("a-ns", &org).await?;
    let client = fx.env.client.clone();
    futures::stream::iter(0..COUNT)
        .map(|i| {
            let (client, ns) = (client.clone(), ns.clone());
            async move {
                let min = if i % 2 == 0 { "1" } else { "0" };
                revision(
                    &client,
                    &ns,
                    &format!("web-{i:05}"),
                    json!({}),
                    json!({"autoscaling.knative.dev/min-scale": min}),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let selector = format!("s2z.dev/test={}", fx.env.id);
    // By name (lists in the org's namespace) and by selector (cluster-wide lists); with the
    // default chunk size, with 75 pages of 7, and in one request (`--chunk-size 0`).
    for args in [
        vec!["status", org.as_str()],
        vec!["status", "-l", selector.as_str()],
        vec!["status", org.as_str(), "--chunk-size", "7"],
        vec!["status", "-l", selector.as_str(), "--chunk-size=0"],
    ] {
        let mut args = args;
        args.extend(["-o", "json"]);
        let report = fx.s2z(&args)?.json()?;
        assert_eq!(
            org_row(&report, &org)?["pynodes"],
            json!({"total": COUNT, "warm": COUNT / 2}),
            "{args:?}"
        );
    }
    fx.cleanup().await
}

#[tokio::test]
async fn status_warns_when_the_rate_limit_outlasts_the_dormancy_period() -> Result<()> {
    let mut fx = Fixture::new("plg-warn").await?;
    fx.settings(&[
        ("orgDormancyPeriodSecs", "1800"),
        ("orgWarmupRatelimitStr", "2/hour"),
    ])
    .await?;
    let org = fx.org("a", json!({}), json!({}), None).await?;
    let run = fx.s2z(&["status", &org])?;
    run.code(0);
    assert!(
        run.stdout.contains("Warning: the orgWarmupRatelimitStr period (1h) is longer than the dormancy period (30m)"),
        "{run:#?}"
    );
    let report = fx.s2z(&["status", &org, "-o", "json"])?.json()?;
    assert_eq!(
        report["settings"]["warnings"].as_array().map(Vec::len),
        Some(1)
    );
    fx.cleanup().await
}

#[tokio::test]
async fn status_watch_prints_again_when_an_org_changes() -> Result<()> {
    let mut fx = Fixture::new("plg-watch").await?;
    let org = fx.org("a", json!({}), json!({}), None).await?;
    let mut child = s2z_command(&fx.env.plane, &["-n", &fx.sys, "status", &org, "--watch"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let renders = |want: usize| -> Result<()> {
        let mut seen = 0;
        let deadline = std::time::Instant::now() + WAIT;
        while seen < want {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx.recv_timeout(left).context("watch printed too little")?;
            if line.starts_with("Dormancy period:") {
                seen += 1;
            }
        }
        Ok(())
    };
    let first = renders(1);
    let changed = async {
        first?;
        // A change to the org: disabling it makes it Exempt.
        fx.s2z(&["disable", &org])?.code(0);
        renders(1)
    }
    .await;
    child.kill().ok();
    child.wait().ok();
    changed?;
    fx.cleanup().await
}

// ---------------------------------------------------------------------------------------------
// enable, disable, wake, sleep

#[tokio::test]
async fn toggles_write_the_org() -> Result<()> {
    let mut fx = Fixture::new("plg-toggle").await?;
    let org = fx
        .org(
            "a",
            json!({}),
            json!({}),
            Some(json!({"lastActivityAt": ago(2 * 86_400)})),
        )
        .await?;

    let run = fx.s2z(&["disable", &org])?;
    run.code(0);
    assert_eq!(
        run.stdout,
        format!(
            "org/{org}: scale to zero disabled; the controller restores its workloads' declared scale now (Exempt)\n"
        )
    );
    assert!(!fx.get_org(&org).await?.spec.scale_to_zero_allowed);
    let again = fx.s2z(&["disable", &org])?;
    again.code(0);
    assert!(
        again.stdout.contains("unchanged, already exempt"),
        "{again:#?}"
    );

    // Sleep is refused for an exempt org, and writes nothing.
    fx.s2z(&["sleep", &org])?
        .fails(3, "exempt from scale to zero");
    let annotations = fx
        .get_org(&org)
        .await?
        .metadata
        .annotations
        .unwrap_or_default();
    assert!(!annotations.contains_key(SLEEP));

    let run = fx.s2z(&["enable", &org, "-o", "json"])?;
    run.code(0);
    assert_eq!(run.json()?["spec"]["scaleToZeroAllowed"], true);
    assert!(fx.get_org(&org).await?.spec.scale_to_zero_allowed);

    // Wake records activity now: the org is active again.
    let run = fx.s2z(&["wake", &org])?;
    run.code(0);
    assert!(
        run.stdout
            .contains("activity recorded now (Active, dormant in"),
        "{run:#?}"
    );
    let woken = fx.get_org(&org).await?;
    let at = woken
        .status
        .and_then(|s| s.last_activity_at)
        .unwrap_or_default();
    let at: Timestamp = at.parse()?;
    assert!(
        Timestamp::now().duration_since(at) < SignedDuration::from_secs(60),
        "{at}"
    );

    // Sleep makes it dormant until the next activity.
    let run = fx.s2z(&["sleep", &org])?;
    run.code(0);
    assert!(
        run.stdout.contains("put to sleep until its next activity"),
        "{run:#?}"
    );
    assert!(
        fx.get_org(&org)
            .await?
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(SLEEP)
    );
    let report = fx.s2z(&["status", &org, "-o", "json"])?.json()?;
    assert_eq!(org_row(&report, &org)?["state"], "Dormant");

    // Waking removes the sleep request.
    fx.s2z(&["wake", &org])?.code(0);
    assert!(
        !fx.get_org(&org)
            .await?
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(SLEEP)
    );
    let report = fx.s2z(&["status", &org, "-o", "json"])?.json()?;
    assert_eq!(org_row(&report, &org)?["state"], "Active");
    fx.cleanup().await
}

#[tokio::test]
async fn unknown_orgs_fail_with_exit_7_and_write_nothing() -> Result<()> {
    let mut fx = Fixture::new("plg-unknown").await?;
    let known = fx.org("a", json!({}), json!({}), None).await?;
    let missing = fx.env.name("nope");
    for cmd in ["enable", "disable", "wake", "sleep", "status", "sweep"] {
        let run = fx.s2z(&[cmd, &known, &missing])?;
        run.fails(7, &format!("failed to find org/{missing}: no such org"));
        assert!(run.stderr.contains("hint: "), "{run:#?}");
    }
    let org = fx.get_org(&known).await?;
    assert!(org.spec.scale_to_zero_allowed, "disable wrote nothing");
    assert!(
        org.metadata.annotations.unwrap_or_default().is_empty(),
        "sleep/sweep wrote nothing"
    );
    assert!(
        org.status.and_then(|s| s.last_activity_at).is_none(),
        "wake wrote nothing"
    );
    fx.cleanup().await
}

// ---------------------------------------------------------------------------------------------
// settings

#[tokio::test]
async fn settings_show_and_set() -> Result<()> {
    let fx = Fixture::new("plg-settings").await?;

    let run = fx.s2z(&["settings"])?;
    run.code(0);
    assert!(
        run.stdout.contains(&format!(
            "defaults (no configmap/s2z-settings in {})",
            fx.sys
        )),
        "{run:#?}"
    );
    assert!(run.stdout.contains("1d"), "{run:#?}");

    // Seed 000's example, in human form; the ConfigMap is created.
    let run = fx.s2z(&[
        "settings",
        "set",
        "--dormancy-period",
        "2h",
        "--warmup-ratelimit",
        "2/hour",
        "--ratelimit-enabled=false",
    ])?;
    run.code(0);
    assert!(run.stdout.contains("created"), "{run:#?}");
    assert!(
        run.stdout
            .contains("orgDormancyPeriodSecs: default 86400 (1d) -> 7200 (2h)"),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains("the controller re-evaluates every org now"),
        "{run:#?}"
    );
    let data = fx.settings_data().await?.unwrap_or_default();
    assert_eq!(
        data.get("orgDormancyPeriodSecs").map(String::as_str),
        Some("7200")
    );
    assert_eq!(
        data.get("orgWarmupRatelimitStr").map(String::as_str),
        Some("2/hour")
    );
    assert_eq!(
        data.get("ratelimitEnabled").map(String::as_str),
        Some("false")
    );

    let shown = fx.s2z(&["settings", "-o", "json"])?.json()?;
    assert_eq!(shown["kind"], "SettingsReport");
    assert_eq!(shown["settings"]["orgDormancyPeriodSecs"], 7200);
    assert_eq!(shown["settings"]["ratelimitEnabled"], false);
    assert_eq!(shown["defaulted"], json!(["sweepIntervalSecs"]));

    // Unsafe: a rate-limit period (1h) longer than the dormancy period (30m). Refused...
    let before = fx.settings_data().await?;
    fx.s2z(&[
        "settings",
        "set",
        "--dormancy-period",
        "30m",
        "--ratelimit-enabled",
    ])?
    .fails(3, "longer than the dormancy period");
    assert_eq!(fx.settings_data().await?, before, "nothing written");
    // ...unless forced, and then it says what will happen.
    let run = fx.s2z(&[
        "settings",
        "set",
        "--dormancy-period",
        "30m",
        "--ratelimit-enabled",
        "--force",
    ])?;
    run.code(0);
    assert!(
        run.stderr.contains("warning: applying anyway (--force)"),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("a busy org may briefly go dormant"),
        "{run:#?}"
    );
    let data = fx.settings_data().await?.unwrap_or_default();
    assert_eq!(
        data.get("orgDormancyPeriodSecs").map(String::as_str),
        Some("1800")
    );

    // Bad values: usage errors, no usage text, nothing written.
    let before = fx.settings_data().await?;
    for (flag, value, message) in [
        (
            "--dormancy-period",
            "soon",
            "failed to read --dormancy-period: failed to parse duration \"soon\"",
        ),
        ("--dormancy-period", "0", "must be longer than zero"),
        (
            "--warmup-ratelimit",
            "2 per hour",
            "failed to read --warmup-ratelimit: rate limit \"2 per hour\"",
        ),
        ("--ratelimit-enabled", "maybe", "\"maybe\" is not a boolean"),
    ] {
        fx.s2z(&["settings", "set", flag, value])?.fails(2, message);
    }
    fx.s2z(&["settings", "set"])?.fails(2, "no setting given");
    assert_eq!(fx.settings_data().await?, before, "nothing written");

    // Dry run: checked by the API server, not written.
    let run = fx.s2z(&["settings", "set", "--dormancy-period", "4h", "--dry-run"])?;
    run.code(0);
    assert!(
        run.stdout.contains("would update") && run.stdout.contains("dry run"),
        "{run:#?}"
    );
    assert_eq!(fx.settings_data().await?, before);

    // An install namespace that does not exist.
    let nowhere = fx.env.name("nowhere");
    let run = s2z(
        &fx.env,
        &["-n", &nowhere, "settings", "set", "--dormancy-period", "2h"],
    )?;
    run.fails(5, &format!("namespace {nowhere} does not exist"));
    fx.cleanup().await
}

// ---------------------------------------------------------------------------------------------
// sweep

/// An org idle for 2h with a 1h dormancy period (this test's settings) but still reported
/// Active, with one warm pynode revision. A controller running with the default 1d period would
/// keep it Active, so the plan below holds whether or not a controller runs.
async fn idle_org(fx: &mut Fixture) -> Result<(String, String)> {
    fx.settings(&[
        ("orgDormancyPeriodSecs", "3600"),
        ("orgWarmupRatelimitStr", "2/hour"),
    ])
    .await?;
    let org = fx
        .org(
            "idle",
            json!({}),
            json!({}),
            Some(json!({"lastActivityAt": ago(2 * 3600), "state": "Active"})),
        )
        .await?;
    let ns = fx.org_namespace("idle-ns", &org).await?;
    revision(
        &fx.env.client,
        &ns,
        "web-00001",
        json!({}),
        json!({"autoscaling.knative.dev/min-scale": "1"}),
    )
    .await?;
    Ok((org, ns))
}

fn written_by_plugin(meta: &kube::api::ObjectMeta) -> bool {
    meta.managed_fields
        .iter()
        .flatten()
        .any(|f| f.manager.as_deref() == Some("kubectl-s2z"))
}

#[tokio::test]
async fn sweep_dry_run_lists_flips_and_revision_changes_and_writes_nothing() -> Result<()> {
    let mut fx = Fixture::new("plg-dryrun").await?;
    let (idle, ns) = idle_org(&mut fx).await?;
    let busy = fx
        .org(
            "busy",
            json!({}),
            json!({}),
            Some(json!({"lastActivityAt": ago(60), "state": "Active"})),
        )
        .await?;

    let run = fx.s2z(&["sweep", "--dry-run", &idle, &busy])?;
    run.code(0);
    assert!(
        run.stdout
            .starts_with("Would flip 1 org and change 1 revision (2 orgs checked):"),
        "{run:#?}"
    );
    let row = run.stdout.lines().find(|l| l.starts_with(idle.as_str()));
    assert!(
        row.is_some_and(|l| l.contains("Active") && l.contains("Dormant")),
        "{run:#?}"
    );
    assert!(
        !run.stdout.lines().any(|l| l.starts_with(busy.as_str())),
        "{run:#?}"
    );
    let rev = run.stdout.lines().find(|l| l.contains("web-00001"));
    assert!(
        rev.is_some_and(|l| l.contains(&ns)
            && l.contains("pynode")
            && l.contains("min-scale 1 -> 0")),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("dry run: nothing was written"),
        "{run:#?}"
    );

    let report = fx
        .s2z(&["sweep", "--dry-run", &idle, &busy, "-o", "json"])?
        .json()?;
    assert_eq!(report["kind"], "SweepReport");
    assert_eq!(report["dryRun"], true);
    assert_eq!(report["orgsChecked"], 2);
    assert_eq!(names(&report), vec![idle.clone()]);
    let flip = org_row(&report, &idle)?;
    assert_eq!(
        (flip["from"].as_str(), flip["to"].as_str()),
        (Some("Active"), Some("Dormant"))
    );
    assert_eq!(flip["result"], "planned");
    let change = report["revisions"][0]["changes"]
        .as_array()
        .and_then(|c| {
            c.iter()
                .find(|c| c["key"] == "autoscaling.knative.dev/min-scale")
        })
        .cloned()
        .unwrap_or_default();
    assert_eq!(change["to"], "0", "{report:#}");

    // Nothing written: no request on the org, the plugin never touched the revision.
    let org = fx.get_org(&idle).await?;
    assert!(!written_by_plugin(&org.metadata));
    assert!(
        !org.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(RECONCILE_ANNOTATION)
    );
    let (revisions, _) = revisions_api(&fx.env.client, &ns);
    assert!(!written_by_plugin(
        &revisions.get("web-00001").await?.metadata
    ));

    // Nothing due: says so.
    let run = fx.s2z(&["sweep", "--dry-run", &busy])?;
    run.code(0);
    assert!(run.stdout.starts_with("Nothing to sweep"), "{run:#?}");
    fx.cleanup().await
}

#[tokio::test]
async fn sweep_times_out_when_no_controller_reports() -> Result<()> {
    let mut fx = Fixture::new("plg-timeout").await?;
    let (idle, _) = idle_org(&mut fx).await?;
    let run = fx.s2z(&["sweep", &idle, "--timeout", "3s"])?;
    // No controller reports Dormant for this org under these settings (see idle_org), so the
    // wait always ends in the timeout.
    run.code(8);
    assert!(
        run.stderr.contains(&format!("error: failed to confirm the sweep: the controller did not report 1 of 1 org within 3s (org/{idle})")),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("the s2z controller may not be running"),
        "{run:#?}"
    );
    assert!(run.stdout.contains("pending"), "{run:#?}");
    let org = fx.get_org(&idle).await?;
    assert!(
        org.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(RECONCILE_ANNOTATION),
        "the request was written"
    );
    fx.cleanup().await
}

/// Stands in for the controller for one org: when the sweep's request appears, reports the org
/// evaluated as Dormant.
async fn answer_sweep(client: kube::Client, org: String) -> Result<()> {
    let api: Api<Org> = Api::all(client);
    eventually("the sweep's request", WAIT, || async {
        let o = api.get(&org).await?;
        Ok(o.metadata
            .annotations
            .unwrap_or_default()
            .contains_key(RECONCILE_ANNOTATION)
            .then_some(()))
    })
    .await?;
    let now = Timestamp::now().round(Unit::Millisecond)?.to_string();
    api.patch_status(
        &org,
        &PatchParams::default(),
        &Patch::Merge(
            json!({"status": {"state": "Dormant", "stateSince": now, "lastEvaluatedAt": now}}),
        ),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn sweep_waits_until_the_controller_reports_the_flip() -> Result<()> {
    let mut fx = Fixture::new("plg-sweep").await?;
    let (idle, _) = idle_org(&mut fx).await?;
    let answer = tokio::spawn(answer_sweep(fx.env.client.clone(), idle.clone()));
    let (plane, sys, name) = (fx.env.plane.clone(), fx.sys.clone(), idle.clone());
    let run = tokio::task::spawn_blocking(move || {
        run_with(
            &plane,
            None,
            &["-n", &sys, "sweep", &name, "--timeout", "45s", "-o", "json"],
        )
    })
    .await??;
    answer.await??;
    run.code(0);
    let report = run.json()?;
    assert_eq!(report["dryRun"], false);
    let flip = org_row(&report, &idle)?;
    assert_eq!(
        (flip["to"].as_str(), flip["result"].as_str()),
        (Some("Dormant"), Some("applied"))
    );
    fx.cleanup().await
}

// ---------------------------------------------------------------------------------------------
// version, completion, output plumbing

#[tokio::test]
async fn version_shows_client_and_webhook() -> Result<()> {
    let fx = Fixture::new("plg-version").await?;
    let run = fx.s2z(&["version"])?;
    run.code(0);
    assert!(
        run.stdout
            .starts_with(&format!("Client Version: {}\n", env!("CARGO_PKG_VERSION"))),
        "{run:#?}"
    );
    assert!(
        run.stdout.contains(&format!(
            "Webhook Version: not installed (no lease/s2z-controller in {})",
            fx.sys
        )),
        "{run:#?}"
    );
    assert!(
        run.stdout
            .contains(&format!("Kubernetes Version: {}", fx.env.plane.version)),
        "{run:#?}"
    );

    // The leader's Lease carries the webhook's version.
    let lease: Lease = serde_json::from_value(json!({
        "metadata": {"name": "s2z-controller", "annotations": {"s2z.dev/version": "9.8.7"}},
        "spec": {"holderIdentity": "s2z-webhook-abc"},
    }))?;
    Api::<Lease>::namespaced(fx.env.client.clone(), &fx.sys)
        .create(&PostParams::default(), &lease)
        .await?;
    let run = fx.s2z(&["version"])?;
    run.code(0);
    assert!(
        run.stdout
            .contains("Webhook Version: 9.8.7 (leader s2z-webhook-abc)"),
        "{run:#?}"
    );
    let doc = fx.s2z(&["version", "-o", "json"])?.json()?;
    assert_eq!(doc["kind"], "VersionReport");
    assert_eq!(doc["webhook"]["version"], "9.8.7");
    assert_eq!(doc["webhook"]["status"], "installed");

    let run = fx.s2z(&["version", "--client"])?;
    run.code(0);
    assert_eq!(
        run.stdout,
        format!("Client Version: {}\n", env!("CARGO_PKG_VERSION"))
    );
    fx.cleanup().await
}

#[tokio::test]
async fn completion_scripts() -> Result<()> {
    let env = TestEnv::new("plg-completion").await?;
    for shell in ["bash", "zsh", "fish"] {
        let run = s2z(&env, &["completion", shell])?;
        run.code(0);
        assert!(
            run.stdout.contains("kubectl-s2z") && run.stdout.contains("sweep"),
            "{shell}"
        );
    }
    let run = s2z(&env, &["completion", "powershell"])?;
    run.code(2);
    Ok(())
}

#[tokio::test]
async fn a_closed_pipe_exits_0() -> Result<()> {
    let env = TestEnv::new("plg-pipe").await?;
    let mut child = s2z_command(&env.plane, &["completion", "zsh"])?
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Close our end before the plugin writes: its writes fail with EPIPE.
    drop(child.stdout.take());
    let out = child.wait_with_output()?;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Clusters that cannot be used

fn write_kubeconfig(dir: &Path, plane: &Plane, server: &str) -> Result<PathBuf> {
    let admin = std::fs::read_to_string(&plane.admin_kubeconfig)?;
    let mut doc: Value = serde_yaml::from_str(&admin)?;
    for cluster in doc["clusters"].as_array_mut().into_iter().flatten() {
        cluster["cluster"]["server"] = json!(server);
    }
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&doc)?)?;
    Ok(path)
}

#[tokio::test]
async fn unusable_clusters_fail_with_exit_4() -> Result<()> {
    let env = TestEnv::new("plg-unreach").await?;
    let dir = tempfile::tempdir()?;
    // Nothing listens on port 1.
    let kubeconfig = write_kubeconfig(dir.path(), &env.plane, "https://127.0.0.1:1")?;
    let kc = kubeconfig.to_string_lossy().to_string();
    for args in [
        vec!["status"],
        vec!["enable", "acme"],
        vec!["settings"],
        vec!["sweep", "--dry-run"],
    ] {
        let mut full = vec!["--kubeconfig", kc.as_str()];
        full.extend(args);
        s2z(&env, &full)?.fails(4, "cannot reach the cluster at https://127.0.0.1:1");
    }
    s2z(&env, &["status", "--context", "no-such-context"])?.fails(4, "failed to load kubeconfig");
    s2z(&env, &["status", "--kubeconfig", "/no/such/kubeconfig"])?
        .fails(4, "failed to load kubeconfig");
    s2z(&env, &["status", "--request-timeout", "soon"])?
        .fails(2, "failed to read --request-timeout");
    // version stays useful: the client's version, and "unknown" for the cluster.
    let run = s2z(&env, &["--kubeconfig", &kc, "version"])?;
    run.code(0);
    assert!(
        run.stdout.contains(
            "Webhook Version: unknown (failed to get leases.coordination.k8s.io/s2z-controller"
        ),
        "{run:#?}"
    );
    // Usage errors do print usage, with clap's exit code 2.
    let run = s2z(&env, &["status", "--no-such-flag"])?;
    run.code(2);
    assert!(run.stderr.contains("Usage:"), "{run:#?}");
    Ok(())
}

#[tokio::test]
async fn a_cluster_without_s2z_fails_with_exit_5() -> Result<()> {
    let env = TestEnv::new("plg-nocrd").await?;
    // An API server that does not serve orgs.s2z.dev answers `404 page not found`. Other tests
    // install the CRD on the shared plane, so this test reaches the same answer from the same
    // API server by giving the plugin a base path the server does not serve.
    let dir = tempfile::tempdir()?;
    let kubeconfig = write_kubeconfig(
        dir.path(),
        &env.plane,
        &format!("{}/no-s2z-here", env.plane.server),
    )?;
    let kc = kubeconfig.to_string_lossy().to_string();
    for args in [
        vec!["status"],
        vec!["wake", "acme"],
        vec!["sweep", "--dry-run"],
    ] {
        let mut full = vec!["--kubeconfig", kc.as_str()];
        full.extend(args);
        s2z(&env, &full)?.fails(
            5,
            "failed to list orgs.s2z.dev: the orgs.s2z.dev CustomResourceDefinition is not installed on this cluster",
        );
    }
    Ok(())
}

#[tokio::test]
async fn rbac_refusals_name_the_verb_and_resource() -> Result<()> {
    let mut fx = Fixture::new("plg-rbac").await?;
    let org = fx.org("a", json!({}), json!({}), None).await?;
    let restricted = fx.env.plane.restricted_kubeconfig.clone();
    let as_restricted = |args: &[&str]| -> Result<Run> {
        let mut full = vec!["-n", fx.sys.as_str()];
        full.extend_from_slice(args);
        run_with(&fx.env.plane, Some(&restricted), &full)
    };
    // `view` does not cover orgs.s2z.dev: listing them is forbidden.
    let run = as_restricted(&["status", &org])?;
    run.fails(6, "failed to list orgs.s2z.dev: forbidden:");
    assert!(
        run.stderr.contains("cannot list resource \"orgs\""),
        "{run:#?}"
    );
    assert!(
        run.stderr.contains("kubectl auth can-i list orgs.s2z.dev"),
        "{run:#?}"
    );
    as_restricted(&["disable", &org])?.fails(6, "failed to list orgs.s2z.dev: forbidden:");
    assert!(
        fx.get_org(&org).await?.spec.scale_to_zero_allowed,
        "nothing written"
    );
    // `view` may read ConfigMaps but not write them.
    let run = as_restricted(&["settings", "set", "--dormancy-period", "2h"])?;
    run.fails(6, "failed to create configmaps in namespace");
    assert!(
        run.stderr.contains(&format!(
            "kubectl auth can-i create configmaps -n {}",
            fx.sys
        )),
        "{run:#?}"
    );
    assert_eq!(fx.settings_data().await?, None, "nothing written");
    fx.cleanup().await
}

#[tokio::test]
async fn kubectl_finds_the_plugin() -> Result<()> {
    let env = TestEnv::new("plg-list").await?;
    let dir = plugin_dir()?;
    let out = kubectl(&env.plane, &[&dir], &["plugin", "list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kubectl-s2z"), "{text}");
    let run = s2z(&env, &["--help"])?;
    run.code(0);
    assert!(
        run.stdout.contains("Usage: kubectl s2z") && run.stdout.contains("Exit codes:"),
        "{run:#?}"
    );
    Ok(())
}
