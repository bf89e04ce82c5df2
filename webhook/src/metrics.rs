//! Prometheus metrics of the admission path. Other parts of the binary (the controller, the
//! activity endpoint) register their own metrics into the same [`Registry`] before it is
//! shared.

use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::admission::{ObjectKind, Outcome};

/// How a `/mutate` request ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum RequestOutcome {
    /// A patch was returned.
    Patched,
    /// Looked at; nothing to change (possibly with a warning).
    Unchanged,
    /// Not ours: another kind or operation, or a namespace of no org.
    Skipped,
    /// Not an AdmissionReview we can answer (HTTP 400).
    Invalid,
    /// Body over the size limit (HTTP 413).
    TooLarge,
    /// An internal failure (HTTP 500).
    Error,
}

impl RequestOutcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Patched => "patched",
            RequestOutcome::Unchanged => "unchanged",
            RequestOutcome::Skipped => "skipped",
            RequestOutcome::Invalid => "invalid",
            RequestOutcome::TooLarge => "too_large",
            RequestOutcome::Error => "error",
        }
    }
}

impl EncodeLabelValue for RequestOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl From<Outcome> for RequestOutcome {
    fn from(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Patched => RequestOutcome::Patched,
            Outcome::Unchanged => RequestOutcome::Unchanged,
            Outcome::Skipped => RequestOutcome::Skipped,
        }
    }
}

/// The `kind` label: what was admitted ([`ObjectKind::Other`] also for unreadable bodies).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct RequestKind(pub ObjectKind);

impl EncodeLabelValue for RequestKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.0.as_str())
    }
}

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// How it ended.
    pub outcome: RequestOutcome,
    /// What was admitted.
    pub kind: RequestKind,
}

/// Labels of the patch and warning counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// What was admitted.
    pub kind: RequestKind,
}

/// The admission metrics.
#[derive(Debug)]
pub struct AdmissionMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Histogram,
    patches: Family<KindLabels, Counter>,
    warnings: Family<KindLabels, Counter>,
}

impl AdmissionMetrics {
    /// Creates the metrics and registers them (as `admission_*`) in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            requests: Family::default(),
            // 100µs .. ~3.3s
            duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            patches: Family::default(),
            warnings: Family::default(),
        };
        registry.register(
            "admission_requests",
            "Admission requests by outcome and kind",
            metrics.requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time spent answering /mutate, body read included",
            metrics.duration.clone(),
        );
        registry.register(
            "admission_patches",
            "Admission responses that carried a patch",
            metrics.patches.clone(),
        );
        registry.register(
            "admission_warnings",
            "Admission responses that carried warnings",
            metrics.warnings.clone(),
        );
        metrics
    }

    /// Records one request.
    pub fn observe(
        &self,
        outcome: RequestOutcome,
        kind: RequestKind,
        warned: bool,
        elapsed: Duration,
    ) {
        self.requests
            .get_or_create(&RequestLabels { outcome, kind })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
        if outcome == RequestOutcome::Patched {
            self.patches.get_or_create(&KindLabels { kind }).inc();
        }
        if warned {
            self.warnings.get_or_create(&KindLabels { kind }).inc();
        }
    }
}

/// Renders the registry in the Prometheus text format.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_observed_requests() {
        let mut registry = Registry::with_prefix("s2z_webhook");
        let metrics = AdmissionMetrics::register(&mut registry);
        metrics.observe(
            RequestOutcome::Patched,
            RequestKind(ObjectKind::Model),
            true,
            Duration::from_millis(2),
        );
        let text = render(&registry).expect("render");
        assert!(
            text.contains(
                r#"s2z_webhook_admission_requests_total{outcome="patched",kind="model"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"s2z_webhook_admission_patches_total{kind="model"} 1"#));
        assert!(text.contains(r#"s2z_webhook_admission_warnings_total{kind="model"} 1"#));
        assert!(text.contains("s2z_webhook_admission_duration_seconds_count 1"));
    }
}
