//! The webhook's own identity as the manifests grant it: a ServiceAccount `s2z-webhook` in the
//! test's install namespace holding exactly the rules of manifests/base/rbac.yaml, with the
//! Roles moved to the test's install and Knative namespaces.

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use kube::api::{Api, PostParams};
use s2z_tests::plane::repo_root;
use serde::Deserialize;
use serde_json::json;

use super::Fixture;

/// The ServiceAccount's name, as in the manifests.
pub const WEBHOOK_SA: &str = "s2z-webhook";

/// The rules of one Role or ClusterRole of manifests/base/rbac.yaml.
pub fn shipped_rules(kind: &str, name: &str, namespace: Option<&str>) -> Result<Vec<PolicyRule>> {
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
    bail!("{kind} {name} not found in manifests/base/rbac.yaml")
}

impl Fixture {
    /// Creates the webhook's ServiceAccount with the shipped RBAC and returns a token for it
    /// (valid one hour). The ClusterRole and its binding are removed by [`Fixture::cleanup`].
    pub async fn webhook_identity(&mut self) -> Result<String> {
        let client = self.env.client.clone();
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &self.sys);
        sas.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": WEBHOOK_SA}}))?,
        )
        .await
        .context("failed to create the webhook's ServiceAccount")?;
        let subject =
            json!([{"kind": "ServiceAccount", "name": WEBHOOK_SA, "namespace": self.sys}]);
        let cluster_name = format!("{}-webhook", self.env.id);
        let role: ClusterRole = serde_json::from_value(json!({
            "metadata": {"name": cluster_name, "labels": {"s2z.dev/test": self.env.id}},
            "rules": shipped_rules("ClusterRole", "s2z-webhook", None)?,
        }))?;
        Api::<ClusterRole>::all(client.clone())
            .create(&PostParams::default(), &role)
            .await?;
        let binding: ClusterRoleBinding = serde_json::from_value(json!({
            "metadata": {"name": cluster_name, "labels": {"s2z.dev/test": self.env.id}},
            "subjects": subject,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_name},
        }))?;
        Api::<ClusterRoleBinding>::all(client.clone())
            .create(&PostParams::default(), &binding)
            .await?;
        self.cluster_rbac.push(cluster_name);
        for (ns, shipped_ns, shipped_name) in [
            (self.sys.clone(), "s2z-system", "s2z-webhook"),
            (
                self.knative.clone(),
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
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                expiration_seconds: Some(3600),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        sas.create_token_request(WEBHOOK_SA, &PostParams::default(), &request)
            .await
            .context("failed to request the webhook's token")?
            .status
            .and_then(|s| s.token)
            .context("the TokenRequest returned no token")
    }
}
