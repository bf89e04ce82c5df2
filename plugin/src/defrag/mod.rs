//! `kubectl s2z defrag NODE`: seed 002's safe GPU-node defrag.
//!
//! Inventory the node, confirm, cordon, orphan each Knative revision pod from its ReplicaSet (a
//! replacement starts elsewhere while the orphan keeps serving), then watch until every revision
//! is over-provisioned by its pods on the node and print the drain command. A human drains.
//!
//! All state lives in the cluster (annotations on the node and the orphans), so a run that timed
//! out or was interrupted is resumed by running the same command again, and undone by `--abort`.
//! Submodules: [`inventory`] reads, [`act`] writes, [`wait`] watches, [`abort`] undoes,
//! [`list`] shows leftover orphans and ranks candidate nodes, [`output`] renders.

pub mod abort;
pub mod act;
pub mod error;
pub mod inventory;
pub mod list;
pub mod output;
pub mod wait;

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use s2z_core::defrag_plan::drain_command;
use tokio::sync::watch;

pub use error::{DefragError, EXIT_CODES};
use output::{Printer, Progress, Report};
use wait::{End, Line, Watched};

use crate::cli::Format;
use crate::client::Cluster;

/// Arguments of `defrag`.
#[derive(clap::Args, Debug, Clone)]
#[command(after_long_help = after_help())]
pub struct DefragArgs {
    /// The node to empty
    #[arg(value_name = "NODE", required_unless_present_any = ["list", "candidates"])]
    pub node: Option<String>,
    /// Print the inventory, the blockers and the plan; change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal)
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// How long to wait for the replacements before giving up (the state is kept); 0 waits forever
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Undo a defrag of NODE: uncordon it and hand every orphan back to its ReplicaSet
    #[arg(long, conflicts_with_all = ["list", "candidates"])]
    pub abort: bool,
    /// Rank GPU nodes by how cheaply they can be emptied
    #[arg(long, conflicts_with_all = ["list", "node", "dry_run"])]
    pub candidates: bool,
    /// List pods left orphaned by defrag, cluster-wide (or on NODE)
    #[arg(long, conflicts_with = "dry_run")]
    pub list: bool,
    /// With --candidates: only nodes matching this label selector
    #[arg(short = 'l', long, value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Output format, filled in from the global `-o` by the caller.
    #[arg(skip = Format::Table)]
    pub format: Format,
    /// Colour on stdout, filled in by the caller.
    #[arg(skip)]
    pub color: bool,
}

/// `defrag --help`'s epilogue: how it works, then the exit codes.
fn after_help() -> String {
    format!(
        "\
How it works (seed 002):
  1. Inventory the node: pods, GPUs, replicas, PodAutoscaler scale, blockers.
  2. Confirm (\"Proceed with defrag? (y/n)\"), unless --yes.
  3. Cordon the node; orphan each Knative revision pod from its ReplicaSet (remove its
     ownerReferences and pod-template-hash label, guarded by its resourceVersion). The
     ReplicaSet starts a replacement elsewhere; the orphan keeps serving.
  4. Watch until, for every revision with m pods on the node,
     current_kpa_scale >= initial_replicas + m  or  current_kpa_scale >= current_replicas + m.
  5. Print \"Safe to defrag/remove node\" and the kubectl drain command. s2z never evicts.

Orphans carry the label s2z.dev/defrag-node and s2z.dev/defrag-* annotations. Running the
same command again resumes; --abort uncordons and hands each orphan back to its ReplicaSet
(which then removes one surplus pod, a not-yet-ready replacement first), never dropping below
the serving capacity. `defrag --list` shows orphans left anywhere.

{EXIT_CODES}"
    )
}

fn parse_timeout(value: &str) -> Result<Duration, String> {
    s2z_core::settings::parse_duration(value).map_err(|e| e.to_string())
}

/// How a run that did not fail ended; every outcome exits 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The node is safe to drain.
    Safe,
    /// `--dry-run` printed the plan.
    DryRun,
    /// `--abort` handed everything back.
    Aborted,
    /// `--list` or `--candidates` printed.
    Listed,
}

impl Outcome {
    /// The exit code.
    pub fn exit_code(self) -> u8 {
        error::code::OK
    }
}

/// Ctrl-C and SIGTERM, turned into a flag checked between writes and a future the wait selects
/// on, so an interrupted run stops between two consistent states instead of dying mid-way.
#[derive(Debug)]
pub struct Interrupt {
    rx: watch::Receiver<bool>,
}

impl Interrupt {
    /// Installs the handlers. From then on Ctrl-C no longer kills the process at once.
    pub fn install() -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let terminate = async {
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(mut s) => {
                        s.recv().await;
                    }
                    Err(_) => futures::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                () = terminate => {}
            }
            let _ = tx.send(true);
        });
        Interrupt { rx }
    }

    /// An interrupt that never fires.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the sender alive forever so `wait` pends instead of returning.
        std::mem::forget(tx);
        Interrupt { rx }
    }

    /// True once a signal arrived.
    pub fn fired(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when a signal arrives.
    pub async fn wait(&mut self) {
        if self.rx.wait_for(|fired| *fired).await.is_err() {
            futures::future::pending::<()>().await;
        }
    }
}

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
pub async fn run_cli(ctx: &crate::Ctx, mut args: DefragArgs) -> Result<Outcome, DefragError> {
    args.format = ctx.options.format;
    args.color = ctx.options.color_stdout;
    let cluster = ctx.cluster().await.map_err(DefragError::Cluster)?;
    let mut out = io::stdout();
    run_on(cluster, &args, &mut out).await
}

/// Asks `question` unless `--yes`; refuses when nobody can answer.
pub fn confirm(
    args: &DefragArgs,
    printer: &mut Printer<'_>,
    question: &str,
    what: &str,
) -> Result<(), DefragError> {
    if args.yes {
        printer.human("\n")?;
        return Ok(());
    }
    if !io::stdin().is_terminal() {
        return Err(DefragError::Refused {
            what: what.into(),
            why: "stdin is not a terminal and --yes was not given; nothing was changed".into(),
            hint: "run it from a terminal to answer the prompt, or pass --yes; --dry-run shows the plan without changing anything".into(),
        });
    }
    printer.human(&format!("\n{question} (y/n): "))?;
    let mut answer = String::new();
    io::stdin().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(DefragError::Refused {
            what: what.into(),
            why: "declined at the prompt; nothing was changed".into(),
            hint: "--dry-run shows the plan without changing anything".into(),
        }),
    }
}

/// The timeout, `None` for 0 (forever).
pub fn timeout(args: &DefragArgs) -> Option<Duration> {
    (!args.timeout.is_zero()).then_some(args.timeout)
}

/// Words for what a revision still needs.
fn pending(lines: &[Line]) -> String {
    let waiting: Vec<String> = lines
        .iter()
        .filter(|l| !l.satisfied())
        .map(|l| {
            if l.known {
                format!(
                    "revision {}/{} needs {} more ready pod(s) (current_scale={} replicas={} initial_scale={} on_node={})",
                    l.namespace,
                    l.progress.revision,
                    l.progress.extra_needed(),
                    l.progress.current_kpa_scale,
                    l.progress.current_replicas,
                    l.progress.initial_replicas,
                    l.progress.on_node
                )
            } else {
                format!(
                    "revision {}/{}: its PodAutoscaler reports no actualScale",
                    l.namespace, l.progress.revision
                )
            }
        })
        .collect();
    if waiting.is_empty() {
        "the watches never completed their first list".into()
    } else {
        waiting.join("; ")
    }
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
        timeout(args),
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: DefragArgs,
    }

    fn parse(args: &[&str]) -> Result<DefragArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("defrag").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn flags_parse_and_default() -> Result<(), clap::Error> {
        let a = parse(&["gpu-1"])?;
        assert_eq!(a.node.as_deref(), Some("gpu-1"));
        assert_eq!(a.timeout, Duration::from_secs(1800));
        assert!(!a.yes && !a.dry_run && !a.abort);
        let a = parse(&["gpu-1", "--timeout", "90s", "--yes", "--abort"])?;
        assert_eq!(a.timeout, Duration::from_secs(90));
        assert!(a.yes && a.abort);
        assert!(parse(&["--list"])?.list);
        assert!(parse(&["--candidates", "-l", "pool=h100"])?.candidates);
        Ok(())
    }

    #[test]
    fn bad_combinations_are_usage_errors() {
        assert!(parse(&[]).is_err(), "a node is required");
        assert!(parse(&["n", "--timeout", "soon"]).is_err());
        assert!(parse(&["n", "--candidates"]).is_err());
        assert!(parse(&["--list", "--abort"]).is_err());
    }

    #[test]
    fn pending_names_what_is_missing() {
        let line = Line {
            namespace: "ns".into(),
            progress: s2z_core::defrag::RevisionProgress {
                revision: "r".into(),
                current_kpa_scale: 3,
                initial_replicas: 3,
                current_replicas: 3,
                on_node: 1,
            },
            known: true,
            gone: false,
        };
        assert_eq!(
            pending(&[line]),
            "revision ns/r needs 1 more ready pod(s) (current_scale=3 replicas=3 initial_scale=3 on_node=1)"
        );
    }
}
