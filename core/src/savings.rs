//! The savings ledger's arithmetic: the warm floor an org would hold if it were active, and the
//! pod-seconds and GPU-seconds it did not hold while dormant.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use k8s_openapi::api::core::v1::ResourceRequirements;

use crate::annotations::declared;
use crate::defrag::gpu_count;
use crate::labels::ROUTING_STATE_LABEL;
use crate::org::Savings;
use crate::warm::min_scale;

/// Pods one revision holds while its org is active: its declared min-scale with s2z's floor of
/// 1, or 0 for a revision no route sends traffic to (Knative keeps those at zero anyway).
pub fn revision_floor(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> u32 {
    if labels.get(ROUTING_STATE_LABEL).map(String::as_str) == Some("reserve") {
        return 0;
    }
    // An unreadable record counts as nothing declared: the floor alone.
    let declared = declared(annotations).unwrap_or_default();
    min_scale(&declared).max(1)
}

/// GPUs one pod of a Revision holds, from its `spec`: each container's GPU limit, else its
/// request, counted as the defrag counts them ([`gpu_count`]: every vendor's GPU resource).
pub fn gpus_per_pod(spec: &serde_json::Value) -> u32 {
    spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| serde_json::from_value::<ResourceRequirements>(c["resources"].clone()).ok())
        .map(|r| {
            let limit = gpu_count(&r.limits.unwrap_or_default());
            if limit > 0 {
                limit
            } else {
                gpu_count(&r.requests.unwrap_or_default())
            }
        })
        .fold(0, u32::saturating_add)
}

/// Whole seconds from `since` to `now`, 0 when `now` is earlier.
fn seconds(since: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((now - since).num_seconds()).unwrap_or(0)
}

/// The ledger once a dormant period from `since` ends at `now`: the floor times its length
/// added to the totals. The floor is kept: it is what the next dormant period starts from
/// unless the next flip to Dormant records a new one.
pub fn close_period(ledger: &Savings, since: DateTime<Utc>, now: DateTime<Utc>) -> Savings {
    let secs = seconds(since, now);
    Savings {
        pod_seconds: ledger
            .pod_seconds
            .saturating_add(u64::from(ledger.floor_pods).saturating_mul(secs)),
        gpu_seconds: ledger
            .gpu_seconds
            .saturating_add(u64::from(ledger.floor_gpus).saturating_mul(secs)),
        ..*ledger
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::{DECLARED_ANNOTATION, MIN_SCALE};
    use crate::testing::{map, t};

    #[test]
    fn the_floor_is_the_declared_min_scale_at_least_one() {
        let none = BTreeMap::new();
        assert_eq!(revision_floor(&none, &none), 1);
        assert_eq!(revision_floor(&none, &map(&[(MIN_SCALE, "3")])), 3);
        // Dormant: min-scale 0 on the revision, the user's 3 in the record.
        let dormant = map(&[
            (MIN_SCALE, "0"),
            (
                DECLARED_ANNOTATION,
                r#"{"autoscaling.knative.dev/min-scale":"3"}"#,
            ),
        ]);
        assert_eq!(revision_floor(&none, &dormant), 3);
        let reserve = map(&[(ROUTING_STATE_LABEL, "reserve")]);
        assert_eq!(revision_floor(&reserve, &map(&[(MIN_SCALE, "3")])), 0);
        let broken = map(&[(DECLARED_ANNOTATION, "not json")]);
        assert_eq!(revision_floor(&none, &broken), 1);
    }

    #[test]
    fn gpus_per_pod_sums_containers_limits_else_requests() {
        let spec = serde_json::json!({"containers": [
            {"resources": {"limits": {"nvidia.com/gpu": "2"}}},
            {"resources": {"requests": {"nvidia.com/gpu": 1}}},
            {"resources": {}},
            {"name": "sidecar"},
        ]});
        assert_eq!(gpus_per_pod(&spec), 3);
        assert_eq!(gpus_per_pod(&serde_json::json!({})), 0);
    }

    #[test]
    fn a_closed_period_adds_floor_times_length() {
        let ledger = Savings {
            floor_pods: 3,
            floor_gpus: 2,
            pod_seconds: 10,
            gpu_seconds: 5,
        };
        let closed = close_period(
            &ledger,
            t("2025-01-31T10:00:00Z"),
            t("2025-01-31T11:00:00Z"),
        );
        assert_eq!(
            (closed.pod_seconds, closed.gpu_seconds),
            (10 + 3 * 3600, 5 + 2 * 3600)
        );
        assert_eq!((closed.floor_pods, closed.floor_gpus), (3, 2));
        // A clock that went backwards adds nothing.
        let back = close_period(
            &ledger,
            t("2025-01-31T11:00:00Z"),
            t("2025-01-31T10:00:00Z"),
        );
        assert_eq!(back, ledger);
    }
}
