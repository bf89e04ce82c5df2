//! The shipped RBAC is enough, and only what is needed: a webhook running as a ServiceAccount
//! holding exactly the rules of manifests/base/rbac.yaml (moved to this test's namespaces) does
//! the whole job: leader election, flips with Events, patches, status, the activity endpoint
//! with its TokenReview and SubjectAccessReview, and reports no permission error.
//!
//! Needs `cargo build -p s2z-webhook` first.

mod controller_support;

use std::path::{Path, PathBuf};

use anyhow::{Result, ensure};
use controller_support::{Fixture, WAIT};
use s2z_core::labels::MIN_SCALE;
use s2z_core::org::OrgState;
use s2z_tests::webhook::WebhookProcess;
use serde_json::json;

fn kubeconfig(server: &str, ca: &Path, token: &str, dir: &Path) -> Result<PathBuf> {
    let config = json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "plane", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": "s2z-webhook", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "plane", "user": "s2z-webhook"}}],
        "current-context": "sa",
    });
    let path = dir.join("sa.kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

#[tokio::test]
async fn the_shipped_rbac_is_enough() -> Result<()> {
    let mut fx = Fixture::new(
        "ctl-rbac",
        &[
            ("orgDormancyPeriodSecs", "3600"),
            ("sweepIntervalSecs", "3600"),
            ("orgWarmupRatelimitStr", "100/s"),
        ],
    )
    .await?;
    let token = fx.webhook_identity().await?;
    let dir = tempfile::tempdir()?;
    let plane = &fx.env.plane;
    let config = kubeconfig(&plane.server, &plane.ca_file, &token, dir.path())?;
    let args = fx.args(&["--wake-on-traffic"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let webhook = WebhookProcess::start_with(&config, &args).await?;

    let sender = fx.sender("gateway", Some(&[])).await?;
    let name = fx.env.name("acme");
    let ns = fx.org_namespace(&name, "acme").await?;
    fx.revision(&ns, "app-00001", false, &[]).await?;
    fx.org("acme", json!({"dormancyPeriodSecs": 2})).await?;
    fx.wait_state(&name, OrgState::Dormant, WAIT).await?;
    fx.wait_annotation(&ns, "app-00001", MIN_SCALE, Some("0"), WAIT)
        .await?;
    let (code, body) = webhook.activity(&name, Some(&sender), "").await?;
    ensure!(code == 202, "{code} {body}");
    fx.wait_state(&name, OrgState::Active, WAIT).await?;
    fx.wait_annotation(&ns, "app-00001", MIN_SCALE, Some("1"), WAIT)
        .await?;
    ensure!(
        webhook
            .metric(
                "s2z_webhook_controller_events_total",
                &[("reason", "OrgDormant")]
            )
            .await?
            >= 1,
        "the flip Event was published"
    );
    fx.set_settings(&[("orgDormancyPeriodSecs", "never")])
        .await?;
    s2z_tests::env::eventually("the InvalidSettings Event", WAIT, || async {
        let n = webhook
            .metric(
                "s2z_webhook_controller_events_total",
                &[("reason", "InvalidSettings")],
            )
            .await?;
        Ok((n >= 1).then_some(()))
    })
    .await?;
    let logs = webhook.logs();
    ensure!(
        !logs.contains("forbidden") && !logs.contains("Forbidden"),
        "a permission is missing:\n{logs}"
    );

    fx.cleanup().await
}
