//! Warm-up on wake: which revisions Knative will not bring back by itself when their org wakes,
//! and to how many pods s2z raises them.
//!
//! Knative's autoscaler applies a raised min-scale only once its decider has data for the
//! revision, or while the PodAutoscaler is activating. A revision born at zero while its org was
//! dormant never had a pod to scrape, so its PodAutoscaler reports `desiredScale: -1` and the KPA
//! leaves its Deployment alone (`kpa/scaler.go`: `if desiredScale < 0 &&
//! !pa.Status.IsActivating() { return desiredScale }`); its pods would only come back with the
//! first request. For exactly those revisions s2z sets the Deployment's scale to the restored
//! min-scale. Knative does not fight that write (the KPA does not touch a Deployment while it has
//! no data), and once the new pods are Ready the autoscaler scrapes them, has data, and keeps
//! them at min-scale itself. A revision whose autoscaler has data needs nothing: the KPA applies
//! the raised min-scale on its own.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::labels::{MIN_SCALE_KEYS, first_present};

/// What s2z reads of a revision's PodAutoscaler.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoscalerView {
    /// `status.desiredScale`: -1 while the autoscaler has no data; `None` before any status.
    pub desired_scale: Option<i64>,
    /// `status.actualScale`: the Ready pods Knative counts.
    pub actual_scale: Option<i64>,
    /// `spec.reachability`: `Reachable`, `Unreachable` or empty.
    pub reachability: Option<String>,
}

/// The revision's effective min-scale from its annotations (kebab-case first, as Knative reads
/// them); 0 when absent or unreadable.
pub fn min_scale(annotations: &BTreeMap<String, String>) -> u32 {
    first_present(annotations, &MIN_SCALE_KEYS)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The replicas to set on the revision's Deployment so that a woken revision is warm, or `None`
/// when Knative brings it back by itself or it should stay cold.
pub fn warm_up_replicas(pa: &AutoscalerView, min_scale: u32) -> Option<i32> {
    if min_scale == 0 {
        return None;
    }
    // Knative ignores min-scale for a revision no route sends traffic to.
    if pa.reachability.as_deref() == Some("Unreachable") {
        return None;
    }
    // With data the KPA applies min-scale itself; writing the scale would race it.
    if pa.desired_scale.is_some_and(|d| d >= 0) {
        return None;
    }
    if pa.actual_scale.is_some_and(|a| a >= i64::from(min_scale)) {
        return None;
    }
    i32::try_from(min_scale).ok()
}

/// Whether a woken revision is warm: Knative counts at least `floor` Ready pods, or no route
/// sends it traffic (Knative keeps it at zero whatever its min-scale).
pub fn is_warm(pa: &AutoscalerView, floor: u32) -> bool {
    pa.reachability.as_deref() == Some("Unreachable")
        || pa.actual_scale.is_some_and(|a| a >= i64::from(floor))
}

/// How far back a new leader looks for wakes its predecessor may not have finished warming.
pub const RECENT_WAKE: std::time::Duration = std::time::Duration::from_secs(600);

/// Whether an org a new leader sees for the first time may have been woken by the previous
/// leader without being warmed: it has been dormant before (`ever_dormant`: its status has a
/// savings ledger), and is active or exempt since less than [`RECENT_WAKE`]. Warming it again is
/// harmless: only revisions with no autoscaler data and too few pods are touched.
pub fn maybe_unwarmed(
    ever_dormant: bool,
    state: Option<crate::org::OrgState>,
    state_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    use crate::org::OrgState;
    ever_dormant
        && matches!(state, Some(OrgState::Active | OrgState::Exempt))
        && state_since.is_some_and(|since| {
            since <= now && (now - since).to_std().is_ok_and(|age| age < RECENT_WAKE)
        })
}

/// When a wake started, for the wake-to-ready time: the activity that woke the org when it is
/// newer than the org's dormancy (`dormant_since`), else `now` (a wake by settings or by a
/// cancelled sleep request has no activity to count from).
pub fn wake_started(
    last_activity: Option<DateTime<Utc>>,
    dormant_since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    match (last_activity, dormant_since) {
        (Some(activity), Some(since)) if activity > since && activity <= now => activity,
        (Some(activity), None) if activity <= now => activity,
        _ => now,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{MIN_SCALE, MIN_SCALE_CAMEL};
    use crate::testing::map;

    fn pa(desired: Option<i64>, actual: Option<i64>, reach: Option<&str>) -> AutoscalerView {
        AutoscalerView {
            desired_scale: desired,
            actual_scale: actual,
            reachability: reach.map(str::to_string),
        }
    }

    #[test]
    fn warm_means_enough_ready_pods_or_unreachable() {
        assert!(is_warm(&pa(Some(2), Some(2), None), 2));
        assert!(!is_warm(&pa(Some(2), Some(1), None), 2));
        assert!(!is_warm(&pa(Some(-1), None, None), 1));
        assert!(is_warm(&pa(Some(0), Some(0), Some("Unreachable")), 3));
    }

    #[test]
    fn a_new_leader_rewarms_only_recent_wakes() {
        use crate::org::OrgState;
        use crate::testing::t;
        let now = t("2025-01-31T12:00:00Z");
        let recent = Some(t("2025-01-31T11:55:00Z"));
        let old = Some(t("2025-01-31T11:00:00Z"));
        assert!(maybe_unwarmed(true, Some(OrgState::Active), recent, now));
        assert!(maybe_unwarmed(true, Some(OrgState::Exempt), recent, now));
        assert!(!maybe_unwarmed(true, Some(OrgState::Dormant), recent, now));
        assert!(!maybe_unwarmed(true, Some(OrgState::Active), old, now));
        assert!(!maybe_unwarmed(true, Some(OrgState::Active), None, now));
        assert!(!maybe_unwarmed(true, None, recent, now));
        // A new org, never dormant, has nothing to warm back.
        assert!(!maybe_unwarmed(false, Some(OrgState::Active), recent, now));
    }

    #[test]
    fn a_wake_counts_from_the_activity_that_caused_it() {
        use crate::testing::t;
        let now = t("2025-01-31T12:00:10Z");
        let since = t("2025-01-31T11:00:00Z");
        let activity = t("2025-01-31T12:00:08Z");
        assert_eq!(wake_started(Some(activity), Some(since), now), activity);
        // Activity older than the dormancy did not wake it.
        assert_eq!(
            wake_started(Some(t("2025-01-31T10:00:00Z")), Some(since), now),
            now
        );
        // A clock ahead of ours is not trusted.
        assert_eq!(
            wake_started(Some(t("2025-01-31T12:01:00Z")), Some(since), now),
            now
        );
        assert_eq!(wake_started(None, Some(since), now), now);
    }

    #[test]
    fn born_at_zero_without_data_is_raised_to_min_scale() {
        assert_eq!(warm_up_replicas(&pa(Some(-1), Some(0), None), 2), Some(2));
        assert_eq!(
            warm_up_replicas(&pa(Some(-1), Some(0), Some("Reachable")), 1),
            Some(1)
        );
        // No status yet: Knative has not decided anything either.
        assert_eq!(warm_up_replicas(&pa(None, None, None), 3), Some(3));
    }

    #[test]
    fn knative_handles_revisions_it_has_data_for() {
        assert_eq!(warm_up_replicas(&pa(Some(0), Some(0), None), 2), None);
        assert_eq!(warm_up_replicas(&pa(Some(2), Some(1), None), 2), None);
    }

    #[test]
    fn cold_or_unrouted_or_already_warm_revisions_are_left_alone() {
        assert_eq!(warm_up_replicas(&pa(Some(-1), Some(0), None), 0), None);
        assert_eq!(
            warm_up_replicas(&pa(Some(-1), Some(0), Some("Unreachable")), 2),
            None
        );
        assert_eq!(warm_up_replicas(&pa(Some(-1), Some(2), None), 2), None);
    }

    #[test]
    fn min_scale_reads_knative_spellings() {
        assert_eq!(
            min_scale(&map(&[(MIN_SCALE, "3"), (MIN_SCALE_CAMEL, "1")])),
            3
        );
        assert_eq!(min_scale(&map(&[(MIN_SCALE_CAMEL, "2")])), 2);
        assert_eq!(min_scale(&map(&[(MIN_SCALE, "x")])), 0);
        assert_eq!(min_scale(&map(&[])), 0);
    }
}
