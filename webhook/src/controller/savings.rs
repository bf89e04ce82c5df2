//! The savings ledger in the Org status ([`s2z_core::savings`]): when an org goes dormant, the
//! warm floor it would otherwise hold is recorded (pods from the revisions' declared min-scale,
//! GPUs from their specs); when it wakes, floor times time dormant is added to its totals. Both
//! ride on the status write of the flip itself, so the ledger costs no write of its own.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use s2z_core::org::{OrgState, OrgStatus, Savings};
use s2z_core::savings::{close_period, gpus_per_pod, revision_floor};

use super::context::Context;
use super::target::revision_resource;

/// The ledger to store with `next`, given the status before. Reads each routable revision once
/// (for its GPUs) when the org goes dormant; otherwise pure.
pub async fn ledger(
    ctx: &Context,
    old: Option<&OrgStatus>,
    next: &OrgStatus,
    revisions: &[Arc<PartialObjectMeta<DynamicObject>>],
    now: DateTime<Utc>,
) -> Option<Savings> {
    let before = old.and_then(|s| s.state);
    let kept = old.and_then(|s| s.savings);
    match (before, next.state) {
        (Some(OrgState::Dormant), Some(OrgState::Dormant)) => kept,
        (_, Some(OrgState::Dormant)) => {
            let (floor_pods, floor_gpus) = warm_floor(ctx, revisions).await;
            Some(Savings {
                floor_pods,
                floor_gpus,
                ..kept.unwrap_or_default()
            })
        }
        (Some(OrgState::Dormant), _) => {
            let since = old
                .and_then(|s| s.state_since.as_deref())
                .and_then(|t| s2z_core::dormancy::parse_time(t).ok());
            match (kept, since) {
                (Some(ledger), Some(since)) => Some(close_period(&ledger, since, now)),
                _ => kept,
            }
        }
        _ => kept,
    }
}

/// The org's routable revisions with the pods each holds while the org is active:
/// `(namespace, name, pods)`, revisions no route sends traffic to left out.
pub fn floors(revisions: &[Arc<PartialObjectMeta<DynamicObject>>]) -> Vec<(String, String, u32)> {
    let empty = Default::default();
    revisions
        .iter()
        .filter_map(|rev| {
            let meta = &rev.metadata;
            let pods = revision_floor(
                meta.labels.as_ref().unwrap_or(&empty),
                meta.annotations.as_ref().unwrap_or(&empty),
            );
            if pods == 0 {
                return None;
            }
            Some((meta.namespace.clone()?, meta.name.clone()?, pods))
        })
        .collect()
}

/// Pods and GPUs the org's routable revisions hold while it is active.
async fn warm_floor(
    ctx: &Context,
    revisions: &[Arc<PartialObjectMeta<DynamicObject>>],
) -> (u32, u32) {
    let reads = floors(revisions).into_iter().map(|(ns, name, pods)| {
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.client.clone(), &ns, &revision_resource());
        async move {
            // Without the spec the pods still count; their GPUs cannot be known.
            let gpus = match api.get(&name).await {
                Ok(rev) => gpus_per_pod(&rev.data["spec"]),
                Err(error) => {
                    tracing::warn!(revision = %format!("{ns}/{name}"), %error, "failed to read a revision's GPUs for the savings ledger: counting none");
                    0
                }
            };
            (pods, pods.saturating_mul(gpus))
        }
    });
    join_all(reads)
        .await
        .into_iter()
        .fold((0, 0), |(p, g), (pods, gpus)| {
            (p.saturating_add(pods), g.saturating_add(gpus))
        })
}
