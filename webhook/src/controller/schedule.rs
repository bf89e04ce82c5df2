//! The org schedule as metrics: orgs by state, active orgs due to go dormant within 5m, 1h, 6h
//! and 24h, and the seconds until the next flip ([`s2z_core::schedule`]). Computed from the Org
//! cache at scrape time, so nothing is stored per org and the series stay a fixed dozen at any
//! number of orgs. Only the replica holding the Lease exports them, so that a sum over replicas
//! counts each org once.

use std::sync::Arc;

use chrono::Utc;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use s2z_core::dormancy::parse_time;
use s2z_core::schedule::{Entry, HORIZONS, STATES, schedule};
use tokio::sync::watch;

use crate::cache::Caches;

/// Encodes the schedule of the orgs in the cache.
pub struct ScheduleCollector {
    caches: Arc<Caches>,
    leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for ScheduleCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduleCollector").finish_non_exhaustive()
    }
}

/// Registers the schedule metrics; `leader` is true while this replica holds the Lease.
pub fn register(registry: &mut Registry, caches: Arc<Caches>, leader: watch::Receiver<bool>) {
    registry.register_collector(Box::new(ScheduleCollector { caches, leader }));
}

impl Collector for ScheduleCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if !*self.leader.borrow() {
            return Ok(());
        }
        let orgs = self.caches.orgs().state();
        let entries = orgs.iter().map(|org| {
            let status = org.status.as_ref();
            Entry {
                state: status.and_then(|s| s.state),
                dormant_at: status
                    .and_then(|s| s.dormant_at.as_deref())
                    .and_then(|t| parse_time(t).ok()),
            }
        });
        let s = schedule(entries, Utc::now());

        let mut family = encoder.encode_descriptor(
            "controller_orgs",
            "Orgs by the state the controller reported (unreported: not evaluated yet)",
            None,
            MetricType::Gauge,
        )?;
        for (state, count) in STATES.iter().zip(s.by_state) {
            let labels = [("state", state.as_str())];
            ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
        }
        let labels = [("state", "Unreported")];
        ConstGauge::new(s.unreported as i64).encode(family.encode_family(&labels)?)?;

        let mut family = encoder.encode_descriptor(
            "controller_orgs_due",
            "Active orgs that go dormant within the horizon unless activity arrives",
            None,
            MetricType::Gauge,
        )?;
        for ((label, _), count) in HORIZONS.iter().zip(s.due_within) {
            let labels = [("within", *label)];
            ConstGauge::new(count as i64).encode(family.encode_family(&labels)?)?;
        }

        if let Some(secs) = s.next_flip_secs {
            let gauge = ConstGauge::new(secs);
            let metric = encoder.encode_descriptor(
                "controller_next_flip_seconds",
                "Seconds until the soonest active org goes dormant (0: overdue, flips at the next look)",
                None,
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[path = "dashboard_tests.rs"]
mod dashboard_tests;
