//! The deploy spike, measured on real Knative Serving (issue 7, item 4): N orgs, most of them
//! dormant, each with a pynode (a Knative Service) and a model (a real KServe
//! InferenceService whose predictor declares `minReplicas` and one GPU a pod; KServe's
//! controller makes its Knative Service), all redeployed at once (a new Revision each), once without s2z and once
//! with it, each on a clean slate. Prints pods started, GPU-seconds held in the window after the
//! redeploy and revisions created, split by dormant and active orgs.
//!
//!     make bench-spike                      # or:
//!     cargo build -p s2z-webhook && cargo run -p s2z-tests --example spike -- --help
//!
//! The program starts its own plane (`s2z-cluster up --kserve --nodes 12 --gpus-per-node 8`
//! under `.state/bench-spike`) and stops it at the end (`--keep` leaves it running).
//!
//! Each run starts from the same state, made with s2z running (webhook registered, controller
//! on): the dormant orgs' services exist with zero pods (their first Revision was born at zero,
//! as s2z leaves a dormant org on a real cluster), the active orgs' services are warm. Then:
//! - without s2z: the webhook configuration is deleted and the s2z process (webhook and
//!   controller) stopped before the redeploy;
//! - with s2z: both stay.
//!
//! Counted: pods of the Revisions the redeploy created. GPU-seconds integrate, over the window,
//! the time each of those pods was bound to a node (from its PodScheduled transition to its
//! deletion or the end of the window) times its GPUs.
//!
//! Knative scales for real here: the autoscaler scrapes every pod (s2z-podnet answers as its
//! queue-proxy), so a pod of a revision allowed to scale to zero (effective min-scale 0) is
//! removed once idle (upstream defaults: 60 s stable window, then 30 s scale-to-zero grace), and
//! its end is observed, as is every other figure. Models declare min-scale >= 1, so Knative keeps
//! their pods for the whole window. The last row counts what is still held when the window closes.
//!
//! Exits non-zero when, with s2z, a dormant org started a pod or a redeployed service did not
//! get exactly one Revision.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use chrono::{DateTime, Utc};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use s2z_core::labels::{INITIAL_SCALE, MIN_SCALE, SLEEP_ANNOTATION};
use s2z_core::org::{Org, OrgState};
use s2z_tests::plane::{client_for, knative_plane_at, plane_down_at, repo_root};
use s2z_tests::scale::serving;
use s2z_tests::spike::{Figures, Group, PodLife, by_group, table};
use s2z_tests::webhook::{WebhookProcess, delete_mwc, ensure_org_crd, register_mwc};
use s2z_tests::{Plane, kserve};
use serde_json::{Value, json};

/// The deploy-spike measurement on real Knative.
#[derive(Debug, Parser)]
struct Args {
    /// Orgs, each with one pynode and one model.
    #[arg(long, default_value_t = 60)]
    orgs: usize,
    /// How many of them are dormant.
    #[arg(long, default_value_t = 50)]
    dormant: usize,
    /// Seconds observed after the redeploy.
    #[arg(long, default_value_t = 300)]
    window: u64,
    /// The models' declared min-scale (KServe `minReplicas`).
    #[arg(long, default_value_t = 1)]
    model_min_scale: u32,
    /// State directory of the plane.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// KWOK GPU nodes.
    #[arg(long, default_value_t = 12)]
    nodes: u32,
    /// GPUs per node.
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// Leave the plane running at the end.
    #[arg(long)]
    keep: bool,
}

const IMAGE: &str = "example.invalid/s2z/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const PYNODE: &str = "pynode";
/// The model's InferenceService, and the Knative Service KServe makes for its predictor (what
/// the bench counts by).
const MODEL_ISVC: &str = "model";
const MODEL: &str = "model-predictor";
const REVISION: &str = "serving.knative.dev/revision";
const BENCH_LABEL: &str = "s2z.dev/bench";
/// How many API calls are made at once.
const CONCURRENCY: usize = 16;
/// Bounds the waits for setup and cleanup on a broken run.
const SETTLE: Duration = Duration::from_secs(600);

/// One of the two runs.
struct Mode {
    name: &'static str,
    prefix: &'static str,
    s2z: bool,
}

struct Bench<'a> {
    args: &'a Args,
    plane: Plane,
    client: kube::Client,
}

fn org_name(prefix: &str, i: usize) -> String {
    format!("{prefix}-org-{i:02}")
}

fn log(start: Instant, msg: &str) {
    eprintln!("[{:>6.1}s] {msg}", start.elapsed().as_secs_f64());
}

impl Bench<'_> {
    fn group(&self, i: usize) -> Group {
        if i < self.args.dormant {
            Group::Dormant
        } else {
            Group::Active
        }
    }

    /// The org index of a namespace of this run, if it is one.
    fn index(prefix: &str, ns: &str) -> Option<usize> {
        ns.strip_prefix(&format!("{prefix}-org-"))?.parse().ok()
    }

    /// The object behind one of an org's services, its name and its API: the pynode is a
    /// Knative Service; the model is a real InferenceService (KServe makes its Knative Service
    /// `model-predictor`), whose predictor declares `minReplicas` and one GPU a pod.
    fn object(&self, ns: &str, name: &str, generation: u32) -> (ApiResource, &'static str, Value) {
        if name == MODEL {
            let predictor = kserve::predictor(IMAGE, self.args.model_min_scale, 1, generation);
            let isvc = kserve::inference_service(ns, MODEL_ISVC, predictor, json!({}));
            return (kserve::inference_services(), MODEL_ISVC, isvc);
        }
        let ksvc = json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"template": {"spec": {"containers": [{
                "image": IMAGE,
                "env": [{"name": "GENERATION", "value": generation.to_string()}],
            }]}}},
        });
        (serving("Service", "services"), PYNODE, ksvc)
    }

    /// Creates or updates every service of the run, `CONCURRENCY` at a time.
    async fn deploy_all(&self, prefix: &str, generation: u32) -> Result<()> {
        let jobs: Vec<(String, &str)> = (0..self.args.orgs)
            .flat_map(|i| [(org_name(prefix, i), PYNODE), (org_name(prefix, i), MODEL)])
            .collect();
        stream::iter(jobs)
            .map(|(ns, name)| async move {
                let (resource, applied, object) = self.object(&ns, name, generation);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), &ns, &resource);
                api.patch(
                    applied,
                    &PatchParams::apply("s2z-spike").force(),
                    &Patch::Apply(&object),
                )
                .await
                .with_context(|| {
                    format!(
                        "failed to apply {} {ns}/{applied} generation {generation}",
                        resource.kind
                    )
                })
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(())
    }

    /// The run's install namespace, settings, orgs and namespaces; dormant orgs are asked to
    /// sleep from the start.
    async fn create_orgs(&self, mode: &Mode) -> Result<String> {
        let bench = format!("spike-{}", mode.prefix);
        let sys = format!("{}-sys", mode.prefix);
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let apply = PatchParams::apply("s2z-spike").force();
        let ns = |name: &str, labels: Value| -> Result<Namespace> {
            Ok(serde_json::from_value(
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}),
            )?)
        };
        namespaces
            .patch(
                &sys,
                &apply,
                &Patch::Apply(&ns(&sys, json!({BENCH_LABEL: bench}))?),
            )
            .await?;
        let settings: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "s2z-settings", "namespace": sys},
            "data": {"orgDormancyPeriodSecs": "86400", "sweepIntervalSecs": "3600",
                     "orgWarmupRatelimitStr": "100/s"},
        }))?;
        Api::<ConfigMap>::namespaced(self.client.clone(), &sys)
            .patch("s2z-settings", &apply, &Patch::Apply(&settings))
            .await?;
        let orgs: Api<Org> = Api::all(self.client.clone());
        let now = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        stream::iter(0..self.args.orgs)
            .map(|i| {
                let (namespaces, orgs, apply, bench, now) =
                    (&namespaces, &orgs, &apply, &bench, &now);
                let ns = &ns;
                async move {
                    let name = org_name(mode.prefix, i);
                    let mut annotations = json!({});
                    if self.group(i) == Group::Dormant {
                        annotations = json!({SLEEP_ANNOTATION: now});
                    }
                    let org: Org = serde_json::from_value(json!({
                        "apiVersion": "s2z.dev/v1alpha1", "kind": "Org",
                        "metadata": {"name": name, "labels": {BENCH_LABEL: bench},
                                     "annotations": annotations},
                        "spec": {},
                    }))?;
                    orgs.patch(&name, apply, &Patch::Apply(&org)).await?;
                    let labels = json!({"s2z.dev/org": name, BENCH_LABEL: bench});
                    namespaces
                        .patch(&name, apply, &Patch::Apply(&ns(&name, labels)?))
                        .await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        Ok(sys)
    }

    /// Waits until the controller reports every org of the run in its intended state.
    async fn wait_org_states(&self, mode: &Mode) -> Result<()> {
        let orgs: Api<Org> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{BENCH_LABEL}=spike-{}", mode.prefix));
        let deadline = Instant::now() + SETTLE;
        loop {
            let listed = orgs.list(&lp).await?.items;
            let right = listed
                .iter()
                .filter(|o| {
                    let i = o
                        .metadata
                        .name
                        .as_deref()
                        .and_then(|n| Self::index(mode.prefix, n));
                    let want = match i.map(|i| self.group(i)) {
                        Some(Group::Dormant) => OrgState::Dormant,
                        _ => OrgState::Active,
                    };
                    o.status.as_ref().and_then(|s| s.state) == Some(want)
                })
                .count();
            if right == self.args.orgs {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "only {right}/{} orgs reached their state",
                self.args.orgs
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Waits until every service of the run has a Ready Revision of `generation` and every
    /// Deployment has the pods it asks for; returns the ready pods per group.
    async fn wait_settled(&self, mode: &Mode, generation: u32) -> Result<BTreeMap<Group, i32>> {
        let revisions: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &serving("Revision", "revisions"));
        let deployments: Api<Deployment> = Api::all(self.client.clone());
        let gen_lp = ListParams::default().labels(&format!(
            "serving.knative.dev/configurationGeneration={generation}"
        ));
        let deadline = Instant::now() + SETTLE;
        loop {
            let ready = revisions
                .list(&gen_lp)
                .await?
                .items
                .iter()
                .filter(|r| {
                    Self::index(mode.prefix, r.metadata.namespace.as_deref().unwrap_or(""))
                        .is_some()
                })
                .filter(|r| {
                    r.data["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
                .count();
            let mut pods: BTreeMap<Group, i32> = BTreeMap::new();
            let mut unsettled = 0;
            for d in deployments.list(&gen_lp).await?.items {
                let Some(i) =
                    Self::index(mode.prefix, d.metadata.namespace.as_deref().unwrap_or(""))
                else {
                    continue;
                };
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0);
                let have = d
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                unsettled += usize::from(want != have);
                *pods.entry(self.group(i)).or_default() += have;
            }
            if ready == 2 * self.args.orgs && unsettled == 0 {
                return Ok(pods);
            }
            ensure!(
                Instant::now() < deadline,
                "generation {generation}: {ready}/{} revisions Ready, {unsettled} Deployments short of pods",
                2 * self.args.orgs
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// One run: setup with s2z, the redeploy with or without it, the window, the figures.
    async fn run(
        &self,
        mode: &Mode,
        start: Instant,
    ) -> Result<(BTreeMap<Group, Figures>, Vec<String>)> {
        log(
            start,
            &format!(
                "{}: creating {} orgs ({} dormant)",
                mode.name, self.args.orgs, self.args.dormant
            ),
        );
        let sys = self.create_orgs(mode).await?;
        let selector = format!("{BENCH_LABEL}=spike-{}", mode.prefix);
        let args = [
            "--controller=true".to_string(),
            format!("--namespace={sys}"),
            "--knative-namespace=knative-serving".to_string(),
            format!("--org-selector={selector}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut webhook = WebhookProcess::start(&self.plane, &args).await?;
        let mwc = format!("spike-{}", mode.prefix);
        let ns_selector = json!({"matchExpressions": [
            {"key": "s2z.dev/org", "operator": "Exists"},
            {"key": BENCH_LABEL, "operator": "In", "values": [format!("spike-{}", mode.prefix)]},
        ]});
        register_mwc(
            &self.client,
            &mwc,
            &webhook.url(),
            &webhook.cert.ca_bundle(),
            ns_selector,
        )
        .await?;
        self.wait_org_states(mode).await?;
        log(
            start,
            &format!(
                "{}: orgs in their states; deploying generation 1",
                mode.name
            ),
        );
        self.deploy_all(mode.prefix, 1).await?;
        let before = self.wait_settled(mode, 1).await?;
        log(
            start,
            &format!(
                "{}: settled, ready pods before the redeploy: {before:?}",
                mode.name
            ),
        );
        ensure!(
            before.get(&Group::Dormant).copied().unwrap_or(0) == 0,
            "the setup left dormant orgs with pods: {before:?}"
        );
        if !mode.s2z {
            delete_mwc(&self.client, &mwc).await?;
            webhook.terminate(Duration::from_secs(15)).await?;
            log(
                start,
                "s2z removed: webhook configuration deleted, process stopped",
            );
        }

        let pods = PodWatch::start(self.client.clone()).await?;
        let t0 = Utc::now();
        let t0_instant = Instant::now();
        log(
            start,
            &format!("{}: redeploying {} services", mode.name, 2 * self.args.orgs),
        );
        self.deploy_all(mode.prefix, 2).await?;
        let window = Duration::from_secs(self.args.window);
        while t0_instant.elapsed() < window {
            let left = window.saturating_sub(t0_instant.elapsed());
            tokio::time::sleep(left.min(Duration::from_secs(30))).await;
            let seen = pods.count(mode.prefix, "-00002");
            log(
                start,
                &format!(
                    "{}: {:.0}s after the redeploy, {seen} pods of new revisions seen",
                    mode.name,
                    t0_instant.elapsed().as_secs_f64()
                ),
            );
        }
        let figures = self.figures(mode, &pods, t0).await?;
        pods.stop();
        delete_mwc(&self.client, &mwc).await?;
        drop(webhook);
        self.cleanup(mode, start).await?;
        Ok(figures)
    }

    /// The figures per group, and what contradicts "exactly one revision per redeployed
    /// service, and dormant ones born at zero".
    async fn figures(
        &self,
        mode: &Mode,
        pods: &PodWatch,
        t0: DateTime<Utc>,
    ) -> Result<(BTreeMap<Group, Figures>, Vec<String>)> {
        let revisions: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &serving("Revision", "revisions"));
        let mut base: BTreeMap<Group, Figures> = BTreeMap::new();
        for i in 0..self.args.orgs {
            let f = base.entry(self.group(i)).or_default();
            f.orgs += 1;
            f.services += 2;
        }
        // Revisions the redeploy created: every Revision of the run other than generation 1's.
        let mut created: HashSet<(String, String)> = HashSet::new();
        let mut per_service: BTreeMap<(String, String), usize> = BTreeMap::new();
        let mut wrong = Vec::new();
        for r in revisions.list(&ListParams::default()).await?.items {
            let ns = r.metadata.namespace.clone().unwrap_or_default();
            let Some(i) = Self::index(mode.prefix, &ns) else {
                continue;
            };
            let labels = r.metadata.labels.clone().unwrap_or_default();
            if labels
                .get("serving.knative.dev/configurationGeneration")
                .map(String::as_str)
                == Some("1")
            {
                continue;
            }
            let name = r.metadata.name.clone().unwrap_or_default();
            let config = labels
                .get("serving.knative.dev/configuration")
                .cloned()
                .unwrap_or_default();
            *per_service.entry((ns.clone(), config)).or_default() += 1;
            base.entry(self.group(i)).or_default().revisions += 1;
            let annotations = r.metadata.annotations.clone().unwrap_or_default();
            let min = annotations.get(MIN_SCALE).map(String::as_str);
            created.insert((ns.clone(), name.clone()));
            if mode.s2z
                && self.group(i) == Group::Dormant
                && (min != Some("0")
                    || annotations.get(INITIAL_SCALE).map(String::as_str) != Some("0"))
            {
                wrong.push(format!("{ns}/{name}: {annotations:?}"));
            }
        }
        let mut problems = Vec::new();
        let missing = (2 * self.args.orgs).saturating_sub(per_service.len());
        if missing > 0 {
            problems.push(format!("{missing} services got no new revision"));
        }
        let extra: Vec<_> = per_service.iter().filter(|(_, n)| **n != 1).collect();
        if !extra.is_empty() {
            problems.push(format!(
                "services with more than one new revision: {extra:?}"
            ));
        }
        if !wrong.is_empty() {
            problems.push(format!("dormant revisions not born at zero: {wrong:?}"));
        }
        for p in &problems {
            eprintln!("{}: {p}", mode.name);
        }
        let lives = pods.lives(t0, |ns, rev| {
            let i = Self::index(mode.prefix, ns)?;
            created
                .contains(&(ns.to_string(), rev.to_string()))
                .then(|| self.group(i))
        });
        let figures = by_group(&lives, self.args.window as f64, &base);
        Ok((figures, problems))
    }

    /// Deletes the run's orgs and namespaces and waits until none of its pods is left, so the
    /// next run starts with every GPU free.
    async fn cleanup(&self, mode: &Mode, start: Instant) -> Result<()> {
        let orgs: Api<Org> = Api::all(self.client.clone());
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let lp = ListParams::default().labels(&format!("{BENCH_LABEL}=spike-{}", mode.prefix));
        for o in orgs.list(&lp).await?.items {
            orgs.delete(
                &o.metadata.name.unwrap_or_default(),
                &DeleteParams::default(),
            )
            .await
            .ok();
        }
        for n in namespaces.list(&lp).await?.items {
            namespaces
                .delete(
                    &n.metadata.name.unwrap_or_default(),
                    &DeleteParams::background(),
                )
                .await
                .ok();
        }
        // Until the namespaces are gone, not only their pods: the next run then starts on a
        // quiet plane, with no deletion keeping Knative's controller busy.
        let deadline = Instant::now() + SETTLE;
        loop {
            let left = namespaces.list(&lp).await?.items.len();
            if left == 0 {
                log(start, &format!("{}: cleaned up", mode.name));
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{left} namespaces of {} left after cleanup",
                mode.name
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Pods by uid: as last seen, and when their deletion was seen.
type Seen = Arc<Mutex<HashMap<String, (Pod, Option<DateTime<Utc>>)>>>;

/// Every pod with Knative's revision label, as last seen, and when its deletion was seen.
#[derive(Clone)]
struct PodWatch {
    seen: Seen,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl PodWatch {
    /// Starts the watch and returns once its initial listing is in.
    async fn start(client: kube::Client) -> Result<Self> {
        let seen: Seen = Arc::default();
        let sink = seen.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let api: Api<Pod> = Api::all(client);
            let mut events = watcher(api, watcher::Config::default().labels(REVISION))
                .default_backoff()
                .boxed();
            let mut ready_tx = Some(ready_tx);
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                let mut seen = sink.lock().unwrap_or_else(|e| e.into_inner());
                match event {
                    watcher::Event::InitApply(p) | watcher::Event::Apply(p) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        let gone = seen.get(&uid).and_then(|(_, g)| *g);
                        seen.insert(uid, (p, gone));
                    }
                    watcher::Event::Delete(p) => {
                        let uid = p.metadata.uid.clone().unwrap_or_default();
                        seen.insert(uid, (p, Some(Utc::now())));
                    }
                    watcher::Event::InitDone => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    watcher::Event::Init => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(60), ready_rx)
            .await
            .context("the pod watch did not list in time")?
            .context("the pod watch ended")?;
        Ok(Self {
            seen,
            task: Arc::new(task),
        })
    }

    fn count(&self, prefix: &str, revision_suffix: &str) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.values()
            .filter(|(p, _)| {
                Bench::index(prefix, p.metadata.namespace.as_deref().unwrap_or("")).is_some()
                    && label(p, REVISION).is_some_and(|r| r.ends_with(revision_suffix))
            })
            .count()
    }

    /// The lifetimes of the pods `classify` knows (namespace, revision -> group), in seconds
    /// since `t0`.
    fn lives(
        &self,
        t0: DateTime<Utc>,
        classify: impl Fn(&str, &str) -> Option<Group>,
    ) -> Vec<PodLife> {
        let millis = |ms: i64| (ms - t0.timestamp_millis()) as f64 / 1000.0;
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.values()
            .filter_map(|(p, gone)| {
                let ns = p.metadata.namespace.as_deref()?;
                let group = classify(ns, label(p, REVISION)?)?;
                let since = |type_: &str| {
                    p.status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .find(|c| c.type_ == type_ && c.status == "True")?
                        .last_transition_time
                        .as_ref()
                        .map(|t| millis(t.0.as_millisecond()))
                };
                let deleted = p
                    .metadata
                    .deletion_timestamp
                    .as_ref()
                    .map(|t| millis(t.0.as_millisecond()));
                Some(PodLife {
                    group,
                    gpus: gpus(p),
                    scheduled: since("PodScheduled"),
                    ready: since("Ready"),
                    end: gone.map(|g| millis(g.timestamp_millis())).or(deleted),
                })
            })
            .collect()
    }

    fn stop(&self) {
        self.task.abort();
    }
}

fn label<'a>(p: &'a Pod, key: &str) -> Option<&'a str> {
    p.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn gpus(p: &Pod) -> u32 {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| c.resources.as_ref()?.limits.as_ref()?.get("nvidia.com/gpu"))
        .filter_map(|q| q.0.parse::<u32>().ok())
        .sum()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.dormant <= args.orgs, "--dormant exceeds --orgs");
    let needed = args.orgs as u64 * u64::from(args.model_min_scale)
        + (args.orgs - args.dormant) as u64 * u64::from(args.model_min_scale);
    let gpus = u64::from(args.nodes) * u64::from(args.gpus_per_node);
    ensure!(
        needed <= gpus,
        "the spike can hold {needed} GPUs (new models of every org plus the active orgs' old ones), the nodes have {gpus}: raise --nodes"
    );
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| repo_root().join(".state/bench-spike"));
    let start = Instant::now();
    let plane = knative_plane_at(&dir, args.nodes, args.gpus_per_node, true)?;
    let result = async {
        let client = client_for(&plane.admin_kubeconfig).await?;
        ensure_org_crd(&client).await?;
        let bench = Bench {
            args: &args,
            plane: plane.clone(),
            client,
        };
        let without = Mode {
            name: "without s2z",
            prefix: "off",
            s2z: false,
        };
        let with = Mode {
            name: "with s2z",
            prefix: "on",
            s2z: true,
        };
        let off = bench.run(&without, start).await?;
        let on = bench.run(&with, start).await?;
        anyhow::Ok((off, on))
    }
    .await;
    if !args.keep {
        plane_down_at(&dir);
    }
    let ((off, _), (on, problems)) = result?;
    println!(
        "Redeploy of {} orgs ({} dormant, {} active), each with a pynode and a model (min-scale {}, 1 GPU a pod), on {} ({} KWOK nodes x {} GPUs); window {} s after the redeploy.\n",
        args.orgs,
        args.dormant,
        args.orgs - args.dormant,
        args.model_min_scale,
        plane.knative_release.as_deref().unwrap_or("Knative"),
        args.nodes,
        args.gpus_per_node,
        args.window
    );
    print!(
        "{}",
        table(
            &[("without s2z", &off), ("with s2z", &on)],
            args.window as f64
        )
    );
    let dormant = on.get(&Group::Dormant).cloned().unwrap_or_default();
    let mut failures = problems;
    if dormant.pods_started != 0 {
        failures.push(format!(
            "with s2z, dormant orgs started {} pods",
            dormant.pods_started
        ));
    }
    for (group, f) in &on {
        if f.revisions != f.services {
            failures.push(format!(
                "with s2z, {} orgs: {} revisions for {} redeployed services",
                group.label(),
                f.revisions,
                f.services
            ));
        }
    }
    if !failures.is_empty() {
        bail!("claim failed: {}", failures.join("; "));
    }
    println!(
        "\nWith s2z: 0 pods started for dormant orgs, exactly 1 revision per redeployed service."
    );
    Ok(())
}
