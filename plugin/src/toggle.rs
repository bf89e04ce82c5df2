//! `enable`, `disable`, `wake` and `sleep`: the per-org switches.
//!
//! - `enable` / `disable` set `spec.scaleToZeroAllowed`; the controller sees the new generation
//!   and, for a disabled org, restores its workloads' declared scale at once.
//! - `wake` records activity now in `status.lastActivityAt` (never moving it backwards) and
//!   drops any sleep request.
//! - `sleep` writes the `s2z.dev/sleep-requested-at` annotation: dormant until newer activity.
//!
//! Every named org is read before anything is written, so an unknown name writes nothing.

use chrono::{DateTime, Utc};
use kube::api::{Api, Patch, PatchParams};
use s2z_core::dormancy::{StateInput, due_at, format_time, org_state, parse_time};
use s2z_core::labels::SLEEP_ANNOTATION;
use s2z_core::org::{Org, OrgState};
use s2z_core::settings::Settings;
use serde_json::json;

use crate::client::{Cluster, FIELD_MANAGER, ORGS, Req};
use crate::cluster::{self, Selection};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::output::{age_between, document};

/// Which switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    /// Allow scale to zero.
    Enable,
    /// Exempt from scale to zero.
    Disable,
    /// Record activity now.
    Wake,
    /// Dormant now.
    Sleep,
}

/// Arguments of `enable`, `disable`, `wake` and `sleep`.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The orgs (cluster-scoped Org objects)
    #[arg(required = true, value_name = "ORG")]
    pub orgs: Vec<String>,
}

/// What a switch did to one org, for the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Written.
    Changed,
    /// Already so; nothing written.
    Unchanged(String),
}

/// The state line after a change: "Active, dormant in 23h59m".
pub fn describe(org: &Org, settings: &Settings, now: DateTime<Utc>) -> String {
    let input = StateInput::for_org(org, settings, now);
    match org_state(&input) {
        OrgState::Active => match due_at(&input) {
            Some(at) => format!("Active, dormant in {}", age_between(now, at)),
            None => "Active".into(),
        },
        state => state.to_string(),
    }
}

/// The message for one org.
pub fn message(toggle: Toggle, name: &str, outcome: &Outcome, state: &str) -> String {
    let did = match (toggle, outcome) {
        (_, Outcome::Unchanged(why)) => format!("unchanged, {why}"),
        (Toggle::Enable, Outcome::Changed) => "scale to zero enabled".to_string(),
        (Toggle::Disable, Outcome::Changed) => {
            "scale to zero disabled; the controller keeps its workloads warm now".to_string()
        }
        (Toggle::Wake, Outcome::Changed) => "activity recorded now".to_string(),
        (Toggle::Sleep, Outcome::Changed) => {
            "put to sleep until its next activity; the controller scales its workloads to zero now"
                .to_string()
        }
    };
    format!("org/{name}: {did} ({state})\n")
}

fn patch_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
}

async fn set_allowed(cluster: &Cluster, org: &Org, allowed: bool) -> Result<(Org, Outcome)> {
    let name = org.metadata.name.clone().unwrap_or_default();
    if org.spec.scale_to_zero_allowed == allowed {
        let why = if allowed {
            "already allowed to scale to zero"
        } else {
            "already exempt from scale to zero"
        };
        return Ok((org.clone(), Outcome::Unchanged(why.into())));
    }
    let req = Req::new("patch", ORGS).named(&name);
    let patch = json!({"spec": {"scaleToZeroAllowed": allowed}});
    let org = Api::<Org>::all(cluster.client.clone())
        .patch(&name, &patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| req.error(cluster, e))?;
    Ok((org, Outcome::Changed))
}

async fn wake(cluster: &Cluster, org: &Org, now: DateTime<Utc>) -> Result<(Org, Outcome)> {
    let name = org.metadata.name.clone().unwrap_or_default();
    let api = Api::<Org>::all(cluster.client.clone());
    let mut current = org.clone();
    let mut outcome = Outcome::Unchanged("it already has newer activity".into());
    // Optimistic concurrency: the resourceVersion makes the write fail rather than move the
    // activity backwards if another writer got there first; then re-read and decide again.
    for _ in 0..5 {
        let recorded = current
            .status
            .as_ref()
            .and_then(|s| s.last_activity_at.as_deref())
            .and_then(|t| parse_time(t).ok());
        if recorded.is_some_and(|t| t >= now) {
            break;
        }
        let req = Req::new("patch", "orgs.s2z.dev/status").named(&name);
        let patch = json!({
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": {"lastActivityAt": format_time(now)},
        });
        match api
            .patch_status(&name, &patch_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(org) => {
                current = org;
                outcome = Outcome::Changed;
                break;
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                current = cluster::org(cluster, &name).await?;
            }
            Err(e) => return Err(req.error(cluster, e)),
        }
    }
    let sleeping = current
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(SLEEP_ANNOTATION));
    if sleeping {
        let req = Req::new("patch", ORGS).named(&name);
        let patch = json!({"metadata": {"annotations": {SLEEP_ANNOTATION: null}}});
        current = api
            .patch(&name, &patch_params(), &Patch::Merge(&patch))
            .await
            .map_err(|e| req.error(cluster, e))?;
        outcome = Outcome::Changed;
    }
    Ok((current, outcome))
}

async fn sleep(cluster: &Cluster, org: &Org, now: DateTime<Utc>) -> Result<(Org, Outcome)> {
    let name = org.metadata.name.clone().unwrap_or_default();
    let req = Req::new("patch", ORGS).named(&name);
    let patch = json!({"metadata": {"annotations": {SLEEP_ANNOTATION: format_time(now)}}});
    let org = Api::<Org>::all(cluster.client.clone())
        .patch(&name, &patch_params(), &Patch::Merge(&patch))
        .await
        .map_err(|e| req.error(cluster, e))?;
    Ok((org, Outcome::Changed))
}

/// Refuses `sleep` for exempt orgs before anything is written: it would have no effect.
pub fn check(toggle: Toggle, orgs: &[Org]) -> Result<()> {
    if toggle != Toggle::Sleep {
        return Ok(());
    }
    let exempt: Vec<String> = orgs
        .iter()
        .filter(|o| !o.spec.scale_to_zero_allowed)
        .filter_map(|o| o.metadata.name.clone())
        .collect();
    if exempt.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = exempt.iter().map(|n| format!("org/{n}")).collect();
    Err(Error::Refused {
        what: format!("put {} to sleep", names.join(", ")),
        why: "exempt from scale to zero (spec.scaleToZeroAllowed=false), so it would stay warm; nothing was written".into(),
        hint: Some(format!("allow it first: `kubectl s2z enable {}`", exempt.join(" "))),
    })
}

/// Runs one of the switches.
pub async fn run(ctx: &Ctx, toggle: Toggle, args: Args) -> Result<()> {
    let cluster = ctx.cluster().await?;
    let mut names: Vec<String> = Vec::new();
    for name in args.orgs {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let selection = Selection {
        names,
        selector: None,
    };
    let (orgs, settings) = tokio::join!(
        cluster::orgs(cluster, &selection),
        cluster::settings(cluster, &ctx.options.namespace)
    );
    let orgs = orgs?;
    // Reading settings is only for the message; a reader without access still gets the change.
    let settings = settings.map(|s| s.settings).unwrap_or_default();
    check(toggle, &orgs)?;
    let now = Utc::now();
    let mut updated = Vec::new();
    let mut text = String::new();
    for org in &orgs {
        let (org, outcome) = match toggle {
            Toggle::Enable => set_allowed(cluster, org, true).await?,
            Toggle::Disable => set_allowed(cluster, org, false).await?,
            Toggle::Wake => wake(cluster, org, now).await?,
            Toggle::Sleep => sleep(cluster, org, now).await?,
        };
        let name = org.metadata.name.clone().unwrap_or_default();
        text.push_str(&message(
            toggle,
            &name,
            &outcome,
            &describe(&org, &settings, now),
        ));
        updated.push(org);
    }
    if ctx.options.format.is_structured() {
        let doc = match updated.as_slice() {
            [one] => serde_json::to_value(one),
            many => Ok(json!({"apiVersion": "v1", "kind": "List", "items": many})),
        }
        .map_err(|e| Error::Api {
            what: "render the output".into(),
            why: e.to_string(),
        })?;
        return ctx.print(&document(ctx.options.format, &doc)?);
    }
    ctx.print(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2z_core::org::{OrgSpec, OrgStatus};

    fn org(name: &str, allowed: bool, activity: Option<&str>) -> Org {
        let mut org = Org::new(
            name,
            OrgSpec {
                scale_to_zero_allowed: allowed,
                ..OrgSpec::default()
            },
        );
        org.status = Some(OrgStatus {
            last_activity_at: activity.map(String::from),
            ..OrgStatus::default()
        });
        org
    }

    fn at(t: &str) -> DateTime<Utc> {
        parse_time(t).unwrap_or_default()
    }

    #[test]
    fn state_lines() {
        let now = at("2025-01-02T00:00:00Z");
        let settings = Settings::default();
        assert_eq!(
            describe(
                &org("a", true, Some("2025-01-01T12:00:00Z")),
                &settings,
                now
            ),
            "Active, dormant in 12h"
        );
        assert_eq!(
            describe(
                &org("a", true, Some("2024-12-01T00:00:00Z")),
                &settings,
                now
            ),
            "Dormant"
        );
        assert_eq!(describe(&org("a", false, None), &settings, now), "Exempt");
    }

    #[test]
    fn messages() {
        assert_eq!(
            message(Toggle::Disable, "acme", &Outcome::Changed, "Exempt"),
            "org/acme: scale to zero disabled; the controller keeps its workloads warm now (Exempt)\n"
        );
        assert_eq!(
            message(
                Toggle::Enable,
                "acme",
                &Outcome::Unchanged("already allowed to scale to zero".into()),
                "Active"
            ),
            "org/acme: unchanged, already allowed to scale to zero (Active)\n"
        );
    }

    #[test]
    fn sleep_is_refused_for_exempt_orgs_only() {
        let orgs = vec![org("a", true, None), org("b", false, None)];
        assert!(check(Toggle::Sleep, &orgs[..1]).is_ok());
        assert!(check(Toggle::Wake, &orgs).is_ok());
        let err = check(Toggle::Sleep, &orgs).err();
        let err = err.map(|e| (e.exit_code(), e.to_string()));
        assert_eq!(
            err,
            Some((
                3,
                "failed to put org/b to sleep: exempt from scale to zero (spec.scaleToZeroAllowed=false), so it would stay warm; nothing was written".into()
            ))
        );
    }
}
