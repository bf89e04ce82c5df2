//! The Revision mutation, as a pure function: AdmissionReview bytes and a [`ClusterView`] in,
//! AdmissionReview bytes out. No I/O and no clock (`now` is a parameter), so it is unit tested
//! and fuzzed without a cluster.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation, RemoveOperation, ReplaceOperation};
use kube::core::admission::Operation;
use s2z_core::annotations::{self, DecisionInput};
use s2z_core::labels::{MODEL_LABEL, ORG_LABEL};
use s2z_core::org::OrgState;
use s2z_core::workload::{self, WorkloadKind};
use serde_json::Value;

use crate::view::{ClusterView, evaluate_org};

#[path = "admission_wire.rs"]
mod wire;

pub use wire::ReviewError;
use wire::{Object, Parsed, Request};

/// The largest AdmissionReview body accepted; larger bodies get HTTP 413.
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The group of the resources this webhook mutates.
pub const REVISION_GROUP: &str = "serving.knative.dev";
/// The kind this webhook mutates.
pub const REVISION_KIND: &str = "Revision";

/// What happened to an admitted object; a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A patch was returned.
    Patched,
    /// A Revision was looked at and already carries what it should (or cannot be helped).
    Unchanged,
    /// Not ours: another kind, another operation, or a namespace of no org.
    Skipped,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Patched => "patched",
            Outcome::Unchanged => "unchanged",
            Outcome::Skipped => "skipped",
        }
    }
}

/// The kind of object admitted; a metrics label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ObjectKind {
    /// A Revision of a pynode.
    Pynode,
    /// A Revision of a KServe model.
    Model,
    /// Anything else.
    Other,
}

impl ObjectKind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Pynode => "pynode",
            ObjectKind::Model => "model",
            ObjectKind::Other => "other",
        }
    }
}

/// The answer to one AdmissionReview.
#[derive(Debug)]
pub struct Reviewed {
    /// The serialized response AdmissionReview.
    pub body: Vec<u8>,
    /// The request uid, for logs.
    pub uid: String,
    /// `namespace/name` of the object, for logs (name may be empty: generateName).
    pub object: String,
    /// The org the object belongs to, when one was found.
    pub org: Option<String>,
    /// The org state the decision was made for.
    pub state: Option<OrgState>,
    /// What happened.
    pub outcome: Outcome,
    /// What was admitted.
    pub kind: ObjectKind,
    /// The number of patch operations returned.
    pub operations: usize,
    /// The warnings returned to the client.
    pub warnings: Vec<String>,
}

/// What [`mutate`] decided for one request.
#[derive(Debug, Default)]
pub struct Mutation {
    /// The operations to return (empty: allowed unchanged).
    pub patch: Vec<PatchOperation>,
    /// Warnings for the client.
    pub warnings: Vec<String>,
    /// The org, when one was found.
    pub org: Option<String>,
    /// The org's state, when it was evaluated.
    pub state: Option<OrgState>,
    /// Whether the request was ours to look at.
    pub skipped: bool,
    /// The kind admitted.
    pub kind: Option<ObjectKind>,
}

/// Answers one AdmissionReview body. `Err` means HTTP 400 with the error as message.
pub fn review(
    body: &[u8],
    view: &dyn ClusterView,
    now: DateTime<Utc>,
) -> Result<Reviewed, ReviewError> {
    let Parsed { request, object } = wire::parse(body)?;
    let mutation = match object {
        Ok(object) => mutate(&request, object.as_ref(), view, now),
        // Only a Revision CREATE is ours to worry about.
        Err(why) if is_revision(&request) && request.operation == Operation::Create => Mutation {
            warnings: vec![format!("s2z: left the object unchanged: {why}")],
            kind: Some(ObjectKind::Other),
            ..Mutation::default()
        },
        Err(_) => Mutation {
            skipped: true,
            kind: Some(ObjectKind::Other),
            ..Mutation::default()
        },
    };
    respond(&request, mutation)
}

/// Decides the patch for one request.
fn mutate(
    request: &Request<'_>,
    object: Option<&Object<'_>>,
    view: &dyn ClusterView,
    now: DateTime<Utc>,
) -> Mutation {
    let skip = |kind| Mutation {
        skipped: true,
        kind: Some(kind),
        ..Mutation::default()
    };
    if !is_revision(request) {
        return skip(ObjectKind::Other);
    }
    let Some(object) = object else {
        return skip(ObjectKind::Other);
    };
    let metadata = &object.metadata;
    let model_label = metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(MODEL_LABEL))
        .map(wire::Str::as_str);
    let kind = match workload::kind_of_model_label(model_label) {
        WorkloadKind::Model => ObjectKind::Model,
        WorkloadKind::Pynode => ObjectKind::Pynode,
    };
    if request.operation != Operation::Create {
        return skip(kind);
    }
    let namespace = request
        .namespace
        .as_ref()
        .or(metadata.namespace.as_ref())
        .map_or("", wire::Str::as_str);
    let Some(org_name) = view.namespace_org(namespace).filter(|o| !o.is_empty()) else {
        return skip(kind);
    };
    let mut mutation = Mutation {
        kind: Some(kind),
        ..Mutation::default()
    };
    let Some(org) = view.org(&org_name) else {
        mutation.warnings.push(format!(
            "s2z: namespace {namespace} is labelled {ORG_LABEL}={org_name} but there is no Org {org_name}: revision left unchanged"
        ));
        mutation.org = Some(org_name);
        return mutation;
    };
    mutation.org = Some(org_name);
    let config = view.config();
    if let Some(error) = &config.settings_error {
        mutation.warnings.push(format!(
            "s2z: s2z-settings is invalid, using the last valid settings: {error}"
        ));
    }
    let evaluation = evaluate_org(&org, &config.settings, now);
    mutation
        .warnings
        .extend(evaluation.warnings.iter().map(|w| format!("s2z: {w}")));
    mutation.state = Some(evaluation.state);
    if evaluation.state == OrgState::Dormant && !config.knative.enable_scale_to_zero {
        mutation.warnings.push(
            "s2z: org is dormant but the cluster disables scale to zero (enable-scale-to-zero=false): the revision will keep its pods"
                .to_owned(),
        );
    }
    let current = metadata.annotations.as_ref();
    let empty = BTreeMap::new();
    let decision = annotations::decide(&DecisionInput {
        state: evaluation.state,
        allow_zero_initial_scale: config.knative.allow_zero_initial_scale,
        scale_down_window: evaluation.scale_down_window,
        annotations: current.unwrap_or(&empty),
    });
    match decision {
        Ok(decision) => {
            mutation.patch = annotation_patch(current, &decision.desired);
            mutation
                .warnings
                .extend(decision.warnings.into_iter().map(|w| format!("s2z: {w}")));
        }
        Err(e) => mutation
            .warnings
            .push(format!("s2z: revision left unchanged: {e}")),
    }
    mutation
}

/// Whether the request is about a Revision itself (not a subresource).
fn is_revision(request: &Request<'_>) -> bool {
    request.kind.group.as_str() == REVISION_GROUP
        && request.kind.kind.as_str() == REVISION_KIND
        && request.sub_resource.is_none()
}

/// Turns the desired annotation changes into JSON Patch operations on
/// `/metadata/annotations`, creating the map when the object has none.
pub fn annotation_patch(
    current: Option<&BTreeMap<String, String>>,
    desired: &BTreeMap<String, Option<String>>,
) -> Vec<PatchOperation> {
    let pointer = |key: &str| PointerBuf::from_tokens(["metadata", "annotations", key]);
    let Some(current) = current else {
        let added: serde_json::Map<String, Value> = desired
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), Value::String(v.clone()?))))
            .collect();
        if added.is_empty() {
            return Vec::new();
        }
        return vec![PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(["metadata", "annotations"]),
            value: Value::Object(added),
        })];
    };
    desired
        .iter()
        .filter_map(|(key, value)| match (current.get(key), value) {
            (Some(old), Some(new)) if old == new => None,
            (Some(_), Some(new)) => Some(PatchOperation::Replace(ReplaceOperation {
                path: pointer(key),
                value: Value::String(new.clone()),
            })),
            (None, Some(new)) => Some(PatchOperation::Add(AddOperation {
                path: pointer(key),
                value: Value::String(new.clone()),
            })),
            (Some(_), None) => Some(PatchOperation::Remove(RemoveOperation {
                path: pointer(key),
            })),
            (None, None) => None,
        })
        .collect()
}

/// Builds the response review for a mutation.
fn respond(request: &Request<'_>, mutation: Mutation) -> Result<Reviewed, ReviewError> {
    let operations = mutation.patch.len();
    let uid = request.uid.as_str();
    let body = wire::encode(uid, &mutation.patch, &mutation.warnings)?;
    let outcome = match (mutation.skipped, operations) {
        (true, _) => Outcome::Skipped,
        (false, 0) => Outcome::Unchanged,
        (false, _) => Outcome::Patched,
    };
    let namespace = request.namespace.as_ref().map_or("", wire::Str::as_str);
    Ok(Reviewed {
        body,
        uid: uid.to_owned(),
        object: format!("{namespace}/{}", request.name.as_str()),
        org: mutation.org,
        state: mutation.state,
        outcome,
        kind: mutation.kind.unwrap_or(ObjectKind::Other),
        operations,
        warnings: mutation.warnings,
    })
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
