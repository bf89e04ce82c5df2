//! Label, annotation and resource-key names shared by the webhook, the controller and the plugin.
//!
//! Keeping every key in one place means a typo is a compile error rather than a silently ignored
//! annotation.

/// Namespace label naming the org a namespace belongs to.
pub const ORG_LABEL: &str = "s2z.dev/org";

/// Label KServe puts on every object of an InferenceService; its presence makes a revision a model.
pub const MODEL_LABEL: &str = "serving.kserve.io/inferenceservice";

/// KServe component label (`predictor`, `transformer`, `explainer`).
pub const KSERVE_COMPONENT_LABEL: &str = "component";

/// Revision annotation holding, as a JSON object, the user's own `autoscaling.knative.dev/*`
/// annotations from before s2z first touched the revision, so they can be restored exactly.
pub const DECLARED_ANNOTATION: &str = "s2z.dev/declared";

/// Org annotation (RFC 3339) written by `kubectl s2z sleep`: a request to go dormant now.
pub const SLEEP_ANNOTATION: &str = "s2z.dev/sleep-requested-at";

/// Org annotation (RFC 3339) written by `kubectl s2z sweep`: a request that the controller
/// evaluate the org now and say so in `status.lastEvaluatedAt`. The plugin writes it and the
/// controller reads it, so both take it from here.
pub const RECONCILE_ANNOTATION: &str = "s2z.dev/reconcile-requested-at";

/// Pod label s2z puts on a pod it orphaned during defrag, naming the node being emptied; lets an
/// interrupted defrag be resumed or aborted without guessing which pods are ours.
pub const DEFRAG_ORPHAN_LABEL: &str = "s2z.dev/defrag-node";

/// Prefix shared by every Knative autoscaling annotation.
pub const AUTOSCALING_PREFIX: &str = "autoscaling.knative.dev/";

/// Lower bound on the number of pods.
pub const MIN_SCALE: &str = "autoscaling.knative.dev/min-scale";
/// Upper bound on the number of pods; `0` means unlimited.
pub const MAX_SCALE: &str = "autoscaling.knative.dev/max-scale";
/// Number of pods a new revision starts with.
pub const INITIAL_SCALE: &str = "autoscaling.knative.dev/initial-scale";
/// Minimum number of pods when scaling up from zero.
pub const ACTIVATION_SCALE: &str = "autoscaling.knative.dev/activation-scale";
/// How long the last pod is kept after the revision goes idle (Modal's `scaledown_window`).
pub const RETENTION: &str = "autoscaling.knative.dev/scale-to-zero-pod-retention-period";
/// Delay before any scale-down decision is applied.
pub const SCALE_DOWN_DELAY: &str = "autoscaling.knative.dev/scale-down-delay";
/// Autoscaler class (`kpa.autoscaling.knative.dev` or `hpa.autoscaling.knative.dev`).
pub const CLASS: &str = "autoscaling.knative.dev/class";

/// Legacy camelCase spelling of [`MIN_SCALE`]; Knative still reads it when the kebab key is absent.
pub const MIN_SCALE_CAMEL: &str = "autoscaling.knative.dev/minScale";
/// Legacy camelCase spelling of [`MAX_SCALE`].
pub const MAX_SCALE_CAMEL: &str = "autoscaling.knative.dev/maxScale";
/// Legacy camelCase spelling of [`INITIAL_SCALE`].
pub const INITIAL_SCALE_CAMEL: &str = "autoscaling.knative.dev/initialScale";
/// Legacy camelCase spelling of [`RETENTION`].
pub const RETENTION_CAMEL: &str = "autoscaling.knative.dev/scaleToZeroPodRetentionPeriod";
/// Legacy camelCase spelling of [`SCALE_DOWN_DELAY`].
pub const SCALE_DOWN_DELAY_CAMEL: &str = "autoscaling.knative.dev/scaleDownDelay";

/// Spellings of min-scale in Knative's lookup order: the first one present wins.
pub const MIN_SCALE_KEYS: [&str; 2] = [MIN_SCALE, MIN_SCALE_CAMEL];
/// Spellings of max-scale in Knative's lookup order.
pub const MAX_SCALE_KEYS: [&str; 2] = [MAX_SCALE, MAX_SCALE_CAMEL];
/// Spellings of initial-scale in Knative's lookup order.
pub const INITIAL_SCALE_KEYS: [&str; 2] = [INITIAL_SCALE, INITIAL_SCALE_CAMEL];
/// Spellings of the retention period in Knative's lookup order.
pub const RETENTION_KEYS: [&str; 2] = [RETENTION, RETENTION_CAMEL];
/// Spellings of the scale-down delay in Knative's lookup order.
pub const SCALE_DOWN_DELAY_KEYS: [&str; 2] = [SCALE_DOWN_DELAY, SCALE_DOWN_DELAY_CAMEL];

/// Revision name label on PodAutoscalers, Deployments and pods.
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// Revision UID label; the Deployment's selector.
pub const REVISION_UID_LABEL: &str = "serving.knative.dev/revisionUID";
/// Configuration name label on revisions.
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
/// Knative Service name label on revisions.
pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
/// Routing state label on revisions: `active`, `pending` or `reserve`. A `reserve` revision
/// gets no traffic, and Knative scales it to zero whatever its min-scale.
pub const ROUTING_STATE_LABEL: &str = "serving.knative.dev/routingState";
/// Label the ReplicaSet adds to its pods; removing it orphans the pod (seed 002).
pub const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";

/// Release label on the `knative-serving` namespace and controller (current releases).
pub const KNATIVE_VERSION_LABEL: &str = "app.kubernetes.io/version";
/// Release label used by older Knative releases.
pub const KNATIVE_RELEASE_LABEL: &str = "serving.knative.dev/release";

/// Cluster-autoscaler pod annotation; `"false"` forbids evicting the pod.
pub const SAFE_TO_EVICT_ANNOTATION: &str = "cluster-autoscaler.kubernetes.io/safe-to-evict";
/// Karpenter pod annotation; `"true"` forbids voluntary disruption.
pub const DO_NOT_DISRUPT_ANNOTATION: &str = "karpenter.sh/do-not-disrupt";
/// Older Karpenter spelling of [`DO_NOT_DISRUPT_ANNOTATION`].
pub const DO_NOT_EVICT_ANNOTATION: &str = "karpenter.sh/do-not-evict";
/// Annotation the kubelet puts on mirror pods of static pods.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Returns the value of the first present key of `keys`, the way Knative resolves spellings.
pub fn first_present<'a, V: AsRef<str>>(
    map: &'a std::collections::BTreeMap<String, V>,
    keys: &[&'a str],
) -> Option<(&'a str, &'a str)> {
    keys.iter()
        .find_map(|k| map.get(*k).map(|v| (*k, v.as_ref())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn every_autoscaling_key_has_the_prefix() {
        for key in MIN_SCALE_KEYS
            .iter()
            .chain(&MAX_SCALE_KEYS)
            .chain(&INITIAL_SCALE_KEYS)
            .chain(&RETENTION_KEYS)
            .chain(&SCALE_DOWN_DELAY_KEYS)
            .chain(&[ACTIVATION_SCALE, CLASS])
        {
            assert!(key.starts_with(AUTOSCALING_PREFIX), "{key}");
        }
    }

    #[test]
    fn kebab_spelling_wins_over_camel_case() {
        let map: BTreeMap<String, String> = [
            (MIN_SCALE_CAMEL.to_string(), "2".to_string()),
            (MIN_SCALE.to_string(), "5".to_string()),
        ]
        .into();
        assert_eq!(first_present(&map, &MIN_SCALE_KEYS), Some((MIN_SCALE, "5")));
    }

    #[test]
    fn camel_case_is_read_when_alone() {
        let map: BTreeMap<String, String> = [(MIN_SCALE_CAMEL.to_string(), "2".to_string())].into();
        assert_eq!(
            first_present(&map, &MIN_SCALE_KEYS),
            Some((MIN_SCALE_CAMEL, "2"))
        );
        assert_eq!(first_present(&map, &MAX_SCALE_KEYS), None);
    }
}
