//! KServe InferenceServices, for the tests and benches on the plane that runs real KServe
//! (`s2z-cluster up --kserve`): KServe's controller makes one Knative Service per component,
//! named `<name>-predictor` for the predictor, and copies the InferenceService's annotations onto
//! its Revision template.

use kube::api::ApiResource;
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

/// `serving.kserve.io/v1beta1` InferenceService.
pub fn inference_services() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.kserve.io", "v1beta1", "InferenceService"),
        "inferenceservices",
    )
}

/// A predictor running `image` with `min_replicas` (KServe's `minReplicas`, which it writes as
/// the Revision template's min-scale) and `gpus` NVIDIA GPUs a pod. `generation` goes into an env
/// var, so each new value is a model update (a new Revision).
pub fn predictor(image: &str, min_replicas: u32, gpus: u32, generation: u32) -> Value {
    json!({
        "minReplicas": min_replicas,
        "containers": [{
            "name": "kserve-container",
            "image": image,
            "env": [{"name": "GENERATION", "value": generation.to_string()}],
            "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}},
        }],
    })
}

/// The InferenceService `ns/name` with this predictor and these annotations.
pub fn inference_service(ns: &str, name: &str, predictor: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {"predictor": predictor},
    })
}
