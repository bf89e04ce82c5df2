//! What the plugin reads from the cluster, each kind once: orgs, their namespaces, revisions,
//! running pods and the settings, listed with pagination and server-side selectors and joined
//! in memory. No request is ever made per org, so `status` stays fast with thousands of them.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams};
use s2z_core::labels::{ORG_LABEL, REVISION_LABEL};
use s2z_core::org::Org;
use s2z_core::settings::{
    KNATIVE_AUTOSCALER_CONFIGMAP, KNATIVE_NAMESPACE, KnativeConfig, SETTINGS_CONFIGMAP, Settings,
    SettingsError,
};

use crate::client::{Cluster, ORGS, Req, Shape, list_all};
use crate::error::{Error, Result};

mod objects;
pub use objects::{Container, Meta, Object, Pod, PodCondition, PodSpec, PodStatus, Resources};

/// Above this many namespaces, one cluster-wide list beats one list per namespace.
const PER_NAMESPACE_LIMIT: usize = 4;

/// Where the settings shown came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsView {
    /// The settings in force (defaults for missing or unreadable keys).
    pub settings: Settings,
    /// The ConfigMap's data as found (empty when it does not exist).
    pub data: BTreeMap<String, String>,
    /// Whether the ConfigMap exists.
    pub exists: bool,
    /// The install namespace.
    pub namespace: String,
    /// Problems with the ConfigMap: unreadable values, unknown keys.
    pub problems: Vec<String>,
}

impl SettingsView {
    /// Reads settings from ConfigMap data; a bad value is reported and replaced by its default,
    /// so that one typo does not hide everything else.
    pub fn from_data(namespace: &str, data: Option<BTreeMap<String, String>>) -> SettingsView {
        let exists = data.is_some();
        let data = data.unwrap_or_default();
        let mut problems = Vec::new();
        let mut usable = data.clone();
        let settings = loop {
            match Settings::from_data(&usable) {
                Ok(settings) => break settings,
                Err(SettingsError::InvalidValue { key, value, reason })
                    if usable.contains_key(&key) =>
                {
                    problems.push(format!(
                        "ignoring {key}={value:?} (using the default): {reason}"
                    ));
                    usable.remove(&key);
                }
                Err(e) => {
                    problems.push(e.to_string());
                    break Settings::default();
                }
            }
        };
        for key in Settings::unknown_keys(&data) {
            problems.push(format!(
                "unknown key {key:?} in configmap {SETTINGS_CONFIGMAP} is ignored"
            ));
        }
        SettingsView {
            settings,
            data,
            exists,
            namespace: namespace.to_string(),
            problems,
        }
    }

    /// `configmap/s2z-settings in s2z-system`, or that it is missing.
    pub fn source(&self) -> String {
        if self.exists {
            format!("configmap/{SETTINGS_CONFIGMAP} in {}", self.namespace)
        } else {
            format!(
                "defaults (no configmap/{SETTINGS_CONFIGMAP} in {})",
                self.namespace
            )
        }
    }
}

/// Reads a ConfigMap's data; `None` when it does not exist.
pub async fn configmap_data(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, String>>> {
    let req = Req::new("get", "configmaps")
        .named(name)
        .in_namespace(namespace);
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
    let cm = api.get_opt(name).await.map_err(|e| req.error(cluster, e))?;
    Ok(cm.map(|cm| cm.data.unwrap_or_default()))
}

/// The settings in the install namespace.
pub async fn settings(cluster: &Cluster, namespace: &str) -> Result<SettingsView> {
    let data = configmap_data(cluster, namespace, SETTINGS_CONFIGMAP).await?;
    Ok(SettingsView::from_data(namespace, data))
}

/// Knative's autoscaler configuration; Knative's defaults when it is missing or unreadable,
/// with a note saying so.
pub async fn knative_config(cluster: &Cluster) -> (KnativeConfig, Option<String>) {
    match configmap_data(cluster, KNATIVE_NAMESPACE, KNATIVE_AUTOSCALER_CONFIGMAP).await {
        Ok(Some(data)) => (KnativeConfig::from_data(&data), None),
        Ok(None) => (
            KnativeConfig::default(),
            Some(format!(
                "no configmap/{KNATIVE_AUTOSCALER_CONFIGMAP} in {KNATIVE_NAMESPACE}: assuming Knative's defaults"
            )),
        ),
        Err(e) => (
            KnativeConfig::default(),
            Some(format!("{e}; assuming Knative's defaults")),
        ),
    }
}

/// Which orgs to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Org names; empty means every org.
    pub names: Vec<String>,
    /// A label selector on orgs (`-l`).
    pub selector: Option<String>,
}

/// Everything `status` and `sweep` need, read once.
#[derive(Debug, Clone, Default)]
pub struct Inventory {
    /// The selected orgs, by name.
    pub orgs: Vec<Org>,
    /// Namespace → org, for the selected orgs' namespaces.
    pub namespaces: BTreeMap<String, String>,
    /// Revisions in those namespaces (metadata only).
    pub revisions: Vec<Object>,
    /// Running Knative pods in those namespaces.
    pub pods: Vec<Pod>,
    /// Things the reader could not see, e.g. Knative not installed.
    pub notes: Vec<String>,
}

impl Inventory {
    /// Namespaces of `org`, sorted.
    pub fn namespaces_of(&self, org: &str) -> Vec<String> {
        self.namespaces
            .iter()
            .filter(|(_, o)| o.as_str() == org)
            .map(|(ns, _)| ns.clone())
            .collect()
    }
}

fn org_selector(names: &[String]) -> String {
    if names.is_empty() {
        ORG_LABEL.to_string()
    } else {
        format!("{ORG_LABEL} in ({})", names.join(","))
    }
}

/// Lists the orgs of `selection`, failing with [`Error::UnknownOrg`] for names that do not
/// exist.
pub async fn orgs(cluster: &Cluster, selection: &Selection) -> Result<Vec<Org>> {
    let mut lp = ListParams::default();
    if let Some(selector) = &selection.selector {
        lp = lp.labels(selector);
    }
    if let [name] = selection.names.as_slice() {
        lp = lp.fields(&format!("metadata.name={name}"));
    }
    let req = Req::new("list", ORGS);
    let mut orgs: Vec<Org> = list_all(
        cluster,
        &req,
        "/apis/s2z.dev/v1alpha1/orgs",
        &lp,
        Shape::Full,
    )
    .await?;
    if !selection.names.is_empty() {
        let wanted: BTreeSet<&str> = selection.names.iter().map(String::as_str).collect();
        orgs.retain(|o| {
            o.metadata
                .name
                .as_deref()
                .is_some_and(|n| wanted.contains(n))
        });
        let found: BTreeSet<&str> = orgs
            .iter()
            .filter_map(|o| o.metadata.name.as_deref())
            .collect();
        let missing: Vec<String> = selection
            .names
            .iter()
            .filter(|n| !found.contains(n.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() && selection.selector.is_none() {
            return Err(Error::UnknownOrg { names: missing });
        }
    }
    orgs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    Ok(orgs)
}

async fn org_namespaces(cluster: &Cluster, names: &[String]) -> Result<BTreeMap<String, String>> {
    let lp = ListParams::default().labels(&org_selector(names));
    let req = Req::new("list", "namespaces");
    let list: Vec<Object> =
        list_all(cluster, &req, "/api/v1/namespaces", &lp, Shape::Metadata).await?;
    Ok(list
        .into_iter()
        .filter_map(|ns| {
            let org = ns.metadata.labels.get(ORG_LABEL)?.clone();
            Some((ns.metadata.name, org))
        })
        .collect())
}

/// Where to list namespaced objects: everywhere at once, or in a few namespaces.
fn scopes(namespaces: &BTreeMap<String, String>, everywhere: bool) -> Vec<Option<String>> {
    if everywhere || namespaces.len() > PER_NAMESPACE_LIMIT {
        vec![None]
    } else {
        namespaces.keys().cloned().map(Some).collect()
    }
}

async fn revisions(
    cluster: &Cluster,
    scopes: &[Option<String>],
) -> Result<(Vec<Object>, Option<String>)> {
    let lists = scopes.iter().map(|scope| async move {
        let (path, req) = match scope {
            Some(ns) => (
                format!("/apis/serving.knative.dev/v1/namespaces/{ns}/revisions"),
                Req::new("list", "revisions.serving.knative.dev").in_namespace(ns.clone()),
            ),
            None => (
                "/apis/serving.knative.dev/v1/revisions".to_string(),
                Req::new("list", "revisions.serving.knative.dev"),
            ),
        };
        list_all::<Object>(
            cluster,
            &req,
            &path,
            &ListParams::default(),
            Shape::Metadata,
        )
        .await
    });
    match futures::future::try_join_all(lists).await {
        Ok(lists) => Ok((lists.into_iter().flatten().collect(), None)),
        // Without Knative there are no workloads to count; say so rather than fail.
        Err(Error::Api { why, .. }) if why.contains("could not find the requested resource") => Ok((
            Vec::new(),
            Some("Knative Serving is not installed (no revisions.serving.knative.dev): no workloads counted".into()),
        )),
        Err(e) => Err(e),
    }
}

async fn running_pods(cluster: &Cluster, scopes: &[Option<String>]) -> Result<Vec<Pod>> {
    // Server-side: only Knative revision pods, only running ones.
    let lp = ListParams::default()
        .labels(REVISION_LABEL)
        .fields("status.phase=Running");
    let lists = scopes.iter().map(|scope| {
        let lp = lp.clone();
        async move {
            let (path, req) = match scope {
                Some(ns) => (
                    format!("/api/v1/namespaces/{ns}/pods"),
                    Req::new("list", "pods").in_namespace(ns.clone()),
                ),
                None => ("/api/v1/pods".to_string(), Req::new("list", "pods")),
            };
            list_all::<Pod>(cluster, &req, &path, &lp, Shape::Full).await
        }
    });
    Ok(futures::future::try_join_all(lists)
        .await?
        .into_iter()
        .flatten()
        .collect())
}

/// What to read besides orgs and namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Want {
    /// Revisions.
    pub revisions: bool,
    /// Running pods.
    pub pods: bool,
}

/// Reads the inventory of `selection`. Without org names every list starts at once; with names
/// the namespaces are read first so that revisions and pods are listed only where needed.
pub async fn inventory(cluster: &Cluster, selection: &Selection, want: Want) -> Result<Inventory> {
    let everywhere = selection.names.is_empty();
    let nothing = || async { Ok((Vec::new(), None)) };
    let (orgs, namespaces, revisions, pods) = if everywhere {
        let all = [None];
        // Everything at once; errors are checked in this order so that a missing CRD is
        // reported as such rather than as whichever list failed first.
        let (orgs, namespaces, revisions, pods) = tokio::join!(
            orgs(cluster, selection),
            org_namespaces(cluster, &[]),
            async {
                if want.revisions {
                    revisions(cluster, &all).await
                } else {
                    nothing().await
                }
            },
            async {
                if want.pods {
                    running_pods(cluster, &all).await
                } else {
                    Ok(Vec::new())
                }
            },
        );
        (orgs?, namespaces?, revisions?, pods?)
    } else {
        let (orgs, namespaces) = tokio::join!(
            orgs(cluster, selection),
            org_namespaces(cluster, &selection.names)
        );
        let (orgs, namespaces) = (orgs?, namespaces?);
        let scopes = scopes(&namespaces, false);
        let (revisions, pods) = if namespaces.is_empty() {
            ((Vec::new(), None), Vec::new())
        } else {
            let (revisions, pods) = tokio::join!(
                async {
                    if want.revisions {
                        revisions(cluster, &scopes).await
                    } else {
                        nothing().await
                    }
                },
                async {
                    if want.pods {
                        running_pods(cluster, &scopes).await
                    } else {
                        Ok(Vec::new())
                    }
                },
            );
            (revisions?, pods?)
        };
        (orgs, namespaces, revisions, pods)
    };
    Ok(join(orgs, namespaces, revisions, pods))
}

/// Keeps only what belongs to the selected orgs.
pub fn join(
    orgs: Vec<Org>,
    namespaces: BTreeMap<String, String>,
    (revisions, note): (Vec<Object>, Option<String>),
    pods: Vec<Pod>,
) -> Inventory {
    let selected: BTreeSet<&str> = orgs
        .iter()
        .filter_map(|o| o.metadata.name.as_deref())
        .collect();
    let namespaces: BTreeMap<String, String> = namespaces
        .into_iter()
        .filter(|(_, org)| selected.contains(org.as_str()))
        .collect();
    let revisions = revisions
        .into_iter()
        .filter(|r| namespaces.contains_key(&r.metadata.namespace))
        .collect();
    let pods = pods
        .into_iter()
        .filter(|p| namespaces.contains_key(&p.metadata.namespace))
        .collect();
    Inventory {
        orgs,
        namespaces,
        revisions,
        pods,
        notes: note.into_iter().collect(),
    }
}

/// Reads one org.
pub async fn org(cluster: &Cluster, name: &str) -> Result<Org> {
    let req = Req::new("get", ORGS).named(name);
    Api::<Org>::all(cluster.client.clone())
        .get(name)
        .await
        .map_err(|e| req.error(cluster, e))
}

#[cfg(test)]
mod tests;
