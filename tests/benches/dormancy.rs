//! Benchmark of the dormancy controller and the activity endpoint on a real control plane of
//! its own (`s2z-cluster up --nodes 0` in a temporary state dir, stopped at the end; the shared
//! plane is never touched), with one `s2z-webhook` process:
//!
//! 1. Populate 2,000 orgs, each with a namespace of 5 revisions (10,000), then start the
//!    webhook: time to the first convergence.
//! 2. Steady state over a minute: API writes, counted from watches (target 0).
//! 3. Flip 1,000 orgs dormant with due times 10 s apart in all: time until every revision is
//!    patched, and the controller's writes against the revisions that needed a change. This asks
//!    for more writes per second than the API server of a 2-core machine takes, so its lag is a
//!    throughput figure.
//! 4. Flip lag (target p99 <= 2 s): 200 more orgs due one after another over 60 s, the pace of a
//!    busy platform (2,000 orgs on a one-hour period flip about one every 2 s). Lag is measured
//!    twice per org: the decision (`stateSince` - due time) and the effect (the last of its
//!    revisions seen patched by a watch - due time).
//! 5. 5,000 activity signals/s for 30 s across those 1,000 orgs over HTTP/2: lost wakes
//!    (target 0), and API writes against the rate limit.
//! 6. The webhook's memory.
//!
//! Run: `cargo build --release -p s2z-webhook && S2Z_WEBHOOK_BIN=target/release/s2z-webhook
//! cargo bench -p s2z-tests --bench dormancy` (flags after `--`, see `--help`).

mod dormancy_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use dormancy_support::{
    ActivityClient, CONCURRENCY, PrivatePlane, Writes, memory, org_name, org_namespace, populate,
    quantile, watch_writes,
};
use futures::{StreamExt, TryStreamExt, stream};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use s2z_core::org::{Org, OrgState};
use s2z_tests::webhook::{WebhookProcess, ensure_org_crd};
use serde_json::json;
use tokio::sync::Semaphore;

/// The s2z dormancy benchmark.
#[derive(Debug, Parser)]
struct Args {
    /// Orgs (one namespace each).
    #[arg(long, default_value_t = 2000)]
    orgs: usize,
    /// Revisions per org.
    #[arg(long, default_value_t = 5)]
    revisions: usize,
    /// Orgs flipped dormant, then sent activity.
    #[arg(long, default_value_t = 1000)]
    flip: usize,
    /// Seconds the flip's due times are spread over.
    #[arg(long, default_value_t = 10)]
    spread: u64,
    /// Orgs of the flip-lag phase (taken after the `--flip` ones).
    #[arg(long, default_value_t = 200)]
    lag_orgs: usize,
    /// Seconds the flip-lag phase's due times are spread over.
    #[arg(long, default_value_t = 60)]
    lag_spread: u64,
    /// Seconds of steady state observed.
    #[arg(long, default_value_t = 60)]
    steady: u64,
    /// Activity signals per second.
    #[arg(long, default_value_t = 5000)]
    rate: usize,
    /// Seconds of activity.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// The activity rate limit (`orgWarmupRatelimitStr`).
    #[arg(long, default_value = "2/10s")]
    ratelimit: String,
    /// HTTP/2 connections to the activity endpoint.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Reuse (and keep) a plane under this state dir instead of a temporary one.
    #[arg(long)]
    state_dir: Option<std::path::PathBuf>,
    /// Ignored (cargo bench passes it).
    #[arg(long, hide = true)]
    bench: bool,
}

struct Metrics<'a>(&'a WebhookProcess);

impl Metrics<'_> {
    async fn get(&self, name: &str, labels: &[(&str, &str)]) -> Result<u64> {
        self.0.metric(name, labels).await
    }
    async fn controller_writes(&self) -> Result<(u64, u64, u64)> {
        Ok((
            self.get("s2z_webhook_controller_patches_total", &[("result", "ok")])
                .await?,
            self.get("s2z_webhook_controller_status_writes_total", &[])
                .await?
                - self
                    .get(
                        "s2z_webhook_controller_status_writes_total",
                        &[("reason", "conflict")],
                    )
                    .await?,
            self.get("s2z_webhook_controller_events_total", &[]).await?,
        ))
    }
}

async fn orgs(api: &Api<Org>, run: &str) -> Result<Vec<Org>> {
    Ok(api
        .list(&ListParams::default().labels(&format!("s2z.dev/bench={run}")))
        .await?
        .items)
}

fn time_of(text: Option<&str>) -> Option<DateTime<Utc>> {
    s2z_core::dormancy::parse_time(text?).ok()
}

fn stamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Orgs made due one after another, through `lastActivityAt` (as `kubectl s2z wake` would).
struct Flip {
    range: std::ops::Range<usize>,
    due: Vec<DateTime<Utc>>,
    /// The same moment on both clocks, to turn due times into `Instant`s.
    clocks: (Instant, DateTime<Utc>),
}

impl Flip {
    fn instant(&self, at: DateTime<Utc>) -> Instant {
        let (instant, utc) = self.clocks;
        instant + (at - utc).to_std().unwrap_or_default()
    }

    /// Per org, sorted: the decision's lag (`stateSince` - due) and the effect's lag (the last of
    /// its revisions seen at min-scale 0 by the watch - due), in seconds.
    async fn lags(
        &self,
        api: &Api<Org>,
        run: &str,
        writes: &Writes,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let by_name: HashMap<String, Org> = orgs(api, run)
            .await?
            .into_iter()
            .map(|o| (o.metadata.name.clone().unwrap_or_default(), o))
            .collect();
        let patched: HashMap<String, Instant> = {
            let map = writes.min_scale.lock().unwrap_or_else(|e| e.into_inner());
            let mut last: HashMap<String, Instant> = HashMap::new();
            for (key, (value, at)) in map.iter() {
                if value.as_deref() == Some("0") {
                    let ns = key.split('/').next().unwrap_or_default().to_string();
                    let entry = last.entry(ns).or_insert(*at);
                    *entry = (*entry).max(*at);
                }
            }
            last
        };
        let (mut decided, mut effect) = (Vec::new(), Vec::new());
        for (i, due) in self.range.clone().zip(&self.due) {
            let org = by_name.get(&org_name(i)).context("org missing")?;
            let status = org.status.as_ref().context("no status")?;
            ensure!(
                status.state == Some(OrgState::Dormant),
                "{} not dormant",
                org_name(i)
            );
            let since = time_of(status.state_since.as_deref()).context("no stateSince")?;
            decided.push((since - *due).as_seconds_f64());
            let last = patched
                .get(&org_namespace(i))
                .with_context(|| format!("no patched revision of {}", org_name(i)))?;
            let due = self.instant(*due);
            effect.push(if *last >= due {
                last.duration_since(due).as_secs_f64()
            } else {
                -due.duration_since(*last).as_secs_f64()
            });
        }
        decided.sort_by(f64::total_cmp);
        effect.sort_by(f64::total_cmp);
        Ok((decided, effect))
    }
}

/// Makes the orgs of `range` due one after another over `spread` seconds, starting 30 s from
/// now, and waits until the controller has seen it (their `dormantAt`).
async fn schedule_flip(
    api: &Api<Org>,
    run: &str,
    range: std::ops::Range<usize>,
    spread: u64,
) -> Result<Flip> {
    let period = TimeDelta::seconds(3600);
    let clocks = (Instant::now(), Utc::now());
    let first_due = clocks.1 + TimeDelta::seconds(30);
    let step = TimeDelta::milliseconds((spread * 1000 / range.len().max(1) as u64) as i64);
    let due: Vec<DateTime<Utc>> = (0..range.len())
        .map(|k| first_due + step * k as i32)
        .collect();
    stream::iter(range.clone().zip(due.clone()))
        .map(|(i, due)| {
            let api = api.clone();
            let at = stamp(due - period);
            async move {
                api.patch_status(
                    &org_name(i),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"lastActivityAt": at}})),
                )
                .await
                .map(|_| ())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    // Before the change every dormantAt is about an hour away.
    let horizon = first_due + TimeDelta::seconds(spread as i64 + 30);
    wait(
        "dormantAt of the orgs to flip",
        Duration::from_secs(120),
        || async {
            let orgs = orgs(api, run).await?;
            let ready = orgs
                .iter()
                .filter(|o| {
                    let i = o
                        .metadata
                        .name
                        .as_deref()
                        .and_then(|n| n.strip_prefix("bench-o"));
                    let i = i.and_then(|n| n.parse::<usize>().ok());
                    let at = time_of(o.status.as_ref().and_then(|s| s.dormant_at.as_deref()));
                    i.is_some_and(|i| range.contains(&i)) && at.is_some_and(|at| at < horizon)
                })
                .count();
            Ok(ready == range.len())
        },
    )
    .await?;
    ensure!(
        Utc::now() < first_due,
        "setting up the flip took longer than the lead time"
    );
    Ok(Flip { range, due, clocks })
}

async fn wait<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (_temp, private) = PrivatePlane::for_bench(args.state_dir.as_deref())?;
    let plane = private.plane.clone();
    let client = s2z_tests::plane::client_for(&plane.admin_kubeconfig).await?;
    ensure_org_crd(&client).await?;
    let run = format!("r{}", std::process::id());
    let (sys, kn) = (format!("bench-sys-{run}"), format!("bench-kn-{run}"));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for ns in [&sys, &kn] {
        namespaces
            .create(
                &PostParams::default(),
                &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
            )
            .await?;
    }
    let configmap = |ns: &str, name: &str, data: serde_json::Value| -> Result<ConfigMap> {
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name, "namespace": ns}, "data": data}),
        )?)
    };
    Api::<ConfigMap>::namespaced(client.clone(), &sys)
        .create(
            &PostParams::default(),
            &configmap(
                &sys,
                "s2z-settings",
                json!({
                    "orgDormancyPeriodSecs": "3600", "sweepIntervalSecs": "3600",
                    "orgWarmupRatelimitStr": args.ratelimit,
                }),
            )?,
        )
        .await?;
    Api::<ConfigMap>::namespaced(client.clone(), &kn)
        .create(
            &PostParams::default(),
            &configmap(
                &kn,
                "config-autoscaler",
                json!({"allow-zero-initial-scale": "true"}),
            )?,
        )
        .await?;

    // 1. Populate, then start the controller.
    ensure!(
        args.flip > 0 && args.flip + args.lag_orgs <= args.orgs,
        "--flip ({}) + --lag-orgs ({}) must be between 1 and --orgs ({})",
        args.flip,
        args.lag_orgs,
        args.orgs
    );
    let total_revisions = args.orgs * args.revisions;
    let populated = populate(&client, &run, args.orgs, args.revisions).await?;
    eprintln!(
        "created {} orgs and {total_revisions} revisions in {populated:?}",
        args.orgs
    );
    let (writes, watches) = watch_writes(&client, &run);
    let flags = [
        "--controller=true".to_string(),
        format!("--namespace={sys}"),
        format!("--knative-namespace={kn}"),
        format!("--org-selector=s2z.dev/bench={run}"),
        "--log-format=json".to_string(),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let started = Instant::now();
    let webhook = WebhookProcess::start_with(&plane.admin_kubeconfig, &flags).await?;
    let pid = webhook.pid().context("no webhook process")?;
    let metrics = Metrics(&webhook);
    let org_api: Api<Org> = Api::all(client.clone());
    let first = wait("first convergence", Duration::from_secs(900), || async {
        let (patched, _, _) = metrics.controller_writes().await?;
        if patched < total_revisions as u64 {
            return Ok(false);
        }
        let orgs = orgs(&org_api, &run).await?;
        Ok(orgs
            .iter()
            .all(|o| o.status.as_ref().and_then(|s| s.state) == Some(OrgState::Active)))
    })
    .await?;
    let first = first.max(started.elapsed());
    let (rss_converged, _) = memory(pid).unwrap_or_default();
    eprintln!("first convergence after {first:?}");

    // 2. Steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = (writes.total(), metrics.controller_writes().await?);
    tokio::time::sleep(Duration::from_secs(args.steady)).await;
    let steady_api = writes.total() - before.0;
    let after = metrics.controller_writes().await?;
    let steady_controller = (after.0 - before.1.0) + (after.1 - before.1.1);
    eprintln!("steady state: {steady_api} API writes in {}s", args.steady);

    // 3. Flip: staggered due times, set through lastActivityAt (as `kubectl s2z wake` would).
    let flip = schedule_flip(&org_api, &run, 0..args.flip, args.spread).await?;
    let first_due = flip.due[0];
    let flip_before = metrics.controller_writes().await?;
    let api_before = writes.total();
    let (zero_before, _) = writes.with_min_scale("0");
    ensure!(
        zero_before == 0,
        "{zero_before} revisions already at min-scale 0"
    );
    let due_instant = flip.instant(first_due);
    let flip_revisions = args.flip * args.revisions;
    wait(
        "every flipped revision at min-scale 0",
        Duration::from_secs(300),
        || async { Ok(writes.with_min_scale("0").0 >= flip_revisions) },
    )
    .await?;
    let (_, last_patch) = writes.with_min_scale("0");
    let all_patched = last_patch
        .map(|t| t.saturating_duration_since(due_instant))
        .unwrap_or_default();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flip_after = metrics.controller_writes().await?;
    let flip_api = writes.total() - api_before;
    let (decided, effect) = flip.lags(&org_api, &run, &writes).await?;

    // 4. Flip lag at a platform's pace.
    let lag = schedule_flip(
        &org_api,
        &run,
        args.flip..args.flip + args.lag_orgs,
        args.lag_spread,
    )
    .await?;
    let lag_revisions = (args.flip + args.lag_orgs) * args.revisions;
    wait(
        "every revision of the lag phase at min-scale 0",
        Duration::from_secs(args.lag_spread + 300),
        || async { Ok(writes.with_min_scale("0").0 >= lag_revisions) },
    )
    .await?;
    let (lag_decided, lag_effect) = lag.lags(&org_api, &run, &writes).await?;

    // 5. Activity.
    let token = sender_token(&client, &sys, &run).await?;
    let activity = Arc::new(
        ActivityClient::connect(
            &webhook.cert.cert_pem,
            webhook.tls_port,
            &token,
            args.connections,
        )
        .await?,
    );
    let written_before = metrics
        .get(
            "s2z_webhook_activity_writes_total",
            &[("result", "written")],
        )
        .await?;
    let api_before = writes.total();
    let total = args.rate * args.seconds as usize;
    let in_flight = Arc::new(Semaphore::new(2048));
    let latest: Arc<std::sync::Mutex<HashMap<usize, String>>> = Default::default();
    let codes: Arc<std::sync::Mutex<HashMap<u16, u64>>> = Default::default();
    let latencies: Arc<std::sync::Mutex<Vec<f64>>> = Default::default();
    let start = Instant::now();
    let interval = Duration::from_secs(1).as_nanos() as u64 / args.rate.max(1) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..total {
        let at = start + Duration::from_nanos(interval * k as u64);
        if at > Instant::now() + Duration::from_millis(1) {
            tokio::time::sleep_until(at.into()).await;
        }
        let permit = in_flight.clone().acquire_owned().await?;
        let (activity, latest, codes, latencies) = (
            activity.clone(),
            latest.clone(),
            codes.clone(),
            latencies.clone(),
        );
        tasks.spawn(async move {
            let org = k % args.flip.max(1);
            let result = activity.signal(k, &org_name(org)).await;
            let took = at.elapsed().as_secs_f64();
            drop(permit);
            let code = match result {
                Ok((code, body)) => {
                    if code == 202
                        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                        && let Some(at) = v["at"].as_str()
                    {
                        let mut latest = latest.lock().unwrap_or_else(|e| e.into_inner());
                        let entry = latest.entry(org).or_default();
                        if at > entry.as_str() {
                            *entry = at.to_string();
                        }
                    }
                    code
                }
                Err(_) => 0,
            };
            *codes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(code)
                .or_default() += 1;
            latencies
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(took);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let sent_in = start.elapsed();
    let latest = latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let settle = wait(
        "the newest activity of every org",
        Duration::from_secs(120),
        || async {
            let orgs = orgs(&org_api, &run).await?;
            let recorded: HashMap<String, Option<String>> = orgs
                .into_iter()
                .map(|o| {
                    (
                        o.metadata.name.clone().unwrap_or_default(),
                        o.status.and_then(|s| s.last_activity_at),
                    )
                })
                .collect();
            Ok(latest.iter().all(|(org, at)| {
                recorded
                    .get(&org_name(*org))
                    .cloned()
                    .flatten()
                    .is_some_and(|r| r.as_str() >= at.as_str())
            }))
        },
    )
    .await;
    let orgs_now = orgs(&org_api, &run).await?;
    let mut lost = 0;
    let mut asleep = 0;
    for org in &orgs_now {
        let name = org.metadata.name.clone().unwrap_or_default();
        let Some(i) = name
            .strip_prefix("bench-o")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let status = org.status.clone().unwrap_or_default();
        if let Some(want) = latest.get(&i)
            && status
                .last_activity_at
                .as_deref()
                .is_none_or(|r| r < want.as_str())
        {
            lost += 1;
        }
        if i < args.flip && status.state != Some(OrgState::Active) {
            asleep += 1;
        }
    }
    // The wakes themselves (a status write and the revision patches per org) queue behind the
    // API server like the flip did: time until every woken org is Active again.
    let awake = wait(
        "every woken org Active",
        Duration::from_secs(300),
        || async {
            let orgs = orgs(&org_api, &run).await?;
            Ok(orgs
                .iter()
                .filter(|o| {
                    o.metadata
                        .name
                        .as_deref()
                        .and_then(|n| n.strip_prefix("bench-o"))
                        .and_then(|n| n.parse::<usize>().ok())
                        .is_some_and(|i| i < args.flip)
                })
                .all(|o| o.status.as_ref().and_then(|s| s.state) == Some(OrgState::Active)))
        },
    )
    .await;
    let awake = awake.map(|_| start.elapsed())?;
    let written = metrics
        .get(
            "s2z_webhook_activity_writes_total",
            &[("result", "written")],
        )
        .await?
        - written_before;
    let activity_api = writes.total() - api_before;
    let limit: s2z_core::settings::RateLimit = args.ratelimit.parse()?;
    let windows = (args.seconds as f64 + settle.as_ref().map(|d| d.as_secs_f64()).unwrap_or(0.0))
        / limit.interval().as_secs_f64();
    let budget = args.flip as f64 * (limit.count.get() as f64 + windows.ceil() + 1.0);
    let mut latencies = latencies.lock().unwrap_or_else(|e| e.into_inner()).clone();
    latencies.sort_by(f64::total_cmp);
    let codes = codes.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (rss, peak) = memory(pid).unwrap_or_default();

    println!("\n## s2z dormancy benchmark\n");
    println!(
        "Private control plane (Kubernetes {}), {} orgs, {total_revisions} revisions, one s2z-webhook.\n",
        plane.version, args.orgs
    );
    println!("| measurement | result |\n|---|---|");
    println!("| setup: create orgs, namespaces, revisions | {populated:.1?} |");
    println!("| first convergence (every revision annotated, every org Active) | {first:.1?} |");
    println!(
        "| steady state: API writes over {} s (watch count; controller metrics) | {steady_api}; {steady_controller} |",
        args.steady
    );
    println!(
        "| flip {} orgs (due times spread over {} s): last revision patched after the first due time | {all_patched:.2?} |",
        args.flip, args.spread
    );
    println!(
        "| flip: revision patches / revisions that needed one | {} / {flip_revisions} |",
        flip_after.0 - flip_before.0
    );
    println!(
        "| flip: status writes / Events / all API writes seen by watch (orgs + revisions) | {} / {} / {flip_api} |",
        flip_after.1 - flip_before.1,
        flip_after.2 - flip_before.2
    );
    let row = |what: String, lags: &[f64]| {
        println!(
            "| {what}: p50 / p99 / max | {:.3} s / {:.3} s / {:.3} s |",
            quantile(lags, 0.5),
            quantile(lags, 0.99),
            quantile(lags, 1.0)
        );
    };
    row(
        format!(
            "flip of {}: lag of the decision (stateSince - due)",
            args.flip
        ),
        &decided,
    );
    row(
        format!("flip of {}: lag of the last revision patch", args.flip),
        &effect,
    );
    row(
        format!(
            "flip lag, {} orgs due over {} s: decision (stateSince - due)",
            args.lag_orgs, args.lag_spread
        ),
        &lag_decided,
    );
    row(
        format!(
            "flip lag, {} orgs due over {} s: last revision patch - due",
            args.lag_orgs, args.lag_spread
        ),
        &lag_effect,
    );
    println!(
        "| activity: {} signals at {}/s over {} orgs, sent in | {sent_in:.1?} |",
        total, args.rate, args.flip
    );
    println!("| activity: answers by status | {codes:?} |");
    println!(
        "| activity: latency from scheduled send p50 / p99 | {:.1} ms / {:.1} ms |",
        quantile(&latencies, 0.5) * 1e3,
        quantile(&latencies, 0.99) * 1e3
    );
    println!(
        "| activity: lost wakes (newest accepted timestamp not recorded) / orgs not yet Active then | {lost} / {asleep} |"
    );
    println!("| activity: every woken org Active, from the first signal | {awake:.1?} |");
    println!(
        "| activity: lastActivityAt writes / rate-limit budget ({} per org + 1 per {:?} + 1) | {written} / {budget:.0} |",
        limit.count,
        limit.interval()
    );
    println!(
        "| activity phase: all API writes seen by watch (orgs + revisions, wake patches included) | {activity_api} |"
    );
    println!(
        "| newest activity recorded after the last signal | {} |",
        settle
            .map(|d| format!("{d:.1?}"))
            .unwrap_or_else(|e| format!("{e:#}"))
    );
    println!(
        "| webhook memory: RSS converged / RSS end / peak | {} MiB / {} MiB / {} MiB |",
        rss_converged / 1024,
        rss / 1024,
        peak / 1024
    );
    let _ = writes.orgs.load(Ordering::Relaxed);
    for watch in watches {
        watch.abort();
    }
    drop(webhook);
    drop(activity);
    Ok(())
}

/// A ServiceAccount allowed to send activity for every org, and its token.
async fn sender_token(client: &kube::Client, ns: &str, run: &str) -> Result<String> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "gateway"}}))?,
    )
    .await?;
    let name = format!("bench-activity-{run}");
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": name},
            "rules": [{"apiGroups": ["s2z.dev"], "resources": ["orgs/activity"], "verbs": ["create"]}],
        }))?)
        .await?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &serde_json::from_value(json!({
            "metadata": {"name": name},
            "subjects": [{"kind": "ServiceAccount", "name": "gateway", "namespace": ns}],
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        }))?)
        .await?;
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            expiration_seconds: Some(7200),
            ..TokenRequestSpec::default()
        }),
        ..TokenRequest::default()
    };
    sas.create_token_request("gateway", &PostParams::default(), &request)
        .await?
        .status
        .and_then(|s| s.token)
        .context("no token")
}
