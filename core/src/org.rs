//! The `Org` custom resource (`orgs.s2z.dev`, cluster-scoped): the unit that goes dormant.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use kube::CustomResource;
use kube::CustomResourceExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::settings::{SettingsError, parse_duration};

fn default_true() -> bool {
    true
}

// The doc comments of the CRD's types become `kubectl explain` text, so they speak to users and
// avoid rustdoc links.
/// What the user wants for an org. Namespaces join the org through the label
/// `s2z.dev/org=<org name>`.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema, PartialEq)]
// Printer columns use kube's JSON form: the nested form repeats `type_ = "date"` and the like,
// which clippy reports as duplicated attributes.
#[kube(
    group = "s2z.dev",
    version = "v1alpha1",
    kind = "Org",
    plural = "orgs",
    singular = "org",
    shortname = "s2zorg",
    status = "OrgStatus",
    derive = "PartialEq",
    doc = "An org: the namespaces labelled s2z.dev/org=<name>, scaled to zero together when idle.",
    printcolumn = r#"{"name":"Allowed","type":"boolean","jsonPath":".spec.scaleToZeroAllowed","description":"Whether the org may scale to zero"}"#,
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.state","description":"Active, Dormant or Exempt"}"#,
    printcolumn = r#"{"name":"Last-Activity","type":"date","jsonPath":".status.lastActivityAt","description":"Newest recorded activity"}"#,
    printcolumn = r#"{"name":"Pynodes","type":"integer","jsonPath":".status.pynodes.total","description":"Pynode revisions in the org"}"#,
    printcolumn = r#"{"name":"Models","type":"integer","jsonPath":".status.models.total","description":"Model revisions in the org"}"#,
    printcolumn = r#"{"name":"Dormant-At","type":"date","jsonPath":".status.dormantAt","description":"When an active org goes dormant without further activity","priority":1}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct OrgSpec {
    /// Whether the org may scale to zero; important orgs set this to false and are exempt: their
    /// revisions are kept warm (min-scale at least 1, or the declared value if higher).
    #[serde(default = "default_true")]
    pub scale_to_zero_allowed: bool,
    /// Overrides the cluster-wide dormancy period for this org.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dormancy_period_secs: Option<u64>,
    /// How long an idle revision keeps its last pod once dormant (Modal's `scaledown_window`),
    /// in humantime form such as `"10m"`; becomes Knative's retention period, at most 1h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_window: Option<String>,
}

impl Default for OrgSpec {
    fn default() -> Self {
        Self {
            scale_to_zero_allowed: true,
            dormancy_period_secs: None,
            scale_down_window: None,
        }
    }
}

impl OrgSpec {
    /// The parsed scale-down window, if the org has one.
    pub fn scale_down_window(&self) -> Result<Option<Duration>, SettingsError> {
        self.scale_down_window
            .as_deref()
            .map(parse_duration)
            .transpose()
    }
}

/// Whether an org's workloads are kept warm, scaled to zero, or left alone.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, JsonSchema, PartialEq, Eq, Hash)]
pub enum OrgState {
    /// Recently used: workloads keep at least one pod.
    Active,
    /// Idle for longer than the dormancy period, or put to sleep: workloads scale to zero.
    Dormant,
    /// Not allowed to scale to zero: workloads keep exactly what the user declared.
    Exempt,
}

impl OrgState {
    /// The name as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            OrgState::Active => "Active",
            OrgState::Dormant => "Dormant",
            OrgState::Exempt => "Exempt",
        }
    }
}

impl fmt::Display for OrgState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text named no org state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("failed to parse org state {0:?}: expected Active, Dormant or Exempt")]
pub struct ParseOrgStateError(pub String);

impl FromStr for OrgState {
    type Err = ParseOrgStateError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [OrgState::Active, OrgState::Dormant, OrgState::Exempt]
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseOrgStateError(s.to_string()))
    }
}

/// How many revisions of one kind an org has, and how many may currently scale to zero.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadCounts {
    /// Revisions counted.
    #[serde(default)]
    pub total: u32,
    /// Of those, revisions whose annotations let them scale to zero.
    #[serde(default)]
    pub scaled_to_zero: u32,
}

impl WorkloadCounts {
    /// Counts one more revision.
    pub fn add(&mut self, scaled_to_zero: bool) {
        self.total = self.total.saturating_add(1);
        if scaled_to_zero {
            self.scaled_to_zero = self.scaled_to_zero.saturating_add(1);
        }
    }
}

/// A status condition, shaped like the Kubernetes convention.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// Machine-readable CamelCase reason.
    #[serde(default)]
    pub reason: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: Option<String>,
    /// The `metadata.generation` the condition was computed from.
    pub observed_generation: Option<i64>,
}

// `None` fields serialize as `null` on purpose: a JSON merge patch of the whole status then
// clears values that no longer apply (e.g. `dormantAt` once the org is dormant).
/// What the controller observed about an org.
#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct OrgStatus {
    /// Newest recorded activity (RFC 3339).
    #[serde(default)]
    pub last_activity_at: Option<String>,
    /// Current state.
    // Never sent as null: the API server checks null against the enum and rejects it, and a
    // state, once set, is never cleared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<OrgState>,
    /// When the org entered `state` (RFC 3339).
    #[serde(default)]
    pub state_since: Option<String>,
    /// When an active org goes dormant unless activity arrives first (RFC 3339).
    #[serde(default)]
    pub dormant_at: Option<String>,
    /// Status conditions.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Pynode revisions of the org.
    #[serde(default)]
    pub pynodes: WorkloadCounts,
    /// Model revisions of the org.
    #[serde(default)]
    pub models: WorkloadCounts,
    /// The `metadata.generation` this status reflects.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// When the controller last evaluated the org on request (RFC 3339); `kubectl s2z sweep`
    /// waits for it to pass the time of its `s2z.dev/reconcile-requested-at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_evaluated_at: Option<String>,
    /// What scale to zero has saved this org: pods and GPUs not held while it was dormant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub savings: Option<Savings>,
}

/// The savings ledger of one org, written by the controller at its flips only (a bounded,
/// cheap write): when it goes dormant, the warm floor it would otherwise hold; when it wakes,
/// that floor times the time it spent dormant, added to the totals.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Savings {
    /// Pods the org holds warm while active (each routable revision's declared min-scale, at
    /// least 1), as of its last flip to Dormant.
    #[serde(default)]
    pub floor_pods: u32,
    /// `nvidia.com/gpu` those pods request.
    #[serde(default)]
    pub floor_gpus: u32,
    /// Pod-seconds not held over the org's completed dormant periods.
    #[serde(default)]
    pub pod_seconds: u64,
    /// GPU-seconds not held over the org's completed dormant periods.
    #[serde(default)]
    pub gpu_seconds: u64,
}

impl OrgStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Adds or replaces the condition of `condition.type_`, keeping the previous transition time
    /// when the status did not change so that it tells when the status really flipped.
    pub fn set_condition(&mut self, mut condition: Condition) {
        match self
            .conditions
            .iter_mut()
            .find(|c| c.type_ == condition.type_)
        {
            Some(existing) => {
                if existing.status == condition.status {
                    condition
                        .last_transition_time
                        .clone_from(&existing.last_transition_time);
                }
                *existing = condition;
            }
            None => self.conditions.push(condition),
        }
    }
}

/// Renders the `orgs.s2z.dev` CustomResourceDefinition as YAML.
pub fn try_crd_yaml() -> Result<String, serde_yaml::Error> {
    let mut crd = serde_json::to_value(Org::crd())
        .map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
    strip_unsigned_formats(&mut crd);
    serde_yaml::to_string(&crd)
}

/// schemars marks unsigned integers `format: uint32|uint64`, which the API server does not know
/// and warns about on every apply; the schema's `minimum: 0` already says what they mean.
fn strip_unsigned_formats(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if map
                .get("format")
                .and_then(|f| f.as_str())
                .is_some_and(|f| f.starts_with("uint"))
            {
                map.remove("format");
            }
            map.values_mut().for_each(strip_unsigned_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_unsigned_formats),
        _ => {}
    }
}

/// Renders the `orgs.s2z.dev` CustomResourceDefinition as YAML (the source of
/// `manifests/base/crd.yaml`).
///
/// Serializing a CRD cannot fail in practice; should it, this falls back to JSON, which is valid
/// YAML too, so callers always get a loadable manifest rather than a panic.
pub fn crd_yaml() -> String {
    try_crd_yaml()
        .or_else(|_| serde_json::to_string_pretty(&Org::crd()).map(|json| json + "\n"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_is_cluster_scoped_with_status_and_names() {
        let crd = Org::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("orgs.s2z.dev"));
        assert_eq!(crd.spec.group, "s2z.dev");
        assert_eq!(crd.spec.scope, "Cluster");
        assert_eq!(crd.spec.names.kind, "Org");
        assert_eq!(crd.spec.names.plural, "orgs");
        assert_eq!(
            crd.spec.names.short_names.as_deref(),
            Some(&["s2zorg".to_string()][..])
        );
        let version = &crd.spec.versions[0];
        assert_eq!(version.name, "v1alpha1");
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
    }

    #[test]
    fn printer_columns_make_kubectl_get_useful() {
        let crd = Org::crd();
        let columns = crd.spec.versions[0]
            .additional_printer_columns
            .clone()
            .unwrap_or_default();
        let got: Vec<(&str, &str, &str)> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_.as_str(), c.json_path.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("Allowed", "boolean", ".spec.scaleToZeroAllowed"),
                ("State", "string", ".status.state"),
                ("Last-Activity", "date", ".status.lastActivityAt"),
                ("Pynodes", "integer", ".status.pynodes.total"),
                ("Models", "integer", ".status.models.total"),
                ("Dormant-At", "date", ".status.dormantAt"),
                ("Age", "date", ".metadata.creationTimestamp"),
            ]
        );
        assert_eq!(columns[5].priority, Some(1), "Dormant-At only in -o wide");
    }

    #[test]
    fn crd_yaml_renders_the_crd() -> Result<(), serde_yaml::Error> {
        let yaml = crd_yaml();
        assert!(yaml.contains("kind: CustomResourceDefinition"), "{yaml}");
        assert!(yaml.contains("name: orgs.s2z.dev"), "{yaml}");
        assert!(yaml.contains("scaleToZeroAllowed"), "{yaml}");
        let back: serde_yaml::Value = serde_yaml::from_str(&yaml)?;
        assert_eq!(back["spec"]["scope"], serde_yaml::Value::from("Cluster"));
        Ok(())
    }

    #[test]
    fn schema_defaults_allowed_to_true() -> Result<(), serde_json::Error> {
        let crd = serde_json::to_value(Org::crd())?;
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["scaleToZeroAllowed"]["default"],
            json!(true),
            "{spec}"
        );
        Ok(())
    }

    #[test]
    fn spec_defaults_and_camel_case() -> Result<(), serde_json::Error> {
        let spec: OrgSpec = serde_json::from_value(json!({}))?;
        assert_eq!(spec, OrgSpec::default());
        assert!(spec.scale_to_zero_allowed);

        let spec: OrgSpec = serde_json::from_value(json!({
            "scaleToZeroAllowed": false,
            "dormancyPeriodSecs": 7200,
            "scaleDownWindow": "10m"
        }))?;
        assert!(!spec.scale_to_zero_allowed);
        assert_eq!(spec.dormancy_period_secs, Some(7200));
        assert_eq!(
            serde_json::to_value(&spec)?["scaleDownWindow"],
            json!("10m")
        );
        assert_eq!(
            serde_json::to_value(OrgSpec::default())?,
            json!({"scaleToZeroAllowed": true})
        );
        Ok(())
    }

    #[test]
    fn scale_down_window_parses() {
        let mut spec = OrgSpec::default();
        assert_eq!(spec.scale_down_window(), Ok(None));
        spec.scale_down_window = Some("10m".into());
        assert_eq!(spec.scale_down_window(), Ok(Some(Duration::from_secs(600))));
        spec.scale_down_window = Some("whenever".into());
        assert!(spec.scale_down_window().is_err());
    }

    #[test]
    fn status_round_trips_and_clears_with_nulls() -> Result<(), serde_json::Error> {
        let mut status = OrgStatus {
            last_activity_at: Some("2025-01-01T00:00:00Z".into()),
            state: Some(OrgState::Dormant),
            ..OrgStatus::default()
        };
        status.pynodes.add(true);
        status.models.add(false);
        let value = serde_json::to_value(&status)?;
        assert_eq!(value["state"], json!("Dormant"));
        assert_eq!(
            value["dormantAt"],
            json!(null),
            "null clears it in a merge patch"
        );
        assert_eq!(value["pynodes"], json!({"total": 1, "scaledToZero": 1}));
        assert_eq!(value["models"], json!({"total": 1, "scaledToZero": 0}));
        assert_eq!(serde_json::from_value::<OrgStatus>(value)?, status);
        let empty = serde_json::to_value(OrgStatus::default())?;
        assert!(
            empty.get("state").is_none(),
            "null fails the enum check: {empty}"
        );
        assert_eq!(empty["lastActivityAt"], json!(null));
        assert_eq!(
            serde_json::from_value::<OrgStatus>(json!({}))?,
            OrgStatus::default()
        );
        Ok(())
    }

    #[test]
    fn org_state_text() {
        for state in [OrgState::Active, OrgState::Dormant, OrgState::Exempt] {
            assert_eq!(state.to_string().parse::<OrgState>(), Ok(state));
        }
        assert_eq!("dormant".parse::<OrgState>(), Ok(OrgState::Dormant));
        let err = "Asleep".parse::<OrgState>().err().map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("failed to parse org state \"Asleep\": expected Active, Dormant or Exempt")
        );
    }

    #[test]
    fn set_condition_keeps_transition_time_while_status_holds() {
        let mut status = OrgStatus::default();
        let cond = |s: &str, t: &str, reason: &str| Condition {
            type_: "Ready".into(),
            status: s.into(),
            reason: reason.into(),
            last_transition_time: Some(t.into()),
            ..Condition::default()
        };
        status.set_condition(cond("True", "t1", "A"));
        status.set_condition(cond("True", "t2", "B"));
        let ready = status.condition("Ready").cloned().unwrap_or_default();
        assert_eq!(ready.last_transition_time.as_deref(), Some("t1"));
        assert_eq!(ready.reason, "B");
        status.set_condition(cond("False", "t3", "C"));
        let ready = status.condition("Ready").cloned().unwrap_or_default();
        assert_eq!(ready.last_transition_time.as_deref(), Some("t3"));
        assert_eq!(status.conditions.len(), 1);
        assert!(status.condition("Other").is_none());
    }

    #[test]
    fn org_objects_round_trip() -> Result<(), serde_json::Error> {
        let org: Org = serde_json::from_value(json!({
            "apiVersion": "s2z.dev/v1alpha1",
            "kind": "Org",
            "metadata": {"name": "acme"},
            "spec": {"scaleToZeroAllowed": false}
        }))?;
        assert_eq!(org.metadata.name.as_deref(), Some("acme"));
        assert!(!org.spec.scale_to_zero_allowed);
        assert!(org.status.is_none());
        let again: Org = serde_json::from_value(serde_json::to_value(&org)?)?;
        assert_eq!(again, org);
        Ok(())
    }
}
