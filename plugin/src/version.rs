//! `kubectl s2z version`: the plugin's version, the cluster webhook's (from the annotation its
//! leader writes on the `s2z-controller` Lease) and the API server's.
//!
//! It never fails because of the cluster: a missing Lease is "not installed", anything else
//! that stops us from reading it is "unknown", with the reason.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde::Serialize;

use crate::client::Req;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::output::{API_VERSION, document};

/// Name of the controller's leader Lease in the install namespace.
pub const LEASE: &str = "s2z-controller";
/// Annotation on the Lease holding the leader's version.
pub const VERSION_ANNOTATION: &str = "s2z.dev/version";

/// Arguments of `version`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Only the client's version; do not contact the cluster
    #[arg(long)]
    pub client: bool,
}

/// `kubectl s2z version -o json|yaml`.
///
/// ```yaml
/// apiVersion: s2z.dev/v1alpha1
/// kind: VersionReport
/// clientVersion: 0.1.0
/// webhook:
///   status: installed          # installed | not installed | unknown
///   version: 0.1.0             # null unless installed and annotated
///   holder: s2z-webhook-7d9c   # the leader, when known
///   reason: null               # why the version is unknown or missing
/// kubernetesVersion: v1.36.0   # null when the cluster cannot be reached
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionReport {
    /// Always `s2z.dev/v1alpha1`.
    pub api_version: &'static str,
    /// Always `VersionReport`.
    pub kind: &'static str,
    /// This plugin's version.
    pub client_version: &'static str,
    /// The cluster webhook; absent with `--client`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookVersion>,
    /// The API server's version; absent with `--client`, null when unknown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<Option<String>>,
}

/// What is known about the webhook's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WebhookVersion {
    /// `installed`, `not installed` or `unknown`.
    pub status: &'static str,
    /// The version, when installed and annotated.
    pub version: Option<String>,
    /// The Lease holder.
    pub holder: Option<String>,
    /// Why the version is missing.
    pub reason: Option<String>,
}

impl WebhookVersion {
    /// Reads it from the Lease, or from why the Lease could not be read.
    pub fn from_lease(lease: Result<Option<Lease>>, namespace: &str) -> Self {
        match lease {
            Ok(Some(lease)) => {
                let holder = lease.spec.and_then(|s| s.holder_identity);
                match lease
                    .metadata
                    .annotations
                    .and_then(|mut a| a.remove(VERSION_ANNOTATION))
                {
                    Some(version) => WebhookVersion {
                        status: "installed",
                        version: Some(version),
                        holder,
                        reason: None,
                    },
                    None => WebhookVersion {
                        status: "unknown",
                        version: None,
                        holder,
                        reason: Some(format!(
                            "lease/{LEASE} in {namespace} has no {VERSION_ANNOTATION} annotation"
                        )),
                    },
                }
            }
            Ok(None) => WebhookVersion {
                status: "not installed",
                version: None,
                holder: None,
                reason: Some(format!("no lease/{LEASE} in {namespace}")),
            },
            Err(e) => WebhookVersion {
                status: "unknown",
                version: None,
                holder: None,
                reason: Some(e.to_string()),
            },
        }
    }

    fn line(&self) -> String {
        match (&self.version, &self.holder, &self.reason) {
            (Some(v), Some(h), _) => format!("{v} (leader {h})"),
            (Some(v), None, _) => v.clone(),
            (None, _, Some(reason)) => format!("{} ({reason})", self.status),
            (None, _, None) => self.status.to_string(),
        }
    }
}

/// The text form.
pub fn render_text(report: &VersionReport) -> String {
    let mut text = format!("Client Version: {}\n", report.client_version);
    if let Some(webhook) = &report.webhook {
        text.push_str(&format!("Webhook Version: {}\n", webhook.line()));
    }
    if let Some(kubernetes) = &report.kubernetes_version {
        text.push_str(&format!(
            "Kubernetes Version: {}\n",
            kubernetes.as_deref().unwrap_or("unknown")
        ));
    }
    text
}

async fn cluster_versions(ctx: &Ctx) -> (WebhookVersion, Option<String>) {
    let namespace = &ctx.options.namespace;
    let cluster = match ctx.cluster().await {
        Ok(cluster) => cluster,
        Err(e) => return (WebhookVersion::from_lease(Err(e), namespace), None),
    };
    let req = Req::new("get", "leases.coordination.k8s.io")
        .named(LEASE)
        .in_namespace(namespace.clone());
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), namespace);
    let (lease, server) = tokio::join!(api.get_opt(LEASE), cluster.client.apiserver_version());
    let lease = lease.map_err(|e| req.error(cluster, e));
    let kubernetes = server.ok().map(|info| info.git_version);
    (WebhookVersion::from_lease(lease, namespace), kubernetes)
}

/// Runs `version`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let (webhook, kubernetes_version) = if args.client {
        (None, None)
    } else {
        let (webhook, kubernetes) = cluster_versions(ctx).await;
        (Some(webhook), Some(kubernetes))
    };
    let report = VersionReport {
        api_version: API_VERSION,
        kind: "VersionReport",
        client_version: env!("CARGO_PKG_VERSION"),
        webhook,
        kubernetes_version,
    };
    let text = if ctx.options.format.is_structured() {
        document(ctx.options.format, &report)?
    } else {
        render_text(&report)
    };
    ctx.print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::collections::BTreeMap;

    fn lease(version: Option<&str>) -> Lease {
        let mut lease = Lease::default();
        lease.metadata.annotations =
            version.map(|v| BTreeMap::from([(VERSION_ANNOTATION.to_string(), v.to_string())]));
        lease.spec = Some(k8s_openapi::api::coordination::v1::LeaseSpec {
            holder_identity: Some("s2z-webhook-0".into()),
            ..Default::default()
        });
        lease
    }

    fn report(webhook: WebhookVersion) -> String {
        render_text(&VersionReport {
            api_version: API_VERSION,
            kind: "VersionReport",
            client_version: "0.1.0",
            webhook: Some(webhook),
            kubernetes_version: Some(Some("v1.36.0".into())),
        })
    }

    #[test]
    fn installed_not_installed_and_unknown() {
        let ns = "s2z-system";
        assert_eq!(
            report(WebhookVersion::from_lease(
                Ok(Some(lease(Some("0.2.0")))),
                ns
            )),
            "Client Version: 0.1.0\nWebhook Version: 0.2.0 (leader s2z-webhook-0)\nKubernetes Version: v1.36.0\n"
        );
        assert_eq!(
            report(WebhookVersion::from_lease(Ok(None), ns)),
            "Client Version: 0.1.0\nWebhook Version: not installed (no lease/s2z-controller in s2z-system)\nKubernetes Version: v1.36.0\n"
        );
        let unknown = WebhookVersion::from_lease(Ok(Some(lease(None))), ns);
        assert_eq!(unknown.status, "unknown");
        let unreachable = WebhookVersion::from_lease(
            Err(Error::Kubeconfig {
                why: "no context".into(),
            }),
            ns,
        );
        assert_eq!(unreachable.status, "unknown");
        assert_eq!(
            unreachable.reason.as_deref(),
            Some("failed to load kubeconfig: no context")
        );
    }
}
