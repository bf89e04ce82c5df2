//! The Org status the controller writes, as a pure function of the previous status and what a
//! reconcile observed, plus the patch that writes it.
//!
//! Writing only when this function's result differs from the stored status is what keeps a
//! steady cluster at zero writes: every field is either copied from the old status or derived
//! from inputs that only change when something real happens.

use chrono::{DateTime, SecondsFormat, Utc};
use s2z_core::dormancy::format_time;
use s2z_core::org::{Condition, OrgState, OrgStatus};
use s2z_core::workload::Tally;
use serde_json::{Value, json};

/// Condition type: the org's revisions carry the annotations its state requires.
pub const READY: &str = "Ready";
/// Condition type: the org is dormant.
pub const DORMANT: &str = "Dormant";

/// At most this many problem revisions are named in the Ready condition; the rest are counted.
const NAMED_PROBLEMS: usize = 3;

/// What one reconcile found.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The org's state now.
    pub state: OrgState,
    /// When an active org goes dormant without further activity.
    pub due: Option<DateTime<Utc>>,
    /// Revision counts, as they are once the planned patches are applied.
    pub tally: Tally,
    /// Revisions the decision could not handle, with why.
    pub problems: &'a [String],
    /// The Org's `metadata.generation`.
    pub generation: Option<i64>,
    /// The present.
    pub now: DateTime<Utc>,
}

/// A controller timestamp: milliseconds are enough and keep the text short.
pub fn stamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    obs: &Observation<'_>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: Some(stamp(obs.now)),
        observed_generation: obs.generation,
    }
}

fn ready_condition(obs: &Observation<'_>) -> Condition {
    if obs.problems.is_empty() {
        let total = obs.tally.pynodes.total + obs.tally.models.total;
        return condition(
            READY,
            true,
            "Reconciled",
            format!("{total} revision(s) carry the annotations the org's state requires"),
            obs,
        );
    }
    let mut message = obs
        .problems
        .iter()
        .take(NAMED_PROBLEMS)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    if obs.problems.len() > NAMED_PROBLEMS {
        message.push_str(&format!(
            "; and {} more",
            obs.problems.len() - NAMED_PROBLEMS
        ));
    }
    condition(READY, false, "InvalidAnnotations", message, obs)
}

fn dormant_condition(obs: &Observation<'_>) -> Condition {
    let (status, message) = match obs.state {
        OrgState::Dormant => (true, "revisions may scale to zero"),
        OrgState::Active => (false, "revisions keep at least one pod"),
        OrgState::Exempt => (
            false,
            "spec.scaleToZeroAllowed is false: revisions never scale to zero and keep at least one pod",
        ),
    };
    condition(
        DORMANT,
        status,
        obs.state.as_str(),
        message.to_string(),
        obs,
    )
}

/// The status to store. `lastActivityAt` is carried over untouched: the activity writers own it.
pub fn next_status(old: Option<&OrgStatus>, obs: &Observation<'_>) -> OrgStatus {
    let mut next = old.cloned().unwrap_or_default();
    let same_state = next.state == Some(obs.state);
    if !same_state || next.state_since.is_none() {
        next.state_since = Some(stamp(obs.now));
    }
    next.state = Some(obs.state);
    next.dormant_at = obs.due.map(format_time);
    next.set_condition(ready_condition(obs));
    next.set_condition(dormant_condition(obs));
    next.pynodes = obs.tally.pynodes;
    next.models = obs.tally.models;
    next.observed_generation = obs.generation;
    next
}

/// The state the org flipped into, if it changed.
pub fn flip(old: Option<&OrgStatus>, next: &OrgStatus) -> Option<OrgState> {
    let before = old.and_then(|s| s.state);
    (before != next.state).then_some(next.state).flatten()
}

/// A merge patch of the status guarded by `resource_version`, so that a status computed from an
/// Org that has since changed (new activity, say) is refused instead of stored. It leaves
/// `lastActivityAt` alone, and stamps `lastEvaluatedAt`.
pub fn status_patch(
    status: &OrgStatus,
    resource_version: Option<&str>,
    now: DateTime<Utc>,
) -> Value {
    let mut body = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Some(map) = body.as_object_mut() {
        map.remove("lastActivityAt");
        map.insert("lastEvaluatedAt".into(), Value::String(stamp(now)));
    }
    guarded(body, resource_version)
}

/// A patch that only records that the org was evaluated, answering `kubectl s2z sweep`.
pub fn evaluated_patch(resource_version: Option<&str>, now: DateTime<Utc>) -> Value {
    guarded(json!({"lastEvaluatedAt": stamp(now)}), resource_version)
}

fn guarded(status: Value, resource_version: Option<&str>) -> Value {
    match resource_version {
        Some(rv) => json!({"metadata": {"resourceVersion": rv}, "status": status}),
        None => json!({"status": status}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2z_core::testing::t;

    fn obs(state: OrgState, now: &str) -> Observation<'static> {
        let mut tally = Tally::default();
        tally.pynodes.add(state == OrgState::Dormant);
        Observation {
            state,
            due: (state == OrgState::Active).then(|| t("2025-01-02T00:00:00.5Z")),
            tally,
            problems: &[],
            generation: Some(3),
            now: t(now),
        }
    }

    #[test]
    fn first_status_fills_everything() {
        let next = next_status(None, &obs(OrgState::Active, "2025-01-01T00:00:00Z"));
        assert_eq!(next.state, Some(OrgState::Active));
        assert_eq!(
            next.state_since.as_deref(),
            Some("2025-01-01T00:00:00.000Z")
        );
        assert_eq!(next.dormant_at.as_deref(), Some("2025-01-02T00:00:00.500Z"));
        assert_eq!(next.observed_generation, Some(3));
        assert_eq!(next.pynodes.total, 1);
        assert_eq!(
            next.condition(READY).map(|c| c.status.as_str()),
            Some("True")
        );
        assert_eq!(
            next.condition(DORMANT).map(|c| c.reason.as_str()),
            Some("Active")
        );
        assert_eq!(flip(None, &next), Some(OrgState::Active));
    }

    #[test]
    fn steady_state_reproduces_the_stored_status() {
        let first = next_status(None, &obs(OrgState::Active, "2025-01-01T00:00:00Z"));
        let mut stored = first.clone();
        stored.last_activity_at = Some("2025-01-01T00:00:00Z".into());
        let again = next_status(
            Some(&stored),
            &obs(OrgState::Active, "2025-01-01T00:30:00Z"),
        );
        assert_eq!(
            again, stored,
            "a later reconcile with the same facts writes nothing"
        );
        assert_eq!(flip(Some(&stored), &again), None);
    }

    #[test]
    fn a_flip_moves_state_since_and_transition_times() {
        let active = next_status(None, &obs(OrgState::Active, "2025-01-01T00:00:00Z"));
        let dormant = next_status(
            Some(&active),
            &obs(OrgState::Dormant, "2025-01-02T00:00:01Z"),
        );
        assert_eq!(flip(Some(&active), &dormant), Some(OrgState::Dormant));
        assert_eq!(
            dormant.state_since.as_deref(),
            Some("2025-01-02T00:00:01.000Z")
        );
        assert_eq!(dormant.dormant_at, None);
        let cond = dormant.condition(DORMANT).cloned().unwrap_or_default();
        assert_eq!(
            (cond.status.as_str(), cond.reason.as_str()),
            ("True", "Dormant")
        );
        assert_eq!(
            cond.last_transition_time.as_deref(),
            Some("2025-01-02T00:00:01.000Z")
        );
        let ready = dormant.condition(READY).cloned().unwrap_or_default();
        assert_eq!(
            ready.last_transition_time.as_deref(),
            Some("2025-01-01T00:00:00.000Z"),
            "Ready stayed True"
        );
    }

    #[test]
    fn problems_make_ready_false_and_are_summarised() {
        let problems: Vec<String> = (0..5).map(|i| format!("ns/rev-{i}: bad")).collect();
        let mut o = obs(OrgState::Dormant, "2025-01-01T00:00:00Z");
        o.problems = &problems;
        let next = next_status(None, &o);
        let ready = next.condition(READY).cloned().unwrap_or_default();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "InvalidAnnotations")
        );
        assert!(ready.message.contains("ns/rev-0: bad"), "{}", ready.message);
        assert!(ready.message.ends_with("and 2 more"), "{}", ready.message);
    }

    #[test]
    fn patch_leaves_activity_alone_and_is_guarded() {
        let mut status = next_status(None, &obs(OrgState::Dormant, "2025-01-01T00:00:00Z"));
        status.last_activity_at = Some("2024-12-01T00:00:00Z".into());
        let patch = status_patch(&status, Some("42"), t("2025-01-01T00:00:00Z"));
        assert_eq!(patch["metadata"]["resourceVersion"], "42");
        assert!(patch["status"].get("lastActivityAt").is_none(), "{patch}");
        assert_eq!(
            patch["status"]["lastEvaluatedAt"],
            "2025-01-01T00:00:00.000Z"
        );
        assert_eq!(patch["status"]["dormantAt"], Value::Null, "null clears it");
        assert_eq!(patch["status"]["state"], "Dormant");
        let only = evaluated_patch(None, t("2025-01-01T00:00:00Z"));
        assert_eq!(
            only,
            json!({"status": {"lastEvaluatedAt": "2025-01-01T00:00:00.000Z"}})
        );
    }
}
