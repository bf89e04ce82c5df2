//! `kubectl s2z settings` shows the global settings; `settings set` changes them.
//!
//! Settings live in the ConfigMap `s2z-settings` of the install namespace, with seed 000's keys.
//! `set` takes human durations and rate limits, refuses values that are invalid or unsafe (a
//! rate-limit period longer than the dormancy period) unless `--force`, and writes only the keys
//! it was given, creating the ConfigMap if needed. The controller watches the ConfigMap and
//! re-evaluates every org at once, so there is no second step.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use s2z_core::settings::{
    DORMANCY_PERIOD_KEY, RATELIMIT_ENABLED_KEY, RateLimit, SETTINGS_CONFIGMAP, SWEEP_INTERVAL_KEY,
    Settings, SettingsError, WARMUP_RATELIMIT_KEY, format_duration,
};
use serde::Serialize;
use serde_json::json;

use crate::client::{Cluster, FIELD_MANAGER, Req};
use crate::cluster::{self, SettingsView};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::options::parse_duration_flag;
use crate::output::{API_VERSION, Cell, Style, document, exact_duration, paint, table};

/// Arguments of `settings`.
#[derive(Debug, Clone, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    /// Without a subcommand, show the settings
    #[command(subcommand)]
    pub command: Option<SettingsCommand>,
}

/// Subcommands of `settings`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum SettingsCommand {
    /// Change settings; the controller re-evaluates every org at once
    Set(SetArgs),
}

/// Arguments of `settings set`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(after_help = "\
Examples:
  kubectl s2z settings set --dormancy-period 2h --warmup-ratelimit 2/hour --ratelimit-enabled=false
  kubectl s2z settings set --dormancy-period 30m --dry-run")]
pub struct SetArgs {
    /// Time without activity before an org goes dormant, e.g. 2h, 90m, 1d, 7200
    #[arg(long, value_name = "DURATION")]
    pub dormancy_period: Option<String>,
    /// Per-org limit on activity signals, N/unit: 2/hour, 5/10m, 1/s
    #[arg(long, value_name = "N/UNIT")]
    pub warmup_ratelimit: Option<String>,
    /// Whether activity signals are rate-limited
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub ratelimit_enabled: Option<String>,
    /// Interval of the controller's backstop sweep of every org, e.g. 1h
    #[arg(long, value_name = "DURATION")]
    pub sweep_interval: Option<String>,
    /// Apply unsafe settings anyway, e.g. a rate-limit period longer than the dormancy period
    #[arg(long)]
    pub force: bool,
    /// Show what would change and check it with the API server; write nothing
    #[arg(long)]
    pub dry_run: bool,
}

fn positive(flag: &str, value: &str) -> Result<Duration> {
    let duration = parse_duration_flag(flag, value)?;
    if duration.is_zero() {
        return Err(Error::usage(
            format!("read {flag}"),
            format!("{value:?} is zero; it must be longer than zero"),
            Some(format!("e.g. {flag} 2h")),
        ));
    }
    Ok(duration)
}

fn parse_bool(flag: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(Error::usage(
            format!("read {flag}"),
            format!("{value:?} is not a boolean"),
            Some(format!("write {flag}=true or {flag}=false")),
        )),
    }
}

/// Checks the flags and turns them into ConfigMap keys and canonical values.
pub fn resolve(args: &SetArgs) -> Result<BTreeMap<String, String>> {
    let mut changes = BTreeMap::new();
    if let Some(value) = &args.dormancy_period {
        let d = positive("--dormancy-period", value)?;
        changes.insert(DORMANCY_PERIOD_KEY.to_string(), format_duration(d));
    }
    if let Some(value) = &args.warmup_ratelimit {
        let limit: RateLimit = value.parse().map_err(|e: SettingsError| {
            Error::usage(
                "read --warmup-ratelimit",
                e.to_string()
                    .trim_start_matches("failed to parse ")
                    .to_string(),
                None,
            )
        })?;
        changes.insert(WARMUP_RATELIMIT_KEY.to_string(), limit.to_string());
    }
    if let Some(value) = &args.ratelimit_enabled {
        let enabled = parse_bool("--ratelimit-enabled", value)?;
        changes.insert(RATELIMIT_ENABLED_KEY.to_string(), enabled.to_string());
    }
    if let Some(value) = &args.sweep_interval {
        let d = positive("--sweep-interval", value)?;
        changes.insert(SWEEP_INTERVAL_KEY.to_string(), format_duration(d));
    }
    if changes.is_empty() {
        return Err(Error::usage(
            "set settings",
            "no setting given",
            Some(
                "pass at least one of --dormancy-period, --warmup-ratelimit, --ratelimit-enabled, --sweep-interval"
                    .into(),
            ),
        ));
    }
    Ok(changes)
}

/// The outcome of merging changes into the current data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The settings after the change.
    pub settings: Settings,
    /// Keys whose value changes: key → (old, new).
    pub diff: BTreeMap<String, (Option<String>, String)>,
    /// Problems that only `--force` lets through.
    pub forced: Vec<String>,
}

/// Merges `changes` into `current` and checks the result. Unsafe results are refused unless
/// `force`; then [`Plan::forced`] says what will happen.
pub fn plan(
    namespace: &str,
    current: &BTreeMap<String, String>,
    changes: &BTreeMap<String, String>,
    force: bool,
) -> Result<Plan> {
    let mut merged = current.clone();
    merged.extend(changes.clone());
    let settings = Settings::from_data(&merged).map_err(|e| Error::Refused {
        what: "set settings".into(),
        why: format!("configmap/{SETTINGS_CONFIGMAP} in {namespace}: {e}"),
        hint: Some("set that key too, with its flag, to replace the bad value".into()),
    })?;
    let forced = match settings.validate() {
        Ok(()) => Vec::new(),
        Err(SettingsError::Unsafe { problems }) if force => problems,
        Err(SettingsError::Unsafe { problems }) => {
            return Err(Error::Refused {
                what: "set settings".into(),
                why: format!("{}; nothing was written", problems.join("; ")),
                hint: Some("fix the values, or pass --force to apply them anyway".into()),
            });
        }
        Err(e) => {
            return Err(Error::Refused {
                what: "set settings".into(),
                why: e.to_string(),
                hint: None,
            });
        }
    };
    let diff = changes
        .iter()
        .filter(|(k, v)| current.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), (current.get(k).cloned(), v.clone())))
        .collect();
    Ok(Plan {
        settings,
        diff,
        forced,
    })
}

fn human(key: &str, value: &str) -> String {
    match key {
        DORMANCY_PERIOD_KEY | SWEEP_INTERVAL_KEY => {
            match s2z_core::settings::parse_duration(value) {
                Ok(d) => format!("{value} ({})", exact_duration(d)),
                Err(_) => value.to_string(),
            }
        }
        _ => value.to_string(),
    }
}

/// `kubectl s2z settings -o json|yaml`.
///
/// ```yaml
/// apiVersion: s2z.dev/v1alpha1
/// kind: SettingsReport
/// source: configmap/s2z-settings in s2z-system   # or "defaults (no configmap/...)"
/// settings:                  # the values in force, typed
///   orgDormancyPeriodSecs: 86400
///   orgWarmupRatelimitStr: 2/hour
///   ratelimitEnabled: true
///   sweepIntervalSecs: 3600
/// defaulted: [sweepIntervalSecs]   # keys not set in the ConfigMap
/// warnings: []               # unsafe or unreadable settings
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SettingsReport {
    /// Always `s2z.dev/v1alpha1`.
    pub api_version: &'static str,
    /// Always `SettingsReport`.
    pub kind: &'static str,
    /// Where the settings come from.
    pub source: String,
    /// The values in force.
    pub settings: serde_json::Value,
    /// Keys not set in the ConfigMap.
    pub defaulted: Vec<String>,
    /// Problems.
    pub warnings: Vec<String>,
}

impl SettingsReport {
    /// The report of a view.
    pub fn of(view: &SettingsView) -> Self {
        let s = &view.settings;
        let mut warnings = s.warnings();
        warnings.extend(view.problems.iter().cloned());
        SettingsReport {
            api_version: API_VERSION,
            kind: "SettingsReport",
            source: view.source(),
            settings: json!({
                DORMANCY_PERIOD_KEY: s.dormancy_period.as_secs(),
                WARMUP_RATELIMIT_KEY: s.warmup_ratelimit.to_string(),
                RATELIMIT_ENABLED_KEY: s.ratelimit_enabled,
                SWEEP_INTERVAL_KEY: s.sweep_interval.as_secs(),
            }),
            defaulted: s2z_core::settings::SETTINGS_KEYS
                .iter()
                .filter(|k| !view.data.contains_key(**k))
                .map(|k| k.to_string())
                .collect(),
            warnings,
        }
    }
}

/// The table form of `settings`.
pub fn render(view: &SettingsView, color: bool) -> String {
    let s = &view.settings;
    let from = |key: &str| {
        if view.data.contains_key(key) {
            Cell::plain("configmap")
        } else {
            Cell::styled("default", Style::Dim)
        }
    };
    let rows = vec![
        vec![
            Cell::plain("dormancy period"),
            Cell::plain(DORMANCY_PERIOD_KEY),
            Cell::plain(exact_duration(s.dormancy_period)),
            from(DORMANCY_PERIOD_KEY),
        ],
        vec![
            Cell::plain("warm-up rate limit"),
            Cell::plain(WARMUP_RATELIMIT_KEY),
            Cell::plain(s.warmup_ratelimit.to_string()),
            from(WARMUP_RATELIMIT_KEY),
        ],
        vec![
            Cell::plain("rate limit enabled"),
            Cell::plain(RATELIMIT_ENABLED_KEY),
            Cell::plain(s.ratelimit_enabled.to_string()),
            from(RATELIMIT_ENABLED_KEY),
        ],
        vec![
            Cell::plain("backstop sweep interval"),
            Cell::plain(SWEEP_INTERVAL_KEY),
            Cell::plain(exact_duration(s.sweep_interval)),
            from(SWEEP_INTERVAL_KEY),
        ],
    ];
    let mut text = format!(
        "{} {}\n\n",
        paint("Settings:", Style::Bold, color),
        view.source()
    );
    text.push_str(&table(&["setting", "key", "value", "from"], rows, color));
    let report = SettingsReport::of(view);
    for warning in report.warnings {
        text.push_str(&format!(
            "{} {warning}\n",
            paint("Warning:", Style::Warn, color)
        ));
    }
    text
}

async fn write(
    cluster: &Cluster,
    namespace: &str,
    exists: bool,
    changes: &BTreeMap<String, String>,
    dry_run: bool,
) -> Result<()> {
    let api: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), namespace);
    if exists {
        let req = Req::new("patch", "configmaps")
            .named(SETTINGS_CONFIGMAP)
            .in_namespace(namespace);
        let mut params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        params.dry_run = dry_run;
        api.patch(
            SETTINGS_CONFIGMAP,
            &params,
            &Patch::Merge(json!({"data": changes})),
        )
        .await
        .map_err(|e| req.error(cluster, e))?;
        return Ok(());
    }
    let req = Req::new("create", "configmaps").in_namespace(namespace);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {
            "name": SETTINGS_CONFIGMAP,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "s2z"},
        },
        "data": changes,
    }))
    .map_err(|e| Error::Api {
        what: req.what(),
        why: e.to_string(),
    })?;
    let params = PostParams {
        dry_run,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    match api.create(&params, &cm).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Err(Error::NotInstalled {
            what: req.what(),
            why: format!("namespace {namespace} does not exist"),
        }),
        Err(e) => Err(req.error(cluster, e)),
    }
}

async fn set(ctx: &Ctx, args: SetArgs) -> Result<()> {
    let changes = resolve(&args)?;
    let cluster = ctx.cluster().await?;
    let namespace = ctx.options.namespace.clone();
    let current = cluster::configmap_data(cluster, &namespace, SETTINGS_CONFIGMAP).await?;
    let exists = current.is_some();
    let current = current.unwrap_or_default();
    let plan = plan(&namespace, &current, &changes, args.force)?;
    for problem in &plan.forced {
        ctx.warn(&format!("applying anyway (--force): {problem}"));
    }
    if !plan.diff.is_empty() {
        write(cluster, &namespace, exists, &changes, args.dry_run).await?;
    }
    let mut merged = current.clone();
    merged.extend(changes);
    let view = SettingsView::from_data(&namespace, Some(merged));
    if ctx.options.format.is_structured() {
        return ctx.print(&document(ctx.options.format, &SettingsReport::of(&view))?);
    }
    let mut text = String::new();
    let target = format!("configmap/{SETTINGS_CONFIGMAP} in {namespace}");
    if plan.diff.is_empty() {
        text.push_str(&format!("{target}: unchanged, already set so\n"));
    } else {
        let verb = match (args.dry_run, exists) {
            (true, _) => "would update",
            (false, true) => "updated",
            (false, false) => "created",
        };
        text.push_str(&format!("{target}: {verb}\n"));
        for (key, (old, new)) in &plan.diff {
            let old = match old {
                Some(old) => human(key, old),
                None => match Settings::default().to_data().get(key) {
                    Some(default) => format!("default {}", human(key, default)),
                    None => "(default)".to_string(),
                },
            };
            text.push_str(&format!("  {key}: {old} -> {}\n", human(key, new)));
        }
        text.push_str(if args.dry_run {
            "dry run: nothing was written\n"
        } else {
            "the controller re-evaluates every org now\n"
        });
    }
    ctx.print(&text)
}

/// Runs `settings`.
pub async fn run(ctx: &Ctx, args: Args) -> Result<()> {
    match args.command {
        Some(SettingsCommand::Set(set_args)) => set(ctx, set_args).await,
        None => {
            let cluster = ctx.cluster().await?;
            let view = cluster::settings(cluster, &ctx.options.namespace).await?;
            let text = if ctx.options.format.is_structured() {
                document(ctx.options.format, &SettingsReport::of(&view))?
            } else {
                render(&view, ctx.options.color_stdout)
            };
            ctx.print(&text)
        }
    }
}

#[cfg(test)]
mod tests;
