//! The controller's in-memory view of its child objects, fed by its own watches: revisions and
//! PodAutoscalers by namespace, and which org each namespace belongs to.
//!
//! kube's reflector `Store` is keyed by object, so listing one org's revisions would scan every
//! revision of the cluster on every reconcile; indexing by namespace keeps a reconcile
//! proportional to the org's own size.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use kube::Resource;
use kube::runtime::watcher::Event;
use tokio::sync::Notify;

/// Completion of an initial list, shared by every index.
#[derive(Debug, Default)]
struct Readiness {
    ready: AtomicBool,
    changed: Notify,
}

impl Readiness {
    fn set(&self) {
        if !self.ready.swap(true, Ordering::AcqRel) {
            self.changed.notify_waiters();
        }
    }

    fn is_set(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        loop {
            let changed = self.changed.notified();
            if self.is_set() {
                return;
            }
            changed.await;
        }
    }
}

type ByNamespace<K> = HashMap<String, BTreeMap<String, Arc<K>>>;

#[derive(Debug)]
struct Objects<K> {
    live: ByNamespace<K>,
    /// The relist in progress; swapped in whole on `InitDone` so readers never see half a list.
    relist: Option<ByNamespace<K>>,
}

/// Namespaced objects of one kind, by namespace and name.
#[derive(Debug)]
pub struct ObjectIndex<K> {
    objects: RwLock<Objects<K>>,
    readiness: Readiness,
}

impl<K> Default for ObjectIndex<K> {
    fn default() -> Self {
        Self {
            objects: RwLock::new(Objects {
                live: HashMap::new(),
                relist: None,
            }),
            readiness: Readiness::default(),
        }
    }
}

fn key<K: Resource>(obj: &K) -> Option<(String, String)> {
    let meta = obj.meta();
    Some((meta.namespace.clone()?, meta.name.clone()?))
}

fn insert<K: Resource + Clone>(map: &mut ByNamespace<K>, obj: &K) {
    if let Some((ns, name)) = key(obj) {
        map.entry(ns)
            .or_default()
            .insert(name, Arc::new(obj.clone()));
    }
}

impl<K: Resource + Clone> ObjectIndex<K> {
    /// Applies one watch event.
    pub fn apply(&self, event: &Event<K>) {
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Apply(obj) => insert(&mut objects.live, obj),
            Event::Delete(obj) => {
                if let Some((ns, name)) = key(obj)
                    && let Some(names) = objects.live.get_mut(&ns)
                {
                    names.remove(&name);
                    if names.is_empty() {
                        objects.live.remove(&ns);
                    }
                }
            }
            Event::Init => objects.relist = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let Some(relist) = objects.relist.as_mut() {
                    insert(relist, obj);
                }
            }
            Event::InitDone => {
                if let Some(relist) = objects.relist.take() {
                    objects.live = relist;
                }
                drop(objects);
                self.readiness.set();
            }
        }
    }

    /// Records what a patch of ours returned, unless the watch has delivered a change since the
    /// object was read (`read` = the resourceVersion planned from): a reconcile that follows
    /// before the watch catches up then sees the patch and does not repeat it.
    pub fn patched(
        &self,
        namespace: &str,
        name: &str,
        read: Option<&str>,
        annotations: Option<BTreeMap<String, String>>,
        resource_version: Option<String>,
    ) {
        let mut objects = self.objects.write().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = objects
            .live
            .get_mut(namespace)
            .and_then(|names| names.get_mut(name))
        else {
            return;
        };
        if slot.meta().resource_version.as_deref() != read {
            return;
        }
        let mut updated = (**slot).clone();
        updated.meta_mut().annotations = annotations;
        updated.meta_mut().resource_version = resource_version;
        *slot = Arc::new(updated);
    }

    /// The objects in `namespace`, by name.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects
            .live
            .get(namespace)
            .map(|names| names.values().cloned().collect())
            .unwrap_or_default()
    }

    /// One object.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<K>> {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects.live.get(namespace)?.get(name).cloned()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        let objects = self.objects.read().unwrap_or_else(|e| e.into_inner());
        objects.live.values().map(BTreeMap::len).sum()
    }

    /// True when no object is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the first complete list has arrived.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_set()
    }

    /// Waits for the first complete list.
    pub async fn wait_ready(&self) {
        self.readiness.wait().await;
    }
}

/// Which org each namespace belongs to (the `s2z.dev/org` label), as seen by the controller's
/// own namespace watch.
#[derive(Debug, Default)]
pub struct NamespaceIndex {
    orgs: RwLock<Membership>,
    readiness: Readiness,
}

/// Namespace → org, and the relist in progress.
#[derive(Debug, Default)]
struct Membership {
    live: HashMap<String, String>,
    relist: Option<HashMap<String, String>>,
}

impl NamespaceIndex {
    /// Applies one watch event, given how to read the org from a namespace. Returns the orgs
    /// whose membership may have changed: the namespace's org before and after.
    pub fn apply<K: Resource>(
        &self,
        event: &Event<K>,
        org_of: impl Fn(&K) -> Option<String>,
    ) -> Vec<String> {
        let mut guard = self.orgs.write().unwrap_or_else(|e| e.into_inner());
        let Membership { live, relist } = &mut *guard;
        let name = |obj: &K| obj.meta().name.clone();
        match event {
            Event::Apply(obj) => {
                let Some(ns) = name(obj) else { return vec![] };
                let before = match org_of(obj) {
                    Some(org) => live.insert(ns, org.clone()).map(|b| vec![b, org.clone()]),
                    None => live.remove(&ns).map(|b| vec![b]),
                };
                let mut touched = before.unwrap_or_else(|| org_of(obj).into_iter().collect());
                touched.dedup();
                touched
            }
            Event::Delete(obj) => name(obj)
                .and_then(|ns| live.remove(&ns))
                .into_iter()
                .collect(),
            Event::Init => {
                *relist = Some(HashMap::new());
                vec![]
            }
            Event::InitApply(obj) => {
                if let (Some(relist), Some(ns), Some(org)) =
                    (relist.as_mut(), name(obj), org_of(obj))
                {
                    relist.insert(ns, org);
                }
                vec![]
            }
            Event::InitDone => {
                if let Some(fresh) = relist.take() {
                    *live = fresh;
                }
                drop(guard);
                self.readiness.set();
                vec![]
            }
        }
    }

    /// The org of a namespace.
    pub fn org_of(&self, namespace: &str) -> Option<String> {
        let guard = self.orgs.read().unwrap_or_else(|e| e.into_inner());
        guard.live.get(namespace).cloned()
    }

    /// The namespaces of an org, sorted.
    pub fn namespaces_of(&self, org: &str) -> Vec<String> {
        let guard = self.orgs.read().unwrap_or_else(|e| e.into_inner());
        let mut names: Vec<String> = guard
            .live
            .iter()
            .filter(|(_, o)| o.as_str() == org)
            .map(|(ns, _)| ns.clone())
            .collect();
        names.sort();
        names
    }

    /// Whether the first complete list has arrived.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_set()
    }

    /// Waits for the first complete list.
    pub async fn wait_ready(&self) {
        self.readiness.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::ObjectMeta;
    use s2z_core::labels::ORG_LABEL;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    fn ns(name: &str, org: Option<&str>) -> Namespace {
        Namespace {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: org.map(|o| [(ORG_LABEL.to_string(), o.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        }
    }

    fn org_of(n: &Namespace) -> Option<String> {
        n.metadata.labels.as_ref()?.get(ORG_LABEL).cloned()
    }

    fn names(objs: Vec<Arc<ConfigMap>>) -> Vec<String> {
        objs.iter()
            .filter_map(|o| o.metadata.name.clone())
            .collect()
    }

    #[test]
    fn objects_are_found_by_namespace() {
        let index = ObjectIndex::default();
        index.apply(&Event::Apply(cm("a", "r2")));
        index.apply(&Event::Apply(cm("a", "r1")));
        index.apply(&Event::Apply(cm("b", "r1")));
        assert_eq!(names(index.in_namespace("a")), ["r1", "r2"]);
        assert!(index.get("b", "r1").is_some());
        assert_eq!(index.len(), 3);
        index.apply(&Event::Delete(cm("a", "r1")));
        assert_eq!(names(index.in_namespace("a")), ["r2"]);
        assert!(index.in_namespace("zzz").is_empty());
        assert!(!index.is_ready());
    }

    #[test]
    fn own_patches_are_seen_before_the_watch_delivers_them() {
        let index = ObjectIndex::default();
        let mut rev = cm("a", "r1");
        rev.metadata.resource_version = Some("1".into());
        index.apply(&Event::Apply(rev));
        let annotations = Some([("k".to_string(), "v".to_string())].into());
        index.patched("a", "r1", Some("1"), annotations.clone(), Some("2".into()));
        let got = index.get("a", "r1").map(|r| r.metadata.clone());
        assert_eq!(got.clone().and_then(|m| m.annotations), annotations);
        assert_eq!(got.and_then(|m| m.resource_version).as_deref(), Some("2"));
        // Planned from an older read: the watch knows better.
        index.patched("a", "r1", Some("1"), None, Some("3".into()));
        let rv = index
            .get("a", "r1")
            .and_then(|r| r.metadata.resource_version.clone());
        assert_eq!(rv.as_deref(), Some("2"));
    }

    #[test]
    fn relist_replaces_everything_at_once() {
        let index = ObjectIndex::default();
        index.apply(&Event::Apply(cm("a", "old")));
        index.apply(&Event::Init);
        index.apply(&Event::InitApply(cm("a", "new")));
        assert_eq!(names(index.in_namespace("a")), ["old"], "no half lists");
        index.apply(&Event::InitDone);
        assert_eq!(names(index.in_namespace("a")), ["new"]);
        assert!(index.is_ready());
    }

    #[test]
    fn namespace_moves_touch_both_orgs() {
        let index = NamespaceIndex::default();
        assert_eq!(
            index.apply(&Event::Apply(ns("t1", Some("acme"))), org_of),
            ["acme"]
        );
        assert_eq!(
            index.apply(&Event::Apply(ns("t2", Some("acme"))), org_of),
            ["acme"]
        );
        assert_eq!(index.namespaces_of("acme"), ["t1", "t2"]);
        assert_eq!(
            index.apply(&Event::Apply(ns("t1", Some("globex"))), org_of),
            ["acme", "globex"]
        );
        assert_eq!(index.org_of("t1").as_deref(), Some("globex"));
        assert_eq!(
            index.apply(&Event::Apply(ns("t1", None)), org_of),
            ["globex"]
        );
        assert_eq!(
            index.apply(&Event::Delete(ns("t2", Some("acme"))), org_of),
            ["acme"]
        );
        assert!(index.namespaces_of("acme").is_empty());
        index.apply(&Event::Init, org_of);
        index.apply(&Event::InitApply(ns("t9", Some("acme"))), org_of);
        index.apply(&Event::InitDone, org_of);
        assert_eq!(index.namespaces_of("acme"), ["t9"]);
        assert!(index.is_ready());
    }
}
