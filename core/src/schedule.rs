//! What the next hours hold for the orgs as a whole: how many are in each state, how many active
//! orgs go dormant within each horizon, and how soon the next one does. A fixed handful of
//! numbers whatever the number of orgs, so that it can be exported as metrics at 10,000 orgs;
//! the per-org answer ("when does acme sleep") is the Org's `status.dormantAt`, shown by
//! `kubectl s2z status`.

use chrono::{DateTime, Utc};

use crate::org::OrgState;

/// The horizons counted by [`Schedule::due_within`], with their metric label.
pub const HORIZONS: [(&str, u64); 4] = [("5m", 300), ("1h", 3600), ("6h", 21_600), ("24h", 86_400)];

/// One org as the schedule sees it: its reported state and, for an active org, when it goes
/// dormant without further activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// `status.state`; `None` before the controller first reported it.
    pub state: Option<OrgState>,
    /// `status.dormantAt`.
    pub dormant_at: Option<DateTime<Utc>>,
}

/// The summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Schedule {
    /// Orgs by reported state: Active, Dormant, Exempt.
    pub by_state: [u64; 3],
    /// Orgs the controller has not reported yet.
    pub unreported: u64,
    /// Active orgs due to go dormant within each of [`HORIZONS`] (cumulative).
    pub due_within: [u64; HORIZONS.len()],
    /// Seconds until the soonest active org goes dormant (0 when overdue); `None` when no active
    /// org has a due time.
    pub next_flip_secs: Option<f64>,
}

/// Summarises `entries` at `now`.
pub fn schedule(entries: impl IntoIterator<Item = Entry>, now: DateTime<Utc>) -> Schedule {
    let mut out = Schedule::default();
    for entry in entries {
        let Some(state) = entry.state else {
            out.unreported += 1;
            continue;
        };
        out.by_state[index(state)] += 1;
        if state != OrgState::Active {
            continue;
        }
        let Some(due) = entry.dormant_at else {
            continue;
        };
        // An overdue org flips at the controller's next look: it counts as due now.
        let secs = ((due - now).num_milliseconds().max(0) as f64) / 1000.0;
        out.next_flip_secs = Some(out.next_flip_secs.map_or(secs, |s: f64| s.min(secs)));
        for (count, (_, horizon)) in out.due_within.iter_mut().zip(HORIZONS) {
            if secs <= horizon as f64 {
                *count += 1;
            }
        }
    }
    out
}

/// The position of `state` in [`Schedule::by_state`].
pub fn index(state: OrgState) -> usize {
    match state {
        OrgState::Active => 0,
        OrgState::Dormant => 1,
        OrgState::Exempt => 2,
    }
}

/// The states in the order of [`Schedule::by_state`].
pub const STATES: [OrgState; 3] = [OrgState::Active, OrgState::Dormant, OrgState::Exempt];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::t;

    fn active(due: &str) -> Entry {
        Entry {
            state: Some(OrgState::Active),
            dormant_at: Some(t(due)),
        }
    }

    #[test]
    fn counts_states_horizons_and_the_soonest_flip() {
        let now = t("2025-01-31T12:00:00Z");
        let s = schedule(
            [
                active("2025-01-31T12:02:00Z"), // 2 min
                active("2025-01-31T14:00:00Z"), // 2 h
                active("2025-02-02T12:00:00Z"), // 2 days
                active("2025-01-31T11:59:00Z"), // overdue
                Entry {
                    state: Some(OrgState::Dormant),
                    dormant_at: None,
                },
                Entry {
                    state: Some(OrgState::Exempt),
                    dormant_at: Some(t("2025-01-31T12:01:00Z")), // stale: exempt never flips
                },
                Entry {
                    state: None,
                    dormant_at: None,
                },
            ],
            now,
        );
        assert_eq!(s.by_state, [4, 1, 1]);
        assert_eq!(s.unreported, 1);
        assert_eq!(s.due_within, [2, 2, 3, 3]);
        assert_eq!(s.next_flip_secs, Some(0.0));
    }

    #[test]
    fn nothing_due_without_active_orgs() {
        let s = schedule([], t("2025-01-31T12:00:00Z"));
        assert_eq!(s, Schedule::default());
        assert_eq!(s.next_flip_secs, None);
    }

    #[test]
    fn the_soonest_flip_is_the_minimum() {
        let s = schedule(
            [
                active("2025-01-31T12:10:00Z"),
                active("2025-01-31T12:05:30Z"),
            ],
            t("2025-01-31T12:00:00Z"),
        );
        assert_eq!(s.next_flip_secs, Some(330.0));
    }
}
