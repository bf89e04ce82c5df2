//! `defrag --list`: orphans left behind anywhere in the cluster (an orphan has no owner, so it is
//! not garbage-collected with its revision), and `defrag --candidates`: GPU nodes ranked by how
//! cheaply they can be emptied.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use s2z_core::defrag::{NodeLoad, PodClass, candidate_score};
use s2z_core::defrag_plan::{DEFRAG_ORPHAN_LABEL, node_label_value};
use serde::Serialize;

use super::error::{DefragError, Outcome};
use super::inventory::{self, NodeFacts, PodFacts, add_budget_blockers};
use super::output::{API_VERSION, Printer};
use crate::client::{Cluster, Req, Shape, list_all};
use crate::output::{Cell, Style, age_between, table};

/// One leftover orphan.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrphanRow {
    /// Namespace.
    pub namespace: String,
    /// Pod.
    pub name: String,
    /// The node it was orphaned on.
    pub node: String,
    /// cordoned, schedulable (defrag aborted by hand?) or gone.
    pub node_state: String,
    /// Its revision.
    pub revision: Option<String>,
    /// The ReplicaSet it came from.
    pub owner: String,
    /// Phase or Terminating.
    pub status: String,
    /// When it was orphaned.
    pub orphaned_at: Option<String>,
}

/// `--list` as a document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrphanList {
    /// [`API_VERSION`].
    pub api_version: &'static str,
    /// `DefragOrphanList`.
    pub kind: &'static str,
    /// The orphans.
    pub items: Vec<OrphanRow>,
}

/// Prints the orphans of every node, or of `node`.
pub async fn orphans(
    cluster: &Cluster,
    node: Option<&str>,
    printer: &mut Printer<'_>,
) -> Result<Outcome, DefragError> {
    let selector = match node {
        Some(n) => format!("{DEFRAG_ORPHAN_LABEL}={}", node_label_value(n)),
        None => DEFRAG_ORPHAN_LABEL.to_string(),
    };
    let pods: Vec<Pod> = list_all(
        cluster,
        &Req::new("list", "pods"),
        "/api/v1/pods",
        &ListParams::default().labels(&selector),
        Shape::Full,
    )
    .await
    .map_err(DefragError::from)?;
    let facts: Vec<PodFacts> = pods
        .iter()
        .map(PodFacts::from_pod)
        .filter(|p| {
            p.orphan
                .as_ref()
                .is_some_and(|o| node.is_none_or(|n| o.node == n))
        })
        .collect();
    let mut node_states: BTreeMap<String, String> = BTreeMap::new();
    for p in &facts {
        let Some(record) = &p.orphan else { continue };
        if node_states.contains_key(&record.node) {
            continue;
        }
        let state = match inventory::node(cluster, &record.node).await {
            Ok(n) if NodeFacts::from_node(&n).unschedulable => "cordoned",
            Ok(_) => "schedulable",
            Err(DefragError::UnknownNode(_)) => "gone",
            Err(e) => return Err(e),
        };
        node_states.insert(record.node.clone(), state.into());
    }
    let items: Vec<OrphanRow> = facts
        .iter()
        .filter_map(|p| {
            let record = p.orphan.as_ref()?;
            Some(OrphanRow {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                node: record.node.clone(),
                node_state: node_states.get(&record.node).cloned().unwrap_or_default(),
                revision: p.revision.clone(),
                owner: record.owner.clone(),
                status: p.status.clone(),
                orphaned_at: record.orphaned_at.clone(),
            })
        })
        .collect();
    if printer.structured() {
        printer.document(&OrphanList {
            api_version: API_VERSION,
            kind: "DefragOrphanList",
            items,
        })?;
        return Ok(Outcome::Listed);
    }
    if items.is_empty() {
        printer.line("No pods orphaned by s2z defrag.")?;
        return Ok(Outcome::Listed);
    }
    let now = Utc::now();
    let rows = items
        .iter()
        .map(|o| {
            let age = o
                .orphaned_at
                .as_deref()
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                .map_or("?".into(), |t| age_between(t.with_timezone(&Utc), now));
            let state_style = if o.node_state == "cordoned" {
                Style::Warn
            } else {
                Style::Bad
            };
            vec![
                Cell::plain(format!("{}/{}", o.namespace, o.name)),
                Cell::plain(o.node.clone()),
                Cell::styled(o.node_state.clone(), state_style),
                Cell::plain(o.revision.clone().unwrap_or_else(|| "-".into())),
                Cell::plain(o.owner.clone()),
                Cell::plain(o.status.clone()),
                Cell::plain(age),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "pod",
            "node",
            "node_state",
            "revision",
            "from_replicaset",
            "status",
            "orphaned",
        ],
        rows,
        printer.color,
    );
    let nodes: Vec<&String> = node_states.keys().collect();
    text.push_str(&format!(
        "\nResume with `kubectl s2z defrag NODE --yes`, or hand them back with `kubectl s2z defrag NODE --abort --yes` ({}).\n",
        nodes
            .iter()
            .map(|n| format!("NODE={n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    printer.human(&text)?;
    Ok(Outcome::Listed)
}

/// One ranked node.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateRow {
    /// 1 = cheapest to empty.
    pub rank: usize,
    /// Node.
    pub node: String,
    /// GPU model.
    pub gpu_type: Option<String>,
    /// GPUs held by its pods.
    pub gpus_allocated: u32,
    /// Allocatable GPUs.
    pub gpus_allocatable: u32,
    /// The cost, field by field.
    #[serde(flatten)]
    pub load: NodeLoad,
    /// Already cordoned.
    pub cordoned: bool,
}

/// `--candidates` as a document.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateList {
    /// [`API_VERSION`].
    pub api_version: &'static str,
    /// `DefragCandidateList`.
    pub kind: &'static str,
    /// Cheapest first.
    pub items: Vec<CandidateRow>,
}

/// Ranks the GPU nodes (matching `selector`) by how cheaply they can be emptied: no blockers
/// first, then fewest pods needing a human, fewest GPUs to find room for, fewest pods to move.
pub async fn candidates(
    cluster: &Cluster,
    selector: Option<&str>,
    printer: &mut Printer<'_>,
) -> Result<Outcome, DefragError> {
    let mut lp = ListParams::default();
    if let Some(s) = selector {
        lp = lp.labels(s);
    }
    let nodes: Vec<Node> = list_all(
        cluster,
        &Req::new("list", "nodes"),
        "/api/v1/nodes",
        &lp,
        Shape::Full,
    )
    .await
    .map_err(DefragError::from)?;
    let pod_lp = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
    let (pods, budgets) = futures::try_join!(
        async {
            list_all::<Pod>(
                cluster,
                &Req::new("list", "pods"),
                "/api/v1/pods",
                &pod_lp,
                Shape::Full,
            )
            .await
            .map_err(DefragError::from)
        },
        inventory::budgets(cluster)
    )?;
    let mut by_node: BTreeMap<String, Vec<PodFacts>> = BTreeMap::new();
    for pod in &pods {
        if let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) {
            by_node
                .entry(node)
                .or_default()
                .push(PodFacts::from_pod(pod));
        }
    }
    let mut rows: Vec<CandidateRow> = nodes
        .iter()
        .map(NodeFacts::from_node)
        .filter(|n| n.gpus > 0 || n.gpu_type.is_some())
        .map(|n| {
            let mut pods = by_node.remove(&n.name).unwrap_or_default();
            add_budget_blockers(&mut pods, &budgets);
            let mut load = NodeLoad::default();
            for p in &pods {
                // An orphan of a defrag in progress is as cheap as the pod it was.
                let blockers = if p.class == PodClass::Knative {
                    0
                } else {
                    p.blockers.len()
                };
                load.add(&p.class, p.gpus, blockers);
            }
            CandidateRow {
                rank: 0,
                gpu_type: n.gpu_type.clone(),
                gpus_allocated: pods.iter().map(|p| p.gpus).fold(0, u32::saturating_add),
                gpus_allocatable: n.gpus,
                load,
                cordoned: n.unschedulable,
                node: n.name,
            }
        })
        .collect();
    rows.sort_by(|a, b| {
        candidate_score(&a.load)
            .cmp(&candidate_score(&b.load))
            .then_with(|| a.node.cmp(&b.node))
    });
    for (i, row) in rows.iter_mut().enumerate() {
        row.rank = i + 1;
    }
    if printer.structured() {
        printer.document(&CandidateList {
            api_version: API_VERSION,
            kind: "DefragCandidateList",
            items: rows,
        })?;
        return Ok(Outcome::Listed);
    }
    if rows.is_empty() {
        printer.line("No GPU nodes found.")?;
        return Ok(Outcome::Listed);
    }
    let cells = rows
        .iter()
        .map(|r| {
            vec![
                Cell::plain(r.rank.to_string()),
                Cell::plain(r.node.clone()),
                Cell::plain(r.gpu_type.clone().unwrap_or_else(|| "-".into())),
                Cell::plain(format!("{}/{}", r.gpus_allocated, r.gpus_allocatable)),
                Cell::plain(r.load.knative_pods.to_string()),
                if r.load.left_for_drain > 0 {
                    Cell::styled(r.load.left_for_drain.to_string(), Style::Warn)
                } else {
                    Cell::plain("0")
                },
                if r.load.blockers > 0 {
                    Cell::styled(r.load.blockers.to_string(), Style::Bad)
                } else {
                    Cell::plain("0")
                },
                Cell::plain(if r.cordoned {
                    "cordoned"
                } else {
                    "schedulable"
                }),
            ]
        })
        .collect();
    let mut text = table(
        &[
            "rank",
            "node",
            "gpu_type",
            "gpus",
            "knative_pods",
            "left_for_drain",
            "blockers",
            "state",
        ],
        cells,
        printer.color,
    );
    text.push_str("\nCheapest first: no blockers, then fewest pods left for the drain, fewest GPUs to re-place, fewest pods to move.\n`kubectl s2z defrag NODE --dry-run` shows the plan for one node.\n");
    printer.human(&text)?;
    Ok(Outcome::Listed)
}
