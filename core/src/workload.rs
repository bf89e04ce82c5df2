//! Which revisions are models and which are pynodes, and how to count them for an org's status.

use std::collections::BTreeMap;
use std::fmt;

use crate::annotations::is_scaled_to_zero;
use crate::labels::MODEL_LABEL;
use crate::org::WorkloadCounts;

/// The two kinds of workload an org runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WorkloadKind {
    /// Any Knative revision that is not a model: the platform's own app server.
    Pynode,
    /// A revision of a KServe InferenceService.
    Model,
}

impl WorkloadKind {
    /// Lower-case name for tables and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Pynode => "pynode",
            WorkloadKind::Model => "model",
        }
    }
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies a revision by its labels: KServe's InferenceService label makes it a model.
pub fn kind_of(labels: &BTreeMap<String, String>) -> WorkloadKind {
    kind_of_model_label(labels.get(MODEL_LABEL).map(String::as_str))
}

/// Classifies a revision by the value of its [`MODEL_LABEL`] alone, for callers that read
/// only that label (the webhook does not build a map of all labels per request).
pub fn kind_of_model_label(value: Option<&str>) -> WorkloadKind {
    // KServe always names the InferenceService; an empty value is not a KServe label.
    match value {
        Some(name) if !name.is_empty() => WorkloadKind::Model,
        _ => WorkloadKind::Pynode,
    }
}

/// Revision counts of one org, by kind, as shown in its status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Pynode revisions.
    pub pynodes: WorkloadCounts,
    /// Model revisions.
    pub models: WorkloadCounts,
}

impl Tally {
    /// Counts one revision given its labels and annotations.
    pub fn add(
        &mut self,
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
    ) {
        let counts = match kind_of(labels) {
            WorkloadKind::Pynode => &mut self.pynodes,
            WorkloadKind::Model => &mut self.models,
        };
        counts.add(is_scaled_to_zero(annotations));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{MIN_SCALE, SERVICE_LABEL};
    use crate::testing::map;

    #[test]
    fn kserve_label_makes_a_model() {
        assert_eq!(kind_of(&map(&[(MODEL_LABEL, "bert")])), WorkloadKind::Model);
        assert_eq!(
            kind_of(&map(&[(SERVICE_LABEL, "app")])),
            WorkloadKind::Pynode
        );
        assert_eq!(kind_of(&map(&[])), WorkloadKind::Pynode);
        assert_eq!(kind_of(&map(&[(MODEL_LABEL, "")])), WorkloadKind::Pynode);
        assert_eq!(kind_of_model_label(Some("bert")), WorkloadKind::Model);
        assert_eq!(kind_of_model_label(Some("")), WorkloadKind::Pynode);
        assert_eq!(kind_of_model_label(None), WorkloadKind::Pynode);
    }

    #[test]
    fn names() {
        assert_eq!(WorkloadKind::Model.to_string(), "model");
        assert_eq!(WorkloadKind::Pynode.to_string(), "pynode");
    }

    #[test]
    fn tally_counts_by_kind_and_scale() {
        let mut tally = Tally::default();
        tally.add(&map(&[]), &map(&[(MIN_SCALE, "0")]));
        tally.add(&map(&[]), &map(&[(MIN_SCALE, "1")]));
        tally.add(&map(&[(MODEL_LABEL, "bert")]), &map(&[(MIN_SCALE, "3")]));
        assert_eq!(
            tally.pynodes,
            WorkloadCounts {
                total: 2,
                scaled_to_zero: 1
            }
        );
        assert_eq!(
            tally.models,
            WorkloadCounts {
                total: 1,
                scaled_to_zero: 0
            }
        );
    }
}
