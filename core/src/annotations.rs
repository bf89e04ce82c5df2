//! The decision: which autoscaling annotations a revision should carry, as a pure function of
//! its org's state, the cluster's Knative configuration and what the user declared.
//!
//! The webhook applies it to every Revision on CREATE and the controller to every live revision,
//! so both must reach the same answer. Only min-scale, initial-scale and the retention period
//! (in both spellings) are managed; every other annotation is left as it is, so that s2z never
//! fights a change the user made after it first touched the revision.

use std::collections::BTreeMap;
use std::time::Duration;

pub use crate::knative::{
    Violation, format_go_duration, parse_go_duration, validate_knative, validate_knative_with,
    violations,
};
use crate::labels::{
    ACTIVATION_SCALE, AUTOSCALING_PREFIX, DECLARED_ANNOTATION, INITIAL_SCALE, INITIAL_SCALE_KEYS,
    MAX_SCALE_KEYS, MIN_SCALE, MIN_SCALE_KEYS, RETENTION, RETENTION_KEYS, first_present,
};
use crate::org::OrgState;
use crate::settings::KnativeConfig;

/// Warning given when a dormant org's revision cannot start at zero pods.
pub const ZERO_INITIAL_SCALE_FORBIDDEN: &str = "cluster forbids initial-scale 0 (allow-zero-initial-scale=false): the revision will start one pod before scaling to zero";

/// Longest retention period Knative accepts.
pub const MAX_RETENTION: Duration = Duration::from_secs(3600);

/// The keys the decision may change (besides [`DECLARED_ANNOTATION`]).
pub const MANAGED_KEYS: [&str; 6] = [
    MIN_SCALE_KEYS[0],
    MIN_SCALE_KEYS[1],
    INITIAL_SCALE_KEYS[0],
    INITIAL_SCALE_KEYS[1],
    RETENTION_KEYS[0],
    RETENTION_KEYS[1],
];

/// Whether an annotation can change the decision: only Knative's autoscaling annotations and
/// s2z's record of the declared values do. A caller may hand [`decide`] just these (the webhook
/// keeps only these when it reads a revision) and gets the same decision.
pub fn is_decision_input(key: &str) -> bool {
    key.starts_with(AUTOSCALING_PREFIX) || key == DECLARED_ANNOTATION
}

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct DecisionInput<'a> {
    /// The org's state.
    pub state: OrgState,
    /// Knative's `allow-zero-initial-scale`.
    pub allow_zero_initial_scale: bool,
    /// The org's scale-down window, if it has one.
    pub scale_down_window: Option<Duration>,
    /// The revision's current `metadata.annotations`, all of them or only those for which
    /// [`is_decision_input`] holds.
    pub annotations: &'a BTreeMap<String, String>,
}

/// What to change on a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Key → `Some(value)` to set or `None` to remove; only keys whose value must change.
    pub desired: BTreeMap<String, Option<String>>,
    /// What the decision could not do as asked, for the user to read.
    pub warnings: Vec<String>,
}

impl Decision {
    /// True when the revision is already as it should be.
    pub fn is_noop(&self) -> bool {
        self.desired.is_empty()
    }
}

/// Why no decision could be made; callers then leave the revision unchanged and warn.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecisionError {
    /// A current annotation breaks Knative's rules.
    #[error(
        "failed to read annotation {key}={value:?}: {reason}; fix or remove it on the revision (s2z leaves the revision unchanged until then)"
    )]
    InvalidAnnotation {
        /// The annotation.
        key: String,
        /// Its value.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The record of declared values is unreadable.
    #[error(
        "failed to read annotation s2z.dev/declared: {reason}; delete it and s2z will record the revision's current autoscaling annotations as declared"
    )]
    InvalidDeclared {
        /// What is wrong with it.
        reason: String,
    },
    /// No annotation set satisfies both the org's state and Knative's rules.
    #[error(
        "failed to find autoscaling annotations Knative would accept: {reason}; fix the revision's autoscaling annotations (s2z leaves the revision unchanged until then)"
    )]
    Unsatisfiable {
        /// Knative's objections to the best attempt.
        reason: String,
    },
}

fn permissive() -> KnativeConfig {
    KnativeConfig {
        allow_zero_initial_scale: true,
        enable_scale_to_zero: true,
        max_scale_limit: None,
    }
}

/// The user's own autoscaling annotations: the recorded [`DECLARED_ANNOTATION`] when present,
/// else the revision's current `autoscaling.knative.dev/*` annotations.
pub fn declared(
    annotations: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, DecisionError> {
    let Some(recorded) = annotations.get(DECLARED_ANNOTATION) else {
        return Ok(annotations
            .iter()
            .filter(|(k, _)| k.starts_with(AUTOSCALING_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect());
    };
    let parsed: BTreeMap<String, String> =
        serde_json::from_str(recorded).map_err(|e| DecisionError::InvalidDeclared {
            reason: format!("{recorded:?} is not a JSON object of strings ({e})"),
        })?;
    if let Some(v) = violations(&parsed, &permissive()).into_iter().next() {
        return Err(DecisionError::InvalidDeclared {
            reason: format!("it records {v}"),
        });
    }
    Ok(parsed)
}

fn set(map: &mut BTreeMap<String, String>, keys: [&str; 2], value: String) {
    map.insert(keys[0].to_string(), value);
    // The legacy twin goes so that only one spelling says what the value is.
    map.remove(keys[1]);
}

fn clear(map: &mut BTreeMap<String, String>, keys: [&str; 2]) {
    for key in keys {
        map.remove(key);
    }
}

fn int_of(map: &BTreeMap<String, String>, keys: &[&str]) -> Option<i64> {
    first_present(map, keys).and_then(|(_, v)| v.parse().ok())
}

/// Computes the annotations a revision should carry and returns only the differences.
///
/// Dormant: min-scale 0, initial-scale 0 when the cluster allows it, the retention period from
/// the scale-down window (at most 1h). Active: the declared values with a min-scale floor of 1.
/// Exempt: as Active (exempt orgs are kept warm). Whatever the state, the result
/// passes [`validate_knative_with`] for the given cluster, or this returns an error.
pub fn decide(input: &DecisionInput<'_>) -> Result<Decision, DecisionError> {
    let current = input.annotations;
    if let Some(v) = violations(current, &permissive()).into_iter().next() {
        return Err(DecisionError::InvalidAnnotation {
            key: v.key,
            value: v.value,
            reason: v.reason,
        });
    }
    let declared = declared(current)?;
    let mut warnings = Vec::new();

    // Starting from the declared values means leaving a state undoes everything it did.
    let mut out = current.clone();
    for key in MANAGED_KEYS {
        match declared.get(key) {
            Some(value) => out.insert(key.to_string(), value.clone()),
            None => out.remove(key),
        };
    }

    match input.state {
        OrgState::Dormant => {
            set(&mut out, MIN_SCALE_KEYS, "0".to_string());
            if input.allow_zero_initial_scale {
                set(&mut out, INITIAL_SCALE_KEYS, "0".to_string());
            } else {
                clear(&mut out, INITIAL_SCALE_KEYS);
                warnings.push(ZERO_INITIAL_SCALE_FORBIDDEN.to_string());
            }
            if let Some(window) = input.scale_down_window {
                let retention = if window > MAX_RETENTION {
                    warnings.push(format!(
                        "the org's scale-down window ({}) is longer than Knative's limit for \
                         {RETENTION} (1h); using 1h, shorten spec.scaleDownWindow to silence this",
                        humantime::format_duration(window)
                    ));
                    MAX_RETENTION
                } else {
                    window
                };
                set(&mut out, RETENTION_KEYS, format_go_duration(retention));
            }
        }
        // Exempt orgs are the important ones the seeds never scale to zero: the same warm floor.
        OrgState::Active | OrgState::Exempt => {
            if int_of(&out, &MIN_SCALE_KEYS).is_none_or(|min| min < 1) {
                set(&mut out, MIN_SCALE_KEYS, "1".to_string());
            }
        }
    }

    keep_within_knative_rules(&mut out, input.allow_zero_initial_scale, &mut warnings);

    if !out.contains_key(DECLARED_ANNOTATION) {
        let record =
            serde_json::to_string(&declared).map_err(|e| DecisionError::Unsatisfiable {
                reason: format!("the declared annotations cannot be recorded ({e})"),
            })?;
        out.insert(DECLARED_ANNOTATION.to_string(), record);
    }

    let cluster = KnativeConfig {
        allow_zero_initial_scale: input.allow_zero_initial_scale,
        ..permissive()
    };
    validate_knative_with(&out, &cluster)
        .map_err(|reason| DecisionError::Unsatisfiable { reason })?;

    Ok(Decision {
        desired: diff(current, &out),
        warnings,
    })
}

/// Repairs what restoring declared values could break: values the user changed since (max-scale,
/// activation-scale) or a cluster setting that changed since (allow-zero-initial-scale).
fn keep_within_knative_rules(
    out: &mut BTreeMap<String, String>,
    allow_zero_initial_scale: bool,
    warnings: &mut Vec<String>,
) {
    if !allow_zero_initial_scale && int_of(out, &INITIAL_SCALE_KEYS) == Some(0) {
        clear(out, INITIAL_SCALE_KEYS);
        warnings.push(format!(
            "the declared {INITIAL_SCALE} 0 is not allowed by the cluster \
             (allow-zero-initial-scale=false); dropping it so that Knative admits the revision"
        ));
    }
    let min = int_of(out, &MIN_SCALE_KEYS).unwrap_or(0);
    let max = int_of(out, &MAX_SCALE_KEYS).unwrap_or(0);
    let activation = out
        .get(ACTIVATION_SCALE)
        .and_then(|v| v.parse::<i64>().ok());
    let ceiling = [Some(max).filter(|m| *m != 0), activation]
        .into_iter()
        .flatten()
        .min();
    if let Some(ceiling) = ceiling.filter(|c| min > *c) {
        set(out, MIN_SCALE_KEYS, ceiling.to_string());
        warnings.push(format!(
            "{MIN_SCALE} {min} is above the revision's max-scale or activation-scale; \
             using {ceiling} so that Knative admits the revision"
        ));
    }
}

fn diff(
    current: &BTreeMap<String, String>,
    target: &BTreeMap<String, String>,
) -> BTreeMap<String, Option<String>> {
    let mut desired = BTreeMap::new();
    for (key, value) in target {
        if current.get(key) != Some(value) {
            desired.insert(key.clone(), Some(value.clone()));
        }
    }
    for key in current.keys() {
        if !target.contains_key(key) {
            desired.insert(key.clone(), None);
        }
    }
    desired
}

/// The annotations after applying `decision` to `current`.
pub fn apply(current: &BTreeMap<String, String>, decision: &Decision) -> BTreeMap<String, String> {
    let mut result = current.clone();
    for (key, value) in &decision.desired {
        match value {
            Some(value) => result.insert(key.clone(), value.clone()),
            None => result.remove(key),
        };
    }
    result
}

/// Whether the revision may scale to zero: its effective min-scale is 0, or absent (Knative's
/// default). An unreadable min-scale counts as not scaling to zero.
pub fn is_scaled_to_zero(annotations: &BTreeMap<String, String>) -> bool {
    match first_present(annotations, &MIN_SCALE_KEYS) {
        None => true,
        Some((_, value)) => value.parse::<i64>() == Ok(0),
    }
}

#[cfg(test)]
mod tests;
