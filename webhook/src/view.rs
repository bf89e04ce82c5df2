//! What the webhook (and later the controller) needs to know about the cluster, behind a
//! trait: the watch-fed caches implement it in production, [`StaticView`] in tests and
//! fuzzing. Also the evaluation of one Org into its state, shared by every caller.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use s2z_core::dormancy::{self, StateInput};
use s2z_core::labels::SLEEP_ANNOTATION;
use s2z_core::org::{Org, OrgState};
use s2z_core::settings::{KnativeConfig, Settings};

/// The cluster-wide configuration s2z acts on: its own settings and Knative's autoscaler
/// configuration.
#[derive(Clone, Debug, Default)]
pub struct ClusterConfig {
    /// The effective settings: the last `s2z-settings` that parsed, or the defaults.
    pub settings: Settings,
    /// Why the current `s2z-settings` ConfigMap is not in effect, when it does not parse.
    pub settings_error: Option<String>,
    /// Knative's `config-autoscaler`, with Knative's defaults for what it does not say.
    pub knative: KnativeConfig,
}

/// Read access to the cluster state an admission decision depends on.
///
/// Implementations must answer from memory: this is called inside admission requests.
pub trait ClusterView {
    /// The org a namespace belongs to (the value of its `s2z.dev/org` label), if the
    /// namespace is known and labelled.
    fn namespace_org(&self, namespace: &str) -> Option<String>;
    /// The Org of that name, if it exists.
    fn org(&self, name: &str) -> Option<Arc<Org>>;
    /// The current cluster-wide configuration.
    fn config(&self) -> Arc<ClusterConfig>;
}

/// An in-memory [`ClusterView`], for unit tests, fuzzing and benchmarks.
#[derive(Clone, Debug, Default)]
pub struct StaticView {
    namespaces: BTreeMap<String, String>,
    orgs: BTreeMap<String, Arc<Org>>,
    config: Arc<ClusterConfig>,
}

impl StaticView {
    /// An empty view with default settings and Knative defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Labels `namespace` as belonging to `org`.
    #[must_use]
    pub fn with_namespace(mut self, namespace: &str, org: &str) -> Self {
        self.namespaces.insert(namespace.to_owned(), org.to_owned());
        self
    }

    /// Adds (or replaces) an Org.
    #[must_use]
    pub fn with_org(mut self, org: Org) -> Self {
        let name = org.metadata.name.clone().unwrap_or_default();
        self.orgs.insert(name, Arc::new(org));
        self
    }

    /// Replaces the cluster-wide configuration.
    #[must_use]
    pub fn with_config(mut self, config: ClusterConfig) -> Self {
        self.config = Arc::new(config);
        self
    }
}

impl ClusterView for StaticView {
    fn namespace_org(&self, namespace: &str) -> Option<String> {
        self.namespaces.get(namespace).cloned()
    }

    fn org(&self, name: &str) -> Option<Arc<Org>> {
        self.orgs.get(name).cloned()
    }

    fn config(&self) -> Arc<ClusterConfig> {
        self.config.clone()
    }
}

/// An Org as s2z sees it at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct OrgEvaluation {
    /// Active, Dormant or Exempt.
    pub state: OrgState,
    /// The dormancy period in force for this org.
    pub period: Duration,
    /// The org's scale-down window, when it has a valid one.
    pub scale_down_window: Option<Duration>,
    /// What could not be read from the Org; the evaluation went on without it.
    pub warnings: Vec<String>,
}

/// Evaluates an Org's state from its spec, `status.lastActivityAt`, its sleep annotation and
/// its creation time, under the given settings, at `now`.
pub fn evaluate_org(org: &Org, settings: &Settings, now: DateTime<Utc>) -> OrgEvaluation {
    let name = org.metadata.name.as_deref().unwrap_or("");
    let mut warnings = Vec::new();
    let mut timestamp = |value: Option<&str>| {
        dormancy::parse_time(value?)
            .map_err(|e| warnings.push(format!("org {name}: ignoring {e}")))
            .ok()
    };
    let last_activity = timestamp(
        org.status
            .as_ref()
            .and_then(|s| s.last_activity_at.as_deref()),
    );
    let sleep_requested = timestamp(
        org.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SLEEP_ANNOTATION))
            .map(String::as_str),
    );
    let created = org.metadata.creation_timestamp.as_ref().and_then(|t| {
        let nanos = u32::try_from(t.0.subsec_nanosecond()).unwrap_or(0);
        DateTime::from_timestamp(t.0.as_second(), nanos)
    });
    let scale_down_window = org.spec.scale_down_window().unwrap_or_else(|e| {
        warnings.push(format!("org {name}: ignoring spec.scaleDownWindow: {e}"));
        None
    });
    let period = dormancy::effective_period(settings, &org.spec);
    let state = dormancy::org_state(&StateInput {
        allowed: org.spec.scale_to_zero_allowed,
        last_activity,
        created,
        sleep_requested,
        period,
        now,
    });
    OrgEvaluation {
        state,
        period,
        scale_down_window,
        warnings,
    }
}
