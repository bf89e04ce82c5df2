//! The status report: its stable JSON/YAML schema, how it is computed from an [`Inventory`]
//! (a pure function, so it is tested without a cluster), and its table form.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, TimeDelta, Utc};
use s2z_core::annotations::is_scaled_to_zero;
use s2z_core::dormancy::{StateInput, due_at, format_time, org_state};
use s2z_core::labels::{REVISION_LABEL, ROUTING_STATE_LABEL};
use s2z_core::org::{Org, OrgState, Savings};
use s2z_core::savings::close_period;
use s2z_core::settings::Settings;
use s2z_core::warm::min_scale;
use s2z_core::workload::{WorkloadKind, kind_of};
use serde::{Deserialize, Serialize};

use crate::cluster::{Inventory, Object, Pod, SettingsView};
use crate::output::{API_VERSION, Cell, Style, age_between, exact_duration, paint, plural, table};

/// `kubectl s2z status -o json|yaml`.
///
/// The schema is stable within `apiVersion: s2z.dev/v1alpha1`: fields may be added, none are
/// removed or change meaning. Times are RFC 3339 in UTC, or `null` when unknown; durations are
/// whole seconds.
///
/// ```yaml
/// apiVersion: s2z.dev/v1alpha1
/// kind: StatusReport
/// generatedAt: 2025-01-31T12:00:00Z     # when the plugin read the cluster
/// settings:
///   source: configmap/s2z-settings in s2z-system   # or "defaults (no configmap/...)"
///   dormancyPeriodSecs: 86400
///   warmupRatelimit: 2/hour
///   ratelimitEnabled: true
///   sweepIntervalSecs: 3600
///   warnings: []                          # e.g. rate-limit period longer than dormancy period
/// orgs:
/// - name: acme
///   allowed: true                         # spec.scaleToZeroAllowed
///   state: Active                         # Active | Dormant | Exempt, by s2z's rule, now
///   reportedState: Active                 # status.state as the controller last wrote it, or null
///   lastActivityAt: 2025-01-31T11:00:00Z  # or null: never active
///   dormancyPeriodSecs: 86400             # the org's override, else the setting
///   dormantAt: 2025-02-01T11:00:00Z       # Active orgs: when they go dormant without activity
///   dormantSince: null                    # Dormant orgs: since when
///   sleepRequestedAt: null                # set by `kubectl s2z sleep`
///   namespaces: [acme-prod]
///   pynodes: {total: 3, warm: 2}          # revisions; warm = kept at min-scale >= 1
///   models: {total: 1, warm: 1}
///   runningPods: 4                        # running pods of the org's revisions
///   gpus: 2                               # GPUs held by those pods (nvidia, amd, intel)
///   waitingForPods:                       # warm revisions with fewer Ready pods than their
///   - namespace: acme-prod                #   min-scale, e.g. just after a wake
///     name: bert-predictor-00002
///     kind: model                         # pynode | model
///     ready: 1
///     minScale: 3
///   savings:                              # null before the org's first dormant period
///     podSeconds: 7200                    # pods not held while dormant, times seconds
///     gpuSeconds: 3600
///     floorPods: 2                        # what the org holds warm while active
///     floorGpus: 1
/// totals: {orgs: 1, active: 1, dormant: 0, exempt: 0, runningPods: 4, gpus: 2, waitingForPods: 1,
///          savedPodSeconds: 7200, savedGpuSeconds: 3600}
/// warnings: []                            # what could not be read, e.g. Knative missing
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Always [`API_VERSION`].
    pub api_version: String,
    /// Always `StatusReport`.
    pub kind: String,
    /// When the cluster was read.
    pub generated_at: String,
    /// The global settings.
    pub settings: SettingsSummary,
    /// One entry per org, by name.
    pub orgs: Vec<OrgReport>,
    /// Sums over `orgs`.
    pub totals: Totals,
    /// What could not be read.
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The global settings in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsSummary {
    /// Where they come from.
    pub source: String,
    /// `orgDormancyPeriodSecs`.
    pub dormancy_period_secs: u64,
    /// `orgWarmupRatelimitStr`, canonical form.
    pub warmup_ratelimit: String,
    /// `ratelimitEnabled`.
    pub ratelimit_enabled: bool,
    /// `sweepIntervalSecs`.
    pub sweep_interval_secs: u64,
    /// Settings that are unsafe or unreadable.
    #[serde(default)]
    pub warnings: Vec<String>,
}

impl SettingsSummary {
    /// Summarises a settings view.
    pub fn of(view: &SettingsView) -> Self {
        let s: &Settings = &view.settings;
        let mut warnings = s.warnings();
        warnings.extend(view.problems.iter().cloned());
        SettingsSummary {
            source: view.source(),
            dormancy_period_secs: s.dormancy_period.as_secs(),
            warmup_ratelimit: s.warmup_ratelimit.to_string(),
            ratelimit_enabled: s.ratelimit_enabled,
            sweep_interval_secs: s.sweep_interval.as_secs(),
            warnings,
        }
    }
}

/// Revisions of one kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workloads {
    /// Revisions.
    pub total: u32,
    /// Of those, revisions kept warm (effective min-scale >= 1).
    pub warm: u32,
}

/// One org in a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgReport {
    /// Name.
    pub name: String,
    /// `spec.scaleToZeroAllowed`.
    pub allowed: bool,
    /// State by s2z's rule at `generatedAt`.
    pub state: OrgState,
    /// `status.state` as last written by the controller.
    pub reported_state: Option<OrgState>,
    /// Newest recorded activity.
    pub last_activity_at: Option<String>,
    /// Dormancy period in force for this org.
    pub dormancy_period_secs: u64,
    /// For Active orgs: when they go dormant without further activity.
    pub dormant_at: Option<String>,
    /// For Dormant orgs: since when.
    pub dormant_since: Option<String>,
    /// `kubectl s2z sleep` request, if any.
    pub sleep_requested_at: Option<String>,
    /// The org's namespaces.
    pub namespaces: Vec<String>,
    /// Pynode revisions.
    pub pynodes: Workloads,
    /// Model revisions.
    pub models: Workloads,
    /// Running pods of the org's revisions.
    pub running_pods: u32,
    /// GPUs held by those pods.
    pub gpus: u64,
    /// Warm revisions that have fewer Ready pods than their min-scale, by namespace and name.
    #[serde(default)]
    pub waiting_for_pods: Vec<WaitingRevision>,
    /// What scale to zero has saved the org: its status ledger with the dormant period still
    /// running added; `null` before its first dormant period.
    #[serde(default)]
    pub savings: Option<Savings>,
}

/// A revision that should be warm and is not yet: after a wake, until Knative has started its
/// pods and they pass readiness.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaitingRevision {
    /// Namespace.
    pub namespace: String,
    /// Revision name.
    pub name: String,
    /// `pynode` or `model`.
    pub kind: String,
    /// Ready pods now.
    pub ready: u32,
    /// Pods it should have: its effective min-scale.
    pub min_scale: u32,
}

/// Sums over a report's orgs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    /// Orgs.
    pub orgs: u32,
    /// Active orgs.
    pub active: u32,
    /// Dormant orgs.
    pub dormant: u32,
    /// Exempt orgs.
    pub exempt: u32,
    /// Running pods.
    pub running_pods: u32,
    /// GPUs held.
    pub gpus: u64,
    /// Revisions waiting for pods.
    #[serde(default)]
    pub waiting_for_pods: u32,
    /// Pod-seconds saved over every org.
    #[serde(default)]
    pub saved_pod_seconds: u64,
    /// GPU-seconds saved over every org.
    #[serde(default)]
    pub saved_gpu_seconds: u64,
}

/// Which orgs to show, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateFilter {
    /// Only these states; `None` shows all.
    pub only: Option<OrgState>,
}

fn since_dormant(org: &Org, input: &StateInput) -> Option<DateTime<Utc>> {
    let reported = org.status.as_ref();
    if reported.and_then(|s| s.state) == Some(OrgState::Dormant)
        && let Some(since) = reported
            .and_then(|s| s.state_since.as_deref())
            .and_then(|t| s2z_core::dormancy::parse_time(t).ok())
    {
        return Some(since);
    }
    let by_sleep = input
        .sleep_requested
        .filter(|sleep| input.last_activity.is_none_or(|a| *sleep > a));
    let by_idle = input
        .last_activity
        .or(input.created)
        .and_then(|t| t.checked_add_signed(TimeDelta::from_std(input.period).ok()?))
        .filter(|t| *t <= input.now);
    match (by_sleep, by_idle) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Computes the report. Pure: `now` is passed in.
pub fn build(
    inventory: &Inventory,
    settings: &SettingsView,
    now: DateTime<Utc>,
    filter: StateFilter,
) -> StatusReport {
    #[derive(Default)]
    struct Tally {
        pynodes: Workloads,
        models: Workloads,
        pods: u32,
        gpus: u64,
        waiting: Vec<WaitingRevision>,
    }
    let ready = ready_pods(&inventory.pods);
    let mut tallies: BTreeMap<&str, Tally> = BTreeMap::new();
    for revision in &inventory.revisions {
        let Some(org) = inventory.namespaces.get(&revision.metadata.namespace) else {
            continue;
        };
        let tally = tallies.entry(org).or_default();
        let counts = match kind_of(&revision.metadata.labels) {
            WorkloadKind::Pynode => &mut tally.pynodes,
            WorkloadKind::Model => &mut tally.models,
        };
        counts.total += 1;
        if !is_scaled_to_zero(&revision.metadata.annotations) {
            counts.warm += 1;
        }
        if let Some(waiting) = waiting(revision, &ready) {
            tally.waiting.push(waiting);
        }
    }
    for pod in &inventory.pods {
        let Some(org) = inventory.namespaces.get(&pod.metadata.namespace) else {
            continue;
        };
        let tally = tallies.entry(org).or_default();
        tally.pods += 1;
        tally.gpus += pod.gpus();
    }

    let mut orgs = Vec::new();
    let mut totals = Totals::default();
    for org in &inventory.orgs {
        let name = org.metadata.name.clone().unwrap_or_default();
        let input = StateInput::for_org(org, &settings.settings, now);
        let state = org_state(&input);
        if filter.only.is_some_and(|only| only != state) {
            continue;
        }
        let mut tally = tallies.remove(name.as_str()).unwrap_or_default();
        // A dormant org's revisions are meant to be cold; what they still run is in PODS.
        if state == OrgState::Dormant {
            tally.waiting.clear();
        }
        tally.waiting.sort();
        let status = org.status.as_ref();
        let savings = status.and_then(|s| s.savings).map(|ledger| {
            // The running period counts from when the controller reported the org dormant.
            let since = (status.and_then(|s| s.state) == Some(OrgState::Dormant))
                .then(|| status.and_then(|s| s.state_since.as_deref()))
                .flatten()
                .and_then(|t| s2z_core::dormancy::parse_time(t).ok());
            since.map_or(ledger, |since| close_period(&ledger, since, now))
        });
        let report = OrgReport {
            allowed: org.spec.scale_to_zero_allowed,
            state,
            reported_state: status.and_then(|s| s.state),
            last_activity_at: input.last_activity.map(format_time),
            dormancy_period_secs: input.period.as_secs(),
            dormant_at: due_at(&input).map(format_time),
            dormant_since: (state == OrgState::Dormant)
                .then(|| since_dormant(org, &input))
                .flatten()
                .map(format_time),
            sleep_requested_at: input.sleep_requested.map(format_time),
            namespaces: inventory.namespaces_of(&name),
            pynodes: tally.pynodes,
            models: tally.models,
            running_pods: tally.pods,
            gpus: tally.gpus,
            waiting_for_pods: tally.waiting,
            savings,
            name,
        };
        totals.orgs += 1;
        match state {
            OrgState::Active => totals.active += 1,
            OrgState::Dormant => totals.dormant += 1,
            OrgState::Exempt => totals.exempt += 1,
        }
        totals.running_pods += report.running_pods;
        totals.gpus += report.gpus;
        totals.waiting_for_pods += report.waiting_for_pods.len() as u32;
        if let Some(saved) = report.savings {
            totals.saved_pod_seconds += saved.pod_seconds;
            totals.saved_gpu_seconds += saved.gpu_seconds;
        }
        orgs.push(report);
    }
    StatusReport {
        api_version: API_VERSION.into(),
        kind: "StatusReport".into(),
        generated_at: format_time(now.trunc_subsecs(0)),
        settings: SettingsSummary::of(settings),
        orgs,
        totals,
        warnings: inventory.notes.clone(),
    }
}

/// Ready pods per (namespace, revision).
fn ready_pods(pods: &[Pod]) -> BTreeMap<(&str, &str), u32> {
    let mut ready = BTreeMap::new();
    for pod in pods.iter().filter(|p| p.is_ready()) {
        if let Some(revision) = pod.metadata.labels.get(REVISION_LABEL) {
            *ready
                .entry((pod.metadata.namespace.as_str(), revision.as_str()))
                .or_default() += 1;
        }
    }
    ready
}

/// The revision, if it should hold pods and has fewer Ready ones than its min-scale. Revisions
/// in `reserve` (no route sends them traffic) are skipped: Knative scales those to zero whatever
/// their min-scale, so they never wait.
fn waiting(revision: &Object, ready: &BTreeMap<(&str, &str), u32>) -> Option<WaitingRevision> {
    let meta = &revision.metadata;
    if meta.labels.get(ROUTING_STATE_LABEL).map(String::as_str) == Some("reserve") {
        return None;
    }
    let min_scale = min_scale(&meta.annotations);
    let now = ready
        .get(&(meta.namespace.as_str(), meta.name.as_str()))
        .copied()
        .unwrap_or(0);
    (now < min_scale).then(|| WaitingRevision {
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        kind: match kind_of(&meta.labels) {
            WorkloadKind::Pynode => "pynode".into(),
            WorkloadKind::Model => "model".into(),
        },
        ready: now,
        min_scale,
    })
}

fn state_style(state: OrgState) -> Style {
    match state {
        OrgState::Active => Style::Good,
        OrgState::Dormant => Style::Calm,
        OrgState::Exempt => Style::Warn,
    }
}

fn parse(t: &Option<String>) -> Option<DateTime<Utc>> {
    t.as_deref()
        .and_then(|t| s2z_core::dormancy::parse_time(t).ok())
}

/// The settings header printed above the table.
pub fn header(settings: &SettingsSummary, color: bool) -> String {
    let rate = if settings.ratelimit_enabled {
        settings.warmup_ratelimit.clone()
    } else {
        format!("{} (disabled)", settings.warmup_ratelimit)
    };
    let mut text = format!(
        "{} {}   {} {}   {} {}\n",
        paint("Dormancy period:", Style::Bold, color),
        exact_duration(Duration::from_secs(settings.dormancy_period_secs)),
        paint("Warm-up rate limit:", Style::Bold, color),
        rate,
        paint("Settings:", Style::Bold, color),
        settings.source,
    );
    for warning in &settings.warnings {
        text.push_str(&format!(
            "{} {warning}\n",
            paint("Warning:", Style::Warn, color)
        ));
    }
    text
}

/// The table: one row per org; `wide` adds namespaces, period, reported state and timestamps.
pub fn render_table(report: &StatusReport, wide: bool, color: bool) -> String {
    let now = parse(&Some(report.generated_at.clone())).unwrap_or_else(Utc::now);
    let mut headers = vec![
        "org",
        "allowed",
        "state",
        "last activity",
        "dormant",
        "pynodes",
        "models",
        "pods",
        "gpus",
        "saved",
    ];
    if wide {
        headers.extend(["period", "reported", "namespaces"]);
    }
    let mut pending = false;
    let rows = report
        .orgs
        .iter()
        .map(|org| {
            let lagging = org.reported_state != Some(org.state);
            pending |= lagging;
            let state = format!("{}{}", org.state, if lagging { "*" } else { "" });
            let activity = match parse(&org.last_activity_at) {
                Some(t) => format!("{} ago", age_between(t, now)),
                None => "never".into(),
            };
            let dormant = match (org.state, parse(&org.dormant_at), parse(&org.dormant_since)) {
                (OrgState::Active, Some(at), _) => format!("in {}", age_between(now, at)),
                (OrgState::Dormant, _, Some(since)) => format!("since {}", age_between(since, now)),
                _ => "-".into(),
            };
            let mut row = vec![
                Cell::plain(&org.name),
                Cell::plain(if org.allowed { "yes" } else { "no" }),
                Cell::styled(state, state_style(org.state)),
                Cell::plain(activity),
                Cell::plain(dormant),
                Cell::plain(format!("{}/{}", org.pynodes.warm, org.pynodes.total)),
                Cell::plain(format!("{}/{}", org.models.warm, org.models.total)),
                Cell::plain(org.running_pods.to_string()),
                Cell::plain(org.gpus.to_string()),
                Cell::plain(saved(org.savings)),
            ];
            if wide {
                row.push(Cell::plain(exact_duration(Duration::from_secs(
                    org.dormancy_period_secs,
                ))));
                row.push(Cell::plain(
                    org.reported_state
                        .map_or("<none>".to_string(), |s| s.to_string()),
                ));
                row.push(Cell::plain(if org.namespaces.is_empty() {
                    "<none>".to_string()
                } else {
                    org.namespaces.join(",")
                }));
            }
            row
        })
        .collect();
    let mut text = table(&headers, rows, color);
    let t = &report.totals;
    text.push_str(&format!(
        "\n{}: {} active, {} dormant, {} exempt; {}, {} held; saved {}, {}\n",
        plural(t.orgs as usize, "org", "orgs"),
        t.active,
        t.dormant,
        t.exempt,
        plural(t.running_pods as usize, "running pod", "running pods"),
        plural(t.gpus as usize, "GPU", "GPUs"),
        amount(t.saved_gpu_seconds, "GPU"),
        amount(t.saved_pod_seconds, "pod"),
    ));
    if pending {
        text.push_str(&paint(
            "* not yet reported by the controller, which applies it within seconds (`kubectl s2z sweep` forces it)\n",
            Style::Dim,
            color,
        ));
    }
    text.push_str(&render_waiting(report, color));
    text
}

/// Resource-seconds in the largest fitting unit: `45 GPU-s`, `2.5 GPU-min`, `12.0 GPU-h`.
fn amount(seconds: u64, what: &str) -> String {
    match seconds {
        0..60 => format!("{seconds} {what}-s"),
        60..3600 => format!("{:.1} {what}-min", seconds as f64 / 60.0),
        _ => format!("{:.1} {what}-h", seconds as f64 / 3600.0),
    }
}

/// The SAVED cell: GPU time, or pod time for an org without GPUs, or `-` before the org's first
/// dormant period.
fn saved(savings: Option<Savings>) -> String {
    match savings {
        None => "-".into(),
        Some(s) if s.floor_gpus > 0 || s.gpu_seconds > 0 => amount(s.gpu_seconds, "GPU"),
        Some(s) => amount(s.pod_seconds, "pod"),
    }
}

/// At most this many waiting revisions are listed under the table; `-o json` has them all.
const WAITING_SHOWN: usize = 20;

/// The revisions still waiting for pods, e.g. just after a wake: one line each under the table,
/// or nothing when every warm revision has its pods.
fn render_waiting(report: &StatusReport, color: bool) -> String {
    let waiting: Vec<(&str, &WaitingRevision)> = report
        .orgs
        .iter()
        .flat_map(|org| {
            org.waiting_for_pods
                .iter()
                .map(move |w| (org.name.as_str(), w))
        })
        .collect();
    if waiting.is_empty() {
        return String::new();
    }
    let rows = waiting
        .iter()
        .take(WAITING_SHOWN)
        .map(|(org, w)| {
            vec![
                Cell::plain(*org),
                Cell::plain(format!("{}/{}", w.namespace, w.name)),
                Cell::plain(&w.kind),
                Cell::styled(format!("{}/{}", w.ready, w.min_scale), Style::Warn),
            ]
        })
        .collect();
    let mut text = format!(
        "\n{} waiting for pods (warm, fewer Ready pods than min-scale; Knative is starting them):\n",
        plural(waiting.len(), "revision", "revisions")
    );
    text.push_str(&table(&["org", "revision", "kind", "ready"], rows, color));
    if waiting.len() > WAITING_SHOWN {
        text.push_str(&format!(
            "... and {} more (`-o json` lists every one)\n",
            waiting.len() - WAITING_SHOWN
        ));
    }
    text
}

#[cfg(test)]
mod tests;
