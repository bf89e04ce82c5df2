//! The activity endpoint on the real control plane: authentication and authorization with
//! real ServiceAccount tokens and RBAC, the per-org rate limit with coalescing, the flush of
//! pending activity on SIGTERM, wake-on-traffic, and an API server outage that loses nothing.
//!
//! The outage is real network failure: the webhook reaches the API server through a TCP proxy
//! owned by the test, which the test closes (dropping every connection) and reopens. The shared
//! API server itself keeps running for the other tests.
//!
//! Needs `cargo build -p s2z-webhook` first.

mod controller_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use chrono::{TimeDelta, Utc};
use controller_support::{Fixture, WAIT, stamp};
use futures::StreamExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::runtime::watcher;
use s2z_core::labels::MIN_SCALE;
use s2z_core::org::{Org, OrgState};
use s2z_tests::env::eventually;
use s2z_tests::webhook::WebhookProcess;
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

const CALM: [(&str, &str); 3] = [
    ("orgDormancyPeriodSecs", "3600"),
    ("sweepIntervalSecs", "3600"),
    ("orgWarmupRatelimitStr", "100/s"),
];

async fn last_activity(fx: &Fixture, org: &str) -> Result<Option<String>> {
    Ok(fx
        .get_org(org)
        .await?
        .status
        .and_then(|s| s.last_activity_at))
}

async fn wait_activity(fx: &Fixture, org: &str, want: &str) -> Result<()> {
    eventually(&format!("{org} lastActivityAt {want}"), WAIT, || async {
        Ok((last_activity(fx, org).await?.as_deref() == Some(want)).then_some(()))
    })
    .await
}

/// Every distinct `lastActivityAt` the API server reports for `org`, from a watch started now.
fn record_activity(client: kube::Client, org: String) -> (Arc<Mutex<Vec<String>>>, JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let task = tokio::spawn(async move {
        let api: Api<Org> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("metadata.name={org}"));
        let mut events = watcher::watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            let (watcher::Event::Apply(o) | watcher::Event::InitApply(o)) = event else {
                continue;
            };
            if let Some(at) = o.status.and_then(|s| s.last_activity_at) {
                let mut seen = sink.lock().unwrap_or_else(|e| e.into_inner());
                if seen.last() != Some(&at) {
                    seen.push(at);
                }
            }
        }
    });
    (seen, task)
}

#[tokio::test]
async fn activity_endpoint_authenticates_and_authorizes() -> Result<()> {
    let mut fx = Fixture::new("act-auth", &CALM).await?;
    let webhook = fx.webhook(&[]).await?;
    let a = fx.org("a", json!({})).await?;
    let b = fx.org("b", json!({})).await?;
    let anyone = fx.sender("gateway", Some(&[])).await?;
    let only_a = fx.sender("app-a", Some(&[a.as_str()])).await?;
    let nobody = fx.sender("stranger", None).await?;
    fx.wait_state(&a, OrgState::Active, WAIT).await?;

    let (code, body) = webhook.activity(&a, None, "").await?;
    ensure!(code == 401, "no token: {code} {body}");
    let (code, body) = webhook.activity(&a, Some("not-a-token"), "").await?;
    ensure!(code == 401, "bad token: {code} {body}");
    let (code, body) = webhook.activity(&a, Some(&nobody), "").await?;
    ensure!(code == 403, "no RBAC: {code} {body}");
    ensure!(body.contains("orgs/activity"), "{body}");
    let (code, body) = webhook.activity(&b, Some(&only_a), "").await?;
    ensure!(code == 403, "other org: {code} {body}");
    let (code, body) = webhook.activity(&a, Some(&anyone), "{not json").await?;
    ensure!(code == 400, "malformed: {code} {body}");
    let (code, body) = webhook
        .activity(&a, Some(&anyone), r#"{"at": "yesterday"}"#)
        .await?;
    ensure!(code == 400, "bad timestamp: {code} {body}");
    let unknown = fx.env.name("nope");
    let (code, body) = webhook.activity(&unknown, Some(&anyone), "").await?;
    ensure!(code == 404, "unknown org: {code} {body}");

    let at = stamp(Utc::now() - TimeDelta::seconds(30));
    let (code, body) = webhook
        .activity(&a, Some(&only_a), &format!(r#"{{"at": "{at}"}}"#))
        .await?;
    ensure!(code == 202, "{code} {body}");
    wait_activity(&fx, &a, &at).await?;

    // A timestamp from the future is pulled back to now: skew cannot keep an org awake.
    let future = stamp(Utc::now() + TimeDelta::hours(5));
    let (code, body) = webhook
        .activity(&b, Some(&anyone), &format!(r#"{{"at": "{future}"}}"#))
        .await?;
    ensure!(
        code == 202 && body.contains(r#""clamped":true"#),
        "{code} {body}"
    );
    let recorded = eventually("b's activity", WAIT, || async {
        last_activity(&fx, &b).await
    })
    .await?;
    ensure!(
        recorded < future && recorded.as_str() <= stamp(Utc::now()).as_str(),
        "{recorded}"
    );

    // Older than what is recorded: accepted, and nothing moves backwards.
    let older = stamp(Utc::now() - TimeDelta::hours(1));
    let (code, _) = webhook
        .activity(&a, Some(&anyone), &format!(r#"{{"at": "{older}"}}"#))
        .await?;
    ensure!(code == 202);
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(last_activity(&fx, &a).await?.as_deref() == Some(at.as_str()));

    for (code, least) in [("401", 2), ("403", 2), ("400", 2), ("404", 1), ("202", 3)] {
        let n = webhook
            .metric("s2z_webhook_activity_requests_total", &[("code", code)])
            .await?;
        ensure!(n >= least, "{n} answers {code}");
    }
    // Repeated tokens are answered from the cache.
    ensure!(
        webhook
            .metric(
                "s2z_webhook_activity_auth_cache_total",
                &[("result", "hit")]
            )
            .await?
            >= 1
    );
    fx.cleanup().await
}

#[tokio::test]
async fn a_burst_of_signals_writes_within_the_rate_limit() -> Result<()> {
    let mut fx = Fixture::new(
        "act-burst",
        &[
            ("orgDormancyPeriodSecs", "3600"),
            ("sweepIntervalSecs", "3600"),
            ("orgWarmupRatelimitStr", "2/6s"),
        ],
    )
    .await?;
    let webhook = fx.webhook(&[]).await?;
    let token = fx.sender("gateway", Some(&[])).await?;
    let org = fx.org("busy", json!({})).await?;
    fx.wait_state(&org, OrgState::Active, WAIT).await?;
    let (seen, watch) = record_activity(fx.env.client.clone(), org.clone());

    // 60 signals within about a second, each newer than the last.
    let base = Utc::now() - TimeDelta::seconds(10);
    let started = Instant::now();
    let mut newest = String::new();
    for i in 0..60 {
        newest = stamp(base + TimeDelta::milliseconds(i * 10));
        let (code, body) = webhook
            .activity(&org, Some(&token), &format!(r#"{{"at": "{newest}"}}"#))
            .await?;
        ensure!(code == 202, "{code} {body}");
    }
    let burst = started.elapsed();
    // The limit allows 2 writes per 6 s: the rest waits for the window and is written once,
    // with the newest timestamp.
    wait_activity(&fx, &org, &newest).await?;
    let written_after = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.abort();
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let writes = webhook
        .metric(
            "s2z_webhook_activity_writes_total",
            &[("result", "written")],
        )
        .await?;
    eprintln!(
        "burst of 60 in {burst:?}: {writes} writes, newest recorded after {written_after:?}; values seen: {seen:?}"
    );
    // Budget: the 2-signal burst, plus one per 3 s of the elapsed window, plus the coalesced one.
    let budget = 2 + written_after.as_secs() / 3 + 1;
    ensure!(writes <= budget, "{writes} writes > budget {budget}");
    ensure!(
        seen.len() as u64 <= budget,
        "{} changes seen > {budget}",
        seen.len()
    );
    ensure!(seen.last() == Some(&newest), "{seen:?}");
    ensure!(
        webhook
            .metric(
                "s2z_webhook_activity_signals_total",
                &[("outcome", "merged")]
            )
            .await?
            >= 50,
        "suppressed signals were coalesced"
    );
    fx.cleanup().await
}

#[tokio::test]
async fn pending_activity_is_written_on_sigterm_and_dormant_orgs_skip_the_limit() -> Result<()> {
    let mut fx = Fixture::new(
        "act-flush",
        &[
            ("orgDormancyPeriodSecs", "3600"),
            ("sweepIntervalSecs", "3600"),
            ("orgWarmupRatelimitStr", "1/hour"),
        ],
    )
    .await?;
    let mut webhook = fx.webhook(&[]).await?;
    let token = fx.sender("gateway", Some(&[])).await?;
    let org = fx.org("held", json!({})).await?;
    fx.wait_state(&org, OrgState::Active, WAIT).await?;

    let first = stamp(Utc::now() - TimeDelta::seconds(20));
    let (code, _) = webhook
        .activity(&org, Some(&token), &format!(r#"{{"at": "{first}"}}"#))
        .await?;
    ensure!(code == 202);
    wait_activity(&fx, &org, &first).await?;
    let mut newest = String::new();
    for i in 1..=10 {
        newest = stamp(Utc::now() - TimeDelta::seconds(20) + TimeDelta::milliseconds(i * 100));
        let (code, _) = webhook
            .activity(&org, Some(&token), &format!(r#"{{"at": "{newest}"}}"#))
            .await?;
        ensure!(code == 202);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(
        last_activity(&fx, &org).await?.as_deref() == Some(first.as_str()),
        "held back by the 1/hour limit"
    );
    ensure!(
        webhook
            .metric("s2z_webhook_activity_pending_orgs", &[])
            .await?
            == 1
    );

    let status = webhook.terminate(Duration::from_secs(30)).await?;
    ensure!(status.success(), "exit status {status}");
    ensure!(
        last_activity(&fx, &org).await?.as_deref() == Some(newest.as_str()),
        "flushed on SIGTERM: {}",
        webhook.logs()
    );

    // A dormant org's first signal is written at once, whatever the limit.
    webhook.restart().await?;
    fx.orgs_api()
        .patch(
            &org,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                "s2z.dev/sleep-requested-at": stamp(Utc::now())
            }}})),
        )
        .await?;
    fx.wait_state(&org, OrgState::Dormant, WAIT).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wake = stamp(Utc::now());
    let sent = Instant::now();
    let (code, body) = webhook
        .activity(&org, Some(&token), &format!(r#"{{"at": "{wake}"}}"#))
        .await?;
    ensure!(
        code == 202 && body.contains(r#""wakes":true"#),
        "{code} {body}"
    );
    wait_activity(&fx, &org, &wake).await?;
    fx.wait_state(&org, OrgState::Active, WAIT).await?;
    eprintln!("dormant org woken {:?} after its signal", sent.elapsed());
    ensure!(sent.elapsed() <= Duration::from_secs(5));
    fx.cleanup().await
}

#[tokio::test]
async fn traffic_to_a_dormant_org_wakes_it() -> Result<()> {
    let mut fx = Fixture::new("act-traffic", &CALM).await?;
    let _webhook = fx.webhook(&["--wake-on-traffic"]).await?;
    let org = fx.env.name("idle");
    let ns = fx.org_namespace(&org, "idle").await?;
    fx.revision(&ns, "app-00001", false, &[]).await?;
    fx.org("idle", json!({"dormancyPeriodSecs": 1})).await?;
    fx.wait_state(&org, OrgState::Dormant, WAIT).await?;

    let pas: Api<DynamicObject> = Api::namespaced_with(
        fx.env.client.clone(),
        &ns,
        &ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "autoscaling.internal.knative.dev",
                "v1alpha1",
                "PodAutoscaler",
            ),
            "podautoscalers",
        ),
    );
    let pa: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "autoscaling.internal.knative.dev/v1alpha1", "kind": "PodAutoscaler",
        "metadata": {"name": "app-00001", "namespace": ns},
        "spec": {"protocolType": "http1"},
    }))?;
    pas.create(&PostParams::default(), &pa).await?;
    let scale = |n: i64| Patch::Merge(json!({"status": {"desiredScale": n}}));
    pas.patch_status("app-00001", &PatchParams::default(), &scale(0))
        .await?;
    // Scaled to zero and staying there is no activity.
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(fx.get_org(&org).await?.status.and_then(|s| s.state) == Some(OrgState::Dormant));

    // A request through the activator makes the autoscaler want a pod.
    let arrived = Instant::now();
    pas.patch_status("app-00001", &PatchParams::default(), &scale(1))
        .await?;
    fx.wait_state(&org, OrgState::Active, WAIT).await?;
    fx.wait_annotation(&ns, "app-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    eprintln!("traffic woke the org after {:?}", arrived.elapsed());
    ensure!(arrived.elapsed() <= Duration::from_secs(5));
    fx.cleanup().await
}

/// A TCP forwarder to the API server that the test can cut and restore.
struct Proxy {
    port: u16,
    upstream: String,
    task: Option<JoinHandle<()>>,
}

impl Proxy {
    async fn start(upstream: &str) -> Result<Self> {
        let mut proxy = Self {
            port: 0,
            upstream: upstream.to_string(),
            task: None,
        };
        proxy.open().await?;
        Ok(proxy)
    }

    /// Listens (again, on the same port once chosen) and forwards every connection.
    async fn open(&mut self) -> Result<()> {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .context("failed to bind the proxy")?;
        self.port = listener.local_addr()?.port();
        let upstream = self.upstream.clone();
        self.task = Some(tokio::spawn(async move {
            // Dropping the set (when this task is aborted) aborts every connection.
            let mut connections = JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                while connections.try_join_next().is_some() {}
            }
        }));
        Ok(())
    }

    /// Closes the listener and every open connection: the API server is unreachable.
    async fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The admin kubeconfig with its server moved to the proxy.
fn kubeconfig_via(admin: &Path, port: u16, dir: &Path) -> Result<PathBuf> {
    let text = std::fs::read_to_string(admin)?;
    let mut config: serde_yaml::Value = serde_yaml::from_str(&text)?;
    let clusters = config["clusters"]
        .as_sequence_mut()
        .context("kubeconfig without clusters")?;
    for cluster in clusters {
        cluster["cluster"]["server"] = format!("https://127.0.0.1:{port}").into();
    }
    let path = dir.join("via-proxy.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

#[tokio::test]
async fn an_api_server_outage_loses_no_activity_and_everything_converges() -> Result<()> {
    let mut fx = Fixture::new("act-outage", &CALM).await?;
    let server = fx
        .env
        .plane
        .server
        .trim_start_matches("https://")
        .to_string();
    let mut proxy = Proxy::start(&server).await?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig_via(&fx.env.plane.admin_kubeconfig, proxy.port, dir.path())?;
    let args = fx.args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let webhook = WebhookProcess::start_with(&kubeconfig, &args).await?;
    let token = fx.sender("gateway", Some(&[])).await?;

    let live = fx.env.name("live");
    let live_ns = fx.org_namespace(&live, "live").await?;
    let due = fx.env.name("due");
    let due_ns = fx.org_namespace(&due, "due").await?;
    fx.revision(&due_ns, "app-00001", false, &[]).await?;
    fx.org("live", json!({})).await?;
    fx.org("due", json!({"dormancyPeriodSecs": 10})).await?;
    fx.wait_state(&live, OrgState::Active, WAIT).await?;
    fx.wait_state(&due, OrgState::Active, WAIT).await?;
    fx.wait_annotation(&due_ns, "app-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    let before = stamp(Utc::now() - TimeDelta::seconds(5));
    let (code, _) = webhook
        .activity(&live, Some(&token), &format!(r#"{{"at": "{before}"}}"#))
        .await?;
    ensure!(code == 202);
    wait_activity(&fx, &live, &before).await?;

    // Outage: every connection of the webhook to the API server is gone.
    proxy.cut().await;
    let cut = Instant::now();
    let during = stamp(Utc::now());
    let (code, body) = webhook
        .activity(&live, Some(&token), &format!(r#"{{"at": "{during}"}}"#))
        .await?;
    ensure!(
        code == 202,
        "accepted from the auth cache during the outage: {code} {body}"
    );
    // Created while s2z cannot see anything: escapes the controller until it reconnects.
    fx.revision(&live_ns, "late-00001", false, &[]).await?;
    // The "due" org comes due during the outage.
    tokio::time::sleep(Duration::from_secs(12)).await;
    ensure!(
        last_activity(&fx, &live).await?.as_deref() == Some(before.as_str()),
        "nothing could be written during the outage"
    );
    let failed = webhook
        .metric("s2z_webhook_activity_writes_total", &[("result", "error")])
        .await?;
    ensure!(failed >= 1, "the writer saw the outage");
    ensure!(
        webhook
            .metric("s2z_webhook_activity_pending_orgs", &[])
            .await?
            == 1
    );
    ensure!(
        webhook.metric("s2z_webhook_controller_leader", &[]).await? == 0,
        "the leader stepped down when it could not renew"
    );

    proxy.open().await?;
    let restored = Instant::now();
    eprintln!("outage lasted {:?}", restored - cut);
    wait_activity(&fx, &live, &during).await?;
    let activity_after = restored.elapsed();
    fx.wait_annotation(&live_ns, "late-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    fx.wait_state(&due, OrgState::Dormant, WAIT).await?;
    fx.wait_annotation(&due_ns, "app-00001", MIN_SCALE, Some("0"), WAIT)
        .await?;
    let converged = restored.elapsed();
    eprintln!(
        "after the outage: activity written in {activity_after:?}, all converged in {converged:?}"
    );
    ensure!(
        converged <= Duration::from_secs(30),
        "convergence took {converged:?}"
    );
    let values: BTreeSet<String> = [before, during].into();
    ensure!(values.len() == 2);
    proxy.cut().await;
    drop(webhook);
    fx.cleanup().await
}
