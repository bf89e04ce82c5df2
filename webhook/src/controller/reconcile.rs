//! One reconcile of one org: evaluate its state, plan the annotation changes, write the status
//! when it changed (guarded by the resourceVersion read, so a decision made on stale activity
//! is refused rather than applied), raise an Event on a flip, patch what differs, and requeue
//! for the instant the org is due.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::{StreamExt, stream};
use kube::api::{Api, DynamicObject, Patch};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use s2z_core::dormancy::{StateInput, due_at, org_state, parse_time};
use s2z_core::labels::RECONCILE_ANNOTATION;
use s2z_core::org::{Org, OrgState, OrgStatus};
use s2z_core::warm::maybe_unwarmed;

use super::context::{Context, Error, params};
use super::plan::{Change, Workload, plan, requeue_after};
use super::status::{Observation, evaluated_patch, flip, next_status, status_patch};
use super::target::{Target, autoscaler_resource, revision_resource};
use crate::view::ClusterView;

/// Patches in flight at once within one reconcile.
const PATCH_CONCURRENCY: usize = 8;

/// The reconcile entry point for kube-runtime's Controller.
pub async fn reconcile(org: Arc<Org>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.wait_ready().await;
    let started = Instant::now();
    let result = reconcile_org(&org, &ctx).await;
    ctx.metrics.reconciled(result.is_ok(), started.elapsed());
    if result.is_ok() {
        ctx.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&org.name_any());
    }
    result
}

/// Retries a failed reconcile after 0.5 s, doubling per consecutive failure up to a minute, so
/// that an API server outage does not turn into a storm of retries.
pub fn error_policy(org: Arc<Org>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = org.name_any();
    let mut failures = ctx.failures.lock().unwrap_or_else(|e| e.into_inner());
    let count = failures.entry(name.clone()).or_insert(0);
    let delay = Duration::from_millis(500)
        .saturating_mul(2u32.saturating_pow((*count).min(7)))
        .min(Duration::from_secs(60));
    *count = count.saturating_add(1);
    tracing::warn!(org = %name, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

async fn reconcile_org(org: &Org, ctx: &Context) -> Result<Action, Error> {
    let name = org.name_any();
    let now = Utc::now();
    let config = ctx.caches.config();
    let settings = &config.settings;
    let input = StateInput::for_org(org, settings, now);
    let state = org_state(&input);
    let due = due_at(&input);
    let window = org.spec.scale_down_window().unwrap_or_else(|error| {
        tracing::warn!(org = %name, %error, "ignoring spec.scaleDownWindow");
        None
    });

    let revisions = ctx.revisions_of(&name);
    let autoscalers: Vec<Option<Arc<DynamicObject>>> = revisions
        .iter()
        .map(|rev| match ctx.target {
            Target::Revision => None,
            Target::PodAutoscaler => ctx.autoscalers.get(
                rev.metadata.namespace.as_deref().unwrap_or_default(),
                rev.metadata.name.as_deref().unwrap_or_default(),
            ),
        })
        .collect();
    let empty = Default::default();
    let workloads = revisions.iter().zip(&autoscalers).map(|(rev, pa)| {
        let own = rev.metadata.annotations.as_ref().unwrap_or(&empty);
        Workload {
            namespace: rev.metadata.namespace.as_deref().unwrap_or_default(),
            name: rev.metadata.name.as_deref().unwrap_or_default(),
            labels: rev.metadata.labels.as_ref().unwrap_or(&empty),
            target: match ctx.target {
                Target::Revision => Some(own),
                Target::PodAutoscaler => pa
                    .as_ref()
                    .map(|pa| pa.metadata.annotations.as_ref().unwrap_or(&empty)),
            },
            revision: own,
            resource_version: match ctx.target {
                Target::Revision => rev.metadata.resource_version.as_deref(),
                Target::PodAutoscaler => pa
                    .as_ref()
                    .and_then(|pa| pa.metadata.resource_version.as_deref()),
            },
        }
    });
    let planned = plan(
        workloads,
        state,
        config.knative.allow_zero_initial_scale,
        window,
    );

    let old = org.status.as_ref();
    let mut next = next_status(
        old,
        &Observation {
            state,
            due,
            tally: planned.tally,
            problems: &planned.problems,
            generation: org.metadata.generation,
            now,
        },
    );
    next.savings = super::savings::ledger(ctx, old, &next, &revisions, now).await;
    let request = pending_request(org, ctx);
    let changed = old != Some(&next);
    if changed || request.is_some() {
        let rv = org.metadata.resource_version.as_deref();
        let body = if changed {
            status_patch(&next, rv, now)
        } else {
            evaluated_patch(rv, now)
        };
        let api: Api<Org> = Api::all(ctx.client.clone());
        match api
            .patch_status(&name, &params(), &Patch::Merge(body))
            .await
        {
            Ok(_) => {
                ctx.metrics
                    .status_written(if changed { "changed" } else { "evaluated" });
                if let Some(request) = request {
                    ctx.answered
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(name.clone(), request);
                }
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                // The Org changed since it was read (new activity, a sleep request): its watch
                // event is on the way and triggers a reconcile on fresh data.
                ctx.metrics.status_written("conflict");
                tracing::debug!(org = %name, "status write refused: the org changed; waiting for it");
                return Ok(Action::requeue(Duration::from_millis(500)));
            }
            Err(source) => return Err(Error::Status { org: name, source }),
        }
        if let Some(flipped) = flip(old, &next) {
            if old.and_then(|s| s.state) == Some(OrgState::Dormant) && flipped != OrgState::Dormant
            {
                ctx.warming
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.clone());
            }
            // The Event must not delay the flip itself.
            let (_, applied) = tokio::join!(
                announce(org, ctx, old, &next, flipped),
                apply_changes(&name, ctx, planned.changes),
            );
            applied?;
            warm_if_woken(org, ctx, state).await?;
            return Ok(Action::requeue(requeue_after(
                due,
                now,
                settings.sweep_interval,
            )));
        }
    }

    apply_changes(&name, ctx, planned.changes).await?;
    warm_if_woken(org, ctx, state).await?;
    Ok(Action::requeue(requeue_after(
        due,
        now,
        settings.sweep_interval,
    )))
}

/// Warms a woken org's revisions once its restored annotations are written (see
/// [`super::warm`]); a failure keeps the org marked, so the retried reconcile tries again. An org
/// that is dormant again is not warmed. A new leader also warms the orgs woken in the last
/// [`s2z_core::warm::RECENT_WAKE`] on its first look at them, since the mark lived in the
/// previous leader's memory.
async fn warm_if_woken(org: &Org, ctx: &Context, state: OrgState) -> Result<(), Error> {
    let name = org.name_any();
    let first_look = ctx
        .looked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(name.clone());
    let pending = {
        let mut warming = ctx.warming.lock().unwrap_or_else(|e| e.into_inner());
        let status = org.status.as_ref();
        if first_look
            && maybe_unwarmed(
                status.is_some_and(|s| s.savings.is_some()),
                status.and_then(|s| s.state),
                status
                    .and_then(|s| s.state_since.as_deref())
                    .and_then(|t| parse_time(t).ok()),
                Utc::now(),
            )
        {
            warming.insert(name.clone());
        }
        if state == OrgState::Dormant {
            warming.remove(&name);
        }
        warming.contains(&name)
    };
    if !pending {
        return Ok(());
    }
    super::warm::warm_org(org, ctx).await?;
    // Only a wake seen in this term is timed: the org as read still says Dormant.
    if org.status.as_ref().and_then(|s| s.state) == Some(OrgState::Dormant) {
        super::ready::follow(org, ctx);
    }
    ctx.warming
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&name);
    Ok(())
}

/// The sweep request to answer, if the org carries one not answered yet.
fn pending_request(org: &Org, ctx: &Context) -> Option<String> {
    let requested = org.annotations().get(RECONCILE_ANNOTATION)?;
    let answered = ctx.answered.lock().unwrap_or_else(|e| e.into_inner());
    (answered.get(&org.name_any()) != Some(requested)).then(|| requested.clone())
}

/// Records a flip: metric (with its lag behind the due time), log line and Event on the Org.
async fn announce(
    org: &Org,
    ctx: &Context,
    old: Option<&OrgStatus>,
    next: &OrgStatus,
    state: OrgState,
) {
    let name = org.name_any();
    let now = Utc::now();
    let lag = match (state, old.and_then(|s| s.dormant_at.as_deref())) {
        (OrgState::Dormant, Some(due)) => parse_time(due)
            .ok()
            .and_then(|due| (now - due).to_std().ok()),
        _ => None,
    };
    ctx.metrics.flipped(old.and_then(|s| s.state), state, lag);
    let total = next.pynodes.total + next.models.total;
    let (reason, note) = match state {
        OrgState::Dormant => (
            "OrgDormant",
            format!(
                "org is dormant: its {total} revision(s) may scale to zero (last activity: {})",
                next.last_activity_at.as_deref().unwrap_or("none")
            ),
        ),
        OrgState::Active => (
            "OrgActive",
            format!("org is active: its {total} revision(s) keep at least one pod"),
        ),
        OrgState::Exempt => (
            "OrgExempt",
            format!(
                "org is exempt (scaleToZeroAllowed: false): its {total} revision(s) never scale to zero and keep at least one pod"
            ),
        ),
    };
    tracing::info!(org = %name, from = old.and_then(|s| s.state).map(|s| s.as_str()).unwrap_or("none"), to = state.as_str(), lag = ?lag, revisions = total, "org flipped");
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: "Flip".into(),
        secondary: None,
    };
    match ctx.recorder.publish(&event, &org.object_ref(&())).await {
        Ok(()) => ctx.metrics.event(reason),
        Err(error) => {
            tracing::warn!(org = %name, %error, reason, "failed to publish the flip Event")
        }
    }
}

/// Patches every planned object, a few at a time; reports the first failure.
async fn apply_changes(org: &str, ctx: &Context, changes: Vec<Change>) -> Result<(), Error> {
    if changes.is_empty() {
        return Ok(());
    }
    let (kind, resource) = match ctx.target {
        Target::Revision => ("revision", revision_resource()),
        Target::PodAutoscaler => ("podautoscaler", autoscaler_resource()),
    };
    let total = changes.len();
    let results: Vec<(Change, Result<(), kube::Error>)> = stream::iter(changes)
        .map(|change| {
            let api: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &change.namespace, &resource);
            async move {
                let result = api
                    .patch_metadata(&change.name, &params(), &Patch::Merge(change.patch()))
                    .await
                    .map(|patched| {
                        let meta = patched.metadata;
                        let (ns, name, read) = (
                            &change.namespace,
                            &change.name,
                            change.resource_version.as_deref(),
                        );
                        match ctx.target {
                            Target::Revision => ctx.revisions.patched(
                                ns,
                                name,
                                read,
                                meta.annotations,
                                meta.resource_version,
                            ),
                            Target::PodAutoscaler => ctx.autoscalers.patched(
                                ns,
                                name,
                                read,
                                meta.annotations,
                                meta.resource_version,
                            ),
                        }
                    });
                (change, result)
            }
        })
        .buffer_unordered(PATCH_CONCURRENCY)
        .collect()
        .await;
    let mut failed = Vec::new();
    for (change, result) in results {
        let object = format!("{}/{}", change.namespace, change.name);
        match result {
            Ok(()) => {
                ctx.metrics.patched(kind, true);
                tracing::info!(org, kind, object = %object, changes = ?change.annotations, "patched autoscaling annotations");
            }
            // Deleted since the watch saw it: nothing left to correct.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                ctx.metrics.patched(kind, false);
                failed.push((object, error));
            }
        }
    }
    let count = failed.len();
    match failed.into_iter().next() {
        None => Ok(()),
        Some((first, source)) => Err(Error::Patch {
            org: org.to_string(),
            kind,
            failed: count,
            total,
            first,
            source,
        }),
    }
}
