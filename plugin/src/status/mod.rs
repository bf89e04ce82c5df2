//! `kubectl s2z status [ORG...]`: the settings, then one row per org with its state, last
//! activity, when it goes (or went) dormant, warm workloads, running pods and GPUs held, and
//! the revisions still waiting for their pods.
//!
//! Everything is read with one paginated list per kind (see [`crate::cluster`]); `--watch`
//! prints again whenever an org changes.

pub mod report;

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use s2z_core::org::{Org, OrgState};

use crate::client::{Cluster, ORGS, Req};
use crate::cluster::{self, Selection, Want};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use report::{StateFilter, StatusReport};

/// Arguments of `status`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "\
Columns:
  STATE           Active, Dormant or Exempt by s2z's rule now
                  (* = not yet reported by the controller)
  LAST ACTIVITY   age of the newest recorded activity
  DORMANT         'in <age>' for an active org, 'since <age>' for a dormant one
  PYNODES/MODELS  warm/total revisions; warm ones are kept at min-scale >= 1
  PODS, GPUS      running pods of the org's revisions and the GPUs they hold
  SAVED           GPU-hours (pod-hours without GPUs) not held while the org was dormant:
                  its warm floor times the time dormant (status.savings)

Below the table, revisions waiting for pods: warm revisions of active or exempt orgs
with fewer Ready pods than their min-scale, e.g. just after a wake.

Examples:
  kubectl s2z status                 every org
  kubectl s2z status acme globex     two orgs
  kubectl s2z status --dormant -o wide
  kubectl s2z status -l tier=free -o json")]
pub struct Args {
    /// Orgs to show [default: every org]
    #[arg(value_name = "ORG")]
    pub orgs: Vec<String>,
    /// Only dormant orgs
    #[arg(long, group = "state")]
    pub dormant: bool,
    /// Only active orgs
    #[arg(long, group = "state")]
    pub active: bool,
    /// Only exempt orgs
    #[arg(long, group = "state")]
    pub exempt: bool,
    /// Only orgs matching this label selector, e.g. -l tier=free
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Keep watching, printing again whenever an org changes
    #[arg(short = 'w', long)]
    pub watch: bool,
}

impl Args {
    /// The state filter of `--dormant`, `--active` and `--exempt`.
    pub fn filter(&self) -> StateFilter {
        let only = if self.dormant {
            Some(OrgState::Dormant)
        } else if self.active {
            Some(OrgState::Active)
        } else if self.exempt {
            Some(OrgState::Exempt)
        } else {
            None
        };
        StateFilter { only }
    }

    fn selection(&self) -> Selection {
        Selection {
            names: self.orgs.clone(),
            selector: self.selector.clone(),
        }
    }
}

/// Reads the cluster once and computes the report.
pub async fn snapshot(
    ctx: &Ctx,
    cluster: &Cluster,
    selection: &Selection,
    filter: StateFilter,
) -> Result<StatusReport> {
    let want = Want {
        revisions: true,
        pods: true,
    };
    let (settings, inventory) = tokio::join!(
        cluster::settings(cluster, &ctx.options.namespace),
        cluster::inventory(cluster, selection, want)
    );
    let inventory = inventory?;
    Ok(report::build(&inventory, &settings?, Utc::now(), filter))
}

/// Runs `status`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<()> {
    let cluster = ctx.cluster().await?;
    let selection = args.selection();
    let filter = args.filter();
    let report = snapshot(ctx, cluster, &selection, filter).await?;
    print(ctx, &report, true)?;
    if args.watch {
        watch(ctx, cluster, &selection, filter).await?;
    }
    Ok(())
}

fn print(ctx: &Ctx, report: &StatusReport, first: bool) -> Result<()> {
    use crate::options::Format;
    let format = ctx.options.format;
    let color = ctx.options.color_stdout;
    let mut text = String::new();
    match format {
        Format::Table | Format::Wide => {
            if !first {
                text.push('\n');
            }
            text.push_str(&report::header(&report.settings, color));
            if !report.orgs.is_empty() {
                text.push('\n');
                text.push_str(&report::render_table(report, format == Format::Wide, color));
            }
        }
        Format::Yaml => {
            if !first {
                text.push_str("---\n");
            }
            text.push_str(&crate::output::document(format, report)?);
        }
        Format::Json => text.push_str(&crate::output::document(format, report)?),
    }
    ctx.print(&text)?;
    if format == Format::Table || format == Format::Wide {
        for warning in &report.warnings {
            ctx.warn(warning);
        }
        if report.orgs.is_empty() {
            ctx.note("No orgs found.");
        }
    }
    Ok(())
}

fn watch_error(cluster: &Cluster, err: watcher::Error) -> Error {
    match err {
        watcher::Error::InitialListFailed(e) => Req::new("list", ORGS).error(cluster, e),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            Req::new("watch", ORGS).error(cluster, e)
        }
        watcher::Error::WatchError(status) => {
            Req::new("watch", ORGS).error(cluster, kube::Error::Api(status))
        }
        other => Error::Api {
            what: "watch orgs.s2z.dev".into(),
            why: other.to_string(),
        },
    }
}

/// Prints the report again after every burst of org changes, until interrupted.
async fn watch(
    ctx: &Ctx,
    cluster: &Cluster,
    selection: &Selection,
    filter: StateFilter,
) -> Result<()> {
    const SETTLE: Duration = Duration::from_millis(300);
    let mut config = watcher::Config::default();
    if let Some(selector) = &selection.selector {
        config = config.labels(selector);
    }
    if let [name] = selection.names.as_slice() {
        config = config.fields(&format!("metadata.name={name}"));
    }
    let api: Api<Org> = Api::all(cluster.client.clone());
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut listed = false;
    loop {
        let Some(event) = events.next().await else {
            return Ok(());
        };
        let changed = match event {
            Ok(watcher::Event::InitDone) => {
                // The first complete listing only confirms what was printed; later ones follow
                // a reconnect and may carry changes.
                let changed = listed;
                listed = true;
                changed
            }
            Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => false,
            Ok(watcher::Event::Apply(org) | watcher::Event::Delete(org)) => {
                // Changes to orgs that are not shown need no reprint.
                selection.names.is_empty()
                    || org
                        .metadata
                        .name
                        .as_ref()
                        .is_some_and(|n| selection.names.contains(n))
            }
            Err(e) => match watch_error(cluster, e) {
                fatal @ (Error::Forbidden(_) | Error::NotInstalled { .. }) => {
                    return Err(fatal);
                }
                transient => {
                    ctx.warn(&format!("{transient}; retrying"));
                    false
                }
            },
        };
        if !changed {
            continue;
        }
        // Coalesce a burst (e.g. a sweep flipping many orgs) into one reprint.
        while let Ok(Some(_)) = tokio::time::timeout(SETTLE, events.next()).await {}
        let report = snapshot(ctx, cluster, selection, filter).await?;
        print(ctx, &report, false)?;
    }
}
