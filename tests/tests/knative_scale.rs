//! Knative's whole scale loop on the local plane, observed on real objects: the autoscaler scrapes
//! every pod (s2z-podnet answers as each pod's queue-proxy), scales an idle revision to zero, and
//! the real activator, sent a request for a revision at zero, gets it a pod and the answer.
//! Sustained concurrency raises the pod count as the KPA computes it.
//!
//! The revisions here use a 6 s stable window (`autoscaling.knative.dev/window`, Knative's
//! minimum) so that scale-down is seen within seconds.

use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kube::api::{Api, ApiResource, DynamicObject, PostParams};
use kube::core::GroupVersionKind;
use s2z_tests::TestEnv;
use s2z_tests::activator::Activator;
use s2z_tests::env::{condition, eventually};
use s2z_tests::scale::{Scale, observe};
use serde_json::{Value, json};

/// Bounds a broken run only; on a healthy plane each wait ends within seconds.
const WAIT: Duration = Duration::from_secs(120);

/// A digest reference: Knative never resolves it, and KWOK never pulls it.
const IMAGE: &str = "example.invalid/s2z/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Creates a ksvc with these template annotations in `ns`, and waits for its first revision to
/// be Ready; returns the revision's name.
async fn ready_service(env: &TestEnv, ns: &str, name: &str, annotations: Value) -> Result<String> {
    let gvk = |kind| GroupVersionKind::gvk("serving.knative.dev", "v1", kind);
    let services: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk("Service"), "services"),
    );
    let ksvc: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"template": {
            "metadata": {"annotations": annotations},
            "spec": {"containers": [{"image": IMAGE}]},
        }},
    }))?;
    services
        .create(&PostParams::default(), &ksvc)
        .await
        .with_context(|| format!("failed to create ksvc {ns}/{name}"))?;
    let revisions: Api<DynamicObject> = Api::namespaced_with(
        env.client.clone(),
        ns,
        &ApiResource::from_gvk_with_plural(&gvk("Revision"), "revisions"),
    );
    let revision = format!("{name}-00001");
    eventually(&format!("Revision {revision} Ready"), WAIT, || async {
        let rev = revisions.get_opt(&revision).await?;
        Ok(rev.filter(|r| condition(&r.data, "Ready") == Some("True")))
    })
    .await?;
    Ok(revision)
}

/// Waits until the revision's scale satisfies `want`; returns that observation.
async fn scale_until(
    env: &TestEnv,
    ns: &str,
    revision: &str,
    what: &str,
    want: impl Fn(&Scale) -> bool,
) -> Result<Scale> {
    let last = Mutex::new(None);
    let (last, want) = (&last, &want);
    let got = eventually(what, WAIT, move || async move {
        let s = observe(&env.client, ns, revision).await?;
        let ok = want(&s);
        if let Ok(mut seen) = last.lock() {
            *seen = Some(s.clone());
        }
        Ok(ok.then_some(s))
    })
    .await;
    let last = last.lock().ok().and_then(|s| s.clone());
    got.with_context(|| format!("{ns}/{revision}: last seen {last:?}"))
}

#[tokio::test]
async fn idle_revision_scales_to_zero_pods() -> Result<()> {
    let mut env = TestEnv::knative("kn-idle").await?;
    let ns = env.namespace("ns", &[]).await?;
    let rev = ready_service(
        &env,
        &ns,
        "idle",
        json!({
            "autoscaling.knative.dev/min-scale": "0",
            "autoscaling.knative.dev/window": "6s",
        }),
    )
    .await?;
    // Born with initial-scale 1 (the cluster default): one pod comes up and is scraped.
    let up = scale_until(&env, &ns, &rev, "the first pod Ready", |s| s.ready() == 1).await?;
    ensure!(up.deployment == Some(1), "Deployment at start: {up:?}");
    // No request ever arrives: after the stable window the KPA takes it to zero.
    let down = scale_until(&env, &ns, &rev, "the revision at zero", Scale::is_zero).await?;
    ensure!(down.desired == Some(0), "PA desiredScale at zero: {down:?}");
    env.cleanup().await
}

#[tokio::test]
async fn request_through_the_activator_scales_from_zero() -> Result<()> {
    let mut env = TestEnv::knative("kn-activate").await?;
    ensure!(
        env.plane.allow_zero_initial_scale,
        "the Knative plane was started without allow-zero-initial-scale"
    );
    let activator = Activator::of(&env.plane)?;
    let ns = env.namespace("ns", &[]).await?;
    // Born at zero: Ready with its Deployment at 0, no pod ever started.
    let rev = ready_service(
        &env,
        &ns,
        "cold",
        json!({
            "autoscaling.knative.dev/min-scale": "0",
            "autoscaling.knative.dev/initial-scale": "0",
            "autoscaling.knative.dev/window": "6s",
        }),
    )
    .await?;
    let before = observe(&env.client, &ns, &rev).await?;
    ensure!(before.is_zero(), "a revision born at zero: {before:?}");

    let reply = activator.get(&ns, &rev, "/", WAIT).await?;
    ensure!(
        reply.status == 200 && reply.body.starts_with("Hello from "),
        "answer through the activator: {reply:?}"
    );
    // The pod that answered is a Ready pod of this revision.
    let ip = reply
        .body
        .trim_start_matches("Hello from ")
        .trim()
        .to_string();
    let after = scale_until(&env, &ns, &rev, "the answering pod Ready", |s| {
        s.ready_ips.contains(&ip) && s.actual >= Some(1)
    })
    .await?;
    ensure!(
        after.deployment >= Some(1),
        "Deployment after the request: {after:?}"
    );
    // And without more requests it goes back to zero.
    scale_until(&env, &ns, &rev, "the revision back at zero", Scale::is_zero).await?;
    env.cleanup().await
}

#[tokio::test]
async fn sustained_concurrency_raises_the_pod_count() -> Result<()> {
    let mut env = TestEnv::knative("kn-burst").await?;
    let activator = Activator::of(&env.plane)?;
    let ns = env.namespace("ns", &[]).await?;
    // Target 1 in-flight request per pod, used in full: the KPA wants one pod per request.
    let rev = ready_service(
        &env,
        &ns,
        "busy",
        json!({
            "autoscaling.knative.dev/min-scale": "0",
            "autoscaling.knative.dev/max-scale": "10",
            "autoscaling.knative.dev/target": "1",
            "autoscaling.knative.dev/target-utilization-percentage": "100",
            "autoscaling.knative.dev/window": "6s",
        }),
    )
    .await?;
    scale_until(&env, &ns, &rev, "the first pod Ready", |s| s.ready() == 1).await?;

    // Four requests held for 30 s each: a concurrency of 4 for the autoscaler to see.
    const IN_FLIGHT: usize = 4;
    let load = {
        let (activator, ns, rev) = (activator.clone(), ns.clone(), rev.clone());
        tokio::spawn(async move {
            activator
                .get_many(&ns, &rev, "/?sleep=30s", IN_FLIGHT, IN_FLIGHT, WAIT)
                .await
        })
    };
    let scaled = scale_until(
        &env,
        &ns,
        &rev,
        "one Ready pod per in-flight request",
        |s| s.ready() >= IN_FLIGHT && s.desired >= Some(IN_FLIGHT as i64),
    )
    .await?;
    ensure!(
        scaled.desired <= Some(10) && scaled.deployment >= Some(IN_FLIGHT as i32),
        "scale under load: {scaled:?}"
    );
    let replies = load.await.context("the load task panicked")??;
    ensure!(
        replies.iter().all(|r| r.status == 200),
        "replies under load: {replies:?}"
    );
    env.cleanup().await
}
