//! Support for the defrag tests and the reaction-time bench: private fake GPU nodes, Knative-like
//! revisions (Revision, PodAutoscaler, and a Deployment labelled the way Knative labels it), a
//! stand-in for Knative's autoscaler, and `kubectl s2z defrag` run through the real kubectl with
//! its output read line by line as it is printed.

#![allow(dead_code)] // Each user (tests, bench) needs a different subset.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use s2z_tests::env::eventually;
use s2z_tests::plane::repo_root;
use s2z_tests::{Plane, TestEnv};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What a defrag test starts from: its own env and namespace, private GPU nodes, and the
/// stand-in for Knative's autoscaler. [`Fixture::finish`] undoes it all.
pub struct Fixture {
    pub env: TestEnv,
    pub ns: String,
    pub nodes: Vec<String>,
    autoscaler: Option<tokio::task::JoinHandle<()>>,
}

impl Fixture {
    /// Nodes with `gpus` GPUs each, the ones marked in `cordoned` created unschedulable, and
    /// the fake autoscaler keeping every PodAutoscaler's `actualScale` up to date.
    pub async fn new(name: &str, gpus: &[u32], cordoned: &[bool]) -> Result<Self> {
        let mut fx = Self::bare(name, gpus, cordoned).await?;
        fx.autoscaler = Some(fake_autoscaler(fx.env.client.clone(), &fx.ns));
        Ok(fx)
    }

    /// The same without the autoscaler: PodAutoscalers stay as the test writes them.
    pub async fn bare(name: &str, gpus: &[u32], cordoned: &[bool]) -> Result<Self> {
        let mut env = TestEnv::new(name).await?;
        let ns = env.namespace("ns", &[]).await?;
        let nodes = private_nodes(&env, gpus, cordoned).await?;
        Ok(Self {
            env,
            ns,
            nodes,
            autoscaler: None,
        })
    }

    /// Stops the autoscaler, deletes the nodes and the test's objects.
    pub async fn finish(self) -> Result<()> {
        if let Some(autoscaler) = self.autoscaler {
            autoscaler.abort();
        }
        delete_nodes(&self.env, &self.nodes).await;
        self.env.cleanup().await
    }
}

/// Bound on every wait: a broken run fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(90);
/// Knative's revision label.
pub const REVISION: &str = "serving.knative.dev/revision";
/// Knative's revision UID label (the Deployment's selector).
pub const REVISION_UID: &str = "serving.knative.dev/revisionUID";
/// The label s2z puts on orphans.
pub const ORPHAN_LABEL: &str = "s2z.dev/defrag-node";
/// The GPU model the private nodes advertise.
pub use s2z_tests::nodes::{delete_nodes, private_nodes};

/// Knative's PodAutoscaler.
pub fn pa_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "autoscaling.internal.knative.dev",
            "v1alpha1",
            "PodAutoscaler",
        ),
        "podautoscalers",
    )
}

/// Knative's Revision.
pub fn revision_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
        "revisions",
    )
}

/// The directory holding the built `kubectl-s2z` (`S2Z_PLUGIN_DIR`, else `target/debug`).
pub fn plugin_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("S2Z_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/debug"));
    if !dir.join("kubectl-s2z").exists() {
        bail!(
            "{} has no kubectl-s2z: run `cargo build -p kubectl-s2z` first (make test does)",
            dir.display()
        );
    }
    Ok(dir)
}

/// Sets a node's `spec.unschedulable`.
pub async fn set_cordon(env: &TestEnv, node: &str, cordoned: bool) -> Result<()> {
    Api::<Node>::all(env.client.clone())
        .patch(
            node,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"unschedulable": cordoned}})),
        )
        .await
        .with_context(|| format!("set unschedulable={cordoned} on {node}"))?;
    Ok(())
}

/// What a test revision is made of.
#[derive(Debug, Clone)]
pub struct Rev {
    /// Namespace.
    pub ns: String,
    /// Revision (and PodAutoscaler) name.
    pub name: String,
    /// Its Deployment.
    pub deployment: String,
}

/// Creates a Knative-like revision: the Revision, its PodAutoscaler (unless `autoscaler` is
/// false) and a Deployment `<rev>-deployment` whose pods carry Knative's labels, land on the
/// test's private nodes, and hold one GPU each. `pod_annotations` go on the pod template.
pub async fn revision(
    env: &TestEnv,
    ns: &str,
    name: &str,
    replicas: i32,
    autoscaler: bool,
    pod_annotations: serde_json::Value,
) -> Result<Rev> {
    let revisions: Api<DynamicObject> =
        Api::namespaced_with(env.client.clone(), ns, &revision_resource());
    let mut rev = DynamicObject::new(name, &revision_resource());
    rev.data = json!({"spec": {"containerConcurrency": 0}});
    let rev = revisions
        .create(&PostParams::default(), &rev)
        .await
        .with_context(|| format!("create revision {name}"))?;
    let uid = rev.metadata.uid.clone().unwrap_or_default();
    if autoscaler {
        let mut pa = DynamicObject::new(name, &pa_resource());
        pa.metadata.labels = Some(BTreeMap::from([
            (REVISION.to_string(), name.to_string()),
            (REVISION_UID.to_string(), uid.clone()),
        ]));
        pa.data = json!({"spec": {"protocolType": "http1",
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("{name}-deployment")}}});
        Api::<DynamicObject>::namespaced_with(env.client.clone(), ns, &pa_resource())
            .create(&PostParams::default(), &pa)
            .await
            .with_context(|| format!("create podautoscaler {name}"))?;
    }
    let deployment = format!("{name}-deployment");
    let d: Deployment = serde_json::from_value(json!({
        "metadata": {"name": deployment, "labels": {REVISION: name, REVISION_UID: uid}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {REVISION_UID: uid}},
            "template": {
                "metadata": {"labels": {REVISION: name, REVISION_UID: uid, "app": name},
                             "annotations": pod_annotations},
                "spec": {
                    "nodeSelector": {"s2z.dev/test": env.id},
                    "tolerations": [{"key": "s2z.dev/test", "operator": "Equal", "value": env.id, "effect": "NoSchedule"}],
                    "containers": [{"name": "user-container", "image": "example.invalid/model:1",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
                },
            },
        },
    }))?;
    Api::<Deployment>::namespaced(env.client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .with_context(|| format!("create deployment {deployment}"))?;
    Ok(Rev {
        ns: ns.into(),
        name: name.into(),
        deployment,
    })
}

/// Sets a Deployment's replicas, as Knative's autoscaler does through the scale subresource.
pub async fn scale(env: &TestEnv, rev: &Rev, replicas: i32) -> Result<()> {
    Api::<Deployment>::namespaced(env.client.clone(), &rev.ns)
        .patch(
            &rev.deployment,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await
        .with_context(|| format!("scale {} to {replicas}", rev.deployment))?;
    Ok(())
}

/// Ready and not being deleted: what Knative routes to and counts.
pub fn serving(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status.as_ref().is_some_and(|s| {
            s.phase.as_deref() == Some("Running")
                && s.conditions
                    .as_ref()
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
}

/// The node a pod is bound to.
pub fn node_of(p: &Pod) -> String {
    p.spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default()
}

/// The pods of a revision.
pub async fn pods_of(env: &TestEnv, rev: &Rev) -> Result<Vec<Pod>> {
    Ok(Api::<Pod>::namespaced(env.client.clone(), &rev.ns)
        .list(&ListParams::default().labels(&format!("{REVISION}={}", rev.name)))
        .await?
        .items)
}

/// Waits until `count` pods of the revision serve, all on `node` when given.
pub async fn wait_serving(
    env: &TestEnv,
    rev: &Rev,
    count: usize,
    node: Option<&str>,
) -> Result<Vec<Pod>> {
    eventually(
        &format!("{count} serving pods of {}", rev.name),
        WAIT,
        || async {
            let pods: Vec<Pod> = pods_of(env, rev)
                .await?
                .into_iter()
                .filter(serving)
                .collect();
            let placed = node.is_none_or(|n| pods.iter().all(|p| node_of(p) == n));
            Ok((pods.len() == count && placed).then_some(pods))
        },
    )
    .await
}

/// The PodAutoscaler's `status.actualScale`.
pub async fn actual_scale(env: &TestEnv, rev: &Rev) -> Result<Option<i64>> {
    let pa = Api::<DynamicObject>::namespaced_with(env.client.clone(), &rev.ns, &pa_resource())
        .get(&rev.name)
        .await?;
    Ok(pa.data["status"]["actualScale"].as_i64())
}

/// Waits until the PodAutoscaler reports `scale`.
pub async fn wait_scale(env: &TestEnv, rev: &Rev, scale: i64) -> Result<()> {
    eventually(
        &format!("actualScale {scale} on {}", rev.name),
        WAIT,
        || async { Ok((actual_scale(env, rev).await? == Some(scale)).then_some(())) },
    )
    .await
}

/// Plays Knative's autoscaler for the namespace: keeps each PodAutoscaler's `actualScale` equal
/// to the number of serving pods labelled with its revision, orphans included, reacting to a
/// pod watch. Abort the handle at the end of the test.
pub fn fake_autoscaler(client: kube::Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pas: Api<DynamicObject> = Api::namespaced_with(client, ns, &pa_resource());
    tokio::spawn(async move {
        let mut stream = watcher(pods, watcher::Config::default().labels(REVISION))
            .default_backoff()
            .boxed();
        let mut live: BTreeMap<String, (String, bool)> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, (String, bool)>> = None;
        let mut written: BTreeMap<String, i64> = BTreeMap::new();
        let facts = |p: &Pod| {
            let rev = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION).cloned())
                .unwrap_or_default();
            (
                p.metadata.uid.clone().unwrap_or_default(),
                (rev, serving(p)),
            )
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => listing = Some(BTreeMap::new()),
                Ok(Event::InitApply(p)) => {
                    let (uid, f) = facts(&p);
                    listing.get_or_insert_with(BTreeMap::new).insert(uid, f);
                }
                Ok(Event::InitDone) => live = listing.take().unwrap_or_default(),
                Ok(Event::Apply(p)) => {
                    let (uid, f) = facts(&p);
                    live.insert(uid, f);
                }
                Ok(Event::Delete(p)) => {
                    live.remove(p.metadata.uid.as_deref().unwrap_or_default());
                }
                Err(_) => continue,
            }
            if listing.is_some() {
                continue;
            }
            let mut counts: BTreeMap<String, i64> = BTreeMap::new();
            for (rev, ready) in live.values() {
                *counts.entry(rev.clone()).or_default() += i64::from(*ready);
            }
            let revs: BTreeSet<String> = counts.keys().chain(written.keys()).cloned().collect();
            for rev in revs {
                let n = counts.get(&rev).copied().unwrap_or(0);
                if written.get(&rev) == Some(&n) {
                    continue;
                }
                let patch = Patch::Merge(json!({"status": {"actualScale": n, "desiredScale": n}}));
                if pas
                    .patch_status(&rev, &PatchParams::default(), &patch)
                    .await
                    .is_ok()
                {
                    written.insert(rev, n);
                }
            }
        }
    })
}

/// A `kubectl s2z defrag` running in the background, its stdout read line by line with the
/// instant each line arrived.
pub struct Running {
    /// The kubectl process; kubectl execs the plugin, so this is the plugin's pid.
    pub child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<(Instant, String)>,
    /// Every stdout line so far.
    pub stdout: Vec<String>,
    stderr: tokio::task::JoinHandle<String>,
}

/// Starts `kubectl s2z <args>` through the real kubectl, with the plugin first on PATH.
pub fn spawn(plane: &Plane, args: &[&str]) -> Result<Running> {
    spawn_as(plane, &plane.admin_kubeconfig, args)
}

/// Like [`spawn`] as another identity.
pub fn spawn_as(plane: &Plane, kubeconfig: &std::path::Path, args: &[&str]) -> Result<Running> {
    let mut path = vec![plugin_dir()?, plane.bin_dir.clone()];
    if let Some(old) = std::env::var_os("PATH") {
        path.extend(std::env::split_paths(&old));
    }
    let mut child = tokio::process::Command::new(plane.bin_dir.join("kubectl"))
        .arg("s2z")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("PATH", std::env::join_paths(path)?)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("failed to start kubectl s2z")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut stderr = child.stderr.take().context("no stderr")?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    Ok(Running {
        child,
        lines: rx,
        stdout: Vec::new(),
        stderr,
    })
}

impl Running {
    /// Waits for a stdout line matching `pred`; returns when it arrived and the line.
    pub async fn line(
        &mut self,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(Instant, String)> {
        let deadline = Instant::now() + WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some((at, line))) => {
                    self.stdout.push(line.clone());
                    if pred(&line) {
                        return Ok((at, line));
                    }
                }
                Ok(None) => bail!("output ended before {what}:\n{}", self.stdout.join("\n")),
                Err(_) => bail!("timed out waiting for {what}:\n{}", self.stdout.join("\n")),
            }
        }
    }

    /// Fails if a line matching `pred` arrives within `window`.
    pub async fn no_line(
        &mut self,
        what: &str,
        window: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + window;
        while let Ok(Some((_, line))) = tokio::time::timeout_at(deadline, self.lines.recv()).await {
            self.stdout.push(line.clone());
            if pred(&line) {
                bail!("{what} appeared too early:\n{}", self.stdout.join("\n"));
            }
        }
        Ok(())
    }

    /// Sends a signal to the plugin.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().context("process already exited")?;
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Waits for the exit; returns the status, all of stdout and stderr.
    pub async fn finish(mut self) -> Result<(ExitStatus, String, String)> {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .context("kubectl s2z did not exit")??;
        while let Some((_, line)) = self.lines.recv().await {
            self.stdout.push(line);
        }
        let stderr = self.stderr.await.unwrap_or_default();
        Ok((status, self.stdout.join("\n"), stderr))
    }
}

/// Runs `kubectl s2z <args>` to completion: (exit code, stdout, stderr). Async, so that the
/// test's own background tasks (the fake autoscaler) keep running meanwhile.
pub async fn run(plane: &Plane, args: &[&str]) -> Result<(i32, String, String)> {
    run_as(plane, &plane.admin_kubeconfig, args).await
}

/// Like [`run`] as another identity.
pub async fn run_as(
    plane: &Plane,
    kubeconfig: &std::path::Path,
    args: &[&str],
) -> Result<(i32, String, String)> {
    let running = spawn_as(plane, kubeconfig, args)?;
    let (status, stdout, stderr) = running.finish().await?;
    Ok((status.code().unwrap_or(-1), stdout, stderr))
}
