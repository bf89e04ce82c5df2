//! Prometheus metrics of the activity endpoint and of the activity writer.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// The activity metrics. Cheap to clone: every metric is shared.
#[derive(Debug, Clone, Default)]
pub struct ActivityMetrics {
    requests: Family<Labels, Counter>,
    signals: Family<Labels, Counter>,
    writes: Family<Labels, Counter>,
    pending: Gauge,
    auth_cache: Family<Labels2, Counter>,
}

impl ActivityMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "activity_requests",
            "Activity endpoint requests by HTTP status code",
            metrics.requests.clone(),
        );
        registry.register(
            "activity_signals",
            "Accepted activity signals by what happened to them: written at once, coalesced \
             behind the rate limit, merged into pending activity, or already recorded",
            metrics.signals.clone(),
        );
        registry.register(
            "activity_writes",
            "Writes of status.lastActivityAt by result: written, stale (a newer one was already \
             recorded), conflict (retried at once), error (retried with backoff), gone (org deleted)",
            metrics.writes.clone(),
        );
        registry.register(
            "activity_pending_orgs",
            "Orgs with activity not yet written",
            metrics.pending.clone(),
        );
        registry.register(
            "activity_auth_cache",
            "TokenReview and SubjectAccessReview cache lookups by cache and result",
            metrics.auth_cache.clone(),
        );
        metrics
    }

    /// Records one answered request.
    pub fn request(&self, code: u16) {
        let code = match code {
            202 => "202",
            400 => "400",
            401 => "401",
            403 => "403",
            404 => "404",
            503 => "503",
            _ => "other",
        };
        self.requests.get_or_create(&[("code", code)]).inc();
    }

    /// Records what became of an accepted signal.
    pub fn signal(&self, outcome: &'static str) {
        self.signals.get_or_create(&[("outcome", outcome)]).inc();
    }

    /// Records one write attempt's result.
    pub fn write(&self, result: &'static str) {
        self.writes.get_or_create(&[("result", result)]).inc();
    }

    /// Sets the number of orgs with pending activity.
    pub fn pending(&self, orgs: usize) {
        self.pending.set(i64::try_from(orgs).unwrap_or(i64::MAX));
    }

    /// Records one cache lookup.
    pub fn auth_cache(&self, cache: &'static str, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.auth_cache
            .get_or_create(&[("cache", cache), ("result", result)])
            .inc();
    }
}
