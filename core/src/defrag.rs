//! Arithmetic and classification behind `kubectl s2z defrag` (seed 002's safe-defrag workflow).
//!
//! Orphaned pods keep serving and keep being counted in the PodAutoscaler's scale, while their
//! ReplicaSet starts replacements elsewhere. A node is safe to drain once every revision is
//! over-provisioned by the number of its pods on that node.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::{Deserialize, Serialize};

use crate::labels::{
    DO_NOT_DISRUPT_ANNOTATION, DO_NOT_EVICT_ANNOTATION, MIRROR_POD_ANNOTATION, REVISION_LABEL,
    SAFE_TO_EVICT_ANNOTATION,
};

/// Seed 002's rule: the revision can lose its `on_node` pods once the autoscaler's scale covers
/// them on top of either the replica count at the start (static or scaled-up models) or the
/// current replica count (the model scaled down while defrag was running).
pub fn revision_satisfied(
    current_kpa_scale: i64,
    initial_replicas: i64,
    current_replicas: i64,
    on_node: i64,
) -> bool {
    extra_needed(
        current_kpa_scale,
        initial_replicas,
        current_replicas,
        on_node,
    ) == 0
}

/// How many more ready pods the revision needs before it is satisfied; 0 once it is.
pub fn extra_needed(
    current_kpa_scale: i64,
    initial_replicas: i64,
    current_replicas: i64,
    on_node: i64,
) -> i64 {
    let wanted = initial_replicas
        .saturating_add(on_node)
        .min(current_replicas.saturating_add(on_node));
    wanted.saturating_sub(current_kpa_scale).max(0)
}

/// One revision's defrag progress, as reported line by line and in machine-readable output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionProgress {
    /// Revision name.
    pub revision: String,
    /// The PodAutoscaler's current scale (ready pods, orphans included).
    pub current_kpa_scale: i64,
    /// ReplicaSet replicas when defrag started.
    pub initial_replicas: i64,
    /// ReplicaSet replicas now.
    pub current_replicas: i64,
    /// Pods of the revision on the node being emptied.
    pub on_node: i64,
}

impl RevisionProgress {
    /// See [`revision_satisfied`].
    pub fn satisfied(&self) -> bool {
        self.extra_needed() == 0
    }

    /// See [`extra_needed`].
    pub fn extra_needed(&self) -> i64 {
        extra_needed(
            self.current_kpa_scale,
            self.initial_replicas,
            self.current_replicas,
            self.on_node,
        )
    }
}

impl fmt::Display for RevisionProgress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Revision {} - {} extra needed - current_scale={} replicas={} initial_scale={}",
            self.revision,
            self.extra_needed(),
            self.current_kpa_scale,
            self.current_replicas,
            self.initial_replicas
        )
    }
}

/// What defrag does with a pod on the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PodClass {
    /// A Knative revision pod: orphaned so that a replacement starts elsewhere first.
    Knative,
    /// Runs on every node; ignored.
    DaemonSet,
    /// A static pod's mirror; ignored.
    Mirror,
    /// Anything else: reported and left to the human who drains the node.
    LeftForDrain(String),
}

/// Classifies a pod from its owners' kinds, labels and annotations.
///
/// A pod with a revision label and no owner counts as Knative: it is one s2z orphaned earlier,
/// which a resumed defrag must keep tracking.
pub fn classify<S: AsRef<str>>(
    owner_kinds: &[S],
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> PodClass {
    let owned_by = |kind: &str| owner_kinds.iter().any(|k| k.as_ref() == kind);
    if annotations.contains_key(MIRROR_POD_ANNOTATION) {
        return PodClass::Mirror;
    }
    if owned_by("DaemonSet") {
        return PodClass::DaemonSet;
    }
    if labels.contains_key(REVISION_LABEL) && (owner_kinds.is_empty() || owned_by("ReplicaSet")) {
        return PodClass::Knative;
    }
    match owner_kinds.first() {
        None => PodClass::LeftForDrain("no controller: a drain deletes it for good".to_string()),
        Some(kind) => PodClass::LeftForDrain(format!(
            "owned by a {}: the drain reschedules it",
            kind.as_ref()
        )),
    }
}

/// Something that makes draining a pod unsafe or impossible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Blocker {
    /// `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"`.
    SafeToEvictFalse,
    /// `karpenter.sh/do-not-disrupt: "true"` (or the older `do-not-evict`).
    DoNotDisrupt,
    /// A PodDisruptionBudget that currently allows no disruption.
    Pdb(String),
    /// No controller would recreate the pod.
    NoController,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::SafeToEvictFalse => write!(f, "{SAFE_TO_EVICT_ANNOTATION}=false"),
            Blocker::DoNotDisrupt => write!(f, "{DO_NOT_DISRUPT_ANNOTATION}=true"),
            Blocker::Pdb(name) => write!(f, "PodDisruptionBudget {name} allows no disruption"),
            Blocker::NoController => f.write_str("no controller would recreate it"),
        }
    }
}

/// The annotation-borne blockers of a pod; PDBs and missing controllers need other objects and
/// are the caller's to add.
pub fn pod_blockers(annotations: &BTreeMap<String, String>) -> Vec<Blocker> {
    let says = |key: &str, value: &str| {
        annotations
            .get(key)
            .is_some_and(|v| v.trim().eq_ignore_ascii_case(value))
    };
    let mut blockers = Vec::new();
    if says(SAFE_TO_EVICT_ANNOTATION, "false") {
        blockers.push(Blocker::SafeToEvictFalse);
    }
    if says(DO_NOT_DISRUPT_ANNOTATION, "true") || says(DO_NOT_EVICT_ANNOTATION, "true") {
        blockers.push(Blocker::DoNotDisrupt);
    }
    blockers
}

/// What emptying a node involves, summed over its pods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeLoad {
    /// Knative pods to orphan and replace.
    pub knative_pods: u32,
    /// GPUs those pods hold, each needing a free GPU elsewhere.
    pub gpus: u32,
    /// Pods a human has to deal with during the drain.
    pub left_for_drain: u32,
    /// Blockers found on the node's pods.
    pub blockers: u32,
}

impl NodeLoad {
    /// Adds one pod.
    pub fn add(&mut self, class: &PodClass, gpus: u32, blockers: usize) {
        match class {
            PodClass::Knative => {
                self.knative_pods = self.knative_pods.saturating_add(1);
                self.gpus = self.gpus.saturating_add(gpus);
            }
            PodClass::LeftForDrain(_) => {
                self.left_for_drain = self.left_for_drain.saturating_add(1)
            }
            PodClass::DaemonSet | PodClass::Mirror => {}
        }
        self.blockers = self
            .blockers
            .saturating_add(u32::try_from(blockers).unwrap_or(u32::MAX));
    }
}

/// How costly a node is to empty; lower sorts first and is cheaper.
///
/// Compared field by field: a blocked node is worse than any unblocked one, then pods needing a
/// human, then GPUs to find room for (the scarce resource), then pods to replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CandidateScore {
    /// Blockers on the node.
    pub blockers: u32,
    /// Pods left for the drain.
    pub left_for_drain: u32,
    /// GPUs to move.
    pub gpus: u32,
    /// Knative pods to move.
    pub knative_pods: u32,
}

/// Scores a node for `defrag --rank`: sort ascending to list the cheapest nodes to empty first.
pub fn candidate_score(load: &NodeLoad) -> CandidateScore {
    CandidateScore {
        blockers: load.blockers,
        left_for_drain: load.left_for_drain,
        gpus: load.gpus,
        knative_pods: load.knative_pods,
    }
}

/// Extended resources that count as GPUs.
pub const GPU_RESOURCES: [&str; 3] = ["nvidia.com/gpu", "amd.com/gpu", "gpu.intel.com/i915"];

/// Node labels naming the GPU model, most specific first.
pub const GPU_TYPE_LABELS: [&str; 3] = [
    "nvidia.com/gpu.product",
    "cloud.google.com/gke-accelerator",
    "karpenter.k8s.aws/instance-gpu-name",
];

/// GPUs in a container's requests or limits; GPUs are whole devices, so anything else counts 0.
pub fn gpu_count(resources: &BTreeMap<String, Quantity>) -> u32 {
    GPU_RESOURCES
        .iter()
        .filter_map(|name| resources.get(*name))
        .filter_map(|q| q.0.trim().parse::<u32>().ok())
        .fold(0, u32::saturating_add)
}

/// The GPU model a node advertises, if any.
pub fn gpu_type(node_labels: &BTreeMap<String, String>) -> Option<&str> {
    GPU_TYPE_LABELS
        .iter()
        .find_map(|label| node_labels.get(*label).map(String::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::map;

    #[test]
    fn seed_002_example_needs_one_extra_then_is_safe() {
        // REPLICAS=3 KPA_SCALE=3, one pod on the node.
        assert!(!revision_satisfied(3, 3, 3, 1));
        assert_eq!(extra_needed(3, 3, 3, 1), 1);
        // The replacement became ready: current_scale=4.
        assert!(revision_satisfied(4, 3, 3, 1));
        assert_eq!(extra_needed(4, 3, 3, 1), 0);
    }

    #[test]
    fn scale_down_mid_run_is_satisfied_by_current_replicas() {
        // Started at 3 replicas, the model scaled down to 2 while defrag ran: 2 + 1 orphan.
        assert!(revision_satisfied(3, 3, 2, 1));
        assert!(!revision_satisfied(2, 3, 2, 1));
        assert_eq!(extra_needed(2, 3, 2, 1), 1);
    }

    #[test]
    fn scale_up_mid_run_is_satisfied_by_initial_replicas() {
        // Started at 3, scaled to 5; 4 ready already covers the start plus the orphan.
        assert!(revision_satisfied(4, 3, 5, 1));
        assert!(!revision_satisfied(3, 3, 5, 1));
    }

    #[test]
    fn several_pods_on_the_node() {
        assert_eq!(extra_needed(3, 3, 3, 2), 2);
        assert_eq!(extra_needed(4, 3, 3, 2), 1);
        assert!(revision_satisfied(5, 3, 3, 2));
        assert!(revision_satisfied(7, 3, 3, 2), "over-provisioned is fine");
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert_eq!(
            extra_needed(i64::MIN, i64::MAX, i64::MAX, i64::MAX),
            i64::MAX
        );
        assert!(revision_satisfied(i64::MAX, i64::MAX, i64::MAX, i64::MAX));
        assert!(revision_satisfied(0, 0, 0, 0));
    }

    #[test]
    fn progress_line_matches_the_seed() {
        let mut p = RevisionProgress {
            revision: "bt-deployment-qvr7e9w-00001".into(),
            current_kpa_scale: 3,
            initial_replicas: 3,
            current_replicas: 3,
            on_node: 1,
        };
        assert_eq!(
            p.to_string(),
            "Revision bt-deployment-qvr7e9w-00001 - 1 extra needed - current_scale=3 replicas=3 initial_scale=3"
        );
        assert!(!p.satisfied());
        p.current_kpa_scale = 4;
        assert!(p.satisfied());
    }

    #[test]
    fn classification() {
        let rev = map(&[(REVISION_LABEL, "r-00001")]);
        let none = map(&[]);
        assert_eq!(classify(&["ReplicaSet"], &rev, &none), PodClass::Knative);
        let orphan: [&str; 0] = [];
        assert_eq!(classify(&orphan, &rev, &none), PodClass::Knative);
        assert_eq!(classify(&["DaemonSet"], &none, &none), PodClass::DaemonSet);
        let mirror = map(&[(MIRROR_POD_ANNOTATION, "abc")]);
        assert_eq!(classify(&["Node"], &none, &mirror), PodClass::Mirror);
        assert!(matches!(
            classify(&["StatefulSet".to_string()], &rev, &none),
            PodClass::LeftForDrain(reason) if reason.contains("StatefulSet")
        ));
        assert!(matches!(
            classify(&["ReplicaSet"], &none, &none),
            PodClass::LeftForDrain(_)
        ));
        assert!(matches!(
            classify(&orphan, &none, &none),
            PodClass::LeftForDrain(reason) if reason.contains("no controller")
        ));
    }

    #[test]
    fn blockers_from_annotations() {
        assert!(pod_blockers(&map(&[])).is_empty());
        assert_eq!(
            pod_blockers(&map(&[(SAFE_TO_EVICT_ANNOTATION, "false")])),
            vec![Blocker::SafeToEvictFalse]
        );
        assert!(pod_blockers(&map(&[(SAFE_TO_EVICT_ANNOTATION, "true")])).is_empty());
        assert_eq!(
            pod_blockers(&map(&[(DO_NOT_DISRUPT_ANNOTATION, "true")])),
            vec![Blocker::DoNotDisrupt]
        );
        assert_eq!(
            pod_blockers(&map(&[(DO_NOT_EVICT_ANNOTATION, "True")])),
            vec![Blocker::DoNotDisrupt]
        );
        assert_eq!(
            pod_blockers(&map(&[
                (SAFE_TO_EVICT_ANNOTATION, "false"),
                (DO_NOT_DISRUPT_ANNOTATION, "true")
            ]))
            .len(),
            2
        );
        assert_eq!(
            Blocker::Pdb("web".into()).to_string(),
            "PodDisruptionBudget web allows no disruption"
        );
    }

    #[test]
    fn ranking_prefers_unblocked_then_simple_nodes() {
        let mut empty = NodeLoad::default();
        empty.add(&PodClass::DaemonSet, 0, 0);
        let mut cpu = NodeLoad::default();
        cpu.add(&PodClass::Knative, 0, 0);
        cpu.add(&PodClass::Knative, 0, 0);
        let mut gpu = NodeLoad::default();
        gpu.add(&PodClass::Knative, 1, 0);
        let mut manual = NodeLoad::default();
        manual.add(&PodClass::LeftForDrain("x".into()), 0, 0);
        let mut blocked = NodeLoad::default();
        blocked.add(&PodClass::Knative, 0, 1);

        let mut ranked = [blocked, manual, gpu, cpu, empty];
        ranked.sort_by_key(candidate_score);
        assert_eq!(ranked, [empty, cpu, gpu, manual, blocked]);
    }

    #[test]
    fn gpus() {
        let q = |s: &str| Quantity(s.to_string());
        let resources = BTreeMap::from([
            ("nvidia.com/gpu".to_string(), q("2")),
            ("cpu".to_string(), q("4")),
            ("amd.com/gpu".to_string(), q("junk")),
        ]);
        assert_eq!(gpu_count(&resources), 2);
        assert_eq!(gpu_count(&BTreeMap::new()), 0);
        let node = map(&[("cloud.google.com/gke-accelerator", "nvidia-h100-80gb")]);
        assert_eq!(gpu_type(&node), Some("nvidia-h100-80gb"));
        assert_eq!(gpu_type(&map(&[])), None);
    }
}
