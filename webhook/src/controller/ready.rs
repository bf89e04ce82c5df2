//! Wake-to-ready: after a wake, how long until every revision of the org that should be warm has
//! its pods Ready, counted from the activity that woke it ([`s2z_core::warm::wake_started`]).
//! Knative's PodAutoscaler says how many Ready pods it counts (`status.actualScale`); a task per
//! woken org reads each of its revisions' PodAutoscalers with a growing pause (250 ms to 5 s)
//! until all are warm or 10 minutes pass, and records the time in
//! `controller_wake_to_ready_seconds`. Only reads, and only after a wake.

use std::time::Duration;

use chrono::Utc;
use kube::api::{Api, DynamicObject};
use kube::{Client, ResourceExt};
use s2z_core::dormancy::parse_time;
use s2z_core::org::Org;
use s2z_core::warm::{is_warm, wake_started};

use super::context::Context;
use super::target::autoscaler_resource;
use super::warm::view;

/// Give up on a wake after this long (a revision that cannot get its pods, e.g. no GPU left).
const GIVE_UP: Duration = Duration::from_secs(600);
/// The longest pause between two looks.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Starts following the wake of `org` (as read before the wake, so its status still says since
/// when it slept).
pub fn follow(org: &Org, ctx: &Context) {
    let name = org.name_any();
    let status = org.status.as_ref();
    let parse = |t: Option<&str>| t.and_then(|t| parse_time(t).ok());
    let started = wake_started(
        parse(status.and_then(|s| s.last_activity_at.as_deref())),
        parse(status.and_then(|s| s.state_since.as_deref())),
        Utc::now(),
    );
    let targets = super::savings::floors(&ctx.revisions_of(&name));
    if targets.is_empty() {
        return;
    }
    let (client, metrics) = (ctx.client.clone(), ctx.metrics.clone());
    tokio::spawn(async move {
        let begun = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(250);
        loop {
            if all_warm(&client, &targets).await {
                let took = (Utc::now() - started).to_std().unwrap_or_default();
                metrics.woke(Some(took));
                tracing::info!(org = %name, seconds = took.as_secs_f64(), "woken org is warm");
                return;
            }
            if begun.elapsed() > GIVE_UP {
                metrics.woke(None);
                tracing::warn!(org = %name, "woken org not warm after {GIVE_UP:?}: some revision lacks Ready pods");
                return;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    });
}

/// Whether every target's PodAutoscaler counts its floor of Ready pods. A missing one (deleted,
/// or not made yet) has nothing to wait for; a failed read counts as not warm yet.
async fn all_warm(client: &Client, targets: &[(String, String, u32)]) -> bool {
    for (ns, rev, floor) in targets {
        let pas: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &autoscaler_resource());
        match pas.get_opt(rev).await {
            Ok(Some(pa)) if !is_warm(&view(&pa), *floor) => return false,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    true
}
