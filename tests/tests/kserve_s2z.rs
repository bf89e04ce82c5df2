//! s2z with real KServe: the model is an InferenceService, and KServe's own controller (tests/kserve,
//! KServe v0.17.0 in serverless mode) owns the Knative Service it makes from it, on the plane with
//! real Knative Serving.
//!
//! What is shown here, beyond `knative_s2z.rs` (whose tests deploy the same InferenceService):
//! - the Revision edits s2z makes survive KServe reconciling its Knative Service: KServe never
//!   reverts them, because it owns the Knative Service's spec and labels and s2z only edits
//!   Revisions;
//! - toggling an org dormant and active makes no Revision and leaves the Knative Service's
//!   generation alone;
//! - what s2z records as declared and restores is the InferenceService's own `minReplicas`.
//!
//! Needs `cargo build -p s2z-webhook -p kubectl-s2z` first (`make test` does it).

mod controller_support;
mod defrag_support;
mod knative_support;

use anyhow::{Context, Result, ensure};
use knative_support::*;
use kube::api::{DynamicObject, Patch, PatchParams};
use s2z_core::labels::{DECLARED_ANNOTATION, INITIAL_SCALE, MIN_SCALE};
use s2z_core::org::OrgState;
use s2z_tests::env::eventually;
use serde_json::json;

/// A label KServe does not put on its Knative Service: set by hand, it makes KServe reconcile
/// (it watches the Knative Services it owns) and take it off again (it owns their labels).
const POKE: &str = "s2z.dev/test-poke";

/// Makes KServe reconcile the model now, and waits until it has: the poke label, put on its
/// Knative Service by hand, is gone. Returns the Knative Service after KServe's update.
async fn kserve_reconciles(s2z: &S2z, poke: &str) -> Result<DynamicObject> {
    let services = api(s2z.client(), &s2z.ns, "Service");
    services
        .patch(
            MODEL,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {POKE: poke}}})),
        )
        .await
        .with_context(|| format!("failed to label ksvc {MODEL}"))?;
    eventually(
        &format!("KServe reconciling {MODEL} ({poke})"),
        WAIT,
        || async {
            let ksvc = services.get(MODEL).await?;
            let labels = ksvc.metadata.labels.clone().unwrap_or_default();
            Ok((!labels.contains_key(POKE)).then_some(ksvc))
        },
    )
    .await
}

fn generation(obj: &DynamicObject) -> Option<i64> {
    obj.metadata.generation
}

/// The min-scale annotation of a Knative Service's Revision template (KServe's `minReplicas`).
fn template_min_scale(ksvc: &DynamicObject) -> Option<&serde_json::Value> {
    ksvc.data.pointer(&format!(
        "/spec/template/metadata/annotations/{}",
        MIN_SCALE.replace('/', "~1")
    ))
}

/// Ten sleep/wake rounds through `kubectl s2z sleep` and `kubectl s2z wake`, with KServe made to
/// reconcile after every flip: the Revision keeps exactly what s2z wrote (min-scale 0 while
/// dormant, the InferenceService's `minReplicas` once awake), no Revision is created, and the
/// Knative Service KServe owns keeps its generation and its min-scale (s2z never edits it).
#[tokio::test]
async fn ten_toggles_make_no_revision_and_kserve_reverts_none_of_s2zs_edits() -> Result<()> {
    let s2z = S2z::start("ks-s2z-toggle").await?;
    s2z.deploy_warm().await?;
    let rev = format!("{MODEL}-00001");
    let declared = DECLARED.to_string();
    let services = api(s2z.client(), &s2z.ns, "Service");
    let isvcs = api(s2z.client(), &s2z.ns, "InferenceService");
    let ksvc_before = services.get(MODEL).await?;
    let isvc_before = isvcs.get(ISVC).await?;
    let revisions_before = revision_names(s2z.client(), &s2z.ns).await?;
    ensure!(revisions_before == [rev.clone()], "{revisions_before:?}");
    // KServe made the template's min-scale from minReplicas: what s2z records as declared.
    ensure!(
        template_min_scale(&ksvc_before) == Some(&json!(declared)),
        "KServe's ksvc template min-scale {:?}",
        template_min_scale(&ksvc_before)
    );

    for round in 1..=10 {
        s2z.plugin(&["sleep", s2z.org.as_str()])?;
        s2z.fx.wait_state(&s2z.org, OrgState::Dormant, WAIT).await?;
        s2z.fx
            .wait_annotation(&s2z.ns, &rev, MIN_SCALE, Some("0"), WAIT)
            .await?;
        let ksvc = kserve_reconciles(&s2z, &format!("{round}-dormant")).await?;
        ensure!(
            generation(&ksvc) == generation(&ksvc_before),
            "round {round}: ksvc generation {:?} after going dormant",
            generation(&ksvc)
        );
        let kept = s2z.fx.annotations(&s2z.ns, &rev).await?;
        ensure!(
            kept.get(MIN_SCALE).map(String::as_str) == Some("0"),
            "round {round}: dormant {rev} after KServe's reconcile: {kept:?}"
        );
        let recorded = kept.get(DECLARED_ANNOTATION).cloned().unwrap_or_default();
        ensure!(
            recorded.contains(&format!(r#""{MIN_SCALE}":"{declared}""#)),
            "round {round}: declared record {recorded:?}"
        );

        s2z.plugin(&["wake", s2z.org.as_str()])?;
        s2z.fx.wait_state(&s2z.org, OrgState::Active, WAIT).await?;
        s2z.fx
            .wait_annotation(&s2z.ns, &rev, MIN_SCALE, Some(&declared), WAIT)
            .await?;
        let ksvc = kserve_reconciles(&s2z, &format!("{round}-active")).await?;
        ensure!(
            generation(&ksvc) == generation(&ksvc_before),
            "round {round}: ksvc generation {:?} after waking",
            generation(&ksvc)
        );
        let kept = s2z.fx.annotations(&s2z.ns, &rev).await?;
        ensure!(
            kept.get(MIN_SCALE) == Some(&declared) && !kept.contains_key(INITIAL_SCALE),
            "round {round}: woken {rev} after KServe's reconcile: {kept:?}"
        );
    }

    let ksvc_after = services.get(MODEL).await?;
    let isvc_after = isvcs.get(ISVC).await?;
    // KServe created it once and s2z never wrote it: generation 1, template as KServe made it.
    ensure!(
        generation(&ksvc_after) == Some(1) && generation(&ksvc_before) == Some(1),
        "ksvc generation {:?} -> {:?}",
        generation(&ksvc_before),
        generation(&ksvc_after)
    );
    ensure!(
        template_min_scale(&ksvc_after) == Some(&json!(declared)),
        "ksvc template min-scale at the end {:?}",
        template_min_scale(&ksvc_after)
    );
    ensure!(
        generation(&isvc_after) == generation(&isvc_before),
        "InferenceService generation {:?} -> {:?}",
        generation(&isvc_before),
        generation(&isvc_after)
    );
    let revisions_after = revision_names(s2z.client(), &s2z.ns).await?;
    ensure!(
        revisions_after == revisions_before,
        "revisions {revisions_before:?} -> {revisions_after:?}"
    );
    let latest = ksvc_after
        .data
        .pointer("/status/latestCreatedRevisionName")
        .cloned();
    ensure!(latest == Some(json!(rev)), "latest created {latest:?}");
    eprintln!(
        "10 rounds: ksvc generation {:?}, revisions {revisions_after:?}",
        generation(&ksvc_after)
    );
    // Awake at the end: the model serves its declared pods again.
    wait_serving(s2z.client(), &s2z.ns, &rev, DECLARED as usize).await?;
    s2z.cleanup().await
}

/// A dormant org's model update, made the KServe way (a new InferenceService spec), creates one
/// Revision, born at zero with the InferenceService's `minReplicas` kept as declared; the wake
/// restores that `minReplicas` (3), not 1, and the model gets its pods.
#[tokio::test]
async fn a_dormant_orgs_inferenceservice_update_is_born_at_zero_and_wakes_to_min_replicas()
-> Result<()> {
    let s2z = S2z::start("ks-s2z-update").await?;
    s2z.deploy_warm().await?;
    s2z.sleep().await?;
    let ksvc_before = api(s2z.client(), &s2z.ns, "Service").get(MODEL).await?;

    let born = s2z.redeploy().await?;
    let name = format!("{MODEL}-00002");
    ensure!(
        born.metadata.name.as_deref() == Some(name.as_str()),
        "{:?}",
        born.metadata.name
    );
    ensure_born_at_zero(&born)?;
    let revisions = revision_names(s2z.client(), &s2z.ns).await?;
    ensure!(
        revisions == [format!("{MODEL}-00001"), name.clone()],
        "one update, one revision: {revisions:?}"
    );
    // KServe rolled the update into its Knative Service: one new generation, template
    // min-scale still the InferenceService's minReplicas (s2z edits Revisions only).
    let ksvc = api(s2z.client(), &s2z.ns, "Service").get(MODEL).await?;
    ensure!(
        generation(&ksvc) == generation(&ksvc_before).map(|g| g + 1),
        "ksvc generation {:?} -> {:?}",
        generation(&ksvc_before),
        generation(&ksvc)
    );
    let scale = s2z_tests::scale::observe(s2z.client(), &s2z.ns, &name).await?;
    ensure!(
        scale.is_zero(),
        "{name} started pods while dormant: {scale:?}"
    );

    s2z.plugin(&["wake", s2z.org.as_str()])?;
    s2z.wait_restored(&name).await?;
    let serving = wait_serving(s2z.client(), &s2z.ns, &name, DECLARED as usize).await?;
    eprintln!(
        "woken: {name} min-scale {DECLARED}, {} pods serving",
        serving.len()
    );
    s2z.cleanup().await
}

/// Why s2z edits Revisions and never the Knative Service: KServe owns the Knative Service's
/// template, and puts back an edit to it (here the seed's way of putting a model to sleep,
/// min-scale 0 on the template) on its next reconcile, each change costing a generation, and
/// Knative at least one more Revision.
#[tokio::test]
async fn kserve_puts_back_an_edit_to_the_knative_service_it_owns() -> Result<()> {
    let s2z = S2z::start("ks-s2z-owned").await?;
    s2z.deploy_warm().await?;
    let services = api(s2z.client(), &s2z.ns, "Service");
    let before = services.get(MODEL).await?;
    let revisions_before = revision_names(s2z.client(), &s2z.ns).await?;
    services
        .patch(
            MODEL,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"template": {"metadata": {"annotations": {MIN_SCALE: "0"}}}}}),
            ),
        )
        .await
        .with_context(|| format!("failed to edit ksvc {MODEL}"))?;
    let declared = json!(DECLARED.to_string());
    let put_back = eventually("KServe putting the template back", WAIT, || async {
        let ksvc = services.get(MODEL).await?;
        let back = template_min_scale(&ksvc) == Some(&declared)
            && generation(&ksvc) > generation(&before).map(|g| g + 1);
        Ok(back.then_some(ksvc))
    })
    .await?;
    // Knative makes a Revision per template generation it sees (the edit's and KServe's may
    // be seen as one when they come close together): at least one more.
    let revisions = eventually("a Revision for the edited template", WAIT, || async {
        let now = revision_names(s2z.client(), &s2z.ns).await?;
        Ok((now.len() > revisions_before.len()).then_some(now))
    })
    .await?;
    eprintln!(
        "ksvc generation {:?} -> {:?}, template min-scale {:?}, revisions {revisions_before:?} -> {revisions:?}",
        generation(&before),
        generation(&put_back),
        template_min_scale(&put_back)
    );
    s2z.cleanup().await
}
