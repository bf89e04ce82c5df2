//! `kubectl s2z defrag NODE`: seed 002's safe GPU-node defrag.
//!
//! Inventory the node, confirm, cordon, orphan each Knative revision pod from its ReplicaSet (a
//! replacement starts elsewhere while the orphan keeps serving), then watch until every revision
//! is over-provisioned by its pods on the node and print the drain command. A human drains.
//!
//! All state lives in the cluster (annotations on the node and the orphans), so a run that timed
//! out or was interrupted is resumed by running the same command again, and undone by `--abort`.
//! Submodules: [`inventory`] reads, [`act`] writes, [`wait`] watches, [`abort`] undoes,
//! [`list`] shows leftover orphans and ranks candidate nodes, [`output`] renders; [`args`],
//! [`error`], [`interrupt`] and [`prompt`] are what they share. This module only runs the
//! steps: the submodules never depend on it, so the dependencies run one way.

pub mod abort;
pub mod act;
pub mod args;
pub mod error;
pub mod interrupt;
pub mod inventory;
pub mod list;
pub mod output;
pub mod prompt;
pub mod wait;

use std::io::{self, Write};

use s2z_core::defrag_plan::drain_command;

pub use args::DefragArgs;
pub use error::{DefragError, EXIT_CODES, Outcome};
pub use interrupt::Interrupt;
use output::{Printer, Progress, Report};
use prompt::confirm;
use wait::{End, Line, Watched, pending};

use crate::client::Cluster;
use crate::ctx::Ctx;

/// Runs `defrag` with a bare client; messages name the API server generically.
pub async fn run(
    client: kube::Client,
    args: &DefragArgs,
    out: &mut dyn Write,
) -> Result<Outcome, DefragError> {
    let cluster = Cluster {
        client,
        server: "the API server".into(),
        chunk_size: Some(crate::client::DEFAULT_CHUNK_SIZE),
    };
    run_on(&cluster, args, out).await
}

/// Runs `defrag` on a connected cluster, writing the result to `out`.
pub async fn run_on(
    cluster: &Cluster,
    args: &DefragArgs,
    out: &mut dyn Write,
) -> Result<Outcome, DefragError> {
    let mut printer = Printer::new(out, args.format, args.color);
    if args.list {
        return list::orphans(cluster, args.node.as_deref(), &mut printer).await;
    }
    if args.candidates {
        return list::candidates(cluster, args.selector.as_deref(), &mut printer).await;
    }
    let Some(node) = args.node.as_deref() else {
        return Err(DefragError::Refused {
            what: "defrag".into(),
            why: "no NODE given".into(),
            hint: "name the node, or use --list or --candidates".into(),
        });
    };
    if args.abort {
        abort::run(cluster, node, args, &mut printer).await
    } else {
        defrag(cluster, node, args, &mut printer).await
    }
}

/// Runs `defrag` for the plugin: fills in the global output flags and connects.
pub async fn run_cli(ctx: &Ctx, mut args: DefragArgs) -> Result<Outcome, DefragError> {
    args.format = ctx.options.format;
    args.color = ctx.options.color_stdout;
    let cluster = ctx.cluster().await.map_err(DefragError::Cluster)?;
    let mut out = io::stdout();
    run_on(cluster, &args, &mut out).await
}

/// The commands to resume and to abort.
fn next_steps(node: &str) -> Vec<String> {
    vec![
        format!("kubectl s2z defrag {node} --yes"),
        format!("kubectl s2z defrag {node} --abort --yes"),
    ]
}

async fn defrag(
    cluster: &Cluster,
    node: &str,
    args: &DefragArgs,
    printer: &mut Printer<'_>,
) -> Result<Outcome, DefragError> {
    let inv = inventory::read(cluster, node).await?;
    let drain = drain_command(node, inv.drain_needs());
    printer.table_only(&output::inventory(&inv, printer.color))?;
    if inv.revisions.is_empty() {
        printer.document(&Report::new(&inv, "NothingToDo"))?;
        return Err(DefragError::NothingToDo {
            what: format!("defrag node/{node}"),
            why: "no Knative revision pod runs on it".into(),
            hint: format!(
                "nothing needs a replacement first; drain it directly if it should go: {drain}"
            ),
        });
    }
    let unreadable = inv.unreadable();
    if !unreadable.is_empty() {
        printer.document(&Report::new(&inv, "MissingAutoscaler"))?;
        return Err(DefragError::MissingAutoscaler {
            revisions: unreadable,
            why: "no PodAutoscaler (autoscaling.internal.knative.dev/v1alpha1) or no Deployment labelled with the revision; nothing was changed".into(),
        });
    }
    if inv.resuming() {
        printer.line(&format!(
            "\nResuming the defrag of node {node} started at {}: {} pod(s) already orphaned.",
            inv.node.defrag_started().unwrap_or("an unknown time"),
            inv.orphans().count()
        ))?;
    }
    printer.table_only(&output::plan(&inv, &drain))?;
    if args.dry_run {
        printer.line("\nDry run: nothing was changed.")?;
        let mut report = Report::new(&inv, "DryRun");
        report.drain_command = Some(drain);
        printer.document(&report)?;
        return Ok(Outcome::DryRun);
    }
    confirm(args, printer, "Proceed with defrag?", "defrag")?;

    let mut interrupt = Interrupt::install();
    match act::cordon(cluster, &inv.node).await? {
        act::Cordon::Cordoned => printer.line(&format!(
            "Node {node} has been cordoned (marked unschedulable)."
        ))?,
        act::Cordon::Already => printer.line(&format!("Node {node} is already cordoned."))?,
    }
    for pod in inv.pods.iter().filter(|p| p.to_orphan()) {
        if interrupt.fired() {
            return interrupted(printer, &inv, node, &[]);
        }
        let initial = inv
            .revisions
            .iter()
            .find(|r| r.namespace == pod.namespace && pod.revision.as_ref() == Some(&r.revision))
            .map_or(0, |r| r.initial_replicas);
        match act::orphan(cluster, pod, node, initial).await? {
            act::PodOutcome::Done => printer.line(&format!("Pod {} orphaned", pod.key()))?,
            act::PodOutcome::Skipped(why) => {
                printer.line(&format!("Pod {} not orphaned: {why}", pod.key()))?
            }
        }
    }

    let watched: Vec<Watched> = inv
        .revisions
        .iter()
        .map(|r| Watched {
            namespace: r.namespace.clone(),
            revision: r.revision.clone(),
            initial_replicas: r.initial_replicas,
        })
        .collect();
    let mut progress = Progress::new(&watched);
    let (end, tracker) = wait::until(
        cluster,
        node,
        &watched,
        args.wait_limit(),
        &mut interrupt,
        |t| {
            let lines = t.lines(false);
            progress.show(printer, &lines)?;
            Ok(lines.iter().all(Line::satisfied))
        },
    )
    .await?;
    let lines = tracker.lines(false);
    progress.finish(printer, &lines)?;
    match end {
        End::Done => {
            printer.line("Safe to defrag/remove node")?;
            printer.table_only(&format!(
                "\nEvery revision now serves its full capacity without this node. Drain it (a human step):\n  {drain}\n"
            ))?;
            if inv.drain_needs().uncontrolled {
                printer.table_only("--force is needed because the orphans have no controller; their replacements are already serving.\n")?;
            }
            if let Some(warning) = output::force_warning(&inv) {
                printer.line(&warning)?;
            }
            let mut report = Report::new(&inv, "Safe").with_lines(&lines);
            report.drain_command = Some(drain);
            printer.document(&report)?;
            Ok(Outcome::Safe)
        }
        End::TimedOut => {
            let mut report = Report::new(&inv, "TimedOut").with_lines(&lines);
            report.next = next_steps(node);
            printer.document(&report)?;
            Err(DefragError::Timeout {
                what: format!("see node/{node} become safe to drain"),
                pending: pending(&lines),
                waited: args.timeout,
                node: node.into(),
            })
        }
        End::Interrupted => interrupted(printer, &inv, node, &lines),
    }
}

fn interrupted(
    printer: &mut Printer<'_>,
    inv: &inventory::Inventory,
    node: &str,
    lines: &[Line],
) -> Result<Outcome, DefragError> {
    printer.line(&format!(
        "Interrupted: node {node} stays cordoned and every orphan keeps serving. Resume: kubectl s2z defrag {node} --yes  Abort: kubectl s2z defrag {node} --abort --yes"
    ))?;
    let mut report = Report::new(inv, "Interrupted");
    if !lines.is_empty() {
        report = report.with_lines(lines);
    }
    report.next = next_steps(node);
    printer.document(&report)?;
    Err(DefragError::Interrupted {
        what: "defrag".into(),
        node: node.into(),
    })
}
