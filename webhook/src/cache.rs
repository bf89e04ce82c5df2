//! Watch-fed caches of everything an admission decision reads: Orgs, org namespaces, the
//! `s2z-settings` ConfigMap and Knative's `config-autoscaler`. Requests read them through
//! [`ClusterView`]; nothing in the request path calls the API server. The controller can read
//! the same stores instead of opening its own watches.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Client, Resource};
use s2z_core::labels::ORG_LABEL;
use s2z_core::org::Org;
use s2z_core::settings::{
    KNATIVE_AUTOSCALER_CONFIGMAP as KNATIVE_CONFIGMAP, KnativeConfig, SETTINGS_CONFIGMAP, Settings,
};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::view::{ClusterConfig, ClusterView};

/// Where the ConfigMaps live.
#[derive(Clone, Debug)]
pub struct CacheScope {
    /// The install namespace, home of `s2z-settings`.
    pub namespace: String,
    /// Knative Serving's namespace, home of `config-autoscaler`.
    pub knative_namespace: String,
}

/// Whether each watch has completed its initial list.
#[derive(Debug, Default)]
struct Synced {
    orgs: AtomicBool,
    namespaces: AtomicBool,
    settings: AtomicBool,
    knative: AtomicBool,
}

/// The caches: cheap to read, shared behind an `Arc`.
#[derive(Debug)]
pub struct Caches {
    scope: CacheScope,
    orgs: Store<Org>,
    namespaces: Store<PartialObjectMeta<Namespace>>,
    settings_map: Store<ConfigMap>,
    knative_map: Store<ConfigMap>,
    config: RwLock<Arc<ClusterConfig>>,
    /// Every new configuration, for the controller (re-evaluate all orgs) and the settings
    /// monitor (Event and metric on invalid settings).
    config_changes: watch::Sender<Arc<ClusterConfig>>,
    synced: Synced,
    synced_changed: Notify,
}

/// The write halves of the caches, consumed by [`CacheWriters::run`].
#[derive(Debug)]
pub struct CacheWriters {
    orgs: Writer<Org>,
    namespaces: Writer<PartialObjectMeta<Namespace>>,
    settings_map: Writer<ConfigMap>,
    knative_map: Writer<ConfigMap>,
    org_selector: Option<String>,
}

impl Caches {
    /// Creates empty caches and their writers. Nothing is watched until the writers run.
    pub fn new(scope: CacheScope) -> (Arc<Self>, CacheWriters) {
        let orgs = Writer::default();
        let namespaces = Writer::default();
        let settings_map = Writer::default();
        let knative_map = Writer::default();
        let caches = Self {
            scope,
            orgs: orgs.as_reader(),
            namespaces: namespaces.as_reader(),
            settings_map: settings_map.as_reader(),
            knative_map: knative_map.as_reader(),
            config: RwLock::new(Arc::new(ClusterConfig::default())),
            config_changes: watch::Sender::new(Arc::new(ClusterConfig::default())),
            synced: Synced::default(),
            synced_changed: Notify::new(),
        };
        let writers = CacheWriters {
            orgs,
            namespaces,
            settings_map,
            knative_map,
            org_selector: None,
        };
        (Arc::new(caches), writers)
    }

    /// Caches filled once from the given objects and marked synced, with no watch behind them:
    /// the real stores without an API server, for benchmarks (`benches/mutate/`) and tests.
    /// ConfigMaps are placed by name: `s2z-settings` and `config-autoscaler`.
    pub fn preloaded(
        scope: CacheScope,
        orgs: impl IntoIterator<Item = Org>,
        namespaces: impl IntoIterator<Item = PartialObjectMeta<Namespace>>,
        configmaps: impl IntoIterator<Item = ConfigMap>,
    ) -> Arc<Self> {
        let (caches, mut writers) = Self::new(scope);
        // Objects enter the stores as the watches deliver them: slimmed.
        for mut org in orgs {
            slim(&mut org);
            writers.orgs.apply_watcher_event(&Event::Apply(org));
        }
        for mut namespace in namespaces {
            slim(&mut namespace);
            writers
                .namespaces
                .apply_watcher_event(&Event::Apply(namespace));
        }
        for mut cm in configmaps {
            slim(&mut cm);
            let writer = match cm.metadata.name.as_deref() {
                Some(SETTINGS_CONFIGMAP) => &mut writers.settings_map,
                Some(KNATIVE_CONFIGMAP) => &mut writers.knative_map,
                _ => continue,
            };
            writer.apply_watcher_event(&Event::Apply(cm));
        }
        caches.refresh_config();
        let s = &caches.synced;
        for (flag, name) in [
            (&s.orgs, "orgs"),
            (&s.namespaces, "namespaces"),
            (&s.settings, SETTINGS_CONFIGMAP),
            (&s.knative, KNATIVE_CONFIGMAP),
        ] {
            caches.mark_synced(flag, name);
        }
        caches
    }

    /// True once every watch has listed its objects at least once.
    pub fn is_ready(&self) -> bool {
        self.unsynced().is_empty()
    }

    /// The caches that have not completed their initial list yet.
    pub fn unsynced(&self) -> Vec<&'static str> {
        let s = &self.synced;
        [
            ("orgs", &s.orgs),
            ("namespaces", &s.namespaces),
            (SETTINGS_CONFIGMAP, &s.settings),
            (KNATIVE_CONFIGMAP, &s.knative),
        ]
        .into_iter()
        .filter(|(_, flag)| !flag.load(Ordering::Acquire))
        .map(|(name, _)| name)
        .collect()
    }

    /// Waits until [`Caches::is_ready`].
    pub async fn wait_until_ready(&self) {
        loop {
            let changed = self.synced_changed.notified();
            if self.is_ready() {
                return;
            }
            changed.await;
        }
    }

    /// The Org store (all Orgs).
    pub fn orgs(&self) -> Store<Org> {
        self.orgs.clone()
    }

    /// Follows the cluster configuration: the receiver sees every refresh (an unchanged
    /// configuration included; compare before acting).
    pub fn subscribe_config(&self) -> watch::Receiver<Arc<ClusterConfig>> {
        self.config_changes.subscribe()
    }

    /// The `s2z-settings` ConfigMap as last seen, e.g. to attach an Event to it.
    pub fn settings_configmap(&self) -> Option<Arc<ConfigMap>> {
        self.settings_map
            .state()
            .into_iter()
            .find(|cm| cm.metadata.name.as_deref() == Some(SETTINGS_CONFIGMAP))
    }

    /// The namespace store: metadata of the namespaces labelled `s2z.dev/org`.
    pub fn namespaces(&self) -> Store<PartialObjectMeta<Namespace>> {
        self.namespaces.clone()
    }

    /// The names of the namespaces of `org`.
    pub fn org_namespaces(&self, org: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .namespaces
            .state()
            .iter()
            .filter(|ns| label(ns.meta().labels.as_ref()) == Some(org))
            .filter_map(|ns| ns.meta().name.clone())
            .collect();
        names.sort();
        names
    }

    /// Recomputes the cluster configuration from the ConfigMap stores. A settings ConfigMap
    /// that does not parse leaves the last valid settings in force and records why.
    fn refresh_config(&self) {
        let data_of = |store: &Store<ConfigMap>, name: &str| {
            store
                .state()
                .iter()
                .find(|cm| cm.metadata.name.as_deref() == Some(name))
                .map(|cm| cm.data.clone().unwrap_or_default())
        };
        let settings_data = data_of(&self.settings_map, SETTINGS_CONFIGMAP);
        let knative_data = data_of(&self.knative_map, KNATIVE_CONFIGMAP).unwrap_or_default();
        let mut config = self.config.write().unwrap_or_else(|e| e.into_inner());
        let previous = config.settings.clone();
        let (settings, settings_error) = match settings_data.map(|d| Settings::from_data(&d)) {
            None => (Settings::default(), None),
            Some(Ok(settings)) => (settings, None),
            Some(Err(e)) => (previous, Some(e.to_string())),
        };
        if let Some(error) = &settings_error {
            if config.settings_error.as_ref() != Some(error) {
                tracing::error!(%error, "keeping the last valid settings");
            }
        } else {
            for warning in settings.warnings() {
                tracing::warn!(%warning, "settings");
            }
        }
        *config = Arc::new(ClusterConfig {
            settings,
            settings_error,
            knative: KnativeConfig::from_data(&knative_data),
        });
        tracing::debug!(config = ?**config, "cluster configuration refreshed");
        self.config_changes.send_replace(config.clone());
    }

    fn mark_synced(&self, flag: &AtomicBool, name: &str) {
        if !flag.swap(true, Ordering::AcqRel) {
            tracing::info!(cache = name, "cache synced");
            self.synced_changed.notify_waiters();
        }
    }
}

impl ClusterView for Caches {
    fn namespace_org(&self, namespace: &str) -> Option<String> {
        let ns = self.namespaces.get(&ObjectRef::new(namespace))?;
        label(ns.meta().labels.as_ref()).map(str::to_owned)
    }

    fn org(&self, name: &str) -> Option<Arc<Org>> {
        self.orgs.get(&ObjectRef::new(name))
    }

    fn config(&self) -> Arc<ClusterConfig> {
        self.config
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn label(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    labels?.get(ORG_LABEL).map(String::as_str)
}

/// kubectl's record of the last client-side apply: a copy of the whole object, read by nobody
/// here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Drops what no reader of the caches (nor the controller's Org store) uses before an object is
/// stored: `metadata.managedFields` (two thirds of a watched Org's memory: 12.6 KiB per org and
/// namespace with them, 4 KiB without, measured by `benches/mutate/`) and kubectl's
/// last-applied annotation.
pub(crate) fn slim<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

impl CacheWriters {
    /// Restricts the Org cache to Orgs matching a label selector (`--org-selector`): other Orgs
    /// are invisible to admission, the activity endpoint and the controller.
    #[must_use]
    pub fn with_org_selector(mut self, selector: Option<String>) -> Self {
        self.org_selector = selector;
        self
    }

    /// Watches the four kinds until `cancel`, feeding the caches. Watch errors are logged and
    /// retried with backoff; a cache stays unsynced until its first complete list.
    pub async fn run(self, caches: Arc<Caches>, client: Client, cancel: CancellationToken) {
        let scope = caches.scope.clone();
        let by_name =
            |name: &str| watcher::Config::default().fields(&format!("metadata.name={name}"));
        let org_config = match &self.org_selector {
            Some(selector) => watcher::Config::default().labels(selector),
            None => watcher::Config::default(),
        };
        let orgs = watcher::watcher(Api::<Org>::all(client.clone()), org_config).modify(slim);
        let namespaces = watcher::watcher(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            watcher::Config::default().labels(ORG_LABEL),
        )
        .modify(slim);
        let settings = watcher::watcher(
            Api::<ConfigMap>::namespaced(client.clone(), &scope.namespace),
            by_name(SETTINGS_CONFIGMAP),
        )
        .modify(slim);
        let knative = watcher::watcher(
            Api::<ConfigMap>::namespaced(client, &scope.knative_namespace),
            by_name(KNATIVE_CONFIGMAP),
        )
        .modify(slim);
        let c = &caches;
        tokio::join!(
            drive(
                "orgs",
                orgs,
                self.orgs,
                &cancel,
                |_| {},
                || { c.mark_synced(&c.synced.orgs, "orgs") }
            ),
            drive(
                "namespaces",
                namespaces,
                self.namespaces,
                &cancel,
                |_| {},
                || { c.mark_synced(&c.synced.namespaces, "namespaces") }
            ),
            drive(
                SETTINGS_CONFIGMAP,
                settings,
                self.settings_map,
                &cancel,
                |_| c.refresh_config(),
                || c.mark_synced(&c.synced.settings, SETTINGS_CONFIGMAP),
            ),
            drive(
                KNATIVE_CONFIGMAP,
                knative,
                self.knative_map,
                &cancel,
                |_| c.refresh_config(),
                || c.mark_synced(&c.synced.knative, KNATIVE_CONFIGMAP),
            ),
        );
    }
}

/// Feeds one watch into its store until `cancel`. `changed` runs after every event that
/// changed the store's visible content, `synced` after every complete list.
async fn drive<K>(
    name: &'static str,
    stream: impl Stream<Item = watcher::Result<Event<K>>> + Send,
    mut writer: Writer<K>,
    cancel: &CancellationToken,
    changed: impl Fn(&Event<K>),
    synced: impl Fn(),
) where
    K: Resource + Clone + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default,
{
    let stream = stream.default_backoff();
    futures::pin_mut!(stream);
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return,
            next = stream.next() => next,
        };
        match next {
            Some(Ok(event)) => {
                writer.apply_watcher_event(&event);
                match event {
                    Event::Apply(_) | Event::Delete(_) => changed(&event),
                    Event::InitDone => {
                        changed(&event);
                        synced();
                    }
                    Event::Init | Event::InitApply(_) => {}
                }
            }
            Some(Err(error)) => tracing::warn!(cache = name, %error, "watch failed; retrying"),
            None => {
                tracing::error!(cache = name, "watch ended");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use s2z_core::labels::SLEEP_ANNOTATION;

    fn scope() -> CacheScope {
        CacheScope {
            namespace: "s2z-system".into(),
            knative_namespace: "knative-serving".into(),
        }
    }

    fn configmap(name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            data: Some(
                data.iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ConfigMap::default()
        }
    }

    fn namespace(name: &str, org: &str) -> PartialObjectMeta<Namespace> {
        let mut ns = PartialObjectMeta::<Namespace>::default();
        ns.metadata.name = Some(name.into());
        ns.metadata.labels = Some([(ORG_LABEL.to_owned(), org.to_owned())].into());
        ns
    }

    fn org(name: &str) -> Org {
        let mut org: Org = serde_json::from_value(serde_json::json!({
            "apiVersion": "s2z.dev/v1alpha1", "kind": "Org",
            "metadata": {"name": name}, "spec": {}
        }))
        .expect("org");
        org.metadata.name = Some(name.into());
        org
    }

    #[test]
    fn lookups_read_the_stores() {
        let (caches, mut writers) = Caches::new(scope());
        writers
            .namespaces
            .apply_watcher_event(&Event::Apply(namespace("team-a", "acme")));
        writers
            .namespaces
            .apply_watcher_event(&Event::Apply(namespace("team-b", "acme")));
        writers.orgs.apply_watcher_event(&Event::Apply(org("acme")));
        assert_eq!(caches.namespace_org("team-a").as_deref(), Some("acme"));
        assert_eq!(caches.namespace_org("other"), None);
        assert!(caches.org("acme").is_some());
        assert!(caches.org("nope").is_none());
        assert_eq!(caches.org_namespaces("acme"), ["team-a", "team-b"]);
    }

    #[test]
    fn preloaded_caches_are_ready_and_read_their_configmaps() {
        let caches = Caches::preloaded(
            scope(),
            [org("acme")],
            [namespace("team-a", "acme")],
            [
                configmap(SETTINGS_CONFIGMAP, &[("orgDormancyPeriodSecs", "600")]),
                configmap(KNATIVE_CONFIGMAP, &[("allow-zero-initial-scale", "true")]),
                configmap("unrelated", &[("orgDormancyPeriodSecs", "1")]),
            ],
        );
        assert!(caches.is_ready());
        assert_eq!(caches.namespace_org("team-a").as_deref(), Some("acme"));
        assert!(caches.org("acme").is_some());
        assert_eq!(caches.config().settings.dormancy_period.as_secs(), 600);
        assert!(caches.config().knative.allow_zero_initial_scale);
    }

    #[test]
    fn stored_objects_are_slimmed() {
        let mut heavy = org("acme");
        heavy.metadata.managed_fields = Some(vec![Default::default()]);
        heavy.metadata.annotations = Some(
            [
                (LAST_APPLIED.to_owned(), "{}".to_owned()),
                (
                    SLEEP_ANNOTATION.to_owned(),
                    "2025-01-01T00:00:00Z".to_owned(),
                ),
            ]
            .into(),
        );
        let mut ns = namespace("team-a", "acme");
        ns.metadata.managed_fields = Some(vec![Default::default()]);
        let caches = Caches::preloaded(scope(), [heavy], [ns], []);
        let stored = caches.org("acme").expect("org");
        assert_eq!(stored.metadata.managed_fields, None);
        let annotations = stored.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [SLEEP_ANNOTATION]);
        let ns = caches.namespaces().state();
        assert_eq!(ns[0].metadata.managed_fields, None);
        assert_eq!(caches.namespace_org("team-a").as_deref(), Some("acme"));
    }

    #[test]
    fn invalid_settings_keep_the_last_valid_ones() {
        let (caches, mut writers) = Caches::new(scope());
        let mut set = |data: &[(&str, &str)]| {
            writers
                .settings_map
                .apply_watcher_event(&Event::Apply(configmap(SETTINGS_CONFIGMAP, data)));
            caches.refresh_config();
        };
        set(&[("orgDormancyPeriodSecs", "600")]);
        assert_eq!(caches.config().settings.dormancy_period.as_secs(), 600);
        assert!(caches.config().settings_error.is_none());
        set(&[("orgDormancyPeriodSecs", "soon")]);
        assert_eq!(caches.config().settings.dormancy_period.as_secs(), 600);
        assert!(caches.config().settings_error.is_some());
        writers
            .settings_map
            .apply_watcher_event(&Event::Delete(configmap(SETTINGS_CONFIGMAP, &[])));
        caches.refresh_config();
        assert_eq!(caches.config().settings.dormancy_period.as_secs(), 86400);
    }

    #[test]
    fn knative_config_is_read() {
        let (caches, mut writers) = Caches::new(scope());
        assert!(!caches.config().knative.allow_zero_initial_scale);
        writers
            .knative_map
            .apply_watcher_event(&Event::Apply(configmap(
                KNATIVE_CONFIGMAP,
                &[("allow-zero-initial-scale", "true")],
            )));
        caches.refresh_config();
        assert!(caches.config().knative.allow_zero_initial_scale);
    }

    #[tokio::test]
    async fn ready_after_every_cache_synced() {
        let (caches, _writers) = Caches::new(scope());
        assert_eq!(caches.unsynced().len(), 4);
        let s = &caches.synced;
        for (flag, name) in [
            (&s.orgs, "orgs"),
            (&s.namespaces, "namespaces"),
            (&s.settings, "s"),
        ] {
            caches.mark_synced(flag, name);
        }
        assert!(!caches.is_ready());
        let waiter = {
            let caches = caches.clone();
            tokio::spawn(async move { caches.wait_until_ready().await })
        };
        caches.mark_synced(&caches.synced.knative, "k");
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("ready in time")
            .expect("join");
        assert!(caches.is_ready());
    }
}
