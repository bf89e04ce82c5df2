//! `kubectl s2z defrag NODE --abort`: undo a defrag without losing serving capacity.
//!
//! Each orphan whose ReplicaSet still exists gets its `pod-template-hash` back; the ReplicaSet
//! adopts it and, now one pod over, removes its lowest-ranked pod (an unscheduled or not-ready
//! replacement before a ready pod), so the ready count never dips. An orphan whose ReplicaSet is
//! gone cannot be handed back: it is deleted, but only once its revision serves its capacity
//! without it. The abort ends by checking that no orphan is left.

use serde::Serialize;
use tokio::time::Instant;

use k8s_openapi::api::apps::v1::ReplicaSet;
use kube::api::{Api, ListParams};
use s2z_core::defrag_plan::{
    CORDONED_BY_S2Z, DEFRAG_ORPHAN_LABEL, NODE_CORDON_ANNOTATION, node_label_value,
};

use super::act::{self, PodOutcome};
use super::args::DefragArgs;
use super::error::{DefragError, Outcome, is_status};
use super::interrupt::Interrupt;
use super::inventory::{self, NodeFacts, PodFacts};
use super::output::{API_VERSION, Printer};
use super::prompt::confirm;
use super::wait::{self, End, Line, Watched, pending};
use crate::client::{Cluster, Req, Shape, list_all};

/// What abort does with one orphan.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    /// Restore its label; its ReplicaSet adopts it.
    HandBack,
    /// Delete it once its revision has capacity without it; the reason its owner cannot take it.
    Surplus(String),
}

/// The result of `--abort` as a document.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AbortReport {
    /// [`API_VERSION`].
    pub api_version: &'static str,
    /// `DefragAbortReport`.
    pub kind: &'static str,
    /// The node.
    pub node: String,
    /// DryRun, Aborted, TimedOut or Interrupted.
    pub outcome: &'static str,
    /// s2z uncordoned the node.
    pub uncordoned: bool,
    /// Pods handed back to their ReplicaSet.
    pub handed_back: Vec<String>,
    /// Surplus orphans deleted once capacity was back.
    pub deleted: Vec<String>,
    /// Pods left alone, with the reason.
    pub skipped: Vec<String>,
    /// Orphans still left (empty on success).
    pub left: Vec<String>,
}

/// Live pods orphaned by a defrag of `node`, cluster-wide.
pub async fn orphans_of(cluster: &Cluster, node: &str) -> Result<Vec<PodFacts>, DefragError> {
    let req = Req::new("list", "pods");
    let lp =
        ListParams::default().labels(&format!("{DEFRAG_ORPHAN_LABEL}={}", node_label_value(node)));
    let pods: Vec<k8s_openapi::api::core::v1::Pod> =
        list_all(cluster, &req, "/api/v1/pods", &lp, Shape::Full)
            .await
            .map_err(DefragError::from)?;
    Ok(pods
        .iter()
        .map(PodFacts::from_pod)
        .filter(|p| p.orphan.as_ref().is_some_and(|o| o.node == node))
        .collect())
}

/// Whether the orphan's ReplicaSet still exists and can adopt it.
async fn step_for(cluster: &Cluster, pod: &PodFacts) -> Result<Step, DefragError> {
    let Some(record) = &pod.orphan else {
        return Ok(Step::Surplus("no s2z record".into()));
    };
    if record.owner.is_empty() || record.hash.is_empty() {
        return Ok(Step::Surplus("its ReplicaSet was not recorded".into()));
    }
    let req = Req::new("get", "replicasets.apps")
        .named(&record.owner)
        .in_namespace(&pod.namespace);
    let rs = match Api::<ReplicaSet>::namespaced(cluster.client.clone(), &pod.namespace)
        .get(&record.owner)
        .await
    {
        Ok(rs) => rs,
        Err(e) if is_status(&e, 404) => {
            return Ok(Step::Surplus(format!(
                "ReplicaSet {} is gone",
                record.owner
            )));
        }
        Err(e) => return Err(DefragError::api(cluster, &req, e)),
    };
    if record.owner_uid.is_some() && rs.metadata.uid != record.owner_uid {
        return Ok(Step::Surplus(format!(
            "ReplicaSet {} was recreated",
            record.owner
        )));
    }
    if rs.metadata.deletion_timestamp.is_some() {
        return Ok(Step::Surplus(format!(
            "ReplicaSet {} is being deleted",
            record.owner
        )));
    }
    Ok(Step::HandBack)
}

/// Runs the abort.
pub async fn run(
    cluster: &Cluster,
    node_name: &str,
    args: &DefragArgs,
    printer: &mut Printer<'_>,
) -> Result<Outcome, DefragError> {
    let node = NodeFacts::from_node(&inventory::node(cluster, node_name).await?);
    let orphans = orphans_of(cluster, node_name).await?;
    if orphans.is_empty() && node.defrag_started().is_none() {
        return Err(DefragError::NothingToDo {
            what: format!("abort the defrag of node/{node_name}"),
            why: "no pod orphaned by s2z and no s2z.dev/defrag-started-at annotation on the node"
                .into(),
            hint: "`kubectl s2z defrag --list` shows every orphan left by defrag".into(),
        });
    }
    let mut steps = Vec::new();
    for pod in orphans {
        let step = step_for(cluster, &pod).await?;
        steps.push((pod, step));
    }
    let mut report = AbortReport {
        api_version: API_VERSION,
        kind: "DefragAbortReport",
        node: node_name.into(),
        outcome: "DryRun",
        ..AbortReport::default()
    };

    let ours = node
        .annotations
        .get(NODE_CORDON_ANNOTATION)
        .is_some_and(|v| v == CORDONED_BY_S2Z);
    let mut plan = format!("Abort the defrag of node {node_name}:\n");
    plan.push_str(&if ours {
        "  - uncordon the node (s2z cordoned it)\n".to_string()
    } else if node.unschedulable {
        "  - leave the node cordoned (it was cordoned before the defrag started)\n".to_string()
    } else {
        "  - the node is schedulable already\n".to_string()
    });
    for (pod, step) in &steps {
        let (owner, hash) = pod
            .orphan
            .as_ref()
            .map(|o| (o.owner.as_str(), o.hash.as_str()))
            .unwrap_or_default();
        plan.push_str(&match step {
            Step::HandBack => format!(
                "  - hand {} back to ReplicaSet {owner} (restore pod-template-hash={hash}); it removes one surplus pod, a not-ready replacement first\n",
                pod.key(),
            ),
            Step::Surplus(why) => format!(
                "  - delete {} once revision {} serves its capacity without it ({why})\n",
                pod.key(),
                pod.revision.as_deref().unwrap_or("?")
            ),
        });
    }
    printer.human(&plan)?;
    if args.dry_run {
        printer.line("\nDry run: nothing was changed.")?;
        printer.document(&report)?;
        return Ok(Outcome::DryRun);
    }
    confirm(args, printer, "Proceed with abort?", "abort")?;

    let mut interrupt = Interrupt::install();
    let deadline = args.wait_limit().map(|t| Instant::now() + t);
    report.uncordoned = act::uncordon(cluster, &node).await?;
    printer.line(&if report.uncordoned {
        format!("Node {node_name} uncordoned.")
    } else {
        format!("Node {node_name}: defrag marks removed; cordon left as it was.")
    })?;

    let mut watch_uids = Vec::new();
    for (pod, _) in steps.iter().filter(|(_, s)| *s == Step::HandBack) {
        if interrupt.fired() {
            return interrupted(printer, &mut report, node_name);
        }
        match act::restore(cluster, pod).await? {
            PodOutcome::Done => {
                let owner = pod
                    .orphan
                    .as_ref()
                    .map(|o| o.owner.clone())
                    .unwrap_or_default();
                printer.line(&format!(
                    "Pod {} handed back to ReplicaSet {owner}",
                    pod.key()
                ))?;
                report.handed_back.push(pod.key());
                watch_uids.push(pod.uid.clone());
            }
            PodOutcome::Skipped(why) => {
                printer.line(&format!("Pod {} not handed back: {why}", pod.key()))?;
                report.skipped.push(format!("{}: {why}", pod.key()));
            }
        }
    }

    let surplus: Vec<&PodFacts> = steps
        .iter()
        .filter(|(_, s)| matches!(s, Step::Surplus(_)))
        .map(|(p, _)| p)
        .collect();
    if !surplus.is_empty() {
        let mut watched: Vec<Watched> = Vec::new();
        for pod in &surplus {
            let Some(revision) = pod.revision.clone() else {
                continue;
            };
            if !watched
                .iter()
                .any(|w| w.namespace == pod.namespace && w.revision == revision)
            {
                watched.push(Watched {
                    namespace: pod.namespace.clone(),
                    revision,
                    initial_replicas: pod
                        .orphan
                        .as_ref()
                        .and_then(|o| o.initial_replicas)
                        .unwrap_or(0),
                });
            }
        }
        printer.line(
            "Waiting until the surplus orphans' revisions serve their capacity without them...",
        )?;
        let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let (end, tracker) = wait::until(
            cluster,
            node_name,
            &watched,
            remaining,
            &mut interrupt,
            |t| Ok(t.lines(true).iter().all(Line::satisfied)),
        )
        .await?;
        match end {
            End::Done => {}
            End::TimedOut => {
                return timed_out(printer, &mut report, node_name, args, &tracker.lines(true));
            }
            End::Interrupted => return interrupted(printer, &mut report, node_name),
        }
        for pod in surplus {
            match act::delete(cluster, pod).await? {
                PodOutcome::Done => {
                    printer.line(&format!(
                        "Pod {} deleted: capacity is back without it",
                        pod.key()
                    ))?;
                    report.deleted.push(pod.key());
                    watch_uids.push(pod.uid.clone());
                }
                PodOutcome::Skipped(why) => report.skipped.push(format!("{}: {why}", pod.key())),
            }
        }
    }

    // Verify: every handed-back pod is adopted (or removed by its ReplicaSet as the surplus) and
    // every deleted pod is gone.
    let remaining = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let (end, tracker) = wait::until(cluster, node_name, &[], remaining, &mut interrupt, |t| {
        Ok(watch_uids
            .iter()
            .all(|uid| t.pods.get(uid).is_none_or(|p| p.controlled || !p.live)))
    })
    .await?;
    let unadopted: Vec<String> = watch_uids
        .iter()
        .filter_map(|uid| tracker.pods.get(uid))
        .filter(|p| p.live && !p.controlled)
        .map(|p| format!("{}/{}", p.namespace, p.name))
        .collect();
    match end {
        End::Done => {}
        End::TimedOut => {
            report.left = unadopted.clone();
            report.outcome = "TimedOut";
            printer.document(&report)?;
            return Err(DefragError::Timeout {
                what: format!("see every orphan of node/{node_name} adopted"),
                pending: format!("not adopted yet: {}", unadopted.join(", ")),
                waited: args.timeout,
                node: node_name.into(),
            });
        }
        End::Interrupted => return interrupted(printer, &mut report, node_name),
    }
    let left: Vec<String> = orphans_of(cluster, node_name)
        .await?
        .iter()
        .filter(|p| !p.terminating)
        .map(PodFacts::key)
        .collect();
    if !left.is_empty() {
        report.left = left.clone();
        report.outcome = "Incomplete";
        printer.document(&report)?;
        return Err(DefragError::Leftover {
            node: node_name.into(),
            left: left.join(", "),
        });
    }
    printer.line(&format!(
        "Abort complete: {} pod(s) handed back, {} surplus pod(s) deleted, no orphan left.",
        report.handed_back.len(),
        report.deleted.len()
    ))?;
    report.outcome = "Aborted";
    printer.document(&report)?;
    Ok(Outcome::Aborted)
}

fn interrupted(
    printer: &mut Printer<'_>,
    report: &mut AbortReport,
    node: &str,
) -> Result<Outcome, DefragError> {
    printer.line(&format!(
        "Interrupted: the pods handed back so far stay handed back. Finish with: kubectl s2z defrag {node} --abort --yes"
    ))?;
    report.outcome = "Interrupted";
    printer.document(report)?;
    Err(DefragError::Interrupted {
        what: "abort".into(),
        node: node.into(),
    })
}

fn timed_out(
    printer: &mut Printer<'_>,
    report: &mut AbortReport,
    node: &str,
    args: &DefragArgs,
    lines: &[Line],
) -> Result<Outcome, DefragError> {
    report.outcome = "TimedOut";
    printer.document(report)?;
    Err(DefragError::Timeout {
        what: format!("see capacity back for the surplus orphans of node/{node}"),
        pending: pending(lines),
        waited: args.timeout,
        node: node.into(),
    })
}
