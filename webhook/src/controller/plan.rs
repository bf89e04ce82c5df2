//! What one reconcile must change: for every revision of the org, the core decision applied to
//! the annotations of the object that carries them, reduced to the patches that differ, plus the
//! revision counts the status reports.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use s2z_core::annotations::{DecisionInput, apply, decide};
use s2z_core::org::OrgState;
use s2z_core::workload::Tally;
use serde_json::{Map, Value, json};

/// One revision as the planner sees it.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    /// The revision's namespace.
    pub namespace: &'a str,
    /// The revision's name (the PodAutoscaler's too).
    pub name: &'a str,
    /// The revision's labels (say whether it is a model).
    pub labels: &'a BTreeMap<String, String>,
    /// The annotations of the object to patch; `None` when that object does not exist yet
    /// (a PodAutoscaler Knative has not created), in which case the revision's own annotations
    /// are counted and nothing is patched.
    pub target: Option<&'a BTreeMap<String, String>>,
    /// The revision's own annotations.
    pub revision: &'a BTreeMap<String, String>,
    /// The resourceVersion of the object to patch, as read.
    pub resource_version: Option<&'a str>,
}

/// A merge patch for one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Key → new value, or `None` to remove.
    pub annotations: BTreeMap<String, Option<String>>,
    /// The resourceVersion the change was planned from.
    pub resource_version: Option<String>,
}

impl Change {
    /// The JSON merge patch: `null` removes a key.
    pub fn patch(&self) -> Value {
        let annotations: Map<String, Value> = self
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().map_or(Value::Null, Value::String)))
            .collect();
        json!({"metadata": {"annotations": annotations}})
    }
}

/// Everything a reconcile will do to the org's revisions.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Counts as they will be once the changes are applied.
    pub tally: Tally,
    /// Objects whose annotations differ from the decision.
    pub changes: Vec<Change>,
    /// Revisions left alone because the decision could not be made, with why.
    pub problems: Vec<String>,
}

/// Plans the changes for `state`.
pub fn plan<'a>(
    workloads: impl IntoIterator<Item = Workload<'a>>,
    state: OrgState,
    allow_zero_initial_scale: bool,
    scale_down_window: Option<Duration>,
) -> Plan {
    let mut out = Plan::default();
    for w in workloads {
        let Some(current) = w.target else {
            out.tally.add(w.labels, w.revision);
            continue;
        };
        let input = DecisionInput {
            state,
            allow_zero_initial_scale,
            scale_down_window,
            annotations: current,
        };
        match decide(&input) {
            Ok(decision) => {
                out.tally.add(w.labels, &apply(current, &decision));
                if !decision.is_noop() {
                    out.changes.push(Change {
                        namespace: w.namespace.to_string(),
                        name: w.name.to_string(),
                        annotations: decision.desired,
                        resource_version: w.resource_version.map(str::to_string),
                    });
                }
            }
            Err(error) => {
                out.tally.add(w.labels, current);
                out.problems
                    .push(format!("{}/{}: {error}", w.namespace, w.name));
            }
        }
    }
    out
}

/// How long until the next reconcile: exactly the due time of an active org (plus a few
/// milliseconds, so the reconcile lands on the dormant side of the inclusive deadline), never
/// longer than the backstop sweep interval.
pub fn requeue_after(due: Option<DateTime<Utc>>, now: DateTime<Utc>, sweep: Duration) -> Duration {
    const PAST_THE_DEADLINE: Duration = Duration::from_millis(5);
    match due {
        Some(due) => (due - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
            .saturating_add(PAST_THE_DEADLINE)
            .min(sweep),
        None => sweep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2z_core::labels::{DECLARED_ANNOTATION, INITIAL_SCALE, MIN_SCALE, MODEL_LABEL};
    use s2z_core::testing::map;

    fn w<'a>(
        name: &'a str,
        labels: &'a BTreeMap<String, String>,
        annotations: &'a BTreeMap<String, String>,
    ) -> Workload<'a> {
        Workload {
            namespace: "ns",
            name,
            labels,
            target: Some(annotations),
            revision: annotations,
            resource_version: None,
        }
    }

    #[test]
    fn dormant_plan_scales_everything_to_zero_and_counts_it() {
        let none = map(&[]);
        let model = map(&[(MODEL_LABEL, "bert")]);
        let three = map(&[(MIN_SCALE, "3")]);
        let p = plan(
            [w("py", &none, &none), w("bert", &model, &three)],
            OrgState::Dormant,
            true,
            None,
        );
        assert_eq!(p.changes.len(), 2);
        assert!(p.problems.is_empty());
        assert_eq!(
            (p.tally.pynodes.total, p.tally.pynodes.scaled_to_zero),
            (1, 1)
        );
        assert_eq!(
            (p.tally.models.total, p.tally.models.scaled_to_zero),
            (1, 1)
        );
        let bert = &p.changes[1];
        assert_eq!(bert.annotations.get(MIN_SCALE), Some(&Some("0".into())));
        assert_eq!(bert.annotations.get(INITIAL_SCALE), Some(&Some("0".into())));
        let patch = bert.patch();
        assert_eq!(patch["metadata"]["annotations"][MIN_SCALE], "0");
        assert!(
            patch["metadata"]["annotations"][DECLARED_ANNOTATION]
                .as_str()
                .is_some_and(|d| d.contains("\"3\"")),
            "{patch}"
        );
    }

    #[test]
    fn waking_restores_the_declared_values_with_nulls() {
        let dormant = map(&[
            (MIN_SCALE, "0"),
            (INITIAL_SCALE, "0"),
            (
                DECLARED_ANNOTATION,
                r#"{"autoscaling.knative.dev/min-scale":"3"}"#,
            ),
        ]);
        let labels = map(&[(MODEL_LABEL, "bert")]);
        let p = plan([w("bert", &labels, &dormant)], OrgState::Active, true, None);
        let change = &p.changes[0];
        assert_eq!(change.annotations.get(MIN_SCALE), Some(&Some("3".into())));
        assert_eq!(change.annotations.get(INITIAL_SCALE), Some(&None));
        assert_eq!(
            change.patch()["metadata"]["annotations"][INITIAL_SCALE],
            Value::Null
        );
        assert_eq!(p.tally.models.scaled_to_zero, 0);
    }

    #[test]
    fn converged_revisions_need_no_change() {
        let none = map(&[]);
        let first = plan([w("py", &none, &none)], OrgState::Active, true, None);
        let after = apply(
            &none,
            &s2z_core::annotations::Decision {
                desired: first.changes[0].annotations.clone(),
                warnings: vec![],
            },
        );
        let again = plan([w("py", &none, &after)], OrgState::Active, true, None);
        assert!(again.changes.is_empty(), "{:?}", again.changes);
    }

    #[test]
    fn bad_annotations_are_reported_not_patched() {
        let none = map(&[]);
        let bad = map(&[(MIN_SCALE, "lots")]);
        let p = plan([w("py", &none, &bad)], OrgState::Dormant, true, None);
        assert!(p.changes.is_empty());
        assert_eq!(p.problems.len(), 1);
        assert!(
            p.problems[0].starts_with("ns/py: failed to read annotation"),
            "{:?}",
            p.problems
        );
        assert_eq!(p.tally.pynodes.total, 1);
    }

    #[test]
    fn missing_autoscaler_is_counted_from_the_revision() {
        let none = map(&[]);
        let zero = map(&[(MIN_SCALE, "0")]);
        let p = plan(
            [Workload {
                namespace: "ns",
                name: "py",
                labels: &none,
                target: None,
                revision: &zero,
                resource_version: None,
            }],
            OrgState::Active,
            true,
            None,
        );
        assert!(p.changes.is_empty());
        assert_eq!(p.tally.pynodes.scaled_to_zero, 1);
    }

    #[test]
    fn requeue_lands_just_after_the_due_time_within_the_sweep() {
        let now = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap_or_default();
        let hour = Duration::from_secs(3600);
        let due = now + chrono::TimeDelta::seconds(3);
        assert_eq!(
            requeue_after(Some(due), now, hour),
            Duration::from_millis(3005)
        );
        assert_eq!(
            requeue_after(Some(now - chrono::TimeDelta::seconds(1)), now, hour),
            Duration::from_millis(5)
        );
        assert_eq!(
            requeue_after(Some(now + chrono::TimeDelta::days(2)), now, hour),
            hour
        );
        assert_eq!(requeue_after(None, now, hour), hour);
    }
}
