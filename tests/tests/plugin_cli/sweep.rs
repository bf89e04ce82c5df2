//! `kubectl s2z sweep`: the dry run, the wait for the controller and its timeout.

use anyhow::Result;
use k8s_openapi::jiff::{Timestamp, Unit};
use kube::api::{Api, Patch, PatchParams};
use s2z_core::labels::RECONCILE_ANNOTATION;
use s2z_core::org::Org;
use s2z_tests::env::eventually;
use serde_json::json;

use crate::support::{Fixture, WAIT, ago, names, org_row, revision, revisions_api, run_with};

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
        .env
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
        .env
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
