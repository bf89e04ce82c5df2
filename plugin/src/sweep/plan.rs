//! The sweep's plan: which orgs flip and which revisions' annotations change, computed with
//! the controller's own pure rules, its stable JSON/YAML schema, and its table form.

use chrono::{DateTime, SubsecRound, Utc};
use s2z_core::annotations::{DecisionInput, decide};
use s2z_core::dormancy::{StateInput, org_state};
use s2z_core::labels::DECLARED_ANNOTATION;
use s2z_core::org::OrgState;
use s2z_core::settings::{KnativeConfig, Settings};
use s2z_core::workload::kind_of;
use serde::Serialize;

use crate::cluster::Inventory;
use crate::output::{API_VERSION, Cell, Style, paint, plural, table};

/// One annotation change on a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The annotation key.
    pub key: String,
    /// Its value now, if set.
    pub from: Option<String>,
    /// Its value after the sweep, if set.
    pub to: Option<String>,
}

/// A revision whose annotations the sweep changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RevisionChange {
    /// Namespace.
    pub namespace: String,
    /// Revision name.
    pub name: String,
    /// Its org.
    pub org: String,
    /// `pynode` or `model`.
    pub kind: String,
    /// The changes.
    pub changes: Vec<Change>,
}

/// An org in the sweep: its state flips, or some of its revisions drifted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgChange {
    /// Name.
    pub name: String,
    /// State reported by the controller now, if any.
    pub from: Option<OrgState>,
    /// State by s2z's rule now.
    pub to: OrgState,
    /// Revisions of the org that change.
    pub revisions_to_change: usize,
    /// `planned` (dry run), `applied`, or `pending` (not reported in time).
    pub result: String,
}

impl OrgChange {
    /// True when the state changes, not only revisions.
    pub fn flips(&self) -> bool {
        self.from != Some(self.to)
    }
}

/// `kubectl s2z sweep -o json|yaml`.
///
/// ```yaml
/// apiVersion: s2z.dev/v1alpha1
/// kind: SweepReport
/// dryRun: true
/// generatedAt: 2025-01-31T12:00:00Z
/// orgsChecked: 12
/// orgs:                        # orgs that flip, or whose revisions drifted
/// - name: acme
///   from: Active               # status.state now; null if never reported
///   to: Dormant                # by s2z's rule now
///   revisionsToChange: 2
///   result: planned            # planned | applied | pending
/// revisions:
/// - namespace: acme-prod
///   name: web-00001
///   org: acme
///   kind: pynode               # pynode | model
///   changes:
///   - {key: autoscaling.knative.dev/min-scale, from: "1", to: "0"}
/// warnings: []                 # revisions left alone, unreadable settings
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Always `s2z.dev/v1alpha1`.
    pub api_version: &'static str,
    /// Always `SweepReport`.
    pub kind: &'static str,
    /// Whether anything was written.
    pub dry_run: bool,
    /// When the cluster was read.
    pub generated_at: String,
    /// Orgs looked at.
    pub orgs_checked: usize,
    /// Orgs in the sweep.
    pub orgs: Vec<OrgChange>,
    /// Revisions that change.
    pub revisions: Vec<RevisionChange>,
    /// What was left alone, and why.
    pub warnings: Vec<String>,
}

/// Computes the sweep. Pure: the inventory, settings and `now` are passed in.
pub fn plan(
    inventory: &Inventory,
    settings: &Settings,
    knative: &KnativeConfig,
    now: DateTime<Utc>,
    dry_run: bool,
) -> SweepReport {
    let mut orgs = Vec::new();
    let mut revisions = Vec::new();
    let mut warnings = inventory.notes.clone();
    for org in &inventory.orgs {
        let name = org.metadata.name.clone().unwrap_or_default();
        let state = org_state(&StateInput::for_org(org, settings, now));
        let window = match org.spec.scale_down_window() {
            Ok(window) => window,
            Err(e) => {
                warnings.push(format!("org/{name}: {e}; ignoring its scale-down window"));
                None
            }
        };
        let namespaces = inventory.namespaces_of(&name);
        let mut changed = 0;
        for revision in inventory
            .revisions
            .iter()
            .filter(|r| namespaces.contains(&r.metadata.namespace))
        {
            let meta = &revision.metadata;
            let input = DecisionInput {
                state,
                allow_zero_initial_scale: knative.allow_zero_initial_scale,
                scale_down_window: window,
                annotations: &meta.annotations,
            };
            match decide(&input) {
                Ok(decision) if decision.is_noop() => {}
                Ok(decision) => {
                    changed += 1;
                    revisions.push(RevisionChange {
                        namespace: meta.namespace.clone(),
                        name: meta.name.clone(),
                        org: name.clone(),
                        kind: kind_of(&meta.labels).to_string(),
                        changes: decision
                            .desired
                            .iter()
                            .map(|(key, to)| Change {
                                key: key.clone(),
                                from: meta.annotations.get(key).cloned(),
                                to: to.clone(),
                            })
                            .collect(),
                    });
                }
                Err(e) => warnings.push(format!(
                    "revision {}/{} is left unchanged: {e}",
                    meta.namespace, meta.name
                )),
            }
        }
        let from = org.status.as_ref().and_then(|s| s.state);
        if from != Some(state) || changed > 0 {
            orgs.push(OrgChange {
                name,
                from,
                to: state,
                revisions_to_change: changed,
                result: if dry_run { "planned" } else { "pending" }.into(),
            });
        }
    }
    SweepReport {
        api_version: API_VERSION,
        kind: "SweepReport",
        dry_run,
        generated_at: s2z_core::dormancy::format_time(now.trunc_subsecs(0)),
        orgs_checked: inventory.orgs.len(),
        orgs,
        revisions,
        warnings,
    }
}

fn short_key(key: &str) -> &str {
    if key == DECLARED_ANNOTATION {
        return "declared";
    }
    key.strip_prefix(s2z_core::labels::AUTOSCALING_PREFIX)
        .unwrap_or(key)
}

fn describe_change(change: &Change) -> String {
    let key = short_key(&change.key);
    if change.key == DECLARED_ANNOTATION {
        let what = match (&change.from, &change.to) {
            (None, Some(_)) => "recorded",
            (Some(_), None) => "removed",
            _ => "updated",
        };
        return format!("{key} {what}");
    }
    let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    format!("{key} {} -> {}", show(&change.from), show(&change.to))
}

fn state_name(state: Option<OrgState>) -> String {
    state.map_or_else(|| "<none>".to_string(), |s| s.to_string())
}

/// The table form.
pub fn render(report: &SweepReport, color: bool) -> String {
    let flips = plural(
        report.orgs.iter().filter(|o| o.flips()).count(),
        "org",
        "orgs",
    );
    let revisions = plural(report.revisions.len(), "revision", "revisions");
    let checked = plural(report.orgs_checked, "org", "orgs");
    let mut text = if report.dry_run {
        format!("Would flip {flips} and change {revisions} ({checked} checked):\n\n")
    } else {
        let applied = report.orgs.iter().filter(|o| o.result == "applied").count();
        format!(
            "Swept {checked}: {flips} to flip, {revisions} to change; the controller confirmed {applied} of {}:\n\n",
            report.orgs.len()
        )
    };
    let rows = report
        .orgs
        .iter()
        .map(|o| {
            let style = match o.result.as_str() {
                "applied" => Style::Good,
                "pending" => Style::Warn,
                _ => Style::Dim,
            };
            vec![
                Cell::plain(&o.name),
                Cell::plain(state_name(o.from)),
                Cell::plain(o.to.to_string()),
                Cell::plain(o.revisions_to_change.to_string()),
                Cell::styled(&o.result, style),
            ]
        })
        .collect();
    text.push_str(&table(
        &["org", "from", "to", "revisions", "result"],
        rows,
        color,
    ));
    if !report.revisions.is_empty() {
        text.push('\n');
        let rows = report
            .revisions
            .iter()
            .map(|r| {
                let changes: Vec<String> = r.changes.iter().map(describe_change).collect();
                vec![
                    Cell::plain(&r.namespace),
                    Cell::plain(&r.name),
                    Cell::plain(&r.org),
                    Cell::plain(&r.kind),
                    Cell::plain(changes.join(", ")),
                ]
            })
            .collect();
        text.push_str(&table(
            &["namespace", "revision", "org", "kind", "changes"],
            rows,
            color,
        ));
    }
    if !report.warnings.is_empty() {
        text.push('\n');
    }
    for warning in &report.warnings {
        text.push_str(&format!(
            "{} {warning}\n",
            paint("Warning:", Style::Warn, color)
        ));
    }
    text
}
