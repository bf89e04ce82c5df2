//! The dormancy controller on the real control plane: orgs flip at their due time, activity
//! wakes them at once with the declared scale restored, settings changes re-evaluate every org,
//! exempt orgs are kept warm and never sleep, revisions that escaped the webhook are corrected, invalid
//! settings are reported, and a converged cluster sees no writes.
//!
//! Each test runs its own `s2z-webhook --controller=true --org-selector s2z.dev/test=<id>`, so
//! the tests run in parallel on the shared plane. Needs `cargo build -p s2z-webhook` first.

mod controller_support;

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use controller_support::{Fixture, WAIT, time};
use s2z_core::labels::{DECLARED_ANNOTATION, INITIAL_SCALE, MIN_SCALE};
use s2z_core::org::OrgState;
use s2z_tests::env::eventually;
use s2z_tests::webhook::{WebhookProcess, sample_sum};
use serde_json::json;

const CALM: [(&str, &str); 3] = [
    ("orgDormancyPeriodSecs", "3600"),
    ("sweepIntervalSecs", "3600"),
    ("orgWarmupRatelimitStr", "100/s"),
];

#[tokio::test]
async fn org_goes_dormant_on_time_and_activity_wakes_it_with_declared_scale() -> Result<()> {
    let mut fx = Fixture::new("ctl-dormant", &CALM).await?;
    let webhook = fx.webhook(&[]).await?;
    let token = fx.sender("gateway", Some(&[])).await?;
    let name = fx.env.name("acme");
    let ns = fx.org_namespace(&name, "acme").await?;
    fx.revision(&ns, "py-00001", false, &[]).await?;
    fx.revision(&ns, "bert-00001", true, &[(MIN_SCALE, "3")])
        .await?;
    fx.org("acme", json!({"dormancyPeriodSecs": 5})).await?;

    // Active first: pynodes get the warm floor, the model keeps its own 3.
    fx.wait_state(&name, OrgState::Active, WAIT).await?;
    fx.wait_annotation(&ns, "py-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    // It was created with min-scale 3, so wait for the record of what it declared, which the
    // controller writes in the same reconcile as the pynode's floor, maybe a moment later.
    let bert = eventually("bert-00001's declared record", WAIT, || async {
        let a = fx.annotations(&ns, "bert-00001").await?;
        Ok(a.contains_key(DECLARED_ANNOTATION).then_some(a))
    })
    .await?;
    ensure!(
        bert.get(MIN_SCALE).map(String::as_str) == Some("3"),
        "{bert:?}"
    );

    // Dormant at the due time, not at a sweep.
    let active = fx.get_org(&name).await?;
    let due = time(active.status.as_ref().and_then(|s| s.dormant_at.as_deref()))?;
    let dormant = fx.wait_state(&name, OrgState::Dormant, WAIT).await?;
    let status = dormant.status.clone().unwrap_or_default();
    let since = time(status.state_since.as_deref())?;
    let lag = (since - due).to_std().unwrap_or_default();
    eprintln!("flip lag behind the due time: {lag:?}");
    ensure!(since >= due, "flipped before it was due: {since} < {due}");
    ensure!(lag <= Duration::from_secs(2), "flip lag {lag:?} > 2s");
    for rev in ["py-00001", "bert-00001"] {
        let a = fx
            .wait_annotation(&ns, rev, MIN_SCALE, Some("0"), WAIT)
            .await?;
        ensure!(
            a.get(INITIAL_SCALE).map(String::as_str) == Some("0"),
            "{rev}: {a:?}"
        );
    }
    let status = fx.get_org(&name).await?.status.unwrap_or_default();
    ensure!(
        (
            status.pynodes.total,
            status.pynodes.scaled_to_zero,
            status.models.total,
            status.models.scaled_to_zero
        ) == (1, 1, 1, 1),
        "{status:?}"
    );
    let reasons = fx.org_reasons(&name).await?;
    ensure!(reasons.contains(&"OrgDormant".to_string()), "{reasons:?}");

    // One signal wakes it at once and restores what the user declared.
    let sent = Instant::now();
    let (code, body) = webhook.activity(&name, Some(&token), "").await?;
    ensure!(code == 202, "{code} {body}");
    fx.wait_state(&name, OrgState::Active, WAIT).await?;
    fx.wait_annotation(&ns, "bert-00001", MIN_SCALE, Some("3"), WAIT)
        .await?;
    let py = fx
        .wait_annotation(&ns, "py-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    let woke = sent.elapsed();
    eprintln!("activity to restored annotations: {woke:?}");
    ensure!(woke <= Duration::from_secs(5), "waking took {woke:?}");
    ensure!(!py.contains_key(INITIAL_SCALE), "{py:?}");
    let status = fx.get_org(&name).await?.status.unwrap_or_default();
    ensure!(
        status.models.scaled_to_zero == 0 && status.pynodes.scaled_to_zero == 0,
        "{status:?}"
    );
    ensure!(status.last_activity_at.is_some(), "{status:?}");

    // Converged: nothing is written any more. A long period first, so that no flip falls into
    // the window however slow the machine is.
    let orgs = fx.orgs_api();
    let long = kube::api::Patch::Merge(json!({"spec": {"dormancyPeriodSecs": 3600}}));
    let generation = orgs
        .patch(&name, &Default::default(), &long)
        .await?
        .metadata
        .generation;
    eventually("the new generation observed", WAIT, || async {
        let org = fx.get_org(&name).await?;
        Ok((org.status.and_then(|s| s.observed_generation) == generation).then_some(()))
    })
    .await?;
    let writes = || async {
        let status = webhook
            .metric("s2z_webhook_controller_status_writes_total", &[])
            .await?;
        let patches = webhook
            .metric("s2z_webhook_controller_patches_total", &[])
            .await?;
        anyhow::Ok(status + patches)
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = writes().await?;
    let rv = fx.get_org(&name).await?.metadata.resource_version;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(writes().await? == before, "writes in steady state");
    let after = fx.get_org(&name).await?;
    ensure!(
        after.metadata.resource_version == rv,
        "the org was written in steady state: {:?}\nwebhook log:\n{}",
        after.metadata.managed_fields,
        webhook.logs()
    );
    fx.cleanup().await
}

/// The savings ledger on the real plane: the warm floor recorded at the flip to Dormant (pods
/// from the declared min-scale, GPUs from the revision's spec), floor times time dormant added
/// at the wake, and `kubectl s2z status` showing it.
#[tokio::test]
async fn the_ledger_counts_the_gpus_dormancy_did_not_hold() -> Result<()> {
    let mut fx = Fixture::new("ctl-ledger", &CALM).await?;
    let webhook = fx.webhook(&[]).await?;
    let token = fx.sender("gateway", Some(&[])).await?;
    let name = fx.env.name("acme");
    let ns = fx.org_namespace(&name, "acme").await?;
    fx.revision(&ns, "py-00001", false, &[]).await?;
    let model: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": "bert-00001", "namespace": ns,
                     "labels": {"serving.kserve.io/inferenceservice": "bert"},
                     "annotations": {MIN_SCALE: "2"}},
        "spec": {"containers": [{"image": "example.invalid/bert:1",
                                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
    }))?;
    fx.revisions(&ns)
        .create(&kube::api::PostParams::default(), &model)
        .await?;
    fx.org("acme", json!({})).await?;
    fx.wait_state(&name, OrgState::Active, WAIT).await?;
    let before = fx.get_org(&name).await?.status.unwrap_or_default();
    ensure!(
        before.savings.is_none(),
        "never dormant: {:?}",
        before.savings
    );

    // Asleep (as `kubectl s2z sleep` does it): the floor is 1 + 2 pods, 2 GPUs.
    let sleep = json!({"metadata": {"annotations": {"s2z.dev/sleep-requested-at": controller_support::stamp(chrono::Utc::now())}}});
    fx.orgs_api()
        .patch(&name, &Default::default(), &kube::api::Patch::Merge(sleep))
        .await?;
    let dormant = fx.wait_state(&name, OrgState::Dormant, WAIT).await?;
    let ledger = dormant.status.and_then(|s| s.savings).unwrap_or_default();
    ensure!(
        (ledger.floor_pods, ledger.floor_gpus, ledger.pod_seconds) == (3, 2, 0),
        "{ledger:?}"
    );

    tokio::time::sleep(Duration::from_secs(3)).await;
    let (code, body) = webhook.activity(&name, Some(&token), "").await?;
    ensure!(code == 202, "{code} {body}");
    let woken = fx.wait_state(&name, OrgState::Active, WAIT).await?;
    let ledger = woken.status.and_then(|s| s.savings).unwrap_or_default();
    let secs = ledger.pod_seconds / 3;
    ensure!(
        (3..=30).contains(&secs)
            && ledger.pod_seconds == 3 * secs
            && ledger.gpu_seconds == 2 * secs,
        "{ledger:?}"
    );

    // What the plugin shows: the stored totals, in the table and the JSON.
    let plugin = s2z_tests::plane::repo_root().join("target/debug");
    let out = s2z_tests::kubectl(
        &fx.env.plane,
        &[&plugin],
        &["s2z", "-n", &fx.sys, "status", &name],
    )?;
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{table}");
    ensure!(
        table.contains("SAVED") && table.contains(" GPU-s"),
        "{table}"
    );
    let out = s2z_tests::kubectl(
        &fx.env.plane,
        &[&plugin],
        &["s2z", "-n", &fx.sys, "status", &name, "-o", "json"],
    )?;
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        report["orgs"][0]["savings"]["gpuSeconds"] == json!(ledger.gpu_seconds)
            && report["totals"]["savedGpuSeconds"] == json!(ledger.gpu_seconds),
        "{report}"
    );
    fx.cleanup().await
}

/// Waits until the webhook's schedule metrics show `states` (orgs by state) and `due` (active
/// orgs due within a horizon), and prints them.
async fn schedule_is(
    webhook: &WebhookProcess,
    states: &[(&str, u64)],
    due: &[(&str, u64)],
) -> Result<()> {
    let text = eventually("the schedule metrics", WAIT, || async {
        let (_, text) = webhook.get("/metrics").await?;
        let matches = states.iter().all(|(state, n)| {
            sample_sum(&text, "s2z_webhook_controller_orgs", &[("state", state)]) == *n
        }) && due.iter().all(|(within, n)| {
            sample_sum(
                &text,
                "s2z_webhook_controller_orgs_due",
                &[("within", within)],
            ) == *n
        });
        Ok(matches.then_some(text))
    })
    .await?;
    for line in text.lines().filter(|l| {
        l.starts_with("s2z_webhook_controller_orgs")
            || l.starts_with("s2z_webhook_controller_next_flip")
    }) {
        eprintln!("{line}");
    }
    Ok(())
}

#[tokio::test]
async fn settings_change_re_evaluates_every_org_at_once() -> Result<()> {
    let mut fx = Fixture::new("ctl-settings", &CALM).await?;
    let webhook = fx.webhook(&[]).await?;
    let mut orgs = Vec::new();
    for suffix in ["one", "two", "three"] {
        let name = fx.env.name(suffix);
        let ns = fx.org_namespace(&name, suffix).await?;
        fx.revision(&ns, "app-00001", false, &[]).await?;
        fx.org(suffix, json!({})).await?;
        orgs.push((name, ns));
    }
    for (name, _) in &orgs {
        fx.wait_state(name, OrgState::Active, WAIT).await?;
    }
    // The schedule metrics (this webhook sees only this test's orgs): three active orgs, each
    // due in about an hour (the period), none within 5 minutes.
    schedule_is(
        &webhook,
        &[("Active", 3), ("Dormant", 0)],
        &[("5m", 0), ("6h", 3)],
    )
    .await?;
    let next = webhook
        .metric("s2z_webhook_controller_next_flip_seconds", &[])
        .await?;
    ensure!((3500..=3600).contains(&next), "next flip in {next}s");
    tokio::time::sleep(Duration::from_secs(2)).await;

    // One step: edit the ConfigMap. No sweep, no restart (the sweep interval is an hour).
    let changed = Instant::now();
    fx.set_settings(&[
        ("orgDormancyPeriodSecs", "1"),
        ("sweepIntervalSecs", "3600"),
        ("orgWarmupRatelimitStr", "100/s"),
    ])
    .await?;
    for (name, ns) in &orgs {
        fx.wait_state(name, OrgState::Dormant, WAIT).await?;
        fx.wait_annotation(ns, "app-00001", MIN_SCALE, Some("0"), WAIT)
            .await?;
    }
    let took = changed.elapsed();
    eprintln!("settings change to every org dormant and patched: {took:?}");
    schedule_is(&webhook, &[("Active", 0), ("Dormant", 3)], &[("24h", 0)]).await?;
    let flips = webhook
        .metric(
            "s2z_webhook_controller_flips_total",
            &[("from", "Active"), ("state", "Dormant")],
        )
        .await?;
    ensure!(flips == 3, "{flips} flips Active -> Dormant");
    // "At once" against a sweep interval of an hour; the bound only absorbs a loaded machine.
    ensure!(
        took <= Duration::from_secs(10),
        "re-evaluation took {took:?}"
    );

    // Invalid settings: the last valid ones stay, with an Event, a metric and no crash.
    fx.set_settings(&[("orgDormancyPeriodSecs", "soon")])
        .await?;
    let events = eventually("an InvalidSettings Event", WAIT, || async {
        let events = fx.events(&fx.sys, "ConfigMap", "s2z-settings").await?;
        Ok(events
            .iter()
            .any(|e| e.reason.as_deref() == Some("InvalidSettings"))
            .then_some(events))
    })
    .await?;
    let note = events
        .iter()
        .filter_map(|e| e.note.clone())
        .collect::<Vec<_>>()
        .join("\n");
    ensure!(note.contains("orgDormancyPeriodSecs"), "{note}");
    ensure!(
        webhook
            .metric("s2z_webhook_settings_invalid_total", &[])
            .await?
            >= 1
    );
    ensure!(webhook.metric("s2z_webhook_settings_valid", &[]).await? == 0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (name, _) in &orgs {
        let state = fx.get_org(name).await?.status.and_then(|s| s.state);
        ensure!(
            state == Some(OrgState::Dormant),
            "{name} is {state:?} under the last valid settings"
        );
    }
    ensure!(
        webhook.get("/healthz").await?.0 == 200,
        "the webhook is still up"
    );

    // Valid again, with a long period: every org wakes (creation is seconds ago).
    fx.set_settings(&CALM).await?;
    for (name, ns) in &orgs {
        fx.wait_state(name, OrgState::Active, WAIT).await?;
        fx.wait_annotation(ns, "app-00001", MIN_SCALE, Some("1"), WAIT)
            .await?;
    }
    ensure!(webhook.metric("s2z_webhook_settings_valid", &[]).await? == 1);
    fx.cleanup().await
}

#[tokio::test]
async fn exempt_orgs_never_sleep_and_stay_warm() -> Result<()> {
    let mut fx = Fixture::new("ctl-exempt", &CALM).await?;
    let _webhook = fx.webhook(&[]).await?;
    let name = fx.env.name("vip");
    let ns = fx.org_namespace(&name, "vip").await?;
    fx.revision(&ns, "py-00001", false, &[]).await?;
    fx.revision(&ns, "bert-00001", true, &[(MIN_SCALE, "2")])
        .await?;
    fx.org(
        "vip",
        json!({"scaleToZeroAllowed": false, "dormancyPeriodSecs": 1}),
    )
    .await?;

    fx.wait_state(&name, OrgState::Exempt, WAIT).await?;
    // The pynode that declares nothing gets the warm floor; the model keeps its declared 2.
    fx.wait_annotation(&ns, "py-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    // Well past the period: still exempt, still warm.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let org = fx.get_org(&name).await?;
    ensure!(org.status.as_ref().and_then(|s| s.state) == Some(OrgState::Exempt));
    let py = fx.annotations(&ns, "py-00001").await?;
    let bert = fx.annotations(&ns, "bert-00001").await?;
    ensure!(py.get(MIN_SCALE).map(String::as_str) == Some("1"), "{py:?}");
    ensure!(
        bert.get(MIN_SCALE).map(String::as_str) == Some("2") && !bert.contains_key(INITIAL_SCALE),
        "{bert:?}"
    );
    let reasons = fx.org_reasons(&name).await?;
    ensure!(reasons.contains(&"OrgExempt".to_string()), "{reasons:?}");

    // Allowed again: it is long idle, so dormant at once; exempt again: warm again, with the
    // declared values restored above the floor.
    let orgs = fx.orgs_api();
    let patch =
        |allowed: bool| kube::api::Patch::Merge(json!({"spec": {"scaleToZeroAllowed": allowed}}));
    orgs.patch(&name, &Default::default(), &patch(true)).await?;
    fx.wait_state(&name, OrgState::Dormant, WAIT).await?;
    fx.wait_annotation(&ns, "bert-00001", MIN_SCALE, Some("0"), WAIT)
        .await?;
    orgs.patch(&name, &Default::default(), &patch(false))
        .await?;
    fx.wait_state(&name, OrgState::Exempt, WAIT).await?;
    fx.wait_annotation(&ns, "bert-00001", MIN_SCALE, Some("2"), WAIT)
        .await?;
    let py = fx
        .wait_annotation(&ns, "py-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    let bert = fx.annotations(&ns, "bert-00001").await?;
    ensure!(!py.contains_key(INITIAL_SCALE), "{py:?}");
    ensure!(!bert.contains_key(INITIAL_SCALE), "{bert:?}");
    fx.cleanup().await
}

#[tokio::test]
async fn escaped_revisions_are_corrected_within_seconds() -> Result<()> {
    let mut fx = Fixture::new("ctl-escaped", &CALM).await?;
    let _webhook = fx.webhook(&[]).await?;
    let idle = fx.env.name("idle");
    let busy = fx.env.name("busy");
    let idle_ns = fx.org_namespace(&idle, "idle").await?;
    let busy_ns = fx.org_namespace(&busy, "busy").await?;
    fx.org("idle", json!({"dormancyPeriodSecs": 1})).await?;
    fx.org("busy", json!({})).await?;
    fx.wait_state(&idle, OrgState::Dormant, WAIT).await?;
    fx.wait_state(&busy, OrgState::Active, WAIT).await?;

    // No webhook is registered: these revisions are born unmutated, as when the webhook is down.
    let created = Instant::now();
    fx.revision(&idle_ns, "late-00001", false, &[]).await?;
    fx.revision(&busy_ns, "late-00001", true, &[(MIN_SCALE, "0")])
        .await?;
    fx.wait_annotation(&idle_ns, "late-00001", MIN_SCALE, Some("0"), WAIT)
        .await?;
    let busy_rev = fx
        .wait_annotation(&busy_ns, "late-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    let took = created.elapsed();
    eprintln!("escaped revisions corrected after {took:?}");
    ensure!(took <= Duration::from_secs(5), "correction took {took:?}");
    ensure!(
        busy_rev
            .get(DECLARED_ANNOTATION)
            .is_some_and(|d| d.contains("\"0\"")),
        "the declared 0 is recorded for the next dormancy: {busy_rev:?}"
    );

    // A namespace joining an org later is picked up too.
    let joined = fx.env.namespace("joined", &[]).await?;
    fx.revision(&joined, "py-00001", false, &[]).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(
        fx.annotations(&joined, "py-00001").await?.is_empty(),
        "not an org namespace yet"
    );
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> =
        kube::Api::all(fx.env.client.clone());
    namespaces
        .patch(
            &joined,
            &Default::default(),
            &kube::api::Patch::Merge(json!({"metadata": {"labels": {"s2z.dev/org": idle}}})),
        )
        .await?;
    fx.wait_annotation(&joined, "py-00001", MIN_SCALE, Some("0"), WAIT)
        .await?;
    let status = eventually("the idle org counting 2 pynodes", WAIT, || async {
        let status = fx.get_org(&idle).await?.status.unwrap_or_default();
        Ok((status.pynodes.total == 2).then_some(status))
    })
    .await?;
    ensure!(status.pynodes.scaled_to_zero == 2, "{status:?}");
    fx.cleanup().await
}
