//! When an org is Active, Dormant or Exempt, and the exact instant it becomes dormant.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};

use crate::labels::SLEEP_ANNOTATION;
use crate::org::{Org, OrgSpec, OrgState};
use crate::settings::Settings;

/// Everything the org state depends on, so that the rule is a pure function of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateInput {
    /// `spec.scaleToZeroAllowed`.
    pub allowed: bool,
    /// Newest recorded activity.
    pub last_activity: Option<DateTime<Utc>>,
    /// When the org was created; counts as activity until there is real activity, so a new org
    /// is not dormant on arrival.
    pub created: Option<DateTime<Utc>>,
    /// When `kubectl s2z sleep` asked for dormancy.
    pub sleep_requested: Option<DateTime<Utc>>,
    /// The dormancy period in force for this org (see [`effective_period`]).
    pub period: Duration,
    /// The present.
    pub now: DateTime<Utc>,
}

impl StateInput {
    /// Builds the input from an org object; unreadable timestamps count as absent.
    pub fn for_org(org: &Org, settings: &Settings, now: DateTime<Utc>) -> StateInput {
        let status = org.status.as_ref();
        StateInput {
            allowed: org.spec.scale_to_zero_allowed,
            last_activity: status
                .and_then(|s| s.last_activity_at.as_deref())
                .and_then(|t| parse_time(t).ok()),
            created: org
                .metadata
                .creation_timestamp
                .as_ref()
                .and_then(|t| DateTime::from_timestamp(t.0.as_second(), subsec_nanos(t.0))),
            sleep_requested: org
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(SLEEP_ANNOTATION))
                .and_then(|t| parse_time(t).ok()),
            period: effective_period(settings, &org.spec),
            now,
        }
    }
}

fn subsec_nanos(t: k8s_openapi::jiff::Timestamp) -> u32 {
    u32::try_from(t.subsec_nanosecond()).unwrap_or(0)
}

/// The dormancy period for an org: its own override, else the cluster-wide setting.
pub fn effective_period(settings: &Settings, spec: &OrgSpec) -> Duration {
    spec.dormancy_period_secs
        .map(Duration::from_secs)
        .unwrap_or(settings.dormancy_period)
}

fn sleeping(input: &StateInput) -> bool {
    match (input.sleep_requested, input.last_activity) {
        (Some(sleep), Some(activity)) => sleep > activity,
        (Some(_), None) => true,
        (None, _) => false,
    }
}

/// When the org becomes dormant by inactivity; `None` when it never will (no reference time,
/// or a period too long to represent).
fn inactivity_deadline(input: &StateInput) -> Option<DateTime<Utc>> {
    let since = input.last_activity.or(input.created)?;
    since.checked_add_signed(TimeDelta::from_std(input.period).ok()?)
}

/// The org's state: Exempt when not allowed to scale to zero; Dormant when put to sleep after its
/// last activity, or when its last activity (or creation) is at least one period ago; else Active.
///
/// An org with neither activity nor a creation time stays Active: without evidence of idleness
/// s2z does not scale anything to zero.
pub fn org_state(input: &StateInput) -> OrgState {
    if !input.allowed {
        return OrgState::Exempt;
    }
    if sleeping(input) {
        return OrgState::Dormant;
    }
    match inactivity_deadline(input) {
        Some(deadline) if deadline <= input.now => OrgState::Dormant,
        _ => OrgState::Active,
    }
}

/// The instant an Active org becomes Dormant if no activity arrives; `None` for orgs that are
/// not Active or will never become dormant.
pub fn due_at(input: &StateInput) -> Option<DateTime<Utc>> {
    match org_state(input) {
        OrgState::Active => inactivity_deadline(input),
        OrgState::Dormant | OrgState::Exempt => None,
    }
}

/// A timestamp that is not RFC 3339.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse timestamp {input:?}: {reason}; write RFC 3339, e.g. 2025-01-31T12:00:00Z")]
pub struct TimestampError {
    /// The text as found.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Parses an RFC 3339 timestamp as written in status fields and the sleep annotation.
pub fn parse_time(input: &str) -> Result<DateTime<Utc>, TimestampError> {
    DateTime::parse_from_rfc3339(input.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| TimestampError {
            input: input.to_string(),
            reason: e.to_string(),
        })
}

/// Formats a timestamp the way Kubernetes does (`2025-01-31T12:00:00Z`), which is what `date`
/// printer columns expect; sub-second digits are kept only when present.
pub fn format_time(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::org::{Org, OrgStatus};
    use crate::testing::t;
    use std::collections::BTreeMap;

    const HOUR: Duration = Duration::from_secs(3600);

    fn input(now: &str) -> StateInput {
        StateInput {
            allowed: true,
            last_activity: None,
            created: Some(t("2025-01-01T00:00:00Z")),
            sleep_requested: None,
            period: HOUR,
            now: t(now),
        }
    }

    #[test]
    fn new_org_is_active_until_one_period_after_creation() {
        let i = input("2025-01-01T00:59:59Z");
        assert_eq!(org_state(&i), OrgState::Active);
        assert_eq!(due_at(&i), Some(t("2025-01-01T01:00:00Z")));
        let i = input("2025-01-01T01:00:00Z");
        assert_eq!(org_state(&i), OrgState::Dormant, "due instant is inclusive");
        assert_eq!(due_at(&i), None);
    }

    #[test]
    fn activity_pushes_the_deadline() {
        let mut i = input("2025-01-01T02:00:00Z");
        i.last_activity = Some(t("2025-01-01T01:30:00Z"));
        assert_eq!(org_state(&i), OrgState::Active);
        assert_eq!(due_at(&i), Some(t("2025-01-01T02:30:00Z")));
        i.now = t("2025-01-01T02:30:00Z");
        assert_eq!(org_state(&i), OrgState::Dormant);
    }

    #[test]
    fn not_allowed_is_exempt_whatever_else() {
        let mut i = input("2030-01-01T00:00:00Z");
        i.allowed = false;
        i.sleep_requested = Some(t("2029-01-01T00:00:00Z"));
        assert_eq!(org_state(&i), OrgState::Exempt);
        assert_eq!(due_at(&i), None);
    }

    #[test]
    fn sleep_after_last_activity_means_dormant_now() {
        let mut i = input("2025-01-01T00:10:00Z");
        i.last_activity = Some(t("2025-01-01T00:05:00Z"));
        i.sleep_requested = Some(t("2025-01-01T00:06:00Z"));
        assert_eq!(org_state(&i), OrgState::Dormant);
        assert_eq!(due_at(&i), None);
    }

    #[test]
    fn activity_after_sleep_wakes_the_org() {
        let mut i = input("2025-01-01T00:10:00Z");
        i.sleep_requested = Some(t("2025-01-01T00:06:00Z"));
        i.last_activity = Some(t("2025-01-01T00:07:00Z"));
        assert_eq!(org_state(&i), OrgState::Active);
        assert_eq!(due_at(&i), Some(t("2025-01-01T01:07:00Z")));
        i.last_activity = i.sleep_requested;
        assert_eq!(org_state(&i), OrgState::Active, "a tie goes to activity");
    }

    #[test]
    fn sleep_without_any_activity_is_dormant() {
        let mut i = input("2025-01-01T00:10:00Z");
        i.sleep_requested = Some(t("2025-01-01T00:06:00Z"));
        assert_eq!(org_state(&i), OrgState::Dormant);
    }

    #[test]
    fn no_reference_time_stays_active() {
        let mut i = input("2025-01-01T00:10:00Z");
        i.created = None;
        assert_eq!(org_state(&i), OrgState::Active);
        assert_eq!(due_at(&i), None);
    }

    #[test]
    fn huge_period_never_becomes_due() {
        let mut i = input("2025-01-01T00:10:00Z");
        i.period = Duration::from_secs(u64::MAX);
        assert_eq!(org_state(&i), OrgState::Active);
        assert_eq!(due_at(&i), None);
    }

    #[test]
    fn zero_period_is_dormant_at_once() {
        let mut i = input("2025-01-01T00:00:00Z");
        i.period = Duration::ZERO;
        assert_eq!(org_state(&i), OrgState::Dormant);
    }

    #[test]
    fn future_activity_from_clock_skew_keeps_it_active() {
        let mut i = input("2025-01-01T05:00:00Z");
        i.last_activity = Some(t("2025-01-01T05:00:30Z"));
        assert_eq!(org_state(&i), OrgState::Active);
    }

    #[test]
    fn effective_period_prefers_the_org_override() {
        let settings = Settings::default();
        let mut spec = OrgSpec::default();
        assert_eq!(effective_period(&settings, &spec), settings.dormancy_period);
        spec.dormancy_period_secs = Some(600);
        assert_eq!(effective_period(&settings, &spec), Duration::from_secs(600));
    }

    #[test]
    fn for_org_reads_every_source() {
        let mut org = Org::new("acme", OrgSpec::default());
        org.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(1_735_689_600).unwrap_or_default(),
            ));
        org.metadata.annotations = Some(BTreeMap::from([(
            SLEEP_ANNOTATION.to_string(),
            "2025-01-02T00:00:00Z".to_string(),
        )]));
        org.spec.dormancy_period_secs = Some(60);
        org.status = Some(OrgStatus {
            last_activity_at: Some("2025-01-01T12:00:00+00:00".into()),
            ..OrgStatus::default()
        });
        let now = t("2025-01-03T00:00:00Z");
        let i = StateInput::for_org(&org, &Settings::default(), now);
        assert_eq!(
            i,
            StateInput {
                allowed: true,
                last_activity: Some(t("2025-01-01T12:00:00Z")),
                created: Some(t("2025-01-01T00:00:00Z")),
                sleep_requested: Some(t("2025-01-02T00:00:00Z")),
                period: Duration::from_secs(60),
                now,
            }
        );
        assert_eq!(org_state(&i), OrgState::Dormant);
    }

    #[test]
    fn for_org_ignores_unreadable_timestamps() {
        let mut org = Org::new("acme", OrgSpec::default());
        org.metadata.annotations = Some(BTreeMap::from([(
            SLEEP_ANNOTATION.to_string(),
            "yesterday".to_string(),
        )]));
        org.status = Some(OrgStatus {
            last_activity_at: Some("soon".into()),
            ..OrgStatus::default()
        });
        let i = StateInput::for_org(&org, &Settings::default(), t("2025-01-01T00:00:00Z"));
        assert_eq!(
            (i.last_activity, i.sleep_requested, i.created),
            (None, None, None)
        );
    }

    #[test]
    fn time_text_round_trips() {
        let time = t("2025-01-31T12:00:00Z");
        assert_eq!(format_time(time), "2025-01-31T12:00:00Z");
        assert_eq!(t(&format_time(time)), time);
        assert_eq!(t("2025-01-31T13:00:00+01:00"), time);
        let msg = parse_time("tomorrow")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.starts_with("failed to parse timestamp \"tomorrow\""),
            "{msg}"
        );
        assert!(msg.contains("RFC 3339"), "{msg}");
    }
}
