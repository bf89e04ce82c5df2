//! What defrag prints: the inventory table and the plan for people, the seed's progress lines
//! (or progress bars on a terminal), and one JSON/YAML document for machines.
//!
//! With `-o json|yaml` stdout carries only the document; the prompt, the progress and the notes
//! go to stderr so the document stays parseable.

use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use s2z_core::defrag::PodClass;
use serde::Serialize;

use super::error::DefragError;
use super::inventory::{Inventory, PodFacts};
use super::wait::{Line, Watched};
use crate::options::Format;
use crate::output::{Cell, Style, document, paint, table};

/// `apiVersion` of defrag's documents.
pub const API_VERSION: &str = "s2z.dev/v1alpha1";

/// Where output goes.
pub struct Printer<'a> {
    out: &'a mut dyn Write,
    /// `-o`.
    pub format: Format,
    /// Colour on stdout.
    pub color: bool,
}

impl<'a> Printer<'a> {
    /// A printer writing the result to `out`.
    pub fn new(out: &'a mut dyn Write, format: Format, color: bool) -> Self {
        Printer { out, format, color }
    }

    /// True for `-o json|yaml`.
    pub fn structured(&self) -> bool {
        self.format.is_structured()
    }

    /// Text for people: stdout for tables, stderr when stdout carries a document. Flushed at
    /// once, because the reaction time to "Safe" is measured on this stream.
    pub fn human(&mut self, text: &str) -> io::Result<()> {
        if self.structured() {
            let mut err = io::stderr().lock();
            err.write_all(text.as_bytes())?;
            err.flush()
        } else {
            self.out.write_all(text.as_bytes())?;
            self.out.flush()
        }
    }

    /// A line for people.
    pub fn line(&mut self, text: &str) -> io::Result<()> {
        self.human(&format!("{text}\n"))
    }

    /// Text that is the table output only (skipped with `-o json|yaml`).
    pub fn table_only(&mut self, text: &str) -> io::Result<()> {
        if self.structured() {
            return Ok(());
        }
        self.human(text)
    }

    /// The document, with `-o json|yaml` only.
    pub fn document<T: Serialize>(&mut self, value: &T) -> Result<(), DefragError> {
        if !self.structured() {
            return Ok(());
        }
        let text = document(self.format, value).map_err(DefragError::Cluster)?;
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    /// `text` highlighted when colour is on.
    pub fn paint(&self, text: &str, style: Style) -> String {
        paint(text, style, self.color && !self.structured())
    }
}

/// The GPUS cell: `1x nvidia-h100-80gb`, as in the seed.
pub fn gpus(count: u32, gpu_type: Option<&str>) -> String {
    match count {
        0 => "-".into(),
        n => format!("{n}x {}", gpu_type.unwrap_or("GPU")),
    }
}

/// What defrag does with a pod, in words.
pub fn action(pod: &PodFacts) -> String {
    match &pod.class {
        PodClass::Knative if pod.orphan.is_some() => "already orphaned".into(),
        PodClass::Knative if pod.terminating => "skip: terminating".into(),
        PodClass::Knative if pod.to_orphan() => "orphan".into(),
        PodClass::Knative => "wait: no ReplicaSet owner".into(),
        PodClass::DaemonSet => "ignore: DaemonSet".into(),
        PodClass::Mirror => "ignore: mirror pod".into(),
        PodClass::LeftForDrain(why) => format!("left for drain: {why}"),
    }
}

fn class_name(class: &PodClass) -> &'static str {
    match class {
        PodClass::Knative => "knative",
        PodClass::DaemonSet => "daemonset",
        PodClass::Mirror => "mirror",
        PodClass::LeftForDrain(_) => "leftForDrain",
    }
}

/// The inventory: a heading like the seed's, then one row per pod.
pub fn inventory(inv: &Inventory, color: bool) -> String {
    let node = &inv.node;
    let mut text = format!(
        "Node {}: {}, {}/{} GPUs allocated, {}\n\n",
        node.name,
        node.gpu_type.as_deref().unwrap_or("no GPU type label"),
        inv.gpus_allocated(),
        node.gpus,
        if node.unschedulable {
            "cordoned"
        } else {
            "schedulable"
        }
    );
    if inv.pods.is_empty() {
        text.push_str("No pods on the node.\n");
        return text;
    }
    let rows = inv
        .pods
        .iter()
        .map(|pod| {
            let revision = pod.revision.as_ref().and_then(|r| {
                inv.revisions
                    .iter()
                    .find(|f| f.namespace == pod.namespace && &f.revision == r)
            });
            let (replicas, kpa) = match (&pod.class, revision) {
                (PodClass::Knative, Some(r)) => (
                    r.replicas.map_or("missing".into(), |n| n.to_string()),
                    match (r.has_autoscaler, r.kpa_scale) {
                        (false, _) => "missing".to_string(),
                        (true, None) => "?".to_string(),
                        (true, Some(n)) => n.to_string(),
                    },
                ),
                _ => ("-".to_string(), "-".to_string()),
            };
            let action_text = action(pod);
            let action_style = match &pod.class {
                PodClass::Knative => Style::Good,
                PodClass::LeftForDrain(_) => Style::Warn,
                _ => Style::Dim,
            };
            let blockers = if pod.blockers.is_empty() {
                Cell::plain("-")
            } else {
                let list: Vec<String> = pod.blockers.iter().map(ToString::to_string).collect();
                Cell::styled(list.join("; "), Style::Bad)
            };
            vec![
                Cell::plain(pod.key()),
                Cell::plain(gpus(pod.gpus, node.gpu_type.as_deref())),
                Cell::plain(pod.status.clone()),
                Cell::plain(replicas),
                Cell::plain(kpa),
                Cell::styled(action_text, action_style),
                blockers,
            ]
        })
        .collect();
    text.push_str(&table(
        &[
            "pod",
            "gpus",
            "status",
            "replicas",
            "kpa_scale",
            "action",
            "blockers",
        ],
        rows,
        color,
    ));
    text
}

/// The plan, in the order it is carried out.
pub fn plan(inv: &Inventory, drain: &str) -> String {
    let to_orphan = inv.pods.iter().filter(|p| p.to_orphan()).count();
    let orphaned = inv.orphans().count();
    let mut text = String::from("\nPlan:\n");
    if inv.node.unschedulable {
        text.push_str(&format!(
            "  1. node {} is already cordoned\n",
            inv.node.name
        ));
    } else {
        text.push_str(&format!("  1. cordon node {}\n", inv.node.name));
    }
    let revisions = inv.revisions.len();
    text.push_str(&format!(
        "  2. orphan {to_orphan} pod(s) of {revisions} revision(s){}: each ReplicaSet starts a replacement elsewhere while the orphan keeps serving\n",
        if orphaned > 0 {
            format!(" ({orphaned} already orphaned by an earlier run)")
        } else {
            String::new()
        }
    ));
    text.push_str("  3. wait (watching, not polling) until every revision is over-provisioned by its pods on the node:\n");
    for r in &inv.revisions {
        text.push_str(&format!(
            "       {}: current_scale >= initial_scale {} + {} or >= replicas + {}\n",
            r.key(),
            r.initial_replicas,
            r.on_node,
            r.on_node
        ));
    }
    text.push_str(&format!(
        "  4. print the drain command for you to run: {drain}\n     (s2z never evicts or deletes)\n"
    ));
    if let Some(warning) = force_warning(inv) {
        text.push_str(&format!("     {warning}\n"));
    }
    let left: Vec<&PodFacts> = inv
        .pods
        .iter()
        .filter(|p| matches!(p.class, PodClass::LeftForDrain(_)))
        .collect();
    if !left.is_empty() {
        text.push_str(&format!(
            "Left for drain: {} pod(s) that defrag does not move: {}\n",
            left.len(),
            left.iter().map(|p| p.key()).collect::<Vec<_>>().join(", ")
        ));
    }
    let blocked: Vec<String> = inv
        .pods
        .iter()
        .filter(|p| !p.blockers.is_empty())
        .map(|p| {
            let b: Vec<String> = p.blockers.iter().map(ToString::to_string).collect();
            format!("  {}: {}", p.key(), b.join("; "))
        })
        .collect();
    if !blocked.is_empty() {
        text.push_str("Blockers (the drain will wait on or refuse these pods):\n");
        text.push_str(&blocked.join("\n"));
        text.push('\n');
    }
    text
}

/// A warning when `--force` would also delete pods nothing recreates.
pub fn force_warning(inv: &Inventory) -> Option<String> {
    let bare = inv.bare_pods();
    (!bare.is_empty()).then(|| {
        format!(
            "Careful: --force also deletes {} pod(s) that nothing recreates: {}; move them first",
            bare.len(),
            bare.join(", ")
        )
    })
}

/// A pod in the document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRow {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// knative, daemonset, mirror or leftForDrain.
    pub class: &'static str,
    /// What defrag does with it.
    pub action: String,
    /// GPUs it holds.
    pub gpus: u32,
    /// Phase or Terminating.
    pub status: String,
    /// Its revision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Orphaned by s2z.
    pub orphaned: bool,
    /// Why the drain may be blocked.
    pub blockers: Vec<String>,
}

/// A revision in the document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRow {
    /// Namespace.
    pub namespace: String,
    /// Revision.
    pub revision: String,
    /// Its pods on the node.
    pub on_node: i64,
    /// Replicas when the defrag started.
    pub initial_replicas: i64,
    /// Replicas now, if known.
    pub current_replicas: Option<i64>,
    /// The PodAutoscaler's actualScale, if known.
    pub current_kpa_scale: Option<i64>,
    /// Ready pods still needed.
    pub extra_needed: Option<i64>,
    /// Seed 002's rule holds.
    pub satisfied: bool,
}

/// The result of `defrag NODE` as a document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// [`API_VERSION`].
    pub api_version: &'static str,
    /// `DefragReport`.
    pub kind: &'static str,
    /// The node.
    pub node: String,
    /// Its GPU model.
    pub gpu_type: Option<String>,
    /// Safe, DryRun, TimedOut, Interrupted, NothingToDo or MissingAutoscaler.
    pub outcome: &'static str,
    /// A previous run's state was picked up.
    pub resumed: bool,
    /// The node's pods.
    pub pods: Vec<PodRow>,
    /// Its Knative revisions.
    pub revisions: Vec<RevisionRow>,
    /// The command to run next when safe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_command: Option<String>,
    /// Commands to resume or abort, when not finished.
    pub next: Vec<String>,
}

impl Report {
    /// A report of `inv` with `outcome`; revisions as inventoried until [`Report::with_lines`].
    pub fn new(inv: &Inventory, outcome: &'static str) -> Self {
        Report {
            api_version: API_VERSION,
            kind: "DefragReport",
            node: inv.node.name.clone(),
            gpu_type: inv.node.gpu_type.clone(),
            outcome,
            resumed: inv.resuming(),
            pods: inv
                .pods
                .iter()
                .map(|p| PodRow {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    class: class_name(&p.class),
                    action: action(p),
                    gpus: p.gpus,
                    status: p.status.clone(),
                    revision: p.revision.clone(),
                    orphaned: p.orphan.is_some(),
                    blockers: p.blockers.iter().map(ToString::to_string).collect(),
                })
                .collect(),
            revisions: inv
                .revisions
                .iter()
                .map(|r| {
                    let progress = r.kpa_scale.zip(r.replicas).map(|(kpa, replicas)| {
                        s2z_core::defrag::RevisionProgress {
                            revision: r.revision.clone(),
                            current_kpa_scale: kpa,
                            initial_replicas: r.initial_replicas,
                            current_replicas: replicas,
                            on_node: r.on_node,
                        }
                    });
                    RevisionRow {
                        namespace: r.namespace.clone(),
                        revision: r.revision.clone(),
                        on_node: r.on_node,
                        initial_replicas: r.initial_replicas,
                        current_replicas: r.replicas,
                        current_kpa_scale: r.kpa_scale,
                        extra_needed: progress.as_ref().map(|p| p.extra_needed()),
                        satisfied: progress.is_some_and(|p| p.satisfied()),
                    }
                })
                .collect(),
            drain_command: None,
            next: Vec::new(),
        }
    }

    /// Replaces the revisions with the latest watched values.
    pub fn with_lines(mut self, lines: &[Line]) -> Self {
        self.revisions = lines
            .iter()
            .map(|l| RevisionRow {
                namespace: l.namespace.clone(),
                revision: l.progress.revision.clone(),
                on_node: l.progress.on_node,
                initial_replicas: l.progress.initial_replicas,
                current_replicas: Some(l.progress.current_replicas),
                current_kpa_scale: l.known.then_some(l.progress.current_kpa_scale),
                extra_needed: l.known.then(|| l.progress.extra_needed()),
                satisfied: l.satisfied(),
            })
            .collect();
        self
    }
}

/// Progress while waiting: the seed's lines, or one spinner per revision on a terminal.
pub enum Progress {
    /// Plain lines, printed when something changes.
    Lines {
        /// The last block printed.
        last: Vec<String>,
    },
    /// Bars on stderr.
    Bars {
        /// Keeps the bars together.
        multi: MultiProgress,
        /// One per revision.
        bars: Vec<ProgressBar>,
    },
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn new(revisions: &[Watched]) -> Self {
        if !io::stderr().is_terminal() {
            return Progress::Lines { last: Vec::new() };
        }
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner:.cyan} {msg} ({elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_spinner());
        let bars = revisions
            .iter()
            .map(|w| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_message(format!("Revision {} - starting the watches", w.revision));
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            })
            .collect();
        Progress::Bars { multi, bars }
    }

    /// Shows the current lines; plain lines only when they changed, as a `---` block.
    pub fn show(&mut self, printer: &mut Printer<'_>, lines: &[Line]) -> io::Result<()> {
        let texts: Vec<String> = lines.iter().map(Line::text).collect();
        match self {
            Progress::Lines { last } => {
                if *last != texts {
                    printer.human(&format!("---\n{}\n", texts.join("\n")))?;
                    *last = texts;
                }
            }
            Progress::Bars { bars, .. } => {
                for (bar, (line, text)) in bars.iter().zip(lines.iter().zip(texts)) {
                    if line.satisfied() {
                        bar.set_message(format!("✓ {text}"));
                    } else {
                        bar.set_message(text);
                    }
                }
            }
        }
        Ok(())
    }

    /// Ends the display, leaving the final lines in the output.
    pub fn finish(&mut self, printer: &mut Printer<'_>, lines: &[Line]) -> io::Result<()> {
        if let Progress::Bars { multi, bars } = self {
            for bar in bars.iter() {
                bar.finish_and_clear();
            }
            multi.clear()?;
            let texts: Vec<String> = lines.iter().map(Line::text).collect();
            printer.human(&format!("---\n{}\n", texts.join("\n")))?;
        } else {
            self.show(printer, lines)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_cells_read_like_the_seed() {
        assert_eq!(gpus(1, Some("nvidia-h100-80gb")), "1x nvidia-h100-80gb");
        assert_eq!(gpus(2, None), "2x GPU");
        assert_eq!(gpus(0, Some("x")), "-");
    }
}
