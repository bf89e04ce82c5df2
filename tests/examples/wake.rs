//! Wake at scale on real Knative (`make bench-wake`): N dormant orgs, each with one model (a
//! KServe-style predictor ksvc declaring min-scale M, one GPU a pod) whose Revision was born at
//! zero while the org slept, all woken at once. Per org: the time from its wake request to its
//! latest Revision having M Ready pods; per woken Revision: the API writes. Two ways, side by side
//! on one plane, each with its own orgs:
//! - **s2z**: one `POST /v1/orgs/{org}/activity` per org; the controller restores the declared
//!   min-scale on the Revision in place and, as the autoscaler has no data for it, scales its
//!   Deployment to min-scale (`s2z_core::warm`).
//! - **seed**: no s2z; the org's ksvc carries `min-scale: "0"` while it sleeps, and waking edits
//!   the ksvc template back to `min-scale: "M"`, as seed 001 does for pynodes: a new Revision.
//!
//! Writes are counted by the kube-apiserver itself (`apiserver_request_total`, verbs POST, PUT,
//! PATCH, DELETE, from its /metrics) over the wake, so they include Knative's, the scheduler's and
//! KWOK's writes caused by it, and the lease renewals of every component during it; and, apart,
//! the waker's own writes.
//!
//!     make bench-wake                   # or: cargo run -p s2z-tests --example wake -- --help

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use clap::Parser;
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use s2z_core::labels::SLEEP_ANNOTATION;
use s2z_core::org::{Org, OrgState};
use s2z_tests::Plane;
use s2z_tests::plane::{client_for, knative_plane_at, plane_down_at, repo_root};
use s2z_tests::scale::serving;
use s2z_tests::webhook::{WebhookProcess, delete_mwc, ensure_org_crd, register_mwc};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
struct Args {
    /// Dormant orgs woken at once.
    #[arg(long, default_value_t = 100)]
    orgs: usize,
    /// The model's declared min-scale (KServe `minReplicas`).
    #[arg(long, default_value_t = 1)]
    min_scale: u32,
    /// State directory of the plane (default `.state/bench-wake`).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Leave the plane running at the end.
    #[arg(long)]
    keep: bool,
}

const IMAGE: &str = "example.invalid/s2z/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const MODEL: &str = "model-predictor";
const BENCH_LABEL: &str = "s2z.dev/bench";
const MIN_SCALE: &str = "autoscaling.knative.dev/min-scale";
const INITIAL_SCALE: &str = "autoscaling.knative.dev/initial-scale";
/// API calls in flight at once during setup.
const CONCURRENCY: usize = 16;
/// Bounds setup and the wake itself on a broken run.
const SETTLE: Duration = Duration::from_secs(600);

fn log(start: Instant, msg: &str) {
    eprintln!("[{:6.1}s] {msg}", start.elapsed().as_secs_f64());
}

/// The model's ksvc, with these template annotations.
fn model(ns: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": MODEL, "namespace": ns,
                     "labels": {"serving.kserve.io/inferenceservice": "model"}},
        "spec": {"template": {
            "metadata": {"labels": {"serving.kserve.io/inferenceservice": "model", "component": "predictor"},
                         "annotations": annotations},
            "spec": {"containers": [{"image": IMAGE, "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        }},
    })
}

/// One way of waking.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    S2z,
    Seed,
}

impl Way {
    fn prefix(self) -> &'static str {
        match self {
            Way::S2z => "s2z",
            Way::Seed => "seed",
        }
    }
}

/// What one way measured.
struct Figures {
    /// Seconds from each org's wake request to its Revision's pods Ready.
    latencies: Vec<f64>,
    /// Orgs not warm when the wait ended.
    cold: usize,
    /// Mutating requests the apiserver served during the wake.
    apiserver_writes: f64,
    /// The waker's own writes.
    waker_writes: f64,
    /// Revisions created by the wake.
    revisions_created: usize,
    /// Seconds from the first request to the last org warm.
    total: f64,
}

struct Bench<'a> {
    args: &'a Args,
    plane: Plane,
    client: kube::Client,
    token: String,
}

impl Bench<'_> {
    fn ns(&self, way: Way, i: usize) -> String {
        format!("{}-{i:03}", way.prefix())
    }

    /// Orgs (s2z only) and namespaces, then each model deployed while dormant, and waits until
    /// every Revision is Ready with no pod.
    async fn setup(&self, way: Way, start: Instant) -> Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let orgs: Api<Org> = Api::all(self.client.clone());
        let apply = PatchParams::apply("s2z-bench-wake").force();
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        stream::iter(0..self.args.orgs)
            .map(|i| {
                let (namespaces, orgs, apply, now) = (&namespaces, &orgs, &apply, &now);
                async move {
                    let name = self.ns(way, i);
                    let mut labels = json!({BENCH_LABEL: "wake"});
                    if way == Way::S2z {
                        labels["s2z.dev/org"] = json!(name);
                        let org: Org = serde_json::from_value(json!({
                            "apiVersion": "s2z.dev/v1alpha1", "kind": "Org",
                            "metadata": {"name": name, "labels": {BENCH_LABEL: "wake"},
                                         "annotations": {SLEEP_ANNOTATION: now}},
                            "spec": {},
                        }))?;
                        orgs.patch(&name, apply, &Patch::Apply(&org)).await?;
                    }
                    let ns: Namespace = serde_json::from_value(json!({
                        "apiVersion": "v1", "kind": "Namespace",
                        "metadata": {"name": name, "labels": labels}}))?;
                    namespaces.patch(&name, apply, &Patch::Apply(&ns)).await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        if way == Way::S2z {
            self.wait(start, "orgs Dormant", || self.dormant_orgs())
                .await?;
        }
        // Deployed while dormant: with s2z the webhook makes the Revision born at zero; the seed
        // keeps min-scale 0 on the template (and initial-scale 0, as s2z does, so that both start
        // from a Revision with no pod).
        let declared = json!({MIN_SCALE: self.args.min_scale.to_string()});
        let seed_dormant = json!({MIN_SCALE: "0", INITIAL_SCALE: "0"});
        stream::iter(0..self.args.orgs)
            .map(|i| {
                let ns = self.ns(way, i);
                let annotations = match way {
                    Way::S2z => declared.clone(),
                    Way::Seed => seed_dormant.clone(),
                };
                async move {
                    let api: Api<DynamicObject> = Api::namespaced_with(
                        self.client.clone(),
                        &ns,
                        &serving("Service", "services"),
                    );
                    let ksvc: DynamicObject = serde_json::from_value(model(&ns, annotations))?;
                    api.patch(
                        MODEL,
                        &PatchParams::apply("s2z-bench-wake").force(),
                        &Patch::Apply(&ksvc),
                    )
                    .await?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<_>>()
            .await?;
        self.wait(start, "Revisions Ready at zero", || self.ready_at_zero(way))
            .await
    }

    async fn wait<F, Fut>(&self, start: Instant, what: &str, check: F) -> Result<()>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<usize>>,
    {
        let deadline = Instant::now() + SETTLE;
        loop {
            let n = check().await?;
            if n >= self.args.orgs {
                log(start, &format!("{what}: {n}"));
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "{what}: only {n}/{}",
                self.args.orgs
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn dormant_orgs(&self) -> Result<usize> {
        let lp = ListParams::default().labels(&format!("{BENCH_LABEL}=wake"));
        Ok(Api::<Org>::all(self.client.clone())
            .list(&lp)
            .await?
            .items
            .iter()
            .filter(|o| o.status.as_ref().and_then(|s| s.state) == Some(OrgState::Dormant))
            .count())
    }

    /// Revisions 00001 of the way's namespaces that are Ready, with no pod.
    async fn ready_at_zero(&self, way: Way) -> Result<usize> {
        let revisions: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &serving("Revision", "revisions"));
        let pods = self.ready_pods(way).await?;
        Ok(revisions
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|r| {
                let ns = r.metadata.namespace.as_deref().unwrap_or_default();
                ns.starts_with(&format!("{}-", way.prefix()))
                    && s2z_tests::env::condition(&r.data, "Ready") == Some("True")
                    && !pods.contains_key(&(
                        ns.to_string(),
                        r.metadata.name.clone().unwrap_or_default(),
                    ))
            })
            .count())
    }

    /// Ready pods per (namespace, revision) of the way's namespaces.
    async fn ready_pods(&self, way: Way) -> Result<BTreeMap<(String, String), u32>> {
        let lp = ListParams::default().labels("serving.knative.dev/revision");
        let mut out = BTreeMap::new();
        for p in Api::<Pod>::all(self.client.clone()).list(&lp).await?.items {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            if !ns.starts_with(&format!("{}-", way.prefix()))
                || p.metadata.deletion_timestamp.is_some()
            {
                continue;
            }
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            let rev = p
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("serving.knative.dev/revision"))
                .cloned();
            if let (true, Some(rev)) = (ready, rev) {
                *out.entry((ns, rev)).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// The apiserver's count of mutating requests so far.
    async fn apiserver_writes(&self) -> Result<f64> {
        let text = self.apiserver_metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
            .filter(|l| {
                ["\"POST\"", "\"PUT\"", "\"PATCH\"", "\"DELETE\""]
                    .iter()
                    .any(|v| l.contains(&format!("verb={v}")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    }

    async fn apiserver_metrics(&self) -> Result<String> {
        let out = Command::new(self.plane.bin_dir.join("kubectl"))
            .args(["get", "--raw", "/metrics"])
            .env("KUBECONFIG", &self.plane.admin_kubeconfig)
            .output()
            .context("failed to run kubectl get --raw /metrics")?;
        ensure!(
            out.status.success(),
            "kubectl get --raw /metrics: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Wakes every org of the way at once and waits until each is warm.
    async fn wake(
        &self,
        way: Way,
        webhook: Option<&WebhookProcess>,
        start: Instant,
    ) -> Result<Figures> {
        let writes_before = self.apiserver_writes().await?;
        let s2z_before = match webhook {
            Some(w) => s2z_writes(w).await?,
            None => 0.0,
        };
        let t0 = Instant::now();
        let sent: Vec<(String, Instant)> = stream::iter(0..self.args.orgs)
            .map(|i| {
                let ns = self.ns(way, i);
                async move {
                    let at = Instant::now();
                    match (way, webhook) {
                        (Way::S2z, Some(w)) => {
                            let (code, body) = w.activity(&ns, Some(&self.token), "").await?;
                            ensure!(code == 202, "activity for {ns}: {code} {body}");
                        }
                        _ => {
                            let api: Api<DynamicObject> = Api::namespaced_with(
                                self.client.clone(),
                                &ns,
                                &serving("Service", "services"),
                            );
                            let ksvc: DynamicObject = serde_json::from_value(model(
                                &ns,
                                json!({MIN_SCALE: self.args.min_scale.to_string()}),
                            ))?;
                            api.patch(
                                MODEL,
                                &PatchParams::apply("s2z-bench-wake").force(),
                                &Patch::Apply(&ksvc),
                            )
                            .await?;
                        }
                    }
                    anyhow::Ok((ns, at))
                }
            })
            // All at once, as a gateway would when a batch of users log in together.
            .buffer_unordered(self.args.orgs.max(1))
            .try_collect()
            .await?;
        let sent: BTreeMap<String, Instant> = sent.into_iter().collect();
        log(
            start,
            &format!(
                "{}: {} wake requests sent in {:.2}s",
                way.prefix(),
                sent.len(),
                t0.elapsed().as_secs_f64()
            ),
        );

        let want = self.args.min_scale;
        let mut warm: BTreeMap<String, f64> = BTreeMap::new();
        let deadline = Instant::now() + SETTLE;
        while warm.len() < sent.len() && Instant::now() < deadline {
            let now = Instant::now();
            for ((ns, _rev), ready) in self.ready_pods(way).await? {
                // The seed's wake makes Revision 00002; with s2z the woken one is 00001.
                if ready >= want
                    && !warm.contains_key(&ns)
                    && let Some(at) = sent.get(&ns)
                {
                    warm.insert(ns, now.duration_since(*at).as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let total = t0.elapsed().as_secs_f64();
        log(
            start,
            &format!(
                "{}: {}/{} orgs warm after {total:.1}s",
                way.prefix(),
                warm.len(),
                sent.len()
            ),
        );
        let writes_after = self.apiserver_writes().await?;
        let s2z_after = match webhook {
            Some(w) => s2z_writes(w).await?,
            None => 0.0,
        };
        let revisions: Api<DynamicObject> =
            Api::all_with(self.client.clone(), &serving("Revision", "revisions"));
        let created = revisions
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|r| {
                r.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| n.starts_with(&format!("{}-", way.prefix())))
                    && r.metadata
                        .name
                        .as_deref()
                        .is_some_and(|n| !n.ends_with("-00001"))
            })
            .count();
        Ok(Figures {
            latencies: warm.values().copied().collect(),
            cold: sent.len() - warm.len(),
            apiserver_writes: writes_after - writes_before,
            waker_writes: match way {
                Way::S2z => s2z_after - s2z_before,
                Way::Seed => sent.len() as f64,
            },
            revisions_created: created,
            total,
        })
    }
}

/// s2z's own writes so far: annotation and scale patches, Org status writes and activity writes.
async fn s2z_writes(w: &WebhookProcess) -> Result<f64> {
    let mut n = 0u64;
    for name in [
        "s2z_webhook_controller_patches_total",
        "s2z_webhook_controller_status_writes_total",
        "s2z_webhook_activity_writes_total",
    ] {
        n += w.metric(name, &[]).await?;
    }
    Ok(n as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The admin's bearer token, from the plane's kubeconfig (a static token the apiserver knows).
fn admin_token(plane: &Plane) -> Result<String> {
    let text = std::fs::read_to_string(&plane.admin_kubeconfig)?;
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("token:")
                .map(|t| t.trim().to_string())
        })
        .context("no token in the admin kubeconfig")
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| repo_root().join(".state/bench-wake"));
    // Both ways' pods fit at once: 2 x orgs x min-scale GPUs, 8 a node, and a spare node.
    let nodes = (2 * args.orgs as u32 * args.min_scale).div_ceil(8) + 1;
    let start = Instant::now();
    // Its models are hand-made KServe-style ksvcs (the seed edits the ksvc), so no KServe.
    let plane = knative_plane_at(&dir, nodes, 8, false)?;
    let result = async {
        let client = client_for(&plane.admin_kubeconfig).await?;
        ensure_org_crd(&client).await?;
        let token = admin_token(&plane)?;
        let bench = Bench { args: &args, plane: plane.clone(), client: client.clone(), token };

        // The seed's way first, with no s2z anywhere.
        bench.setup(Way::Seed, start).await?;
        let seed = bench.wake(Way::Seed, None, start).await?;

        // s2z: the webhook and controller, registered for the bench's org namespaces.
        let sys = "s2z-bench-wake";
        let apply = PatchParams::apply("s2z-bench-wake").force();
        let ns: Namespace = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": sys}}))?;
        Api::<Namespace>::all(client.clone()).patch(sys, &apply, &Patch::Apply(&ns)).await?;
        let settings: ConfigMap = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "s2z-settings", "namespace": sys},
            "data": {"orgDormancyPeriodSecs": "86400", "sweepIntervalSecs": "3600", "orgWarmupRatelimitStr": "100/s"},
        }))?;
        Api::<ConfigMap>::namespaced(client.clone(), sys).patch("s2z-settings", &apply, &Patch::Apply(&settings)).await?;
        let webhook = WebhookProcess::start(&plane, &[
            "--controller=true",
            &format!("--namespace={sys}"),
            "--knative-namespace=knative-serving",
            &format!("--org-selector={BENCH_LABEL}=wake"),
        ])
        .await?;
        let selector = json!({"matchExpressions": [{"key": "s2z.dev/org", "operator": "Exists"}]});
        register_mwc(&client, "bench-wake", &webhook.url(), &webhook.cert.ca_bundle(), selector).await?;
        bench.setup(Way::S2z, start).await?;
        let s2z = bench.wake(Way::S2z, Some(&webhook), start).await;
        delete_mwc(&client, "bench-wake").await.ok();
        anyhow::Ok((seed, s2z?))
    }
    .await;
    if !args.keep {
        plane_down_at(&dir);
    }
    let (seed, s2z) = result?;
    println!(
        "{} dormant orgs woken at once, each with one model (min-scale {}, 1 GPU a pod) whose Revision had no pod; knative-v1.23.0 on KWOK ({nodes} nodes x 8 GPUs).\n",
        args.orgs, args.min_scale
    );
    println!("| | seed (edit the ksvc) | s2z (POST activity) |\n| --- | ---: | ---: |");
    let mut rows: Vec<(String, Row)> = Vec::new();
    rows.push((
        "wake request to pods Ready, p50 (s)".into(),
        Box::new(|f| fmt(percentile(&sorted(&f.latencies), 50.0))),
    ));
    rows.push((
        "p99 (s)".into(),
        Box::new(|f| fmt(percentile(&sorted(&f.latencies), 99.0))),
    ));
    rows.push((
        "max (s)".into(),
        Box::new(|f| fmt(sorted(&f.latencies).last().copied().unwrap_or(f64::NAN))),
    ));
    rows.push((
        "first request to last org warm (s)".into(),
        Box::new(|f| fmt(f.total)),
    ));
    rows.push((
        "orgs not warm at the end".into(),
        Box::new(|f| f.cold.to_string()),
    ));
    rows.push((
        "revisions created by the wake".into(),
        Box::new(|f| f.revisions_created.to_string()),
    ));
    rows.push((
        "waker's writes per woken revision".into(),
        Box::new(move |f| format!("{:.2}", f.waker_writes / args.orgs as f64)),
    ));
    rows.push((
        "apiserver writes per woken revision (all clients)".into(),
        Box::new(move |f| format!("{:.1}", f.apiserver_writes / args.orgs as f64)),
    ));
    for (name, value) in &rows {
        println!("| {name} | {} | {} |", value(&seed), value(&s2z));
    }
    ensure!(s2z.cold == 0, "with s2z, {} orgs were not warm", s2z.cold);
    ensure!(
        s2z.revisions_created == 0,
        "with s2z, the wake created {} revisions",
        s2z.revisions_created
    );
    Ok(())
}

/// One table row: how to render a way's figure.
type Row = Box<dyn Fn(&Figures) -> String>;

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn fmt(x: f64) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.2}")
    }
}
