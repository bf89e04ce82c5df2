//! The requests: Revision AdmissionReviews the size of real ones, and the baselines' bodies.

use anyhow::Result;
use axum::body::{Body, Bytes};
use serde_json::{Value, json};

use crate::caches::namespace_name;

/// One request, pre-built so the load generator spends its time sending.
#[derive(Clone)]
pub(crate) struct Req {
    pub(crate) method: axum::http::Method,
    pub(crate) path: &'static str,
    pub(crate) body: Bytes,
}

impl Req {
    pub(crate) fn build(&self) -> Result<axum::http::Request<Body>> {
        Ok(axum::http::Request::builder()
            .method(self.method.clone())
            .uri(self.path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Body::from(self.body.clone()))?)
    }
}

/// 512 AdmissionReviews of Revision CREATEs spread over the orgs (dormant, active and exempt;
/// one in four a model), each the size of a real Knative revision.
pub(crate) fn mutate_requests(orgs: usize) -> Vec<Req> {
    (0..512)
        .map(|n| {
            let i = (n * 7919) % orgs.max(1);
            let model = n % 4 == 0;
            let review = review(i, n, model);
            Req {
                method: axum::http::Method::POST,
                path: "/mutate",
                body: Bytes::from(review.to_string()),
            }
        })
        .collect()
}

pub(crate) fn review(i: usize, n: usize, model: bool) -> Value {
    let namespace = namespace_name(i);
    let service = if model {
        "bert-predictor".to_owned()
    } else {
        format!("app-{n}")
    };
    let mut labels = json!({
        "serving.knative.dev/configuration": service,
        "serving.knative.dev/configurationGeneration": "2",
        "serving.knative.dev/configurationUID": "1d4c7a52-8f0e-4c1b-9a57-0b3c2d1e4f5a",
        "serving.knative.dev/routingState": "pending",
        "serving.knative.dev/service": service,
        "serving.knative.dev/serviceUID": "a8e2f1c0-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        "app.kubernetes.io/part-of": "platform",
    });
    let mut annotations = json!({
        "serving.knative.dev/creator": "system:serviceaccount:platform:deployer",
        "serving.knative.dev/routingStateModified": "2025-06-01T12:00:00Z",
        "autoscaling.knative.dev/target": "10",
        "autoscaling.knative.dev/max-scale": "5",
    });
    if model {
        labels["serving.kserve.io/inferenceservice"] = json!("bert");
        labels["component"] = json!("predictor");
        annotations["autoscaling.knative.dev/min-scale"] = json!("3");
        annotations["autoscaling.knative.dev/max-scale"] = json!("6");
    }
    let env: Vec<Value> = (0..8)
        .map(|k| json!({"name": format!("SETTING_{k}"), "value": format!("value-{k}-{n}")}))
        .collect();
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("705ab4f5-6393-11e8-b7cc-{n:012}"),
            "kind": {"group": "serving.knative.dev", "version": "v1", "kind": "Revision"},
            "resource": {"group": "serving.knative.dev", "version": "v1", "resource": "revisions"},
            "requestKind": {"group": "serving.knative.dev", "version": "v1", "kind": "Revision"},
            "requestResource": {"group": "serving.knative.dev", "version": "v1", "resource": "revisions"},
            "name": format!("{service}-00002"),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:knative-serving:controller",
                "uid": "3c5e7f90-1a2b-4c3d-8e4f-5a6b7c8d9e0f",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:knative-serving", "system:authenticated"],
            },
            "object": {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Revision",
                "metadata": {
                    "name": format!("{service}-00002"),
                    "namespace": namespace,
                    "labels": labels,
                    "annotations": annotations,
                    "ownerReferences": [{
                        "apiVersion": "serving.knative.dev/v1", "kind": "Configuration", "name": service,
                        "uid": "1d4c7a52-8f0e-4c1b-9a57-0b3c2d1e4f5a", "controller": true, "blockOwnerDeletion": true,
                    }],
                },
                "spec": {
                    "containerConcurrency": 0,
                    "timeoutSeconds": 300,
                    "serviceAccountName": "default",
                    "enableServiceLinks": false,
                    "containers": [{
                        "name": "user-container",
                        "image": "registry.example.com/platform/app@sha256:4f3c2b1a0e9d8c7b6a5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b",
                        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                        "env": env,
                        "resources": {"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "250m", "memory": "512Mi"}},
                        "readinessProbe": {"successThreshold": 1, "tcpSocket": {"port": 0}},
                    }],
                },
            },
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}

/// The /mutate bodies POSTed to `path`: `/noop`, the baseline, a webhook that reads the review
/// and answers without looking at it, or a calibration endpoint.
pub(crate) fn same_bodies(mutate: &[Req], path: &'static str) -> Vec<Req> {
    mutate
        .iter()
        .map(|req| Req {
            path,
            ..req.clone()
        })
        .collect()
}

/// `GET /noop`: no body at all, the floor of TLS + HTTP on this machine.
pub(crate) fn bodiless_noop() -> Vec<Req> {
    vec![Req {
        method: axum::http::Method::GET,
        path: "/noop",
        body: Bytes::new(),
    }]
}
