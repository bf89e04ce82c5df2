//! Wake-on-traffic (`--wake-on-traffic`): a request to a scaled-to-zero revision of a dormant
//! org reaches Knative's activator, which makes the PodAutoscaler ask for pods. That rise of
//! `status.desiredScale` to a positive value counts as activity, so the org wakes as if its
//! platform had signalled it.
//!
//! Only a rise observed from 0, or from -1 (the autoscaler has no data: a revision born at zero
//! while its org was dormant has never had a pod to scrape), counts: right after an org goes
//! dormant its autoscalers still want their old pods until Knative's grace period ends, and that
//! is not new traffic.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::Utc;
use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::runtime::watcher::Event;
use s2z_core::org::OrgState;

use super::index::NamespaceIndex;
use crate::activity::queue::{ActivityQueue, Signal};
use crate::cache::Caches;
use crate::view::{ClusterView, evaluate_org};

/// Watches PodAutoscaler scale for traffic to dormant orgs.
#[derive(Debug)]
pub struct Detector {
    queue: ActivityQueue,
    /// Last `desiredScale` seen per (namespace, name).
    desired: Mutex<HashMap<(String, String), i64>>,
}

/// Whether a change of desired scale from `before` to `after` is traffic arriving at zero: from
/// 0, or from -1 (no data yet), to a positive scale.
pub fn woke(before: Option<i64>, after: Option<i64>) -> bool {
    matches!(before, Some(0 | -1)) && after.is_some_and(|n| n > 0)
}

fn desired_scale(pa: &DynamicObject) -> Option<i64> {
    pa.data.get("status")?.get("desiredScale")?.as_i64()
}

fn key(pa: &DynamicObject) -> (String, String) {
    (pa.namespace().unwrap_or_default(), pa.name_any())
}

impl Detector {
    /// A detector sending activity to `queue`.
    pub fn new(queue: ActivityQueue) -> Self {
        Self {
            queue,
            desired: Mutex::new(HashMap::new()),
        }
    }

    /// Looks at one PodAutoscaler event; `namespaces` and `caches` tell its org and whether
    /// that org is dormant.
    pub fn observe(
        &self,
        namespaces: &NamespaceIndex,
        caches: &Caches,
        event: &Event<DynamicObject>,
    ) {
        let mut desired = self.desired.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Apply(pa) => {
                let after = desired_scale(pa);
                let before = match after {
                    Some(n) => desired.insert(key(pa), n),
                    None => desired.remove(&key(pa)),
                };
                if woke(before, after) {
                    drop(desired);
                    self.wake(namespaces, caches, pa);
                }
            }
            Event::InitApply(pa) => {
                if let Some(n) = desired_scale(pa) {
                    desired.insert(key(pa), n);
                }
            }
            Event::Delete(pa) => {
                desired.remove(&key(pa));
            }
            Event::Init | Event::InitDone => {}
        }
    }

    fn wake(&self, namespaces: &NamespaceIndex, caches: &Caches, pa: &DynamicObject) {
        let namespace = pa.namespace().unwrap_or_default();
        let Some(org) = namespaces.org_of(&namespace) else {
            return;
        };
        let Some(object) = caches.org(&org) else {
            return;
        };
        let now = Utc::now();
        let config = caches.config();
        if evaluate_org(&object, &config.settings, now).state != OrgState::Dormant {
            return;
        }
        tracing::info!(org = %org, podautoscaler = %format!("{namespace}/{}", pa.name_any()), "traffic to a dormant org; waking it");
        let signal = Signal {
            org: org.clone(),
            at: now,
            urgent: true,
        };
        if let Err(error) = self.queue.submit(signal) {
            tracing::warn!(org = %org, %error, "failed to record traffic as activity");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_rise_from_zero_or_no_data_is_traffic() {
        assert!(woke(Some(0), Some(1)));
        assert!(woke(Some(0), Some(3)));
        // Born at zero while dormant: the autoscaler had no data until the activator's request.
        assert!(woke(Some(-1), Some(1)));
        assert!(!woke(Some(-1), Some(0)));
        assert!(!woke(Some(-1), Some(-1)));
        assert!(!woke(None, Some(1)), "first sight proves nothing");
        assert!(!woke(Some(1), Some(2)));
        assert!(!woke(Some(2), Some(0)));
        assert!(!woke(Some(0), Some(0)));
        assert!(!woke(Some(0), None));
    }

    #[test]
    fn desired_scale_is_read_from_status() {
        let pa: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
            "kind": "PodAutoscaler",
            "metadata": {"name": "r", "namespace": "n"},
            "status": {"desiredScale": 2}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(desired_scale(&pa), Some(2));
        assert_eq!(key(&pa), ("n".to_string(), "r".to_string()));
    }
}
