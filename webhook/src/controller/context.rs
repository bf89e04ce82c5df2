//! What every part of the controller shares for one leadership term: the [`Context`] a reconcile
//! reads (client, caches, indexes, metrics), the controller's [`Error`], and the parameters of
//! its writes. Kept apart from `mod.rs`, which wires the watches, so that the parts depend on
//! this module and not on each other's parent.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::api::{DynamicObject, PartialObjectMeta, PatchParams};
use kube::runtime::events::Recorder;

use super::index::{NamespaceIndex, ObjectIndex};
use super::metrics::ControllerMetrics;
use super::target::Target;
use super::traffic;
use crate::cache::Caches;

/// Field manager of the controller's writes.
pub const FIELD_MANAGER: &str = "s2z-controller";

/// The parameters of every controller write: its field manager, so that its edits are told
/// apart from the user's and from Knative's in managedFields.
pub fn params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

/// Why a reconcile failed; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The status could not be written.
    #[error("failed to write the status of org {org}: {source}")]
    Status {
        /// The org.
        org: String,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// Some revisions (or PodAutoscalers) could not be patched.
    #[error("failed to patch {failed} of {total} {kind}(s) of org {org}, first {first}: {source}")]
    Patch {
        /// The org.
        org: String,
        /// `revision` or `podautoscaler`.
        kind: &'static str,
        /// How many failed.
        failed: usize,
        /// How many were patched or tried.
        total: usize,
        /// The first failure's object.
        first: String,
        /// Its error.
        #[source]
        source: kube::Error,
    },
    /// Some woken revisions could not be warmed (their PodAutoscaler read or Deployment scaled).
    #[error("failed to warm {failed} revision(s) of woken org {org}, first {first}: {source}")]
    Warm {
        /// The org.
        org: String,
        /// How many failed.
        failed: usize,
        /// The first failure's revision.
        first: String,
        /// Its error.
        #[source]
        source: kube::Error,
    },
}

/// Everything a reconcile reads, for one leadership term.
pub struct Context {
    /// The client.
    pub client: Client,
    /// The binary's caches (settings, Knative configuration).
    pub caches: Arc<Caches>,
    /// Publishes Events.
    pub recorder: Arc<Recorder>,
    /// Metrics.
    pub metrics: ControllerMetrics,
    /// What carries the annotations on this cluster.
    pub target: Target,
    /// Namespace → org.
    pub namespaces: NamespaceIndex,
    /// Revision metadata by namespace.
    pub revisions: ObjectIndex<PartialObjectMeta<DynamicObject>>,
    /// PodAutoscalers by namespace (watched on Knative <= 1.20 or with wake-on-traffic).
    pub autoscalers: ObjectIndex<DynamicObject>,
    /// Whether PodAutoscalers are watched (so their index must be ready before a reconcile).
    pub(super) watch_autoscalers: bool,
    /// `s2z.dev/reconcile-requested-at` values already answered, by org.
    pub answered: Mutex<HashMap<String, String>>,
    /// Consecutive failures by org, for the retry backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Wake-on-traffic, when enabled.
    pub traffic: Option<traffic::Detector>,
    /// Orgs woken whose revisions still have to be warmed (kept until that succeeds).
    pub warming: Mutex<HashSet<String>>,
    /// Orgs reconciled in this leadership term: the first look at a recently woken org warms
    /// it again, in case the previous leader died between the wake and the warm-up.
    pub looked: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("target", &self.target)
            .field("revisions", &self.revisions.len())
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The revisions of `org` (metadata), from the indexes.
    pub fn revisions_of(&self, org: &str) -> Vec<Arc<PartialObjectMeta<DynamicObject>>> {
        self.namespaces
            .namespaces_of(org)
            .iter()
            .flat_map(|ns| self.revisions.in_namespace(ns))
            .collect()
    }

    /// Waits until every index has its first complete list, so that no reconcile acts on a
    /// partial view (which would write wrong counts, or miss revisions to patch).
    pub async fn wait_ready(&self) {
        self.caches.wait_until_ready().await;
        self.namespaces.wait_ready().await;
        self.revisions.wait_ready().await;
        if self.watch_autoscalers {
            self.autoscalers.wait_ready().await;
        }
    }
}
