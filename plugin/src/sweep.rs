//! `kubectl s2z sweep [--dry-run]`: dormancy detection now, seed 000's `set_org_dormancy_task`.
//!
//! The plan is computed here with the same pure rules the controller uses
//! ([`s2z_core::dormancy`] for each org, [`s2z_core::annotations::decide`] for each revision).
//! `--dry-run` prints it and writes nothing. Otherwise the orgs in the plan are annotated with
//! `s2z.dev/reconcile-requested-at`, and the plugin watches them until the controller reports
//! each one evaluated after the request (`status.lastEvaluatedAt`) in the expected state.

use std::collections::BTreeMap;
use std::time::Duration;

pub mod plan;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use s2z_core::dormancy::{StateInput, org_state, parse_time};
use s2z_core::labels::RECONCILE_ANNOTATION;
use s2z_core::org::{Org, OrgState};
use s2z_core::settings::Settings;

use crate::client::{Cluster, FIELD_MANAGER, ORGS, Req};
use crate::cluster::{self, Selection, Want};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::options::parse_duration_flag;
use crate::output::{document, plural};
pub use plan::{Change, OrgChange, RevisionChange, SweepReport, plan, render};

/// Arguments of `sweep`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Without --dry-run, the orgs to flip are annotated with s2z.dev/reconcile-requested-at and the
plugin waits until the controller reports each one evaluated (status.lastEvaluatedAt) in its
expected state. It exits 8 if that does not happen within --timeout.")]
pub struct Args {
    /// Orgs to sweep [default: every org]
    #[arg(value_name = "ORG")]
    pub orgs: Vec<String>,
    /// Only orgs matching this label selector
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// List the orgs that would flip and the revisions that would change; write nothing
    #[arg(long)]
    pub dry_run: bool,
    /// How long to wait for the controller
    #[arg(long, value_name = "DURATION", default_value = "60s")]
    pub timeout: String,
}

/// The controller's view of one org, read from the raw object because `lastEvaluatedAt` is a
/// controller-written field the plugin only reads.
struct Reported {
    evaluated_at: Option<DateTime<Utc>>,
    state_since: Option<DateTime<Utc>>,
    state: Option<OrgState>,
}

fn reported(object: &DynamicObject) -> Reported {
    let status = &object.data["status"];
    let time = |key: &str| status[key].as_str().and_then(|t| parse_time(t).ok());
    Reported {
        evaluated_at: time("lastEvaluatedAt"),
        state_since: time("stateSince"),
        state: status["state"].as_str().and_then(|s| s.parse().ok()),
    }
}

/// What the sweep waits for on one org.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    /// The state the plan expects.
    pub state: OrgState,
    /// Whether the plan flips the org (its reported state differed).
    pub flips: bool,
}

/// Whether the controller has answered the request for this org: it evaluated the org after
/// the request (`lastEvaluatedAt`) and reports the expected state; or, for a flip, it reports
/// the expected state entered after the request (`stateSince`).
fn answered(
    object: &DynamicObject,
    expected: Expectation,
    requested: DateTime<Utc>,
    settings: &Settings,
) -> bool {
    // The controller may stamp whole seconds; a stamp in the request's second counts.
    let after = |t: Option<DateTime<Utc>>| t.is_some_and(|t| t >= requested.trunc_subsecs(0));
    let seen = reported(object);
    if expected.flips && seen.state == Some(expected.state) && after(seen.state_since) {
        return true;
    }
    if !after(seen.evaluated_at) {
        return false;
    }
    if seen.state == Some(expected.state) {
        return true;
    }
    // Time moved on since the plan (e.g. the org came due meanwhile): accept the state the
    // rule gives at the controller's evaluation.
    let (Some(at), Ok(org)) = (seen.evaluated_at, object.clone().try_parse::<Org>()) else {
        return false;
    };
    seen.state == Some(org_state(&StateInput::for_org(&org, settings, at)))
}

async fn request(cluster: &Cluster, names: &[String], requested: DateTime<Utc>) -> Result<()> {
    let api: Api<Org> = Api::all(cluster.client.clone());
    let stamp = requested.to_rfc3339_opts(SecondsFormat::Millis, true);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    let patch = serde_json::json!({"metadata": {"annotations": {RECONCILE_ANNOTATION: stamp}}});
    let writes = names.iter().map(|name| {
        let api = api.clone();
        let patch = patch.clone();
        let params = params.clone();
        async move {
            let req = Req::new("patch", ORGS).named(name);
            api.patch(name, &params, &Patch::Merge(&patch))
                .await
                .map_err(|e| req.error(cluster, e))
        }
    });
    futures::future::try_join_all(writes).await?;
    Ok(())
}

/// Watches the orgs until each has answered; returns the names still pending at `timeout`.
async fn wait(
    ctx: &Ctx,
    cluster: &Cluster,
    mut pending: BTreeMap<String, Expectation>,
    requested: DateTime<Utc>,
    settings: &Settings,
    timeout: Duration,
) -> Result<Vec<String>> {
    let resource = ApiResource::erase::<Org>(&());
    let api: Api<DynamicObject> = Api::all_with(cluster.client.clone(), &resource);
    let mut events = watcher(api, watcher::Config::default())
        .default_backoff()
        .boxed();
    let waiting = async {
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                    let name = object.metadata.name.clone().unwrap_or_default();
                    if let Some(expected) = pending.get(&name)
                        && answered(&object, *expected, requested, settings)
                    {
                        pending.remove(&name);
                    }
                }
                Ok(_) => {}
                Err(e) => ctx.warn(&format!("watching orgs: {e}; retrying")),
            }
            if pending.is_empty() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(timeout, waiting).await;
    Ok(pending.into_keys().collect())
}

/// Runs `sweep`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let timeout = parse_duration_flag("--timeout", &args.timeout)?;
    let cluster = ctx.cluster().await?;
    let selection = Selection {
        names: args.orgs.clone(),
        selector: args.selector.clone(),
    };
    let want = Want {
        revisions: true,
        pods: false,
    };
    let (read, (knative, note)) = tokio::join!(
        async {
            let (settings, inventory) = tokio::join!(
                cluster::settings(cluster, &ctx.options.namespace),
                cluster::inventory(cluster, &selection, want)
            );
            let inventory = inventory?;
            Ok::<_, Error>((settings?, inventory))
        },
        cluster::knative_config(cluster)
    );
    let (settings, inventory) = read?;
    for problem in &settings.problems {
        ctx.warn(problem);
    }
    let now = Utc::now();
    let mut report = plan(&inventory, &settings.settings, &knative, now, args.dry_run);
    report.warnings.extend(note);
    let structured = ctx.options.format.is_structured();
    if report.orgs.is_empty() {
        if structured {
            return ctx.print(&document(ctx.options.format, &report)?);
        }
        for warning in &report.warnings {
            ctx.warn(warning);
        }
        return ctx.print(&format!(
            "Nothing to sweep: every org is in its expected state and every revision matches ({} checked)\n",
            plural(report.orgs_checked, "org", "orgs")
        ));
    }
    if args.dry_run {
        let text = if structured {
            document(ctx.options.format, &report)?
        } else {
            render(&report, ctx.options.color_stdout)
        };
        ctx.print(&text)?;
        if !structured {
            ctx.note("dry run: nothing was written");
        }
        return Ok(());
    }

    let names: Vec<String> = report.orgs.iter().map(|o| o.name.clone()).collect();
    let requested = Utc::now();
    request(cluster, &names, requested).await?;
    ctx.note(&format!(
        "requested re-evaluation of {}; waiting up to {} for the controller...",
        plural(names.len(), "org", "orgs"),
        humantime::format_duration(timeout)
    ));
    let expected = report
        .orgs
        .iter()
        .map(|o| {
            let expectation = Expectation {
                state: o.to,
                flips: o.flips(),
            };
            (o.name.clone(), expectation)
        })
        .collect();
    let still = wait(
        ctx,
        cluster,
        expected,
        requested,
        &settings.settings,
        timeout,
    )
    .await?;
    for org in &mut report.orgs {
        org.result = if still.contains(&org.name) {
            "pending"
        } else {
            "applied"
        }
        .into();
    }
    let text = if structured {
        document(ctx.options.format, &report)?
    } else {
        render(&report, ctx.options.color_stdout)
    };
    ctx.print(&text)?;
    if still.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = still.iter().map(|n| format!("org/{n}")).collect();
    Err(Error::Timeout {
        what: "confirm the sweep".into(),
        why: format!(
            "the controller did not report {} of {} within {} ({})",
            still.len(),
            plural(names.len(), "org", "orgs"),
            humantime::format_duration(timeout),
            listed.join(", ")
        ),
        waited: timeout,
        namespace: ctx.options.namespace.clone(),
    })
}

#[cfg(test)]
mod tests;
