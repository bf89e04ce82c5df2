//! Connecting the way kubectl does, and turning API failures into the plugin's [`Error`]s.
//!
//! The kubeconfig is `--kubeconfig`, else `$KUBECONFIG` (a list, merged), else
//! `~/.kube/config`, else the in-cluster service account; `--context` picks the context.
//! Every request is described by a [`Req`] so that a failure says which verb on which resource
//! failed: that is what an RBAC error must name.

use std::fmt;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::Request;
use kube::{Client, Config};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Forbidden, Result};
use crate::options::Options;

/// The group-qualified resource name of orgs, as kubectl and RBAC messages spell it.
pub const ORGS: &str = "orgs.s2z.dev";

/// Field manager recorded on every write the plugin makes.
pub const FIELD_MANAGER: &str = "kubectl-s2z";

/// Page size of every list unless `--chunk-size` says otherwise (kubectl's default too): large
/// enough for few round trips, small enough to keep the API server's memory and our latency to
/// first byte low.
pub const DEFAULT_CHUNK_SIZE: u32 = 500;

/// A connected client and the server it talks to.
#[derive(Clone)]
pub struct Cluster {
    /// The client.
    pub client: Client,
    /// The API server URL, for messages.
    pub server: String,
    /// Objects per list request (`--chunk-size`); `None` lists everything at once.
    pub chunk_size: Option<u32>,
}

impl fmt::Debug for Cluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.server)
            .field("chunk_size", &self.chunk_size)
            .finish()
    }
}

/// Builds the client. Nothing is sent yet; an unreachable server shows on the first request.
pub async fn connect(options: &Options) -> Result<Cluster> {
    let kube_options = KubeConfigOptions {
        context: options.context.clone(),
        cluster: None,
        user: None,
    };
    let loaded = match &options.kubeconfig {
        Some(path) => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|e| Error::Kubeconfig { why: chain(&e) })?;
            Config::from_custom_kubeconfig(kubeconfig, &kube_options).await
        }
        None => Config::from_kubeconfig(&kube_options).await,
    };
    let mut config = match loaded {
        Ok(config) => config,
        // Like kubectl: with no kubeconfig at all, a pod uses its service account.
        Err(e) if options.kubeconfig.is_none() && options.context.is_none() => {
            Config::incluster().map_err(|_| Error::Kubeconfig { why: chain(&e) })?
        }
        Err(e) => return Err(Error::Kubeconfig { why: chain(&e) }),
    };
    if let Some(timeout) = options.request_timeout {
        config.connect_timeout = Some(timeout);
        config.read_timeout = Some(timeout);
        config.write_timeout = Some(timeout);
        config.reset_reader_on_write = true;
    }
    let server = config
        .cluster_url
        .to_string()
        .trim_end_matches('/')
        .to_string();
    let client = Client::try_from(config).map_err(|e| Error::Kubeconfig { why: chain(&e) })?;
    Ok(Cluster {
        client,
        server,
        chunk_size: options.chunk_size,
    })
}

/// One API request, named the way kubectl and RBAC name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Req {
    /// RBAC verb: get, list, watch, create, patch.
    pub verb: &'static str,
    /// Resource, group-qualified, with `/subresource` if any: `orgs.s2z.dev/status`.
    pub resource: &'static str,
    /// Object name.
    pub name: Option<String>,
    /// Namespace of a namespaced request.
    pub namespace: Option<String>,
}

impl Req {
    /// A request on a cluster-wide collection.
    pub fn new(verb: &'static str, resource: &'static str) -> Self {
        Req {
            verb,
            resource,
            name: None,
            namespace: None,
        }
    }

    /// The same request on one object.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The same request in a namespace.
    pub fn in_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// "patch orgs.s2z.dev/acme", "get configmaps/s2z-settings in namespace s2z-system".
    pub fn what(&self) -> String {
        let (resource, sub) = match self.resource.split_once('/') {
            Some((r, s)) => (r, Some(s)),
            None => (self.resource, None),
        };
        let mut what = format!("{} {resource}", self.verb);
        if let Some(name) = &self.name {
            what.push('/');
            what.push_str(name);
        }
        if let Some(sub) = sub {
            what.push_str(&format!(" ({sub})"));
        }
        if let Some(ns) = &self.namespace {
            what.push_str(&format!(" in namespace {ns}"));
        }
        what
    }

    /// Maps a client error to the plugin's error for this request.
    pub fn error(&self, cluster: &Cluster, err: kube::Error) -> Error {
        map_error(self, &cluster.server, err)
    }
}

/// Whether a 404 means the resource type itself is missing, rather than one object.
fn type_missing(status: &kube::core::Status) -> bool {
    status
        .message
        .contains("could not find the requested resource")
        || status.details.as_ref().is_none_or(|d| d.name.is_empty())
}

/// Maps a client error for `req` against `server`.
pub fn map_error(req: &Req, server: &str, err: kube::Error) -> Error {
    let what = req.what();
    match err {
        kube::Error::Api(status) => {
            let why = if status.message.is_empty() {
                format!("{} ({})", status.reason, status.code)
            } else {
                status.message.clone()
            };
            match status.code {
                401 => Error::Unauthorized {
                    what,
                    server: server.to_string(),
                    why,
                },
                403 => Error::Forbidden(Forbidden {
                    what,
                    verb: req.verb.to_string(),
                    resource: req.resource.to_string(),
                    namespace: req.namespace.clone(),
                    why,
                }),
                404 if req.resource.starts_with(ORGS) && type_missing(&status) => {
                    Error::NotInstalled {
                        what,
                        why: format!(
                            "the {ORGS} CustomResourceDefinition is not installed on this cluster"
                        ),
                    }
                }
                404 if req.resource.starts_with(ORGS) => Error::UnknownOrg {
                    names: req.name.iter().cloned().collect(),
                },
                _ => Error::Api { what, why },
            }
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => Error::Unreachable {
            what,
            server: server.to_string(),
            why: chain(&err),
        },
        kube::Error::Auth(_) => Error::Unauthorized {
            what,
            server: server.to_string(),
            why: chain(&err),
        },
        other => Error::Api {
            what,
            why: chain(&other),
        },
    }
}

/// An error and its sources, deduplicated: kube repeats the inner message in the outer one.
pub fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        let text = text
            .strip_prefix("ServiceError: ")
            .or_else(|| text.strip_prefix("HyperError: "))
            .unwrap_or(&text)
            .to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.retain(|p| !text.contains(p.as_str()));
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// One page of a list response; items are read into the caller's small struct, so only the
/// fields the plugin needs are kept.
#[derive(Deserialize)]
struct Page<T> {
    #[serde(default)]
    metadata: PageMeta,
    // An empty PartialObjectMetadataList says `"items": null`.
    #[serde(default = "Option::default")]
    items: Option<Vec<T>>,
}

#[derive(Deserialize, Default)]
struct PageMeta {
    #[serde(default, rename = "continue")]
    continue_: Option<String>,
}

/// How much of each object a list returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Whole objects.
    Full,
    /// Metadata only (`PartialObjectMetadataList`): the server drops spec and status.
    Metadata,
}

/// Lists every object at `path` (e.g. `/api/v1/pods`), `--chunk-size` at a time, following
/// `continue` tokens. Server-side selectors go in `lp`.
pub async fn list_all<T: DeserializeOwned>(
    cluster: &Cluster,
    req: &Req,
    path: &str,
    lp: &kube::api::ListParams,
    shape: Shape,
) -> Result<Vec<T>> {
    let request = Request::new(path);
    let mut lp = lp.clone();
    lp.limit = cluster.chunk_size;
    let mut items = Vec::new();
    loop {
        let http = match shape {
            Shape::Full => request.list(&lp),
            Shape::Metadata => request.list_metadata(&lp),
        }
        .map_err(|e| Error::Api {
            what: req.what(),
            why: chain(&e),
        })?;
        let page: Page<T> = cluster
            .client
            .request(http)
            .await
            .map_err(|e| req.error(cluster, e))?;
        items.extend(page.items.unwrap_or_default());
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp.continue_token = Some(token),
            None => return Ok(items),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, message: &str, name: &str) -> kube::Error {
        let mut status = Status::failure(message, "NotFound").with_code(code);
        if !name.is_empty() {
            status.details = serde_json::from_value(serde_json::json!({"name": name})).ok();
        }
        kube::Error::Api(status.boxed())
    }

    #[test]
    fn requests_are_named_like_kubectl() {
        assert_eq!(Req::new("list", ORGS).what(), "list orgs.s2z.dev");
        assert_eq!(
            Req::new("patch", "orgs.s2z.dev/status")
                .named("acme")
                .what(),
            "patch orgs.s2z.dev/acme (status)"
        );
        assert_eq!(
            Req::new("get", "configmaps")
                .named("s2z-settings")
                .in_namespace("s2z-system")
                .what(),
            "get configmaps/s2z-settings in namespace s2z-system"
        );
    }

    #[test]
    fn not_found_tells_a_missing_crd_from_a_missing_org() {
        let get = Req::new("get", ORGS).named("acme");
        let missing_type = map_error(
            &get,
            "https://k",
            api(404, "the server could not find the requested resource", ""),
        );
        assert!(
            matches!(missing_type, Error::NotInstalled { .. }),
            "{missing_type:?}"
        );
        let missing_org = map_error(
            &get,
            "https://k",
            api(404, "orgs.s2z.dev \"acme\" not found", "acme"),
        );
        assert_eq!(
            missing_org.to_string(),
            "failed to find org/acme: no such org"
        );
        let cm = Req::new("get", "configmaps").named("x");
        let other = map_error(
            &cm,
            "https://k",
            api(404, "configmaps \"x\" not found", "x"),
        );
        assert!(matches!(other, Error::Api { .. }));
    }

    #[test]
    fn forbidden_names_verb_and_resource() {
        let req = Req::new("patch", ORGS).named("acme");
        let e = map_error(
            &req,
            "https://k",
            api(
                403,
                "orgs.s2z.dev \"acme\" is forbidden: User \"bob\" cannot patch resource \"orgs\"",
                "",
            ),
        );
        assert_eq!(e.exit_code(), crate::error::exit::FORBIDDEN);
        assert_eq!(
            e.to_string(),
            "failed to patch orgs.s2z.dev/acme: forbidden: orgs.s2z.dev \"acme\" is forbidden: User \"bob\" cannot patch resource \"orgs\""
        );
    }

    #[test]
    fn chain_drops_repeated_messages() {
        #[derive(Debug, thiserror::Error)]
        #[error("outer: inner")]
        struct Outer(#[source] Inner);
        #[derive(Debug, thiserror::Error)]
        #[error("inner")]
        struct Inner;
        assert_eq!(chain(&Outer(Inner)), "outer: inner");
    }
}
