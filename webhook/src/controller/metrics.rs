//! Prometheus metrics of the dormancy controller and of settings handling, registered into the
//! binary's one registry (`s2z_webhook_*`).

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use s2z_core::org::OrgState;

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// The controller's metrics. Cheap to clone: every metric is shared.
#[derive(Debug, Clone)]
pub struct ControllerMetrics {
    leader: Gauge,
    reconciles: Family<Labels, Counter>,
    reconcile_duration: Histogram,
    patches: Family<Labels2, Counter>,
    status_writes: Family<Labels, Counter>,
    flips: Family<Labels2, Counter>,
    flip_lag: Histogram,
    wake_to_ready: Histogram,
    wakes: Family<Labels, Counter>,
    events: Family<Labels, Counter>,
    settings_invalid: Counter,
    settings_valid: Gauge,
}

impl ControllerMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            leader: Gauge::default(),
            reconciles: Family::default(),
            // 100µs .. ~6.5s
            reconcile_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
            patches: Family::default(),
            status_writes: Family::default(),
            flips: Family::default(),
            // 1ms .. ~65s
            flip_lag: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            // 0.25s .. ~17min
            wake_to_ready: Histogram::new(exponential_buckets(0.25, 2.0, 13)),
            wakes: Family::default(),
            events: Family::default(),
            settings_invalid: Counter::default(),
            settings_valid: Gauge::default(),
        };
        metrics.settings_valid.set(1);
        registry.register(
            "controller_leader",
            "1 while this replica holds the controller Lease",
            metrics.leader.clone(),
        );
        registry.register(
            "controller_reconciles",
            "Org reconciles by result",
            metrics.reconciles.clone(),
        );
        registry.register(
            "controller_reconcile_duration_seconds",
            "Time spent reconciling one org",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "controller_patches",
            "Annotation patches of revisions or PodAutoscalers, by kind and result",
            metrics.patches.clone(),
        );
        registry.register(
            "controller_status_writes",
            "Org status writes by reason (changed, evaluated) or conflict",
            metrics.status_writes.clone(),
        );
        registry.register(
            "controller_flips",
            "Org state changes by previous state (from; None for an org's first report) and new state",
            metrics.flips.clone(),
        );
        registry.register(
            "controller_flip_lag_seconds",
            "Delay between an org's due time and its flip to Dormant",
            metrics.flip_lag.clone(),
        );
        registry.register(
            "controller_wake_to_ready_seconds",
            "From the activity that woke an org to every warm revision counting its Ready pods",
            metrics.wake_to_ready.clone(),
        );
        registry.register(
            "controller_wakes",
            "Wakes followed to the end, by outcome: ready, or not_ready after 10 minutes",
            metrics.wakes.clone(),
        );
        registry.register(
            "controller_events",
            "Kubernetes Events published, by reason",
            metrics.events.clone(),
        );
        registry.register(
            "settings_invalid",
            "Times an s2z-settings ConfigMap was refused (the last valid settings stay in force)",
            metrics.settings_invalid.clone(),
        );
        registry.register(
            "settings_valid",
            "1 when the current s2z-settings ConfigMap is in force, 0 when it is refused",
            metrics.settings_valid.clone(),
        );
        metrics
    }

    /// Records whether this replica leads.
    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// Records one reconcile.
    pub fn reconciled(&self, ok: bool, elapsed: Duration) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&[("result", result)]).inc();
        self.reconcile_duration.observe(elapsed.as_secs_f64());
    }

    /// Records one annotation patch.
    pub fn patched(&self, kind: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.patches
            .get_or_create(&[("kind", kind), ("result", result)])
            .inc();
    }

    /// Records one status write (`changed`, `evaluated`) or refusal (`conflict`).
    pub fn status_written(&self, reason: &'static str) {
        self.status_writes
            .get_or_create(&[("reason", reason)])
            .inc();
    }

    /// Records a flip from `from` (`None`: the org's first report) to `state`, with its lag
    /// behind the due time when it was due to inactivity.
    pub fn flipped(&self, from: Option<OrgState>, state: OrgState, lag: Option<Duration>) {
        let from = from.map_or("None", OrgState::as_str);
        self.flips
            .get_or_create(&[("from", from), ("state", state.as_str())])
            .inc();
        if let Some(lag) = lag {
            self.flip_lag.observe(lag.as_secs_f64());
        }
    }

    /// Records the end of a followed wake: the time to ready, or `None` when it never got there.
    pub fn woke(&self, ready_after: Option<Duration>) {
        let outcome = if ready_after.is_some() {
            "ready"
        } else {
            "not_ready"
        };
        self.wakes.get_or_create(&[("outcome", outcome)]).inc();
        if let Some(took) = ready_after {
            self.wake_to_ready.observe(took.as_secs_f64());
        }
    }

    /// Records a published Event.
    pub fn event(&self, reason: &'static str) {
        self.events.get_or_create(&[("reason", reason)]).inc();
    }

    /// Records the validity of the settings ConfigMap; `newly_invalid` counts a refusal.
    pub fn settings(&self, valid: bool, newly_invalid: bool) {
        self.settings_valid.set(i64::from(valid));
        if newly_invalid {
            self.settings_invalid.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_the_documented_names() {
        let mut registry = Registry::with_prefix("s2z_webhook");
        let m = ControllerMetrics::register(&mut registry);
        m.set_leader(true);
        m.reconciled(true, Duration::from_millis(3));
        m.patched("revision", true);
        m.status_written("changed");
        m.flipped(
            Some(OrgState::Active),
            OrgState::Dormant,
            Some(Duration::from_millis(20)),
        );
        m.settings(false, true);
        let text = crate::metrics::render(&registry).unwrap_or_default();
        for line in [
            "s2z_webhook_controller_leader 1",
            r#"s2z_webhook_controller_reconciles_total{result="ok"} 1"#,
            r#"s2z_webhook_controller_patches_total{kind="revision",result="ok"} 1"#,
            r#"s2z_webhook_controller_status_writes_total{reason="changed"} 1"#,
            r#"s2z_webhook_controller_flips_total{from="Active",state="Dormant"} 1"#,
            "s2z_webhook_controller_flip_lag_seconds_count 1",
            "s2z_webhook_settings_invalid_total 1",
            "s2z_webhook_settings_valid 0",
        ] {
            assert!(text.contains(line), "missing {line}:\n{text}");
        }
    }
}
