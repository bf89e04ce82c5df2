//! The state shared by every handler, and by the parts of the binary added later (the
//! leader-elected controller, the activity endpoint): one [`AppState`] behind an `Arc`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;

use crate::activity::parts::Activity;
use crate::cache::Caches;
use crate::metrics::AdmissionMetrics;

/// What handlers share. Build it once the registry holds every metric; it is read-only after.
pub struct AppState {
    /// The Kubernetes client (not used in the admission path).
    pub client: kube::Client,
    /// The watch-fed caches.
    pub caches: Arc<Caches>,
    /// The admission metrics.
    pub admission_metrics: AdmissionMetrics,
    /// Every metric of the binary, rendered on `/metrics`.
    pub registry: Registry,
    /// The activity endpoint; `None` answers 503 (unit tests of other routes).
    pub activity: Option<Activity>,
    draining: AtomicBool,
}

/// The state as handlers receive it.
pub type SharedState = Arc<AppState>;

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("caches", &self.caches)
            .field("draining", &self.is_draining())
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Bundles the shared parts.
    pub fn new(
        client: kube::Client,
        caches: Arc<Caches>,
        admission_metrics: AdmissionMetrics,
        registry: Registry,
    ) -> SharedState {
        Self::with_activity(client, caches, admission_metrics, registry, None)
    }

    /// Bundles the shared parts, the activity endpoint included.
    pub fn with_activity(
        client: kube::Client,
        caches: Arc<Caches>,
        admission_metrics: AdmissionMetrics,
        registry: Registry,
        activity: Option<Activity>,
    ) -> SharedState {
        Arc::new(Self {
            client,
            caches,
            admission_metrics,
            registry,
            activity,
            draining: AtomicBool::new(false),
        })
    }

    /// Marks the process as shutting down: `/readyz` fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}
