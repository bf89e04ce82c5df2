//! Warm-up on wake (`s2z_core::warm`): once an org wakes from Dormant, each of its revisions
//! whose autoscaler never had data (born at zero while the org slept) gets its Deployment scaled
//! to the restored min-scale, so the org is warm before its first request rather than after.
//! Revisions Knative has data for are left to Knative, which applies the raised min-scale itself.

use futures::{StreamExt, stream};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DynamicObject, Patch};
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use s2z_core::org::Org;
use s2z_core::warm::{AutoscalerView, min_scale, warm_up_replicas};
use serde_json::json;

use super::context::{Context, Error, params};
use super::target::autoscaler_resource;

/// Scale writes in flight at once for one org.
const CONCURRENCY: usize = 8;

/// One revision raised (or tried).
struct Raised {
    object: String,
    replicas: i32,
    result: Result<(), kube::Error>,
}

/// What s2z reads of a PodAutoscaler.
pub fn view(pa: &DynamicObject) -> AutoscalerView {
    let status = pa.data.get("status");
    AutoscalerView {
        desired_scale: status.and_then(|s| s.get("desiredScale")?.as_i64()),
        actual_scale: status.and_then(|s| s.get("actualScale")?.as_i64()),
        reachability: pa
            .data
            .pointer("/spec/reachability")
            .and_then(|r| r.as_str())
            .map(str::to_string),
    }
}

/// Raises every revision of `org` that Knative will not bring back by itself; returns how many
/// were raised. Reads each revision's PodAutoscaler once (only on a wake, so a few reads per
/// revision per wake, never on a steady reconcile).
pub async fn warm_org(org: &Org, ctx: &Context) -> Result<usize, Error> {
    let name = org.name_any();
    let candidates: Vec<(String, String, u32)> = ctx
        .revisions_of(&name)
        .iter()
        .filter_map(|rev| {
            let min = min_scale(rev.metadata.annotations.as_ref()?);
            Some((
                rev.metadata.namespace.clone()?,
                rev.metadata.name.clone()?,
                min,
            ))
        })
        .filter(|(_, _, min)| *min > 0)
        .collect();
    let results: Vec<Option<Raised>> = stream::iter(candidates)
        .map(|(ns, rev, min)| async move {
            let pas: Api<DynamicObject> =
                Api::namespaced_with(ctx.client.clone(), &ns, &autoscaler_resource());
            let object = format!("{ns}/{rev}");
            let pa = match pas.get_opt(&rev).await {
                Ok(Some(pa)) => pa,
                // Knative has not made it yet: it will start from the Revision's annotations.
                Ok(None) => return None,
                Err(error) => {
                    return Some(Raised {
                        object,
                        replicas: 0,
                        result: Err(error),
                    });
                }
            };
            let replicas = warm_up_replicas(&view(&pa), min)?;
            let target = pa
                .data
                .pointer("/spec/scaleTargetRef/name")
                .and_then(|n| n.as_str())?
                .to_string();
            let deployments = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
            let body = json!({"spec": {"replicas": replicas}});
            let result = deployments
                .patch_scale(&target, &params(), &Patch::Merge(&body))
                .await
                .map(|_| ());
            Some(Raised {
                object,
                replicas,
                result,
            })
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;

    let mut raised = Vec::new();
    let mut failed = Vec::new();
    for r in results.into_iter().flatten() {
        match r.result {
            Ok(()) => {
                ctx.metrics.patched("deployment-scale", true);
                tracing::info!(org = %name, revision = %r.object, replicas = r.replicas, "warmed a revision the autoscaler had no data for");
                raised.push(format!("{}={}", r.object, r.replicas));
            }
            // Deleted since it was listed: nothing to warm.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(error) => {
                ctx.metrics.patched("deployment-scale", false);
                failed.push((r.object, error));
            }
        }
    }
    if !raised.is_empty() {
        let event = Event {
            type_: EventType::Normal,
            reason: "Warming".into(),
            note: Some(format!(
                "woken: scaled {} revision(s) with no autoscaler data to their min-scale: {}",
                raised.len(),
                raised.join(", ")
            )),
            action: "Warm".into(),
            secondary: None,
        };
        match ctx.recorder.publish(&event, &org.object_ref(&())).await {
            Ok(()) => ctx.metrics.event("Warming"),
            Err(error) => {
                tracing::warn!(org = %name, %error, "failed to publish the Warming Event")
            }
        }
    }
    let count = failed.len();
    match failed.into_iter().next() {
        None => Ok(raised.len()),
        Some((first, source)) => Err(Error::Warm {
            org: name,
            failed: count,
            first,
            source,
        }),
    }
}
