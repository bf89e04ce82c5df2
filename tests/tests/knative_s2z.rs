//! s2z with real Knative Serving and KServe: models are real InferenceServices, KServe's
//! controller (tests/kserve) makes their Knative Services, the knative.dev/serving webhook,
//! controller and autoscaler (tests/knative) create every Revision, Deployment and
//! PodAutoscaler, and s2z's real webhook process (with its dormancy controller) is registered by
//! URL, as in `knative_real.rs`'s plane. KServe's own guarantees are in `kserve_s2z.rs`.
//!
//! What is shown, end to end, on KWOK nodes:
//! - a dormant org's redeploy makes a Revision born with min-scale 0 and initial-scale 0 whose
//!   Deployment has 0 replicas, while the same redeploy without s2z starts the declared pods;
//! - waking the org restores the declared scale on that Revision in place (no new revision),
//!   and Knative copies it to the PodAutoscaler;
//! - `kubectl s2z defrag` runs on the real autoscaler's `actualScale`.
//!
//! - the woken org is warm: the Revision born at zero gets its declared pods without a request
//!   (s2z's warm-up, see [`waking_restores_the_declared_scale_in_place_and_warms_the_org`]), and
//!   goes back to zero when the org sleeps again;
//! - a request through the real activator wakes a dormant org (`--wake-on-traffic`).
//!
//! Needs `cargo build -p s2z-webhook -p kubectl-s2z` first (`make test` does it).

mod controller_support;
mod defrag_support;
mod knative_support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use chrono::Utc;
use controller_support::stamp;
use k8s_openapi::api::core::v1::Pod;
use knative_support::*;
use kube::api::{Api, ListParams, Patch, PatchParams};
use s2z_core::labels::{DECLARED_ANNOTATION, INITIAL_SCALE, MIN_SCALE};
use s2z_core::org::OrgState;
use s2z_tests::env::eventually;
use s2z_tests::webhook::delete_mwc;
use s2z_tests::{TestEnv, kubectl};
use serde_json::json;

#[tokio::test]
async fn dormant_redeploy_is_born_at_zero_and_starts_no_pod() -> Result<()> {
    let s2z = S2z::start("kn-s2z-dormant").await?;
    s2z.deploy_warm().await?;
    s2z.sleep().await?;

    let rev = s2z.redeploy().await?;
    let name = format!("{MODEL}-00002");
    ensure_born_at_zero(&rev)?;
    let d = deployment(s2z.client(), &s2z.ns, &name).await?;
    ensure!(
        replicas(&d) == Some(0),
        "{name} replicas {:?}",
        replicas(&d)
    );
    wait_actual_scale(s2z.client(), &s2z.ns, &name, 0).await?;
    // The Revision is Ready and its Deployment asks for nothing: no pod, now or a little later.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = pods(s2z.client(), &s2z.ns, &name).await?;
    ensure!(
        started.is_empty(),
        "pods of {name}: {:?}",
        started
            .iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let revisions = revision_names(s2z.client(), &s2z.ns).await?;
    ensure!(
        revisions == [format!("{MODEL}-00001"), name],
        "one redeploy, one revision: {revisions:?}"
    );
    s2z.cleanup().await
}

#[tokio::test]
async fn the_same_redeploy_without_s2z_starts_the_declared_pods() -> Result<()> {
    let mut s2z = S2z::start("kn-s2z-spike").await?;
    s2z.deploy_warm().await?;
    s2z.sleep().await?;
    // s2z gone: unregistered, and the process (webhook and controller) stopped.
    delete_mwc(s2z.client(), &s2z.mwc).await?;
    s2z.webhook.terminate(Duration::from_secs(15)).await?;

    let rev = s2z.redeploy().await?;
    let name = format!("{MODEL}-00002");
    ensure!(
        annotation(&rev, MIN_SCALE) == Some(DECLARED.to_string())
            && annotation(&rev, INITIAL_SCALE).is_none()
            && annotation(&rev, DECLARED_ANNOTATION).is_none(),
        "{name} was changed without s2z: {:?}",
        rev.metadata.annotations
    );
    let d = deployment(s2z.client(), &s2z.ns, &name).await?;
    ensure!(
        replicas(&d) == Some(DECLARED as i32),
        "{name} replicas {:?}",
        replicas(&d)
    );
    // The spike: a dormant org's redeploy holds the declared GPUs again.
    let started = wait_serving(s2z.client(), &s2z.ns, &name, DECLARED as usize).await?;
    let gpus: i64 = started
        .iter()
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .filter_map(|c| c.resources.as_ref()?.limits.as_ref()?.get("nvidia.com/gpu"))
        .filter_map(|q| q.0.parse::<i64>().ok())
        .sum();
    ensure!(gpus == i64::from(DECLARED), "GPUs held by {name}: {gpus}");
    wait_actual_scale(s2z.client(), &s2z.ns, &name, i64::from(DECLARED)).await?;
    let S2z { fx, mwc, .. } = s2z;
    delete_mwc(&fx.env.client, &mwc).await?;
    fx.cleanup().await
}

/// Waking restores what the user declared on the Revision born at zero, in place (no new
/// Revision; Knative >= 1.21 copies min-scale to the PodAutoscaler), and the woken org is warm:
/// the Revision gets its declared pods before any request.
///
/// Knative alone would not start them: its autoscaler has no data for a Revision that never had a
/// pod (PA `desiredScale` -1), and the KPA leaves the Deployment alone then
/// (pkg/reconciler/autoscaling/kpa/scaler.go: `if desiredScale < 0 && !pa.Status.IsActivating()
/// { return desiredScale }`). So s2z sets the Deployment's scale to the restored min-scale
/// (`s2z_core::warm`); once the pods are Ready the autoscaler scrapes them, has data, and keeps
/// them itself. Put to sleep again, the org's Revision goes back to zero pods.
#[tokio::test]
async fn waking_restores_the_declared_scale_in_place_and_warms_the_org() -> Result<()> {
    let mut s2z = S2z::start("kn-s2z-wake").await?;
    s2z.deploy_warm().await?;
    s2z.sleep().await?;
    s2z.redeploy().await?;
    let name = format!("{MODEL}-00002");
    let before = revision_names(s2z.client(), &s2z.ns).await?;
    ensure!(before.len() == 2, "{before:?}");
    let born = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
    ensure!(
        born.is_zero() && born.desired == Some(-1),
        "born at zero, no autoscaler data: {born:?}"
    );

    // Wake through the activity endpoint, with a ServiceAccount token, as a gateway would.
    let token = s2z.fx.sender("gateway", Some(&[])).await?;
    let (code, body) = s2z.webhook.activity(&s2z.org, Some(&token), "").await?;
    ensure!(code == 202, "activity: {code} {body}");
    s2z.wait_restored(&name).await?;
    // Knative's revision reconciler copies the Revision's autoscaling annotations to the PA.
    let pas = api(s2z.client(), &s2z.ns, "PodAutoscaler");
    let pa = eventually(&format!("PA {name} min-scale {DECLARED}"), WAIT, || async {
        let pa = pas.get(&name).await?;
        Ok((annotation(&pa, MIN_SCALE) == Some(DECLARED.to_string())).then_some(pa))
    })
    .await?;
    ensure!(
        annotation(&pa, INITIAL_SCALE).is_none(),
        "PA annotations: {:?}",
        pa.metadata.annotations
    );

    // `kubectl s2z status ORG` lists the revision as waiting for pods exactly while it has
    // fewer Ready pods than its min-scale. Readiness only rises here, so reading the pods
    // before and after the status run brackets what status saw.
    let before_status = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
    let waiting = waiting_for_pods(&s2z)?;
    let after_status = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
    let listed = waiting.iter().find(|w| w["name"] == json!(name));
    if before_status.ready() >= DECLARED as usize {
        ensure!(listed.is_none(), "{name} Ready, yet listed: {waiting:?}");
    }
    if after_status.ready() < DECLARED as usize {
        let w = listed.with_context(|| format!("{name} not Ready, not listed: {waiting:?}"))?;
        ensure!(
            w["minScale"] == json!(DECLARED) && w["ready"].as_u64() < Some(u64::from(DECLARED)),
            "{w}"
        );
    }
    eprintln!(
        "status just after the wake: {} waiting, {name} ready {}..{}",
        waiting.len(),
        before_status.ready(),
        after_status.ready()
    );

    // Warm: the declared pods are Ready without a request, and Knative's autoscaler, now with
    // data, wants them too.
    let warm = eventually(&format!("{name} warm"), WAIT, || async {
        let s = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
        Ok((s.ready() == DECLARED as usize && s.desired == Some(i64::from(DECLARED))).then_some(s))
    })
    .await?;
    eprintln!("after the wake: {name} {warm:?}");
    let waiting = waiting_for_pods(&s2z)?;
    ensure!(waiting.is_empty(), "warm, yet status lists {waiting:?}");
    // The controller saw it too: one wake followed to ready, timed from the activity.
    eventually("the wake-to-ready metric", WAIT, || async {
        let ready = s2z
            .webhook
            .metric(
                "s2z_webhook_controller_wakes_total",
                &[("outcome", "ready")],
            )
            .await?;
        Ok((ready == 1).then_some(()))
    })
    .await?;
    let (_, text) = s2z.webhook.get("/metrics").await?;
    let took = text
        .lines()
        .find_map(|l| l.strip_prefix("s2z_webhook_controller_wake_to_ready_seconds_sum "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .context("no wake_to_ready_seconds_sum")?;
    eprintln!("wake to ready, as the controller measured it: {took:.3}s");
    ensure!(
        took > 0.0 && took < WAIT.as_secs_f64(),
        "wake to ready {took}s"
    );
    let reasons = s2z.fx.org_reasons(&s2z.org).await?;
    ensure!(reasons.iter().any(|r| r == "Warming"), "{reasons:?}");
    let after = revision_names(s2z.client(), &s2z.ns).await?;
    ensure!(
        after == before,
        "revisions before {before:?}, after {after:?}"
    );
    let latest = api(s2z.client(), &s2z.ns, "Configuration")
        .get(MODEL)
        .await?
        .data
        .pointer("/status/latestCreatedRevisionName")
        .cloned();
    ensure!(latest == Some(json!(name)), "latest revision {latest:?}");

    // Dormant again: Knative scales the woken Revision back to zero by itself.
    s2z.sleep().await?;
    let cold = eventually(&format!("{name} back at zero"), WAIT, || async {
        let s = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
        Ok(s.is_zero().then_some(s))
    })
    .await?;
    eprintln!("dormant again: {name} {cold:?}");
    s2z.cleanup().await
}

/// A leader that dies between a wake and its warm-up: the previous leader flipped the org
/// Active and restored the revision's min-scale (done here by hand, as it would have), but never
/// scaled the revision born at zero. The next leader's first look at the recently woken org
/// warms it.
#[tokio::test]
async fn a_new_leader_warms_an_org_its_predecessor_woke() -> Result<()> {
    let mut s2z = S2z::start("kn-s2z-rewarm").await?;
    s2z.deploy_warm().await?;
    s2z.sleep().await?;
    s2z.redeploy().await?;
    let name = format!("{MODEL}-00002");
    let born = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
    ensure!(born.is_zero() && born.desired == Some(-1), "{born:?}");

    // The old leader goes away, having done the wake's writes but not its warm-up.
    let status = s2z.webhook.terminate(Duration::from_secs(40)).await?;
    ensure!(status.success(), "webhook exit {status}");
    let now = stamp(Utc::now());
    s2z.fx
        .orgs_api()
        .patch_status(
            &s2z.org,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"status": {"state": "Active", "stateSince": now, "lastActivityAt": now}}),
            ),
        )
        .await
        .context("failed to write the woken status")?;
    api(s2z.client(), &s2z.ns, "Revision")
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {MIN_SCALE: DECLARED.to_string(), INITIAL_SCALE: null}}})),
        )
        .await
        .context("failed to restore the revision's min-scale")?;
    // Knative alone does not start it: its autoscaler has no data (docs/knative-notes.md).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let cold = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
    ensure!(cold.ready() == 0, "warm without s2z: {cold:?}");

    // A new leader.
    let webhook = s2z.fx.webhook(&[]).await?;
    let warm = eventually(
        &format!("{name} warm under the new leader"),
        WAIT,
        || async {
            let s = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
            Ok((s.ready() == DECLARED as usize).then_some(s))
        },
    )
    .await?;
    eprintln!("warmed by the new leader: {name} {warm:?}");
    let reasons = s2z.fx.org_reasons(&s2z.org).await?;
    ensure!(reasons.iter().any(|r| r == "Warming"), "{reasons:?}");
    drop(webhook);
    s2z.cleanup().await
}

/// Wake-on-traffic on the real activator: a request for a dormant org's Revision born at zero
/// (its autoscaler has no data: desiredScale -1) is buffered by the activator, which makes the
/// autoscaler ask for a pod; s2z sees that rise and wakes the org, and the request is answered.
#[tokio::test]
async fn a_request_through_the_activator_wakes_a_dormant_org() -> Result<()> {
    let s2z = S2z::start_with("kn-s2z-traffic", &["--wake-on-traffic"]).await?;
    let activator = s2z_tests::activator::Activator::of(&s2z.fx.env.plane)?;
    s2z.deploy_warm().await?;
    s2z.sleep().await?;
    s2z.redeploy().await?;
    let name = format!("{MODEL}-00002");
    let born = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
    ensure!(
        born.is_zero() && born.desired == Some(-1),
        "born at zero with no data: {born:?}"
    );

    let reply = activator.get(&s2z.ns, &name, "/", WAIT).await?;
    ensure!(
        reply.status == 200,
        "answer through the activator: {reply:?}"
    );
    s2z.fx.wait_state(&s2z.org, OrgState::Active, WAIT).await?;
    let reasons = s2z.fx.org_reasons(&s2z.org).await?;
    ensure!(reasons.iter().any(|r| r == "OrgActive"), "{reasons:?}");
    s2z.cleanup().await
}

#[tokio::test]
async fn defrag_moves_a_real_revision_off_a_node_on_the_real_autoscalers_actual_scale() -> Result<()>
{
    let mut env = TestEnv::knative("kn-s2z-defrag").await?;
    let ns = env.namespace("ns", &[]).await?;
    allow_pinning(&env.client).await?;
    // node0 is emptied; node1 is cordoned until the pods sit on node0.
    let nodes = defrag_support::private_nodes(&env, &[8, 8], &[false, true]).await?;
    wait_pinning_allowed(&env.client, &ns, &env.id).await?;
    apply_model(&env.client, &ns, 1, Some(&env.id), None).await?;
    let rev = format!("{MODEL}-00001");
    ready_revision(&env.client, &ns, &rev).await?;
    let placed = wait_serving(&env.client, &ns, &rev, DECLARED as usize).await?;
    ensure!(
        placed
            .iter()
            .all(|p| defrag_support::node_of(p) == nodes[0]),
        "pods not on {}",
        nodes[0]
    );
    // actualScale is Knative's own count of the revision's ready pods.
    wait_actual_scale(&env.client, &ns, &rev, i64::from(DECLARED)).await?;
    let mut run = defrag_support::spawn(
        &env.plane,
        &["defrag", &nodes[0], "--yes", "--timeout", "5m"],
    )?;
    // Orphaned, no replacement can run yet (node1 is cordoned): the KPA counts the orphans.
    let (_, first) = run
        .line("the first progress line", |l| l.starts_with("Revision "))
        .await?;
    let want = format!(
        "Revision {rev} - {DECLARED} extra needed - current_scale={DECLARED} replicas={DECLARED} initial_scale={DECLARED}"
    );
    ensure!(
        first == want,
        "first progress line {first:?}, want {want:?}"
    );
    defrag_support::set_cordon(&env, &nodes[1], false).await?;
    run.line("Safe", |l| l == "Safe to defrag/remove node")
        .await?;
    let (status, stdout, stderr) = run.finish().await?;
    ensure!(status.success(), "defrag {status}: {stderr}\n{stdout}");
    let want = format!(
        "Revision {rev} - 0 extra needed - current_scale={} replicas={DECLARED} initial_scale={DECLARED}",
        2 * DECLARED
    );
    ensure!(stdout.contains(&want), "missing {want:?} in:\n{stdout}");
    // The real KPA counted the orphans with the replacements.
    wait_actual_scale(&env.client, &ns, &rev, i64::from(2 * DECLARED)).await?;

    // The human step the plugin prints, through the real kubectl.
    let out = kubectl(
        &env.plane,
        &[],
        &[
            "drain",
            &nodes[0],
            "--ignore-daemonsets",
            "--force",
            "--timeout=60s",
        ],
    )?;
    ensure!(
        out.status.success(),
        "drain: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let all = Api::<Pod>::all(env.client.clone());
    let on_node0 = format!("spec.nodeName={}", nodes[0]);
    eventually(&format!("{} empty", nodes[0]), WAIT, || async {
        let left = all.list(&ListParams::default().fields(&on_node0)).await?;
        Ok(left.items.is_empty().then_some(()))
    })
    .await?;
    let serving = wait_serving(&env.client, &ns, &rev, DECLARED as usize).await?;
    ensure!(
        serving
            .iter()
            .all(|p| defrag_support::node_of(p) == nodes[1]),
        "replacements not on {}",
        nodes[1]
    );
    wait_actual_scale(&env.client, &ns, &rev, i64::from(DECLARED)).await?;
    let d = deployment(&env.client, &ns, &rev).await?;
    ensure!(
        replicas(&d) == Some(DECLARED as i32),
        "replicas {:?}",
        replicas(&d)
    );
    let revisions = revision_names(&env.client, &ns).await?;
    ensure!(revisions == [rev], "{revisions:?}");
    defrag_support::delete_nodes(&env, &nodes).await;
    env.cleanup().await
}
