//! The shipped RBAC is enough, and only what is needed: a webhook running as a ServiceAccount
//! holding exactly the rules of manifests/base/rbac.yaml (moved to this test's namespaces) does
//! the whole job: leader election, flips with Events, patches, status, the activity endpoint
//! with its TokenReview and SubjectAccessReview, and reports no permission error.
//!
//! Needs `cargo build -p s2z-webhook` first.

mod controller_support;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use controller_support::{Fixture, WAIT};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, DeleteParams, PostParams};
use s2z_core::labels::MIN_SCALE;
use s2z_core::org::OrgState;
use s2z_tests::plane::repo_root;
use s2z_tests::webhook::WebhookProcess;
use serde::Deserialize;
use serde_json::json;

/// The rules of one Role or ClusterRole of manifests/base/rbac.yaml.
fn shipped_rules(kind: &str, name: &str, namespace: Option<&str>) -> Result<Vec<PolicyRule>> {
    let text = std::fs::read_to_string(repo_root().join("manifests/base/rbac.yaml"))?;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        let meta = &value["metadata"];
        if value["kind"].as_str() == Some(kind)
            && meta["name"].as_str() == Some(name)
            && meta["namespace"].as_str() == namespace
        {
            return Ok(serde_yaml::from_value(value["rules"].clone())?);
        }
    }
    anyhow::bail!("{kind} {name} not found in manifests/base/rbac.yaml")
}

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
    let client = fx.env.client.clone();
    let id = fx.env.id.clone();
    let sa_name = "s2z-webhook";
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &fx.sys);
    sas.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": sa_name}}))?,
    )
    .await?;
    let subject = json!([{"kind": "ServiceAccount", "name": sa_name, "namespace": fx.sys}]);
    let cluster_name = format!("{id}-webhook");
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": cluster_name},
        "rules": shipped_rules("ClusterRole", "s2z-webhook", None)?,
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": cluster_name},
        "subjects": subject,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    for (ns, shipped_ns, shipped_name) in [
        (fx.sys.clone(), "s2z-system", "s2z-webhook"),
        (
            fx.knative.clone(),
            "knative-serving",
            "s2z-webhook-knative-config",
        ),
    ] {
        let role: Role = serde_json::from_value(json!({
            "metadata": {"name": shipped_name, "namespace": ns},
            "rules": shipped_rules("Role", shipped_name, Some(shipped_ns))?,
        }))?;
        Api::<Role>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &role)
            .await?;
        let binding: RoleBinding = serde_json::from_value(json!({
            "metadata": {"name": shipped_name, "namespace": ns},
            "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": shipped_name},
        }))?;
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &binding)
            .await?;
    }
    let token = sas
        .create_token_request(
            sa_name,
            &PostParams::default(),
            &TokenRequest {
                spec: Some(TokenRequestSpec {
                    expiration_seconds: Some(3600),
                    ..TokenRequestSpec::default()
                }),
                ..TokenRequest::default()
            },
        )
        .await?
        .status
        .and_then(|s| s.token)
        .context("no token")?;
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

    Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&cluster_name, &DeleteParams::default())
        .await
        .ok();
    Api::<ClusterRole>::all(client.clone())
        .delete(&cluster_name, &DeleteParams::default())
        .await
        .ok();
    fx.cleanup().await
}
